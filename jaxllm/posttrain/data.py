"""Instruction and preference data: files -> conversations -> token ids with loss masks.

Accepted records (JSON list or JSONL, one object per line):
- Alpaca: {"instruction", "input" (may be empty), "output"}: the user message is the
  instruction, followed by a blank line and the input when there is one;
- chat: {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]};
- preference: a prompt (Alpaca fields, or "prompt" as text, or "messages" without the
  reply) with "chosen" and "rejected" replies.

Each conversation is rendered with the run's chat template (jaxllm/chat.py) span by
span; response spans get loss weight 1, everything else 0, so instruction tuning
learns the replies and not the prompts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jaxllm.chat import generation_prompt, render, render_spans
from jaxllm.config import ChatConfig
from jaxllm.data.tokenizer import encode_prompt, prompt_start
from jaxllm.errors import DataError

Messages = list[dict[str, str]]


def read_utf8(path: str | os.PathLike[str], what: str = "", hint: str = "give a UTF-8 text file") -> str:
    """The text of a UTF-8 file, or a DataError naming the file (as `what PATH`, e.g.
    `--file x.bin`) and the fix: a binary or Latin-1 file given by mistake must not end
    in a UnicodeDecodeError traceback."""
    p = Path(path)
    name = f"{what} {p}" if what else str(p)
    if not p.is_file():
        raise DataError(f"{name}: {'a directory' if p.is_dir() else 'no such file'}; {hint}")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{name}: not UTF-8 text ({e.reason} at byte {e.start}); convert it to UTF-8") from None
    except OSError as e:
        raise DataError(f"{name}: cannot be read ({e.strerror}); {hint}") from None


def load_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every record of a .json (a list of objects) or .jsonl file, with clear errors."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"instruction data {str(p)!r} does not exist; give a .json or .jsonl file")
    text = read_utf8(p, hint="give a .json or .jsonl file")
    if p.suffix == ".jsonl":
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{p}:{n} is not valid JSON ({e.msg})") from None
    else:
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{p} is not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(records, list):
            raise DataError(f"{p} must hold a JSON list of records (or use .jsonl, one record per line)")
    if not records:
        raise DataError(f"{p} holds no records")
    for i, r in enumerate(records):
        if not isinstance(r, Mapping):
            raise DataError(f"{p}: record {i} is {type(r).__name__}, not an object")
    return records


def alpaca_prompt(record: Mapping[str, Any]) -> str:
    """The user message of an Alpaca record: instruction, then the input if any."""
    inp = str(record.get("input") or "").strip()
    instruction = str(record["instruction"]).strip()
    return f"{instruction}\n\n{inp}" if inp else instruction


def prompt_messages(record: Mapping[str, Any], where: str) -> Messages:
    """The conversation up to (not including) the reply."""
    if "messages" in record:
        msgs = [dict(m) for m in record["messages"]]
        if msgs and msgs[-1].get("role") == "assistant" and "chosen" not in record:
            msgs = msgs[:-1]
        return msgs
    if "instruction" in record:
        return [{"role": "user", "content": alpaca_prompt(record)}]
    if "prompt" in record:
        return [{"role": "user", "content": str(record["prompt"])}]
    raise DataError(f"{where} has none of 'messages', 'instruction', 'prompt' (keys: {', '.join(record)})")


def to_messages(record: Mapping[str, Any], where: str = "record") -> Messages:
    """An SFT conversation (ending with the assistant reply to learn)."""
    if "messages" in record:
        msgs = [dict(m) for m in record["messages"]]
        if not msgs or msgs[-1].get("role") != "assistant":
            raise DataError(f"{where}: a 'messages' conversation must end with an assistant message to learn")
        return msgs
    if "instruction" in record and "output" in record:
        return [*prompt_messages(record, where), {"role": "assistant", "content": str(record["output"])}]
    raise DataError(
        f"{where} is neither Alpaca (instruction/input/output) nor chat (messages); keys: {', '.join(record)}"
    )


def to_preference(record: Mapping[str, Any], where: str = "record") -> tuple[Messages, str, str]:
    """(prompt conversation, chosen reply, rejected reply)."""
    if "chosen" not in record or "rejected" not in record:
        raise DataError(f"{where} needs 'chosen' and 'rejected' replies (keys: {', '.join(record)})")
    return prompt_messages(record, where), str(record["chosen"]), str(record["rejected"])


@dataclass(frozen=True)
class Example:
    """One tokenized conversation: ids and a 0/1 loss weight per id."""

    ids: np.ndarray  # int32 (n,)
    weights: np.ndarray  # float32 (n,): 1 on reply tokens


def tokenize_conversation(tokenizer, chat: ChatConfig, messages: Sequence[Mapping[str, str]]) -> Example:
    """Spans encoded one by one (so each token belongs to exactly one span) and joined;
    first the ids the tokenizer puts before a prompt (BOS when its rules add one, see
    encode_prompt). A Jinja template writes its own BOS, so nothing is added before it,
    as transformers' apply_chat_template does."""
    ids: list[int] = [] if chat.template else prompt_start(tokenizer)
    weights: list[float] = [0.0] * len(ids)
    for text, is_response in render_spans(chat, messages, tokenizer):
        piece = tokenizer.encode(text).tolist()
        ids += piece
        weights += [1.0 if is_response else 0.0] * len(piece)
    return Example(np.asarray(ids, np.int32), np.asarray(weights, np.float32))


def tokenize_prompt(tokenizer, chat: ChatConfig, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """The ids that ask for the next reply: the conversation plus the assistant's opening."""
    if chat.template:
        return encode_prompt(tokenizer, render(chat, messages, True, tokenizer), special_tokens=False)
    ex = tokenize_conversation(tokenizer, chat, messages)
    return ex.ids.tolist() + tokenizer.encode(generation_prompt(chat)).tolist()


def split_records(records: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """A seeded shuffle, then the last `val_fraction` held out (at least one record when > 0)."""
    order = np.random.default_rng(seed).permutation(len(records))
    n_val = int(round(len(records) * val_fraction))
    if val_fraction > 0:
        n_val = max(1, min(n_val, len(records) - 1))
    train = [records[i] for i in order[: len(records) - n_val]]
    val = [records[i] for i in order[len(records) - n_val :]]
    return train, val
