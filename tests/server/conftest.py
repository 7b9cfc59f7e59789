"""Real Kafka clients against a real ``kstore serve`` process (kafka-protocol.md section 9).

``kserver(*args, env=None, data=None)`` starts ``python -m kstore serve --data DIR --listen
127.0.0.1:0 ARGS`` in a subprocess, waits for its ``kstore serving DIR on 127.0.0.1:PORT`` line
and returns a :class:`KServer` (``.port``, ``.bootstrap``, ``.data``, ``.log``, ``.stop()``,
``.restart()``). At teardown every server still running gets SIGTERM, and each server must
have exited with status 0, printed ``kstore serve: stopped`` and logged no Traceback.

Clients run in subprocesses (``run_cmd``/``kcat``) or threads with timeouts, so a hang fails
the test instead of blocking the run. There are no timing thresholds: ``wait_until`` waits for
a condition with a generous deadline that only a broken server reaches.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

START_TIMEOUT = 30.0  # seconds for the server to print its listening line
STOP_TIMEOUT = 30.0  # seconds for the server to exit after SIGTERM
CLIENT_TIMEOUT = 60.0  # seconds any client subprocess may take

_SERVING = re.compile(r"kstore serving (.+) on 127\.0\.0\.1:(\d+)")


def wait_until(cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition",
               interval: float = 0.02) -> Any:
    """Poll ``cond`` until it returns something truthy (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class KServer:
    """One ``kstore serve`` subprocess over a data directory (kept across restarts)."""

    def __init__(self, data: Path, args: list[str], env: dict[str, str] | None,
                 logdir: Path, name: str) -> None:
        self.data = Path(data)
        self.args = list(args)
        self.env = dict(env or {})
        self._logdir = logdir
        self._name = name
        self._runs: list[Path] = []  # one log file per start
        self.proc: subprocess.Popen[bytes] | None = None
        self.killed_runs: list[Path] = []
        self.port = 0
        self.returncodes: list[int] = []

    # ------------------------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        """The server's stderr so far, over all its runs."""
        return "".join(p.read_text(errors="replace") for p in self._runs if p.exists())

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, port: int = 0) -> KServer:
        assert not self.running, "already running"
        logfile = self._logdir / f"{self._name}-run{len(self._runs)}.log"
        self._runs.append(logfile)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1", **self.env}
        cmd = [sys.executable, "-m", "kstore", "serve", "--data", str(self.data),
               "--listen", f"127.0.0.1:{port}", *self.args]
        with open(logfile, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                         env=env, cwd=self._logdir)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            m = _SERVING.search(logfile.read_text(errors="replace"))
            if m:
                self.port = int(m.group(2))
                return self
            if self.proc.poll() is not None:
                pytest.fail(f"kstore serve exited with status {self.proc.returncode} before "
                            f"listening:\n{logfile.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"kstore serve printed no listening line in {START_TIMEOUT:.0f}s:\n"
                            f"{logfile.read_text(errors='replace')}")
            time.sleep(0.02)

    def stop(self, check: bool = True) -> str:
        """SIGTERM, wait, and (``check``) assert a clean exit and no Traceback. Returns the log."""
        proc = self.proc
        if proc is None:
            return self.log
        self.proc = None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGABRT)  # faulthandler prints the stacks
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                if check:
                    pytest.fail(f"kstore serve did not exit within {STOP_TIMEOUT:.0f}s of "
                                f"SIGTERM:\n{self.log[-20000:]}")
        self.returncodes.append(proc.returncode)
        log = self.log
        if check:
            self.check_log(log)
            assert proc.returncode == 0, (
                f"kstore serve exited with status {proc.returncode}:\n{log[-20000:]}")
            last = self._runs[-1].read_text(errors="replace")
            assert "kstore serve: stopped" in last, f"no clean stop line:\n{last[-5000:]}"
        return log

    def kill(self) -> None:
        """SIGKILL, as a crash: this run is left out of the clean-stop checks."""
        proc = self.proc
        assert proc is not None, "not running"
        proc.send_signal(signal.SIGKILL)
        proc.wait(STOP_TIMEOUT)
        self.proc = None
        self.killed_runs.append(self._runs[-1])

    def restart(self, same_port: bool = True) -> KServer:
        """Stop (checked) and start again over the same data directory (and port)."""
        port = self.port
        self.stop()
        return self.start(port if same_port else 0)

    @staticmethod
    def check_log(log: str) -> None:
        assert "Traceback" not in log, f"the server log has a Traceback:\n{log[-20000:]}"
        assert "internal error" not in log, f"the server logged an internal error:\n{log[-20000:]}"

    def wait_log(self, pattern: str, timeout: float = 20.0, count: int = 1) -> list[str]:
        """Wait until ``pattern`` (a regex) matches ``count`` lines of the log; return them."""
        rx = re.compile(pattern)

        def found() -> list[str]:
            lines = [ln for ln in self.log.splitlines() if rx.search(ln)]
            return lines if len(lines) >= count else []

        return wait_until(found, timeout, f"server log line /{pattern}/:\n{self.log[-5000:]}")


@pytest.fixture
def kserver(tmp_path: Path) -> Iterator[Callable[..., KServer]]:
    """Factory: ``kserver(*extra_cli_args, env=None, data=None)`` -> a started KServer."""
    servers: list[KServer] = []

    def start(*args: str, env: dict[str, str] | None = None, data: Path | None = None) -> KServer:
        n = len(servers)
        srv = KServer(data or tmp_path / f"data{n}", [str(a) for a in args], env, tmp_path,
                      f"server{n}")
        servers.append(srv)
        return srv.start()

    yield start
    failures = []
    for srv in servers:
        try:
            srv.stop(check=False)
            # Shown by pytest only when the test fails: the whole server log.
            print(f"==== {srv._name} log ({srv.data}) ====\n{srv.log}")
            srv.check_log(srv.log)
            for run in srv._runs:
                if run in srv.killed_runs:
                    continue
                assert "kstore serve: stopped" in run.read_text(errors="replace"), (
                    f"{run.name}: no clean stop line")
            assert all(rc == 0 for rc in srv.returncodes), (
                f"exit statuses {srv.returncodes}:\n{srv.log[-20000:]}")
        except (AssertionError, pytest.fail.Exception) as exc:
            failures.append(str(exc))
    if failures:
        pytest.fail("\n\n".join(failures))


# ==============================================================================================
# Clients in subprocesses


def run_cmd(cmd: list[str], *, input: bytes | None = None, timeout: float = CLIENT_TIMEOUT,
            check: bool = True, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a client command with a timeout; fail with its output if it hangs (or fails when
    ``check``)."""
    full_env = {**os.environ, **(env or {})}
    try:
        done = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout,
                              env=full_env, cwd=cwd, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd)} hung for {timeout:.0f}s\nstdout: {_tail(exc.stdout)}\n"
                    f"stderr: {_tail(exc.stderr)}")
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited with {done.returncode}\n"
                    f"stdout: {_tail(done.stdout)}\nstderr: {_tail(done.stderr)}")
    return done


def _tail(b: bytes | None, n: int = 8000) -> str:
    return "" if b is None else b[-n:].decode(errors="replace")


KCAT = shutil.which("kcat")


def kcat(srv: KServer, *args: str, input: bytes | None = None, timeout: float = CLIENT_TIMEOUT,
         check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """``kcat -b <server> ARGS`` (``-m 10`` metadata timeout unless given)."""
    if KCAT is None:
        pytest.skip("kcat is not installed (Debian: apt-get install kcat)")
    extra = [] if "-m" in args else ["-m", "10"]
    return run_cmd([KCAT, "-b", srv.bootstrap, *extra, *args], input=input, timeout=timeout,
                   check=check)


def kstore_cli(*args: str, timeout: float = CLIENT_TIMEOUT,
               check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """``python -m kstore ARGS`` (the CLI of this checkout)."""
    return run_cmd([sys.executable, "-m", "kstore", *args], timeout=timeout, check=check)
