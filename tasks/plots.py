"""The sweep report's PNG plots: IsoFLOP profiles, compute-optimal N and D against C, loss contours of
the fitted surface, held-out predictions, and loss against N and D with the fit's residuals.  Each
`draw_*` function draws into the Axes it is given (or a new Figure's) and returns the Figure, so a
notebook draws the report's plots without pyplot and without touching its matplotlib backend."""

from __future__ import annotations

import math
from concurrent.futures import Executor
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from tasks import checks, laws
from tasks.fits import SweepFits, flops_per_token
from tasks.plot_axes import count_colourbar, log_axis, log_norm, no_data

CAPTIONS = {  # file name -> alt text, in the report's order
    "isoflop.png": "IsoFLOP profiles: each budget's parabola in ln N and its minimum",
    "compute_optimal.png": "Compute-optimal N and D against C (Approaches 2 and 3)",
    "loss_contours.png": "Loss contours of the fitted Chinchilla surface, the cells, the efficient frontier",
    "extrapolation.png": "Held-out cells: predicted against observed loss",
    "loss_vs_N.png": "Loss against N",
    "loss_vs_D.png": "Loss against D",
    "residuals.png": "Chinchilla-form residuals",
}
PLOTS = tuple(CAPTIONS)
# about half of the drawing time of the default preset's report (0.55 of 1.0 s)
DRAWN_ELSEWHERE = ("compute_optimal.png", "loss_contours.png", "residuals.png")
TOLERANCE = 0.02  # the extrapolation plot's band: predictions within ±2% of the observed loss
MAX_CURVES = 6  # loss against N (or D): at most this many of the fit's curves


def loss_label(target: str) -> str:
    return "validation loss (bits/byte)" if target == "bits_per_byte" else "validation loss (nats/token)"


def render_plots(sweep: SweepFits, out: Path, elsewhere: Executor | None = None) -> None:
    """Write every file of PLOTS into `out`; with `elsewhere` (another process), those of DRAWN_ELSEWHERE
    there while the others are drawn here."""
    away = [elsewhere.submit(render_plot, plot, sweep, out) for plot in DRAWN_ELSEWHERE] if elsewhere else []
    for plot in PLOTS:
        if not (away and plot in DRAWN_ELSEWHERE):
            render_plot(plot, sweep, out)
    for future in away:
        future.result()


def render_plot(plot: str, sweep: SweepFits, out: Path) -> None:
    """Write one file of PLOTS into `out`."""
    _save(_DRAW[plot](sweep), out / plot)


def _axes(ax, figsize: tuple[float, float], ncols: int = 1):
    """(figure, ax): the given Axes (a pair for two columns) and its figure, or a new Figure's."""
    if ax is not None:
        return (ax[0] if ncols > 1 else ax).figure, ax
    figure = Figure(figsize=figsize)
    return figure, figure.subplots(1, ncols) if ncols > 1 else figure.subplots()


def _chinchilla(sweep: SweepFits):
    return next((f for f in sweep.fits if f.form == "chinchilla"), None)


def finite(value) -> bool:
    return value is not None and math.isfinite(value)


def _budget_colours(count: int) -> np.ndarray:
    return colormaps["viridis"](np.linspace(0, 0.85, count))


def _budget_masks(sweep: SweepFits) -> list[np.ndarray]:
    """Each isoflop row's cells, in the rows' order."""
    points = sweep.points
    if not sweep.isoflop or not len(points.N):
        return []
    labels = checks.profile_labels(points.N, points.C)
    masks = [labels == label for label in np.unique(labels)]
    return masks if len(masks) == len(sweep.isoflop) else []


def draw_isoflop(sweep: SweepFits, ax=None) -> Figure:
    points = sweep.points
    figure, ax = _axes(ax, (7, 4.5))
    masks = _budget_masks(sweep)
    rows = sweep.isoflop if masks else []
    budgets = bool(masks) and checks.is_isoflop_design(points.N, points.C)
    for row, mask, colour in zip(rows, masks, _budget_colours(len(masks)), strict=True):
        label = f"C {'=' if budgets else '≈'} {row.budget_flops:.1e}"
        label += "" if row.interior else " (no interior minimum)"
        ax.scatter(points.N[mask], points.loss[mask], color=colour, label=label, zorder=3, s=22)
        if finite(row.curvature):
            x = np.linspace(math.log(row.n_min), math.log(row.n_max), 80)
            u = x - row.log_n_centre
            ax.plot(np.exp(x), row.curvature * u**2 + row.slope * u + row.intercept, color=colour)
        if finite(row.n_opt) and row.n_min / 2 < row.n_opt < row.n_max * 2:
            low, high = row.n_opt_ci_low, row.n_opt_ci_high
            xerr = [[row.n_opt - low], [high - row.n_opt]] if finite(low) and finite(high) else None
            style = {"fmt": "D", "color": colour, "ms": 7, "capsize": 3, "zorder": 4}
            ax.errorbar(row.n_opt, row.loss_at_opt, xerr=xerr, **style, mfc=colour if row.interior else "w")
    if not masks:
        no_data(ax, "no IsoFLOP budgets")
    log_axis(ax, "x", counts=True)
    ax.set_xlabel("N (parameters)")
    ax.set_ylabel(loss_label(points.target))
    kind = "IsoFLOP profiles" if budgets or not masks else "Compute bands of a product grid"
    ax.set_title(f"{kind}; ◆ minimum and 95% CI (hollow: outside the sampled N)", fontsize=10)
    if masks:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="major")
    return figure


def _approach2_line(rows: list[checks.IsoflopProfile], key: str) -> tuple[float, float] | None:
    """(slope, intercept) of ln key against ln C over the budgets with an interior minimum."""
    usable = [r for r in rows if r.interior and finite(getattr(r, key))]
    if len(usable) < 2:
        return None
    slope, intercept = np.polyfit(
        np.log([r.budget_flops for r in usable]), np.log([getattr(r, key) for r in usable]), 1
    )
    return float(slope), float(intercept)


def draw_compute_optimal(sweep: SweepFits, axes=None) -> Figure:
    """N_opt and D_opt against C, into a pair of Axes."""
    figure, axes = _axes(axes, (11, 4.3), ncols=2)
    rows = [r for r in sweep.isoflop if finite(r.n_opt)]
    optimal = sweep.optimal
    exponent = checks.isoflop_exponent(sweep.isoflop) if sweep.isoflop else {"a": math.nan}
    compute = [r.budget_flops for r in rows] + [r.flops for r in optimal]
    for ax, axis in zip(axes, ("N", "D"), strict=True):
        key = "n_opt" if axis == "N" else "d_opt"
        if len(sweep.points.C):
            ax.axvspan(sweep.points.C.min(), sweep.points.C.max(), color="grey", alpha=0.12, lw=0)
        for interior in (True, False):
            chosen = [r for r in rows if bool(r.interior) == interior]
            if not chosen:
                continue
            values = np.array([getattr(r, key) for r in chosen])
            low = np.array([r.n_opt_ci_low for r in chosen])
            high = np.array([r.n_opt_ci_high for r in chosen])
            if axis == "D":  # along a budget D ∝ 1/N: N's interval maps onto D's, reversed
                n_opt = np.array([r.n_opt for r in chosen])
                low, high = values * n_opt / high, values * n_opt / low
            error = np.nan_to_num(np.array([values - low, high - values]))
            label = "Approach 2: IsoFLOP minima (95% CI)" if interior else "minimum not interior (unused)"
            style = {"fmt": "o", "color": "k", "mfc": "k" if interior else "w", "capsize": 3, "zorder": 4}
            ax.errorbar([r.budget_flops for r in chosen], values, yerr=error, label=label, **style)
        line = _approach2_line(sweep.isoflop, key)
        if line is not None:
            grid = np.geomspace(min(compute), max(compute), 50)
            text = f"Approach 2 fit: {axis}_opt ∝ C^{line[0]:.3f}"
            if axis == "N" and finite(exponent.get("a_ci_low")):
                text += f" [{exponent['a_ci_low']:.3f}, {exponent['a_ci_high']:.3f}]"
            ax.plot(grid, np.exp(line[1]) * grid ** line[0], color="black", ls="--", lw=1.2, label=text)
        if optimal:
            c = np.array([r.flops for r in optimal])
            n = np.array([r.N_opt for r in optimal])
            low = np.array([r.N_opt_low for r in optimal])
            high = np.array([r.N_opt_high for r in optimal])
            values = n if axis == "N" else np.array([r.D_opt for r in optimal])
            if axis == "D":  # along a budget of the fit's accounting, D = C / f(N)
                per_token = flops_per_token(sweep.points)
                low, high = c / per_token(high), c / per_token(low)
            slope = np.polyfit(np.log(c), np.log(values), 1)[0] if len(c) > 1 else math.nan
            label = f"Approach 3: Chinchilla fit, {axis}_opt ∝ C^{slope:.3f}"
            ax.plot(c, values, color="crimson", label=label)
            if np.isfinite(low).all() and np.isfinite(high).all():
                ax.fill_between(c, low, high, color="crimson", alpha=0.2, lw=0, label="95% bootstrap band")
        if not rows and not optimal:
            no_data(ax, "no IsoFLOP minimum and no Chinchilla fit")
        log_axis(ax, "x", counts=False)
        log_axis(ax, "y", counts=True)
        ax.set_xlabel("compute C (FLOP); shaded: the sweep's range")
        ax.set_ylabel("N_opt (parameters)" if axis == "N" else "D_opt (tokens)")
        ax.set_title(f"Compute-optimal {'model size' if axis == 'N' else 'training tokens'}", fontsize=10)
        ax.grid(alpha=0.3, which="major")
        if rows or optimal:
            ax.legend(fontsize=7, loc="upper left")
    return figure


def draw_contours(sweep: SweepFits, ax=None) -> Figure:
    points, chinchilla = sweep.points, _chinchilla(sweep)
    figure, ax = _axes(ax, (7, 5))
    if not len(points.N):
        no_data(ax, "no cells")
        return figure
    n_range = (points.N.min() / 3, points.N.max() * 3)
    d_range = (points.D.min() / 3, points.D.max() * 3)
    norm = Normalize(points.loss.min(), points.loss.max())
    levels = _contour_levels(chinchilla, n_range, d_range, points.loss)
    if levels is not None:
        n_grid, d_grid, surface, levels = levels
        norm = Normalize(levels[0], levels[-1])
        style = {"levels": levels, "cmap": "viridis_r", "norm": norm, "alpha": 0.55, "extend": "max"}
        ax.contourf(n_grid, d_grid, surface, **style)
        lines = ax.contour(n_grid, d_grid, surface, levels=levels[::2], colors="k", linewidths=0.6, alpha=0.6)
        ax.clabel(lines, fmt="%.2f", fontsize=8)
    style = {"cmap": "viridis_r", "norm": norm, "edgecolors": "k", "s": 36, "zorder": 4}
    scatter = ax.scatter(points.N, points.D, c=points.loss, label="cells (colour: observed loss)", **style)
    figure.colorbar(scatter, ax=ax, label=loss_label(points.target))
    n_line = np.geomspace(*n_range, 50)
    budgets = _budget_masks(sweep) if checks.is_isoflop_design(points.N, points.C) else []
    try:  # the budgets as the fit counts compute: D = C / f(N)
        per_token, accounting = flops_per_token(points), "the fit's C"
    except laws.FitInputError:
        per_token, accounting = laws.FlopsPerToken(), "C = 6ND"
    for index, mask in enumerate(budgets):  # a product grid's compute bands are no IsoFLOP lines
        flops = np.exp(np.mean(np.log(per_token(points.N[mask]) * points.D[mask])))
        label = f"IsoFLOP budgets, {accounting} (FLOPs at their ends)" if index == 0 else None
        ax.plot(n_line, flops / per_token(n_line), "k--", lw=0.9, label=label)
        largest = np.argmax(np.where(mask, points.N, -np.inf))  # budgets end at distinct N: no overlap
        where = {"xytext": (5, -5), "textcoords": "offset points", "ha": "left", "va": "top", "zorder": 5}
        where["bbox"] = {"boxstyle": "round,pad=0.15", "fc": "white", "alpha": 0.8, "lw": 0}
        ax.annotate(f"{flops:.2g}", (points.N[largest], points.D[largest]), fontsize=7, **where)
    if sweep.optimal:
        frontier = np.array([[r.N_opt, r.D_opt] for r in sweep.optimal]).T
        ax.plot(*frontier, color="crimson", lw=2, label="efficient frontier (compute-optimal N, D)")
    ax.set_xlim(*n_range)
    ax.set_ylim(*d_range)
    log_axis(ax, "x", counts=True)
    log_axis(ax, "y", counts=True)
    ax.set_xlabel("N (parameters)")
    ax.set_ylabel("D (tokens)")
    fitted = "contours: the Chinchilla-form fit" if chinchilla is not None else "no Chinchilla-form fit"
    ax.set_title(f"Loss over (N, D); {fitted}", fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    return figure


def _contour_levels(chinchilla, n_range, d_range, loss: np.ndarray):
    """The fitted surface on a log grid and its contour levels, spanning the cells' losses (and as much
    again above them), or None (no fit, or a flat surface)."""
    if chinchilla is None:
        return None
    n_grid, d_grid = np.meshgrid(np.geomspace(*n_range, 120), np.geomspace(*d_range, 120))
    with np.errstate(all="ignore"):
        surface = chinchilla.predict(n_grid.ravel(), d_grid.ravel()).reshape(n_grid.shape)
    surface = np.where(np.isfinite(surface), surface, np.nan)
    if not np.isfinite(surface).any():
        return None
    low = min(np.nanmin(surface), loss.min())
    high = min(np.nanpercentile(surface, 95), 2 * loss.max() - loss.min())
    return (n_grid, d_grid, surface, np.linspace(low, high, 14)) if high > low else None


def draw_extrapolation(sweep: SweepFits, ax=None) -> Figure:
    figure, ax = _axes(ax, (5.5, 5))
    rows = sweep.extrapolation
    if rows:
        observed = np.array([r.observed_loss for r in rows])
        predicted = np.array([r.predicted_loss for r in rows])
        error = np.mean(np.abs([r.relative_error for r in rows]))
        low = min(observed.min(), predicted.min()) * (1 - 2 * TOLERANCE)
        high = max(observed.max(), predicted.max()) * (1 + 2 * TOLERANCE)
        line = np.array([low, high])
        ax.plot(line, line, color="black", lw=1, label="predicted = observed")
        ax.plot(line, line * (1 + TOLERANCE), color="grey", ls="--", lw=1, label=f"±{TOLERANCE:.0%}")
        ax.plot(line, line * (1 - TOLERANCE), color="grey", ls="--", lw=1)
        n = np.array([sweep.points.N[sweep.points.cell_ids.index(r.cell_id)] for r in rows])
        scatter = ax.scatter(
            observed, predicted, c=n, cmap="viridis", norm=log_norm(n), zorder=3, edgecolors="k"
        )
        count_colourbar(figure, ax, scatter, "N (parameters)")
        ax.set_xlim(low, high)
        ax.set_ylim(low, high)
        ax.set_aspect("equal")
        ax.legend(fontsize=8, loc="upper left")
        title = f"Held-out cells: mean |relative error| {error:.2%}"
    else:
        no_data(ax, "no held-out cells")
        title = "Held-out cells"
    unit = loss_label(sweep.points.target).removeprefix("validation loss ")
    ax.set_xlabel(f"observed loss {unit}")
    ax.set_ylabel(f"predicted loss {unit}")
    ax.set_title(f"{title}\n(fitted without them)", fontsize=10)
    ax.grid(alpha=0.3)
    return figure


def draw_loss_against(sweep: SweepFits, axis: str, ax=None) -> Figure:
    """Loss against N coloured by D (or against D coloured by N), with the fit's curves at a few values
    of the other variable."""
    points, chinchilla = sweep.points, _chinchilla(sweep)
    x, other = (points.N, points.D) if axis == "N" else (points.D, points.N)
    other_name = "D (tokens)" if axis == "N" else "N (parameters)"
    figure, ax = _axes(ax, (6.5, 4.2))
    if not len(x):
        no_data(ax, "no cells")
        return figure
    norm = log_norm(other)
    scatter = ax.scatter(x, points.loss, c=other, cmap="plasma", norm=norm, zorder=3, edgecolors="k", lw=0.4)
    count_colourbar(figure, ax, scatter, other_name)
    if chinchilla is not None:
        values = np.unique(other)
        if len(values) > MAX_CURVES:
            values = np.geomspace(values.min(), values.max(), MAX_CURVES - 1)
        grid = np.geomspace(x.min() / 1.5, x.max() * 1.5, 60)
        for value in values:
            fixed = np.full_like(grid, value)
            predicted = chinchilla.predict(grid, fixed) if axis == "N" else chinchilla.predict(fixed, grid)
            ax.plot(grid, predicted, color=colormaps["plasma"](norm(value)), alpha=0.8, lw=1)
        low, high = points.loss.min(), points.loss.max()
        ax.set_ylim(low - 0.1 * (high - low + 1e-9), high + 0.1 * (high - low + 1e-9))
    log_axis(ax, "x", counts=True)
    ax.set_xlabel("N (parameters)" if axis == "N" else "D (tokens)")
    ax.set_ylabel(loss_label(points.target))
    fitted = f"lines: Chinchilla-form fit at fixed {other_name.split()[0]}" if chinchilla is not None else ""
    ax.set_title(f"Loss against {axis}; {fitted}".rstrip("; "), fontsize=10)
    ax.grid(alpha=0.3, which="major")
    return figure


def draw_residuals(sweep: SweepFits, ax=None) -> Figure:
    figure, ax = _axes(ax, (6.5, 3.8))
    points, chinchilla = sweep.points, _chinchilla(sweep)
    if chinchilla is not None and len(points.N):
        residual = np.log(points.loss) - np.log(chinchilla.predict(points.N, points.D))
        norm = log_norm(points.N)
        scatter = ax.scatter(points.C, residual, c=points.N, cmap="viridis", norm=norm, zorder=3)
        count_colourbar(figure, ax, scatter, "N (parameters)")
        ax.axhline(0, color="grey", lw=1)
    else:
        no_data(ax, "no Chinchilla-form fit")
        if len(points.C):
            ax.set_xlim(points.C.min() / 2, points.C.max() * 2)
    log_axis(ax, "x", counts=False)
    ax.set_xlabel("compute C (FLOP)")
    ax.set_ylabel("ln(observed / fitted)")
    ax.set_title("Chinchilla-form residuals", fontsize=10)
    ax.grid(alpha=0.3, which="major")
    return figure


_DRAW = {
    "isoflop.png": draw_isoflop,
    "compute_optimal.png": draw_compute_optimal,
    "loss_contours.png": draw_contours,
    "extrapolation.png": draw_extrapolation,
    "loss_vs_N.png": lambda sweep: draw_loss_against(sweep, "N"),
    "loss_vs_D.png": lambda sweep: draw_loss_against(sweep, "D"),
    "residuals.png": draw_residuals,
}


def _save(figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
