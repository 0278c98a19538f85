"""Which files' sha256 jaxllm has already checked, so a big dataset is hashed once, not at every start.

Why: check_dataset (jaxllm.data.ready) compares every shard, and every raw input a dataset was
prepared from, with the sha256 its manifest records: a file changed in place at the same size (a
zeroed region, a bad disk block) is otherwise invisible, and training silently reads the wrong
tokens. Hashing hundreds of gigabytes at each `jaxllm train` start is too slow, so a file that
matched is remembered with its size and mtime_ns and hashed again only when either changes.
prepare seeds the record with the hashes it computed while writing, so a new dataset costs nothing.
The record is verified.json in the dataset folder, written atomically by jaxllm (a temporary file,
then a rename); prepare counts it among the dataset's own files (jaxllm.data.manifest).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxllm.data.manifest import VERIFIED

SECTIONS = ("shards", "sources")  # shards are keyed by file name (the folder may move), sources by absolute path
ANNOUNCE_BYTES = 256 << 20  # say what is going on when a verification hashes more than this
PROGRESS_EVERY_S = 5.0
VerifyItem = tuple[str, str, Path, str]  # (section, key, path, expected sha256)


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


class VerifiedFiles:
    """The verification record of one dataset folder: {section: {key: {size, mtime_ns, sha256}}}."""

    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = Path(folder)
        self._record = self._load()
        self._changed = False

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            raw = json.loads((self.folder / VERIFIED).read_text(encoding="utf-8"))
        except (OSError, ValueError):  # none yet, or damaged: it is only a cache, so files are hashed again
            raw = {}
        raw = raw if isinstance(raw, dict) else {}
        return {s: dict(raw[s]) if isinstance(raw.get(s), dict) else {} for s in SECTIONS}

    def is_current(self, section: str, key: str, path: Path, sha256: str) -> bool:
        """True when `path` was verified to have `sha256` and has the same size and mtime as then."""
        st = path.stat()
        return self._record[section].get(key) == {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}

    def remember(self, section: str, key: str, sha256: str, st: os.stat_result) -> None:
        self._record[section][key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}
        self._changed = True

    def save(self, log: Callable[[str], None] = print) -> None:
        """Write the record atomically; a read-only dataset folder only costs hashing again next time."""
        if not self._changed:
            return
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{VERIFIED}.", suffix=".tmp", dir=self.folder)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(self._record, f, indent=1)
                os.replace(tmp, self.folder / VERIFIED)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as e:
            log(f"note: could not write {self.folder / VERIFIED} ({e.strerror or e}); files are hashed again next time")
            return
        self._changed = False

    def verify(self, items: list[VerifyItem], log: Callable[[str], None] = print) -> list[VerifyItem]:
        """Check (section, key, path, sha256) items, hashing only files changed since their last check;
        returns the items whose bytes differ. Long runs log their progress."""
        todo = [item for item in items if not self.is_current(*item)]
        total = sum(path.stat().st_size for _, _, path, _ in todo)
        if total >= ANNOUNCE_BYTES:
            log(f"verifying {len(todo)} file(s), {_size(total)}, against the manifest's sha256 "
                f"(once: remembered in {self.folder / VERIFIED})")  # fmt: skip
        done, last, bad = 0, time.monotonic(), []
        for item in todo:
            section, key, path, expected = item
            st = path.stat()  # before reading: a change during the hash shows as a new mtime next time
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
                    done += len(block)
                    if time.monotonic() - last >= PROGRESS_EVERY_S:
                        last = time.monotonic()
                        log(f"  verified {_size(done)} of {_size(total)}")
            if digest.hexdigest() == expected:
                self.remember(section, key, expected, st)
            else:
                bad.append(item)
        return bad
