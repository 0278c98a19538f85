"""A small byte-level BPE tokenizer, written from scratch to show how BPE works.

This is the teaching version, for learning and for tiny corpora. The project's default
tokenizer is sentencepiece; nothing else in jaxllm depends on this module.

Byte-pair encoding (Sennrich, Haddow & Birch, 2016) builds a vocabulary bottom-up:
start from the smallest possible units and repeatedly glue together the two adjacent
units that occur together most often. Each glue step is a "merge"; the ordered list of
merges *is* the tokenizer. The steps, and why each one exists:

1. Bytes, not characters. Every text is first turned into its UTF-8 bytes, so the 256
   byte values are the starting vocabulary (ids 0..255). Any string at all, in any
   script, with emoji or broken characters, can be encoded: there is no "unknown
   token". Multi-byte characters (é is 2 bytes, 日 is 3, 🙂 is 4) simply get merged
   back into single tokens if they are frequent enough.

2. Pre-tokenization into "words". Before counting pairs the text is split with a regex
   (`WORD_PATTERN`) into runs of letters, runs of digits, runs of other non-space
   characters (punctuation, symbols, emoji) and runs of whitespace; the first three
   may carry one leading space, as in GPT-2, so " the" is one word. Merges never cross a
   word boundary. Without this split BPE would happily learn tokens such as "e, t" or
   "dog." that mix words with punctuation and waste vocabulary on every punctuation
   variant of a word. A second benefit: the corpus collapses into a table of distinct
   words with counts ("the" x 5000), and all counting is done per distinct word, once,
   weighted by its count, which is what makes training fast.

   The whitespace rule is GPT-2's trick: in a run of several spaces the last space is
   left for the following word ("   x" -> "  ", " x"), so " x" looks the same whether
   it follows one space or many. Concatenating the words always gives back the text.

3. Count adjacent pairs. Within every word, every adjacent pair of ids is counted,
   weighted by the word's frequency. Pairs are counted at every position, overlapping
   ones included: "aaa" contributes 2 to the pair (a, a) although only one merge can be
   applied to it. This is the usual convention (it is what counting `zip(ids, ids[1:])`
   gives) and both trainers below follow it.

4. Merge the most frequent pair. It gets the next free id (256, 257, ...) and every
   occurrence of it in every word is replaced by that id, scanning left to right
   without overlaps: with (a, a) -> X, "aaa" becomes [X, a] and "aaaa" becomes [X, X].
   Ties between equally frequent pairs go to the smallest pair, comparing
   (first_id, second_id) tuples, so training is deterministic and does not depend on
   dictionary order.

5. Repeat for `num_merges` steps, or stop early when the best pair occurs fewer than
   2 times. A pair seen once comes from a single spot in the corpus: merging it
   memorizes that spot instead of learning anything that generalizes, and it only
   grows the vocabulary. (Stopping also covers the case where no pairs are left.)

Encoding new text replays the merges: split into words, turn each word into bytes, and
repeatedly apply the earliest-learned merge (lowest rank) present in the word until none
applies. Decoding concatenates the bytes of each token and decodes them as UTF-8
(errors="replace", since an arbitrary id sequence may cut a character in half).

Two trainers live here:

* `train_bpe` is the efficient one. Recounting every pair after each merge costs time
  proportional to the whole corpus per merge. Instead it keeps the pair counts and an
  index "pair -> words containing it" up to date: a merge only changes the words that
  contain the merged pair, so only those words are re-counted (subtract their old
  pairs, add their new ones). The most frequent pair is taken from a heap of
  (-count, pair) entries; when a count changes a fresh entry is pushed and the stale
  ones are skipped when they surface ("lazy deletion"). Since -count comes first and
  the pair second, the heap's smallest entry is exactly "highest count, then smallest
  pair" - the tie rule for free.
* `reference_train_bpe` is the obviously-correct one: recount everything with a
  `collections.Counter` after every merge. It exists to document the algorithm and to
  check the fast trainer in the tests.

Example:

    >>> model = train_bpe("low lower lowest low low", num_merges=10)
    >>> ids = model.encode("lowest")
    >>> model.decode(ids)
    'lowest'
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import os
import re
from collections import Counter, defaultdict
from pathlib import Path

Pair = tuple[int, int]

NUM_BYTES = 256
"""Ids 0..255 are the raw byte values; merge number i (from 0) creates id 256 + i."""

FILE_TYPE = "jaxllm-bpe"
"""The "type" tag of a saved model file."""

WORD_PATTERN = re.compile(
    r" ?[^\W\d_]+"  # letters (any script): "hello", " world", " café", "日本語"
    r"| ?\d+"  # digits: "2024", " 42"
    r"| ?(?:[^\w\s]|_)+"  # anything else that is not whitespace: ".", " --", "!?", "🙂", "_"
    r"|\s+(?!\S)"  # whitespace, leaving the last space for the next word when one follows
    r"|\s+"  # whitespace right before a word that does not take it (e.g. "\n" before "x")
)
"""Pre-tokenization regex. Every character falls into one of the alternatives, so the
matches concatenate back to the input exactly. `[^\\W\\d_]` is "a word character that is
neither a digit nor an underscore", i.e. a letter, in Python's Unicode-aware `re`."""

_ENCODE_CACHE_LIMIT = 100_000


def pretokenize(text: str) -> list[str]:
    """Split `text` into the words BPE works within; `"".join(pretokenize(text)) == text`."""
    return WORD_PATTERN.findall(text)


def merge_pair(ids: list[int], pair: Pair, new_id: int) -> list[int]:
    """Replace each occurrence of `pair` in `ids` by `new_id`, left to right, without overlaps.

    `merge_pair([a, a, a], (a, a), X) == [X, a]`: once the first two ids are merged the
    middle one is used up, so the scan continues after it.
    """
    first, second = pair
    merged: list[int] = []
    position = 0
    while position < len(ids):
        if position + 1 < len(ids) and ids[position] == first and ids[position + 1] == second:
            merged.append(new_id)
            position += 2
        else:
            merged.append(ids[position])
            position += 1
    return merged


def _word_table(text: str) -> tuple[list[list[int]], list[int]]:
    """The distinct words of `text` as lists of byte ids, with how often each occurs."""
    word_counts = Counter(pretokenize(text))
    words = [list(word.encode("utf-8")) for word in word_counts]
    return words, list(word_counts.values())


def _check_num_merges(num_merges: int) -> None:
    if isinstance(num_merges, bool) or not isinstance(num_merges, int) or num_merges < 0:
        raise ValueError(f"num_merges must be a non-negative integer, got {num_merges!r}")


@dataclasses.dataclass(frozen=True)
class BPEModel:
    """A trained byte-level BPE tokenizer: just the ordered list of merges.

    Token ids 0..255 are bytes; `merges[i] = (a, b)` defines token 256 + i as token a
    followed by token b. A merge may only use ids that exist before it (< 256 + i).
    """

    merges: list[tuple[int, int]]

    def __post_init__(self) -> None:
        merges: list[Pair] = []
        for rank, merge in enumerate(self.merges):
            if not isinstance(merge, list | tuple) or len(merge) != 2:
                raise ValueError(f"merge {rank} must be a pair of token ids, got {merge!r}")
            for token_id in merge:
                if isinstance(token_id, bool) or not isinstance(token_id, int):
                    raise ValueError(f"merge {rank} must be a pair of integer token ids, got {merge!r}")
                if not 0 <= token_id < NUM_BYTES + rank:
                    raise ValueError(
                        f"merge {rank} = {list(merge)} uses id {token_id}, but only ids 0..{NUM_BYTES + rank - 1} "
                        "exist before it"
                    )
            merges.append((merge[0], merge[1]))
        ranks = {pair: rank for rank, pair in enumerate(merges)}
        if len(ranks) != len(merges):
            duplicate = next(pair for pair, count in Counter(merges).items() if count > 1)
            raise ValueError(f"merge {list(duplicate)} appears more than once")

        token_bytes = [bytes([byte]) for byte in range(NUM_BYTES)]
        for first, second in merges:
            token_bytes.append(token_bytes[first] + token_bytes[second])

        # The dataclass is frozen, so the normalized copy of the merges and the derived
        # lookup tables are set with object.__setattr__ (once, here).
        object.__setattr__(self, "merges", merges)
        object.__setattr__(self, "_ranks", ranks)
        object.__setattr__(self, "_token_bytes", token_bytes)
        object.__setattr__(self, "_encode_cache", {})

    @property
    def vocab_size(self) -> int:
        """256 byte tokens plus one token per merge."""
        return NUM_BYTES + len(self.merges)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes that token `token_id` stands for, e.g. b" the"."""
        if isinstance(token_id, bool) or not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id!r} is out of range for vocab_size {self.vocab_size}")
        return self._token_bytes[token_id]

    def _encode_word(self, word: str) -> list[int]:
        cached = self._encode_cache.get(word)
        if cached is not None:
            return cached
        ids = list(word.encode("utf-8"))
        while len(ids) >= 2:
            # The earliest-learned merge among the pairs present goes first, exactly as in
            # training, where it was applied before any later merge existed.
            pair = min(zip(ids, ids[1:], strict=False), key=lambda p: self._ranks.get(p, len(self._ranks)))
            rank = self._ranks.get(pair)
            if rank is None:
                break
            ids = merge_pair(ids, pair, NUM_BYTES + rank)
        if len(self._encode_cache) >= _ENCODE_CACHE_LIMIT:
            self._encode_cache.clear()
        self._encode_cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids for `text`: pre-tokenize, then apply the merges within each word."""
        ids: list[int] = []
        for word in pretokenize(text):
            ids.extend(self._encode_word(word))
        return ids

    def decode(self, ids: list[int]) -> str:
        """The text for `ids`: the tokens' bytes, concatenated and decoded as UTF-8.

        Invalid UTF-8 (a sequence cut inside a character) becomes U+FFFD.
        """
        return b"".join(self.token_bytes(token_id) for token_id in ids).decode("utf-8", errors="replace")

    def save(self, path: str | os.PathLike) -> None:
        """Write the model as JSON: {"type": "jaxllm-bpe", "merges": [[a, b], ...]}."""
        payload = {"type": FILE_TYPE, "merges": [list(pair) for pair in self.merges]}
        Path(path).write_text(json.dumps(payload) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> BPEModel:
        """Read a model written by `save`. Raises ValueError naming the file and the problem."""
        try:
            payload = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: cannot read a BPE model file: {error}") from error
        if not isinstance(payload, dict) or payload.get("type") != FILE_TYPE:
            raise ValueError(f'{path}: not a BPE model file (expected a JSON object with "type": "{FILE_TYPE}")')
        merges = payload.get("merges")
        if not isinstance(merges, list):
            raise ValueError(f'{path}: "merges" must be a list of [a, b] pairs, got {type(merges).__name__}')
        try:
            return cls(merges)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error


def train_bpe(text: str, num_merges: int, *, progress: bool = False) -> BPEModel:
    """Learn up to `num_merges` merges from `text` (fewer if the best pair occurs < 2 times).

    Incremental version of `reference_train_bpe` with identical results: pair counts and
    a "pair -> words containing it" index are kept up to date, so each merge only
    re-counts the words that contain the merged pair. With `progress`, prints each merge.
    """
    _check_num_merges(num_merges)
    words, word_freqs = _word_table(text)

    # Every adjacent pair's total count (weighted by word frequency), and which words hold it.
    pair_counts: dict[Pair, int] = defaultdict(int)
    words_with_pair: dict[Pair, set[int]] = defaultdict(set)
    for word_index, (ids, freq) in enumerate(zip(words, word_freqs, strict=True)):
        for pair in zip(ids, ids[1:], strict=False):
            pair_counts[pair] += freq
            words_with_pair[pair].add(word_index)

    # Max-heap via negated counts; ties pop the smallest pair. Entries can be stale.
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[Pair] = []
    token_bytes = [bytes([byte]) for byte in range(NUM_BYTES)]
    while len(merges) < num_merges:
        best_pair, best_count = None, 0
        while heap:
            negative_count, pair = heapq.heappop(heap)
            if pair_counts.get(pair) == -negative_count:  # else stale: the count has changed since
                best_pair, best_count = pair, -negative_count
                break
        if best_pair is None or best_count < 2:
            break

        new_id = NUM_BYTES + len(merges)
        merges.append(best_pair)
        token_bytes.append(token_bytes[best_pair[0]] + token_bytes[best_pair[1]])
        if progress:
            print(
                f"merge {len(merges)}/{num_merges}: {best_pair} -> {new_id} {token_bytes[new_id]!r} "
                f"({best_count} occurrences)"
            )

        # Re-count only the words that contain the pair: remove their old pairs, add the new.
        changed_pairs: set[Pair] = set()
        for word_index in sorted(words_with_pair[best_pair]):
            old_ids = words[word_index]
            new_ids = merge_pair(old_ids, best_pair, new_id)
            words[word_index] = new_ids
            freq = word_freqs[word_index]
            old_pairs = Counter(zip(old_ids, old_ids[1:], strict=False))
            new_pairs = Counter(zip(new_ids, new_ids[1:], strict=False))
            for pair, count in old_pairs.items():
                pair_counts[pair] -= count * freq
                if pair not in new_pairs:
                    words_with_pair[pair].discard(word_index)
            for pair, count in new_pairs.items():
                pair_counts[pair] += count * freq
                words_with_pair[pair].add(word_index)
            changed_pairs.update(old_pairs)
            changed_pairs.update(new_pairs)

        # Publish the new counts: forget pairs that no longer occur (the merged pair is
        # always one of them), push a fresh heap entry for the others.
        for pair in changed_pairs:
            count = pair_counts[pair]
            if count == 0:
                del pair_counts[pair]
                del words_with_pair[pair]
            else:
                heapq.heappush(heap, (-count, pair))
    return BPEModel(merges)


def reference_train_bpe(text: str, num_merges: int) -> list[tuple[int, int]]:
    """The straightforward trainer: recount all pairs from scratch before every merge.

    Same pre-tokenization, pair counting (overlapping pairs included), tie rule (smallest
    pair) and stop rule (best count < 2) as `train_bpe`, which must give the same merges.
    Slow on purpose - its job is to be obviously right. Used by the tests.
    """
    _check_num_merges(num_merges)
    words, word_freqs = _word_table(text)
    merges: list[Pair] = []
    while len(merges) < num_merges:
        pair_counts: Counter[Pair] = Counter()
        for ids, freq in zip(words, word_freqs, strict=True):
            for pair in zip(ids, ids[1:], strict=False):
                pair_counts[pair] += freq
        if not pair_counts:
            break
        best_pair = min(pair_counts, key=lambda pair: (-pair_counts[pair], pair))
        if pair_counts[best_pair] < 2:
            break
        new_id = NUM_BYTES + len(merges)
        merges.append(best_pair)
        words = [merge_pair(ids, best_pair, new_id) for ids in words]
    return merges
