"""IsoFLOP profiles (Chinchilla's Approach 2): the loss-minimising N of each compute budget and the fit
N_opt ∝ C^a over the budgets."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from tasks.laws.compute import FLOPS_PER_PARAM_TOKEN
from tasks.laws.results import IsoFlopGroup, IsoFlopResult
from tasks.laws.uncertainty import Z_95
from tasks.laws.validation import _check_equal_lengths, _validated_columns

# Runs whose compute differs by less than this relative amount share an IsoFLOP group.
ISOFLOP_COMPUTE_RTOL = 0.05


def isoflop_optima(
    N: ArrayLike,
    D: ArrayLike,
    loss: ArrayLike,
    *,
    compute: ArrayLike | None = None,
    n_groups: int | None = None,
    budgets: ArrayLike | None = None,
    rtol: float = ISOFLOP_COMPUTE_RTOL,
) -> IsoFlopResult:
    """Group runs by compute (C = 6 N D unless ``compute`` is given): equal C within ``rtol``
    (default ISOFLOP_COMPUTE_RTOL), or ``n_groups`` log-spaced bins, or the runs' own ``budgets``
    labels (one per run; runs with equal labels share a group).  Fit loss = p(log N), a parabola, per
    group (>= 3 distinct N); its vertex is the group's N_opt.  Groups whose parabola opens downward or
    whose vertex lies outside the sampled N range are flagged and left out of the fit
    log N_opt = log coefficient + a log C."""
    n, d, loss_values = _validated_columns("isoflop_optima", None, N=N, D=D, loss=loss)
    if compute is None:
        compute_values = FLOPS_PER_PARAM_TOKEN * n * d
    else:
        (compute_values,) = _validated_columns("isoflop_optima", None, compute=compute)
        _check_equal_lengths({"N": n, "compute": compute_values})
    if budgets is not None:
        budget_values = np.atleast_1d(np.asarray(budgets))
        _check_equal_lengths({"N": n, "budgets": budget_values})
        labels = np.unique(budget_values, return_inverse=True)[1].reshape(-1)
    else:
        if not rtol > 0:
            raise ValueError(f"rtol must be positive (got {rtol!r}); pass e.g. {ISOFLOP_COMPUTE_RTOL}.")
        labels = _compute_groups(compute_values, n_groups, rtol)
    groups = tuple(
        _isoflop_group(n[labels == g], compute_values[labels == g], loss_values[labels == g])
        for g in np.unique(labels)
    )
    return _isoflop_exponent(groups)


def _compute_groups(compute: np.ndarray, n_groups: int | None, rtol: float) -> np.ndarray:
    log_compute = np.log(compute)
    if n_groups is not None:
        if n_groups < 1:
            raise ValueError(
                f"n_groups must be at least 1 (got {n_groups}); pass None to group by equal compute."
            )
        edges = np.linspace(log_compute.min(), log_compute.max(), n_groups + 1)
        return np.clip(np.searchsorted(edges, log_compute, side="right") - 1, 0, n_groups - 1)
    return equal_compute_groups(compute, rtol)


def equal_compute_groups(compute: np.ndarray, rtol: float) -> np.ndarray:
    """A group label per run: runs sorted by compute open a new group when they exceed the current
    group's smallest compute by more than `rtol`."""
    log_compute = np.log(compute)
    labels = np.empty(len(compute), dtype=int)
    group, group_start = -1, -math.inf
    for index in np.argsort(log_compute):
        if log_compute[index] - group_start > math.log1p(rtol):
            group, group_start = group + 1, log_compute[index]
        labels[index] = group
    return labels


def _unusable_group(compute: float, n_points: int, why: str) -> IsoFlopGroup:
    return IsoFlopGroup(compute, n_points, math.nan, math.nan, math.nan, why)


def _isoflop_group(n: np.ndarray, compute: np.ndarray, loss: np.ndarray) -> IsoFlopGroup:
    group_compute = float(np.exp(np.mean(np.log(compute))))
    log_n = np.log(n)
    if len(np.unique(n)) < 3:
        return _unusable_group(group_compute, len(n), "fewer than 3 distinct model sizes; no parabola fitted")
    centre = float(np.mean(log_n))
    curvature, slope, intercept = np.polyfit(log_n - centre, loss, 2)
    low, high = _vertex_interval(log_n - centre, loss, curvature, slope, intercept)
    if curvature <= 0:
        return _unusable_group(
            group_compute, len(n), "parabola opens downward (no minimum); add runs around the optimum"
        )
    vertex = -slope / (2.0 * curvature)
    n_opt = math.exp(centre + vertex)
    warning = ""
    if not log_n.min() <= centre + vertex <= log_n.max():
        warning = (
            f"minimum N={n_opt:.3g} lies outside the sampled range [{n.min():.3g}, {n.max():.3g}]; "
            "it is an extrapolation, so add runs beyond that end"
        )
    loss_at_opt = float(intercept - slope**2 / (4.0 * curvature))
    return IsoFlopGroup(
        group_compute,
        len(n),
        n_opt,
        group_compute / (FLOPS_PER_PARAM_TOKEN * n_opt),
        loss_at_opt,
        warning,
        math.exp(centre + low),
        math.exp(centre + high),
    )


def _vertex_interval(
    x: np.ndarray, loss: np.ndarray, curvature: float, slope: float, intercept: float
) -> tuple[float, float]:
    """95% interval of the vertex -slope / (2 curvature) in centred log N, by the delta method on the
    least-squares covariance of the parabola (nan without residual degrees of freedom)."""
    design = np.column_stack([x**2, x, np.ones_like(x)])
    residual = loss - design @ np.array([curvature, slope, intercept])
    dof = len(x) - 3
    vertex = -slope / (2.0 * curvature)
    if dof < 1:
        return math.nan, math.nan
    covariance = float(residual @ residual) / dof * np.linalg.pinv(design.T @ design)
    gradient = np.array([slope / (2.0 * curvature**2), -1.0 / (2.0 * curvature), 0.0])
    half_width = Z_95 * math.sqrt(max(float(gradient @ covariance @ gradient), 0.0))
    return vertex - half_width, vertex + half_width


def _isoflop_exponent(groups: tuple[IsoFlopGroup, ...]) -> IsoFlopResult:
    usable = [g for g in groups if not g.warning]
    flagged = len(groups) - len(usable)
    note = f"{len(usable)} of {len(groups)} compute groups used ({flagged} flagged)."
    if len(usable) < 2:
        return IsoFlopResult(
            groups,
            math.nan,
            math.nan,
            math.nan,
            len(usable),
            note + " At least 2 usable groups are needed to fit N_opt ∝ C^a.",
        )
    log_compute = np.log([g.compute for g in usable])
    log_n_opt = np.log([g.N_opt for g in usable])
    (a, log_coefficient), covariance = _line_fit(log_compute, log_n_opt)
    a_stderr = math.sqrt(covariance[0, 0]) if covariance is not None else math.nan
    if covariance is None:
        note += " Standard error of a needs at least 3 usable groups."
    return IsoFlopResult(groups, float(a), a_stderr, math.exp(log_coefficient), len(usable), note)


def _line_fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Least-squares (slope, intercept) and their covariance (None without residual dof)."""
    design = np.column_stack([x, np.ones_like(x)])
    coefficients, *_ = np.linalg.lstsq(design, y, rcond=None)
    dof = len(x) - 2
    if dof < 1:
        return coefficients, None
    residuals = y - design @ coefficients
    return coefficients, float(residuals @ residuals) / dof * np.linalg.inv(design.T @ design)
