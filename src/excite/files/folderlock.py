"""One writer per output folder: ``<folder>/.lock`` names its holder (pid and host).

Two ``excite train`` runs into one ``--out`` would interleave their logs and leave ``last`` from one
and ``best`` from the other; two studies in one folder would clear each other's unfinished runs. A
lock file says who holds the folder, and an ``flock`` on it (POSIX) says whether that holder is still
alive: the kernel drops the ``flock`` when the process dies, however it dies, so a lock left by a
killed process (``kill -9``, a crash, a power cut) is recovered by the next run. Where there is no
``flock``, a holder on this host whose pid no longer exists is taken for dead.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
from pathlib import Path

from excite.core.errors import ExciteError

LOCK_NAME = ".lock"

try:
    import fcntl  # POSIX only
except ImportError:  # not POSIX
    fcntl = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _holder(path: Path) -> tuple[str, int | None, str]:
    """``(text, pid, host)`` of the lock file's content (``pid host``)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return "an unknown process", None, ""
    pid, _, host = text.partition(" ")
    try:
        return f"process {int(pid)} on {host or 'an unknown host'}", int(pid), host
    except ValueError:
        return "an unknown process", None, host


class FolderLock:
    """An exclusive lock on ``folder`` (created if missing) for one process; ``release()`` or use as a
    context manager. ``what`` names the kind of folder in the message (``training run``, ``study``).

    Raises ``ExciteError`` naming the holder when a live process holds the folder.
    """

    def __init__(self, folder: str | Path, what: str = "run"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self._fd: int | None = None
        self._acquire()

    def _refuse(self, holder: str):
        raise ExciteError(f"{self.folder} is in use by another {self.what} ({holder}); wait for it to finish or "
                          f"use another output folder (if no such process exists, delete {self.path})")

    def _acquire(self) -> None:
        me = f"{os.getpid()} {socket.gethostname()}\n".encode()
        for _ in range(10):  # retried only when another process replaced the file under us
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if fcntl is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError as e:
                        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                            raise
                        self._refuse(_holder(self.path)[0])
                    # The holder before us may have deleted the file after we opened it: then our lock is
                    # on a file nobody else sees. Start again on the file that is there now.
                    try:
                        same = os.path.samestat(os.fstat(fd), os.stat(self.path))
                    except FileNotFoundError:
                        same = False
                    if not same:
                        os.close(fd)
                        continue
                else:
                    text, pid, host = _holder(self.path)
                    if pid is not None and pid != os.getpid() and (host != socket.gethostname() or _alive(pid)):
                        self._refuse(text)
                os.ftruncate(fd, 0)
                os.write(fd, me)
                self._fd = fd
                return
            except BaseException:
                if self._fd is None:
                    os.close(fd)
                raise
        raise ExciteError(f"could not lock {self.folder}: its lock file keeps changing")

    def release(self) -> None:
        """Delete the lock file and drop the lock (a read-only or vanished folder is not an error here)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        try:
            os.close(self._fd)
        finally:
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def remove_created(created: list[Path]) -> None:
    """Remove the folders a command created (deepest first) when it failed before writing anything:
    a failed command leaves no folder behind."""
    if created:
        shutil.rmtree(created[0], ignore_errors=True)
    for folder in created[1:]:
        try:
            folder.rmdir()
        except OSError:
            break
