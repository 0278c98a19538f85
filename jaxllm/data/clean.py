"""Document cleaning and quality filters, run by `jaxllm data prepare` before dedup and tokenizing.

Three steps, in this order, for every raw document:

1. `clean_text` -- light cleaning of the training text itself. It is lossless in spirit:
   it only removes things that carry no meaning or that would break the pipeline.
     * newlines: "\\r\\n" and "\\r" become "\\n", so a file saved on Windows or old Mac
       OS tokenizes exactly like the same file saved on Linux (otherwise the model
       spends capacity learning "\\r" and the two copies would not dedup as exact);
     * NUL ("\\x00") is removed: the byte tokenizer uses byte 0 as the end-of-document
       id, so a NUL inside a document would silently split it in two;
     * trailing whitespace at the end of the document is dropped: it is invisible, it
       varies between copies of the same file, and the EOS id follows the document.
   Nothing else: no unicode normalization, no case folding, no whitespace collapsing
   inside the text. Those would change what the model learns (indentation in verse
   and code, curly quotes, accents), so they are applied only to the dedup key.

2. `normalize_for_dedup` -- the canonical form used only to *compare* documents
   (exact-dup hashing and MinHash shingles, see dedup.py), never written to shards:
   NFKC (so full-width letters, ligatures and compatibility forms match their plain
   spelling), lowercase, every whitespace run collapsed to one space, stripped. Two
   copies of a text that differ only in case, wrapping or such encoding details are
   then the same string.

3. `filter_reason` -- cheap quality heuristics; the first failing one names the drop
   reason (counted by `FilterStats`, reported in the dataset manifest). In order:
     * "too_short" (len < min_chars): a few characters are no document (an empty
       JSONL field, a stray title line); they add EOS ids and noise, not language.
     * "too_long" (len > max_chars): a safety valve against a runaway input (a whole
       dump concatenated into one "document", a binary file read as text) that would
       dominate the shards; the default (50M characters) is far above any real book.
     * "low_alnum" (letters+digits, `str.isalnum`, over non-whitespace characters <
       min_alnum_fraction): catches symbol soup, ASCII art, base64-ish or markup-only
       pages, tables of punctuation. Whitespace is left out of the ratio so that
       indentation and line breaks (verse, code) do not count against a document; an
       all-whitespace document has fraction 0. `isalnum` is unicode aware, so text in
       any script counts as letters. Measured on the complete works of Shakespeare
       (42 files) and tinyshakespeare: the lowest fraction is 0.920 (King Lear),
       well above the 0.5 default.
     * "repeated_lines" (among the non-empty, stripped lines, the share that repeats
       an earlier line of the same document > max_repeated_line_fraction): catches
       boilerplate and spam (the same line pasted 50 times, navigation menus, log
       spew). Plays legitimately repeat their speaker-name lines ("Ham.", "First
       Citizen:"), so the default must leave room for them. Measured: the highest
       fraction among the real files is 0.303 (The Merry Wives of Windsor; the
       plays range 0.16-0.30, the poems ~0), below the 0.5 default. Documents with
       fewer than 3 non-empty lines are exempt: with 1 line the fraction is always 0,
       and with 2 lines it can only be 0 or 0.5, so a single repeat (a two-line
       exchange "No.\\nNo.") would decide the verdict -- too little evidence to call
       a document boilerplate; very short junk is the length filter's job.

Filters read the *cleaned* text (step 1) but are independent of the dedup key.
"""

from __future__ import annotations

import dataclasses
import unicodedata

from jaxllm.config import FilterConfig

# The filter names, in the order `filter_reason` checks them.
REASONS = ("too_short", "too_long", "low_alnum", "repeated_lines")


def clean_text(text: str) -> str:
    """Normalize newlines to "\\n", remove NUL characters, strip trailing whitespace."""
    text = text.replace("\x00", "")  # first, so "\r\x00\n" still reads as one newline
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.rstrip()


def normalize_for_dedup(text: str) -> str:
    """The comparison form of a document: NFKC, lowercase, whitespace runs -> one space, stripped."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(text.split())  # split() with no argument splits on any unicode whitespace run


def alnum_fraction(text: str) -> float:
    """Letters and digits (`str.isalnum`) over non-whitespace characters; 0.0 if there are none."""
    visible = "".join(text.split())  # same whitespace definition as str.isspace, at C speed
    if not visible:
        return 0.0
    return sum(map(str.isalnum, visible)) / len(visible)


def repeated_line_fraction(text: str) -> tuple[float, int]:
    """(share of non-empty stripped lines that repeat an earlier line, number of non-empty lines)."""
    seen: set[str] = set()
    lines = repeats = 0
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        lines += 1
        if line in seen:
            repeats += 1
        else:
            seen.add(line)
    return (repeats / lines if lines else 0.0), lines


def filter_reason(text: str, cfg: FilterConfig) -> str | None:
    """None if the document is kept, else the name of the first failing filter (see REASONS)."""
    if len(text) < cfg.min_chars:
        return "too_short"
    if len(text) > cfg.max_chars:
        return "too_long"
    if alnum_fraction(text) < cfg.min_alnum_fraction:
        return "low_alnum"
    fraction, lines = repeated_line_fraction(text)
    if lines >= 3 and fraction > cfg.max_repeated_line_fraction:
        return "repeated_lines"
    return None


@dataclasses.dataclass
class FilterStats:
    """How many documents were kept, and how many each filter dropped.

    Usage: `if stats.record(filter_reason(text, cfg)): keep(text)`.
    """

    kept: int = 0
    dropped: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(REASONS, 0))

    def record(self, reason: str | None) -> bool:
        """Count one document's verdict (None = kept); returns True if it was kept."""
        if reason is None:
            self.kept += 1
            return True
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        return False

    @property
    def total(self) -> int:
        return self.kept + sum(self.dropped.values())

    @property
    def num_dropped(self) -> int:
        return sum(self.dropped.values())

    def as_dict(self) -> dict[str, int]:
        """Flat, JSON-ready counts: {"kept": n, "too_short": n, ...}; the values sum to `total`."""
        return {"kept": self.kept, **self.dropped}
