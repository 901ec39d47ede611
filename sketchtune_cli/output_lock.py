"""An exclusive lock on one output: ``<out>.partial/lock``, a JSON record of its holder.

Why not ``fcntl``/``flock`` (or ``filelock.FileLock``, which uses them): on NFS and other shared filesystems
those locks are advisory, often unsupported, and vanish silently when a client loses its lease. Instead the
record is written to a private temporary file and hard-linked to ``lock``: ``link`` is atomic and fails when
the name exists on local disks and NFS alike, so exactly one writer wins and the lock is never seen half
written (filesystems without hard links fall back to an ``O_EXCL`` create).

The record (pid, host, the holder process's start time, when the lock was taken) lets the next run decide:
a holder on this host whose process is gone (or whose pid now belongs to a newer process) is stale and may
be taken over by ``--resume``; a holder on another host cannot be checked from here and is reported by name.

Only the main process of a multi-process run takes the lock; the other ranks of the same launch are
recognised by ``job`` (the launcher's rendezvous address) so an early check on them does not refuse their
own job's lock.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import UserError

LOCK_NAME = "lock"


class OutputLocked(UserError):
    """The output is being written by another run (or its lock cannot be judged): nothing was touched."""


@dataclass(frozen=True)
class Holder:
    pid: int
    host: str
    process_start: float | None  # psutil create_time of the holder: tells a reused pid from the holder
    started: str
    job: str | None = None

    @classmethod
    def me(cls) -> "Holder":
        return cls(pid=os.getpid(), host=socket.gethostname(), process_start=_process_start(os.getpid()),
                   started=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), job=_job_id())

    @classmethod
    def parse(cls, text: str) -> "Holder":
        """A lock file's record (missing fields None)."""
        data = json.loads(text)
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host} (since {self.started})"

    def alive(self) -> bool | None:
        """True/False on this host; None when the holder runs on another host (cannot be checked)."""
        if self.host != socket.gethostname():
            return None
        start = _process_start(self.pid)
        if start is None:
            return False
        return self.process_start is None or abs(start - self.process_start) < 1.0


def _process_start(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def _job_id() -> str | None:
    """The launch this process belongs to (torchrun / accelerate set these on every rank), or None."""
    if "RANK" not in os.environ or "MASTER_ADDR" not in os.environ:
        return None
    parts = (os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT"), os.environ.get("TORCHELASTIC_RUN_ID"))
    return ":".join(p or "" for p in parts)


def lock_path(partial: Path) -> Path:
    return Path(partial) / LOCK_NAME


def read_holder(partial: Path) -> Holder | None:
    """The holder recorded in ``partial``'s lock, or None when there is no lock. An unreadable record is an
    error: guessing could let two runs write one output."""
    path = lock_path(partial)
    try:
        return Holder.parse(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as e:
        raise OutputLocked(f"cannot read the lock {path} ({type(e).__name__}); if no run is writing "
                           f"{Path(partial).name}, delete that file") from None


def refuse_if_held(partial: Path, out: Path) -> bool:
    """Raise OutputLocked when a live run (or one on another host) holds ``out``'s lock. Returns True when a
    stale lock (a dead holder on this host) is present, False when there is none or it is this job's."""
    return _stale_holder(partial, out) is not None


def _stale_holder(partial: Path, out: Path) -> Holder | None:
    """:func:`refuse_if_held`, returning the stale holder it judged (None: no lock, or this job's)."""
    holder = read_holder(partial)
    if holder is None:
        return None
    alive = holder.alive()
    if alive is False:  # dead on this host: stale, even if it was a rank of a launch like ours
        return holder
    if holder.job is not None and holder.job == _job_id():
        return None  # our own launch's main process holds it (other ranks check too)
    if alive:
        raise OutputLocked(f"output {out} is being written by a running sketchtune, {holder.describe()}; wait "
                           f"for it to finish or choose another -o")
    raise OutputLocked(f"output {out} is locked by {holder.describe()}, which cannot be checked from here; "
                       f"if that run has ended, delete {lock_path(partial)} and retry")


def acquire(partial: Path, out: Path, take_stale: bool) -> Holder:
    """Take the lock in ``partial`` (which must exist). A stale lock is taken over only when ``take_stale``
    (a ``--resume``); otherwise it is left for the interrupted-run message."""
    me = Holder.me()
    path = lock_path(partial)
    for _ in range(3):
        if _create(path, me):
            return me
        stale = _stale_holder(partial, out)
        if stale is not None:
            if not take_stale:
                raise OutputLocked(f"an interrupted run left {partial}; pass --resume to continue it or delete that "
                                f"directory")
            # Only the lock judged stale may go: a run that took it over since then keeps it.
            _remove_stale(path, stale)
    raise OutputLocked(f"could not take the lock {path}: other runs keep taking it; retry when they are done")


def release(lock_dir: Path, holder: Holder) -> None:
    """Remove the lock in ``lock_dir`` if it is still ``holder``'s."""
    try:
        if read_holder(lock_dir) == holder:
            lock_path(lock_dir).unlink()
    except (OSError, UserError):
        pass


def _create(path: Path, holder: Holder) -> bool:
    """Atomically create ``path`` holding ``holder``'s record; False if it already exists."""
    text = json.dumps(asdict(holder)) + "\n"
    tmp = path.with_name(f".{path.name}.{holder.host}.{holder.pid}.tmp")
    tmp.write_text(text)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links here (some FUSE/SMB mounts): an exclusive create is the next best
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _remove_stale(path: Path, judged: Holder | None) -> None:
    """Move the stale lock aside and delete it, unless another run replaced it meanwhile (then put it back)."""
    if judged is None:
        return
    aside = path.with_name(f".{path.name}.stale.{os.getpid()}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    try:
        same = Holder.parse(aside.read_text()) == judged
    except (OSError, ValueError, TypeError):
        same = False
    if not same:  # someone took it over between our read and the move: hand it back
        try:
            os.link(aside, path)
        except OSError:
            pass
    aside.unlink(missing_ok=True)
