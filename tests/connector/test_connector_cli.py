"""`flowrt connector run` and `flowrt connector check` as processes: output, exit codes, signals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest
from python_socks import ProxyError

from tests.connector.connector_support import (
    TOKEN,
    TOKEN_ENV,
    Backends,
    WriteConfig,
    closed_port,
    socks_connect,
    tcp,
    tcp_tls,
)
from tests.servers.ca import TestCA

FLOWRT = [sys.executable, "-m", "flowrt.cli.main"]
VIRTUAL = "mail.plant.example"


def env() -> dict[str, str]:
    return {**os.environ, TOKEN_ENV: TOKEN}


async def flowrt(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *FLOWRT, *args, env=env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_check_exit_0_when_every_mapping_is_reachable(
    write_config: WriteConfig, backends: Backends, tmp_path: Path
) -> None:
    ca = TestCA()
    cert = ca.issue_server_cert()
    plain = await backends.start()
    tls = await backends.start(ssl_context=cert.server_context())
    path = write_config(
        [
            tcp(f"{VIRTUAL}:143", f"127.0.0.1:{plain}"),
            tcp_tls(f"{VIRTUAL}:993", f"localhost:{tls}"),
        ],
        truststore=ca.write_cert(tmp_path / "ca.pem"),
    )
    code, out, err = await flowrt("connector", "check", str(path))
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"{VIRTUAL}:143 -> 127.0.0.1:{plain} (tcp): reachable",
        f"{VIRTUAL}:993 -> localhost:{tls} (tcp-tls): reachable",
    ]


async def test_check_exit_1_with_the_reason_per_mapping(
    write_config: WriteConfig, backends: Backends, tmp_path: Path
) -> None:
    cert = TestCA("Plant Root CA").issue_server_cert()
    plain = await backends.start()
    tls = await backends.start(ssl_context=cert.server_context())
    refused = closed_port()
    path = write_config(
        [
            tcp(f"{VIRTUAL}:143", f"127.0.0.1:{plain}"),
            tcp(f"{VIRTUAL}:110", f"127.0.0.1:{refused}"),
            tcp_tls(f"{VIRTUAL}:993", f"localhost:{tls}"),
        ],
        truststore=TestCA("Other Root CA").write_cert(tmp_path / "other.pem"),
    )
    code, out, err = await flowrt("connector", "check", str(path))
    assert code == 1
    lines = out.splitlines()
    assert lines[0].endswith("(tcp): reachable")
    assert lines[1] == (
        f"{VIRTUAL}:110 -> 127.0.0.1:{refused} (tcp): refused "
        f"(nothing listens on 127.0.0.1:{refused})"
    )
    assert lines[2] == (
        f"{VIRTUAL}:993 -> localhost:{tls} (tcp-tls): TLS: certificate not trusted "
        "(unable to get local issuer certificate): subject CN=localhost, "
        "issuer CN=Plant Root CA,O=flowrt tests"
    )
    assert f"hint: {VIRTUAL}:110: start the server behind 127.0.0.1:{refused}" in err
    assert "add the root (and intermediate) certificates of CN=Plant Root CA" in err
    assert "Traceback" not in err

    code, out, _ = await flowrt("connector", "check", "--format", "json", str(path))
    assert code == 1
    results = json.loads(out)
    assert [r["outcome"] for r in results] == ["reachable", "refused", "tls_untrusted"]
    assert [r["reply"] for r in results] == [None, 5, 1]
    assert results[2]["certificate"]["issuer"] == "CN=Plant Root CA,O=flowrt tests"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_run_serves_and_stops_cleanly_on_a_signal(
    write_config: WriteConfig, backends: Backends, sig: signal.Signals
) -> None:
    port = await backends.start()
    path = write_config([tcp(f"{VIRTUAL}:143", f"127.0.0.1:{port}")], idle_timeout="1m")
    proc = await asyncio.create_subprocess_exec(
        *FLOWRT,
        "connector",
        "run",
        str(path),
        "--log-format",
        "json",
        env=env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        async with asyncio.timeout(20):
            first = json.loads(await proc.stderr.readline())
        assert first["event"] == "listening" and first["location"] == "plant-1"
        assert first["token_source"] == f"env {TOKEN_ENV}"
        proxy_port = int(first["address"].rsplit(":", 1)[1])

        reader, writer = await socks_connect(proxy_port, VIRTUAL, 143)
        writer.write(b"ping\r\n")
        async with asyncio.timeout(5):
            assert await reader.readexactly(6) == b"ping\r\n"
        with pytest.raises(ProxyError) as caught:
            await socks_connect(proxy_port, VIRTUAL, 25)
        assert caught.value.error_code == 2

        proc.send_signal(sig)  # with the relay still open
        async with asyncio.timeout(20):
            rest = (await proc.stderr.read()).decode()
            assert await proc.wait() == 0
        assert await reader.read() == b""
        writer.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    events = [json.loads(line) for line in rest.splitlines()]
    names = [e["event"] for e in events]
    assert names[-3:] == ["stopping", "closed", "stopped"]
    assert events[-3]["signal"] == sig.name and events[-3]["open_connections"] == 1
    assert events[-2]["closed_by"] == "shutdown" and events[-2]["bytes_up"] == 6
    assert "Traceback" not in rest and TOKEN not in rest


async def test_run_reports_a_busy_port(write_config: WriteConfig, backends: Backends) -> None:
    busy = await backends.start()
    path = write_config([tcp(f"{VIRTUAL}:143", "127.0.0.1:1")], listen=f"127.0.0.1:{busy}")
    code, _, err = await flowrt("connector", "run", str(path))
    assert code == 1
    assert err.startswith(f"error: cannot listen on 127.0.0.1:{busy}: ")
    assert "hint: another process may use the port" in err
    assert "Traceback" not in err


async def test_run_reloads_its_config_on_sighup_and_keeps_it_when_the_new_one_is_bad(
    write_config: WriteConfig, backends: Backends
) -> None:
    imap = await backends.start()
    smtp = await backends.start()
    path = write_config([tcp(f"{VIRTUAL}:143", f"127.0.0.1:{imap}")], name="c.toml")
    proc = await asyncio.create_subprocess_exec(
        *FLOWRT,
        "connector",
        "run",
        str(path),  # no --log-format: auto, and stderr is a pipe, so JSON lines
        env=env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )

    async def next_event(name: str) -> dict[str, object]:
        assert proc.stderr is not None
        async with asyncio.timeout(20):
            while True:
                event = json.loads(await proc.stderr.readline())
                if event["event"] == name or event["event"] == "reload failed":
                    return dict(event)

    try:
        first = await next_event("listening")
        proxy_port = int(str(first["address"]).rsplit(":", 1)[1])
        with pytest.raises(ProxyError):
            await socks_connect(proxy_port, VIRTUAL, 25)

        write_config(
            [
                tcp(f"{VIRTUAL}:143", f"127.0.0.1:{imap}"),
                tcp(f"{VIRTUAL}:25", f"127.0.0.1:{smtp}"),
            ],
            name="c.toml",
        )
        proc.send_signal(signal.SIGHUP)
        reloaded = await next_event("reloaded")
        assert (reloaded["event"], reloaded["mappings"]) == ("reloaded", 2)
        reader, writer = await socks_connect(proxy_port, VIRTUAL, 25)
        writer.write(b"EHLO\r\n")
        async with asyncio.timeout(5):
            assert await reader.readexactly(6) == b"EHLO\r\n"
        writer.close()

        path.write_text(path.read_text() + "\nbogus_key = 1\n", encoding="utf-8")
        proc.send_signal(signal.SIGHUP)
        failed = await next_event("reloaded")
        assert failed["event"] == "reload failed" and failed["level"] == "error"
        assert "bogus_key" in str(failed["error"])
        assert failed["kept"] == "the previous configuration"
        reader, writer = await socks_connect(proxy_port, VIRTUAL, 25)  # still served
        writer.close()

        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_new_token_prints_a_token_file_line_that_works_from_any_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from flowrt.cli.main import cli

    monkeypatch.chdir(tmp_path)  # the token file is given relative to the working directory
    (tmp_path / "conn").mkdir()
    result = CliRunner().invoke(cli, ["connector", "new-token", "--file", "conn/site-b.token"])
    assert result.exit_code == 0, result.output
    expected = (tmp_path / "conn" / "site-b.token").resolve()
    assert result.stdout == f'token_file = "{expected}"\n'
