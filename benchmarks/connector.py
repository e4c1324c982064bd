"""Connector benchmark: bulk throughput and per-connection latency, direct vs through it.

Prints one JSON line per figure. The reference, measured in the same run, is a direct
connection to the same loopback back end, so the figures show what the connector adds:

* throughput: the back end streams ``--megabytes`` x 1 MB per connection; the client reads
  it all, directly and through the connector (a ``tcp`` mapping). Best of ``--repeat``.
  Goal: ratio >= 0.8.
* latency: connect, (SOCKS5 handshake with python-socks, as a runtime would,) and read the
  back end's first byte (its greeting, like an IMAP server's), median over ``--connections``
  connections. Goal: added < 2 ms on loopback.
* imap bulk: the issue's own example. ``--imap-mails`` mails of 1 MB in a real Dovecot
  mailbox, fetched with flowrt's IMAP client (the sender's), directly and through the
  connector. Unlike the raw stream above, this is what a flow does: the relay competes with
  an IMAP server and client for the CPU, as it would in production. Goal: ratio >= 0.8.

On a 2-core machine the raw stream runs three busy processes (back end, connector, client)
through the connector and two directly, so its ratio says more about the core count than
about the relay; the connector's CPU per GB is the figure to compare across machines.

The back end and the connector (``flowrt connector run``, as deployed) run as separate
processes, so that the client, the connector and the back end each have their own event
loop, as they would in production. No threshold is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from python_socks.async_.asyncio import Proxy

LOCATION = "bench-1"
TOKEN = "bench-token-0123456789abcdefghij"
VIRTUAL = "bulk.plant.example"
MB = 1024 * 1024
CHUNK = os.urandom(MB)


# -- the back end (run with --backend in its own process) ----------------------------------


async def _backend_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        writer.write(b"*")  # a one-byte greeting: the first byte the latency test waits for
        line = await reader.readline()
        if line.startswith(b"GET "):
            for _ in range(int(line.split()[1])):
                writer.write(CHUNK)
                await writer.drain()
        writer.close()
    except (ConnectionError, OSError):
        writer.transport.abort()


async def _backend() -> None:
    server = await asyncio.start_server(_backend_client, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


# -- the client ---------------------------------------------------------------------------


async def _open(
    port: int, proxy_port: int | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if proxy_port is None:
        return await asyncio.open_connection("127.0.0.1", port, limit=4 * MB)
    proxy = Proxy.from_url(f"socks5://{LOCATION}:{TOKEN}@127.0.0.1:{proxy_port}", rdns=True)
    sock = await proxy.connect(VIRTUAL, 143, timeout=10)
    return await asyncio.open_connection(sock=sock, limit=4 * MB)


async def _download(port: int, proxy_port: int | None, megabytes: int) -> float:
    """Seconds to read ``megabytes`` MB from the back end."""
    reader, writer = await _open(port, proxy_port)
    await reader.readexactly(1)
    started = time.perf_counter()
    writer.write(b"GET %d\n" % megabytes)
    got = 0
    while data := await reader.read(4 * MB):
        got += len(data)
    elapsed = time.perf_counter() - started
    writer.close()
    if got != megabytes * MB:
        raise RuntimeError(f"read {got} bytes, expected {megabytes * MB}")
    return elapsed


async def _first_byte(port: int, proxy_port: int | None) -> float:
    started = time.perf_counter()
    reader, writer = await _open(port, proxy_port)
    await reader.readexactly(1)
    elapsed = time.perf_counter() - started
    writer.write(b"QUIT\n")
    writer.close()
    return elapsed


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), or None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _measure(
    args: argparse.Namespace, port: int, proxy_port: int, backend_pid: int, connector_pid: int
) -> list[dict[str, object]]:
    await _download(port, proxy_port, 4)  # warm up both paths
    await _download(port, None, 4)
    direct, via = [], []
    cpu_connector = cpu_backend = 0.0
    for _ in range(args.repeat):  # interleaved, so that drift hits both alike
        direct.append(await _download(port, None, args.megabytes))
        before = (_cpu_seconds(connector_pid), _cpu_seconds(backend_pid))
        via.append(await _download(port, proxy_port, args.megabytes))
        after = (_cpu_seconds(connector_pid), _cpu_seconds(backend_pid))
        if None not in before and None not in after:
            cpu_connector += after[0] - before[0]  # type: ignore[operator]
            cpu_backend += after[1] - before[1]  # type: ignore[operator]
    mb_direct = args.megabytes / min(direct)
    mb_via = args.megabytes / min(via)
    gigabytes = args.repeat * args.megabytes / 1024

    lat_direct, lat_via = [], []
    for _ in range(args.connections):
        lat_direct.append(await _first_byte(port, None))
        lat_via.append(await _first_byte(port, proxy_port))
    med_direct = statistics.median(lat_direct) * 1000
    med_via = statistics.median(lat_via) * 1000
    return [
        {"figure": "throughput_direct", "value": round(mb_direct, 1), "unit": "MB/s"},
        {"figure": "throughput_connector", "value": round(mb_via, 1), "unit": "MB/s"},
        {"figure": "throughput_ratio", "value": round(mb_via / mb_direct, 3), "goal": ">= 0.8"},
        # CPU per GB is steadier than throughput on a busy or small machine: the connector's
        # cost beside the back end's own cost of sending the same bytes.
        {
            "figure": "cpu_connector_per_gb",
            "value": round(cpu_connector / gigabytes, 3),
            "unit": "s/GB",
        },
        {
            "figure": "cpu_backend_per_gb",
            "value": round(cpu_backend / gigabytes, 3),
            "unit": "s/GB",
        },
        {"figure": "first_byte_direct_median", "value": round(med_direct, 3), "unit": "ms"},
        {"figure": "first_byte_connector_median", "value": round(med_via, 3), "unit": "ms"},
        {
            "figure": "added_latency_median",
            "value": round(med_via - med_direct, 3),
            "unit": "ms",
            "goal": "< 2 ms",
        },
    ]


async def _start(argv: list[str], env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


async def _run(args: argparse.Namespace) -> None:
    backend = await _start([sys.executable, __file__, "--backend"])
    connector: asyncio.subprocess.Process | None = None
    try:
        assert backend.stdout is not None
        async with asyncio.timeout(20):
            port = int(await backend.stdout.readline())
        with tempfile.TemporaryDirectory(prefix="flowrt-bench-") as tmp:
            config = Path(tmp, "connector.toml")
            config.write_text(
                f'location_id = "{LOCATION}"\nlisten = "127.0.0.1:0"\n'
                'token_env = "FLOWRT_CONNECTOR_TOKEN"\nmax_connections = 1000\n'
                f'[[mapping]]\nvirtual = "{VIRTUAL}:143"\ninternal = "127.0.0.1:{port}"\n'
                'protocol = "tcp"\n'
            )
            env = {**os.environ, "FLOWRT_CONNECTOR_TOKEN": TOKEN}
            connector = await _start(
                [
                    sys.executable,
                    "-m",
                    "flowrt.cli.main",
                    "connector",
                    "run",
                    str(config),
                    "--log-format",
                    "json",
                ],
                env,
            )
            assert connector.stderr is not None
            async with asyncio.timeout(20):
                listening = json.loads(await connector.stderr.readline())
            proxy_port = int(str(listening["address"]).rsplit(":", 1)[1])
            # The connector logs two lines per connection: keep its stderr drained.
            drain = asyncio.create_task(_drain(connector.stderr))
            figures = await _measure(args, port, proxy_port, backend.pid, connector.pid)
            drain.cancel()
        for figure in figures:
            print(
                json.dumps(
                    {
                        "benchmark": "connector",
                        **figure,
                        "megabytes": args.megabytes,
                        "connections": args.connections,
                        "cpus": os.cpu_count(),
                    }
                )
            )
    finally:
        for proc in (connector, backend):
            if proc is not None and proc.returncode is None:
                proc.terminate()
                await proc.wait()


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass


async def _imap_fetch_all(
    port: int, proxy_port: int | None, user: str, password: str
) -> tuple[float, int]:
    """Seconds and bytes to fetch every mail of INBOX with flowrt's IMAP client."""
    from flowrt.adapters.mail.imap.client import ImapClient
    from flowrt.net import ProxyRoute, connect

    route = ProxyRoute("127.0.0.1", proxy_port, LOCATION, TOKEN, LOCATION) if proxy_port else None
    host = VIRTUAL if proxy_port else "127.0.0.1"
    started = time.perf_counter()
    sock = await connect(host, 143 if proxy_port else port, route=route, timeout=30)
    client = await ImapClient.start(sock, host=host, port=143, timeout=60)
    await client.login(user, password)
    await client.select("INBOX")
    uids = await client.uid_search("ALL")
    mails = await client.fetch_mails(uids)
    elapsed = time.perf_counter() - started
    await client.logout()
    return elapsed, sum(len(m.raw) for m in mails)


async def _imap_bulk(args: argparse.Namespace) -> list[dict[str, object]]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.servers import DovecotServer

    body = (os.urandom(MB // 4 * 3).hex()[: MB - 200]).encode()
    with DovecotServer(tls=False) as dovecot, tempfile.TemporaryDirectory() as tmp:
        user = dovecot.new_user(prefix="bulk")
        mail = b"From: a@example.com\r\nSubject: bulk\r\n\r\n" + b"\r\n".join(
            body[i : i + 76] for i in range(0, len(body), 76)
        )
        for _ in range(args.imap_mails):
            dovecot.append(user.address, "INBOX", mail)
        config = Path(tmp, "connector.toml")
        config.write_text(
            f'location_id = "{LOCATION}"\nlisten = "127.0.0.1:0"\n'
            'token_env = "FLOWRT_CONNECTOR_TOKEN"\n'
            f'[[mapping]]\nvirtual = "{VIRTUAL}:143"\n'
            f'internal = "127.0.0.1:{dovecot.imap_port}"\nprotocol = "tcp"\n'
        )
        connector = await _start(
            [
                sys.executable,
                "-m",
                "flowrt.cli.main",
                "connector",
                "run",
                str(config),
                "--log-format",
                "json",
            ],
            {**os.environ, "FLOWRT_CONNECTOR_TOKEN": TOKEN},
        )
        try:
            assert connector.stderr is not None
            async with asyncio.timeout(20):
                listening = json.loads(await connector.stderr.readline())
            proxy_port = int(str(listening["address"]).rsplit(":", 1)[1])
            drain = asyncio.create_task(_drain(connector.stderr))
            direct, through = [], []
            for _ in range(args.repeat):
                seconds, size = await _imap_fetch_all(
                    dovecot.imap_port, None, user.address, user.password
                )
                direct.append(size / MB / seconds)
                seconds, size = await _imap_fetch_all(
                    dovecot.imap_port, proxy_port, user.address, user.password
                )
                through.append(size / MB / seconds)
            drain.cancel()
        finally:
            connector.terminate()
            await connector.wait()
    best_direct, best_through = max(direct), max(through)
    return [
        {
            "figure": "imap_bulk_direct",
            "value": round(best_direct, 1),
            "unit": "MB/s",
            "mails": args.imap_mails,
        },
        {
            "figure": "imap_bulk_connector",
            "value": round(best_through, 1),
            "unit": "MB/s",
            "mails": args.imap_mails,
        },
        {
            "figure": "imap_bulk_ratio",
            "value": round(best_through / best_direct, 3),
            "goal": ">= 0.8",
            "mails": args.imap_mails,
        },
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--imap-mails", type=int, default=100)
    parser.add_argument("--backend", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backend:
        asyncio.run(_backend())
        return
    asyncio.run(_run(args))
    if args.imap_mails:
        for figure in asyncio.run(_imap_bulk(args)):
            print(json.dumps({"benchmark": "connector", **figure, "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
