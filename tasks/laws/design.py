"""Which runs to add next: a greedy, cost-aware design that most narrows the interval of a Chinchilla
fit's compute-optimal N (or of its loss there) at a target compute.

The method, after Li et al. 2026 ("Spend Less, Fit Better: Budget-Efficient Scaling Law Fitting via
Active Experiment Selection", arXiv 2604.22753; PlanarG/active-sl, mspe.py), in its within-mode term:

- Linearise the log-space law log L(theta) at each of a few parameter draws theta_s (the fit and its
  bootstrap refits, which stand in for the modes of the posterior). A run x then carries the
  information j_x j_x^T (j_x = d log L(x) / d theta), the same noise on log loss for every run, so the
  noise level cancels from every ratio below.
- The variance of the target g = log N_opt(C) (or log L_opt(C)) is v_s = g_s^T M_s^-1 g_s with
  M_s = sum over the runs so far of j j^T. Adding x lowers it by (g^T M^-1 j)^2 / (1 + j^T M^-1 j)
  (Sherman-Morrison), and M^-1 is updated in place.
- Greedily pick the candidate with the largest drop of the mean over draws of v_s / v_s(now) per
  cost^0.4 (the paper's cost exponent) among those the budget still affords, until the budget or the
  number of cells runs out. The interval's expected width then shrinks by sqrt(mean ratio).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from tasks.laws.compute import FlopsPerToken
from tasks.laws.compute_optimal import _optimal_allocation
from tasks.laws.objective import _SumOfPowerLaws
from tasks.laws.results import FitResult
from tasks.laws.uncertainty import _central_difference

OBJECTIVES = ("n_opt", "loss_at_target")
COST_EXPONENT = 0.4  # score = variance drop / cost^0.4, as in active-sl's mspe.py
DEFAULT_DRAWS = 32  # parameter draws the design averages over: the fit and its first bootstrap refits
_RIDGE = 1e-9  # relative to the information's trace: keeps a barely identified M invertible

SetCost = Callable[[Sequence[int]], float]  # FLOPs of a set of candidates (their indices), trained together


@dataclass(frozen=True)
class CellDesign:
    """The candidates picked, in the order picked, with the cost each added and the interval's expected
    width after it, as a share of its width now."""

    chosen: tuple[int, ...]
    marginal_cost: tuple[float, ...]
    width_ratio: tuple[float, ...]
    draws: int

    @property
    def total_cost(self) -> float:
        return float(sum(self.marginal_cost))

    @property
    def final_width_ratio(self) -> float:
        return self.width_ratio[-1] if self.width_ratio else 1.0


_PUBLIC = ("E", "A", "alpha", "B", "beta")


def _as_theta(rows: np.ndarray) -> np.ndarray:
    """Rows of (E, A, alpha, B, beta) as (log E, log A, alpha, log B, beta), those with positive
    exponents and finite values only."""
    with np.errstate(divide="ignore", invalid="ignore"):
        theta = np.column_stack(
            [np.log(rows[:, 0]), np.log(rows[:, 1]), rows[:, 2], np.log(rows[:, 3]), rows[:, 4]]
        )
    valid = np.all(np.isfinite(theta), axis=1) & (theta[:, 2] > 0) & (theta[:, 4] > 0)
    return theta[valid]


def _bootstrap_rows(fit: FitResult) -> np.ndarray:
    if fit.samples is None:
        raise ValueError("the fit has no bootstrap samples; fit with bootstrap > 0.")
    return np.column_stack([fit.sample_column(name) for name in _PUBLIC])


def _draws(fit: FitResult, draws: int) -> np.ndarray:
    """theta of the fit and of its first valid bootstrap samples, `draws` in all."""
    point = np.array([[fit.params[name] for name in _PUBLIC]])
    return _as_theta(np.vstack([point, _bootstrap_rows(fit)]))[:draws]


def _log_jacobian(theta: np.ndarray, N: np.ndarray, D: np.ndarray) -> np.ndarray:
    """d log L / d theta at every (N, D) for every theta row: shape (rows, points, 5)."""
    points = len(N)
    model = _SumOfPowerLaws((np.log(N), np.log(D)))
    _, vjp = model.log_predict(np.repeat(theta, points, axis=0))
    return vjp(np.tile(np.eye(points), (len(theta), 1))).reshape(len(theta), points, model.n_params)


def _target(theta: np.ndarray, compute: float, objective: str, flops: FlopsPerToken | None) -> np.ndarray:
    """log N_opt or log L_opt at `compute` for each theta row."""
    E, A, B = np.exp(theta[:, 0]), np.exp(theta[:, 1]), np.exp(theta[:, 3])
    n_opt, _, loss = _optimal_allocation(E, A, B, theta[:, 2], theta[:, 4], np.asarray(compute), flops)
    return np.log(n_opt if objective == "n_opt" else loss)


def _check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)} (got {objective!r}).")


def target_interval(
    fit: FitResult, compute: float, objective: str = "n_opt", flops: FlopsPerToken | None = None
) -> tuple[float, float, float]:
    """(estimate, 2.5%, 97.5%) of N_opt (objective "n_opt") or of the loss at the compute-optimal
    allocation ("loss_at_target") at `compute`, the interval from the fit's bootstrap samples."""
    _check_objective(objective)
    point = _as_theta(np.array([[fit.params[name] for name in _PUBLIC]]))
    estimate = float(np.exp(_target(point, compute, objective, flops))[0]) if len(point) else np.nan
    samples = np.exp(_target(_as_theta(_bootstrap_rows(fit)), compute, objective, flops))
    low, high = np.nanpercentile(samples, [2.5, 97.5])
    return estimate, float(low), float(high)


def design_cells(
    fit: FitResult,
    N: ArrayLike,
    D: ArrayLike,
    candidate_N: ArrayLike,
    candidate_D: ArrayLike,
    *,
    compute: float,
    budget: float,
    max_cells: int,
    set_cost: SetCost,
    objective: str = "n_opt",
    flops: FlopsPerToken | None = None,
    draws: int = DEFAULT_DRAWS,
) -> CellDesign:
    """Up to `max_cells` of the candidates (candidate_N, candidate_D), costing at most `budget` in all
    as `set_cost` counts a set of them, that most narrow the target's interval at `compute`, given the
    fit (with bootstrap samples) to the runs at (N, D). See the module's docstring for the method."""
    _check_objective(objective)
    theta = _draws(fit, draws)
    if not len(theta):
        raise ValueError("no draw of the fit (nor the fit) has positive exponents; nothing to design from.")
    covariance = _inverse_information(theta, np.asarray(N, dtype=float), np.asarray(D, dtype=float))
    gradient = np.stack(
        [_central_difference(lambda t: _target(t[None], compute, objective, flops)[0], t) for t in theta]
    )
    candidates = np.arange(len(np.asarray(candidate_N)))
    jacobian = _log_jacobian(
        theta, np.asarray(candidate_N, dtype=float), np.asarray(candidate_D, dtype=float)
    )
    start_variance = np.einsum("si,sij,sj->s", gradient, covariance, gradient)
    ratio = np.ones(len(theta))  # each draw's variance of the target now, over its variance at the start
    chosen: list[int] = []
    costs: list[float] = []
    widths: list[float] = []
    spent = 0.0
    while len(chosen) < max_cells:
        spread = np.einsum("sij,scj->sci", covariance, jacobian)  # M^-1 j per draw and candidate
        leverage = np.einsum("sci,sci->sc", jacobian, spread)
        drop = np.einsum("si,sci->sc", gradient, spread) ** 2 / (1.0 + leverage) / start_variance[:, None]
        new_ratio = np.maximum(ratio[:, None] - drop, 0.0)
        gain = ratio.mean() - new_ratio.mean(axis=0)
        marginal = np.array([set_cost([*chosen, i]) - spent for i in candidates])
        open_ = (marginal <= budget - spent) & ~np.isin(candidates, chosen) & (gain > 0)
        if not open_.any():
            break
        score = np.where(open_, gain / np.maximum(marginal, 1e-300) ** COST_EXPONENT, -np.inf)
        best = int(np.argmax(score))
        update = spread[:, best]  # Sherman-Morrison: M^-1 loses (M^-1 j)(M^-1 j)^T / (1 + j^T M^-1 j)
        covariance = (
            covariance - np.einsum("si,sj->sij", update, update) / (1.0 + leverage[:, best])[:, None, None]
        )
        ratio = new_ratio[:, best]
        chosen.append(best)
        costs.append(float(marginal[best]))
        widths.append(float(np.sqrt(ratio.mean())))
        spent += marginal[best]
    return CellDesign(tuple(chosen), tuple(costs), tuple(widths), len(theta))


def _inverse_information(theta: np.ndarray, N: np.ndarray, D: np.ndarray) -> np.ndarray:
    """M^-1 per draw, M = sum over the runs of j j^T (in units of the noise variance, which cancels)."""
    jacobian = _log_jacobian(theta, N, D)
    information = np.einsum("spi,spj->sij", jacobian, jacobian)
    ridge = _RIDGE * np.trace(information, axis1=1, axis2=2)[:, None, None] * np.eye(theta.shape[1])
    return np.linalg.inv(information + ridge)
