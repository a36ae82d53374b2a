"""The sweep report: Markdown text and PNG plots rendered from the fitted laws and the runs."""

from __future__ import annotations

import base64
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from tasks.fits import SweepFits, law_text

COMPUTE_NAMES = {"6nd": "6·N·D", "with_attention": "6·N·D plus attention and unembedding terms"}
PLOTS = (
    "loss_vs_N.png",
    "loss_vs_D.png",
    "compute_optimal.png",
    "residuals.png",
    "extrapolation.png",
    "isoflop.png",
)


def render_report(name: str, sweep: SweepFits, rows: list[dict], out: Path) -> str:
    """Write the plots into `out` and return the report's Markdown (which links them)."""
    chinchilla = next((f for f in sweep.fits if f.form == "chinchilla"), None)
    _plot_loss_against(sweep, chinchilla, "N", out / PLOTS[0])
    _plot_loss_against(sweep, chinchilla, "D", out / PLOTS[1])
    _plot_compute_optimal(sweep, out / PLOTS[2])
    _plot_residuals(sweep, out / PLOTS[3])
    _plot_extrapolation(sweep, out / PLOTS[4])
    _plot_isoflop(sweep, out / PLOTS[5])
    return "\n".join(
        [
            f"# Scaling laws: sweep `{name}`",
            "",
            f"{len(sweep.points.cell_ids)} cells fitted; N = {_kind_of_n(sweep)}, "
            f"C = {COMPUTE_NAMES[sweep.points.compute_kind]}.",
            *(
                [f"Excluded from the fits: {', '.join(sweep.points.excluded)}."]
                if sweep.points.excluded
                else []
            ),
            "",
            "## Fitted laws",
            "",
            *_fit_lines(sweep),
            "",
            *_optimal_lines(sweep),
            *_extrapolation_lines(sweep),
            *_isoflop_lines(sweep),
            "## Plots",
            "",
            *[f"![{plot}]({plot})" for plot in PLOTS],
            "",
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


def _fit_lines(sweep: SweepFits) -> list[str]:
    lines = [
        "| form | law | objective | points | converged | note |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for fit in sweep.fits:
        cells = [fit.form, law_text(fit), f"{fit.objective:.4g}", fit.n_points, fit.converged, fit.note]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    lines += [f"| {form} | not fitted | | | | {why} |" for form, why in sweep.skipped.items()]
    return lines


def _optimal_lines(sweep: SweepFits) -> list[str]:
    if not sweep.optimal:
        return []
    chinchilla = next(f for f in sweep.fits if f.form == "chinchilla")
    p = chinchilla.params
    lines = [
        "## Compute-optimal allocation (from the Chinchilla-form fit, C = 6·N·D)",
        "",
        f"N_opt ∝ C^{p['a_opt']:.3f} (95% interval {_interval(chinchilla, 'a_opt')}), "
        f"D_opt ∝ C^{p['b_opt']:.3f} (95% interval {_interval(chinchilla, 'b_opt')}).",
        "",
        "| compute (FLOP) | N_opt | N_opt 95% band | D_opt | tokens per parameter | predicted loss |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for i in np.linspace(0, len(sweep.optimal) - 1, 5).astype(int):
        r = sweep.optimal[i]
        lines.append(
            f"| {r['compute']:.3g} | {r['N_opt']:.3g} | {r['N_opt_low']:.3g} .. {r['N_opt_high']:.3g} "
            f"| {r['D_opt']:.3g} | {r['tokens_per_param']:.3g} | {r['loss']:.4f} |"
        )
    return [*lines, ""]


def _interval(fit, name: str) -> str:
    low, high = fit.ci_low.get(name), fit.ci_high.get(name)
    return "n/a" if low is None or high is None or math.isnan(low) else f"{low:.3f} .. {high:.3f}"


def _extrapolation_lines(sweep: SweepFits) -> list[str]:
    if not sweep.extrapolation:
        return []
    errors = [r["relative_error"] for r in sweep.extrapolation]
    threshold = sweep.extrapolation[0]["threshold_compute"]
    return [
        "## Extrapolation check",
        "",
        f"Fitted on the cells below C = {threshold:.3g} FLOP, the Chinchilla form predicts the "
        f"{len(errors)} larger cells with signed relative errors {', '.join(f'{e:+.2%}' for e in errors)} "
        f"(mean |error| {np.mean(np.abs(errors)):.2%}).",
        "",
    ]


def _isoflop_lines(sweep: SweepFits) -> list[str]:
    if not sweep.isoflop:
        return []
    first = sweep.isoflop[0]
    lines = [
        "## IsoFLOP profiles (Chinchilla's Approach 2, on compute bands of the grid)",
        "",
        f"N_opt ∝ C^{first['exponent_a']:.3f} ± {first['exponent_a_stderr']:.3f} across the usable bands."
        if math.isfinite(first["exponent_a"])
        else "Too few usable bands for an exponent.",
        "",
        "| compute band (FLOP) | cells | N_opt | loss at N_opt | warning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for g in sweep.isoflop:
        lines.append(
            f"| {g['compute']:.3g} | {g['n_points']} | {_number(g['N_opt'], '.3g')} "
            f"| {_number(g['loss_at_opt'])} | {g['warning'] or ''} |"
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


def _plot_loss_against(sweep: SweepFits, chinchilla, axis: str, path: Path) -> None:
    points = sweep.points
    x, group = (points.N, points.D) if axis == "N" else (points.D, points.N)
    figure, ax = plt.subplots(figsize=(6, 4))
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(np.unique(group))))
    for colour, value in zip(colours, np.unique(group), strict=True):
        mask = group == value
        label = f"{'D' if axis == 'N' else 'N'} = {value:.3g}"
        ax.scatter(x[mask], points.loss[mask], color=colour, label=label, zorder=3)
        if chinchilla is not None:
            grid = np.geomspace(x.min() / 1.5, x.max() * 1.5, 60)
            other = np.full_like(grid, value)
            predicted = chinchilla.predict(grid, other) if axis == "N" else chinchilla.predict(other, grid)
            ax.plot(grid, predicted, color=colour, alpha=0.7)
    ax.set_xscale("log")
    ax.set_xlabel("N (parameters)" if axis == "N" else "D (tokens)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(f"Loss against {axis}; lines: Chinchilla-form fit")
    ax.legend(fontsize=7)
    _save(figure, path)


def _plot_compute_optimal(sweep: SweepFits, path: Path) -> None:
    points = sweep.points
    figure, ax = plt.subplots(figsize=(6, 4))
    scatter = ax.scatter(points.C, points.N, c=points.loss, cmap="viridis_r", zorder=3)
    figure.colorbar(scatter, label="validation loss (nats/token)")
    if sweep.optimal:
        compute = [r["compute"] for r in sweep.optimal]
        ax.plot(compute, [r["N_opt"] for r in sweep.optimal], color="crimson", label="compute-optimal N")
        low, high = [r["N_opt_low"] for r in sweep.optimal], [r["N_opt_high"] for r in sweep.optimal]
        if not any(math.isnan(v) for v in low):
            ax.fill_between(compute, low, high, color="crimson", alpha=0.2, label="95% bootstrap band")
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("compute C (FLOP)")
    ax.set_ylabel("N (parameters)")
    ax.set_title("Cells and the compute-optimal frontier")
    _save(figure, path)


def _plot_residuals(sweep: SweepFits, path: Path) -> None:
    figure, ax = plt.subplots(figsize=(6, 3.5))
    chinchilla = next((f for f in sweep.fits if f.form == "chinchilla"), None)
    points = sweep.points
    if chinchilla is not None:
        residual = np.log(points.loss) - np.log(chinchilla.predict(points.N, points.D))
        ax.scatter(points.C, residual, c=np.log10(points.N), cmap="viridis", zorder=3)
        ax.axhline(0, color="grey", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("compute C (FLOP)")
    ax.set_ylabel("log(observed / fitted)")
    ax.set_title("Chinchilla-form residuals (colour: log10 N)")
    _save(figure, path)


def _plot_extrapolation(sweep: SweepFits, path: Path) -> None:
    figure, ax = plt.subplots(figsize=(6, 3.5))
    rows = sweep.extrapolation
    if rows:
        ax.bar(range(len(rows)), [100 * r["relative_error"] for r in rows], color="steelblue")
        ax.set_xticks(range(len(rows)), [f"{r['compute']:.2g}" for r in rows], fontsize=7)
        ax.axhline(0, color="grey", lw=1)
    ax.set_xlabel("held-out cell's compute (FLOP)")
    ax.set_ylabel("predicted − observed (% of observed)")
    ax.set_title("Extrapolation: fit on smaller cells, predict the largest")
    _save(figure, path)


def _plot_isoflop(sweep: SweepFits, path: Path) -> None:
    points = sweep.points
    figure, ax = plt.subplots(figsize=(6, 3.5))
    if sweep.isoflop:
        edges = np.linspace(np.log(points.C).min(), np.log(points.C).max(), len(sweep.isoflop) + 1)
        band = np.clip(np.searchsorted(edges, np.log(points.C), side="right") - 1, 0, len(sweep.isoflop) - 1)
        colours = plt.cm.plasma(np.linspace(0, 0.85, len(sweep.isoflop)))
        for group, colour in zip(sweep.isoflop, colours, strict=True):
            mask = band == group["group"]
            ax.scatter(points.N[mask], points.loss[mask], color=colour, label=f"C ≈ {group['compute']:.2g}")
            if group["N_opt"] is not None and math.isfinite(group["N_opt"]):
                ax.axvline(group["N_opt"], color=colour, ls="--", lw=1)
        ax.legend(fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("N (parameters)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("IsoFLOP bands; dashed: each band's parabola minimum")
    _save(figure, path)


def _save(figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
