"""One ``flowrt run`` with 50 mailboxes on real Dovecot, half ``poll idle`` and half polling,
forwarding into Postfix's smtp-sink: every flow reaches STARTED and every mail is sent once,
whether it waited in the mailbox at start or arrived while the flows ran."""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flowrt.security import edit_credentials
from flowrt.security.credentials import UserCredential
from flowrt.security.secret import Secret
from flowrt.tenant import Tenant
from tests.runtime.test_runtime_e2e import Runtime, flowrt, mail, runtimes, tenant, wait_for
from tests.servers import DovecotServer, MailboxUser
from tests.servers.postfix import SmtpSink

__all__ = ["runtimes", "tenant"]  # the fixtures, imported for pytest

pytestmark = pytest.mark.servers

MAILBOXES = 50

FLOW = """flow {name} {{
    sender mail {{
        protocol      imap
        address       "127.0.0.1:{imap}"
        protection    starttls-mandatory
        auth          plain credential "{name}"
        post-process  delete
        poll          {poll}
        timeout       20s
    }}
    receiver mail sink {{
        address       "127.0.0.1:{sink}"
        protection    off
        auth          none
        from          "flowrt@example.com"
        to            "archive@example.com"
        subject       "Fwd: ${{header.Subject}}"
        timeout       20s
    }}
}}
"""


@pytest.fixture
def dumping_sink() -> Iterator[tuple[SmtpSink, Path]]:
    # smtp-sink writes as nobody, who cannot enter pytest's private tmp_path
    dump = Path(tempfile.mkdtemp(prefix="flowrt-sink-dump-"))
    os.chmod(dump, 0o777)
    sink = SmtpSink(extra_args=["-d", f"{dump}/m."]).start()
    try:
        yield sink, dump
    finally:
        sink.close()
        shutil.rmtree(dump, ignore_errors=True)


def sent_subjects(dump: Path) -> collections.Counter[str]:
    found: collections.Counter[str] = collections.Counter()
    for path in dump.iterdir():
        match = re.search(rb"\nSubject: Fwd: ([^\r\n]*)", path.read_bytes())
        if match:
            found[match.group(1).decode()] += 1
    return found


def wait_sent(dump: Path, expected: set[str], runtime: Runtime, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not expected <= set(sent_subjects(dump)):
        if time.monotonic() > deadline:
            missing = sorted(expected - set(sent_subjects(dump)))
            errors = [line for line in runtime.log.read_text().splitlines() if "error" in line]
            raise AssertionError(f"not sent: {missing}; runtime errors: {errors[-5:]}")
        time.sleep(0.1)


def test_fifty_mailboxes_idle_and_polling_each_mail_sent_once(
    tenant: Path,
    dovecot: DovecotServer,
    new_mailbox_user: Callable[..., MailboxUser],
    dumping_sink: tuple[SmtpSink, Path],
    runtimes: Callable[..., Runtime],
    tmp_path: Path,
) -> None:
    sink, dump = dumping_sink
    users = [new_mailbox_user(prefix=f"many{i}") for i in range(MAILBOXES)]
    with edit_credentials(Tenant(tenant)) as store:
        for i, user in enumerate(users):
            store.put(UserCredential(f"m{i:02d}", user.address, Secret(user.password)))
    files = []
    for i in range(MAILBOXES):
        path = tmp_path / f"m{i:02d}.flow"
        poll = "idle" if i % 2 == 0 else "every 2s"
        path.write_text(
            FLOW.format(name=f"m{i:02d}", imap=dovecot.imap_port, sink=sink.port, poll=poll)
        )
        files.append(str(path))
    assert flowrt(tenant, "deploy", "--wait", "0s", *files).exit_code == 0

    expected = set()
    for i, user in enumerate(users):  # waiting in the mailbox when the runtime starts
        dovecot.append(user.address, "INBOX", mail(f"early {i}"))
        expected.add(f"early {i}")
    runtime = runtimes()

    def all_started() -> bool:
        status = json.loads(flowrt(tenant, "status", "--format", "json").output)
        flows = status["flows"]
        return len(flows) == MAILBOXES and all(f["state"] == "STARTED" for f in flows)

    wait_for(all_started, timeout=30, what="every flow STARTED")
    wait_sent(dump, expected, runtime)
    for i, user in enumerate(users):  # arriving while the flows run (IDLE push, or next poll)
        dovecot.append(user.address, "INBOX", mail(f"late {i}"))
        expected.add(f"late {i}")
    wait_sent(dump, expected, runtime)
    time.sleep(2.5)  # one more round of polls: nothing may be sent again

    sent = sent_subjects(dump)
    assert set(sent) == expected
    assert [s for s, n in sent.items() if n != 1] == []
    assert runtime.stop() == 0
    for user in users:  # post-process delete: every mailbox is empty
        assert dovecot.messages(user.address) == []
