"""One `sead train` or `sead demo` per run folder: a lock taken before anything is written, and a clean failed start.

``claim_run_dir(path)`` creates the folder if needed and takes ``RUN/.sead.lock``: a JSON file with
the holder's pid, host and start time, held under ``flock`` for the life of the process. A second
run on the same folder is refused in one line naming the holder. The kernel drops the ``flock``
when its process dies, however it dies (SIGKILL included), so a lock file whose ``flock`` can be
taken is stale: it is taken over with a note naming the dead holder. The lock is released (the
file removed) when the claim ends. If the start fails before ``claim.started()`` (bad model, bad
data, ...), a folder the claim created is removed again when nothing but empty folders is left in
it, so a failed start leaves the disk as it was.

Where ``flock`` is not available (Windows, some network mounts) the holder's pid is checked instead,
on the same host only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from sead.errors import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None

__all__ = ["LOCK_NAME", "RunClaim", "claim_run_dir", "is_main_launch"]

LOCK_NAME = ".sead.lock"


def is_main_launch() -> bool:
    """Whether this is global rank 0 of a launch (``torchrun``/``accelerate launch`` set RANK), or a plain run."""
    return os.environ.get("RANK", "0") == "0"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _holder_text(info: dict) -> str:
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, since {info.get('started', '?')}"


class RunClaim:
    """A held lock on one run folder (see module doc); ``started()`` once the run is under way."""

    def __init__(self, run_dir: Path, created: Path | None, key: str = "train.output_dir"):
        self.run_dir, self.created, self.path, self.key = run_dir, created, run_dir / LOCK_NAME, key
        self.fd: int | None = None
        self.running = False

    # ------------------------------------------------------------- acquire
    def _info(self) -> dict:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "argv": sys.argv[1:],
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def _try_flock(self, fd: int) -> bool | None:
        """True: locked; False: another process holds it; None: no flock here (Windows, some network mounts)."""
        if fcntl is None:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError:
            return None
        return True

    def acquire(self) -> RunClaim:
        for _ in range(20):  # retried only when the file changes under us (another run came or went)
            try:
                fd = os.open(self.path, os.O_RDWR)
            except FileNotFoundError:
                if self._create():
                    return self
                continue  # another run created it first: look at its holder
            except OSError as err:
                raise _not_writable(self.run_dir, err, self.key) from None
            held_by = _read_info(fd)
            locked = self._try_flock(fd)
            if locked is False or (locked is None and _alive_here(held_by)):
                held_by = _read_info(fd) or held_by  # a run that just took over a stale lock has rewritten it
                os.close(fd)
                raise ConfigError(
                    f"run folder {str(self.run_dir)!r} ({self.key}) is in use by another sead run "
                    f"({_holder_text(held_by)}); wait for it to finish or choose another {self.key} "
                    f"(if that process is gone, delete {self.path})"
                )
            if not _same_file(fd, self.path):  # its holder removed it between our open and our flock
                os.close(fd)
                continue
            _write_info(fd, self._info())
            self.fd = fd
            print(
                f"sead: warning: took over the stale lock {self.path} of {_holder_text(held_by)} "
                "(that run is no longer running)",
                file=sys.stderr,
            )
            return self
        raise ConfigError(f"could not take the lock {self.path}: it keeps changing; is another run starting there?")

    def _create(self) -> bool:
        """A new lock file that appears already locked and filled in: written aside, then hard-linked in place."""
        tmp = self.run_dir / f"{LOCK_NAME}.{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as err:
            raise _not_writable(self.run_dir, err, self.key) from None
        try:
            self._try_flock(fd)  # a new file: nobody else can hold it
            _write_info(fd, self._info())
            os.link(tmp, self.path)  # atomic, and fails if a lock file appeared meanwhile
        except FileExistsError:
            os.close(fd)
            return False
        except OSError as err:
            os.close(fd)
            raise _not_writable(self.run_dir, err, self.key) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self.fd = fd
        return True

    # ------------------------------------------------------------- release
    def started(self) -> None:
        """The run is under way: from now on a failure leaves the folder for a resume."""
        self.running = True

    def release(self, failed_start: bool = False) -> None:
        if self.fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # unlinked while still held: a run waiting on it re-checks the file
            os.close(self.fd)
            self.fd = None
        if failed_start and self.created is not None and _only_empty_folders(self.created):
            shutil.rmtree(self.created, ignore_errors=True)


def _read_info(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 65536).decode("utf-8") or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_info(fd: int, info: dict) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(info) + "\n").encode("utf-8"))
    os.fsync(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _alive_here(info: dict) -> bool:
    return info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int) and _pid_alive(info["pid"])


def _only_empty_folders(root: Path) -> bool:
    return root.is_dir() and not any(p.is_file() or p.is_symlink() for p in root.rglob("*"))


def _not_writable(run_dir: Path, err: OSError, key: str = "train.output_dir") -> ConfigError:
    return ConfigError(f"{key}={str(run_dir)!r} is not writable ({err.strerror}); choose another directory")


def _make_dirs(run_dir: Path, key: str) -> Path | None:
    """Create ``run_dir`` and its missing parents; return the top-most folder created (None: it existed)."""
    missing = [p for p in (run_dir, *run_dir.parents) if not p.exists()]
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _not_writable(run_dir, err, key) from None
    return missing[-1] if missing else None


@contextlib.contextmanager
def claim_run_dir(run_dir: str | Path, enabled: bool = True, key: str = "train.output_dir"):
    """Hold the run folder's lock for the ``with`` body (module doc); ``enabled=False`` (not rank 0) holds nothing.

    ``key`` is the setting a user changes to pick another folder, named in messages (``--out`` for
    ``sead demo`` and ``sead compare``).
    """
    run_dir = Path(run_dir)
    if not enabled:
        yield RunClaim(run_dir, None, key)
        return
    claim = RunClaim(run_dir, _make_dirs(run_dir, key), key)
    try:
        claim.acquire()
    except BaseException:
        claim.release(failed_start=True)
        raise
    try:
        yield claim
    except BaseException:
        claim.release(failed_start=not claim.running)
        raise
    claim.release()
