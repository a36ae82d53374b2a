"""Predicted loss of a fitted law, one function per result form: predict(params, N or x, D, C)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike


def _as_float_array(values: ArrayLike | None, name: str, form: str) -> np.ndarray:
    if values is None:
        raise ValueError(f"Predicting with the {form} form needs {name}; pass it as an argument.")
    return np.asarray(values, dtype=float)


def _predict_chinchilla(
    params: dict[str, float], N: ArrayLike, D: ArrayLike | None, C: ArrayLike | None
) -> np.ndarray:
    n, d = np.asarray(N, dtype=float), _as_float_array(D, "D", "chinchilla")
    return params["E"] + params["A"] / n ** params["alpha"] + params["B"] / d ** params["beta"]


def _predict_power_law(
    params: dict[str, float], x: ArrayLike, D: ArrayLike | None, C: ArrayLike | None
) -> np.ndarray:
    return params["E"] + params["A"] * np.asarray(x, dtype=float) ** -params["alpha"]


def _predict_kaplan(
    params: dict[str, float], N: ArrayLike, D: ArrayLike | None, C: ArrayLike | None
) -> np.ndarray:
    n, d = np.asarray(N, dtype=float), _as_float_array(D, "D", "kaplan")
    ratio = params["alpha_N"] / params["alpha_D"]
    return ((params["N_c"] / n) ** ratio + params["D_c"] / d) ** params["alpha_D"]


def _predict_multiplicative(
    params: dict[str, float], N: ArrayLike, D: ArrayLike | None, C: ArrayLike | None
) -> np.ndarray:
    n, d = np.asarray(N, dtype=float), _as_float_array(D, "D", "multiplicative")
    c = _as_float_array(C, "C", "multiplicative")
    return params["a"] * n ** params["b"] * d ** params["c"] * c ** params["d"]


def _predict_multiplicative_reduced(
    params: dict[str, float], N: ArrayLike, D: ArrayLike | None, C: ArrayLike | None
) -> np.ndarray:
    n, d = np.asarray(N, dtype=float), _as_float_array(D, "D", "multiplicative_reduced")
    return params["a"] * n ** params["b"] * d ** params["c"]


_PREDICTORS: dict[str, Callable[..., np.ndarray]] = {
    "chinchilla": _predict_chinchilla,
    "kaplan": _predict_kaplan,
    "power_law_N": _predict_power_law,
    "power_law_D": _predict_power_law,
    "power_law_C": _predict_power_law,
    "multiplicative": _predict_multiplicative,
    "multiplicative_reduced": _predict_multiplicative_reduced,
}
"""Every ``FitResult.form`` (a fitted "multiplicative" may come back as "multiplicative_reduced")."""
