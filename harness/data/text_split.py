"""The S3 split rule and the seeded test sample.

Split rule (Hardt & Sun 2024, tttlm `_split_text`; paper footnote 6): each test sequence of n tokens is
cut at s = max_query_tokens when n >= 2 * max_query_tokens, else at s = n // 2. Tokens [0, s) are the
retrieval *query*; tokens [s, n) are the *evaluated* text. The query is never scored and the evaluated
text never reaches the retriever, so retrieval and evaluation do not overlap.
"""

from __future__ import annotations

import numpy as np

PILE_TEST_SEQUENCES = 179_600  # 1% of the Pile test split is 1796 sequences (paper footnote 6)


def split_point(n_tokens: int, max_query_tokens: int = 1024) -> int:
    """Index s splitting n tokens into query [0, s) and evaluated [s, n)."""
    if n_tokens < 2:
        raise ValueError(f"a test sequence needs >= 2 tokens to split into query and evaluated text, "
                         f"got {n_tokens}")
    return max_query_tokens if n_tokens >= 2 * max_query_tokens else n_tokens // 2


def split_tokens(ids: list[int], max_query_tokens: int = 1024) -> tuple[list[int], list[int]]:
    """(query ids, evaluated ids); their concatenation is `ids`."""
    s = split_point(len(ids), max_query_tokens)
    return list(ids[:s]), list(ids[s:])


def sample_test_indices(n_total: int, fraction: float = 0.01, seed: int = 0) -> np.ndarray:
    """Seeded sample of round(fraction * n_total) distinct test indices, sorted. (k,) int64."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if n_total < 1:
        raise ValueError(f"n_total must be >= 1, got {n_total}")
    k = max(1, int(round(fraction * n_total)))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_total, size=k, replace=False)).astype(np.int64)
