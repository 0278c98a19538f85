"""A Hugging Face `tokenizer.json` as a jaxllm Tokenizer, through the `tokenizers` library.

Why: a model imported from Hugging Face must read and write text with the exact
tokenizer it was trained with; tokenizer.json holds all of it (normalizer,
pre-tokenizer, BPE/Unigram/WordPiece model, decoder). What tokenizer.json does not say
is which token ends a document: transformers keeps that in tokenizer_config.json or
special_tokens_map.json beside it, so those are read when present, and the usual names
(`<|endoftext|>`, `</s>`, ...) are the fallback.

encode adds no special tokens (no BOS), like the other jaxllm tokenizers: callers that
want BOS add bos_id themselves. decode keeps special tokens, so decode(encode(text))
gives back text that contains them, e.g. a chat template's markers.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxllm.data.tokenizer import TokenizerError, checked_ids

# Common special-token spellings, most specific first: GPT-2 / Llama-3 / Llama-2 & most sentencepiece models.
EOS_NAMES = ("<|endoftext|>", "<|end_of_text|>", "</s>")
BOS_NAMES = ("<|begin_of_text|>", "<s>")
SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def _named_special_tokens(directory: Path) -> dict[str, str]:
    """{"bos_token": text, "eos_token": text, "pad_token": text} from the transformers side
    files; tokenizer_config.json wins over special_tokens_map.json. Unreadable files are skipped:
    they only add names, tokenizer.json is the tokenizer."""
    named: dict[str, str] = {}
    for name in reversed(SIDE_FILES):
        try:
            raw = json.loads((directory / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(raw, dict):
            continue
        for key in ("bos_token", "eos_token", "pad_token"):
            value: Any = raw.get(key)
            if isinstance(value, dict):  # a serialized AddedToken
                value = value.get("content")
            if isinstance(value, str):
                named[key] = value
    return named


class HFTokenizer:
    """A Hugging Face tokenizer.json (any model type the `tokenizers` library reads)."""

    def __init__(self, path: str | os.PathLike[str]):
        try:
            from tokenizers import Tokenizer as Backend
        except ImportError:
            raise TokenizerError(
                f"tokenizer.path={str(path)!r} is a Hugging Face tokenizer.json, which needs the `tokenizers` "
                "package: pip install tokenizers"
            ) from None
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(
                f"tokenizer.path={str(path)!r} does not exist; copy the model's tokenizer.json there or use 'byte'"
            )
        try:
            data = path.read_bytes()
            self._tok = Backend.from_str(data.decode("utf-8"))
        except Exception as e:  # tokenizers raises its own Exception subclass with serde messages
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise TokenizerError(
                f"tokenizer.path={str(path)!r} is not a readable Hugging Face tokenizer.json ({reason})"
            ) from None
        self.path = path
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        # ids that decode: added tokens may sit past the count when a vocabulary has holes
        self._id_limit = max(self.vocab_size, max(self._tok.get_vocab(with_added_tokens=True).values(), default=-1) + 1)
        named = _named_special_tokens(path.parent)
        eos = self._find(named.get("eos_token"), EOS_NAMES)
        if eos is None:
            raise TokenizerError(
                f"tokenizer.path={str(path)!r} has no end-of-text token: none is named in a tokenizer_config.json "
                f"next to it, and it has none of {', '.join(EOS_NAMES)}; add a tokenizer_config.json with "
                '{"eos_token": "..."}'
            )
        self.eos_id: int = eos
        self.bos_id: int | None = self._find(named.get("bos_token"), BOS_NAMES)
        pad = self._find(named.get("pad_token"), ())
        self.pad_id: int = eos if pad is None else pad  # padding is masked out; any id will do, eos is always there
        self.identity = "hf-tokenizer:" + hashlib.sha256(data).hexdigest()

    def _find(self, named: str | None, fallbacks: Sequence[str]) -> int | None:
        for text in ((named,) if named else ()) + tuple(fallbacks):
            token_id = self._tok.token_to_id(text)
            if token_id is not None:
                return int(token_id)
        return None

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self._tok.decode(checked_ids(ids, self._id_limit), skip_special_tokens=False)

    def piece(self, token_id: int) -> str:
        """The token's text in the vocabulary (e.g. 'Ġthe' for GPT-2's byte-level BPE)."""
        return self._tok.id_to_token(int(token_id))
