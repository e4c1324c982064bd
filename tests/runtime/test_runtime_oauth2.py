"""A deployed sender with ``auth oauth2 credential "X" user "MAILBOX"`` starts and polls
through the runtime (``Runtime.run(once=True)``, what ``flowrt run --once`` calls), logging in
as the mailbox with a token from the tenant's OAuth2 client credentials."""

from __future__ import annotations

import asyncio
from pathlib import Path

from click.testing import CliRunner

from flowrt.cli.main import cli
from flowrt.runtime.process import Runtime
from flowrt.security import edit_credentials
from flowrt.security.credentials import OAuth2ClientCredentials
from flowrt.security.secret import Secret
from flowrt.tenant import Tenant
from tests.sender.test_sender_oauth2 import MAILBOX, ScriptedImap, token_endpoint

__all__ = ["token_endpoint"]  # the fixture, imported for pytest

FLOW = """\
flow oauth2-poll {{
    sender mail {{
        protocol              imap
        address               "127.0.0.1:{port}"
        protection            off
        allow-plaintext-auth  true
        auth                  oauth2 credential "m365" user "{mailbox}"
        timeout               5s
    }}
    receiver mail out {{
        address  "127.0.0.1:1"
        from     "flowrt@example.com"
        to       "someone@example.com"
    }}
}}
"""


class EmptyMailbox(ScriptedImap):
    """The scripted XOAUTH2 server, with an empty INBOX to poll."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await super().serve(_Selecting(reader, writer), writer)


class _Selecting(asyncio.StreamReader):
    """Answers the mailbox commands itself and passes login/logout to the script."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__()
        self._reader = reader
        self._writer = writer

    async def readline(self) -> bytes:
        while raw := await self._reader.readline():
            tag, _, rest = raw.decode().strip().partition(" ")
            command = rest.split()[0].upper() if rest else ""
            if command in {"SELECT", "EXAMINE"}:
                self._writer.write(
                    b"* 0 EXISTS\r\n* 0 RECENT\r\n* OK [UIDVALIDITY 7] ok\r\n"
                    b"* OK [UIDNEXT 1] ok\r\n" + f"{tag} OK [READ-WRITE] selected\r\n".encode()
                )
            elif command in {"UID", "SEARCH"}:
                self._writer.write(f"* SEARCH\r\n{tag} OK done\r\n".encode())
            elif command in {"NOOP", "CHECK", "CLOSE", "UNSELECT", "EXPUNGE"}:
                self._writer.write(f"{tag} OK done\r\n".encode())
            else:
                return raw
            await self._writer.drain()
        return b""


async def test_a_deployed_oauth2_sender_starts_and_polls_as_its_mailbox(
    tmp_path: Path, token_endpoint: tuple[int, list[str]]
) -> None:
    token_port, issued = token_endpoint
    root = tmp_path / "tenant"
    assert CliRunner().invoke(cli, ["--tenant", str(root), "init"]).exit_code == 0
    with edit_credentials(Tenant(root)) as store:
        store.put(
            OAuth2ClientCredentials(
                "m365",
                f"http://127.0.0.1:{token_port}/token",
                "client-id",
                Secret("client-secret"),
                "https://outlook.office365.com/.default",
            )
        )
    async with (server := EmptyMailbox("token-1")) as port:
        flow = tmp_path / "oauth2.flow"
        flow.write_text(FLOW.format(port=port, mailbox=MAILBOX))
        deployed = CliRunner().invoke(cli, ["--tenant", str(root), "deploy", str(flow)])
        assert deployed.exit_code == 0, deployed.output
        runtime = Runtime(Tenant(root))
        code = await runtime.run(once=True)
        status = runtime.instances["oauth2-poll"].status
    assert code == 0, status.last_error
    assert status.last_success and not status.last_error and not status.consecutive_failures
    assert server.seen == [(MAILBOX, "token-1")]
    assert issued == ["token-1"]
