"""Synthetic runs drawn from known Chinchilla-law parameters, shared by the law tests."""

from __future__ import annotations

import numpy as np

TRUE_CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
NOISE_SIGMA = 0.005  # multiplicative noise on the loss


def chinchilla_loss(N: np.ndarray, D: np.ndarray, p: dict[str, float] = TRUE_CHINCHILLA) -> np.ndarray:
    return p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"]


def noisy(loss: np.ndarray, seed: int) -> np.ndarray:
    return loss * np.exp(NOISE_SIGMA * np.random.default_rng(seed).standard_normal(loss.shape))


def grid_runs(n_sizes: int = 6, n_token_counts: int = 6) -> tuple[np.ndarray, np.ndarray]:
    N, D = np.meshgrid(np.geomspace(1e6, 1e9, n_sizes), np.geomspace(1e8, 1e11, n_token_counts))
    return N.ravel(), D.ravel()
