"""Variable projection for the Chinchilla form (as Open-Athena's VPNLS): for fixed exponents (alpha,
beta) the law E + A x + B y (x = N^-alpha, y = D^-beta) is linear in (E, A, B) >= 0, so the 5-D search
becomes a 2-D one over the exponents with the coefficients solved at every point.

The inner problem minimises the summed Huber loss of log residuals over (E, A, B) >= 0.  It is not a
linear least-squares problem in log space, so it is solved by Gauss-Newton steps with Huber (IRLS)
weights: each step is a non-negative least-squares problem in three unknowns, solved exactly by trying
every support (the NNLS optimum is the best non-negative unconstrained solution on some support).  The
first step is NNLS on relative linear-space residuals.  All of it is vectorised over exponent pairs.

The outer search screens a grid of exponent pairs, zooms in around the best distinct cells, and hands
the best points, as theta = (log E, log A, alpha, log B, beta), to the same batched L-BFGS polish as the
multistart path, so both solvers end on the same objective and the same intervals machinery.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping

import numpy as np

from tasks.laws.objective import _huber
from tasks.laws.optimizer import (
    _POLISH_FTOL,
    _POLISH_ITERATIONS,
    _batched_lbfgs,
    _distinct,
    _Minimisable,
    _Minimum,
)

_ToPairs = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
SOLVERS = ("multistart", "vpnls")
# The default stays the multistart.  vpnls is 2-3x faster and reached the same objective (within 1e-14
# relative) on the Chinchilla runs, their resamples and subsets and on synthetic law-plus-noise sets
# (Huber kinks active, E at its bound, fixed and tied parameters); but on runs with no law in them (pure
# noise) the best fits put exponents far outside its grid (negative, or > 3), which only the multistart's
# unconstrained descents from 4,500 starts reach: there vpnls ended up to 14% higher.
DEFAULT_SOLVER = "multistart"
VPNLS_NOTE = (
    "variable projection: (E, A, B) >= 0 solved for each (alpha, beta) on a grid, zoomed into around "
    "the best cells, best points polished to machine precision by a batched L-BFGS."
)

_THETA = ("E", "A", "alpha", "B", "beta")
_COEFFICIENTS = ("E", "A", "B")
_GRID_EXPONENTS = np.arange(0.0, 3.001, 0.1)  # screening grid of each free exponent
_CANDIDATES = 5  # distinct grid cells zoomed into; each is polished
_CANDIDATE_SEPARATION = 2.5  # grid steps (max norm) between candidate cells
_ZOOM_ROUNDS = 7  # each round a 3-point-per-dimension grid at half the previous spacing
_SCREEN_STEPS = 6  # Gauss-Newton-IRLS steps of the inner problem while screening and zooming
_FINAL_STEPS = 40  # ... at each candidate's final exponents
_PAIR_CHUNK_ELEMENTS = 1 << 20  # (pairs x runs) elements per inner solve, to bound memory
_BOUND_SHARE = 1e-12  # a coefficient at its bound 0 starts the polish at this share of the least loss
_RIDGE = 1e-13  # relative ridge on the normal equations (normalised columns), for collinear features


def check_solver(solver: str) -> str:
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(map(repr, SOLVERS))} (got {solver!r}).")
    return solver


class _Inner:
    """The inner problem at many exponent pairs: the Huber-optimal non-negative (E, A, B)."""

    def __init__(self, n: np.ndarray, d: np.ndarray, loss: np.ndarray, huber_delta: float, fixed: Mapping):
        self.log_n, self.log_d, self.loss = np.log(n), np.log(d), loss
        self.log_loss = np.log(loss)
        self.huber_delta = huber_delta
        self.fixed = {name: float(fixed[name]) for name in _COEFFICIENTS if name in fixed}
        self.free = [j for j, name in enumerate(_COEFFICIENTS) if name not in self.fixed]
        sizes = range(len(self.free) + 1)
        self.supports = [s for size in sizes for s in itertools.combinations(self.free, size)]
        if not self.fixed:
            self.supports.remove(())  # all coefficients 0 predicts a loss of 0

    def solve(self, alpha: np.ndarray, beta: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """(objective, coefficients (E, A, B)) at each pair, in chunks of pairs."""
        rows = max(1, _PAIR_CHUNK_ELEMENTS // len(self.loss))
        values, coefficients = np.empty(len(alpha)), np.empty((len(alpha), 3))
        for start in range(0, len(alpha), rows):
            chunk = slice(start, start + rows)
            values[chunk], coefficients[chunk] = self._solve(alpha[chunk], beta[chunk], steps)
        return values, coefficients

    def _features(self, alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features (pairs, runs, 3) = (1, x, y) with x, y divided by their largest value, and the logs
        of those scales (pairs, 3); a coefficient of the scaled features is its term's largest value.
        Each distinct exponent is exponentiated once (a grid repeats them)."""
        features = np.ones((len(alpha), len(self.loss), 3))
        log_scales = np.zeros((len(alpha), 3))
        for column, exponents, log_x in ((1, alpha, self.log_n), (2, beta, self.log_d)):
            distinct, which = np.unique(exponents, return_inverse=True)
            log_terms = -np.multiply.outer(distinct, log_x)
            largest = log_terms.max(axis=1)
            features[:, :, column] = np.exp(log_terms - largest[:, None])[which]
            log_scales[:, column] = largest[which]
        return features, log_scales

    def _solve(self, alpha: np.ndarray, beta: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
        features, log_scales = self._features(alpha, beta)
        fixed = np.zeros((len(alpha), 3))
        for name, value in self.fixed.items():
            j = _COEFFICIENTS.index(name)
            fixed[:, j] = value * np.exp(log_scales[:, j])
        offset = (features @ fixed[:, :, None])[:, :, 0]
        free_features = features[:, :, self.free]
        prediction = np.broadcast_to(self.loss, offset.shape)  # the first step fits relative residuals
        best_value = np.full(len(alpha), np.inf)
        best = fixed.copy()
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            for _ in range(steps):
                residual = np.log(prediction) - self.log_loss
                _, slope = _huber(residual, self.huber_delta)
                weight = np.where(residual != 0, slope / np.where(residual != 0, residual, 1.0), 1.0)
                root = np.sqrt(weight)
                design = free_features * (root / prediction)[:, :, None]
                target = root * (1.0 - residual - offset / prediction)
                scaled = fixed.copy()
                scaled[:, self.free] = _nnls_by_support(design, target, self.free, self.supports)
                prediction = offset + (free_features @ scaled[:, self.free, None])[:, :, 0]
                loss, _ = _huber(np.log(prediction) - self.log_loss, self.huber_delta)
                value = loss.sum(axis=1)
                better = np.isfinite(value) & (value < best_value)
                best_value[better], best[better] = value[better], scaled[better]
        return best_value, best / np.exp(log_scales)


def _nnls_by_support(
    design: np.ndarray, target: np.ndarray, free: list[int], supports: list[tuple[int, ...]]
) -> np.ndarray:
    """min ||design c - target||, c >= 0, for each pair: the least-residual non-negative solution of
    the unconstrained problems on every support (design is (pairs, runs, free))."""
    transposed = design.transpose(0, 2, 1)
    gram = transposed @ design
    moment = (transposed @ target[:, :, None])[:, :, 0]
    pairs = len(design)
    ridge = _RIDGE * np.einsum("pkk->p", gram)[:, None, None]
    best_residual = np.full(pairs, np.inf)
    best = np.zeros((pairs, len(free)))
    for support in supports:
        columns = [free.index(j) for j in support]
        solution = np.zeros((pairs, len(free)))
        if columns:
            sub = gram[:, columns][:, :, columns] + ridge * np.eye(len(columns))
            solution[:, columns] = np.linalg.solve(sub, moment[:, columns, None])[:, :, 0]
        # At a support's least-squares solution the residual is |t|^2 - m . c (up to the constant |t|^2).
        residual = -np.einsum("pk,pk->p", moment, solution)
        better = np.all(solution >= 0, axis=1) & (residual < best_residual)
        best_residual[better], best[better] = residual[better], solution[better]
    return best


def _exponent_points(fixed: Mapping[str, float], tie_exponents: bool) -> tuple[int, _ToPairs]:
    """The number of free exponent dimensions and a map from points (m, dims) to (alpha, beta)."""
    if tie_exponents:
        return 1, lambda p: (p[:, 0], p[:, 0])
    free = [name for name in ("alpha", "beta") if name not in fixed]

    def pairs(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        columns = {name: points[:, i] for i, name in enumerate(free)}
        shape = len(points)
        alpha = columns.get("alpha", np.full(shape, float(fixed.get("alpha", 0.0))))
        beta = columns.get("beta", np.full(shape, float(fixed.get("beta", 0.0))))
        return alpha, beta

    return len(free), pairs


def vpnls_starts(
    n: np.ndarray,
    d: np.ndarray,
    loss: np.ndarray,
    huber_delta: float,
    fixed: Mapping[str, float],
    tie_exponents: bool,
) -> np.ndarray:
    """Polish starts as rows of theta = (log E, log A, alpha, log B, beta), best first: the
    variable-projection optimum near each of the best distinct cells of the exponent grid."""
    inner = _Inner(n, d, loss, huber_delta, fixed)
    dims, to_pairs = _exponent_points(fixed, tie_exponents)
    grid = np.array(list(itertools.product(_GRID_EXPONENTS, repeat=dims))).reshape(-1, dims)
    values, _ = inner.solve(*to_pairs(grid), _SCREEN_STEPS)
    spacing = float(_GRID_EXPONENTS[1] - _GRID_EXPONENTS[0])
    cells = grid[_distinct(grid, values, _CANDIDATES, _CANDIDATE_SEPARATION * spacing)]
    if not len(cells):
        raise ValueError("vpnls: no exponent pair gives a finite objective; try solver='multistart'.")
    offsets = np.array(list(itertools.product((-1.0, 0.0, 1.0), repeat=dims))).reshape(-1, dims)
    centres = cells.copy()
    for round_index in range(_ZOOM_ROUNDS):
        step = spacing * 0.5 ** (round_index + 1)
        trial = (centres[:, None, :] + step * offsets[None]).reshape(-1, dims)
        trial_values, _ = inner.solve(*to_pairs(trial), _SCREEN_STEPS)
        best = np.argmin(trial_values.reshape(len(centres), -1), axis=1)
        centres = trial.reshape(len(centres), -1, dims)[np.arange(len(centres)), best]
    alpha, beta = to_pairs(centres)
    final_values, coefficients = inner.solve(alpha, beta, _FINAL_STEPS)
    order = np.argsort(final_values)
    floor = _BOUND_SHARE * float(loss.min())
    rows = []
    for i in order:
        e, a, b = coefficients[i]
        # A coefficient at its bound starts at a term of floor's size at the run where it is largest.
        log_a = math.log(a) if a > 0 else math.log(floor) + alpha[i] * float(inner.log_n.min())
        log_b = math.log(b) if b > 0 else math.log(floor) + beta[i] * float(inner.log_d.min())
        rows.append((math.log(max(e, floor)), log_a, alpha[i], log_b, beta[i]))
    return np.array(rows)


def free_coordinates(theta: np.ndarray, fixed: Mapping[str, float], tie_exponents: bool) -> np.ndarray:
    """Rows of full theta projected onto the free parameters, as fit_chinchilla's constraints order them."""
    columns = [
        j for j, name in enumerate(_THETA) if name not in fixed and not (tie_exponents and name == "beta")
    ]
    return theta[:, columns]


def polished_minimum(objective: _Minimisable, starts: np.ndarray) -> _Minimum:
    """Every start descended to machine precision by the batched L-BFGS; the best, with the others as
    warm starts (best first) for the bootstrap."""
    x, values, converged = _batched_lbfgs(
        objective.value_and_grad, starts, max_iterations=_POLISH_ITERATIONS, ftol=_POLISH_FTOL
    )
    order = np.argsort(np.where(np.isfinite(values), values, np.inf))
    best = int(order[0])
    return _Minimum(x[best], float(values[best]), bool(converged[best]), x[order])


def grid_edge_note(params: Mapping[str, float]) -> str:
    """A warning when the optimum's exponents left the screened grid: the search there was local."""
    low, high = float(_GRID_EXPONENTS[0]), float(_GRID_EXPONENTS[-1])
    outside = [name for name in ("alpha", "beta") if not low <= params[name] <= high]
    if not outside:
        return ""
    return (
        f" {' and '.join(outside)} outside vpnls's exponent grid [{low:g}, {high:g}]: the search there "
        "was local; compare solver='multistart'."
    )
