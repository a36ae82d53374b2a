"""IsoFLOP profiles (Chinchilla's Approach 2): the loss-minimising N of each compute budget and the fit
N_opt ∝ C^a over the budgets."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from tasks.laws.compute import FLOPS_PER_PARAM_TOKEN
from tasks.laws.results import IsoFlopGroup, IsoFlopResult
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
    parabola = fit_parabola(log_n, loss)
    if parabola.curvature <= 0:
        return _unusable_group(
            group_compute, len(n), "parabola opens downward (no minimum); add runs around the optimum"
        )
    log_n_opt = parabola.centre + parabola.vertex
    n_opt = math.exp(log_n_opt)
    warning = ""
    if not log_n.min() <= log_n_opt <= log_n.max():
        warning = (
            f"minimum N={n_opt:.3g} lies outside the sampled range [{n.min():.3g}, {n.max():.3g}]; "
            "it is an extrapolation, so add runs beyond that end"
        )
    return IsoFlopGroup(
        group_compute,
        len(n),
        n_opt,
        group_compute / (FLOPS_PER_PARAM_TOKEN * n_opt),
        parabola.loss_at_vertex,
        warning,
        math.exp(log_n_opt - parabola.half_width),
        math.exp(log_n_opt + parabola.half_width),
    )


@dataclass(frozen=True)
class Parabola:
    """loss = curvature·x² + slope·x + intercept in x = ln N − centre, and the 95% half-width of its
    vertex in x: the delta method on the least-squares covariance, with Student's t on the residual
    degrees of freedom (nan for a parabola through three points)."""

    centre: float
    curvature: float
    slope: float
    intercept: float
    half_width: float

    @property
    def vertex(self) -> float:
        return -self.slope / (2.0 * self.curvature)

    @property
    def loss_at_vertex(self) -> float:
        return float(self.intercept - self.slope**2 / (4.0 * self.curvature))


def fit_parabola(log_n: np.ndarray, loss: np.ndarray) -> Parabola:
    """The least-squares parabola of loss in ln N (three or more distinct N), centred on their mean."""
    centre = float(np.mean(log_n))
    x = log_n - centre
    design = np.column_stack([x**2, x, np.ones_like(x)])
    coefficients, *_ = np.linalg.lstsq(design, loss, rcond=None)
    curvature, slope, intercept = (float(c) for c in coefficients)
    dof = len(x) - 3
    if dof < 1 or curvature <= 0:
        return Parabola(centre, curvature, slope, intercept, math.nan)
    residual = loss - design @ coefficients
    covariance = float(residual @ residual) / dof * np.linalg.pinv(design.T @ design)
    gradient = np.array([slope / (2.0 * curvature**2), -1.0 / (2.0 * curvature), 0.0])
    spread = math.sqrt(max(float(gradient @ covariance @ gradient), 0.0))
    return Parabola(centre, curvature, slope, intercept, student_t_95(dof) * spread)


def student_t_95(dof: int) -> float:
    """The two-sided 95% quantile of Student's t with `dof` degrees of freedom."""
    # scipy.special only where an interval needs it (the package imports without scipy); not
    # scipy.stats, whose import alone took 1-2 s of the sweep's fits step
    from scipy.special import stdtrit

    return float(stdtrit(dof, 0.975))


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
    (a, log_coefficient), covariance = line_fit(log_compute, log_n_opt)
    a_stderr = math.sqrt(covariance[0, 0]) if covariance is not None else math.nan
    if covariance is None:
        note += " Standard error of a needs at least 3 usable groups."
    return IsoFlopResult(groups, float(a), a_stderr, math.exp(log_coefficient), len(usable), note)


def line_fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Least-squares (slope, intercept) and their covariance (None without residual dof)."""
    design = np.column_stack([x, np.ones_like(x)])
    coefficients, *_ = np.linalg.lstsq(design, y, rcond=None)
    dof = len(x) - 2
    if dof < 1:
        return coefficients, None
    residuals = y - design @ coefficients
    return coefficients, float(residuals @ residuals) / dof * np.linalg.inv(design.T @ design)
