"""Nothing lost, ever: prepare touches only what it wrote, and prepared data is checked against its manifest."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

import jaxllm
from jaxllm.cli import main
from jaxllm.data import verified as verified_mod
from jaxllm.data.loader import DocumentStore
from jaxllm.data.prepare import load_manifest, prepare
from jaxllm.data.ready import check_dataset, ensure_data, train_tokenizer
from jaxllm.data.tokenizer import load_tokenizer
from jaxllm.errors import DataError
from tests.data_paths import TINY

TEXT = TINY.read_text(encoding="utf-8")


def quiet(_: str) -> None:
    pass


def config(*overrides: str) -> jaxllm.Config:
    return jaxllm.load_config("shakespeare-char", ["data.split=tail", "data.val_fraction=0.1", *overrides])


def hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (or of `root` itself), by relative path."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def corpus_file(tmp_path: Path, name: str = "corpus.txt", text: str = TEXT[:30_000]) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def corpus_folder(tmp_path: Path) -> Path:
    """A user's folder: the corpus, notes, a sub-folder; what a mistyped data.path may name."""
    folder = tmp_path / "corpus"
    (folder / "drafts").mkdir(parents=True)
    corpus_file(folder, "a.txt", TEXT[:20_000])
    corpus_file(folder, "b.txt", TEXT[20_000:40_000])
    (folder / "notes.md").write_text("where this text came from\n")
    (folder / "drafts" / "c.txt").write_text(TEXT[40_000:45_000])
    return folder


# ------------------------------------------------------------------------ 1. prepare deletes nothing of yours


@pytest.mark.parametrize("build", [prepare, ensure_data], ids=["prepare", "ensure_data"])
def test_a_data_path_naming_the_users_corpus_file_is_refused_untouched(tmp_path, build):
    corpus = corpus_file(tmp_path)
    before, listing = hashes(corpus), sorted(os.listdir(tmp_path))
    with pytest.raises(DataError, match=r"data.path='.*corpus.txt' is a file.*choose another data.path"):
        build(config(f"data.inputs=[{corpus}]", f"data.path={corpus}"), log=quiet)
    assert hashes(corpus) == before
    assert sorted(os.listdir(tmp_path)) == listing  # no temporary or moved-aside copy either


@pytest.mark.parametrize("build", [prepare, ensure_data], ids=["prepare", "ensure_data"])
def test_a_data_path_naming_the_users_folder_is_refused_untouched(tmp_path, build):
    folder = corpus_folder(tmp_path)
    before = hashes(folder)
    with pytest.raises(DataError, match=r"is a folder that is not a jaxllm dataset \(no manifest.json.*notes.md"):
        build(config(f"data.inputs=[{folder}/*.txt]", f"data.path={folder}"), log=quiet)
    assert hashes(folder) == before
    assert sorted(os.listdir(tmp_path)) == ["corpus"]


def test_a_dataset_holding_the_users_files_is_not_replaced(tmp_path):
    corpus = corpus_file(tmp_path)
    cfg = config(f"data.inputs=[{corpus}]", f"data.path={tmp_path}/ds")
    prepare(cfg, log=quiet)
    (tmp_path / "ds" / "notes.txt").write_text("my notes on this run\n")
    (tmp_path / "ds" / "plots").mkdir()
    before = hashes(tmp_path / "ds")
    with pytest.raises(DataError, match=r"also holds 2 file\(s\) it did not write \(notes.txt, plots\)"):
        prepare(cfg, log=quiet)
    assert hashes(tmp_path / "ds") == before and (tmp_path / "ds" / "plots").is_dir()
    (tmp_path / "ds2").mkdir()
    (tmp_path / "ds2" / "manifest.json").write_text('{"format": "something else"}')
    with pytest.raises(DataError, match=r"holds a manifest.json that is not a jaxllm manifest \(its format is"):
        prepare(config(f"data.inputs=[{corpus}]", f"data.path={tmp_path}/ds2"), log=quiet)
    assert (tmp_path / "ds2" / "manifest.json").read_text() == '{"format": "something else"}'


def test_a_complete_dataset_or_an_empty_folder_is_replaced(tmp_path):
    a, b = corpus_file(tmp_path, "a.txt", TEXT[:20_000]), corpus_file(tmp_path, "b.txt", TEXT[20_000:50_000])
    # The names of the old fixed temporaries: a user's folder called so must survive (they were rmtree'd).
    guessed = [f".ds.tmp-{os.getpid()}", f".ds.old-{os.getpid()}"]
    for name in guessed:
        (tmp_path / name).mkdir()
        (tmp_path / name / "keep.txt").write_text("mine")
    (tmp_path / "ds").mkdir()  # made by hand, empty: nothing to lose
    prepare(config(f"data.inputs=[{a}]", f"data.path={tmp_path}/ds"), log=quiet)
    check_dataset(config(f"data.inputs=[{a}]", f"data.path={tmp_path}/ds"), log=quiet)
    (tmp_path / "ds" / ".verified.json.k2j4_x.tmp").write_text("{")  # jaxllm's own, left by a crash mid-write
    prepare(config(f"data.inputs=[{b}]", f"data.path={tmp_path}/ds"), log=quiet)
    assert [s["path"] for s in load_manifest(tmp_path / "ds")["sources"]] == [str(b)]
    assert sorted(os.listdir(tmp_path / "ds")) == ["manifest.json", "train-00000.bin", "val-00000.bin", "verified.json"]
    assert sorted(os.listdir(tmp_path)) == sorted(["a.txt", "b.txt", "ds", *guessed])  # no temporary left
    assert all((tmp_path / name / "keep.txt").read_text() == "mine" for name in guessed)


# ------------------------------------------------------------------- 2. prepared data checked against its manifest


@pytest.fixture
def prepared(tmp_path):
    corpus = corpus_file(tmp_path)
    cfg = config(f"data.inputs=[{corpus}]", f"data.path={tmp_path}/ds")
    prepare(cfg, log=quiet)
    return cfg, corpus


def test_other_inputs_are_refused_naming_the_files(prepared, tmp_path):
    cfg, corpus = prepared
    other = corpus_file(tmp_path, "other.txt", TEXT[50_000:80_000])
    stale = config(f"data.inputs=[{other}]", f"data.path={cfg.data.path}")
    for check in (check_dataset, ensure_data):
        with pytest.raises(DataError, match=r"now also names .*other.txt, and no longer names .*corpus.txt.*"
                                            r"jaxllm data prepare CONFIG"):  # fmt: skip
            check(stale, log=quiet)
    assert check_dataset(cfg, log=quiet)["sources"][0]["path"] == str(corpus)
    assert check_dataset(config("data.inputs=[]", f"data.path={cfg.data.path}"), log=quiet)  # ready-made: no inputs


def test_an_input_changed_in_place_is_refused(prepared):
    cfg, corpus = prepared
    raw = bytearray(corpus.read_bytes())
    raw[100:110] = b"x" * 10  # same size, other bytes
    corpus.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"other contents of .*corpus.txt \(same size, other bytes\)"):
        ensure_data(cfg, log=quiet)
    corpus.write_bytes(bytes(raw[:-5]))
    with pytest.raises(DataError, match=r"corpus.txt \(30,000 bytes then, 29,995 now\)"):
        check_dataset(cfg, log=quiet)


def test_a_removed_input_is_only_a_warning(prepared):
    cfg, corpus = prepared
    corpus.unlink()
    lines: list[str] = []
    assert check_dataset(cfg, log=lines.append)["format"] == "jaxllm-shards"
    assert any(ln.startswith("warning: 1 of the files") and "corpus.txt" in ln for ln in lines)


def test_an_unreadable_input_or_shard_is_named_not_called_dropped(prepared, monkeypatch):
    cfg, corpus = prepared
    shard = Path(cfg.data.path) / "train-00000.bin"
    denied: set[str] = set()
    readable = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: str(p) not in denied and readable(p, mode, **kw))
    denied.add(str(corpus))  # as after `chmod 000` (the tests run as root, for whom every file is readable)
    assert check_dataset(cfg, log=quiet)  # unchanged since prepare hashed it: nothing to read
    os.utime(corpus, ns=(0, 0))  # same bytes, but its mtime says it must be hashed again
    with pytest.raises(DataError, match=r"corpus.txt cannot be read \(permission denied\).*readable again, or set "
                                        r"data.inputs=\[\]"):  # fmt: skip
        check_dataset(cfg, log=quiet)  # not "data.inputs no longer names corpus.txt", and no PermissionError
    assert check_dataset(config("data.inputs=[]", f"data.path={cfg.data.path}"), log=quiet)  # the fix it names
    denied = {str(shard)}  # training reads every shard: refused even though it is verified
    with pytest.raises(DataError, match=r"train-00000.bin cannot be read \(permission denied\).*readable again$"):
        check_dataset(cfg, log=quiet)


def test_a_retrained_tokenizer_is_refused(tmp_path):
    corpus = corpus_file(tmp_path)
    tok = tmp_path / "tok.model"
    cfg = config(f"data.inputs=[{corpus}]", f"data.path={tmp_path}/ds", f"tokenizer.path={tok}", "tokenizer.kind=char",
                 "tokenizer.vocab_size=300")  # fmt: skip
    ensure_data(cfg, log=quiet)  # trains the tokenizer, then prepares
    assert check_dataset(cfg, log=quiet)["tokenizer"]["path"] == str(tok)
    corpus_file(tmp_path, "corpus2.txt", TEXT[100_000:130_000])
    train_tokenizer(config(f"data.inputs=[{tmp_path}/corpus2.txt]", f"tokenizer.path={tok}", "tokenizer.kind=char",
                           "tokenizer.vocab_size=300"), log=quiet)  # fmt: skip
    for check in (check_dataset, ensure_data):
        with pytest.raises(DataError, match=r"tokenizer.path='.*tok.model' is not the tokenizer .* re-trained"):
            check(cfg, log=quiet)
    with pytest.raises(DataError, match=r"prepared with '.*tok.model', but tokenizer.path='byte'"):
        check_dataset(config(f"data.inputs=[{corpus}]", f"data.path={tmp_path}/ds"), log=quiet)


def test_a_zeroed_shard_region_is_refused_and_verification_is_remembered(tmp_path):
    cfg = config(f"data.inputs=[{TINY}]", f"data.path={tmp_path}/ds")
    prepare(cfg, log=quiet)
    shard = tmp_path / "ds" / "train-00000.bin"
    check_dataset(cfg, log=quiet)
    record = json.loads((tmp_path / "ds" / "verified.json").read_text())
    assert record["shards"]["train-00000.bin"]["size"] == shard.stat().st_size > 3 << 19
    raw = bytearray(shard.read_bytes())
    stat = shard.stat()
    raw[1 << 19 : 3 << 19] = bytes(1 << 20)  # 1 MiB zeroed, same size
    shard.write_bytes(bytes(raw))
    for check in (check_dataset, ensure_data):
        with pytest.raises(DataError, match=r"shard .*train-00000.bin is corrupt: its bytes differ from the sha256"):
            check(cfg, log=quiet)
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime as when verified:
    check_dataset(cfg, log=quiet)  # trusted without hashing again, which is what makes a start cheap
    with pytest.raises(DataError, match="sha256 differs"):  # `jaxllm data verify` still hashes everything
        DocumentStore(cfg.data.path, "train", verify=True)


def test_a_long_verification_says_what_it_is_doing(prepared, monkeypatch):
    cfg, _ = prepared
    (Path(cfg.data.path) / "verified.json").unlink()  # as for a dataset prepared before verified.json existed
    monkeypatch.setattr(verified_mod, "ANNOUNCE_BYTES", 1)  # "long": any size, so a tiny dataset shows it
    monkeypatch.setattr(verified_mod, "PROGRESS_EVERY_S", 0.0)
    lines: list[str] = []
    check_dataset(cfg, log=lines.append)
    assert lines[0].startswith("verifying 3 file(s)") and "remembered in" in lines[0]
    assert any(ln.startswith("  verified ") and " of " in ln for ln in lines[1:])
    lines.clear()
    check_dataset(cfg, log=lines.append)
    assert lines == []  # the second start hashes nothing


# ----------------------------------------------------------------- 3. errors in words, 4. paths that travel


@pytest.mark.parametrize("content, why", [("{not json", "is not JSON"), ("[1, 2]", "holds a JSON list, not an object")])
def test_a_garbage_manifest_is_a_one_line_error(prepared, capsys, content, why):
    cfg, _ = prepared
    (Path(cfg.data.path) / "manifest.json").write_text(content)
    with pytest.raises(DataError, match=f"manifest.json is not a jaxllm dataset manifest: it {why}"):
        load_manifest(cfg.data.path)
    assert main(["data", "verify", "shakespeare-char", f"data.path={cfg.data.path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "manifest.json" in err[0] and "jaxllm data prepare" in err[0]


def test_no_surviving_documents_is_said_in_words(tmp_path):
    for i in range(3):
        corpus_file(tmp_path, f"s{i}.txt", f"hi {i}")
    with pytest.raises(DataError) as err:
        prepare(config(f"data.inputs=[{tmp_path}/s*.txt]", f"data.path={tmp_path}/ds"), log=quiet)
    message = str(err.value)
    assert "of 3 documents read, the filters removed 3 (3 too short)" in message and "{" not in message


def test_manifest_paths_are_absolute_so_a_run_works_from_elsewhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    corpus_file(tmp_path)
    cfg = config("data.inputs=[corpus.txt]", "data.path=ds", "tokenizer.path=tok.model", "tokenizer.kind=char",
                 "tokenizer.vocab_size=300")  # fmt: skip
    ensure_data(cfg, log=quiet)
    manifest = load_manifest("ds")
    assert manifest["tokenizer"]["path"] == str(tmp_path / "tok.model")
    assert manifest["sources"][0]["path"] == str(tmp_path / "corpus.txt")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert load_tokenizer(manifest["tokenizer"]["path"]).identity == manifest["tokenizer"]["identity"]
    # An old manifest's relative paths still mean what they did: relative to the current directory.
    monkeypatch.chdir(tmp_path)
    manifest["tokenizer"]["path"], manifest["sources"][0]["path"] = "tok.model", "corpus.txt"
    (tmp_path / "ds" / "manifest.json").write_text(json.dumps(manifest))
    assert check_dataset(cfg, log=quiet)["sources"][0]["path"] == "corpus.txt"
