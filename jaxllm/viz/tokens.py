"""A text drawn with its token boundaries: each token a coloured box, in reading order.

What a tokenizer does is easiest to see: where words split, which pieces are whole words,
how many tokens a line costs. Colours alternate so neighbouring tokens stay apart; the
title gives the count and the compression (UTF-8 bytes per token).
"""

from __future__ import annotations

from pathlib import Path

from jaxllm.errors import DataError
from jaxllm.viz._figure import plt, save, token_label, token_pieces

_COLOURS = ("#fde2a7", "#b9e3c6", "#c6d8f5", "#f5c6d8", "#e0d0f5")


def plot_tokens(tokenizer, text: str, out: str | Path, width: int = 60, title: str = "") -> Path:
    """Render `text` token by token, wrapping lines at about `width` characters."""
    if not text:
        raise DataError("no text to tokenize; give --text or --file with some content")
    ids = [int(i) for i in tokenizer.encode(text)]
    pieces = token_pieces(tokenizer, ids)
    lines: list[list[tuple[str, int]]] = [[]]
    used = 0
    for n, piece in enumerate(pieces):
        for part_i, part in enumerate(piece.split("\n")):
            if part_i:  # a newline inside the token: its mark ends the line
                lines[-1].append(("\u23ce", n))
                lines.append([])
                used = 0
            if not part:
                continue
            label = token_label(part)
            if used and used + len(label) > width:
                lines.append([])
                used = 0
            lines[-1].append((label, n))
            used += len(label)
    char_w, line_h = 0.13, 0.42  # inches per character and per line, monospace at 11 pt
    fig_w = max(4.0, (width + 2) * char_w)
    fig_h = max(1.5, (len(lines) + 1.5) * line_h)
    fig = plt.figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, fig_w)
    ax.set_ylim(fig_h, 0)
    ax.axis("off")
    for row, line in enumerate(lines):
        x = 0.1
        y = (row + 1.2) * line_h
        for label, n in line:
            w = len(label) * char_w
            ax.add_patch(plt.Rectangle((x, y - 0.3 * line_h), w, 0.72 * line_h, color=_COLOURS[n % len(_COLOURS)],
                                       ec="#555555", lw=0.5))  # fmt: skip
            ax.text(x + w / 2, y + 0.06 * line_h, label, ha="center", va="center", family="monospace", fontsize=11)
            x += w
    n_bytes = len(text.encode("utf-8"))
    head = f"{len(ids)} tokens, {n_bytes} bytes: {n_bytes / len(ids):.2f} bytes/token"
    ax.text(0.1, 0.45 * line_h, f"{title}  ({head})" if title else head, fontsize=11, weight="bold", va="center")
    return save(fig, out)
