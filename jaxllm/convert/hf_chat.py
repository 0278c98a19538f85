"""What an imported run's config.yaml says about its tokenizer and chat template.

Why: an instruction-tuned Hugging Face model was tuned on its own Jinja chat template
and ends a turn with its own token. transformers 5 keeps the template in
`chat_template.jinja`, older files in tokenizer_config.json's "chat_template"; import
reads either into `chat.template` (with `chat.stop_tokens`), so `jaxllm chat` prompts the
model as it was tuned, and export writes it back in both places, so transformers'
apply_chat_template on the exported folder renders the same text. The tokenizer section
names the imported tokenizer (its file, vocabulary size, special tokens) instead of the
defaults for training a new one, which said nothing true about the model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxllm.config import ChatConfig, TokenizerConfig
from jaxllm.data.hf_tokenizer import HFTokenizer
from jaxllm.data.tokenizer import load_tokenizer
from jaxllm.errors import DataError

Log = Callable[[str], None]
TEMPLATE_FILE = "chat_template.jinja"
# words in a special token's name that mark the end of a turn (<|im_end|>, <|eot_id|>, <end_of_turn>, <|end|>)
END_MARKS = ("end", "eot")
_KINDS = {"BPE": "bpe", "Unigram": "unigram", "WordLevel": "word"}


def _json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


def read_chat_template(hf_dir: Path) -> str:
    """The model's chat template: chat_template.jinja, else tokenizer_config.json's
    "chat_template" (a string, or a list of named templates: the "default" one); '' if none."""
    if (hf_dir / TEMPLATE_FILE).is_file():
        return (hf_dir / TEMPLATE_FILE).read_text(encoding="utf-8")
    raw = _json(hf_dir / "tokenizer_config.json").get("chat_template")
    if isinstance(raw, list):
        named = {t.get("name"): t.get("template") for t in raw if isinstance(t, dict)}
        raw = named.get("default", next(iter(named.values()), None))
    return raw if isinstance(raw, str) else ""


def _special_tokens(tok: Any) -> list[str]:
    """The texts of the tokenizer's special added tokens, in id order."""
    decoder = tok._tok.get_added_tokens_decoder()
    return [t.content for _, t in sorted(decoder.items()) if t.special]


def _stop_tokens(hf_dir: Path, tok: Any, template: str) -> tuple[str, ...]:
    """Tokens that end a reply besides EOS: generation_config.json's eos_token_id(s), and the
    special tokens the template writes whose name says "end" (ChatML's <|im_end|>, ...)."""
    found: list[str] = []
    eos_ids = _json(hf_dir / "generation_config.json").get("eos_token_id")
    for i in eos_ids if isinstance(eos_ids, list) else [eos_ids]:
        if isinstance(i, int) and i != tok.eos_id and 0 <= i < tok.vocab_size:
            found.append(tok.piece(i))
    for name in _special_tokens(tok):
        if name in template and any(m in name.lower() for m in END_MARKS) and name != tok.piece(tok.eos_id):
            found.append(name)
    return tuple(dict.fromkeys(found))


def imported_sections(hf_dir: Path, tokenizer_path: str, log: Log) -> tuple[TokenizerConfig, ChatConfig]:
    """The tokenizer and chat sections of an imported run's config.yaml."""
    try:
        tok = load_tokenizer(tokenizer_path) if tokenizer_path != "byte" and Path(tokenizer_path).is_file() else None
    except DataError:
        tok = None
    if tok is None:
        return TokenizerConfig(path=tokenizer_path, special_tokens=()), ChatConfig()
    specials: tuple[str, ...] = ()
    kind, byte_fallback = "bpe", TokenizerConfig.byte_fallback
    if isinstance(tok, HFTokenizer):
        specials = tuple(_special_tokens(tok))
        model = _json(Path(tokenizer_path)).get("model") or {}
        kind = _KINDS.get(str(model.get("type")), "bpe")
        byte_fallback = bool(model.get("byte_fallback", False))
    elif hasattr(tok, "_sp"):  # sentencepiece: its control pieces (<s>, </s>); kind stays the default
        specials = tuple(tok.piece(i) for i in range(tok.vocab_size) if tok._sp.is_control(i))
    tokenizer = TokenizerConfig(
        path=tokenizer_path,
        kind=kind,  # type: ignore[arg-type]
        vocab_size=tok.vocab_size,
        byte_fallback=byte_fallback and tok.vocab_size > 260,
        special_tokens=specials,
    )
    template = read_chat_template(hf_dir)
    if not template:
        return tokenizer, ChatConfig()
    stops = _stop_tokens(hf_dir, tok, template)
    log(f"imported the chat template ({len(template)} characters); a reply ends at EOS or {', '.join(stops) or '-'}")
    return tokenizer, ChatConfig(enabled=True, template=template, stop_tokens=stops)


def export_chat_template(chat: ChatConfig, out: Path, log: Log) -> None:
    """Write the run's Jinja template where transformers 5 reads it (chat_template.jinja)
    and where older versions do (tokenizer_config.json "chat_template")."""
    if not chat.template:
        return
    (out / TEMPLATE_FILE).write_text(chat.template, encoding="utf-8")
    config_path = out / "tokenizer_config.json"
    if config_path.is_file():
        raw = _json(config_path)
        raw["chat_template"] = chat.template
        config_path.write_text(json.dumps(raw, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    log(f"wrote the chat template to {TEMPLATE_FILE} and tokenizer_config.json")
