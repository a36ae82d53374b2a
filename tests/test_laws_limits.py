"""Tests of the laws' limits: inputs they refuse, prediction bands, sandwich intervals with Huber kinks,
what data cannot identify, fixed and tied parameters."""

from __future__ import annotations

import math

import numpy as np
import pytest
from law_data import TRUE_CHINCHILLA, chinchilla_loss, grid_runs, noisy

from tasks import laws
from tasks.laws import (
    compute_optimal,
    extrapolation_check,
    fit,
    fit_chinchilla,
    fit_power_law,
    isoflop_optima,
)


@pytest.mark.parametrize(
    ("N", "D", "loss", "message"),
    [
        ([1e6, 1e7, 1e8], [1e9, 1e9], [3.0, 2.9, 2.8], r"mismatched lengths \(N=3, D=2, loss=3\); pass one"),
        ([1e6, 1e7, 1e8], [1e9] * 3, [3.0, np.nan, 2.8], "loss contains NaN or infinite .* drop or fix"),
        ([1e6, 1e7, np.inf], [1e9] * 3, [3.0, 2.9, 2.8], "N contains NaN or infinite values"),
        ([1e6, 1e7, 1e8], [1e9, 0.0, 1e9], [3.0, 2.9, 2.8], "D must be positive but has 0 at index 1; drop"),
        ([1e6, -1e7, 1e8], [1e9] * 3, [3.0, 2.9, 2.8], "N must be positive"),
        ([1e6, 1e7, 1e8], [1e9] * 3, [3.0, 2.9, -2.8], "loss must be positive"),
        (
            [1e6, 1e7, 1e8],
            [1e9] * 3,
            [3.0, 2.9, 2.8],
            "5 parameters and needs at least 6 runs, got 3; add runs",
        ),
    ],
)
def test_chinchilla_input_validation(N: list, D: list, loss: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fit_chinchilla(N, D, loss)


def test_other_validation_messages() -> None:
    with pytest.raises(ValueError, match="power_law_N form has 3 parameters and needs at least 4 runs"):
        fit_power_law([1e6, 1e7, 1e8], [3.0, 2.5, 2.2], axis="N")
    with pytest.raises(ValueError, match='axis must be "N", "D" or "C"'):
        fit_power_law([1e6, 1e7, 1e8, 1e9], [3.0, 2.5, 2.2, 2.0], axis="tokens")
    with pytest.raises(ValueError, match="bootstrap must be a non-negative integer"):
        fit_chinchilla(*grid_runs(), np.ones(36), bootstrap=-1)
    with pytest.raises(ValueError, match="pick a threshold between"):
        extrapolation_check(*grid_runs(), np.ones(36), threshold_flops=1.0)
    with pytest.raises(ValueError, match="empty inputs"):
        isoflop_optima([], [], [])
    with pytest.raises(ValueError, match="needs a chinchilla fit"):
        compute_optimal(fit_power_law([1e6, 1e7, 1e8, 1e9], [3.0, 2.5, 2.2, 2.0], axis="N"), [1e20])


def test_prediction_bands_keep_the_law_and_a_new_run_apart():
    rng = np.random.default_rng(7)
    truth = {"E": 1.8, "A": 400.0, "B": 2000.0, "alpha": 0.34, "beta": 0.37}
    n = np.repeat(np.geomspace(1e6, 1e9, 6), 5)
    d = np.tile(np.geomspace(1e8, 1e11, 5), 6)
    clean = laws._predict_chinchilla(truth, n, d, None)
    fit = laws.fit_chinchilla(n, d, clean * np.exp(rng.normal(0, 0.01, n.size)), bootstrap=200)
    grid_n, grid_d = np.array([3e8, 2e9]), np.array([3e10, 4e11])
    bands = laws.prediction_bands(fit, grid_n, grid_d)
    conf_low, conf_high = bands.confidence
    pred_low, pred_high = bands.prediction
    assert np.all(pred_low <= conf_low) and np.all(conf_high <= pred_high)
    assert np.all(pred_high - pred_low > conf_high - conf_low)
    new_runs = laws._predict_chinchilla(truth, grid_n, grid_d, None) * np.exp(rng.normal(0, 0.01, (400, 2)))
    inside = (new_runs >= pred_low) & (new_runs <= pred_high)
    assert 0.85 < inside.mean() <= 1.0  # about 95% of new runs fall in the prediction band
    with pytest.raises(ValueError, match="bootstrap"):
        laws.prediction_bands(laws.fit_chinchilla(n, d, clean), grid_n, grid_d)


# --------------------------------------------------------------------------------------------------
# Issue 12: sandwich intervals with Huber kinks, unidentifiable axes, fixed and tied parameters
# --------------------------------------------------------------------------------------------------


def kinked_runs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """36 runs whose log residuals (noise 0.2%) straddle Huber's delta = 1e-3: about a third lie beyond
    it, and some so close to it that a 1e-5 finite-difference step of the gradient crosses the kink."""
    N, D = grid_runs()
    loss = chinchilla_loss(N, D) * np.exp(2e-3 * np.random.default_rng(0).standard_normal(N.size))
    return N, D, loss


def test_sandwich_intervals_with_huber_kinks_match_the_bootstrap() -> None:
    """Before issue 12 the Hessian came from central differences of the gradient, whose steps crossed
    the kinks at |r| = delta: 'not positive definite', and every interval was null."""
    N, D, loss = kinked_runs()
    sandwich = fit_chinchilla(N, D, loss)
    residuals = np.abs(sandwich.residuals)
    assert 0.1 < np.mean(residuals > laws.HUBER_DELTA_CHINCHILLA) < 0.9  # both sides of the kinks
    assert "not positive definite" not in sandwich.note
    bootstrap = fit_chinchilla(N, D, loss, bootstrap=400, seed=0)
    for name in ("E", "A", "B", "alpha", "beta", "a_opt"):
        ratio = sandwich.stderr[name] / bootstrap.stderr[name]
        assert 1 / 1.5 < ratio < 1.5, (name, ratio)
        assert sandwich.ci_low[name] < sandwich.params[name] < sandwich.ci_high[name], name


def test_sandwich_hessian_is_the_analytic_one_in_the_quadratic_region() -> None:
    """With every run inside delta the objective is smooth: the split Hessian equals central
    differences of the gradient (the old way, right when no kink is near)."""
    from tasks.laws.forms import _chinchilla_objective
    from tasks.laws.uncertainty import _central_difference, _objective_hessian

    N, D = grid_runs()
    loss = noisy(chinchilla_loss(N, D), seed=0)
    objective = _chinchilla_objective(N, D, loss, huber_delta=math.inf)
    theta = np.array([0.5, 6.0, 0.33, 6.0, 0.28])
    jacobian = _central_difference(lambda t: objective.log_predictions(t[None, :])[0], theta)
    split = _objective_hessian(objective, theta, jacobian)
    differenced = _central_difference(lambda t: objective.scalar(t)[1], theta)
    np.testing.assert_allclose(split, 0.5 * (differenced + differenced.T), rtol=1e-5, atol=1e-8)


def two_value_runs(axis: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact Chinchilla-law losses on six values of one axis and two of the other."""
    many, two = np.geomspace(1e6, 1e9, 6), np.array([1e9, 1e10])
    N, D = np.meshgrid(many, two) if axis == "D" else np.meshgrid(two / 10, np.geomspace(1e8, 1e11, 6))
    return N.ravel(), D.ravel(), chinchilla_loss(N.ravel(), D.ravel())


@pytest.mark.parametrize(("axis", "terms"), [("D", "B and beta"), ("N", "A and alpha")])
def test_two_distinct_values_of_an_axis_are_unidentifiable(axis: str, terms: str) -> None:
    """Before issue 12 two D values gave E, B and beta wrong, with zero-width intervals, silently."""
    N, D, loss = two_value_runs(axis)
    with pytest.raises(laws.UnidentifiableError, match=f"{axis} takes 2 distinct values .* {terms} need"):
        fit_chinchilla(N, D, loss)
    with pytest.raises(ValueError, match="unidentifiable"):  # a ValueError: the sweep records it as skipped
        fit("chinchilla", N, D, loss)
    # Fixing E (or tying the exponents) leaves the axis's term identifiable from its two values.
    fixed = fit_chinchilla(N, D, loss, fixed={"E": TRUE_CHINCHILLA["E"]})
    for name, value in TRUE_CHINCHILLA.items():
        assert fixed.params[name] == pytest.approx(value, rel=1e-5), name
    assert fixed.stderr["E"] == 0.0 and "Fixed, not fitted: E=1.69" in fixed.note


def test_one_axis_law_needs_three_distinct_values_of_its_axis() -> None:
    x = np.array([1e6, 1e6, 1e7, 1e7, 1e7])
    loss = np.array([3.0, 3.1, 2.5, 2.6, 2.55])
    with pytest.raises(laws.UnidentifiableError, match="N takes 2 distinct values .* E, A, alpha need"):
        fit_power_law(x, loss, axis="N")
    assert fit_power_law(x, loss, axis="N", fixed={"E": 1.5}).params["E"] == 1.5


def test_sweep_records_an_unidentifiable_form_as_not_fitted() -> None:
    from tasks.fits import SweepPoints, fit_sweep

    N, D, loss = two_value_runs("D")
    points = SweepPoints([f"c{i}" for i in range(len(N))], N, D, 6 * N * D, loss, "nonembedding", "6nd")
    sweep = fit_sweep(points)
    assert "chinchilla" not in {f.form for f in sweep.fits}
    assert (
        "unidentifiable" in sweep.skipped["chinchilla"]
        and "D takes 2 distinct" in sweep.skipped["chinchilla"]
    )


def test_tied_exponents_and_plain_least_squares() -> None:
    N, D = grid_runs()
    truth = TRUE_CHINCHILLA | {"beta": TRUE_CHINCHILLA["alpha"]}
    loss = chinchilla_loss(N, D, truth)
    tied = fit_chinchilla(N, D, loss, tie_exponents=True)
    assert tied.params["alpha"] == tied.params["beta"] == pytest.approx(truth["alpha"], rel=1e-6)
    assert tied.params["a_opt"] == 0.5 and "Tied: alpha = beta" in tied.note
    noisy_loss = noisy(loss, seed=11)
    least_squares = fit_chinchilla(N, D, noisy_loss, huber_delta=math.inf)
    assert least_squares.note.startswith("Least squares on log loss")
    residual = least_squares.residuals
    assert least_squares.objective == pytest.approx(0.5 * residual @ residual, rel=1e-12)
    with pytest.raises(ValueError, match="not a parameter of the chinchilla form"):
        fit_chinchilla(N, D, loss, fixed={"C": 1.0})
    with pytest.raises(ValueError, match="E=-1 must be positive"):
        fit_chinchilla(N, D, loss, fixed={"E": -1.0})
    with pytest.raises(ValueError, match="huber_delta must be positive"):
        fit_chinchilla(N, D, loss, huber_delta=0.0)
