"""The run folder (`train.out_dir`), kept like a small database.

A run folder holds hours of work: checkpoints, the config they were trained with and the
metrics. Every command that writes into one goes through `RunFolder`, which promises:

- **Locked.** One run at a time: an exclusive `flock` on `.lock`, held for the run's
  life. A second run into the same folder stops at once, naming the holder's pid and
  host. The kernel drops the lock when its holder dies (even by SIGKILL), so a stale lock
  never needs cleaning up by hand; the next run notes that it recovered it.
- **Written only after validation.** `config.yaml` is written by `write_config`, which
  the trainer calls only once the config validated, the data checked out and the
  checkpoint (if any) restored; it is written to a temporary file and renamed, so it is
  always a whole file.
- **Never deleting what it did not create.** A path that is a file is refused, and
  nothing is ever removed: `reset` (`jaxllm train --reset`) moves the folder's contents
  into `archive/<UTC time>/`, and an unreadable checkpoint is moved into
  `quarantine/` (see `train/checkpoint.py`).
- **Usable from anywhere.** The config written into it names every path absolutely, so
  `cd elsewhere && jaxllm sample ../run` finds the run's data and tokenizer.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from jaxllm.config import Config, ConfigError, save_config

LOCK = ".lock"
ARCHIVE = "archive"
QUARANTINE = "quarantine"


class RunLocked(ConfigError):
    """Another live process holds the run folder."""


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but someone else's
        return True
    return True


class RunLock:
    """An exclusive lock on a run folder: `flock` on RUN/.lock, which records its holder.

    The file is never removed (removing it would let a waiting process lock a deleted
    inode while a third creates a new file: two holders). Released, it is emptied; a
    lock that is free but not empty was left by a process that died."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK
        self._fd: int | None = None

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def _refuse(self, holder: dict) -> RunLocked:
        since = holder.get("started", "?")
        return RunLocked(
            f"train.out_dir={str(self.path.parent)!r} is in use by pid {holder.get('pid', '?')} on host "
            f"{holder.get('host', '?')} (since {since}); wait for that run to finish or stop it, or give another "
            "train.out_dir"
        )

    def acquire(self, log: Callable[[str], None] = print) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._refuse(self._holder()) from None
        except OSError as e:  # a filesystem without flock (some network mounts): trust the recorded pid
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            holder = self._holder()
            if holder.get("host") == socket.gethostname() and _pid_alive(int(holder.get("pid", 0))):
                os.close(fd)
                raise self._refuse(holder) from None
        stale = self._holder()
        if stale.get("pid"):
            log(f"note: recovered the lock on {self.path.parent} left by pid {stale['pid']} on host "
                f"{stale.get('host', '?')}, which is gone")  # fmt: skip
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": _stamp()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def absolute_paths(cfg: Config) -> Config:
    """`cfg` with every file path absolute (resolved against the current directory), so
    the run folder's config.yaml means the same from any working directory."""

    def absolute(path: str) -> str:
        return str(Path(path).expanduser().absolute()) if path else path

    tok = cfg.tokenizer.path
    mixture = tuple(dataclasses.replace(m, path=absolute(m.path)) for m in cfg.data.mixture)
    return dataclasses.replace(
        cfg,
        tokenizer=dataclasses.replace(cfg.tokenizer, path=tok if tok == "byte" else absolute(tok)),
        data=dataclasses.replace(cfg.data, path=absolute(cfg.data.path), mixture=mixture,
                                 inputs=tuple(absolute(p) for p in cfg.data.inputs)),  # fmt: skip
        train=dataclasses.replace(cfg.train, out_dir=absolute(cfg.train.out_dir)),
        posttrain=dataclasses.replace(cfg.posttrain, data=absolute(cfg.posttrain.data),
                                      init_from=absolute(cfg.posttrain.init_from)),  # fmt: skip
        ppo=dataclasses.replace(cfg.ppo, reward_from=absolute(cfg.ppo.reward_from),
                                critic_from=absolute(cfg.ppo.critic_from)),  # fmt: skip
    )


class RunFolder:
    """`train.out_dir` while a run holds it: locked, written atomically, nothing deleted.

    Use as a context manager around the whole run. `primary`: whether this process writes
    (process 0 of a multi-process run; the others only read)."""

    def __init__(self, path: str | os.PathLike[str], primary: bool = True, log: Callable[[str], None] = print):
        self.path = Path(path).absolute()
        self.primary = primary
        self.log = log
        self.lock = RunLock(self.path)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def quarantine(self) -> Path:
        return self.path / QUARANTINE

    def __enter__(self) -> RunFolder:
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"train.out_dir={str(self.path)!r} is a file, not a run folder; give a directory path")
        if self.primary:
            self.path.mkdir(parents=True, exist_ok=True)
            self.lock.acquire(self.log)
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()

    def write_config(self, cfg: Config) -> None:
        """config.yaml, atomically (a temporary file renamed over it); process 0 only."""
        if not self.primary:
            return
        tmp = self.path / f".config.yaml.tmp-{os.getpid()}"
        save_config(cfg, tmp)
        os.replace(tmp, self.path / "config.yaml")

    def reset(self) -> Path | None:
        """Start the run over without losing the old one: move everything the folder holds
        (but the lock and earlier archives) into archive/<UTC time>/. Returns that folder."""
        if not self.primary:
            return None
        entries = [p for p in self.path.iterdir() if p.name not in (LOCK, ARCHIVE)]
        if not entries:
            return None
        target = self.path / ARCHIVE / _stamp()
        while target.exists():
            target = target.with_name(target.name + "-1")
        target.mkdir(parents=True)
        for entry in entries:
            os.replace(entry, target / entry.name)
        self.log(f"--reset: moved the previous run's {', '.join(sorted(p.name for p in entries))} into {target}")
        return target


__all__ = ["RunFolder", "RunLock", "RunLocked", "absolute_paths"]
