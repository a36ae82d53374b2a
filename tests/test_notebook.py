"""The notebook API: real fits of runs made from a known Chinchilla law on IsoFLOP budgets, read from a
dict of columns, a pyarrow Table and a pandas DataFrame alike; its summary, plots and error sentences."""

import math

import numpy as np
import pyarrow as pa
import pytest
from matplotlib.figure import Figure

from tasks.notebook import PLOT_METHODS, RunsFit, fit_runs

TRUTH = {"E": 1.7, "A": 400.0, "B": 900.0, "alpha": 0.34, "beta": 0.36}
A_OPT = TRUTH["beta"] / (TRUTH["alpha"] + TRUTH["beta"])  # N_opt ∝ C^a
BUDGETS = (1e11, 3e11, 1e12, 3e12)


def isoflop_columns(budgets=BUDGETS, sizes=5, spacing=2.0, noise=0.002) -> dict[str, list[float]]:
    """Five model sizes around each budget's true optimum, D = C / 6N, loss from TRUTH with noise."""
    rng = np.random.default_rng(0)
    alpha, beta = TRUTH["alpha"], TRUTH["beta"]
    g = (alpha * TRUTH["A"] / (beta * TRUTH["B"])) ** (1 / (alpha + beta))
    columns: dict[str, list[float]] = {"params": [], "tokens": [], "loss": []}
    for budget in budgets:
        for k in range(sizes):
            n = g * (budget / 6) ** A_OPT * spacing ** (k - sizes // 2 + 0.3)
            d = budget / (6 * n)
            loss = TRUTH["E"] + TRUTH["A"] / n**alpha + TRUTH["B"] / d**beta
            columns["params"].append(n)
            columns["tokens"].append(d)
            columns["loss"].append(loss * (1 + noise * rng.standard_normal()))
    return columns


@pytest.fixture(scope="module")
def columns():
    return isoflop_columns()


@pytest.fixture(scope="module")
def fitted(columns):
    return fit_runs(columns, bootstrap=200)


def test_the_fit_recovers_the_law_and_its_isoflop_exponent(fitted):
    law = fitted.law()
    assert law.params["alpha"] == pytest.approx(TRUTH["alpha"], abs=0.03)
    assert law.params["beta"] == pytest.approx(TRUTH["beta"], abs=0.03)
    assert law.ci_low["alpha"] < TRUTH["alpha"] < law.ci_high["alpha"]
    assert law.samples is not None and len(law.samples) == 200
    assert {"chinchilla", "power_law_N", "power_law_D", "power_law_C"} <= set(fitted.forms)
    assert len(fitted.isoflop) == len(BUDGETS) and all(r.interior for r in fitted.isoflop)
    n_opt = np.log([r.n_opt for r in fitted.isoflop])
    slope = np.polyfit(np.log(BUDGETS), n_opt, 1)[0]
    assert slope == pytest.approx(A_OPT, abs=0.03)
    assert len(fitted.extrapolation) == 5  # the largest budget held out
    assert fitted.optimal and fitted.verdict.trustworthy


def test_the_summary_is_one_screen_naming_the_verdict(fitted):
    text = fitted.summary()
    lines = text.splitlines()
    assert len(lines) <= 25, text
    assert fitted.verdict.headline in text
    law = fitted.law()
    for name in ("alpha", "beta", "E"):
        assert f"{name} {law.params[name]:.3f} [{law.ci_low[name]:.3f}, {law.ci_high[name]:.3f}]" in text
    assert "N_opt ∝ C^" in text and "D_opt ∝ C^" in text and "Approach 3" in text
    assert "Held-out" in text and "%" in text
    assert str(fitted) == text and "RunsFit of 20 runs" in repr(fitted)


def test_an_untrusted_law_lists_its_findings_on_one_screen():
    narrow = fit_runs(isoflop_columns(budgets=(1e11, 2e11, 4e11), sizes=3, spacing=1.3), bootstrap=0)
    text = narrow.summary()
    assert len(text.splitlines()) <= 25, text
    assert text.splitlines()[1] == f"Verdict: {narrow.verdict.headline}"
    assert "Not to be trusted" in text and "N spans" in text and "Fix:" in text
    assert "sandwich" in text


@pytest.mark.parametrize("method", PLOT_METHODS)
def test_each_plot_method_returns_a_figure_with_axes(fitted, method):
    figure = getattr(fitted, method)()
    assert isinstance(figure, Figure) and figure.axes
    assert any(ax.has_data() for ax in figure.axes)


def test_a_plot_draws_into_the_axes_it_is_given(fitted):
    figure = Figure()
    left, right = figure.subplots(1, 2)
    assert fitted.plot_isoflop(ax=left) is figure and left.has_data()
    assert fitted.plot_compute_optimal(axes=(left, right)) is figure and right.has_data()
    assert fitted.plot_loss("D").axes[0].get_xlabel() == "D (tokens)"


def test_pandas_pyarrow_and_a_dict_give_identical_results(columns):
    pd = pytest.importorskip("pandas")
    renamed = {"N": columns["params"], "D": columns["tokens"], "final": columns["loss"]}
    names = {"params": "N", "tokens": "D", "loss": "final", "bootstrap": 50}
    results = [
        fit_runs(pd.DataFrame(renamed), **names),
        fit_runs(pa.table(renamed), **names),
        fit_runs(renamed, **names),
    ]
    first = results[0]
    for other in results[1:]:
        assert other.summary() == first.summary()
        for a, b in zip(first.sweep.fits, other.sweep.fits, strict=True):
            assert a.form == b.form and a.params == b.params and a.ci_low == b.ci_low
        assert other.sweep.isoflop == first.sweep.isoflop
        assert other.sweep.extrapolation == first.sweep.extrapolation


def test_a_flops_column_and_nullable_pandas_columns(columns):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(columns).astype({"loss": "Float64"})  # a nullable dtype, as read_parquet gives
    frame["C"] = 6 * frame["params"] * frame["tokens"]
    fit = fit_runs(frame, flops="C", bootstrap=0)
    assert isinstance(fit, RunsFit) and fit.sweep.points.compute_kind == "C"
    assert fit.law().params["alpha"] == pytest.approx(TRUTH["alpha"], abs=0.03)


def with_value(columns, column, position, value):
    changed = {name: list(values) for name, values in columns.items()}
    changed[column][position] = value
    return changed


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: {k: v for k, v in c.items() if k != "tokens"}, "The table has no column 'tokens'"),
        (lambda c: with_value(c, "tokens", 3, 0.0), "Column 'tokens' has 1 value(s) that are not positive"),
        (lambda c: with_value(c, "loss", 4, None), "Column 'loss' has 1 missing or infinite value(s)"),
        (lambda c: with_value(c, "loss", 2, math.nan), "(first at position 2); drop those runs"),
        (lambda c: with_value(c, "params", 1, "big"), "Column 'params' is not numeric (position 1"),
        (lambda c: {k: v[:4] for k, v in c.items()}, "has 4 run(s); a Chinchilla law has 5 parameters"),
        (lambda c: c | {"loss": c["loss"][:-1]}, "Column 'loss' has 19 values but 'params' has 20"),
    ],
)
def test_bad_input_is_refused_in_one_sentence_naming_the_column(columns, change, message):
    with pytest.raises(ValueError) as refused:
        fit_runs(change(columns), bootstrap=0)
    text = str(refused.value)
    assert message in text and text.count(". ") == 0 and text.endswith(".")


def test_the_fix_names_the_keyword_to_pass(columns):
    with pytest.raises(ValueError, match=r"name the right one with params='\.\.\.'"):
        fit_runs(pa.table(columns), params="n_params")
    with pytest.raises(ValueError, match="pass 0 to skip resampling"):
        fit_runs(columns, bootstrap=-1)
    with pytest.raises(ValueError, match="huber_delta must be positive"):
        fit_runs(columns, huber_delta=0)
    with pytest.raises(TypeError, match="pandas DataFrame, a pyarrow Table or a dict of columns"):
        fit_runs([[1, 2, 3]])


def test_a_form_not_fitted_says_why(fitted):
    with pytest.raises(ValueError, match="No form 'gompertz'; the fitted forms are chinchilla"):
        fitted.law("gompertz")
    two_tokens = {"params": [1e6, 2e6, 4e6, 1e6, 2e6, 4e6], "tokens": [1e9] * 3 + [4e9] * 3}
    two_tokens["loss"] = [3.0, 2.9, 2.8, 2.7, 2.6, 2.5]
    fit = fit_runs(two_tokens, bootstrap=0)
    assert "chinchilla" not in fit.forms and "Not to be trusted" in fit.summary()
    with pytest.raises(ValueError, match="The chinchilla form was not fitted: "):
        fit.law()
