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


# Inside a run folder: the files of the run that --overwrite replaces, kept until the new run has
# written its first checkpoint, so a new run that fails on its data or its model loses nothing.
ASIDE_NAME = ".replaced"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def move_aside(folder: str | Path, names) -> None:
    """Move ``names`` (files or folders) of ``folder`` into ``folder/.replaced/`` instead of deleting
    them; :func:`settle_aside` later restores or removes them. Renames only: nothing is copied."""
    folder = Path(folder)
    aside = folder / ASIDE_NAME
    settle_aside(folder)  # an overwrite interrupted earlier (kill -9) is settled first
    present = [n for n in names if (folder / n).exists() or (folder / n).is_symlink()]
    if not present:
        return
    aside.mkdir(exist_ok=True)
    for name in present:
        os.replace(folder / name, aside / name)


def settle_aside(folder: str | Path, checkpoint: str = "last.safetensors") -> None:
    """After a run in ``folder``: if it wrote ``checkpoint`` (it started cleanly), remove the files it
    replaced; otherwise put them back, over whatever the failed run wrote."""
    folder = Path(folder)
    aside = folder / ASIDE_NAME
    if not aside.is_dir():
        return
    if (folder / checkpoint).is_file():
        _remove(aside)
        return
    for entry in sorted(aside.iterdir()):
        target = folder / entry.name
        if target.exists() or target.is_symlink():
            _remove(target)
        os.replace(entry, target)
    aside.rmdir()


def check_writable_folder(folder: str | Path, what: str = "output folder") -> Path:
    """Refuse, before any work, a folder that cannot be created or written: it is a file, a parent is a
    file, or the nearest existing parent is not writable. Creates nothing."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ExciteError(f"{what} {folder} is not writable: it exists and is a file")
    parent = folder
    while not parent.exists():
        if parent.is_symlink():
            raise ExciteError(f"{what} {folder} is not writable: {parent} is a broken link")
        parent = parent.parent
    if not parent.is_dir():
        raise ExciteError(f"{what} {folder} cannot be created: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExciteError(f"{what} {folder} is not writable: no permission to write in {parent}")
    return folder
