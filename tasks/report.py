"""The sweep report: Markdown text (this module) and PNG plots (tasks.plots) rendered from the fitted
laws, the verdict on them, and the runs."""

from __future__ import annotations

import base64
import math
import re
from concurrent.futures import Executor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tasks import checks, laws
from tasks.fits import SweepFits, flops_per_token, law_text
from tasks.plots import CAPTIONS, PLOTS, loss_label, render_plots

if TYPE_CHECKING:
    from tasks.verdict import Verdict

COMPUTE_NAMES = {"6nd": "6·N·D", "with_attention": "6·N·D plus attention and unembedding terms"}
TARGET_NAMES = {
    "nats": "validation loss in nats per token",
    "bits_per_byte": "validation loss in bits per byte",
}
__all__ = ["PLOTS", "render_report", "with_inline_images"]


def render_report(
    name: str,
    sweep: SweepFits,
    verdict: Verdict | None,
    rows: list[dict],
    out: Path,
    elsewhere: Executor | None = None,
) -> str:
    """Write the plots into `out` (some in `elsewhere`, another process, if given) and return the
    report's Markdown (which links them): the verdict first, then the fitted laws, the checks behind
    the verdict, the plots and the cells."""
    render_plots(sweep, out, elsewhere)
    return "\n".join(
        [
            f"# Scaling laws: sweep `{name}`",
            "",
            *_verdict_lines(verdict),
            "## Fitted laws",
            "",
            f"{len(sweep.points.cell_ids)} cells fitted; N = {_kind_of_n(sweep)}, "
            f"C = {_compute_name(sweep)}, target = "
            f"{TARGET_NAMES.get(sweep.points.target, sweep.points.target)}.",
            *(
                [f"Excluded from the fits: {', '.join(sweep.points.excluded)}."]
                if sweep.points.excluded
                else []
            ),
            "",
            *_fit_lines(sweep, verdict),
            "",
            *_optimal_lines(sweep),
            *_isoflop_lines(sweep),
            *_extrapolation_lines(sweep),
            "## Plots",
            "",
            *[line for plot in PLOTS for line in (f"![{CAPTIONS[plot]}]({plot})", "")],
            "## Cells",
            "",
            *_cell_table(rows),
        ]
    )


def with_inline_images(markdown: str, folder: Path) -> str:
    """The report with its plots embedded as data URIs, so that Prefect's UI shows them."""
    for plot in PLOTS:
        encoded = base64.b64encode((folder / plot).read_bytes()).decode()
        markdown = markdown.replace(f"]({plot})", f"](data:image/png;base64,{encoded})")
    return markdown


def _kind_of_n(sweep: SweepFits) -> str:
    return "non-embedding parameters" if sweep.points.params_kind == "nonembedding" else "all parameters"


def _cell(value) -> str:
    """A value as one Markdown table cell."""
    return str(value).replace("|", "/").replace("\n", " ")


def _verdict_lines(verdict: Verdict | None) -> list[str]:
    if verdict is None:
        return ["## Verdict", "", "No verdict was computed for this sweep.", ""]
    lines = ["## Verdict", "", f"**{verdict.headline}**", ""]
    if not verdict.findings:
        return [*lines, "No check failed.", ""]
    lines += ["| severity | reason | fix |", "| --- | --- | --- |"]
    order = {"untrusted": 0, "caution": 1}
    for finding in sorted(verdict.findings, key=lambda f: order.get(f.severity, 2)):
        lines.append(f"| {_cell(finding.severity)} | {_cell(finding.reason)} | {_cell(finding.fix)} |")
    return [*lines, ""]


def _e_unidentified(verdict: Verdict | None) -> bool:
    return verdict is not None and any(f.rule == "E_unidentified" for f in verdict.findings)


def law_line(fit, verdict: Verdict | None) -> str:
    """The fitted law as one line; a Chinchilla E the verdict calls unidentified (at its bound) is shown
    as the symbol E, not as a number that reads like a finding."""
    text = law_text(fit)
    if fit.form != "chinchilla" or not _e_unidentified(verdict):
        return text
    return re.sub(r"= \S+ \+", "= E +", text, count=1) + " (E not identified: at its bound)"


def _fit_lines(sweep: SweepFits, verdict: Verdict | None) -> list[str]:
    lines = [
        "| form | law | objective | points | converged | note |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for fit in sweep.fits:
        cells = [
            fit.form,
            law_line(fit, verdict),
            f"{fit.objective:.4g}",
            fit.n_points,
            fit.converged,
            fit.note,
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines += [f"| {form} | not fitted | | | | {_cell(why)} |" for form, why in sweep.skipped.items()]
    chinchilla = _chinchilla(sweep)
    if chinchilla is not None:
        lines += [
            "",
            "Chinchilla-form parameters with their 95% bootstrap intervals: "
            + ", ".join(
                f"{name} = {chinchilla.params[name]:.4g} ({_interval(chinchilla, name)})"
                for name in ("alpha", "beta", "A", "B", "E")
                if name in chinchilla.params and not (name == "E" and _e_unidentified(verdict))
            )
            + ("; E not identified (the data do not place it)." if _e_unidentified(verdict) else "."),
        ]
    return lines


def _compute_name(sweep: SweepFits) -> str:
    return COMPUTE_NAMES[sweep.points.compute_kind]


def _chinchilla(sweep: SweepFits):
    return next((f for f in sweep.fits if f.form == "chinchilla"), None)


def _optimal_lines(sweep: SweepFits) -> list[str]:
    chinchilla = _chinchilla(sweep)
    if chinchilla is None:
        return []
    title = f"## Compute-optimal allocation (Approach 3: the Chinchilla-form fit, C = {_compute_name(sweep)})"
    if not sweep.optimal:
        try:
            flops_per_token(sweep.points)
        except laws.FitInputError as error:
            return [title, "", f"Not given: {error}", ""]
        return []  # exponents that are not positive: the fitted-laws section says so
    p = chinchilla.params
    limit = "" if sweep.points.compute_kind == "6nd" else " as C grows (where the 6·N·D term dominates)"
    lines = [
        title,
        "",
        f"N_opt ∝ C^{p['a_opt']:.3f} (95% interval {_interval(chinchilla, 'a_opt')}), "
        f"D_opt ∝ C^{p['b_opt']:.3f} (95% interval {_interval(chinchilla, 'b_opt')}){limit}.",
        "",
        "| compute (FLOP) | N_opt | N_opt 95% band | D_opt | tokens per parameter | predicted loss |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for i in np.unique(np.linspace(0, len(sweep.optimal) - 1, 5).astype(int)):
        r = sweep.optimal[i]
        lines.append(
            f"| {r.flops:.3g} | {r.N_opt:.3g} | {_range(r.N_opt_low, r.N_opt_high)} "
            f"| {r.D_opt:.3g} | {r.tokens_per_param:.3g} "
            f"| {r.loss:.4f} |"
        )
    return [*lines, ""]


def _interval(fit, name: str, fmt: str = ".3g") -> str:
    low, high = fit.ci_low.get(name), fit.ci_high.get(name)
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return "n/a"
    return f"{low:{fmt}} .. {high:{fmt}}"


def mean_abs_error(rows: list[checks.HeldOutCell]) -> float:
    return float(np.mean(np.abs([r.relative_error for r in rows]))) if rows else math.nan


def _extrapolation_lines(sweep: SweepFits) -> list[str]:
    rows = sweep.extrapolation
    if not rows:
        return []
    unit = loss_label(sweep.points.target).removeprefix("validation loss ")
    lines = [
        "## Extrapolation check",
        "",
        f"Fitted without the {len(rows)} held-out cells (C ≥ {rows[0].threshold_flops:.3g} FLOP), the "
        f"Chinchilla form predicts them with mean |error| {mean_abs_error(rows):.2%} "
        f"(largest {max(abs(r.relative_error) for r in rows):.2%}).",
        "",
        f"| cell | compute (FLOP) | observed loss {unit} | predicted loss | relative error |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {str(r.cell_id)[:10]} | {r.flops:.3g} | {r.observed_loss:.4f} "
            f"| {r.predicted_loss:.4f} | {r.relative_error:+.2%} |"
        )
    return [*lines, ""]


def _isoflop_lines(sweep: SweepFits) -> list[str]:
    if not sweep.isoflop:
        return []
    exponent = checks.isoflop_exponent(sweep.isoflop)
    if math.isfinite(exponent["a"]):
        interval = (
            f"95% interval {exponent['a_ci_low']:.3f} .. {exponent['a_ci_high']:.3f}"
            if math.isfinite(exponent["a_ci_low"])
            else "no interval from two budgets"
        )
        summary = (
            f"N_opt ∝ C^{exponent['a']:.3f} ({interval}) from the {exponent['budgets']} budgets whose "
            "minimum lies inside their sampled sizes."
        )
        chinchilla = _chinchilla(sweep)
        if chinchilla is not None and "a_opt" in chinchilla.params:
            a3 = chinchilla.params["a_opt"]
            summary += (
                f" Approach 3 (the Chinchilla-form fit) gives a = β/(α+β) = {a3:.3f}; "
                f"the two differ by {abs(exponent['a'] - a3):.3f}."
            )
    else:
        summary = f"{exponent['budgets']} budget(s) with an interior minimum: too few for an exponent."
    lines = [
        "## IsoFLOP profiles (Approach 2)",
        "",
        summary,
        "",
        "| budget (FLOP) | cells | N sampled | N_opt | N_opt 95% CI | D_opt | loss at N_opt | interior "
        "| note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for g in sweep.isoflop:
        lines.append(
            f"| {g.budget_flops:.3g} | {g.cells} | {g.n_min:.3g} .. {g.n_max:.3g} "
            f"| {_number(g.n_opt, '.3g')} | {_range(g.n_opt_ci_low, g.n_opt_ci_high)} "
            f"| {_number(g.d_opt, '.3g')} "
            f"| {_number(g.loss_at_opt)} | {'yes' if g.interior else 'no'} "
            f"| {_cell(g.note)} |"
        )
    return [*lines, ""]


def _cell_table(rows: list[dict]) -> list[str]:
    lines = [
        "| cell | N (non-emb.) | D (tokens) | status | val loss (nats) | bits/byte | tokens/s | sample |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in sorted(rows, key=lambda r: (r["params_nonembedding"], r["tokens_target"])):
        sample = (r.get("sample") or r.get("error") or "").replace("|", "/").replace("\n", " ")[:80]
        lines.append(
            f"| {r['cell_id'][:10]} | {r['params_nonembedding']:,} | {r['tokens_target']:,} | {r['status']} "
            f"| {_number(r.get('val_loss_nats'))} | {_number(r.get('val_bits_per_byte'))} "
            f"| {_number(r.get('tokens_per_second'), '.0f')} | {sample} |"
        )
    return lines


def _number(value: float | None, fmt: str = ".4f") -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _range(low: float | None, high: float | None) -> str:
    low_text, high_text = _number(low, ".3g"), _number(high, ".3g")
    return f"{low_text} .. {high_text}" if low_text and high_text else ""
