"""Child processes for the tests and the benches: one way to start, wait for and stop them.

Imports nothing from ``gateway``: a bench that runs another source tree's
gateway (``--tree``) does not depend on this one importing cleanly.

Used by the ``spawn_gateway`` fixture (``conftest.py``), the real proxies of
``tests/proxies.py``, the systemd recipe test and every script in ``bench/``:

* ``ChildProcess.start(argv, ...)`` runs a child with its stdout and stderr
  merged into one pipe that a thread keeps reading for the life of the
  process (a chatty child, access logs at info, would otherwise fill the
  pipe and block);
* ``wait_announced`` (the child logs a line such as ``listening on URL``) and
  ``wait_accepting`` (its port takes a connection) wait bounded in time; on
  failure they stop the child and raise with everything it wrote;
* ``stop`` sends SIGTERM, waits a bounded time, then kills it (its whole
  process group when it was started in its own);
* ``start_gateway(role, *args)`` runs ``python -m gateway ROLE`` on
  ``127.0.0.1:0`` and reads its address from the ``listening on`` line,
  optionally from another source tree (``tree``: the benches compare a
  pristine "before" clone with this checkout), under a descriptor limit
  (``nofile``) or quiet (``log_level`` above info: a known port is waited on).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Self

LISTENING = re.compile(r"listening on (https?://[^\s,]+)")
#: Longest wait for a child to say it listens (or to accept a connection).
STARTUP_TIMEOUT = 20.0
#: Longest wait after SIGTERM before SIGKILL, and after SIGKILL.
STOP_TIMEOUT = 10.0
KILL_TIMEOUT = 5.0


class ChildProcess:
    """A child process and everything it has written so far (``lines``).

    ``keep_lines`` bounds what is kept (``line_count`` still counts every
    line); ``log_files`` are files the child writes its logs to, shown with
    its output when something fails.
    """

    def __init__(
        self,
        proc: subprocess.Popen[str],
        name: str,
        *,
        announce: re.Pattern[str] | None = None,
        keep_lines: int | None = None,
        own_group: bool = False,
        log_files: Sequence[Path] = (),
    ) -> None:
        self.proc = proc
        self.name = name
        self.announce = announce
        self.keep_lines = keep_lines
        self.own_group = own_group
        self.log_files = tuple(log_files)
        self.lines: list[str] = []
        self.line_count = 0
        #: The first group of the first line ``announce`` matched.
        self.announced = ""
        #: Set by ``stop``: the child did not end on its own.
        self.stopped = False
        self._said = threading.Event()

    @classmethod
    def start(
        cls,
        argv: Sequence[str],
        *,
        name: str = "",
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        own_group: bool = False,
        **options: Any,
    ) -> Self:
        """Run ``argv`` (``env`` is added to this process's environment); returns at once."""
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            cwd=cwd,
            start_new_session=own_group,  # its own process group, killed as one
        )
        child = cls(proc, name or Path(argv[0]).name, own_group=own_group, **options)
        assert proc.stdout is not None
        threading.Thread(
            target=child._drain, args=(proc.stdout,), daemon=True, name=f"output-{proc.pid}"
        ).start()
        return child

    def _drain(self, stream: IO[str]) -> None:
        for line in stream:
            self.line_count += 1
            if self.keep_lines is None or len(self.lines) < self.keep_lines:
                self.lines.append(line)
            if not self.announced and self.announce and (match := self.announce.search(line)):
                self.announced = match.group(1)
                self._said.set()
        self._said.set()  # end of output: the child is gone, nothing more will be said

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        """Everything the child wrote: its stdout/stderr, then its log files."""
        parts = ["".join(self.lines)]
        for path in self.log_files:
            with contextlib.suppress(OSError):
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')}")
        return "\n".join(parts)

    def count(self, needle: str) -> int:
        """Kept output lines that contain ``needle``."""
        return sum(needle in line for line in self.lines)

    def send_signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def wait_announced(self, timeout: float = STARTUP_TIMEOUT) -> str:
        """Block until a line matches ``announce``; returns its first group."""
        started = time.monotonic()
        if not self._said.wait(timeout) or not self.announced:
            waited = time.monotonic() - started
            self.stop()
            raise RuntimeError(
                f"{self.name} did not say it listens within {waited:.1f}s "
                f"(exit {self.proc.returncode}); output:\n{self.output()}"
            )
        return self.announced

    def wait_accepting(self, port: int, timeout: float = STARTUP_TIMEOUT) -> None:
        """Block until ``127.0.0.1:port`` takes a connection; fail if the child exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with status {self.proc.returncode} before "
                    f"accepting on port {port}:\n{self.output()}"
                )
            if accepts(port):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"{self.name} did not accept on port {port} within {timeout}s:\n{self.output()}"
        )

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM; SIGKILL after ``timeout`` (to the whole group if it has its own)."""
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # The leader is alive (not reaped), so its group id is still
                # ours: nginx workers and squid helpers go with it.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    if self.own_group:
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    else:
                        self.proc.kill()
                self.proc.wait(KILL_TIMEOUT)
        return self.proc.returncode


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def accepts(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """Whether ``host:port`` takes a TCP connection now (within ``timeout``)."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def proc_status_kib(pid: int, field: str = "VmRSS") -> int:
    """A KiB figure of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``...); OSError once it is gone."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(f"{field} not in /proc/{pid}/status")


# ---------------------------------------------------------------- gateways


class GatewayProcess(ChildProcess):
    """A ``hopgate`` child process; ``url`` is known once it listens."""

    url = ""

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def rss_kib(self) -> int:
        return proc_status_kib(self.pid, "VmRSS")

    def peak_rss_kib(self) -> int:
        """``VmHWM`` (peak resident set size) of the process, in KiB."""
        return proc_status_kib(self.pid, "VmHWM")


def gateway_command(*args: str, python: str = sys.executable) -> list[str]:
    """argv that runs the gateway package, whichever interpreter runs the tests."""
    return [python, "-m", "gateway", *args]


def start_gateway(
    role: str,
    *args: str,
    listen: str = "",
    log_level: str = "info",
    tree: Path | None = None,
    python: str = sys.executable,
    nofile: int | None = None,
    keep_lines: int | None = None,
    timeout: float = STARTUP_TIMEOUT,
) -> GatewayProcess:
    """Run ``python -m gateway ROLE --listen LISTEN --log-level LEVEL ARGS...``; wait for it.

    At ``info`` (or ``debug``) the address is read from the ``listening on``
    line, so ``listen`` may use port 0 (the default); a quieter gateway gets a
    free port and is waited on by connecting. ``tree``: run the package of
    that source tree (from inside it: ``python -m`` puts the working directory
    first on ``sys.path``). ``nofile``: run under ``prlimit --nofile=N:N``.
    """
    if "--log-level" in args:
        raise ValueError("pass log_level=...: the spawner must know whether it logs 'listening'")
    announced = log_level in ("info", "debug")
    listen = listen or ("127.0.0.1:0" if announced else f"127.0.0.1:{free_port()}")
    if not announced and listen.endswith(":0"):
        raise ValueError(f"at --log-level {log_level} the port is not logged: name one")
    wrapper = ["prlimit", f"--nofile={nofile}:{nofile}"] if nofile is not None else []
    flags = ("--listen", listen, "--log-level", log_level, *args)
    argv = [*wrapper, *gateway_command(role, *flags, python=python)]
    gw = GatewayProcess.start(
        argv,
        name=f"hopgate {role}",
        env={"PYTHONPATH": str(tree)} if tree is not None else None,
        cwd=tree,
        announce=LISTENING,
        keep_lines=keep_lines,
    )
    if announced:
        gw.url = gw.wait_announced(timeout)
    else:
        port = int(listen.rsplit(":", 1)[1])
        gw.wait_accepting(port, timeout)
        gw.url = f"http://127.0.0.1:{port}"
    # A gateway on every address is reached on loopback.
    gw.url = gw.url.replace("//0.0.0.0:", "//127.0.0.1:")
    return gw


def unlimited_sessions(max_sessions: int) -> tuple[str, ...]:
    """Flags that let one loopback client open ``max_sessions`` hop sessions at full speed.

    The per-address limits (``--max-sessions-per-client``,
    ``--session-create-rate``) are off: what is measured is the sessions
    themselves, not the limits that keep one address from opening them.
    """
    return (
        "--max-sessions", str(max_sessions),
        "--max-sessions-per-client", "0",
        "--session-create-rate", "1e9",
    )  # fmt: skip


#: Where the hop-secret header is made, newest layout first (a bench may
#: run an older tree).
AUTH_HEADER_MODULES = (
    "gateway.transports.handshake",
    "gateway.transports.endpoint",
    "gateway.session.endpoint",
)


def auth_header_in_tree(
    secret: str, *, age: float = 0.0, tree: Path | None = None, python: str = sys.executable
) -> str:
    """The hop-secret header the gateway of ``tree`` sends, made ``age`` seconds ago.

    Made by that tree's own code in a child interpreter, so a bench compares
    like with like whatever the tree's header format.
    """
    when = f", now=time.time() - {age!r}" if age else ""
    code = (
        "import importlib, sys, time\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        make = importlib.import_module(name).auth_header_value\n"
        "    except (ImportError, AttributeError):\n"
        "        continue\n"
        f"    print(make({secret!r}{when}))\n"
        "    break\n"
        "else:\n"
        "    sys.exit('no auth_header_value in ' + ', '.join(sys.argv[1:]))\n"
    )
    made = subprocess.run(
        [python, "-c", code, *AUTH_HEADER_MODULES],
        cwd=tree,
        env={**os.environ, **({"PYTHONPATH": str(tree)} if tree is not None else {})},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return made.stdout.strip()


@contextlib.contextmanager
def running_gateway_process(role: str, *args: str, **options: Any) -> Iterator[GatewayProcess]:
    """``start_gateway`` for the body of a ``with``; stopped at its end."""
    gw = start_gateway(role, *args, **options)
    try:
        yield gw
    finally:
        gw.stop()


SpawnGateway = Callable[..., GatewayProcess]
