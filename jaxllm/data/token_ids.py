"""Token-id checks shared by every tokenizer kind (jaxllm's own and Hugging Face's).

Why a module of its own: both `tokenizer.py` and `hf_tokenizer.py` need them, and the
loader in `tokenizer.py` builds an `HFTokenizer`, so they cannot live in either.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxllm.errors import DataError


class TokenizerError(DataError):
    """A tokenizer that cannot be loaded or trained; the message says which and why."""


def checked_ids(ids: Sequence[int] | np.ndarray, limit: int) -> list[int]:
    """`ids` as ints, or TokenizerError naming the first one outside [0, limit): decoding it would fail
    inside the library with a bare message, or (bytes) silently wrap around to another character."""
    values = np.asarray(ids, dtype=np.int64)
    outside = values[(values < 0) | (values >= limit)]
    if outside.size:
        raise TokenizerError(
            f"cannot decode token id {int(outside[0])}: this tokenizer has {limit} ids (0..{limit - 1}); decode with "
            "the tokenizer the ids were made with (a model's vocabulary may be padded past the tokenizer's: sample "
            "with vocab_limit=tokenizer.vocab_size)"
        )
    return values.tolist()
