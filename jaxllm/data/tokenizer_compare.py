"""The from-scratch BPE and sentencepiece BPE, trained side by side and measured (`jaxllm tokenizer compare`).

Why: the guide's "Tokens" chapter claims that a bigger vocabulary means fewer tokens per
text (more bytes per token), that the teaching BPE in jaxllm/data/bpe.py behaves like the
production one, and that both give back exactly the text they were given. This module
turns those claims into a table anyone can regenerate:

- The text is split once: the last `heldout` fraction (by characters) is never seen in
  training, so its bytes/token is honest compression of new text; bytes/token on the
  training part shows how much of that is memorization.
- Each implementation is trained per vocabulary size V on the same training text:
  scratch BPE as `train_bpe(train, V - 256)` (256 byte ids + merges), sentencepiece with
  the project's own trainer (`train_sentencepiece`, the one `jaxllm tokenizer train`
  uses: BPE, byte fallback, character coverage 1.0, identity normalization), so the
  numbers describe the tokenizers jaxllm actually trains.
- Sentencepiece's V is not all merges: 256 byte-fallback pieces, the control pieces
  (<unk> <s> </s> <pad>), the chat markers and one piece per distinct character all count
  towards it. `Row` records that split of the vocabulary so the comparison stays fair.
- The 256-byte baseline (1 byte = 1 token, bytes/token 1.0) is the reference row: what
  a model sees without any tokenizer training.

Encode speed is one pass over the held-out text with a freshly trained tokenizer (the
scratch BPE's per-word cache starts empty), i.e. the speed of encoding new text once.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import sentencepiece as spm

from jaxllm.config import TokenizerConfig
from jaxllm.data.bpe import NUM_BYTES, train_bpe
from jaxllm.data.tokenizer import ByteTokenizer, SentencePieceTokenizer, train_sentencepiece
from jaxllm.errors import DataError

IMPLS = ("scratch", "sentencepiece")
"""The implementations `compare` can train, in table order."""

BASELINE = "bytes"
"""The `impl` name of the reference row: UTF-8 bytes as tokens, no training."""

_CONTROL_PIECES = 4  # <unk> <s> </s> <pad>, as train_sentencepiece sets them up


@dataclasses.dataclass(frozen=True)
class Row:
    """One trained tokenizer's measurements: one implementation at one vocabulary size.

    `vocab_size` is the size asked for, `actual_vocab_size` what training produced (smaller
    when the text runs out of pairs seen twice, for the scratch BPE). The vocabulary is
    `byte_pieces + special_pieces + char_pieces + learned`; only `learned` (merges, or
    multi-character pieces) buys compression beyond bytes and single characters.
    """

    impl: str
    vocab_size: int
    actual_vocab_size: int
    byte_pieces: int
    special_pieces: int
    char_pieces: int
    learned: int
    train_seconds: float
    train_bytes_per_token: float
    heldout_bytes_per_token: float
    heldout_tokens: int
    encode_mb_per_s: float
    round_trip_ok: bool
    model_path: str | None = None


def split_text(text: str, heldout: float) -> tuple[str, str]:
    """(train, held-out): the held-out part is the last `heldout` fraction of the characters.

    The end of the text, not a random sample, is held out so that it is truly unseen text
    (whole scenes, in a play) rather than lines interleaved with training lines.
    """
    _check_heldout(heldout)
    if not text:
        raise DataError("the text is empty; give a file with some text to train the tokenizers on")
    cut = round(len(text) * (1 - heldout))
    train, held = text[:cut], text[cut:]
    if not train or not held:
        raise DataError(
            f"--heldout {heldout} of a {len(text)}-character text leaves an empty "
            f"{'training' if not train else 'held-out'} part; give a longer text or another --heldout"
        )
    return train, held


def describe_split(name: str, text: str, heldout: float) -> str:
    """The one-line header of the table: the file, its size and where it was split."""
    train, held = split_text(text, heldout)
    n_train, n_held = len(train.encode("utf-8")), len(held.encode("utf-8"))
    return (
        f"{name}: {n_train + n_held:,} bytes; trained on the first {(1 - heldout) * 100:.3g}% ({n_train:,} bytes), "
        f"measured on the last {heldout * 100:.3g}% ({n_held:,} bytes)"
    )


def _check_heldout(heldout: float) -> None:
    if not 0 < heldout < 1:
        raise DataError(f"--heldout {heldout}: must be a fraction strictly between 0 and 1, e.g. 0.1 (the last 10%)")


def _sentencepiece_config(vocab_size: int) -> TokenizerConfig:
    """The project's default sentencepiece training settings (BPE, byte fallback, coverage 1.0)."""
    return TokenizerConfig(vocab_size=vocab_size, kind="bpe", byte_fallback=True, character_coverage=1.0)


def _sentencepiece_fixed_pieces(train: str) -> tuple[int, int, int]:
    """(byte pieces, special pieces, character pieces) every sentencepiece vocabulary here must hold.

    Sentencepiece reads its training file line by line, so it never sees a newline (the
    byte piece <0x0A> covers it); every other distinct character gets a piece of its own.
    """
    cfg = _sentencepiece_config(NUM_BYTES + 1)
    chars = set(train) - {"\n"}
    return (NUM_BYTES if cfg.byte_fallback else 0), _CONTROL_PIECES + len(cfg.special_tokens), len(chars)


def _check_vocab_sizes(vocab_sizes: Sequence[int], impls: Sequence[str], train: str) -> list[int]:
    if not vocab_sizes:
        raise DataError("--vocab-sizes is empty; give one or more sizes, e.g. --vocab-sizes 512 1024 2048")
    for size in vocab_sizes:
        if isinstance(size, bool) or not isinstance(size, int) or size <= NUM_BYTES:
            raise DataError(
                f"--vocab-sizes {size}: a byte-level BPE needs at least {NUM_BYTES + 1} "
                f"({NUM_BYTES} byte ids + at least one merge); give e.g. 512"
            )
    if "sentencepiece" in impls:
        needed = sum(_sentencepiece_fixed_pieces(train))
        for size in vocab_sizes:
            if size <= needed:
                n_bytes, n_special, n_chars = _sentencepiece_fixed_pieces(train)
                raise DataError(
                    f"--vocab-sizes {size}: sentencepiece needs more than {needed} pieces for this text "
                    f"({n_bytes} byte-fallback + {n_special} special + {n_chars} distinct characters) before it "
                    f"learns anything; give at least {needed + 1}, or leave it out with --impl scratch"
                )
    return sorted(set(vocab_sizes))


def _measure(
    impl: str,
    vocab_size: int,
    encode: Callable[[str], Sequence[int]],
    decode: Callable[[Sequence[int]], str],
    train: str,
    held: str,
    train_seconds: float,
    pieces: tuple[int, int, int, int],
    model_path: str | None,
) -> Row:
    """Encode the held-out text (timed, one pass) and the training text; check the round trip."""
    start = time.perf_counter()
    held_ids = encode(held)
    seconds = time.perf_counter() - start
    train_ids = encode(train)
    n_held, n_train = len(held.encode("utf-8")), len(train.encode("utf-8"))
    return Row(
        impl=impl,
        vocab_size=vocab_size,
        actual_vocab_size=sum(pieces),
        byte_pieces=pieces[0],
        special_pieces=pieces[1],
        char_pieces=pieces[2],
        learned=pieces[3],
        train_seconds=train_seconds,
        train_bytes_per_token=n_train / max(len(train_ids), 1),
        heldout_bytes_per_token=n_held / max(len(held_ids), 1),
        heldout_tokens=len(held_ids),
        encode_mb_per_s=n_held / 1e6 / max(seconds, 1e-9),
        round_trip_ok=decode(held_ids) == held,
        model_path=model_path,
    )


def _baseline(train: str, held: str) -> Row:
    tok = ByteTokenizer()
    return _measure(BASELINE, NUM_BYTES, tok.encode, tok.decode, train, held, 0.0, (NUM_BYTES, 0, 0, 0), None)


def _scratch(train: str, held: str, vocab_size: int, out_dir: Path | None) -> Row:
    start = time.perf_counter()
    model = train_bpe(train, vocab_size - NUM_BYTES)
    seconds = time.perf_counter() - start
    path = None
    if out_dir is not None:
        path = out_dir / f"scratch-{vocab_size}.json"
        model.save(path)
    pieces = (NUM_BYTES, 0, 0, len(model.merges))
    return _measure("scratch", vocab_size, model.encode, model.decode, train, held, seconds, pieces,
                    None if path is None else str(path))  # fmt: skip


def _sentencepiece_census(path: Path) -> tuple[int, int, int, int]:
    """(byte, special, single-character, multi-character) piece counts of a sentencepiece model."""
    sp = spm.SentencePieceProcessor(model_file=str(path))
    user_defined = set(_sentencepiece_config(NUM_BYTES + 1).special_tokens)  # the processor cannot tell them apart
    counts = [0, 0, 0, 0]
    for i in range(sp.vocab_size()):
        if sp.is_byte(i):
            counts[0] += 1
        elif sp.is_control(i) or sp.is_unknown(i) or sp.id_to_piece(i) in user_defined:
            counts[1] += 1
        else:
            counts[2 if len(sp.id_to_piece(i)) == 1 else 3] += 1
    return counts[0], counts[1], counts[2], counts[3]


def _sentencepiece(train: str, held: str, vocab_size: int, out_dir: Path | None) -> Row:
    with tempfile.TemporaryDirectory(prefix="tokenizer-compare-") as tmp:
        path = (out_dir or Path(tmp)) / f"sp-{vocab_size}.model"
        start = time.perf_counter()
        tok: SentencePieceTokenizer = train_sentencepiece([train], _sentencepiece_config(vocab_size), path,
                                                          log=lambda _: None)  # fmt: skip
        seconds = time.perf_counter() - start
        pieces = _sentencepiece_census(path)  # before the temporary directory goes away
    return _measure("sentencepiece", vocab_size, tok.encode, tok.decode, train, held, seconds, pieces,
                    str(path) if out_dir is not None else None)  # fmt: skip


def compare(
    text: str,
    vocab_sizes: Sequence[int],
    impls: Sequence[str] = IMPLS,
    heldout: float = 0.1,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    log: Callable[[str], None] | None = None,
) -> list[Row]:
    """Train each of `impls` at each of `vocab_sizes` on `text` minus its held-out end; measure each.

    Returns the byte baseline first, then one `Row` per implementation and vocabulary
    size (sizes ascending, in `IMPLS` order within a size). With `out_dir`, the trained
    tokenizers are kept there: `sp-V.model` (sentencepiece, usable as `tokenizer.path`)
    and `scratch-V.json` (`BPEModel.load`). `log` receives a line before and after each
    training, which can take seconds on a megabyte of text. Bad arguments raise
    `DataError` naming the value and the fix.
    """
    unknown = [impl for impl in impls if impl not in IMPLS]
    if unknown or not impls:
        raise DataError(f"--impl {' '.join(unknown) or '(none)'}: choose from {', '.join(IMPLS)}")
    train, held = split_text(text, heldout)
    sizes = _check_vocab_sizes(vocab_sizes, impls, train)
    directory = None
    if out_dir is not None:
        directory = Path(out_dir)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise DataError(f"--out-dir {out_dir}: exists and is not a directory; name a directory") from None
    say = log or (lambda _: None)
    rows = [_baseline(train, held)]
    trainers = {"scratch": _scratch, "sentencepiece": _sentencepiece}
    for size in sizes:
        for impl in IMPLS:
            if impl not in impls:
                continue
            say(f"training {impl} BPE, vocab {size}, on {len(train.encode('utf-8')):,} bytes ...")
            row = trainers[impl](train, held, size, directory)
            say(f"  {impl} {size}: {row.train_seconds:.1f} s, {row.heldout_bytes_per_token:.2f} held-out bytes/token")
            rows.append(row)
    return rows


def format_table(rows: Sequence[Row]) -> str:
    """A Markdown table, one row per tokenizer, plus a note on what sentencepiece's vocab counts."""
    head = ("impl", "vocab", "learned", "train s", "train B/tok", "held-out B/tok", "held-out tokens",
            "encode MB/s", "round trip")  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 2) + [":---:"]) + "|"]
    for row in rows:
        vocab = str(row.vocab_size)
        if row.actual_vocab_size != row.vocab_size:
            vocab += f" (got {row.actual_vocab_size})"
        cells = (row.impl, vocab, str(row.learned), f"{row.train_seconds:.2f}", f"{row.train_bytes_per_token:.3f}",
                 f"{row.heldout_bytes_per_token:.3f}", f"{row.heldout_tokens:,}", f"{row.encode_mb_per_s:.2f}",
                 "ok" if row.round_trip_ok else "FAIL")  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "learned = merges (scratch) or multi-character pieces (sentencepiece); B/tok = UTF-8 bytes per token; "
        "round trip = decode(encode(held-out)) == held-out."
    )
    sp = next((row for row in rows if row.impl == "sentencepiece"), None)
    if sp is not None:
        fixed = sp.byte_pieces + sp.special_pieces + sp.char_pieces
        lines.append(
            f"sentencepiece's vocab counts {sp.byte_pieces} byte-fallback pieces, {sp.special_pieces} special pieces "
            f"(<unk> <s> </s> <pad> and the chat markers) and {sp.char_pieces} single characters: it learns "
            f"V - {fixed} pieces, the scratch BPE V - {NUM_BYTES} merges."
        )
    return "\n".join(lines)


__all__ = ["BASELINE", "IMPLS", "Row", "compare", "describe_split", "format_table", "split_text"]
