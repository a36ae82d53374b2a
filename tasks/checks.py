"""The checks a sweep's law must pass: IsoFLOP profiles by compute budget (Chinchilla's Approach 2) and
the extrapolation from the smaller cells to the held-out largest ones."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from tasks import laws

BUDGET_RTOL = 0.05  # cells of one IsoFLOP budget differ in compute only by the rounding of their steps
MIN_SIZES_PER_PROFILE = 3  # a parabola needs three distinct model sizes
PRODUCT_GRID_BANDS = 3  # a product grid has no budgets: its compute is binned into this many bands
CONFIDENCE = 0.95


def budget_labels(compute: np.ndarray) -> np.ndarray:
    """Each cell's budget: cells whose compute agrees within BUDGET_RTOL share one."""
    return laws.equal_compute_groups(compute, BUDGET_RTOL)


def is_isoflop_design(N: np.ndarray, compute: np.ndarray) -> bool:
    """Whether the cells lie on IsoFLOP profiles: two or more budgets of three or more model sizes."""
    labels = budget_labels(compute)
    sizes = [len(np.unique(N[labels == label])) for label in np.unique(labels)]
    return sum(count >= MIN_SIZES_PER_PROFILE for count in sizes) >= 2


def profile_labels(N: np.ndarray, compute: np.ndarray) -> np.ndarray:
    """Budgets of an IsoFLOP design, or else log-spaced compute bands of a product grid."""
    if is_isoflop_design(N, compute):
        return budget_labels(compute)
    log_compute = np.log(compute)
    edges = np.linspace(log_compute.min(), log_compute.max(), PRODUCT_GRID_BANDS + 1)
    return np.clip(np.searchsorted(edges, log_compute, side="right") - 1, 0, PRODUCT_GRID_BANDS - 1)


def isoflop_rows(N: np.ndarray, D: np.ndarray, compute: np.ndarray, loss: np.ndarray) -> list[dict]:
    """One row per budget (or band): the parabola in log N, its minimum with a 95% interval, and whether
    that minimum lies strictly inside the budget's sampled sizes."""
    labels = profile_labels(N, compute)
    return [
        _profile(N[labels == label], D[labels == label], compute[labels == label], loss[labels == label])
        for label in np.unique(labels)
    ]


def _profile(n: np.ndarray, d: np.ndarray, compute: np.ndarray, loss: np.ndarray) -> dict:
    row = {
        "budget_flops": float(np.exp(np.mean(np.log(compute)))),
        "cells": len(n),
        "n_min": float(n.min()),
        "n_max": float(n.max()),
        "n_opt": math.nan,
        "n_opt_ci_low": math.nan,
        "n_opt_ci_high": math.nan,
        "d_opt": math.nan,
        "loss_at_opt": math.nan,
        "interior": False,
        "log_n_centre": math.nan,
        "curvature": math.nan,
        "slope": math.nan,
        "intercept": math.nan,
    }
    if len(np.unique(n)) < MIN_SIZES_PER_PROFILE:
        return row | {"note": f"{len(np.unique(n))} model sizes; a parabola needs {MIN_SIZES_PER_PROFILE}"}
    centre = float(np.mean(np.log(n)))
    x = np.log(n) - centre
    design = np.column_stack([x**2, x, np.ones_like(x)])
    (curvature, slope, intercept), *_ = np.linalg.lstsq(design, loss, rcond=None)
    row |= {"log_n_centre": centre, "curvature": curvature, "slope": slope, "intercept": intercept}
    if curvature <= 0:
        return row | {"note": "the parabola opens downward: no minimum; add sizes on both sides"}
    vertex = -slope / (2 * curvature)
    residual = loss - design @ np.array([curvature, slope, intercept])
    half_width = _vertex_half_width(design, residual, curvature, slope)
    log_d = np.polyval(np.polyfit(x, np.log(d), 1), vertex)  # D = C / (6N) is a line in log space
    interior = bool(x.min() < vertex < x.max())
    return row | {
        "n_opt": _exp(centre + vertex),
        "n_opt_ci_low": _exp(centre + vertex - half_width),
        "n_opt_ci_high": _exp(centre + vertex + half_width),
        "d_opt": _exp(log_d),
        "loss_at_opt": float(intercept - slope**2 / (4 * curvature)),
        "interior": interior,
        "note": "" if interior else "the minimum lies outside the sampled sizes; add sizes beyond it",
    }


def _exp(log_value: float) -> float:
    """exp, saturating to inf: a nearly flat parabola puts its vertex far outside any sampled N."""
    return math.inf if log_value > math.log(np.finfo(float).max) else math.exp(log_value)


def _vertex_half_width(design: np.ndarray, residual: np.ndarray, curvature: float, slope: float) -> float:
    """The vertex's 95% half-width in log N by the delta method, with Student's t on the residual
    degrees of freedom (nan for a parabola through exactly three points)."""
    dof = len(residual) - design.shape[1]
    if dof < 1:
        return math.nan
    covariance = residual @ residual / dof * np.linalg.pinv(design.T @ design)
    gradient = np.array([slope / (2 * curvature**2), -1 / (2 * curvature), 0.0])
    return float(stats.t.ppf((1 + CONFIDENCE) / 2, dof) * math.sqrt(gradient @ covariance @ gradient))


def isoflop_exponent(rows: list[dict]) -> dict:
    """Approach 2's exponent a of N_opt ∝ C^a, fitted to the budgets whose minimum is interior, with
    a 95% interval from the line's residuals (nan with fewer than three budgets)."""
    usable = [r for r in rows if r["interior"]]
    result = {"a": math.nan, "a_ci_low": math.nan, "a_ci_high": math.nan, "budgets": len(usable)}
    if len(usable) < 2:
        return result
    x = np.log([r["budget_flops"] for r in usable])
    y = np.log([r["n_opt"] for r in usable])
    slope, intercept = np.polyfit(x, y, 1)
    result["a"] = float(slope)
    if len(usable) > 2:
        residual = y - (slope * x + intercept)
        stderr = math.sqrt(residual @ residual / (len(x) - 2) / np.sum((x - x.mean()) ** 2))
        half = stats.t.ppf((1 + CONFIDENCE) / 2, len(x) - 2) * stderr
        result |= {"a_ci_low": float(slope - half), "a_ci_high": float(slope + half)}
    return result


def held_out(N: np.ndarray, compute: np.ndarray, holdout_fraction: float) -> np.ndarray:
    """The cells the extrapolation check holds out: an IsoFLOP design's largest budget, or a product
    grid's largest-compute `holdout_fraction`, both in the fit's compute accounting."""
    if is_isoflop_design(N, compute):
        labels = budget_labels(compute)
        return labels == labels.max()
    if holdout_fraction <= 0:
        return np.zeros(len(compute), dtype=bool)
    return compute >= np.quantile(compute, 1 - holdout_fraction)


def extrapolation_rows(
    cell_ids: list[str],
    N: np.ndarray,
    D: np.ndarray,
    compute: np.ndarray,
    loss: np.ndarray,
    mask: np.ndarray,
    huber_delta: float = laws.HUBER_DELTA_CHINCHILLA,
) -> list[dict]:
    """Fit the Chinchilla form without the masked cells, and predict them."""
    if mask.all() or not mask.any():
        return []
    try:
        fit = laws.fit_chinchilla(N[~mask], D[~mask], loss[~mask], huber_delta=huber_delta)
    except laws.FitInputError:  # too few cells left to determine the form
        return []
    predicted = fit.predict(N[mask], D[mask])
    return [
        {
            "cell_id": cell_id,
            "compute": float(c),
            "threshold_compute": float(compute[mask].min()),
            "observed_loss": float(observed),
            "predicted_loss": float(p),
            "relative_error": float((p - observed) / observed),
        }
        for cell_id, c, observed, p in zip(
            np.array(cell_ids)[mask], compute[mask], loss[mask], predicted, strict=True
        )
    ]
