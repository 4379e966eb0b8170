"""One process per run directory (``<root>/<run_id>/.lock``).

The lock is an advisory ``flock`` on the lock file, which holds the owner's PID and host. A second
process that starts the same run waits for the first (saying "running in PID N") and then re-checks
the store, so it reuses the finished run instead of training it again; ``wait=False`` makes it fail
at once with that message instead. The kernel drops a ``flock`` when its process dies, so the lock
of a killed run is taken over by the next start (the stale PID in the file is only a message).
"""
from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Callable, Iterator

from .errors import RunError

LOCK_NAME = ".lock"


class RunLock:
    def __init__(self, run_dir: Path, *, wait: bool = True, on_wait: Callable[[str], None] | None = None,
                 poll_s: float = 0.5):
        self.path = Path(run_dir) / LOCK_NAME
        self.wait, self.on_wait, self.poll_s = wait, on_wait, poll_s
        self._fd: int | None = None

    def owner(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def acquire(self) -> "RunLock":
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if _same_file(fd, self.path):
                    break
                os.close(fd)  # the holder removed the file (and an empty folder) as we waited: lock anew
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                continue
            except BlockingIOError:
                who = self.owner()
                if not self.wait:
                    os.close(fd)
                    raise RunError(f"{self.path.parent.name}: already running in PID {who} (lock {self.path}); "
                                   f"wait for it to finish, then run again to reuse its results") from None
                if not told and self.on_wait is not None:
                    self.on_wait(f"{self.path.parent.name}: running in PID {who}; waiting for it to finish")
                    told = True
                time.sleep(self.poll_s)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file (while still holding it) and unlock; waiting processes notice."""
        if self._fd is not None:
            import fcntl

            self.path.unlink(missing_ok=True)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    fst = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


@contextlib.contextmanager
def locked_run_dir(run_dir: Path, enabled: bool = True, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the run directory's lock for the block (the folder is created for it, and removed again
    if the block left it empty: a run that failed before writing anything leaves no folder).
    ``enabled=False`` (data-parallel ranks other than 0): no lock."""
    if not enabled:
        yield
        return
    run_dir = Path(run_dir)
    created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]  # the root too, on a first run
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir, on_wait=on_wait).acquire()
    try:
        yield
    finally:
        lock.release()
        for p in [run_dir, *(c for c in created if c != run_dir)]:
            with contextlib.suppress(OSError):
                p.rmdir()  # only succeeds when empty
