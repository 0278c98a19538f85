"""A Hugging Face `tokenizer.json` as a jaxllm Tokenizer, through the `tokenizers` library.

Why: a model imported from Hugging Face must read and write text with the exact
tokenizer it was trained with; tokenizer.json holds all of it (normalizer,
pre-tokenizer, BPE/Unigram/WordPiece model, decoder). What tokenizer.json does not say
is which token ends a document: transformers keeps that in tokenizer_config.json or
special_tokens_map.json beside it, so those are read when present, and the usual names
(`<|endoftext|>`, `</s>`, ...) are the fallback.

encode adds no special tokens (no BOS), like the other jaxllm tokenizers. encode_prompt
adds exactly the special tokens the source tokenizer adds (what transformers'
`tokenizer(text)` gives): its tokenizer.json post-processor, unless tokenizer_config.json
sets add_bos_token / add_eos_token, in which case those flags alone decide, as
transformers does. Many models add no BOS at all; prepending one anyway changes what
they answer. decode keeps special tokens, so decode(encode(text)) gives back text that
contains them, e.g. a chat template's markers.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer as Backend
from tokenizers import processors

from jaxllm.data.token_ids import TokenizerError, checked_ids

# Common special-token spellings, most specific first: GPT-2 / Llama-3 / Llama-2 & most sentencepiece models.
EOS_NAMES = ("<|endoftext|>", "<|end_of_text|>", "</s>")
BOS_NAMES = ("<|begin_of_text|>", "<s>")
SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def _side_config(directory: Path) -> dict[str, Any]:
    """tokenizer_config.json as a dict ({} when absent or unreadable)."""
    try:
        raw = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


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
        # encode() adds no special tokens, so the one backend serves both (no second parse of a large file)
        self._tok = self._prompt_backend(self._tok, _side_config(path.parent))
        start = self._tok.encode("", add_special_tokens=True).ids
        self.adds_bos: bool = bool(start) and self.bos_id is not None and start[0] == self.bos_id

    def _prompt_backend(self, backend: Any, side: dict[str, Any]) -> Any:
        """The backend whose post-processor adds what transformers adds: tokenizer.json's own,
        or, when tokenizer_config.json names add_bos_token/add_eos_token (or there is no
        post-processor), a template from those flags alone (transformers' update_post_processor)."""
        if "add_bos_token" not in side and "add_eos_token" not in side and backend.post_processor is not None:
            return backend
        add_bos = bool(side.get("add_bos_token")) and self.bos_id is not None
        add_eos = bool(side.get("add_eos_token"))
        bos, eos = (self.piece(self.bos_id) if add_bos else ""), self.piece(self.eos_id)  # type: ignore[arg-type]
        single = f"{bos + ':0 ' if add_bos else ''}$A:0{' ' + eos + ':0' if add_eos else ''}"
        pair = f"{single}{' ' + bos + ':1' if add_bos else ''} $B:1{' ' + eos + ':1' if add_eos else ''}"
        specials = ([(bos, self.bos_id)] if add_bos else []) + ([(eos, self.eos_id)] if add_eos else [])
        backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)
        return backend

    def encode_prompt(self, text: str) -> list[int]:
        """Ids with the special tokens the source tokenizer adds, but never a second BOS when
        the text already starts with the BOS token's text (a rendered chat prompt often does)."""
        ids = [int(i) for i in self._tok.encode(text, add_special_tokens=True).ids]
        bos = self.bos_id
        if bos is not None and len(ids) > 1 and ids[0] == ids[1] == bos and text.startswith(self.piece(bos)):
            ids = ids[1:]
        return ids

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
