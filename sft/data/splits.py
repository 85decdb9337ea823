"""The held-out split: a seeded permutation, a function of (number of rows, eval_size, seed) only."""

from __future__ import annotations

import numpy as np

from sft.data.errors import UserError


def split_indices(n: int, eval_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, held-out) row indices: the same for every run with the same data and seed."""
    k = int(round(eval_size * n)) if eval_size < 1 else int(eval_size)
    if not 1 <= k < n:
        raise UserError(
            f"eval_size={eval_size} gives {k} held-out rows out of {n}; it must leave at least one row on each "
            "side. Use a share such as 0.05 or a row count below the number of rows."
        )
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[k:]), np.sort(perm[:k])
