"""Shared matplotlib setup: headless backend, and saving a figure as a PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402


def save(fig, out: str | Path, dpi: int = 110) -> Path:
    """Write `fig` to `out` (directories created), close it, return the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return out


def token_label(piece: str) -> str:
    """A token's text made visible: spaces as a middle dot, newlines and tabs as symbols."""
    return piece.replace(" ", "\u00b7").replace("\n", "\u23ce").replace("\t", "\u21e5") or "\u2205"


def token_pieces(tokenizer, ids: list[int]) -> list[str]:
    """Each token's share of the decoded text: decode(ids[:i+1]) minus decode(ids[:i]).

    Decoding prefixes (not single ids) keeps multi-byte characters and word-start
    markers right; a token that completes a character gets it, the ones before get "".
    """
    pieces, previous = [], ""
    for i in range(len(ids)):
        # An unfinished multi-byte character decodes to U+FFFD until its last byte arrives.
        text = tokenizer.decode(ids[: i + 1]).rstrip("\ufffd")
        common = len(previous) if text.startswith(previous) else 0
        pieces.append(text[common:])
        previous = text
    return pieces
