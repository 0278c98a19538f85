"""A multiple-choice test any text can give: which ending completes this line?

Benchmarks such as HellaSwag need a download and a model large enough to know the world.
A small model trained on one corpus can still be graded the same way on that corpus's
held-out text: cut a line in two at a word boundary, offer its true second half among
the second halves of other lines, and ask the model which continuation it finds most
likely (`jaxllm eval mc`). Chance is 1 / choices; a model that has learnt the language
of the text, its metre and its grammar, does better. Records use the generic
`{"context", "choices", "label"}` shape that `read_mc` reads.
"""

from __future__ import annotations

import math

import numpy as np


def candidate_lines(text: str, min_chars: int = 24) -> list[str]:
    """Lines worth cutting: long enough, with a space past the first quarter, not a speaker tag."""
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if len(line) >= min_chars and not line.endswith(":") and " " in line[6:]]


def cut(line: str) -> tuple[str, str]:
    """(first half, second half) of a line, cut at the space nearest its middle.

    The space itself belongs to neither: the scorer puts one between context and choice."""
    middle = len(line) // 2
    spaces = [i for i, ch in enumerate(line) if ch == " " and 4 <= i <= len(line) - 4]
    at = min(spaces, key=lambda i: abs(i - middle))
    return line[:at], line[at + 1 :]


DISTRACTORS = ("lines", "shuffled")


def make_cloze(text: str, n: int, choices: int = 4, seed: int = 0, distractors: str = "lines") -> list[dict]:
    """n records: a cut line's first half, its true ending and choices - 1 wrong endings.

    distractors="lines": the endings of other lines, so the model must know which ending
    fits this context (hard: a line's opening rarely fixes its close). "shuffled": the
    true ending's own words in another order, so every choice has the same words and
    characters and only word order tells them apart (a test of grammar that even a
    small model can pass). Raises ValueError when the text has too few usable lines."""
    if choices < 2:
        raise ValueError(f"choices={choices}: a multiple-choice record needs at least 2")
    if distractors not in DISTRACTORS:
        raise ValueError(f"distractors={distractors!r}: choose one of {', '.join(DISTRACTORS)}")
    lines = candidate_lines(text)
    if distractors == "shuffled":  # endings of enough distinct words to give `choices` distinct orders
        need = next(k for k in range(2, 10) if math.factorial(k) >= choices)
        lines = [line for line in lines if len(set(cut(line)[1].split())) >= need]
    if len(lines) < max(n, choices):
        raise ValueError(f"the text has {len(lines)} usable lines (>= 24 characters); need at least {max(n, choices)}")
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(lines), size=n, replace=False)
    endings = [cut(line)[1] for line in lines]
    records = []
    for i in picked:
        context, true_ending = cut(lines[i])
        others: list[str] = []
        words = true_ending.split()
        while len(others) < choices - 1:
            if distractors == "shuffled":
                candidate = " ".join(words[k] for k in rng.permutation(len(words)))
            else:
                candidate = endings[int(rng.integers(len(lines)))]
            if candidate != true_ending and candidate not in others:
                others.append(candidate)
        label = int(rng.integers(choices))
        options = [*others[:label], true_ending, *others[label:]]
        records.append({"context": context, "choices": options, "label": label})
    return records
