"""The variable-projection solver reaches the multistart's optimum and returns the same kind of result."""

from __future__ import annotations

import math

import numpy as np
import pytest
from law_data import TRUE_CHINCHILLA, chinchilla_loss, grid_runs, noisy

from tasks.laws import fit_chinchilla

SAME_OPTIMUM_RTOL = 1e-9


def both(N: np.ndarray, D: np.ndarray, loss: np.ndarray, **options: object) -> tuple:
    return fit_chinchilla(N, D, loss, **options), fit_chinchilla(N, D, loss, solver="vpnls", **options)


def assert_same_optimum(multistart, vpnls) -> None:
    gap = (vpnls.objective - multistart.objective) / multistart.objective
    assert abs(gap) <= SAME_OPTIMUM_RTOL, (multistart.objective, vpnls.objective)
    assert vpnls.converged
    assert vpnls.params.keys() == multistart.params.keys()


def kinked_runs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise of 1% against delta = 0.1%: most runs lie on the linear arms of the Huber loss."""
    N, D = grid_runs()
    loss = chinchilla_loss(N, D) * np.exp(0.01 * np.random.default_rng(5).standard_normal(N.shape))
    return N, D, loss


@pytest.mark.parametrize("seed", [0, 1])
def test_same_optimum_and_intervals_on_noisy_law(seed: int) -> None:
    N, D = grid_runs()
    multistart, vpnls = both(N, D, noisy(chinchilla_loss(N, D), seed))
    assert_same_optimum(multistart, vpnls)
    for name, value in multistart.params.items():
        assert vpnls.params[name] == pytest.approx(value, rel=1e-5)
        assert vpnls.stderr[name] == pytest.approx(multistart.stderr[name], rel=1e-3)
    assert "variable projection" in vpnls.note and "4,500 starts" not in vpnls.note


def test_same_optimum_with_huber_kinks_active() -> None:
    N, D, loss = kinked_runs()
    multistart, vpnls = both(N, D, loss)
    outside = np.abs(multistart.residuals) > 1e-3
    assert outside.mean() > 0.5  # the kinks matter: most runs are on the linear arms
    assert_same_optimum(multistart, vpnls)
    assert math.isfinite(vpnls.stderr["alpha"])


def test_same_optimum_with_E_at_its_bound() -> None:
    N, D = grid_runs()
    loss = noisy(chinchilla_loss(N, D, dict(TRUE_CHINCHILLA, E=0.0)), 3)
    multistart, vpnls = both(N, D, loss, huber_delta=math.inf)
    assert multistart.params["E"] < 1e-9 and vpnls.params["E"] < 1e-9
    assert_same_optimum(multistart, vpnls)


def test_same_optimum_on_an_irregular_design_and_other_exponents() -> None:
    rng = np.random.default_rng(8)
    N, D = 10 ** rng.uniform(6, 9.5, 80), 10 ** rng.uniform(8, 11.5, 80)
    law = dict(E=2.0, A=50.0, B=5000.0, alpha=0.2, beta=0.6)
    assert_same_optimum(*both(N, D, noisy(chinchilla_loss(N, D, law), 7)))


@pytest.mark.parametrize(
    "options",
    [
        {"tie_exponents": True},
        {"fixed": {"E": 1.69}},
        {"fixed": {"B": 400.0}},
        {"fixed": {"E": 1.69, "alpha": 0.3}},
        {"fixed": {"beta": 0.28}, "huber_delta": math.inf},
    ],
    ids=["tied", "E", "B", "E+alpha", "beta-mse"],
)
def test_fixed_parameters_and_tied_exponents(options: dict) -> None:
    N, D = grid_runs()
    multistart, vpnls = both(N, D, noisy(chinchilla_loss(N, D), 1), **options)
    assert_same_optimum(multistart, vpnls)
    for name, value in options.get("fixed", {}).items():
        assert vpnls.params[name] == pytest.approx(value, rel=1e-14)
    if options.get("tie_exponents"):
        assert vpnls.params["alpha"] == vpnls.params["beta"]


def test_bootstrap_through_vpnls_matches() -> None:
    N, D = grid_runs()
    loss = noisy(chinchilla_loss(N, D), 2)
    multistart, vpnls = both(N, D, loss, bootstrap=50, seed=3)
    assert_same_optimum(multistart, vpnls)
    assert vpnls.samples is not None and vpnls.samples.shape == multistart.samples.shape
    assert vpnls.ci_low["alpha"] == pytest.approx(multistart.ci_low["alpha"], rel=1e-4)
    assert vpnls.ci_high["beta"] == pytest.approx(multistart.ci_high["beta"], rel=1e-4)


def test_unknown_solver_is_refused() -> None:
    N, D = grid_runs()
    with pytest.raises(ValueError, match="solver must be one of 'multistart', 'vpnls'"):
        fit_chinchilla(N, D, chinchilla_loss(N, D), solver="lbfgs")


def test_invalid_constraints_are_refused_as_for_the_multistart() -> None:
    N, D = grid_runs()
    loss = chinchilla_loss(N, D)
    with pytest.raises(ValueError, match="must be positive and finite"):
        fit_chinchilla(N, D, loss, solver="vpnls", fixed={"E": -1.0})
    with pytest.raises(ValueError, match="tied to another exponent"):
        fit_chinchilla(N, D, loss, solver="vpnls", fixed={"alpha": 0.3}, tie_exponents=True)
