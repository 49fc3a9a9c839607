"""One writer per run folder.

The runner holds an exclusive lock on ``<run>/.runner.lock`` for its whole life; a second runner stops with
a message naming the holder (pid, host, start time, command).  Each notebook kernel a runner starts holds
``<run>/.kernel.lock`` while it lives, and a runner waits for that lock to be free before it starts a stage,
so the kernel of a killed runner (which outlives it by a few seconds) has exited before anything new is
written.  A notebook opened by hand refuses to write into a run a runner holds, and while its kernel lives it
holds the kernel lock and a shared runner lock, so no runner and no second notebook write there meanwhile
(library code used outside a notebook kernel, as in tests, only checks).  Locks are ``fcntl`` locks:
the system frees them when a process dies, so a crash never leaves a stale lock behind.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

RUNNER_ENV = "QLASS_RUNNER_PID"


class RunLocked(RuntimeError):
    """Another process is writing this run folder."""


def _try_lock(path: Path, exclusive: bool = True):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _owner(run_dir: Path, name: str) -> str:
    try:
        o = json.loads((run_dir / name).read_text())
        return f"pid {o['pid']} on {o['host']}, since {o['started']}: {o['command']}"
    except (OSError, ValueError, KeyError):
        return "unknown holder"


class RunnerLock:
    def __init__(self, run_dir: Path, kernel_wait_s: float = 60.0):
        self.run_dir, self.kernel_wait_s, self.fd = Path(run_dir), kernel_wait_s, None

    def __enter__(self):
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.fd = _try_lock(self.run_dir / ".runner.lock")
        if self.fd is None:
            kernel = _try_lock(self.run_dir / ".kernel.lock")
            if kernel is None:  # a notebook opened by hand holds the run
                raise RunLocked(f"{self.run_dir} is open in a notebook ({_owner(self.run_dir, '.kernel.owner')}); "
                                f"close that notebook (or shut down its kernel) first")
            os.close(kernel)
            raise RunLocked(f"{self.run_dir} is being written by another runner ({_owner(self.run_dir, '.runner.owner')}); "
                            f"wait for it to finish or stop it")
        (self.run_dir / ".runner.owner").write_text(json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}))
        os.environ[RUNNER_ENV] = str(os.getpid())
        return self

    def wait_for_kernels(self) -> None:
        """Block until no notebook kernel holds the run (e.g. the kernel of a runner that was killed)."""
        deadline = time.monotonic() + self.kernel_wait_s
        while True:
            fd = _try_lock(self.run_dir / ".kernel.lock")
            if fd is not None:
                os.close(fd)
                return
            if time.monotonic() > deadline:
                raise RunLocked(f"a notebook kernel still writes {self.run_dir} "
                                f"({_owner(self.run_dir, '.kernel.owner')}); close that notebook or stop the kernel")
            time.sleep(0.2)

    def __exit__(self, *exc):
        os.environ.pop(RUNNER_ENV, None)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        return False


_KERNEL_FD: int | None = None


def claim_for_kernel(run_dir: Path) -> None:
    """Called by every notebook (``RunContext.open``).  Under a runner: hold the kernel lock until this process
    exits.  Opened by hand: refuse when a runner is writing the run."""
    global _KERNEL_FD
    run_dir = Path(run_dir)
    if os.environ.get(RUNNER_ENV):
        if _KERNEL_FD is not None:
            return
        fd = _try_lock(run_dir / ".kernel.lock")
        if fd is None:
            raise RunLocked(f"another notebook kernel writes {run_dir} ({_owner(run_dir, '.kernel.owner')})")
        (run_dir / ".kernel.owner").write_text(json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(), "command": "notebook kernel",
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}))
        _KERNEL_FD = fd
        return
    key = str(run_dir.resolve())
    if key in _BY_HAND:
        return
    probe = _try_lock(run_dir / ".runner.lock", exclusive=False)
    if probe is None:
        raise RunLocked(f"{run_dir} is being written by a runner ({_owner(run_dir, '.runner.owner')}); open another "
                        f"run_id or wait for it to finish")
    if not _in_notebook_kernel():
        os.close(probe)
        return
    fd = _try_lock(run_dir / ".kernel.lock")
    if fd is None:
        os.close(probe)
        raise RunLocked(f"another notebook kernel writes {run_dir} ({_owner(run_dir, '.kernel.owner')})")
    (run_dir / ".kernel.owner").write_text(json.dumps({
        "pid": os.getpid(), "host": socket.gethostname(), "command": "notebook opened by hand",
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}))
    _BY_HAND[key] = (probe, fd)  # held until the kernel exits


_BY_HAND: dict[str, tuple[int, int]] = {}


def _in_notebook_kernel() -> bool:
    """Whether this process is a Jupyter kernel (a notebook), not a script or a test run."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"
