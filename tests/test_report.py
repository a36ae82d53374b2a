"""The sweep report rendered from a synthetic sweep: the verdict first, the plots, the checks' numbers."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest

from tasks import fits, report

TRUE_LAW = {"E": 1.8, "A": 30.0, "B": 60.0, "alpha": 0.34, "beta": 0.28}
BUDGETS = (1e12, 3e12, 1e13, 3e13)
SIZES_PER_BUDGET = 5
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Finding:  # the interface of tasks.verdict.Finding
    rule: str
    severity: str
    reason: str
    fix: str


@dataclass(frozen=True)
class Verdict:  # the interface of tasks.verdict.Verdict
    trustworthy: bool
    headline: str
    findings: tuple[Finding, ...] = ()


def synthetic_rows(budgets=BUDGETS, sizes=SIZES_PER_BUDGET, noise=0.003, seed=0) -> list[dict]:
    """Runs rows of an exact Chinchilla law on an IsoFLOP grid: per budget, model sizes spread over a
    factor of 36 around the law's compute-optimal N, with lognormal noise on the loss."""
    rng = np.random.default_rng(seed)
    law = TRUE_LAW
    scale = (law["alpha"] * law["A"] / (law["beta"] * law["B"])) ** (1 / (law["alpha"] + law["beta"]))
    rows = []
    for budget in budgets:
        n_opt = scale * (budget / 6) ** (law["beta"] / (law["alpha"] + law["beta"]))
        for index, n in enumerate(n_opt * np.geomspace(1 / 6, 6, sizes)):
            n, d = int(n), int(budget / (6 * int(n)))
            loss = (law["E"] + law["A"] / n ** law["alpha"] + law["B"] / d ** law["beta"]) * np.exp(
                rng.normal(0, noise)
            )
            rows.append(
                {
                    "cell_id": f"{budget:.0e}-{index}-cell",
                    "status": "ok",
                    "seed": 0,
                    "params_nonembedding": n,
                    "params_total": n + 50_000,
                    "tokens_seen": d,
                    "tokens_target": d,
                    "flops_6nd": 6.0 * n * d,
                    "flops_with_attention": 6.6 * n * d,
                    "val_loss_nats": loss,
                    "val_bits_per_byte": loss / np.log(2) / 3.5,
                    "tokens_per_second": 15_000.0,
                    "sample": "Fellow citizens | of the Senate",
                }
            )
    return rows


@pytest.fixture(scope="module")
def sweep_and_rows():
    rows = synthetic_rows()
    points = fits.points_from_runs(rows, "nonembedding", "6nd")
    return fits.fit_sweep(points, bootstrap=50), rows


def sections(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("## ")]


def test_the_report_opens_with_the_verdict_and_draws_every_plot(sweep_and_rows, tmp_path):
    sweep, rows = sweep_and_rows
    assert len(sweep.isoflop) == len(BUDGETS) and sweep.extrapolation and sweep.optimal
    verdict = Verdict(
        trustworthy=False,
        headline="Do not trust this law: 1 check failed.",
        findings=(
            Finding("span_N", "untrusted", "N spans 0.8 decades | under one", "Add cells at N = 1M and 3M."),
            Finding("wide_interval", "caution", "alpha's interval is wide", "Add a seed per cell."),
        ),
    )
    markdown = report.render_report("synthetic", sweep, verdict, rows, tmp_path)

    for plot in report.PLOTS:
        data = (tmp_path / plot).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000, plot
    assert {"isoflop.png", "compute_optimal.png", "loss_contours.png", "extrapolation.png"} <= set(
        report.PLOTS
    )
    lines = markdown.splitlines()
    assert lines[0] == "# Scaling laws: sweep `synthetic`"
    assert sections(markdown)[0] == "## Verdict"
    verdict_text = markdown.split("## Verdict", 1)[1].split("\n## ", 1)[0]
    assert verdict.headline in verdict_text
    table = [line for line in verdict_text.splitlines() if line.startswith("| untrusted")]
    assert len(table) == 1
    assert "N spans 0.8 decades / under one" in table[0] and "Add cells at N = 1M and 3M." in table[0]
    assert "| caution | alpha's interval is wide | Add a seed per cell. |" in verdict_text
    assert "validation loss in nats per token" in markdown

    inline = report.with_inline_images(markdown, tmp_path)
    assert inline.count("](data:image/png;base64,") == len(report.PLOTS)


def test_a_clean_verdict_says_no_check_failed(sweep_and_rows, tmp_path):
    sweep, rows = sweep_and_rows
    markdown = report.render_report(
        "synthetic", sweep, Verdict(True, "This law is trustworthy."), rows, tmp_path
    )
    verdict_text = markdown.split("## Verdict", 1)[1].split("\n## ", 1)[0]
    assert "This law is trustworthy." in verdict_text and "No check failed." in verdict_text
    assert "| severity |" not in verdict_text


def test_an_unidentified_E_is_not_printed_as_a_number(sweep_and_rows, tmp_path):
    sweep, rows = sweep_and_rows
    chinchilla = next(f for f in sweep.fits if f.form == "chinchilla")
    at_bound = type(chinchilla)(**{**vars(chinchilla), "params": {**chinchilla.params, "E": 0.0}})
    sweep = type(sweep)(
        **{**vars(sweep), "fits": [at_bound, *(f for f in sweep.fits if f is not chinchilla)]}
    )
    assert "= 0.000 +" in fits.law_text(at_bound)
    finding = Finding("E_unidentified", "caution", "E sits at its bound 0.", "Train larger models.")
    markdown = report.render_report(
        "synthetic", sweep, Verdict(False, "E is unplaced.", (finding,)), rows, tmp_path
    )

    (law,) = [line for line in markdown.splitlines() if line.startswith("| chinchilla |")]
    assert "not identified" in law and "0.000 +" not in law
    assert "/ N^" in law and "/ D^" in law  # the exponents are still reported


def test_the_extrapolation_section_reports_the_rows_mean_error(sweep_and_rows, tmp_path):
    sweep, rows = sweep_and_rows
    markdown = report.render_report("synthetic", sweep, Verdict(True, "Fine."), rows, tmp_path)
    section = markdown.split("## Extrapolation check", 1)[1].split("\n## ", 1)[0]
    expected = np.mean([abs(r.relative_error) for r in sweep.extrapolation])
    assert f"mean |error| {expected:.2%}" in section
    for row in sweep.extrapolation:
        assert f"{row.relative_error:+.2%}" in section


def test_the_isoflop_section_gives_both_approaches_exponents(sweep_and_rows, tmp_path):
    sweep, rows = sweep_and_rows
    markdown = report.render_report("synthetic", sweep, Verdict(True, "Fine."), rows, tmp_path)
    section = markdown.split("## IsoFLOP profiles", 1)[1].split("\n## ", 1)[0]
    assert f"from the {len(BUDGETS)} budgets" in section and "Approach 3" in section
    assert section.count("| yes |") == len(BUDGETS)


def test_a_sweep_too_small_for_any_check_still_renders(tmp_path):
    rows = synthetic_rows(budgets=(1e12,), sizes=3)
    rows.append({**rows[0], "cell_id": "failed-cell", "status": "failed", "error": "out of memory"})
    points = fits.points_from_runs(rows, "nonembedding", "6nd", target="bits_per_byte")
    sweep = fits.fit_sweep(points, bootstrap=0)
    assert not sweep.extrapolation and not sweep.optimal
    markdown = report.render_report("tiny", sweep, Verdict(False, "Too few cells.", ()), rows, tmp_path)
    for plot in report.PLOTS:
        assert (tmp_path / plot).read_bytes().startswith(PNG_SIGNATURE), plot
    assert sections(markdown)[0] == "## Verdict" and "failed-cell (failed)" in markdown

    empty = type(sweep)(**{**vars(sweep), "isoflop": []})
    report.render_report("tiny", empty, None, rows, tmp_path)


class RecordingPool(Executor):
    """A real process pool (a sweep's analysis helper is one) that remembers the functions it ran."""

    def __init__(self, pool: Executor) -> None:
        self.pool, self.ran = pool, []

    def submit(self, fn, /, *args, **kwargs) -> Future:
        self.ran.append(fn.__name__)
        return self.pool.submit(fn, *args, **kwargs)


def test_a_helper_process_fits_and_draws_exactly_what_this_one_does(sweep_and_rows, tmp_path):
    sweep, rows = sweep_and_rows
    verdict = Verdict(True, "Fine.")
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir(), there.mkdir()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver")) as pool:
        helper = RecordingPool(pool)
        helped = fits.fit_sweep(sweep.points, bootstrap=50, elsewhere=helper)
        report.render_report("synthetic", sweep, verdict, rows, there, helper)
    report.render_report("synthetic", sweep, verdict, rows, here)

    assert helper.ran == ["fit"] + ["render_plot"] * 3  # the Chinchilla fit and three of the plots
    # the same numbers, to the last bit: every form's parameters and intervals, and the bootstrap
    assert fits.fit_rows("fit", helped) == fits.fit_rows("fit", sweep)
    assert helped.optimal == sweep.optimal and helped.extrapolation == sweep.extrapolation
    samples = [(mine.samples, theirs.samples) for mine, theirs in zip(sweep.fits, helped.fits, strict=True)]
    assert all(a is b is None or np.array_equal(a, b) for a, b in samples)
    for plot in report.PLOTS:
        assert (there / plot).read_bytes() == (here / plot).read_bytes(), plot
