"""Scaling-law fitting: Chinchilla, Kaplan, single power laws and a multiplicative form.

Plain numpy/scipy, so a notebook can ``from tasks.laws import fit_chinchilla`` and fit its own runs:

    result = fit_chinchilla(N, D, loss, bootstrap=1000)   # FitResult: params, ci_low/high, note, ...
    optimum = compute_optimal(result, [1e21, 1e23])       # N_opt, D_opt with bootstrap bands

Public API: FitResult, fit_chinchilla, fit_power_law, fit_kaplan, fit_multiplicative, fit / FORMS,
compute_optimal, isoflop_optima, extrapolation_check, result_to_dict, chinchilla_objective,
chinchilla_start_grid.  Invalid input raises ValueError saying what is wrong and how to fix it.

Every nonlinear form is fitted in log space: the residual of a run is ``log(L_obs) - log(L_pred)``.
The Chinchilla form uses the objective of Hoffmann et al. (2022): the Huber loss (delta 1e-3) of the
log residuals, summed over runs, minimised with L-BFGS from their grid of 4,500 starts.  Running
scipy's L-BFGS-B from each start separately takes minutes.  Here all 4,500 starts take a few L-BFGS
steps together, vectorised over (starts x runs); the 100 lowest distinct rows continue together;
then every end point that could still be the best descends to machine precision.  On the Epoch AI
extraction of Chinchilla's runs and on resampled, subset and synthetic versions of it, this reached
the same objective (to ~1e-14 relative) as L-BFGS-B run to tight tolerance from all 4,500 starts.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol

import numpy as np
from numpy.typing import ArrayLike

Z_95 = 1.959963984540054  # standard normal quantile for two-sided 95% intervals
HUBER_DELTA_CHINCHILLA = 1e-3
FLOPS_PER_PARAM_TOKEN = 6.0  # C = 6 N D

# Hoffmann et al.'s start grid: alpha, beta in {0, .5, .., 2}, e in {-1, -.5, .., 1}, a, b in {0, 5, .., 25}.
_GRID_EXPONENTS = np.arange(0.0, 2.01, 0.5)
_GRID_LOG_E = np.arange(-1.0, 1.01, 0.5)
_GRID_LOG_COEFFICIENTS = np.arange(0.0, 25.1, 5.0)

# Multi-start schedule: every start takes _SCREEN_ITERATIONS batched L-BFGS steps; the
# _SURVIVING_STARTS lowest distinct rows (farther apart than _DUPLICATE_RADIUS, max norm) then descend
# for up to _DESCENT_ITERATIONS; the _MAX_BASINS best end points whose log predictions differ by more
# than _BASIN_RADIUS_LOG_LOSS at some run are candidates for polishing and bootstrap warm starts.
_SCREEN_ITERATIONS = 10
_SCREEN_FTOL = 1e-6
_SURVIVING_STARTS = 100
_DESCENT_ITERATIONS = 100
_DESCENT_FTOL = 1e-12
_MAX_BASINS = 5
_BASIN_RADIUS_LOG_LOSS = 1e-3
_DUPLICATE_RADIUS = 1e-4
_POLISH_RELATIVE_GAP = 0.01  # converged end points this close to the best one are polished too
_POLISH_ITERATIONS = 3000
_POLISH_FTOL = 1e-15
_CHUNK_ELEMENTS = 32_768  # (rows x runs) elements evaluated at once: 256 kB temporaries fit in cache

# Bootstrap refits start from the optimum and the next best distinct end points of the descent.
_BOOTSTRAP_WARM_STARTS = 4
_BOOTSTRAP_ITERATIONS = 500

# A Chinchilla optimum is flagged as degenerate when a term stays below _NEGLIGIBLE_LOSS_SHARE of the
# smallest loss, or when an exponent times its variable's log range is below
# _CONSTANT_TERM_LOG_VARIATION (the term is a constant).
_NEGLIGIBLE_LOSS_SHARE = 1e-3
_CONSTANT_TERM_LOG_VARIATION = 0.01

# A multiplicative design whose centred, unit-scaled log columns have a smallest/largest singular
# value ratio below this is treated as rank deficient.  Exact C = 6 N D gives ~1e-16; C = 6 N D with
# 0.1% (1%) log noise about 1.5e-4 (1.4e-3); C independent of N D typically > 0.05.  Below 1e-3, d
# would rest on sub-percent departures of C from a power of N D.
MULTIPLICATIVE_RANK_RTOL = 1e-3

# Runs whose compute differs by less than this relative amount share an IsoFLOP group.
ISOFLOP_COMPUTE_RTOL = 0.05


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FitResult:
    """A fitted law.  ``params`` also holds derived quantities (chinchilla: a_opt, b_opt).

    For the reduced multiplicative form ``d`` is reported as nan (it is not identifiable) and
    ``b``, ``c`` hold b' = b + d and c' = c + d.
    """

    form: str
    params: dict[str, float]
    stderr: dict[str, float]
    ci_low: dict[str, float]
    ci_high: dict[str, float]
    objective: float
    n_points: int
    converged: bool
    residuals: np.ndarray
    note: str
    samples: np.ndarray | None = None  # bootstrap parameter samples, one row per resample
    sample_names: tuple[str, ...] = field(default=())

    def predict(self, N: ArrayLike, D: ArrayLike | None = None, *, C: ArrayLike | None = None) -> np.ndarray:
        """Predicted loss.  Power-law forms take their variable (N, D or C) as the first argument;
        the full multiplicative form also needs ``C``."""
        return _PREDICTORS[self.form](self.params, N, D, C)

    def sample_column(self, name: str) -> np.ndarray:
        """One parameter's bootstrap samples."""
        if self.samples is None:
            raise ValueError(f"{self.form} fit has no bootstrap samples; refit with bootstrap > 0.")
        return self.samples[:, self.sample_names.index(name)]


@dataclass(frozen=True, eq=False)
class ComputeOptimal:
    """Compute-optimal allocation under C = 6 N D; ``*_ci`` are 95% bootstrap bands (or None)."""

    compute: np.ndarray
    N_opt: np.ndarray
    D_opt: np.ndarray
    tokens_per_param: np.ndarray
    loss: np.ndarray
    a: float  # N_opt ∝ C^a, a = beta / (alpha + beta)
    b: float  # D_opt ∝ C^b, b = alpha / (alpha + beta)
    N_opt_ci: tuple[np.ndarray, np.ndarray] | None = None
    D_opt_ci: tuple[np.ndarray, np.ndarray] | None = None
    tokens_per_param_ci: tuple[np.ndarray, np.ndarray] | None = None
    loss_ci: tuple[np.ndarray, np.ndarray] | None = None
    a_ci: tuple[float, float] | None = None
    b_ci: tuple[float, float] | None = None


@dataclass(frozen=True)
class IsoFlopGroup:
    """One compute budget of Chinchilla's Approach 2; ``warning`` is empty when the group is usable."""

    compute: float  # geometric mean of the group's compute
    n_points: int
    N_opt: float
    D_opt: float  # compute / (6 N_opt)
    loss_at_opt: float
    warning: str


@dataclass(frozen=True)
class IsoFlopResult:
    """IsoFLOP optima and the fit N_opt = coefficient * C^a over the usable groups."""

    groups: tuple[IsoFlopGroup, ...]
    a: float
    a_stderr: float
    coefficient: float
    n_groups_used: int
    note: str

    def predict_N_opt(self, compute: ArrayLike) -> np.ndarray:
        return self.coefficient * np.asarray(compute, dtype=float) ** self.a


@dataclass(frozen=True, eq=False)
class ExtrapolationResult:
    """Fit on runs below ``threshold_compute``, prediction of the runs at or above it."""

    fit: FitResult
    threshold_compute: float
    n_train: int
    held_out_compute: np.ndarray
    observed: np.ndarray
    predicted: np.ndarray
    relative_error: np.ndarray  # (pred - obs) / obs, signed
    mean_abs_relative_error: float
    max_abs_relative_error: float


# --------------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------------


def _validated_columns(form: str, n_params: int | None, **columns: ArrayLike) -> list[np.ndarray]:
    """Float arrays of equal length, finite and positive; at least n_params + 1 values when fitting
    a form with n_params parameters (None: at least one)."""
    arrays = {name: np.atleast_1d(np.asarray(values, dtype=float)) for name, values in columns.items()}
    _check_one_dimensional(arrays)
    _check_equal_lengths(arrays)
    for name, values in arrays.items():
        _check_finite_positive(name, values)
    n_points = len(next(iter(arrays.values())))
    if n_params is not None:
        _check_enough_points(form, n_params, n_points)
    elif n_points == 0:
        raise ValueError(f"{form} got empty inputs ({', '.join(arrays)}); pass at least one value.")
    return list(arrays.values())


def _check_one_dimensional(arrays: dict[str, np.ndarray]) -> None:
    for name, values in arrays.items():
        if values.ndim != 1:
            raise ValueError(
                f"{name} must be one-dimensional (got shape {values.shape}); pass one value per run."
            )


def _check_equal_lengths(arrays: dict[str, np.ndarray]) -> None:
    lengths = {name: len(values) for name, values in arrays.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise ValueError(f"Inputs have mismatched lengths ({listed}); pass one value per run in every array.")


def _check_finite_positive(name: str, values: np.ndarray) -> None:
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ValueError(
            f"{name} contains NaN or infinite values (first at index {bad[0]}); drop or fix those runs."
        )
    bad = np.flatnonzero(values <= 0)
    if bad.size:
        raise ValueError(
            f"{name} must be positive but has {values[bad[0]]:g} at index {bad[0]}; drop or fix those runs."
        )


def _check_enough_points(form: str, n_params: int, n_points: int) -> None:
    if n_points < n_params + 1:
        raise ValueError(
            f"The {form} form has {n_params} parameters and needs at least {n_params + 1} runs, "
            f"got {n_points}; add runs or fit a form with fewer parameters."
        )


# --------------------------------------------------------------------------------------------------
# Log-space models: log_predict(theta[starts, params]) -> (log L_pred[starts, runs], vjp)
# where vjp(cotangent[starts, runs]) -> gradient[starts, params].
# --------------------------------------------------------------------------------------------------

VectorJacobianProduct = Callable[[np.ndarray], np.ndarray]


class _LogModel(Protocol):
    n_params: int

    def log_predict(self, theta: np.ndarray) -> tuple[np.ndarray, VectorJacobianProduct]: ...

    def astype(self, dtype: type) -> _LogModel: ...


@dataclass(frozen=True)
class _SumOfPowerLaws:
    """log(E + sum_i A_i x_i^-alpha_i) = LSE(e, a_i - alpha_i log x_i); theta = (e, a_1, alpha_1, ...).

    The log-sum-exp parametrisation keeps E, A_i positive without bounds (Hoffmann et al.)."""

    log_features: tuple[np.ndarray, ...]

    @property
    def n_params(self) -> int:
        return 1 + 2 * len(self.log_features)

    def astype(self, dtype: type) -> _SumOfPowerLaws:
        return _SumOfPowerLaws(tuple(x.astype(dtype) for x in self.log_features))

    def log_predict(self, theta: np.ndarray) -> tuple[np.ndarray, VectorJacobianProduct]:
        log_e = theta[:, 0]
        coefficients = [theta[:, 1 + 2 * i] for i in range(len(self.log_features))]
        exponents = [theta[:, 2 + 2 * i] for i in range(len(self.log_features))]
        shift = self._largest_log_term(log_e, coefficients, exponents)
        weight_e = np.exp(log_e - shift)[:, None]
        weights = []
        for coefficient, exponent, x in zip(coefficients, exponents, self.log_features, strict=True):
            weight = np.multiply.outer(-exponent, x)
            weight += (coefficient - shift)[:, None]
            weights.append(np.exp(weight, out=weight))
        total = weight_e + sum(weights)
        log_pred = np.log(total)
        log_pred += shift[:, None]

        def vjp(cotangent: np.ndarray) -> np.ndarray:
            # Overwrites the weight buffers to save allocations: call it at most once.
            scaled = cotangent / total
            gradient = np.empty((theta.shape[0], self.n_params))
            gradient[:, 0] = weight_e[:, 0] * scaled.sum(axis=1)
            for i, (weight, x) in enumerate(zip(weights, self.log_features, strict=True)):
                term_cotangent = np.multiply(scaled, weight, out=weight)
                gradient[:, 1 + 2 * i] = term_cotangent.sum(axis=1)
                # einsum, not BLAS: threaded BLAS slows these thin products on a busy machine.
                gradient[:, 2 + 2 * i] = -np.einsum("sp,p->s", term_cotangent, x)
            return gradient

        return log_pred, vjp

    def _largest_log_term(
        self, log_e: np.ndarray, coefficients: list[np.ndarray], exponents: list[np.ndarray]
    ) -> np.ndarray:
        """Per-row maximum over runs of every log term, in closed form (a term is monotone in log x);
        subtracting it makes every exp() <= 1 without an extra pass over the runs."""
        shift = log_e
        for coefficient, exponent, x in zip(coefficients, exponents, self.log_features, strict=True):
            log_x_at_max = np.where(exponent >= 0, x.min(), x.max())
            shift = np.maximum(shift, coefficient - exponent * log_x_at_max)
        return shift


@dataclass(frozen=True)
class _KaplanModel:
    """log L = alpha_D * LSE((alpha_N / alpha_D)(n_c - log N), d_c - log D);
    theta = (n_c = log N_c, d_c = log D_c, alpha_N, alpha_D)."""

    log_n: np.ndarray
    log_d: np.ndarray
    n_params: ClassVar[int] = 4

    def astype(self, dtype: type) -> _KaplanModel:
        return _KaplanModel(self.log_n.astype(dtype), self.log_d.astype(dtype))

    def log_predict(self, theta: np.ndarray) -> tuple[np.ndarray, VectorJacobianProduct]:
        log_n_c, log_d_c, alpha_n, alpha_d = (theta[:, j : j + 1] for j in range(4))
        model_term = alpha_n / alpha_d * (log_n_c - self.log_n)
        data_term = log_d_c - self.log_d
        lse = np.logaddexp(model_term, data_term)
        model_share = np.exp(model_term - lse)

        def vjp(cotangent: np.ndarray) -> np.ndarray:
            model_cotangent = cotangent * model_share
            return np.column_stack(
                [
                    alpha_n[:, 0] * model_cotangent.sum(axis=1),
                    alpha_d[:, 0] * (cotangent - model_cotangent).sum(axis=1),
                    np.einsum("sp,sp->s", model_cotangent, log_n_c - self.log_n),
                    np.einsum("sp,sp->s", cotangent, lse - model_share * model_term),
                ]
            )

        return alpha_d * lse, vjp


# --------------------------------------------------------------------------------------------------
# Objective: sum over runs of rho(log L_pred - log L_obs), rho = Huber(delta); delta = inf is 0.5 r^2.
# --------------------------------------------------------------------------------------------------


def _huber(residual: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss and its derivative (scipy.special.huber convention: r^2/2 inside delta)."""
    clipped = np.clip(residual, -delta, delta)
    return clipped * (residual - 0.5 * clipped), clipped


@dataclass(frozen=True)
class _Objective:
    model: _LogModel
    log_loss: np.ndarray
    huber_delta: float
    run_weights: np.ndarray | None = None  # (resamples, runs) bootstrap counts; rows select a resample

    def astype(self, dtype: type) -> _Objective:
        """The same objective evaluated in ``dtype`` (float32 halves the cost of screening starts)."""
        return _Objective(
            self.model.astype(dtype), self.log_loss.astype(dtype), self.huber_delta, self.run_weights
        )

    def log_predictions(self, theta: np.ndarray) -> np.ndarray:
        """log L_pred for every row of theta; inf or nan where a row's parameters are wild."""
        with np.errstate(over="ignore", divide="ignore", invalid="ignore", under="ignore"):
            return self.model.log_predict(theta)[0]

    def residuals(self, theta: np.ndarray) -> np.ndarray:
        """log(L_obs) - log(L_pred) at a single parameter vector."""
        return self.log_loss - self.log_predictions(theta[None, :])[0]

    def value_and_grad(
        self, theta: np.ndarray, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Objective and gradient for every row of theta; ``rows`` picks each row's bootstrap weights.
        Rows are processed in chunks so that the (rows x runs) temporaries stay in cache."""
        values = np.empty(len(theta))
        gradient = np.empty_like(theta, dtype=float)
        chunk_rows = max(1, _CHUNK_ELEMENTS // len(self.log_loss))
        # Wild trial points may overflow; their non-finite values are rejected by the line searches.
        with np.errstate(over="ignore", divide="ignore", invalid="ignore", under="ignore"):
            for start in range(0, len(theta), chunk_rows):
                chunk = slice(start, start + chunk_rows)
                values[chunk], gradient[chunk] = self._chunk_value_and_grad(
                    theta[chunk], None if rows is None else rows[chunk]
                )
        return values, gradient

    def _chunk_value_and_grad(
        self, theta: np.ndarray, rows: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        log_pred, vjp = self.model.log_predict(theta.astype(self.log_loss.dtype, copy=False))
        residual = np.subtract(log_pred, self.log_loss, out=log_pred)
        loss, slope = _huber(residual, self.huber_delta)
        if self.run_weights is not None:
            weights = self.run_weights[rows]
            loss *= weights
            slope *= weights
        return loss.sum(axis=1), vjp(slope)

    def scalar(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        values, gradient = self.value_and_grad(theta[None, :], np.zeros(1, dtype=int))
        return float(values[0]), gradient[0]


# --------------------------------------------------------------------------------------------------
# Batched L-BFGS: every row of x is an independent minimisation of the same (or a reweighted) objective.
# --------------------------------------------------------------------------------------------------

BatchedValueAndGrad = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class _LbfgsMemory:
    steps: np.ndarray  # (memory, rows, params)
    gradient_changes: np.ndarray
    inverse_curvatures: np.ndarray  # (memory, rows); 0 marks an empty slot
    scale: np.ndarray  # (rows,) initial inverse-Hessian scale
    newest: int = -1

    @classmethod
    def empty(cls, memory: int, gradient: np.ndarray) -> _LbfgsMemory:
        rows, params = gradient.shape
        norms = np.linalg.norm(gradient, axis=1)
        return cls(
            np.zeros((memory, rows, params)),
            np.zeros((memory, rows, params)),
            np.zeros((memory, rows)),
            1.0 / np.where(norms > 0, norms, 1.0),  # first step has unit length, as in L-BFGS-B
        )

    def direction(self, rows: np.ndarray, gradient: np.ndarray) -> np.ndarray:
        """Two-loop recursion; slots with zero inverse curvature are no-ops."""
        memory = len(self.inverse_curvatures)
        order = [(self.newest - i) % memory for i in range(memory)]
        # Gathered slot by slot so that every (rows, params) slice is contiguous.
        steps = [self.steps[slot][rows] for slot in range(memory)]
        changes = [self.gradient_changes[slot][rows] for slot in range(memory)]
        inverse_curvatures = self.inverse_curvatures[:, rows]
        q = gradient.copy()
        coefficients = np.empty_like(inverse_curvatures)
        for slot in order:
            coefficients[slot] = inverse_curvatures[slot] * np.einsum("rp,rp->r", steps[slot], q)
            q -= coefficients[slot][:, None] * changes[slot]
        r = self.scale[rows, None] * q
        for slot in reversed(order):
            beta = inverse_curvatures[slot] * np.einsum("rp,rp->r", changes[slot], r)
            r += (coefficients[slot] - beta)[:, None] * steps[slot]
        return -r

    def record(self, rows: np.ndarray, step: np.ndarray, gradient_change: np.ndarray) -> None:
        """Store each row's newest (step, gradient change) pair.  Pairs without positive curvature, or
        with overflowed gradients, are stored as empty slots: they would break the positive
        definiteness of the inverse-Hessian approximation."""
        self.newest = (self.newest + 1) % len(self.inverse_curvatures)
        curvature = np.einsum("rp,rp->r", step, gradient_change)
        change_norm2 = np.einsum("rp,rp->r", gradient_change, gradient_change)
        step_norm2 = np.einsum("rp,rp->r", step, step)
        usable = np.isfinite(curvature * change_norm2) & (change_norm2 > 0)
        usable &= curvature > 1e-10 * np.sqrt(step_norm2 * change_norm2)
        self.steps[self.newest, rows] = np.where(usable[:, None], step, 0.0)
        self.gradient_changes[self.newest, rows] = np.where(usable[:, None], gradient_change, 0.0)
        self.inverse_curvatures[self.newest, rows] = np.where(
            usable, 1.0 / np.where(usable, curvature, 1.0), 0.0
        )
        self.scale[rows[usable]] = curvature[usable] / change_norm2[usable]

    def forget(self, rows: np.ndarray, gradient: np.ndarray) -> None:
        self.inverse_curvatures[:, rows] = 0.0
        norms = np.linalg.norm(gradient, axis=1)
        self.scale[rows] = 1.0 / np.where(norms > 0, norms, 1.0)

    def is_empty(self, rows: np.ndarray) -> np.ndarray:
        return ~np.any(self.inverse_curvatures[:, rows] != 0, axis=0)


def _backtracking_line_search(
    value_and_grad: BatchedValueAndGrad,
    rows: np.ndarray,
    x: np.ndarray,
    value: np.ndarray,
    direction: np.ndarray,
    slope: np.ndarray,
    *,
    max_trials: int = 30,
    armijo: float = 1e-4,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Armijo backtracking with safeguarded quadratic interpolation, for all rows at once.
    Returns (new x, new value, new gradient, accepted); rejected rows keep x and value, gradient nan."""
    x_new, value_new = x.copy(), value.copy()
    gradient_new = np.full_like(x, np.nan)
    accepted = np.zeros(len(x), dtype=bool)
    step = np.ones(len(x))
    pending = np.arange(len(x))
    for _ in range(max_trials):
        trial = x[pending] + step[pending, None] * direction[pending]
        trial_value, trial_gradient = value_and_grad(trial, rows[pending])
        sufficient = np.isfinite(trial_value) & (
            trial_value <= value[pending] + armijo * step[pending] * slope[pending]
        )
        done = pending[sufficient]
        x_new[done] = trial[sufficient]
        value_new[done] = trial_value[sufficient]
        gradient_new[done] = trial_gradient[sufficient]
        accepted[done] = True
        failed = ~sufficient
        step[pending[failed]] = _interpolated_step(
            step[pending[failed]], value[pending[failed]], slope[pending[failed]], trial_value[failed]
        )
        pending = pending[failed]
        if not pending.size:
            break
    return x_new, value_new, gradient_new, accepted


def _interpolated_step(
    step: np.ndarray, value: np.ndarray, slope: np.ndarray, trial_value: np.ndarray
) -> np.ndarray:
    """Minimiser of the quadratic through value, slope and the failed trial, kept in [0.1, 0.5] * step."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        quadratic = -slope * step**2 / (2.0 * (trial_value - value - slope * step))
    quadratic = np.where(np.isfinite(quadratic), quadratic, 0.1 * step)
    return np.clip(quadratic, 0.1 * step, 0.5 * step)


def _batched_lbfgs(
    value_and_grad: BatchedValueAndGrad,
    x0: np.ndarray,
    *,
    max_iterations: int,
    ftol: float,
    memory: int = 10,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimise from every row of x0; returns (x, value, converged) per row.

    A row converges when one step lowers its value by less than ftol relative to the value (as in
    L-BFGS-B's factr test, without its floor of 1).  A failed line search restarts the row from
    steepest descent; when that fails too, no descent is left to machine precision: converged."""
    x = np.array(x0, dtype=float)
    all_rows = np.arange(len(x))
    value, gradient = value_and_grad(x, all_rows)
    history = _LbfgsMemory.empty(memory, gradient)
    active = np.isfinite(value)
    converged = np.zeros(len(x), dtype=bool)
    for _ in range(max_iterations):
        rows = np.flatnonzero(active)
        if not rows.size:
            break
        direction = history.direction(rows, gradient[rows])
        slope = np.einsum("rp,rp->r", direction, gradient[rows])
        uphill = slope >= 0
        if np.any(uphill):
            history.forget(rows[uphill], gradient[rows[uphill]])
            direction[uphill] = -history.scale[rows[uphill], None] * gradient[rows[uphill]]
            slope[uphill] = np.einsum("rp,rp->r", direction[uphill], gradient[rows[uphill]])
        x_new, value_new, gradient_new, accepted = _backtracking_line_search(
            value_and_grad, rows, x[rows], value[rows], direction, slope
        )
        gradient_new[~accepted] = gradient[rows[~accepted]]
        history.record(
            rows[accepted],
            x_new[accepted] - x[rows[accepted]],
            gradient_new[accepted] - gradient[rows[accepted]],
        )
        decrease = value[rows] - value_new
        x[rows], value[rows], gradient[rows] = x_new, value_new, gradient_new

        stalled = accepted & (decrease <= ftol * np.abs(value_new))
        stuck = ~accepted & history.is_empty(rows)
        converged[rows] = stalled | stuck
        active[rows[stalled | stuck]] = False
        history.forget(rows[~accepted], gradient_new[~accepted])
    return x, value, converged


# --------------------------------------------------------------------------------------------------
# Multi-start: batched screening of every start, batched polish of the best distinct basins.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Minimum:
    theta: np.ndarray
    value: float
    converged: bool
    warm_starts: np.ndarray  # theta, then the other distinct end points of the descent, best first


def _distinct(points: np.ndarray, values: np.ndarray, count: int, radius: float) -> np.ndarray:
    """Indices of up to ``count`` lowest-value rows of ``points`` that are pairwise farther apart than
    ``radius`` (max norm); non-finite values are skipped."""
    kept: list[int] = []
    for index in np.argsort(values):
        if not np.isfinite(values[index]):
            break
        if not kept or np.min(np.max(np.abs(points[kept] - points[index]), axis=1)) > radius:
            kept.append(int(index))
            if len(kept) == count:
                break
    return np.array(kept, dtype=int)


def _multistart_minimum(objective: _Objective, starts: np.ndarray) -> _Minimum:
    """Best local minimum over all starts.

    Every start takes a few batched float32 L-BFGS steps; the lowest distinct rows then descend
    (batched, float64).  Of the best distinct end points, every one that could still be the best (the
    lowest, any within _POLISH_RELATIVE_GAP of it and any not yet converged) descends to machine
    precision.  scipy's L-BFGS-B would do for that last step, but its many tiny BLAS calls run
    several times slower when threaded BLAS shares a busy machine."""
    x, values, _ = _batched_lbfgs(
        objective.astype(np.float32).value_and_grad,
        starts,
        max_iterations=_SCREEN_ITERATIONS,
        ftol=_SCREEN_FTOL,
    )
    survivors = _distinct(x, values, _SURVIVING_STARTS, _DUPLICATE_RADIUS)
    x, values, converged = _batched_lbfgs(
        objective.value_and_grad, x[survivors], max_iterations=_DESCENT_ITERATIONS, ftol=_DESCENT_FTOL
    )
    # Basins are told apart by their predictions: flat directions (E -> 0, an exponent -> 0) leave
    # distant parameters with the same fit.
    ends = _distinct(objective.log_predictions(x), values, _MAX_BASINS, _BASIN_RADIUS_LOG_LOSS)
    contenders = ends[~converged[ends] | (values[ends] <= values[ends[0]] * (1 + _POLISH_RELATIVE_GAP))]
    polished, polished_values, polished_converged = _batched_lbfgs(
        objective.value_and_grad, x[contenders], max_iterations=_POLISH_ITERATIONS, ftol=_POLISH_FTOL
    )
    best = int(np.argmin(polished_values))
    others = x[ends[ends != contenders[best]]]
    return _Minimum(
        polished[best],
        float(polished_values[best]),
        bool(polished_converged[best]),
        np.vstack([polished[best], others]),
    )


# --------------------------------------------------------------------------------------------------
# Forms fitted in log space and their uncertainty
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FormSpec:
    """How a log-space form's internal parameters map to the reported ones.  Intervals of the
    ``log_scale`` parameters are built on the log scale (they are positive by construction)."""

    name: str
    public: Callable[[np.ndarray], dict[str, float]]
    log_scale: frozenset[str]


def _exp(log_value: float) -> float:
    """exp that gives inf instead of raising, for wild bootstrap refits."""
    with np.errstate(over="ignore"):
        return float(np.exp(log_value))


def _share(part: float, total: float) -> float:
    return part / total if total != 0 else math.nan


def _chinchilla_public(theta: np.ndarray) -> dict[str, float]:
    log_e, log_a, alpha, log_b, beta = (float(v) for v in theta)
    return {
        "E": _exp(log_e),
        "A": _exp(log_a),
        "B": _exp(log_b),
        "alpha": alpha,
        "beta": beta,
        "a_opt": _share(beta, alpha + beta),
        "b_opt": _share(alpha, alpha + beta),
    }


def _power_law_public(theta: np.ndarray) -> dict[str, float]:
    log_e, log_a, alpha = (float(v) for v in theta)
    return {"E": _exp(log_e), "A": _exp(log_a), "alpha": alpha}


def _kaplan_public(theta: np.ndarray) -> dict[str, float]:
    log_n_c, log_d_c, alpha_n, alpha_d = (float(v) for v in theta)
    return {"N_c": _exp(log_n_c), "D_c": _exp(log_d_c), "alpha_N": alpha_n, "alpha_D": alpha_d}


_CHINCHILLA = _FormSpec("chinchilla", _chinchilla_public, frozenset({"E", "A", "B"}))
_KAPLAN = _FormSpec("kaplan", _kaplan_public, frozenset({"N_c", "D_c"}))


def _power_law_spec(axis: str) -> _FormSpec:
    return _FormSpec(f"power_law_{axis}", _power_law_public, frozenset({"E", "A"}))


def _central_difference(function: Callable[[np.ndarray], np.ndarray], theta: np.ndarray) -> np.ndarray:
    """d function / d theta, shape (*function's shape, params); steps scale with |theta|."""
    steps = 1e-5 * np.maximum(1.0, np.abs(theta))
    columns = []
    for j, step in enumerate(steps):
        shift = np.zeros_like(theta)
        shift[j] = step
        columns.append((function(theta + shift) - function(theta - shift)) / (2.0 * step))
    return np.stack(columns, axis=-1)


def _numerical_hessian(objective: _Objective, theta: np.ndarray) -> np.ndarray:
    """Symmetrised central differences of the analytic gradient."""
    hessian = _central_difference(lambda t: objective.scalar(t)[1], theta)
    return 0.5 * (hessian + hessian.T)


def _sandwich_covariance(objective: _Objective, theta: np.ndarray) -> np.ndarray | None:
    """M-estimator covariance H^-1 M H^-1 with M = sum psi(r)^2 J J^T (HC1 small-sample factor).
    For least squares it is the heteroscedasticity-robust covariance; None if H is not positive definite."""
    hessian = _numerical_hessian(objective, theta)
    jacobian = _central_difference(lambda t: objective.log_predictions(t[None, :])[0], theta)
    _, slope = _huber(objective.residuals(theta), objective.huber_delta)
    meat = (jacobian * slope[:, None] ** 2).T @ jacobian
    n_points, n_params = jacobian.shape
    try:
        np.linalg.cholesky(hessian)
    except np.linalg.LinAlgError:
        return None
    inverse = np.linalg.inv(hessian)
    return inverse @ meat @ inverse * n_points / max(n_points - n_params, 1)


@dataclass(frozen=True)
class _Intervals:
    stderr: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]


def _delta_method_intervals(spec: _FormSpec, theta: np.ndarray, covariance: np.ndarray | None) -> _Intervals:
    params = spec.public(theta)
    names = list(params)
    if covariance is None:
        nan = dict.fromkeys(names, math.nan)
        return _Intervals(nan, dict(nan), dict(nan))

    def linked(t: np.ndarray) -> np.ndarray:
        values = spec.public(t)
        return np.array([np.log(values[n]) if n in spec.log_scale else values[n] for n in names])

    jacobian = _central_difference(linked, theta)
    linked_stderr = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", jacobian, covariance, jacobian), 0.0))
    stderr, low, high = {}, {}, {}
    for name, value, se in zip(names, linked(theta), linked_stderr, strict=True):
        if name in spec.log_scale:
            stderr[name] = _exp(value) * se
            low[name], high[name] = _exp(value - Z_95 * se), _exp(value + Z_95 * se)
        else:
            stderr[name] = se
            low[name], high[name] = value - Z_95 * se, value + Z_95 * se
    return _Intervals(stderr, low, high)


def _bootstrap_samples(
    spec: _FormSpec, objective: _Objective, minimum: _Minimum, n_resamples: int, seed: int
) -> tuple[np.ndarray, tuple[str, ...], float]:
    """Refit ``n_resamples`` resamples of the runs (with replacement), each warm-started from the
    full-data optimum and the next best distinct end points of its descent, all batched; returns
    (samples, names, fraction converged).  A resample is a vector of run counts (weights)."""
    n_points = len(objective.log_loss)
    counts = np.random.default_rng(seed).multinomial(n_points, np.full(n_points, 1.0 / n_points), n_resamples)
    weighted = _Objective(objective.model, objective.log_loss, objective.huber_delta, counts.astype(float))
    warm_starts = minimum.warm_starts[:_BOOTSTRAP_WARM_STARTS]
    resample_of_row = np.repeat(np.arange(n_resamples), len(warm_starts))
    x, values, converged = _batched_lbfgs(
        lambda theta, rows: weighted.value_and_grad(theta, resample_of_row[rows]),
        np.tile(warm_starts, (n_resamples, 1)),
        max_iterations=_BOOTSTRAP_ITERATIONS,
        ftol=_DESCENT_FTOL,
    )
    values = values.reshape(n_resamples, len(warm_starts))
    best_row = np.arange(n_resamples) * len(warm_starts) + np.argmin(values, axis=1)
    names = tuple(spec.public(minimum.theta))
    samples = np.array([[spec.public(theta)[n] for n in names] for theta in x[best_row]])
    samples[~np.isfinite(samples)] = np.nan  # a resample whose parameter overflowed says nothing of it
    return samples, names, float(np.mean(converged[best_row]))


def _delta_method_note(objective: _Objective, theta: np.ndarray, available: bool) -> str:
    if not available:
        return " Intervals unavailable: the objective's Hessian is not positive definite at the optimum."
    note = " Intervals: delta method on the sandwich covariance (asymptotic)."
    if math.isfinite(objective.huber_delta):
        inside = int(np.sum(np.abs(objective.residuals(theta)) < objective.huber_delta))
        note += (
            f" Only {inside} of {len(objective.log_loss)} runs have |log residual| < delta and carry the "
            "Hessian, so these intervals are rough; bootstrap > 0 gives percentile intervals."
        )
    return note


def _fit_log_space(
    spec: _FormSpec,
    objective: _Objective,
    starts: np.ndarray,
    *,
    bootstrap: int = 0,
    seed: int = 0,
    note: str,
) -> FitResult:
    minimum = _multistart_minimum(objective, starts)
    params = spec.public(minimum.theta)
    samples, sample_names = None, ()
    if bootstrap > 0:
        samples, sample_names, converged_share = _bootstrap_samples(spec, objective, minimum, bootstrap, seed)
        with np.errstate(over="ignore"):  # resamples of a coefficient near 1e300: its spread is infinite
            standard_errors = np.nanstd(samples, axis=0, ddof=1)
        intervals = _Intervals(
            dict(zip(sample_names, standard_errors, strict=True)),
            dict(zip(sample_names, np.nanpercentile(samples, 2.5, axis=0), strict=True)),
            dict(zip(sample_names, np.nanpercentile(samples, 97.5, axis=0), strict=True)),
        )
        note += (
            f" Intervals: {bootstrap}-resample bootstrap, percentile "
            f"({converged_share:.1%} of refits converged)."
        )
    else:
        covariance = _sandwich_covariance(objective, minimum.theta)
        intervals = _delta_method_intervals(spec, minimum.theta, covariance)
        note += _delta_method_note(objective, minimum.theta, covariance is not None)
    return FitResult(
        form=spec.name,
        params={name: float(value) for name, value in params.items()},
        stderr={name: float(value) for name, value in intervals.stderr.items()},
        ci_low={name: float(value) for name, value in intervals.low.items()},
        ci_high={name: float(value) for name, value in intervals.high.items()},
        objective=minimum.value,
        n_points=len(objective.log_loss),
        converged=minimum.converged,
        residuals=objective.residuals(minimum.theta),
        note=note,
        samples=samples,
        sample_names=sample_names,
    )


# --------------------------------------------------------------------------------------------------
# Public fitters of the nonlinear forms
# --------------------------------------------------------------------------------------------------


def chinchilla_start_grid() -> np.ndarray:
    """Hoffmann et al.'s 4,500 starts as rows (e, a, alpha, b, beta)."""
    grid = itertools.product(
        _GRID_LOG_E, _GRID_LOG_COEFFICIENTS, _GRID_EXPONENTS, _GRID_LOG_COEFFICIENTS, _GRID_EXPONENTS
    )
    return np.array(list(grid))


def chinchilla_objective(
    N: ArrayLike, D: ArrayLike, loss: ArrayLike, *, huber_delta: float = HUBER_DELTA_CHINCHILLA
) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
    """The summed Huber objective and its gradient at theta = (e, a, alpha, b, beta), for checks
    against other optimisers."""
    n, d, loss_values = _validated_columns("chinchilla", 5, N=N, D=D, loss=loss)
    return _chinchilla_objective(n, d, loss_values, huber_delta).scalar


def _chinchilla_objective(n: np.ndarray, d: np.ndarray, loss: np.ndarray, huber_delta: float) -> _Objective:
    return _Objective(_SumOfPowerLaws((np.log(n), np.log(d))), np.log(loss), huber_delta)


def fit_chinchilla(
    N: ArrayLike,
    D: ArrayLike,
    loss: ArrayLike,
    *,
    huber_delta: float = HUBER_DELTA_CHINCHILLA,
    bootstrap: int = 0,
    seed: int = 0,
) -> FitResult:
    """Fit L = E + A / N^alpha + B / D^beta as Hoffmann et al. (2022): Huber(delta) of log residuals,
    summed over runs, minimised from their 4,500-start grid.  ``bootstrap`` > 0 refits that many
    resamples of the runs for percentile intervals and keeps the samples (for compute_optimal bands).
    params also holds a_opt = beta/(alpha+beta) and b_opt = alpha/(alpha+beta)."""
    n, d, loss_values = _validated_columns("chinchilla", 5, N=N, D=D, loss=loss)
    _check_bootstrap(bootstrap)
    objective = _chinchilla_objective(n, d, loss_values, huber_delta)
    note = (
        f"Huber(delta={huber_delta:g}) on log loss, summed over runs; best of Hoffmann et al.'s 4,500 starts "
        "(all screened together by a batched L-BFGS, best basins polished to machine precision)."
    )
    result = _fit_log_space(
        _CHINCHILLA, objective, chinchilla_start_grid(), bootstrap=bootstrap, seed=seed, note=note
    )
    return _with_note(result, _chinchilla_degeneracy_note(result.params, n, d, loss_values))


def _chinchilla_degeneracy_note(
    params: dict[str, float], n: np.ndarray, d: np.ndarray, loss: np.ndarray
) -> str:
    """Warn when the optimum sits in a flat valley: a term that is negligible (< 0.1% of the smallest
    loss at every run) or constant (its exponent times the log range of its variable < 0.01)."""
    floor = _NEGLIGIBLE_LOSS_SHARE * float(loss.min())
    problems = ["E ~ 0"] if params["E"] < floor else []
    for name, coefficient, exponent, x in (("N", "A", "alpha", n), ("D", "B", "beta", d)):
        largest_term = params[coefficient] * float(np.max(x ** -params[exponent]))
        if largest_term < floor:
            problems.append(f"the {name} term ~ 0")
        elif abs(params[exponent]) * float(np.log(x.max() / x.min())) < _CONSTANT_TERM_LOG_VARIATION:
            problems.append(f"{exponent} ~ 0 (the {name} term is a constant that trades off with E)")
    if not problems:
        return ""
    return (
        f" Degenerate optimum: {'; '.join(problems)}. The data do not identify these parameters; "
        "compare objectives or predictions rather than parameter values."
    )


def _check_bootstrap(bootstrap: int) -> None:
    if bootstrap < 0 or int(bootstrap) != bootstrap:
        raise ValueError(f"bootstrap must be a non-negative integer (got {bootstrap!r}); pass 0 to skip it.")


def fit_power_law(x: ArrayLike, loss: ArrayLike, *, axis: str) -> FitResult:
    """Fit L = E + A * x^(-alpha), E >= 0, by least squares on log loss from a data-driven start grid.
    ``axis`` names x: "N" (parameters), "D" (tokens) or "C" (FLOPs)."""
    if axis not in ("N", "D", "C"):
        raise ValueError(f'axis must be "N", "D" or "C" (got {axis!r}); name the variable you pass as x.')
    x_values, loss_values = _validated_columns(f"power_law_{axis}", 3, **{axis: x, "loss": loss})
    objective = _Objective(_SumOfPowerLaws((np.log(x_values),)), np.log(loss_values), math.inf)
    note = "Least squares on log loss; E = exp(e) keeps E >= 0."
    result = _fit_log_space(
        _power_law_spec(axis), objective, _power_law_starts(x_values, loss_values), note=note
    )
    if result.params["E"] < 1e-6 * float(np.min(loss_values)):
        return _with_note(result, " E went to its bound 0: the data favour a pure power law.")
    return result


def _power_law_starts(x: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Starts over a grid of (alpha, E as a fraction of the smallest loss), with log A set so the
    median log residual is zero."""
    starts = []
    for alpha in (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5):
        for floor_fraction in (1e-6, 0.3, 0.6, 0.8, 0.9, 0.95, 0.99):
            floor = floor_fraction * float(np.min(loss))
            log_a = float(np.median(np.log(loss - floor) + alpha * np.log(x)))
            starts.append((math.log(floor), log_a, alpha))
    return np.array(starts)


def fit_kaplan(N: ArrayLike, D: ArrayLike, loss: ArrayLike) -> FitResult:
    """Fit L = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D (Kaplan et al. 2020, eq. 1.5) by least
    squares on log loss from a data-driven multi-start grid."""
    n, d, loss_values = _validated_columns("kaplan", 4, N=N, D=D, loss=loss)
    objective = _Objective(_KaplanModel(np.log(n), np.log(d)), np.log(loss_values), math.inf)
    note = "Least squares on log loss."
    return _fit_log_space(_KAPLAN, objective, _kaplan_starts(n, d, loss_values), note=note)


def _kaplan_starts(n: np.ndarray, d: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """For each (alpha_N, alpha_D) on a grid, log N_c and log D_c where either term alone would fit
    the median run, shifted by -1, 0, +1 nats."""
    exponents = (0.03, 0.07, 0.15, 0.3, 0.6)
    starts = []
    for alpha_n, alpha_d in itertools.product(exponents, exponents):
        log_n_c = float(np.median(np.log(n) + np.log(loss) / alpha_n))
        log_d_c = float(np.median(np.log(d) + np.log(loss) / alpha_d))
        for shift_n, shift_d in itertools.product((-1.0, 0.0, 1.0), repeat=2):
            starts.append((log_n_c + shift_n, log_d_c + shift_d, alpha_n, alpha_d))
    return np.array(starts)


def _with_note(result: FitResult, extra: str) -> FitResult:
    return replace(result, note=result.note + extra)


# --------------------------------------------------------------------------------------------------
# Multiplicative form: log-linear least squares with rank-deficiency detection
# --------------------------------------------------------------------------------------------------


def fit_multiplicative(N: ArrayLike, D: ArrayLike, C: ArrayLike, perf: ArrayLike) -> FitResult:
    """Fit perf = a * N^b * D^c * C^d by least squares on [1, log N, log D, log C].

    If the design is numerically rank deficient (conditioning below MULTIPLICATIVE_RANK_RTOL; e.g.
    C = 6 N D makes log C = log 6 + log N + log D), log C is dropped and the identifiable reduced form
    perf = a' N^b' D^c' is returned as "multiplicative_reduced": params b, c hold b' = b + d and
    c' = c + d, and d is nan."""
    n, d, c, perf_values = _validated_columns("multiplicative", 4, N=N, D=D, C=C, perf=perf)
    columns = {"log N": np.log(n), "log D": np.log(d), "log C": np.log(c)}
    conditioning = _design_conditioning(columns.values())
    if conditioning >= MULTIPLICATIVE_RANK_RTOL:
        note = f"Design conditioning (smallest/largest singular value, scaled columns) {conditioning:.2g}."
        return _log_linear_fit("multiplicative", ("a", "b", "c", "d"), columns, perf_values, note=note)
    reduced = {name: values for name, values in columns.items() if name != "log C"}
    if _design_conditioning(reduced.values()) < MULTIPLICATIVE_RANK_RTOL:
        raise ValueError(
            "log N and log D are collinear (or one is constant), so no multiplicative form is "
            "identifiable; vary N and D independently across runs."
        )
    note = (
        f"log C is a linear combination of 1, log N and log D (design conditioning {conditioning:.2g} < "
        f"{MULTIPLICATIVE_RANK_RTOL:g}), e.g. C = 6ND, so d is unidentifiable. Fitted the reduced form "
        "perf = a' N^b' D^c': params b, c are b' = b + d and c' = c + d, a' = a k^d when C = k N D; d is nan."
    )
    result = _log_linear_fit("multiplicative_reduced", ("a", "b", "c"), reduced, perf_values, note=note)
    return replace(result, **_with_nan_param(result, "d"))


def _design_conditioning(log_columns: Iterable[np.ndarray]) -> float:
    """Smallest over largest singular value of the columns after centring (which projects out the
    intercept) and scaling to unit norm; 0 when a column is constant or the columns are collinear."""
    scaled = []
    for column in log_columns:
        centred = column - column.mean()
        norm = np.linalg.norm(centred)
        if norm <= 1e-12 * max(1.0, float(np.abs(column).max())):
            return 0.0
        scaled.append(centred / norm)
    singular_values = np.linalg.svd(np.column_stack(scaled), compute_uv=False)
    return float(singular_values.min() / singular_values.max())


def _with_nan_param(result: FitResult, name: str) -> dict[str, dict[str, float]]:
    return {
        key: {**getattr(result, key), name: math.nan} for key in ("params", "stderr", "ci_low", "ci_high")
    }


def _log_linear_fit(
    form: str, names: tuple[str, ...], log_columns: dict[str, np.ndarray], perf: np.ndarray, *, note: str
) -> FitResult:
    """Ordinary least squares of log perf on [1, columns]; the intercept is reported as exp(.)."""
    design = np.column_stack([np.ones(len(perf)), *log_columns.values()])
    log_perf = np.log(perf)
    coefficients, *_ = np.linalg.lstsq(design, log_perf, rcond=None)
    residuals = log_perf - design @ coefficients
    dof = len(perf) - design.shape[1]
    covariance = float(residuals @ residuals) / dof * np.linalg.inv(design.T @ design)
    stderr = np.sqrt(np.diag(covariance))
    low, high = coefficients - Z_95 * stderr, coefficients + Z_95 * stderr
    # The intercept is reported as a = exp(log a): its interval is exp of the log-scale one and its
    # standard error a * se(log a) (delta method).
    to_scale = [_exp] + [float] * (len(names) - 1)
    params = {name: f(v) for name, f, v in zip(names, to_scale, coefficients, strict=True)}
    stderr[0] *= params["a"]
    return FitResult(
        form=form,
        params=params,
        stderr={name: float(v) for name, v in zip(names, stderr, strict=True)},
        ci_low={name: f(v) for name, f, v in zip(names, to_scale, low, strict=True)},
        ci_high={name: f(v) for name, f, v in zip(names, to_scale, high, strict=True)},
        objective=float(residuals @ residuals),
        n_points=len(perf),
        converged=True,
        residuals=residuals,
        note=f"{note} Least squares on log perf; intervals: classical OLS (normal approximation).",
    )


# --------------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Compute-optimal allocation (closed form from the Chinchilla fit)
# --------------------------------------------------------------------------------------------------


def _optimal_allocation(
    E: np.ndarray, A: np.ndarray, B: np.ndarray, alpha: np.ndarray, beta: np.ndarray, compute: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N_opt, D_opt, loss) minimising E + A/N^alpha + B/D^beta subject to 6 N D = compute.
    Parameters may be columns (one row per bootstrap sample); invalid fits give nan."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        total = alpha + beta
        scale = (alpha * A / (beta * B)) ** (1.0 / total)
        tokens_times_params = compute / FLOPS_PER_PARAM_TOKEN
        n_opt = scale * tokens_times_params ** (beta / total)
        d_opt = tokens_times_params ** (alpha / total) / scale
        loss = E + A / n_opt**alpha + B / d_opt**beta
    return n_opt, d_opt, loss


def compute_optimal(fit: FitResult, compute: ArrayLike) -> ComputeOptimal:
    """Closed-form compute-optimal N, D and loss under C = 6 N D:
    N_opt = G (C/6)^a, D_opt = (C/6)^b / G, G = (alpha A / (beta B))^(1/(alpha+beta)).
    With bootstrap samples on ``fit``, adds 95% percentile bands."""
    if fit.form != "chinchilla":
        raise ValueError(
            f"compute_optimal needs a chinchilla fit (got {fit.form!r}); fit with fit_chinchilla."
        )
    (compute_values,) = _validated_columns("compute_optimal", None, compute=compute)
    p = fit.params
    if not (p["alpha"] > 0 and p["beta"] > 0):
        raise ValueError(
            f"The fit has alpha={p['alpha']:g}, beta={p['beta']:g}; both must be positive for a finite "
            "compute-optimal allocation, so check the fit."
        )
    n_opt, d_opt, loss = _optimal_allocation(p["E"], p["A"], p["B"], p["alpha"], p["beta"], compute_values)
    exponent_n, exponent_d = p["beta"] / (p["alpha"] + p["beta"]), p["alpha"] / (p["alpha"] + p["beta"])
    bands: dict[str, Any] = {}
    if fit.samples is not None:
        bands = _compute_optimal_bands(fit, compute_values)
    return ComputeOptimal(compute_values, n_opt, d_opt, d_opt / n_opt, loss, exponent_n, exponent_d, **bands)


def _compute_optimal_bands(fit: FitResult, compute: np.ndarray) -> dict[str, Any]:
    E, A, B, alpha, beta = (fit.sample_column(name)[:, None] for name in ("E", "A", "B", "alpha", "beta"))
    n_opt, d_opt, loss = _optimal_allocation(E, A, B, alpha, beta, compute[None, :])

    def band(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.nanpercentile(samples, 2.5, axis=0), np.nanpercentile(samples, 97.5, axis=0)

    def scalar_band(name: str) -> tuple[float, float]:
        low, high = band(fit.sample_column(name))
        return float(low), float(high)

    return {
        "N_opt_ci": band(n_opt),
        "D_opt_ci": band(d_opt),
        "tokens_per_param_ci": band(d_opt / n_opt),
        "loss_ci": band(loss),
        "a_ci": scalar_band("a_opt"),
        "b_ci": scalar_band("b_opt"),
    }


# --------------------------------------------------------------------------------------------------
# IsoFLOP profiles (Chinchilla Approach 2)
# --------------------------------------------------------------------------------------------------


def isoflop_optima(
    N: ArrayLike,
    D: ArrayLike,
    loss: ArrayLike,
    *,
    compute: ArrayLike | None = None,
    n_groups: int | None = None,
) -> IsoFlopResult:
    """Group runs by compute (C = 6 N D unless ``compute`` is given): equal C within
    ISOFLOP_COMPUTE_RTOL, or ``n_groups`` log-spaced bins.  Fit loss = p(log N), a parabola, per group
    (>= 3 distinct N); its vertex is the group's N_opt.  Groups whose parabola opens downward or
    whose vertex lies outside the sampled N range are flagged and left out of the fit
    log N_opt = log coefficient + a log C."""
    n, d, loss_values = _validated_columns("isoflop_optima", None, N=N, D=D, loss=loss)
    if compute is None:
        compute_values = FLOPS_PER_PARAM_TOKEN * n * d
    else:
        (compute_values,) = _validated_columns("isoflop_optima", None, compute=compute)
        _check_equal_lengths({"N": n, "compute": compute_values})
    labels = _compute_groups(compute_values, n_groups)
    groups = tuple(
        _isoflop_group(n[labels == g], compute_values[labels == g], loss_values[labels == g])
        for g in np.unique(labels)
    )
    return _isoflop_exponent(groups)


def _compute_groups(compute: np.ndarray, n_groups: int | None) -> np.ndarray:
    log_compute = np.log(compute)
    if n_groups is not None:
        if n_groups < 1:
            raise ValueError(
                f"n_groups must be at least 1 (got {n_groups}); pass None to group by equal compute."
            )
        edges = np.linspace(log_compute.min(), log_compute.max(), n_groups + 1)
        return np.clip(np.searchsorted(edges, log_compute, side="right") - 1, 0, n_groups - 1)
    labels = np.empty(len(compute), dtype=int)
    group, group_start = -1, -math.inf
    for index in np.argsort(log_compute):
        if log_compute[index] - group_start > math.log1p(ISOFLOP_COMPUTE_RTOL):
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
        group_compute, len(n), n_opt, group_compute / (FLOPS_PER_PARAM_TOKEN * n_opt), loss_at_opt, warning
    )


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


# --------------------------------------------------------------------------------------------------
# Dispatcher, extrapolation check, serialisation
# --------------------------------------------------------------------------------------------------


def _fit_multiplicative_runs(
    N: ArrayLike, D: ArrayLike, loss: ArrayLike, *, compute: ArrayLike | None = None
) -> FitResult:
    compute_values = _six_n_d(N, D) if compute is None else compute
    return fit_multiplicative(N, D, compute_values, loss)


def _six_n_d(N: ArrayLike, D: ArrayLike) -> np.ndarray:
    return FLOPS_PER_PARAM_TOKEN * np.asarray(N, dtype=float) * np.asarray(D, dtype=float)


FORMS: dict[str, Callable[..., FitResult]] = {
    "chinchilla": fit_chinchilla,
    "kaplan": fit_kaplan,
    "power_law_N": lambda N, D, loss, **kw: fit_power_law(N, loss, axis="N", **kw),
    "power_law_D": lambda N, D, loss, **kw: fit_power_law(D, loss, axis="D", **kw),
    "power_law_C": lambda N, D, loss, **kw: fit_power_law(_six_n_d(N, D), loss, axis="C", **kw),
    "multiplicative": _fit_multiplicative_runs,
}
"""Every form as fitter(N, D, loss, **options); power_law_C uses C = 6 N D, multiplicative takes
``compute=`` (default 6 N D)."""


def fit(form: str, N: ArrayLike, D: ArrayLike, loss: ArrayLike, **options: Any) -> FitResult:
    """Fit ``form`` (a key of FORMS) to runs with N parameters, D tokens and final loss."""
    if form not in FORMS:
        raise ValueError(f"Unknown form {form!r}; choose one of {', '.join(FORMS)}.")
    # Every run's N, D and loss, also those a power-law form does not use: one run, one row of each.
    N, D, loss = _validated_columns(form, None, N=N, D=D, loss=loss)
    return FORMS[form](N, D, loss, **options)


def _predict_runs(result: FitResult, n: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Predicted loss of runs (N, D) for any form, with C = 6 N D where a form needs it."""
    compute = FLOPS_PER_PARAM_TOKEN * n * d
    first_argument = {"power_law_D": d, "power_law_C": compute}.get(result.form, n)
    return result.predict(first_argument, d, C=compute)


@dataclass(frozen=True, eq=False)
class PredictionBands:
    """Predicted loss with two different 95% bands, kept apart on purpose:
    ``confidence``: where the fitted law itself lies (parameter uncertainty, from the bootstrap);
    ``prediction``: where one new run's loss lies (the law's uncertainty plus run-to-run scatter,
    taken from the fit's own log residuals)."""

    predicted: np.ndarray
    confidence: tuple[np.ndarray, np.ndarray]
    prediction: tuple[np.ndarray, np.ndarray]


def prediction_bands(fit: FitResult, N: ArrayLike, D: ArrayLike, level: float = 0.95) -> PredictionBands:
    """Confidence and prediction bands of a bootstrapped Chinchilla fit at (N, D)."""
    if fit.form != "chinchilla" or fit.samples is None:
        raise ValueError("prediction_bands needs a chinchilla fit with bootstrap > 0; refit with bootstrap.")
    n, d = np.broadcast_arrays(np.asarray(N, dtype=float), np.asarray(D, dtype=float))
    names = ("E", "A", "B", "alpha", "beta")
    draws = np.stack(
        [
            _predict_chinchilla(dict(zip(names, row, strict=True)), n, d, None)
            for row in _parameter_rows(fit, names)
        ]
    )
    tails = (100 * (1 - level) / 2, 100 * (1 + level) / 2)
    with_scatter = draws[:, None, ...] * np.exp(fit.residuals)[None, :, *([None] * n.ndim)]
    with_scatter = with_scatter.reshape(-1, *n.shape)
    return PredictionBands(
        predicted=fit.predict(n, d),
        confidence=tuple(np.nanpercentile(draws, tails, axis=0)),
        prediction=tuple(np.nanpercentile(with_scatter, tails, axis=0)),
    )


def _parameter_rows(fit: FitResult, names: tuple[str, ...]) -> np.ndarray:
    return np.column_stack([fit.sample_column(name) for name in names])


def extrapolation_check(
    N: ArrayLike, D: ArrayLike, loss: ArrayLike, *, threshold_compute: float, form: str = "chinchilla"
) -> ExtrapolationResult:
    """Fit ``form`` on runs with 6 N D below ``threshold_compute`` and predict the others."""
    n, d, loss_values = _validated_columns("extrapolation_check", None, N=N, D=D, loss=loss)
    compute = FLOPS_PER_PARAM_TOKEN * n * d
    train = compute < threshold_compute
    if train.all() or not train.any():
        raise ValueError(
            f"threshold_compute={threshold_compute:g} leaves {int(train.sum())} training and "
            f"{int((~train).sum())} held-out runs; pick a threshold between {compute.min():g} "
            f"and {compute.max():g}."
        )
    result = fit(form, n[train], d[train], loss_values[train])
    predicted = _predict_runs(result, n[~train], d[~train])
    observed = loss_values[~train]
    relative_error = (predicted - observed) / observed
    return ExtrapolationResult(
        fit=result,
        threshold_compute=float(threshold_compute),
        n_train=int(train.sum()),
        held_out_compute=compute[~train],
        observed=observed,
        predicted=predicted,
        relative_error=relative_error,
        mean_abs_relative_error=float(np.mean(np.abs(relative_error))),
        max_abs_relative_error=float(np.max(np.abs(relative_error))),
    )


def _json_number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def result_to_dict(result: FitResult) -> dict[str, Any]:
    """JSON-ready flat dict: one key per parameter plus objective, n_points, converged, form, note,
    "stderr" {name: value} and "ci" {name: [low, high]}; nan and inf become None."""
    return {
        **{name: _json_number(value) for name, value in result.params.items()},
        "objective": _json_number(result.objective),
        "n_points": result.n_points,
        "converged": result.converged,
        "form": result.form,
        "note": result.note,
        "stderr": {name: _json_number(value) for name, value in result.stderr.items()},
        "ci": {
            name: [_json_number(result.ci_low[name]), _json_number(result.ci_high[name])]
            for name in result.ci_low
        },
    }
