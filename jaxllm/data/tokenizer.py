"""Tokenizers: a byte-level one for smoke tests, and sentencepiece models trained here.

A tokenizer is named by `tokenizer.path` in the config: the string "byte", a
sentencepiece `.model` file written by `jaxllm tokenizer train`, or a Hugging Face
`tokenizer.json` (an imported model's own; jaxllm/data/hf_tokenizer.py). Training settings are
chosen so that decode(encode(text)) == text exactly:

- normalization "identity", no extra-whitespace removal, no dummy prefix: the text the
  model sees is the text you gave it, spaces, tabs and newlines included;
- byte fallback: a character with no piece of its own becomes its UTF-8 bytes, so no
  input is ever out of vocabulary (newlines, which sentencepiece never sees in training
  because it reads line by line, become the byte piece <0x0A>);
- split_digits, as Llama: numbers are spelled digit by digit.
The one exception is the character U+2581 ("▁"), sentencepiece's own space marker,
which decodes as a space.

Special ids of trained models: unk 0, bos 1, eos 2, pad 3. The byte tokenizer has
exactly 256 ids, so it reuses byte 0 (NUL, which cleaning strips from text) as EOS and
PAD and has no BOS.

Every kind refuses to decode an id outside its vocabulary with a TokenizerError naming the
id and the vocabulary size: the libraries fail with bare messages ("piece id is out of
range", a numpy OverflowError) or skip the id silently (Hugging Face tokenizers).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import sentencepiece as spm

from jaxllm.config import TokenizerConfig
from jaxllm.data.bpe import FILE_TYPE, BPEModel
from jaxllm.data.hf_tokenizer import HFTokenizer
from jaxllm.data.token_ids import TokenizerError, checked_ids
from jaxllm.errors import DataError


class Tokenizer(Protocol):
    """What the rest of jaxllm needs from a tokenizer."""

    vocab_size: int
    bos_id: int | None
    eos_id: int
    pad_id: int
    identity: str  # names the exact vocabulary, recorded in dataset manifests

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: Sequence[int] | np.ndarray) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255. No training; byte 0 is EOS and PAD."""

    vocab_size = 256
    bos_id = None
    eos_id = 0
    pad_id = 0
    identity = "byte"

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return bytes(checked_ids(ids, self.vocab_size)).decode("utf-8", errors="replace")


class ScratchBPETokenizer:
    """A model of the from-scratch byte-level BPE (jaxllm/data/bpe.py), saved as JSON.

    Ids 0..255 are bytes, as in ByteTokenizer, so byte 0 (NUL, which cleaning strips from
    text) is EOS and PAD; merges are ids 256 and up. It makes the teaching tokenizer a
    real one: prepare, train, sample and `viz tokens` all take its file.
    """

    bos_id = None
    eos_id = 0
    pad_id = 0

    def __init__(self, path: str | os.PathLike[str]):
        try:
            self._model = BPEModel.load(path)
        except ValueError as e:
            raise DataError(str(e)) from None
        self.vocab_size = self._model.vocab_size
        self.identity = "jaxllm-bpe:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._model.encode(text), dtype=np.int32)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self._model.decode(checked_ids(ids, self.vocab_size))


def _is_scratch_bpe(path: str | os.PathLike[str]) -> bool:
    """True for a file written by BPEModel.save (its JSON starts with the type field)."""
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(64)
    except (OSError, UnicodeDecodeError):
        return False
    return head.replace(" ", "").startswith(f'{{"type":"{FILE_TYPE}"')


class SentencePieceTokenizer:
    """A trained sentencepiece model (BPE, unigram or char)."""

    def __init__(self, path: str | os.PathLike[str]):
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(
                f"tokenizer.path={str(path)!r} does not exist; train one with `jaxllm tokenizer train` or use 'byte'"
            )
        data = path.read_bytes()
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=data)
        except Exception as e:  # sentencepiece raises RuntimeError/OSError with C++ messages
            raise TokenizerError(f"tokenizer.path={str(path)!r} is not a sentencepiece model ({e})") from None
        self.path = path
        self.vocab_size = self._sp.vocab_size()
        self.bos_id = self._sp.bos_id() if self._sp.bos_id() >= 0 else None
        self.eos_id = self._sp.eos_id()
        self.pad_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else self.eos_id
        self.identity = "sentencepiece:" + hashlib.sha256(data).hexdigest()
        if self.eos_id < 0:
            raise TokenizerError(
                f"tokenizer.path={str(path)!r} has no EOS id; retrain it with `jaxllm tokenizer train`"
            )

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._sp.encode(text), dtype=np.int32)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self._sp.decode(checked_ids(ids, self.vocab_size))

    def piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))


def load_tokenizer(path: str) -> ByteTokenizer | ScratchBPETokenizer | SentencePieceTokenizer | HFTokenizer:
    """ "byte", a sentencepiece model file, a from-scratch BPE model (.json written by
    `jaxllm tokenizer compare --out-dir`), or a Hugging Face tokenizer.json (any other .json)."""
    if path == "byte":
        return ByteTokenizer()
    if str(path).endswith(".json") and _is_scratch_bpe(path):
        return ScratchBPETokenizer(path)
    if str(path).endswith(".json"):
        return HFTokenizer(path)
    return SentencePieceTokenizer(path)


def prompt_start(tokenizer) -> list[int]:
    """The ids a prompt's text follows: [BOS] when the tokenizer adds one, else none.

    A Hugging Face tokenizer follows its own rules (HFTokenizer.adds_bos); jaxllm's own
    tokenizers put BOS first whenever they have one, as their training documents did."""
    adds_bos = getattr(tokenizer, "adds_bos", tokenizer.bos_id is not None)
    return [int(tokenizer.bos_id)] if adds_bos and tokenizer.bos_id is not None else []


def encode_prompt(tokenizer, text: str, special_tokens: bool = True) -> list[int]:
    """The one place a prompt becomes ids, for sample, chat, post-training data and
    evaluation: with the special tokens the tokenizer adds (special_tokens=False: none,
    for text that already carries them, like a rendered Jinja chat prompt, which
    transformers' apply_chat_template encodes that way), and never a second BOS."""
    if not special_tokens:
        return [int(t) for t in tokenizer.encode(text)]
    if hasattr(tokenizer, "encode_prompt"):
        return list(tokenizer.encode_prompt(text))
    ids = [int(t) for t in tokenizer.encode(text)]
    start = prompt_start(tokenizer)
    return ids if ids[:1] == start else start + ids


NOT_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]")  # control characters, U+FFFD replacements
NOT_TEXT_SHARE = 0.1  # text has ~0; random bytes decoded as UTF-8 have ~0.6
NOT_TEXT_SAMPLE = 10_000_000  # characters looked at: the head of the corpus says whether it is text


def _longest_lines(corpus: Path, limit: int) -> tuple[int, int, int]:
    """(non-empty lines, lines longer than `limit` bytes, longest line in bytes) of a training file."""
    lines = too_long = longest = 0
    with corpus.open("rb") as f:
        for line in f:
            n = len(line.rstrip(b"\n"))
            lines += n > 0
            too_long += n > limit
            longest = max(longest, n)
    return lines, too_long, longest


def train_sentencepiece(
    documents: Iterable[str],
    cfg: TokenizerConfig,
    out_path: str | os.PathLike[str],
    log: Callable[[str], None] = print,
) -> SentencePieceTokenizer:
    """Train a sentencepiece model on `documents` and write it to `out_path` atomically.

    The documents are written to a temporary training file (sentencepiece reads files
    line by line); the model appears at `out_path` only once training succeeded.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tokenizer-", dir=out_path.parent) as tmp:
        corpus = Path(tmp) / "corpus.txt"
        n_docs = n_chars = odd = 0
        with corpus.open("w", encoding="utf-8") as f:
            for doc in documents:
                f.write(doc)
                f.write("\n")
                n_docs += 1
                if n_chars < NOT_TEXT_SAMPLE:
                    odd += sum(1 for _ in NOT_TEXT.finditer(doc, 0, NOT_TEXT_SAMPLE - n_chars))
                n_chars += len(doc)
        if n_chars == 0:
            raise TokenizerError("no text to train the tokenizer on; check data.inputs")
        sampled = min(n_chars, NOT_TEXT_SAMPLE)
        if odd / sampled > NOT_TEXT_SHARE:
            log(f"warning: the tokenizer's training input does not look like text: {odd / sampled:.0%} of "
                f"{sampled:,} characters are U+FFFD (bytes that are not UTF-8) or control characters; check that "
                "data.inputs names text files, not binaries")  # fmt: skip
        log(f"training a {cfg.kind} tokenizer, vocab {cfg.vocab_size}, on {n_docs} documents ({n_chars:,} chars)")
        try:
            spm.SentencePieceTrainer.train(
                input=str(corpus),
                model_prefix=str(Path(tmp) / "model"),
                model_type=cfg.kind,
                vocab_size=cfg.vocab_size,
                hard_vocab_limit=False,  # a tiny corpus gets the vocabulary it supports, not an error
                byte_fallback=cfg.byte_fallback,
                character_coverage=cfg.character_coverage,
                input_sentence_size=cfg.input_sentence_size,
                shuffle_input_sentence=True,
                max_sentence_length=cfg.max_sentence_length,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=False,
                split_digits=True,
                **({"user_defined_symbols": list(cfg.special_tokens)} if cfg.special_tokens else {}),
                allow_whitespace_only_pieces=True,
                unk_id=0,
                bos_id=1,
                eos_id=2,
                pad_id=3,
                num_threads=os.cpu_count() or 1,
                minloglevel=2,
            )
        except Exception as e:
            message = (str(e).splitlines() or [type(e).__name__])[0]
            if "sentences_.empty()" in message:  # every line was skipped, as longer than max_sentence_length
                lines, too_long, longest = _longest_lines(corpus, cfg.max_sentence_length)
                raise TokenizerError(
                    f"sentencepiece had no line to train on: {too_long:,} of the {lines:,} non-empty lines of the "
                    f"training text are longer than tokenizer.max_sentence_length={cfg.max_sentence_length} bytes "
                    f"(the longest has {longest:,}), and sentencepiece skips such lines; set "
                    f"tokenizer.max_sentence_length={longest} or more, or break the text into shorter lines"
                ) from None
            raise TokenizerError(f"sentencepiece training failed: {message}") from None
        tmp_model = out_path.with_name(f".{out_path.name}.tmp")
        shutil.copyfile(Path(tmp) / "model.model", tmp_model)
        os.replace(tmp_model, out_path)
    tok = SentencePieceTokenizer(out_path)
    log(f"wrote {out_path} (vocab {tok.vocab_size}; bos {tok.bos_id}, eos {tok.eos_id}, pad {tok.pad_id})")
    return tok
