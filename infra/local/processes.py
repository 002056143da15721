"""Processes of the local stack, each recorded by PID and stopped by PID.

A service runs in its own session (process group), so stopping it reaches the workers it spawns. Its
PID file holds the PID and the process's start time from ``/proc``: a PID the kernel has since given to
another process is never mistaken for the service, and never signalled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

LOGGER = logging.getLogger(__name__)


class ServiceStartError(RuntimeError):
    """A service exited or did not become ready in time; the message has its log's tail."""


@dataclass(frozen=True)
class Service:
    """Where one service of the stack keeps its PID file and log."""

    name: str
    state_dir: Path

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "pids" / f"{self.name}.pid"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "logs" / f"{self.name}.log"

    def log_tail(self, characters: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-characters:]
        except OSError:
            return "(no log)"


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (clock ticks since boot), or None when no such process lives."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; fields after its closing parenthesis are plain.
    after_name = stat.rsplit(")", 1)[1].split()
    return after_name[19] if after_name[0] != "Z" else None  # a zombie is as good as gone


def running_pid(service: Service) -> int | None:
    """The PID of the running service, or None (a stale PID file is removed)."""
    try:
        pid_text, started = service.pid_file.read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    if _start_time(pid) == started:
        return pid
    service.pid_file.unlink(missing_ok=True)
    return None


def start(service: Service, command: Sequence[str], environment: Mapping[str, str], cwd: Path) -> int:
    """Launch ``command`` in a new session with its output in the service's log; record its PID."""
    service.pid_file.parent.mkdir(parents=True, exist_ok=True)
    service.log_path.parent.mkdir(parents=True, exist_ok=True)
    with service.log_path.open("ab") as log:
        process = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=dict(environment),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started = _start_time(process.pid)
    service.pid_file.write_text(f"{process.pid} {started}\n")
    LOGGER.info("started %s (pid %d)", service.name, process.pid)
    return process.pid


def _group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _start_time(pid) is not None or _group_has_members(pid)


def _group_has_members(group: int) -> bool:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == group and fields[0] != "Z":
                    return True
    return False


def stop(service: Service, grace_s: float = 15.0) -> bool:
    """SIGTERM the service's process group, SIGKILL what is left after ``grace_s``; True if it ran."""
    pid = running_pid(service)
    if pid is None:
        service.pid_file.unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _group_alive(pid):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it when this process started it
        time.sleep(0.2)
    if _group_alive(pid):
        LOGGER.warning("%s (pid %d) ignored SIGTERM for %.0fs; killing it", service.name, pid, grace_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    service.pid_file.unlink(missing_ok=True)
    LOGGER.info("stopped %s (pid %d)", service.name, pid)
    return True


def kill(service: Service) -> int | None:
    """SIGKILL the service's process group at once (a crash, for fault tests); returns its PID."""
    pid = running_pid(service)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        service.pid_file.unlink(missing_ok=True)
    return pid


def http_ok(url: str, headers: Mapping[str, str] | None = None) -> bool:
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def wait_ready(service: Service, ready: Callable[[], bool], timeout_s: float) -> None:
    """Poll ``ready`` until it answers True; raise with the log's tail if the service dies or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if running_pid(service) is None:
            raise ServiceStartError(f"{service.name} exited while starting:\n{service.log_tail()}")
        if ready():
            return
        time.sleep(0.5)
    raise ServiceStartError(f"{service.name} not ready after {timeout_s:.0f}s:\n{service.log_tail()}")
