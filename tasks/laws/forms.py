"""The nonlinear law forms, fitted in log space: Chinchilla, Kaplan and the one-axis power laws.

Every form's residual of a run is ``log(L_obs) - log(L_pred)``.  The Chinchilla form uses the objective
of Hoffmann et al. (2022): the Huber loss (delta 1e-3) of the log residuals, summed over runs, minimised
with L-BFGS from their grid of 4,500 starts (all screened together by the batched L-BFGS of
``tasks.laws.optimizer``).  The others are least squares on log loss from data-driven start grids.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import replace

import numpy as np
from numpy.typing import ArrayLike

from tasks.laws.degeneracy import _chinchilla_degeneracy_note
from tasks.laws.objective import _AffineReparametrised, _KaplanModel, _Objective, _SumOfPowerLaws
from tasks.laws.optimizer import _Minimisable, _Minimum, _multistart_minimum
from tasks.laws.results import FitResult
from tasks.laws.uncertainty import (
    _bootstrap_samples,
    _delta_method_intervals,
    _delta_method_note,
    _exp,
    _FormSpec,
    _percentile_intervals,
    _sandwich_covariance,
)
from tasks.laws.validation import (
    UnidentifiableError,
    _check_bootstrap,
    _check_distinct_values,
    _distinct_count,
    _validated_columns,
)
from tasks.laws.vpnls import (
    DEFAULT_SOLVER,
    VPNLS_NOTE,
    check_solver,
    free_coordinates,
    grid_edge_note,
    polished_minimum,
    vpnls_starts,
)

HUBER_DELTA_CHINCHILLA = 1e-3

# Hoffmann et al.'s start grid: alpha, beta in {0, .5, .., 2}, e in {-1, -.5, .., 1}, a, b in {0, 5, .., 25}.
_GRID_EXPONENTS = np.arange(0.0, 2.01, 0.5)
_GRID_LOG_E = np.arange(-1.0, 1.01, 0.5)
_GRID_LOG_COEFFICIENTS = np.arange(0.0, 25.1, 5.0)


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
# The reported parameter behind each coordinate of theta (log-scale ones are fitted as their log).
_CHINCHILLA_THETA = ("E", "A", "alpha", "B", "beta")
_POWER_LAW_THETA = ("E", "A", "alpha")
_KAPLAN_THETA = ("N_c", "D_c", "alpha_N", "alpha_D")
_CHINCHILLA_REMEDY = "fix a parameter (E, say) or tie the exponents"
_KAPLAN = _FormSpec("kaplan", _kaplan_public, frozenset({"N_c", "D_c"}))


def _power_law_spec(axis: str) -> _FormSpec:
    return _FormSpec(f"power_law_{axis}", _power_law_public, frozenset({"E", "A"}))


def _fit_log_space(
    spec: _FormSpec,
    objective: _Objective,
    starts: np.ndarray,
    *,
    bootstrap: int = 0,
    seed: int = 0,
    note: str,
    minimise: Callable[[_Minimisable, np.ndarray], _Minimum] = _multistart_minimum,
) -> FitResult:
    """Best of ``starts`` and its intervals: percentile intervals of ``bootstrap`` resamples, or
    (bootstrap=0) the delta method on the sandwich covariance."""
    minimum = minimise(objective, starts)
    params = spec.public(minimum.theta)
    samples, sample_names = None, ()
    if bootstrap > 0:
        samples, sample_names, converged_share = _bootstrap_samples(spec, objective, minimum, bootstrap, seed)
        intervals = _percentile_intervals(samples, sample_names)
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


def _checked_huber_delta(huber_delta: float) -> float:
    delta = float(huber_delta)
    if not delta > 0:
        raise ValueError(
            f"huber_delta must be positive (got {huber_delta!r}); pass math.inf for plain least squares."
        )
    return delta


def _objective_text(huber_delta: float) -> str:
    if math.isinf(huber_delta):
        return "Least squares on log loss"
    return f"Huber(delta={huber_delta:g}) on log loss"


def _constrained(
    spec: _FormSpec,
    theta_names: tuple[str, ...],
    objective: _Objective,
    starts: np.ndarray,
    fixed: Mapping[str, float],
    tied: tuple[str, str] | None,
) -> tuple[_FormSpec, _Objective, np.ndarray, str]:
    """The form with ``fixed`` parameters held at their values and the ``tied`` pair sharing one value:
    an affine map from the free parameters to theta, the starts projected onto them, and a note."""
    if not fixed and tied is None:
        return spec, objective, starts, ""
    offset = np.zeros(len(theta_names))
    for name, value in fixed.items():
        if name not in theta_names:
            raise ValueError(
                f"fixed: {name!r} is not a parameter of the {spec.name} form; fix one of "
                f"{', '.join(theta_names)}."
            )
        if tied is not None and name in tied:
            raise ValueError(f"fixed: {name} is tied to another exponent; fix it or tie it, not both.")
        value = float(value)
        if not math.isfinite(value) or (name in spec.log_scale and value <= 0):
            kind = "positive and finite" if name in spec.log_scale else "finite"
            raise ValueError(f"fixed: {name}={value:g} must be {kind}; pass another value.")
        offset[theta_names.index(name)] = math.log(value) if name in spec.log_scale else value
    free_columns = [
        j for j, name in enumerate(theta_names) if name not in fixed and (tied is None or name != tied[1])
    ]
    basis = np.zeros((len(free_columns), len(theta_names)))
    for row, column in enumerate(free_columns):
        basis[row, column] = 1.0
        if tied is not None and theta_names[column] == tied[0]:
            basis[row, theta_names.index(tied[1])] = 1.0
    model = _AffineReparametrised(objective.model, basis, offset)
    constrained = _Objective(model, objective.log_loss, objective.huber_delta, objective.run_weights)
    public = spec.public
    constrained_spec = _FormSpec(spec.name, lambda free: public(free @ basis + offset), spec.log_scale)
    note = ""
    if fixed:
        listed = ", ".join(f"{name}={float(value):g}" for name, value in fixed.items())
        note += f" Fixed, not fitted: {listed} (their intervals have zero width)."
    if tied is not None:
        note += f" Tied: {tied[0]} = {tied[1]}, one free exponent."
    return constrained_spec, constrained, np.unique(starts[:, free_columns], axis=0), note


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
    fixed: Mapping[str, float] | None = None,
    tie_exponents: bool = False,
    solver: str = DEFAULT_SOLVER,
) -> FitResult:
    """Fit L = E + A / N^alpha + B / D^beta as Hoffmann et al. (2022): Huber(delta) of log residuals,
    summed over runs, minimised from their 4,500-start grid.  ``bootstrap`` > 0 refits that many
    resamples of the runs for percentile intervals and keeps the samples (for compute_optimal bands).
    params also holds a_opt = beta/(alpha+beta) and b_opt = alpha/(alpha+beta).

    ``huber_delta=math.inf`` is plain least squares on log loss.  ``fixed`` holds parameters at given
    values (e.g. {"E": 1.69}); ``tie_exponents`` fits one exponent alpha = beta.  Runs with too few
    distinct N or D values for the free parameters raise UnidentifiableError (a ValueError).

    ``solver="multistart"`` screens the 4,500 starts; ``"vpnls"`` (tasks.laws.vpnls) searches the
    exponents with E, A, B solved by non-negative least squares and hands its best points to the same
    polish: the same optimum and intervals.  The default stays the multistart: vpnls is 2-3x faster and
    reached the same objective on every data set with a law in it, but misses optima whose exponents lie
    outside its grid [0, 3], which only the multistart reached (on pure noise; see DEFAULT_SOLVER)."""
    n, d, loss_values = _validated_columns("chinchilla", 5, N=N, D=D, loss=loss)
    check_solver(solver)
    _check_bootstrap(bootstrap)
    huber_delta = _checked_huber_delta(huber_delta)
    fixed = dict(fixed or {})
    _check_chinchilla_identifiable(n, d, fixed, tie_exponents)
    spec, objective, starts, constraint_note = _constrained(
        _CHINCHILLA,
        _CHINCHILLA_THETA,
        _chinchilla_objective(n, d, loss_values, huber_delta),
        chinchilla_start_grid() if solver == "multistart" else np.empty((0, 5)),
        fixed,
        ("alpha", "beta") if tie_exponents else None,
    )
    note, minimise = f"{_objective_text(huber_delta)}, summed over runs; ", _multistart_minimum
    if solver == "vpnls":
        starts = vpnls_starts(n, d, loss_values, huber_delta, fixed, tie_exponents)
        starts, minimise = free_coordinates(starts, fixed, tie_exponents), polished_minimum
        note += VPNLS_NOTE
    else:
        note += "best of Hoffmann et al.'s 4,500 starts (all screened together by a batched L-BFGS, "
        note += "best basins polished to machine precision)."
    result = _fit_log_space(
        spec, objective, starts, bootstrap=bootstrap, seed=seed, note=note, minimise=minimise
    )
    constraint_note += grid_edge_note(result.params) if solver == "vpnls" else ""
    return _with_note(result, constraint_note + _chinchilla_degeneracy_note(result.params, n, d, loss_values))


def _check_chinchilla_identifiable(
    n: np.ndarray, d: np.ndarray, fixed: Mapping[str, float], tie_exponents: bool
) -> None:
    """An additive law sees, on each axis, only the differences between its k distinct values: k - 1
    equations for that term's free coefficient and exponent; the runs' overall level is one more, taken
    by E (or, with E fixed, by whichever term lacks one).  A tied exponent is shared by both axes."""
    slack = int("E" in fixed)
    axes = (("N", n, "A", "alpha"), ("D", d, "B", "beta"))
    unknowns = {
        axis: [coefficient] * (coefficient not in fixed)
        + [exponent] * (exponent not in fixed and not tie_exponents)
        for axis, _, coefficient, exponent in axes
    }
    for axis, values, _, _ in axes:
        needed = max(1, 1 + len(unknowns[axis]) - slack)
        if unknowns[axis]:
            _check_distinct_values(
                "chinchilla", axis, values, needed, " and ".join(unknowns[axis]), _CHINCHILLA_REMEDY
            )
    if tie_exponents and "alpha" not in fixed and "beta" not in fixed:
        equations = _distinct_count(n) - 1 + _distinct_count(d) - 1 + slack
        free = len(unknowns["N"]) + len(unknowns["D"]) + 1
        if equations < free:
            raise UnidentifiableError(
                f"The chinchilla form with tied exponents is unidentifiable from these runs: N and D take "
                f"{_distinct_count(n)} and {_distinct_count(d)} distinct values, too few for its {free} "
                "free shape parameters; add runs at a third N or D value."
            )


def fit_power_law(
    x: ArrayLike,
    loss: ArrayLike,
    *,
    axis: str,
    bootstrap: int = 0,
    seed: int = 0,
    huber_delta: float = math.inf,
    fixed: Mapping[str, float] | None = None,
) -> FitResult:
    """Fit L = E + A * x^(-alpha), E >= 0, by least squares on log loss from a data-driven start grid.
    ``axis`` names x: "N" (parameters), "D" (tokens) or "C" (FLOPs).  ``bootstrap`` > 0: percentile
    intervals from that many resamples of the runs, as in fit_chinchilla.  ``huber_delta`` < inf fits
    the Huber objective instead; ``fixed`` holds parameters at given values (e.g. {"E": 1.69}).  Fewer
    distinct x values than free parameters raise UnidentifiableError (a ValueError)."""
    if axis not in ("N", "D", "C"):
        raise ValueError(f'axis must be "N", "D" or "C" (got {axis!r}); name the variable you pass as x.')
    form = f"power_law_{axis}"
    x_values, loss_values = _validated_columns(form, 3, **{axis: x, "loss": loss})
    _check_bootstrap(bootstrap)
    huber_delta = _checked_huber_delta(huber_delta)
    fixed = dict(fixed or {})
    free = [name for name in _POWER_LAW_THETA if name not in fixed]
    if free:
        _check_distinct_values(form, axis, x_values, len(free), ", ".join(free))
    objective = _Objective(_SumOfPowerLaws((np.log(x_values),)), np.log(loss_values), huber_delta)
    spec, objective, starts, constraint_note = _constrained(
        _power_law_spec(axis),
        _POWER_LAW_THETA,
        objective,
        _power_law_starts(x_values, loss_values),
        fixed,
        None,
    )
    note = f"{_objective_text(huber_delta)}; E = exp(e) keeps E >= 0." + constraint_note
    result = _fit_log_space(spec, objective, starts, bootstrap=bootstrap, seed=seed, note=note)
    if "E" not in fixed and result.params["E"] < 1e-6 * float(np.min(loss_values)):
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


def fit_kaplan(
    N: ArrayLike,
    D: ArrayLike,
    loss: ArrayLike,
    *,
    bootstrap: int = 0,
    seed: int = 0,
    huber_delta: float = math.inf,
    fixed: Mapping[str, float] | None = None,
) -> FitResult:
    """Fit L = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D (Kaplan et al. 2020, eq. 1.5) by least
    squares on log loss from a data-driven multi-start grid.  ``bootstrap`` > 0: percentile intervals
    from that many resamples of the runs, as in fit_chinchilla; ``huber_delta`` and ``fixed`` as there."""
    n, d, loss_values = _validated_columns("kaplan", 4, N=N, D=D, loss=loss)
    _check_bootstrap(bootstrap)
    huber_delta = _checked_huber_delta(huber_delta)
    objective = _Objective(_KaplanModel(np.log(n), np.log(d)), np.log(loss_values), huber_delta)
    spec, objective, starts, constraint_note = _constrained(
        _KAPLAN, _KAPLAN_THETA, objective, _kaplan_starts(n, d, loss_values), dict(fixed or {}), None
    )
    note = f"{_objective_text(huber_delta)}." + constraint_note
    return _fit_log_space(spec, objective, starts, bootstrap=bootstrap, seed=seed, note=note)


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
