"""Instructions with checkable answers, for measuring post-training on a laptop.

Three tasks a small character-level model can learn in minutes: reverse a word, add two
small numbers, uppercase a phrase. Every record is Alpaca-shaped, so it goes through the
same data path as real instruction data, and `exact_match` grades a model's greedy
replies against the known answers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxllm.chat import stop_string
from jaxllm.config import Config
from jaxllm.generation import generate
from jaxllm.posttrain.data import prompt_messages, tokenize_prompt

KINDS = ("reverse", "add", "upper")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_WORDS = ("thou", "art", "good", "night", "king", "sweet", "love", "fair", "lord", "death", "time", "heart", "blood",
          "grace", "crown", "honest", "noble", "gentle", "true", "war", "peace", "soul", "eyes", "sun")  # fmt: skip


def make_records(n: int, seed: int, kinds: Sequence[str] = KINDS) -> list[dict[str, str]]:
    """n records cycling through `kinds`, drawn from a seeded generator."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        if kind == "reverse":
            word = "".join(rng.choice(list(_LETTERS), rng.integers(3, 7)))
            out.append({"instruction": "reverse", "input": word, "output": word[::-1], "kind": kind})
        elif kind == "add":
            a, b = (int(x) for x in rng.integers(0, 50, 2))
            out.append({"instruction": "add", "input": f"{a}+{b}", "output": str(a + b), "kind": kind})
        elif kind == "upper":
            phrase = " ".join(rng.choice(_WORDS, rng.integers(1, 4)))
            out.append({"instruction": "upper", "input": phrase, "output": phrase.upper(), "kind": kind})
        else:
            raise ValueError(f"unknown task kind {kind!r}; choose from {', '.join(KINDS)}")
    return out


def exact_match(
    cfg: Config, params, tokenizer, records: Sequence[dict], batch: int = 64, max_new_tokens: int = 16
) -> dict[str, float]:
    """Share of records whose greedy reply (up to the template's stop string) equals the
    expected output exactly, overall and per kind."""
    stop = stop_string(cfg.chat)
    hits: dict[str, list[bool]] = {}
    for i in range(0, len(records), batch):
        chunk = records[i : i + batch]
        prompts = [tokenize_prompt(tokenizer, cfg.chat, prompt_messages(r, "record")) for r in chunk]
        out = generate(cfg, params, prompts, max_new_tokens, temperature=0.0, stop_tokens=[tokenizer.eos_id],
                       stop_sequences=[tokenizer.encode(stop).tolist()],
                       vocab_limit=min(tokenizer.vocab_size, cfg.model.vocab_size), overflow="stop")  # fmt: skip
        for r, ids in zip(chunk, out.tokens, strict=True):
            reply = tokenizer.decode(ids).split(stop)[0].strip()
            hits.setdefault(r.get("kind", "all"), []).append(reply == r["output"])
    scores = {k: float(np.mean(v)) for k, v in hits.items()}
    scores["all"] = float(np.mean([h for v in hits.values() for h in v]))
    return scores


def off_task_answer(record: dict[str, str]) -> str:
    """What another task would answer on this input (uppercase a word to reverse, reverse
    a phrase to uppercase, echo a sum): wrong whatever its surface features, so a reward
    model trained on these cannot score a reply by its style alone (PPO exploits such
    shortcuts: a policy learnt to answer every prompt in capitals when they were absent)."""
    kind, inp = record["kind"], record["input"]
    if kind == "reverse":
        return inp.upper()
    if kind == "upper":
        return inp[::-1]
    return inp


def wrong_answer(record: dict[str, str], rng: np.random.Generator, off_task: float = 0.0) -> str:
    """A plausible but incorrect reply of the same kind (for preference pairs); with
    probability `off_task`, another task's answer instead."""
    right = record["output"]
    kind = record["kind"]
    if off_task and rng.random() < off_task:
        wrong = off_task_answer(record)
        if wrong != right:
            return wrong
    if kind == "add":
        return str(max(0, int(right) + int(rng.choice([-3, -2, -1, 1, 2, 3]))))
    if kind == "upper":
        wrong = right.title()
        return wrong if wrong != right else right.lower()
    # reverse: the reversed word with two neighbouring letters swapped (or the word unreversed)
    for _ in range(8):
        i = int(rng.integers(0, len(right) - 1))
        swapped = right[:i] + right[i + 1] + right[i] + right[i + 2 :]
        if swapped != right:
            return swapped
    return record["input"] if record["input"] != right else right + "e"


def make_preference_records(
    n: int, seed: int, kinds: Sequence[str] = KINDS, off_task: float = 0.0
) -> list[dict[str, str]]:
    """n records with `chosen` = the correct reply and `rejected` = a wrong one (a near
    miss, or another task's answer with probability `off_task`)."""
    rng = np.random.default_rng(seed + 1000)
    return [{**r, "chosen": r["output"], "rejected": wrong_answer(r, rng, off_task)}
            for r in make_records(n, seed, kinds)]  # fmt: skip


def policy_preference_records(
    cfg: Config, params, tokenizer, records: Sequence[dict], samples: int = 4, seed: int = 0, batch: int = 64
) -> list[dict[str, str]]:
    """Preference pairs whose rejected reply is the policy's own mistake: `samples`
    replies per record are drawn at temperature 1 and graded; chosen = the correct
    answer, rejected = the first wrong sample. Records the policy got right every time
    are skipped. This is how people label a policy's samples: a reward model trained on
    such pairs judges the errors PPO will actually meet, where near misses of a fixed
    form leave it blind to the rest (measured: it then preferred some wrong replies)."""
    stop = stop_string(cfg.chat)
    out = []
    for i in range(0, len(records), batch):
        chunk = records[i : i + batch]
        prompts = [tokenize_prompt(tokenizer, cfg.chat, prompt_messages(r, "record")) for r in chunk]
        wrong: list[str | None] = [None] * len(chunk)
        for k in range(samples):
            gen = generate(cfg, params, prompts, 16, temperature=1.0, seed=seed * 1_000_003 + i * samples + k,
                           stop_tokens=[tokenizer.eos_id], stop_sequences=[tokenizer.encode(stop).tolist()],
                           vocab_limit=min(tokenizer.vocab_size, cfg.model.vocab_size), overflow="stop")  # fmt: skip
            for j, (r, ids) in enumerate(zip(chunk, gen.tokens, strict=True)):
                reply = tokenizer.decode(ids).split(stop)[0].strip()
                if wrong[j] is None and reply != r["output"]:
                    wrong[j] = reply
        out += [{**r, "chosen": r["output"], "rejected": w} for r, w in zip(chunk, wrong, strict=True) if w is not None]
    return out
