"""A token stream as training examples: overlapping context windows, and the seeded order a run takes
them in."""

from __future__ import annotations

import math

import numpy as np


def windows(stream: np.ndarray, context: int) -> np.ndarray:
    """A zero-copy (n, context + 1) view of consecutive windows that overlap by one token."""
    count = (len(stream) - 1) // context
    if count < 1:
        raise ValueError(f"a token stream of {len(stream)} tokens is shorter than one context window")
    step = stream.strides[0]
    return np.lib.stride_tricks.as_strided(
        stream, (count, context + 1), (context * step, step), writeable=False
    )


def sequence_order(n_windows: int, n_needed: int, seed: int) -> np.ndarray:
    """Window indices for the whole run: seeded permutations, one per epoch, as many as needed."""
    rng = np.random.default_rng(seed)
    epochs = math.ceil(n_needed / n_windows)
    return np.concatenate([rng.permutation(n_windows) for _ in range(epochs)])[:n_needed]
