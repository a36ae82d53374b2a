"""Tests of the law-fitting math on synthetic runs drawn from known parameters."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from conftest import run_cli
from law_data import NOISE_SIGMA, TRUE_CHINCHILLA, chinchilla_loss, grid_runs, noisy
from scipy.optimize import minimize, minimize_scalar
from scipy.special import huber, logsumexp

from tasks.laws import (
    FORMS,
    FitResult,
    chinchilla_objective,
    chinchilla_start_grid,
    compute_optimal,
    extrapolation_check,
    fit,
    fit_chinchilla,
    fit_kaplan,
    fit_multiplicative,
    fit_power_law,
    isoflop_optima,
    result_to_dict,
)


@pytest.fixture(scope="module")
def chinchilla_runs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    N, D = grid_runs()
    return N, D, noisy(chinchilla_loss(N, D), seed=0)


@pytest.fixture(scope="module")
def chinchilla_fit(chinchilla_runs: tuple[np.ndarray, np.ndarray, np.ndarray]) -> FitResult:
    return fit_chinchilla(*chinchilla_runs, bootstrap=100, seed=0)


@pytest.fixture(scope="module")
def chinchilla_fit_without_bootstrap(chinchilla_runs: tuple[np.ndarray, np.ndarray, np.ndarray]) -> FitResult:
    return fit_chinchilla(*chinchilla_runs)


# --------------------------------------------------------------------------------------------------
# Chinchilla form
# --------------------------------------------------------------------------------------------------


def test_chinchilla_recovers_known_parameters(chinchilla_fit: FitResult) -> None:
    p = chinchilla_fit.params
    assert chinchilla_fit.form == "chinchilla"
    assert chinchilla_fit.converged
    assert p["E"] == pytest.approx(1.69, abs=0.1)
    assert p["alpha"] == pytest.approx(0.34, abs=0.03)
    assert p["beta"] == pytest.approx(0.28, abs=0.03)
    assert p["A"] == pytest.approx(406.4, rel=0.3)
    assert p["B"] == pytest.approx(410.7, rel=0.3)
    assert p["a_opt"] == pytest.approx(p["beta"] / (p["alpha"] + p["beta"]), rel=1e-12)
    # 0.5% noise: log residuals have an RMS of about 0.005.
    assert np.sqrt(np.mean(chinchilla_fit.residuals**2)) == pytest.approx(NOISE_SIGMA, rel=0.5)


@pytest.fixture(scope="module")
def noise_free_fit() -> FitResult:
    N, D = grid_runs()
    return fit_chinchilla(N, D, chinchilla_loss(N, D))


def test_chinchilla_recovers_noise_free_parameters_exactly(noise_free_fit: FitResult) -> None:
    assert noise_free_fit.converged
    assert noise_free_fit.objective < 1e-20
    for name, value in TRUE_CHINCHILLA.items():
        assert noise_free_fit.params[name] == pytest.approx(value, rel=1e-6), name


def test_chinchilla_flags_a_degenerate_optimum() -> None:
    N, D = grid_runs()
    loss = noisy(1.69 + 406.4 / N**0.34, seed=10)  # no dependence on D: B or beta is not identified
    result = fit_chinchilla(N, D, loss)
    assert "Degenerate optimum" in result.note and "D term" in result.note


def test_chinchilla_bootstrap_agrees_with_delta_method(
    chinchilla_fit: FitResult, chinchilla_fit_without_bootstrap: FitResult
) -> None:
    assert chinchilla_fit.samples is not None and chinchilla_fit.samples.shape == (100, 7)
    assert chinchilla_fit.objective == chinchilla_fit_without_bootstrap.objective
    for index, name in enumerate(chinchilla_fit.sample_names):
        samples = chinchilla_fit.samples[:, index]
        assert chinchilla_fit.stderr[name] == pytest.approx(np.std(samples, ddof=1), rel=1e-12)
        assert chinchilla_fit.ci_low[name] == pytest.approx(np.percentile(samples, 2.5), rel=1e-12)
        assert chinchilla_fit.ci_low[name] < chinchilla_fit.params[name] < chinchilla_fit.ci_high[name], name
    for name in ("E", "alpha", "beta"):
        # Both estimate the same sampling spread; the Huber sandwich rests on the few runs with
        # |residual| < delta, so only the order of magnitude is expected to agree.
        ratio = chinchilla_fit.stderr[name] / chinchilla_fit_without_bootstrap.stderr[name]
        assert 1 / 5 < ratio < 5, name


def test_chinchilla_delta_method_intervals(chinchilla_fit_without_bootstrap: FitResult) -> None:
    result = chinchilla_fit_without_bootstrap
    assert result.samples is None
    for name in ("E", "A", "B", "alpha", "beta"):
        assert 0 < result.stderr[name] < math.inf, name
        assert result.ci_low[name] < result.params[name] < result.ci_high[name], name
    assert result.ci_low["E"] > 0  # positive parameters get intervals on the log scale


def test_objective_is_hoffmann_summed_huber_of_log_sum_exp(
    chinchilla_runs: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    N, D, loss = chinchilla_runs
    theta = np.array([0.5, 6.0, 0.33, 6.5, 0.3])  # (e, a, alpha, b, beta)
    e, a, alpha, b, beta = theta
    log_pred = logsumexp([a - alpha * np.log(N), b - beta * np.log(D), np.full(N.shape, e)], axis=0)
    expected = huber(1e-3, log_pred - np.log(loss)).sum()
    objective = chinchilla_objective(N, D, loss)
    value, gradient = objective(theta)
    assert value == pytest.approx(expected, rel=1e-12)
    step = 1e-6
    numeric = [
        (objective(theta + step * unit)[0] - objective(theta - step * unit)[0]) / (2 * step)
        for unit in np.eye(5)
    ]
    np.testing.assert_allclose(gradient, numeric, rtol=1e-5, atol=1e-9)


def test_fast_fit_equals_brute_force_scipy_multistart() -> None:
    rng = np.random.default_rng(3)
    N = np.exp(rng.uniform(np.log(1e6), np.log(1e9), 80))
    D = np.exp(rng.uniform(np.log(1e8), np.log(1e11), 80))
    loss = noisy(chinchilla_loss(N, D), seed=4)
    objective = chinchilla_objective(N, D, loss)
    # A small grid of starts, (e, a, alpha, b, beta), each run to tight tolerance by scipy's BFGS
    # (L-BFGS-B would do too, but its many tiny BLAS calls crawl when threaded BLAS shares a busy CPU).
    small_grid = itertools.product([0.5], [5.0, 10.0], [0.5, 1.0], [5.0, 10.0], [0.5, 1.0])
    brute_force_best = min(
        minimize(objective, start, jac=True, method="BFGS", options={"gtol": 1e-12, "xrtol": 0.0}).fun
        for start in small_grid
    )
    assert chinchilla_start_grid().shape == (4500, 5)
    fast = fit_chinchilla(N, D, loss)
    assert fast.objective == pytest.approx(brute_force_best, rel=1e-9)


def test_predict_gives_the_true_law_off_the_grid_and_the_fits_residuals_on_it(
    noise_free_fit: FitResult, chinchilla_runs: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    """Checked against the law the runs were drawn from, not the predictor's own formula: catches a
    predictor that swaps A and B or alpha and beta, reads a_opt for alpha, or disagrees with the model
    the objective fitted (whose log residuals it must reproduce)."""
    N, D = np.array([3e5, 1e8, 1e10, 4e9]), np.array([1e12, 1e10, 1e12, 2e7])  # off the fitted grid
    np.testing.assert_allclose(noise_free_fit.predict(N, D), chinchilla_loss(N, D), rtol=1e-6)
    N, D, loss = chinchilla_runs
    fitted = fit_chinchilla(N, D, loss)
    np.testing.assert_allclose(np.log(loss) - np.log(fitted.predict(N, D)), fitted.residuals, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# Other forms
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("axis", ["N", "D", "C"])
def test_power_law_recovers_known_parameters(axis: str) -> None:
    scale = {"N": 1.0, "D": 100.0, "C": 1e9}[axis]
    x = np.geomspace(1e6, 1e9, 8) * scale
    coefficient = 300.0 * scale**0.3  # same curve over the points whatever the axis' units
    loss = noisy(1.8 + coefficient * x**-0.3, seed=1)
    result = fit_power_law(x, loss, axis=axis)
    assert result.form == f"power_law_{axis}"
    assert result.converged
    assert result.params["E"] == pytest.approx(1.8, abs=0.05)
    assert result.params["alpha"] == pytest.approx(0.3, abs=0.02)
    assert result.params["A"] == pytest.approx(coefficient, rel=0.3)
    np.testing.assert_allclose(result.predict(x), loss, rtol=0.02)


def test_power_law_without_floor_reports_e_at_its_bound() -> None:
    x = np.geomspace(1e6, 1e9, 8)
    result = fit_power_law(x, noisy(50.0 * x**-0.2 - 0.1, seed=2), axis="N")  # best unconstrained E < 0
    assert result.params["E"] < 1e-6
    assert "bound 0" in result.note


def test_kaplan_recovers_known_parameters() -> None:
    N, D = grid_runs()
    loss = noisy(((8.8e13 / N) ** (0.076 / 0.095) + 5.4e13 / D) ** 0.095, seed=5)
    result = fit_kaplan(N, D, loss)
    assert result.form == "kaplan"
    assert result.params["alpha_N"] == pytest.approx(0.076, abs=0.005)
    assert result.params["alpha_D"] == pytest.approx(0.095, abs=0.005)
    assert result.params["N_c"] == pytest.approx(8.8e13, rel=0.3)
    assert result.params["D_c"] == pytest.approx(5.4e13, rel=0.3)


def test_multiplicative_on_collinear_compute_reports_reduced_form() -> None:
    N, D = grid_runs()
    C = 6.0 * N * D
    perf = noisy(2.0 * N**0.1 * D**-0.2 * C**0.05, seed=6)
    result = fit_multiplicative(N, D, C, perf)
    assert result.form == "multiplicative_reduced"
    assert "unidentifiable" in result.note and "b' = b + d" in result.note
    assert math.isnan(result.params["d"])
    assert result.params["b"] == pytest.approx(0.1 + 0.05, abs=0.01)  # b' = b + d
    assert result.params["c"] == pytest.approx(-0.2 + 0.05, abs=0.01)  # c' = c + d
    assert result.params["a"] == pytest.approx(2.0 * 6.0**0.05, rel=0.1)  # a' = a 6^d
    np.testing.assert_allclose(result.predict(N, D), perf, rtol=0.02)


def test_multiplicative_on_nearly_collinear_compute_reports_reduced_form() -> None:
    N, D = grid_runs()
    C = 6.0 * N * D * np.exp(1e-5 * np.random.default_rng(6).standard_normal(N.size))  # rounded FLOPs
    result = fit_multiplicative(N, D, C, noisy(2.0 * N**0.1 * D**-0.2, seed=6))
    assert result.form == "multiplicative_reduced"
    assert "design conditioning" in result.note


def test_multiplicative_recovers_parameters_with_independent_compute() -> None:
    N, D = grid_runs()
    C = N**0.5 * D * np.random.default_rng(7).uniform(1.0, 10.0, N.size)
    perf = noisy(2.0 * N**0.1 * D**-0.2 * C**0.05, seed=8)
    result = fit_multiplicative(N, D, C, perf)
    assert result.form == "multiplicative"
    assert result.params["a"] == pytest.approx(2.0, rel=0.05)
    assert result.params["b"] == pytest.approx(0.1, abs=0.005)
    assert result.params["c"] == pytest.approx(-0.2, abs=0.005)
    assert result.params["d"] == pytest.approx(0.05, abs=0.005)


def test_multiplicative_with_constant_tokens_raises_clear_error() -> None:
    N = np.geomspace(1e6, 1e9, 8)
    with pytest.raises(ValueError, match="vary N and D independently"):
        fit_multiplicative(N, np.full(8, 1e9), 6e9 * N, np.linspace(1, 2, 8))


# --------------------------------------------------------------------------------------------------
# Compute-optimal allocation, IsoFLOP profiles, extrapolation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compute", [1e19, 1e21, 1e23])
def test_compute_optimal_matches_numerical_minimum(chinchilla_fit: FitResult, compute: float) -> None:
    p = chinchilla_fit.params

    def loss_at(log_n: float) -> float:
        n = math.exp(log_n)
        return float(chinchilla_loss(np.array(n), np.array(compute / (6 * n)), p))

    numerical = minimize_scalar(loss_at, bounds=(0.0, 60.0), method="bounded", options={"xatol": 1e-10})
    optimum = compute_optimal(chinchilla_fit, [compute])
    assert optimum.N_opt[0] == pytest.approx(math.exp(numerical.x), rel=1e-6)
    assert optimum.D_opt[0] * optimum.N_opt[0] * 6 == pytest.approx(compute, rel=1e-12)
    assert optimum.loss[0] == pytest.approx(numerical.fun, rel=1e-12)
    assert optimum.a == pytest.approx(p["beta"] / (p["alpha"] + p["beta"]), rel=1e-12)


def test_compute_optimal_bands_bracket_the_estimate(chinchilla_fit: FitResult) -> None:
    optimum = compute_optimal(chinchilla_fit, [1e20, 1e24])
    assert optimum.N_opt_ci is not None and optimum.a_ci is not None
    low, high = optimum.N_opt_ci
    assert np.all(low < optimum.N_opt) and np.all(optimum.N_opt < high)
    assert optimum.a_ci[0] < optimum.a < optimum.a_ci[1]


def isoflop_runs(computes: np.ndarray, decades_from_optimum: tuple[float, float]) -> tuple[np.ndarray, ...]:
    """Nine sizes per budget, spaced around the true optimum of TRUE_CHINCHILLA."""
    p = TRUE_CHINCHILLA
    a = p["beta"] / (p["alpha"] + p["beta"])
    scale = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / (p["alpha"] + p["beta"]))
    sizes, tokens = [], []
    for compute in computes:
        n_opt = scale * (compute / 6) ** a
        n = n_opt * np.logspace(*decades_from_optimum, 9)
        sizes.append(n)
        tokens.append(compute / (6 * n))
    N, D = np.concatenate(sizes), np.concatenate(tokens)
    return N, D, noisy(chinchilla_loss(N, D), seed=9)


def test_isoflop_recovers_the_n_opt_exponent() -> None:
    result = isoflop_optima(*isoflop_runs(np.geomspace(1e18, 1e22, 5), (-0.6, 0.6)))
    assert len(result.groups) == 5 and result.n_groups_used == 5
    true_a = TRUE_CHINCHILLA["beta"] / (TRUE_CHINCHILLA["alpha"] + TRUE_CHINCHILLA["beta"])
    assert result.a == pytest.approx(true_a, abs=0.02)
    assert 0 < result.a_stderr < 0.02


def test_isoflop_flags_a_minimum_outside_the_sampled_range() -> None:
    good = isoflop_runs(np.geomspace(1e18, 1e20, 3), (-0.6, 0.6))
    too_small = isoflop_runs(np.array([1e22]), (-2.0, -1.0))  # every size is 10x-100x below N_opt
    runs = [np.concatenate(pair) for pair in zip(good, too_small, strict=True)]
    result = isoflop_optima(*runs)
    flagged = [g for g in result.groups if g.warning]
    assert len(flagged) == 1 and "outside the sampled range" in flagged[0].warning
    assert flagged[0].compute == pytest.approx(1e22, rel=1e-6)
    assert result.n_groups_used == 3


def test_isoflop_flags_a_parabola_that_opens_downward() -> None:
    N = np.geomspace(1e7, 1e9, 5)
    loss = 3.0 - 0.1 * (np.log(N) - np.log(1e8)) ** 2
    result = isoflop_optima(N, 1e20 / (6 * N), loss)
    assert "opens downward" in result.groups[0].warning
    assert math.isnan(result.a)


def test_extrapolation_check_predicts_held_out_large_runs(
    chinchilla_runs: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    N, D, loss = chinchilla_runs
    threshold = 1e17
    result = extrapolation_check(N, D, loss, threshold_flops=threshold)
    held_out = threshold <= 6 * N * D
    assert result.n_train == int((~held_out).sum())
    assert len(result.relative_error) == int(held_out.sum())
    np.testing.assert_allclose(result.relative_error, (result.predicted - result.observed) / result.observed)
    assert result.max_abs_relative_error < 0.03
    assert result.mean_abs_relative_error == pytest.approx(np.mean(np.abs(result.relative_error)))


# --------------------------------------------------------------------------------------------------
# Dispatcher, serialisation, validation
# --------------------------------------------------------------------------------------------------


def test_dispatcher_and_json_ready_dict(chinchilla_runs: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    assert set(FORMS) >= {
        "chinchilla",
        "kaplan",
        "power_law_N",
        "power_law_D",
        "power_law_C",
        "multiplicative",
    }
    result = fit("power_law_C", *chinchilla_runs)
    record = json.loads(json.dumps(result_to_dict(result), allow_nan=False))
    assert record["form"] == "power_law_C"
    assert record["alpha"] == pytest.approx(result.params["alpha"])
    assert {"E", "A", "alpha", "objective", "n_points", "converged", "note", "ci", "stderr"} <= set(record)
    assert record["ci"]["alpha"] == pytest.approx([result.ci_low["alpha"], result.ci_high["alpha"]])
    reduced = result_to_dict(fit("multiplicative", *chinchilla_runs))
    assert reduced["form"] == "multiplicative_reduced" and reduced["d"] is None
    with pytest.raises(ValueError, match="Unknown form 'chinchila'"):
        fit("chinchila", *chinchilla_runs)


def kaplan_runs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    N, D = grid_runs()
    return N, D, noisy(((8.8e13 / N) ** (0.076 / 0.095) + 5.4e13 / D) ** 0.095, seed=5)


@pytest.mark.parametrize("form", list(FORMS))
def test_every_registered_form_takes_a_bootstrap(form: str) -> None:
    """`fit(form, ..., bootstrap=...)` once raised TypeError for every form but chinchilla."""
    result = fit(form, *kaplan_runs(), bootstrap=20, seed=1)
    assert tuple(result.params) == FORMS[form].params
    assert "20-resample bootstrap" in result.note
    assert result.samples is not None and result.samples.shape == (20, len(result.sample_names))
    for name in result.sample_names:
        assert result.ci_low[name] < result.ci_high[name], name
        assert result.stderr[name] > 0, name


def test_cli_fits_a_csv_with_any_form_and_a_bootstrap(tmp_path) -> None:
    N, D, loss = kaplan_runs()
    rows = "".join(f"{n},{d},{value}\n" for n, d, value in zip(N, D, loss, strict=True))
    (tmp_path / "runs.csv").write_text("params,tokens,loss\n" + rows)
    args = ["fit", "--csv", "runs.csv", "--form", "kaplan", "--bootstrap", "20", "--format", "json"]
    done = run_cli(args, tmp_path, own_server=True)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["form"] == "kaplan" and "20-resample bootstrap" in record["note"]
    low, high = record["ci"]["alpha_N"]
    assert low < record["alpha_N"] < high
