"""The compute-optimal rows count compute as the fit does: under fit.compute_kind with_attention the
optimum lies on the budgets f(N) D = C of that accounting, not on 6 N D = C."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from tasks import fits, laws, report

LAW = {"E": 1.8, "A": 30.0, "B": 60.0, "alpha": 0.34, "beta": 0.28}
KAPPA, GAMMA = 2000.0, 0.5  # per-token overhead kappa N^gamma: 3x of 6 N at N = 1e4, a third at 1e6


def per_token(n: np.ndarray) -> np.ndarray:
    return 6.0 * n + KAPPA * n**GAMMA


def rows() -> list[dict]:
    """Five sizes on each of four budgets around the law's optimum, with a small lognormal noise."""
    rng = np.random.default_rng(0)
    scale = (LAW["alpha"] * LAW["A"] / (LAW["beta"] * LAW["B"])) ** (1 / (LAW["alpha"] + LAW["beta"]))
    out = []
    for budget in (1e12, 3e12, 1e13, 3e13):
        n_opt = scale * (budget / 6) ** (LAW["beta"] / (LAW["alpha"] + LAW["beta"]))
        for index, n in enumerate(np.geomspace(n_opt / 6, n_opt * 6, 5).astype(int)):
            d = int(budget / (6 * n))
            loss = LAW["E"] + LAW["A"] / n ** LAW["alpha"] + LAW["B"] / d ** LAW["beta"]
            out.append(
                {
                    "cell_id": f"{budget:.0e}-{index}",
                    "status": "ok",
                    "seed": 0,
                    "params_nonembedding": int(n),
                    "params_total": int(n) + 50_000,
                    "tokens_seen": d,
                    "flops_6nd": 6.0 * n * d,
                    "flops_with_attention": float(per_token(n)) * d,
                    "val_loss_nats": loss * math.exp(rng.normal(0, 0.003)),
                    "val_bits_per_byte": loss,
                }
            )
    return out


@pytest.fixture(scope="module")
def with_attention() -> fits.SweepFits:
    return fits.fit_sweep(fits.points_from_runs(rows(), "nonembedding", "with_attention"), bootstrap=20)


def test_the_accounting_is_measured_from_the_cells(with_attention):
    flops = fits.flops_per_token(with_attention.points)
    assert flops.kappa == pytest.approx(KAPPA, rel=1e-6) and flops.gamma == pytest.approx(GAMMA, rel=1e-6)
    six_nd = fits.points_from_runs(rows(), "nonembedding", "6nd")
    assert fits.flops_per_token(six_nd).is_six_n  # the closed form, as before


def test_the_optimum_lies_on_the_fits_budgets_and_minimises_the_law_there(with_attention):
    """Caught on the old code: it spent each budget as if C = 6 N D, so f(N_opt) D_opt overshot C."""
    chinchilla = next(f for f in with_attention.fits if f.form == "chinchilla")
    p = chinchilla.params
    assert len(with_attention.optimal) == 24
    for row in with_attention.optimal:
        c = row.flops
        assert per_token(row.N_opt) * row.D_opt == pytest.approx(c, rel=1e-9)

        def loss_at(log_n: float, c: float = c) -> float:
            n = math.exp(log_n)
            return p["E"] + p["A"] / n ** p["alpha"] + p["B"] / (c / per_token(n)) ** p["beta"]

        best = minimize_scalar(
            loss_at, bounds=(0.0, math.log(c / 6)), method="bounded", options={"xatol": 1e-10}
        )
        assert row.N_opt == pytest.approx(math.exp(best.x), rel=1e-5)
        assert row.loss == pytest.approx(best.fun, rel=1e-9)
        assert row.N_opt_low < row.N_opt < row.N_opt_high


def test_n_and_c_counted_differently_give_no_allocation_and_say_why():
    """Total parameters against 6 x non-embedding compute: C / D < 6 N, no accounting to optimise in.
    The old code gave rows along 6 N_total D = C, which no cell of the sweep spends."""
    sweep = fits.fit_sweep(fits.points_from_runs(rows(), "total", "6nd"))
    assert any(f.form == "chinchilla" for f in sweep.fits) and sweep.optimal == []
    text = "\n".join(report._optimal_lines(sweep))
    assert "Not given: the compute per token is below 6 N" in text


def test_the_sweep_fits_every_registered_form_with_the_fits_compute(with_attention):
    """Catches a form of the registry that the sweep leaves out (kaplan was), and a C-law fitted to
    6 N D, the registry's default, instead of the fit's accounting."""
    points = with_attention.points
    assert [f.form.removesuffix("_reduced") for f in with_attention.fits] == list(laws.FORMS)
    frontier = fits.compute_frontier(points.C, points.loss)
    expected = laws.fit_power_law(points.C[frontier], points.loss[frontier], axis="C")
    power_law_c = next(f for f in with_attention.fits if f.form == "power_law_C")
    assert power_law_c.params == expected.params
    assert {row["form"] for row in fits.fit_rows("fp", with_attention)} >= {"kaplan"}
