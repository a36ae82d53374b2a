"""The checks a sweep's law must pass: IsoFLOP profiles by compute budget (Chinchilla's Approach 2) and
the extrapolation from the smaller cells to the held-out largest ones."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from tasks import laws

BUDGET_RTOL = 0.05  # cells of one IsoFLOP budget differ in compute only by the rounding of their steps
MIN_SIZES_PER_PROFILE = 3  # a parabola needs three distinct model sizes
PRODUCT_GRID_BANDS = 3  # a product grid has no budgets: its compute is binned into this many bands


@dataclass(frozen=True)
class IsoflopProfile:
    """One budget's (or compute band's) IsoFLOP parabola, loss = curvature·x² + slope·x + intercept with
    x = ln N - log_n_centre, and its minimum with a 95% interval (nan where there is none)."""

    budget_flops: float  # in the fit's compute accounting; a band's geometric mean
    cells: int
    n_min: float
    n_max: float
    n_opt: float = math.nan
    n_opt_ci_low: float = math.nan
    n_opt_ci_high: float = math.nan
    d_opt: float = math.nan
    loss_at_opt: float = math.nan
    interior: bool = False  # the minimum lies strictly inside [n_min, n_max]
    log_n_centre: float = math.nan
    curvature: float = math.nan
    slope: float = math.nan
    intercept: float = math.nan
    note: str = ""


@dataclass(frozen=True)
class HeldOutCell:
    """A cell the extrapolation check held out: its loss observed, and predicted by the law fitted
    without it (losses in the fit's target, FLOPs in its compute accounting)."""

    cell_id: str
    flops: float
    threshold_flops: float  # the smallest held-out cell's FLOPs
    observed_loss: float
    predicted_loss: float
    relative_error: float  # (predicted - observed) / observed


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


def isoflop_rows(N: np.ndarray, D: np.ndarray, compute: np.ndarray, loss: np.ndarray) -> list[IsoflopProfile]:
    """One row per budget (or band): the parabola in log N, its minimum with a 95% interval, and whether
    that minimum lies strictly inside the budget's sampled sizes."""
    labels = profile_labels(N, compute)
    return [
        _profile(N[labels == label], D[labels == label], compute[labels == label], loss[labels == label])
        for label in np.unique(labels)
    ]


def _profile(n: np.ndarray, d: np.ndarray, compute: np.ndarray, loss: np.ndarray) -> IsoflopProfile:
    row = IsoflopProfile(
        budget_flops=float(np.exp(np.mean(np.log(compute)))),
        cells=len(n),
        n_min=float(n.min()),
        n_max=float(n.max()),
    )
    if len(np.unique(n)) < MIN_SIZES_PER_PROFILE:
        return replace(row, note=f"{len(np.unique(n))} model sizes; a parabola needs {MIN_SIZES_PER_PROFILE}")
    parabola = laws.fit_parabola(np.log(n), loss)
    row = replace(
        row,
        log_n_centre=parabola.centre,
        curvature=parabola.curvature,
        slope=parabola.slope,
        intercept=parabola.intercept,
    )
    if parabola.curvature <= 0:
        return replace(row, note="the parabola opens downward: no minimum; add sizes on both sides")
    x = np.log(n) - parabola.centre
    vertex = parabola.vertex
    log_d = np.polyval(np.polyfit(x, np.log(d), 1), vertex)  # D = C / (6N) is a line in log space
    interior = bool(x.min() < vertex < x.max())
    log_n_opt = parabola.centre + vertex
    return replace(
        row,
        n_opt=_exp(log_n_opt),
        n_opt_ci_low=_exp(log_n_opt - parabola.half_width),
        n_opt_ci_high=_exp(log_n_opt + parabola.half_width),
        d_opt=_exp(log_d),
        loss_at_opt=parabola.loss_at_vertex,
        interior=interior,
        note="" if interior else "the minimum lies outside the sampled sizes; add sizes beyond it",
    )


def _exp(log_value: float) -> float:
    """exp, saturating to inf: a nearly flat parabola puts its vertex far outside any sampled N."""
    return math.inf if log_value > math.log(np.finfo(float).max) else math.exp(log_value)


def isoflop_exponent(rows: list[IsoflopProfile]) -> dict:
    """Approach 2's exponent a of N_opt ∝ C^a, fitted to the budgets whose minimum is interior, with
    a 95% interval from the line's residuals (nan with fewer than three budgets)."""
    usable = [r for r in rows if r.interior]
    result = {"a": math.nan, "a_ci_low": math.nan, "a_ci_high": math.nan, "budgets": len(usable)}
    if len(usable) < 2:
        return result
    x = np.log([r.budget_flops for r in usable])
    y = np.log([r.n_opt for r in usable])
    (slope, _), covariance = laws.line_fit(x, y)
    result["a"] = float(slope)
    if covariance is not None:
        half = laws.student_t_95(len(x) - 2) * math.sqrt(covariance[0, 0])
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
) -> list[HeldOutCell]:
    """Fit the Chinchilla form without the masked cells, and predict them."""
    if mask.all() or not mask.any():
        return []
    try:
        fit = laws.fit_chinchilla(N[~mask], D[~mask], loss[~mask], huber_delta=huber_delta)
    except laws.FitInputError:  # too few cells left to determine the form
        return []
    predicted = fit.predict(N[mask], D[mask])
    return [
        HeldOutCell(
            cell_id=str(cell_id),
            flops=float(c),
            threshold_flops=float(compute[mask].min()),
            observed_loss=float(observed),
            predicted_loss=float(p),
            relative_error=float((p - observed) / observed),
        )
        for cell_id, c, observed, p in zip(
            np.array(cell_ids)[mask], compute[mask], loss[mask], predicted, strict=True
        )
    ]
