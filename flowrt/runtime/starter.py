"""Worker processes forked from a copy of the runtime, instead of started from scratch.

A worker started as a new Python process (``python -m flowrt.runtime.worker``) spends about
0.3 s of CPU importing what the runtime has already imported, before it polls. ``flowrt
run`` therefore forks a *starter* first thing, before it has an event loop, a thread, a
lock or an open file: a copy of the runtime with everything imported and nothing running,
which is safe to fork again. For each worker the runtime sends the starter the worker's
arguments and the two pipe ends that are the worker's stdin and stdout; the starter forks
twice, and the worker, orphaned at once, is adopted by the runtime (a child subreaper), so
that it is the runtime's child as a started process is: the runtime waits for it and
signals it through a pidfd, and the kernel kills it when the runtime dies
(``PR_SET_PDEATHSIG``, as in :mod:`flowrt.runtime.worker`).

The starter dies with the runtime, and ends when its socket closes. Where this is not
possible (not Linux, no pidfd, the starter is gone), :class:`WorkerGroup` starts workers as
new processes, as before: only slower.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import signal
import socket
import sys
import time
import traceback

from flowrt.dsl import parse_text
from flowrt.errors import FlowrtError
from flowrt.runtime._linux import become_subreaper, die_with, set_name
from flowrt.store import open_deployments
from flowrt.tenant import Tenant

STARTER = "flowrt starter"  # its process name (/proc/PID/comm, what ps -e and top show)
ADOPTION_WAIT = 2.0  # the longest a forked worker waits to become the runtime's child
REAP_TRIES = 200  # 10 ms apart: the longest the runtime waits to adopt one that exited
REPLY_WAIT = 10.0  # the longest a fork may take the starter; then it is taken for gone
LATE_REPLY_WAIT = 60.0  # how long a reply that came too late is still waited for
# a `workers` setting other than 1 (its value may be a parameter: read by the parser later)
_SETS_WORKERS = re.compile(r"(?<![\w-])workers[ \t]+(?!1(?![\w.]))\S")


class StarterGone(Exception):
    """The starter cannot start a worker (it exited, or could not fork): start one anew."""


class ForkedWorker:
    """A worker forked by the starter: what :class:`WorkerGroup` uses of a started process
    (``stdout``, ``send_signal``, ``kill``, ``wait``)."""

    def __init__(self, pid: int, stdin: int, stdout: asyncio.StreamReader) -> None:
        self.pid = pid
        self.stdout = stdout
        self.returncode: int | None = None
        self._stdin = stdin  # never written: closing it tells the worker we are gone
        self._pidfd = os.pidfd_open(pid)
        self._loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = self._loop.create_future()
        self._loop.add_reader(self._pidfd, self._ended)

    def _ended(self) -> None:  # its pidfd is readable: the process has exited
        self._loop.remove_reader(self._pidfd)
        self._reap(tries=0)

    def _reap(self, *, tries: int) -> None:
        try:
            _, status = os.waitpid(self.pid, 0)
            code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            # it exited before its middle process did, so it is not the runtime's yet
            if tries < REAP_TRIES:
                self._loop.call_later(0.01, functools.partial(self._reap, tries=tries + 1))
                return
            code = 255  # never adopted (cannot happen while the runtime is the subreaper)
        self.returncode = code
        os.close(self._pidfd)
        os.close(self._stdin)
        self._exited.set_result(code)

    def send_signal(self, sig: int) -> None:
        if self.returncode is not None:
            raise ProcessLookupError(self.pid)
        signal.pidfd_send_signal(self._pidfd, sig)  # no race with the pid's reuse

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)


class WorkerStarter:
    """The runtime's end of the starter process."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self._sock = sock
        self.pid = pid
        self.gone = False  # it could not start a worker: the runtime starts new processes
        self._lock = asyncio.Lock()  # one request, one reply, at a time
        self._pidfd: int | None = None  # watches it for its exit once the loop runs
        self._drainer: asyncio.Future[None] | None = None  # see _drain

    @classmethod
    def for_tenant(cls, tenant: Tenant) -> WorkerStarter | None:
        """A starter if a flow deployed on ``tenant`` sets ``workers``: it holds about 20 MB
        of its own, so a runtime without such flows has none (a flow deployed with
        ``workers`` while it runs starts its workers as new processes)."""
        try:
            deployments = open_deployments(tenant)
            try:
                sources = [deployment.source for deployment in deployments.all()]
            finally:
                deployments.close()
        except FlowrtError:  # the runtime says what is wrong (and serves what it can)
            return None
        if not any(_SETS_WORKERS.search(source) for source in sources):
            return None
        return cls.fork()

    @classmethod
    def fork(cls) -> WorkerStarter | None:
        """Fork the starter (call before the event loop, threads, locks or files exist);
        None where the platform cannot fork workers this way."""
        if not sys.platform.startswith("linux") or not hasattr(os, "pidfd_open"):
            return None
        try:
            probe = os.pidfd_open(os.getpid())  # a kernel without pidfds (before 5.3)
            os.close(probe)
        except OSError:
            return None
        if not become_subreaper():
            return None
        from flowrt.runtime import worker  # noqa: F401  (imported once, here, for every worker)

        parse_text("")  # builds the flow grammar (0.1 s) that the runtime and workers parse with

        runtime_end, starter_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        runtime = os.getpid()
        pid = os.fork()
        if pid == 0:  # the starter
            runtime_end.close()
            _serve(starter_end, runtime=runtime)
        starter_end.close()
        runtime_end.setblocking(False)
        return cls(runtime_end, pid)

    async def start(self, args: list[str]) -> ForkedWorker:
        """A forked worker with these arguments (:meth:`WorkerArgs.args`)."""
        loop = asyncio.get_running_loop()
        self._watch()
        stdin_read, stdin_write = os.pipe()
        stdout_read, stdout_write = os.pipe()
        try:
            async with self._lock:
                if self.gone:  # while this request waited for the one before
                    raise StarterGone("the starter is gone")
                try:
                    message = json.dumps(args).encode()
                    socket.send_fds(self._sock, [message], [stdin_read, stdout_write])
                    reply = await asyncio.wait_for(loop.sock_recv(self._sock, 64), REPLY_WAIT)
                except BaseException as exc:
                    # (also when cancelled) a reply that came later would answer the next
                    # request: this starter is not asked again, and the worker it may
                    # still fork is stopped
                    self.gone = True
                    self._drainer = asyncio.ensure_future(self._drain())
                    if isinstance(exc, OSError | TimeoutError):
                        raise StarterGone(str(exc) or "the starter did not answer") from exc
                    raise
                if not reply:
                    self._give_up()
                    raise StarterGone("the starter exited")
        except BaseException:
            os.close(stdin_write)
            os.close(stdout_read)
            raise
        finally:
            os.close(stdin_read)
            os.close(stdout_write)
        if not reply.isdigit():  # a fork that failed (may work next time)
            os.close(stdin_write)
            os.close(stdout_read)
            raise StarterGone(reply.decode("utf-8", "replace"))
        pid = int(reply)
        try:
            reader = asyncio.StreamReader()
            await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(stdout_read, "rb", 0)
            )
            return ForkedWorker(pid, stdin_write, reader)
        except OSError as exc:  # no file descriptors left, say: this worker is not ours
            os.close(stdin_write)
            _kill_and_reap(pid)
            raise StarterGone(f"cannot watch the forked worker: {exc}") from exc

    def _watch(self) -> None:
        """Reap the starter whenever it exits (it may die by itself, or be killed)."""
        if self._pidfd is not None:
            return
        with contextlib.suppress(OSError):
            self._pidfd = os.pidfd_open(self.pid)
            asyncio.get_running_loop().add_reader(self._pidfd, self._reap)

    def _reap(self) -> None:
        # (a request waiting for its reply reads the socket's end and gives up itself)
        self.gone = True
        if self._pidfd is not None and self._pidfd >= 0:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1  # watched once: not again
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, os.WNOHANG)

    def _give_up(self) -> None:
        self.gone = True
        self._sock.close()  # a starter still alive ends at this

    async def _drain(self) -> None:
        """Wait a while for the reply to a request given up on: a worker forked that late
        has no runtime watching it, so it is killed and reaped."""
        loop = asyncio.get_running_loop()
        try:
            reply = await asyncio.wait_for(loop.sock_recv(self._sock, 64), LATE_REPLY_WAIT)
        except (OSError, TimeoutError):
            reply = b""
        finally:
            self._give_up()
        if reply.isdigit():
            _kill_and_reap(int(reply))

    def close(self) -> None:
        """End the starter (it exits when its socket closes) and reap it."""
        self._sock.close()
        if self._pidfd is not None and self._pidfd >= 0:
            os.close(self._pidfd)  # (its loop has ended)
            self._pidfd = -1
        try:
            for _ in range(100):  # it exits at once; one that does not (stopped) is killed
                if os.waitpid(self.pid, os.WNOHANG)[0]:
                    return
                time.sleep(0.01)
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ChildProcessError, ProcessLookupError):
            pass  # reaped already


def _kill_and_reap(pid: int) -> None:
    """A forked worker the runtime cannot watch: it must not run unwatched."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(100):  # until its middle process has exited and the runtime adopted it
        try:
            os.waitpid(pid, 0)
            return
        except ChildProcessError:
            time.sleep(0.001)


def _serve(sock: socket.socket, *, runtime: int) -> None:
    """The starter: fork a worker for each request until the runtime is gone."""
    try:
        die_with(runtime, code=0)
        set_name(STARTER)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the runtime, which ends us
        _close_other_files(keep=sock.fileno())
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(sock, 65536, 2)
            except OSError:
                break
            if not message:  # the runtime closed its end: it is stopping
                break
            _fork_worker(sock, json.loads(message), fds, runtime)
            for fd in fds:
                os.close(fd)
    finally:
        os._exit(0)


def _fork_worker(sock: socket.socket, args: list[str], fds: list[int], runtime: int) -> None:
    """Fork twice: the worker's parent exits at once, and the runtime adopts the worker."""
    try:
        middle = os.fork()
    except OSError as exc:
        sock.send(f"cannot fork a worker: {exc.strerror}".encode())
        return
    if middle == 0:
        try:
            child = os.fork()
        except OSError as exc:
            sock.send(f"cannot fork a worker: {exc.strerror}".encode())
            os._exit(1)
        if child == 0:
            _become_worker(sock, args, fds, runtime)
        sock.send(str(child).encode())
        os._exit(0)
    os.waitpid(middle, 0)


def _become_worker(sock: socket.socket, args: list[str], fds: list[int], runtime: int) -> None:
    code = 1
    try:
        sock.close()
        os.dup2(fds[0], 0)
        os.dup2(fds[1], 1)
        for fd in fds:
            os.close(fd)
        # fresh objects over the pipes (the runtime's may be None, or hold buffered text)
        sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
        signal.signal(signal.SIGINT, signal.default_int_handler)
        deadline = time.monotonic() + ADOPTION_WAIT
        while os.getppid() != runtime:  # the middle process is exiting
            if time.monotonic() > deadline:
                os._exit(1)
            time.sleep(0.0005)
        from flowrt.runtime import worker
        from flowrt.runtime.workers import WorkerArgs

        parsed = WorkerArgs.parse(args)
        set_name(f"flowrt w{parsed.partition.describe()}")
        code = worker.main(args)
    except KeyboardInterrupt:  # Ctrl-C before the worker was up: as quiet as after
        code = 130
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # as a started process would: its traceback in the runtime's log
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _close_other_files(*, keep: int) -> None:
    """What the runtime had open when it forked us is not ours to hold (stdio stays)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd != keep:
            with contextlib.suppress(OSError):
                os.close(fd)
