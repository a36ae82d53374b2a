"""Fit a scaling law to your own runs from a notebook: a pandas DataFrame, a pyarrow Table or a dict of
columns in, a `RunsFit` out, with exactly what a sweep's report gets (every law form, the IsoFLOP
profiles when the runs lie on compute budgets, the extrapolation check, the verdict):

    from tasks.notebook import fit_runs
    fit = fit_runs(df, params="N", tokens="D", loss="loss")
    print(fit.summary())
    fit.plot_isoflop()

pandas is never imported here: a DataFrame is read through its own methods."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from tasks import checks, fits, laws, plots
from tasks.verdict import Verdict, judge

MIN_RUNS = 6  # the Chinchilla form has five parameters
TARGETS = ("nats", "bits_per_byte")
SUMMARY_WIDTH = 100
PLOT_METHODS = (
    "plot_isoflop",
    "plot_compute_optimal",
    "plot_contours",
    "plot_extrapolation",
    "plot_loss",
    "plot_residuals",
)
MAX_FINDING_LINES = 8  # the summary's findings block; the rest are in .verdict.findings


def fit_runs(
    table,
    params: str = "params",
    tokens: str = "tokens",
    loss: str = "loss",
    flops: str | None = None,
    *,
    seed: str | None = None,
    name: str | None = None,
    target: str = "nats",
    bootstrap: int = 1000,
    huber_delta: float = laws.HUBER_DELTA_CHINCHILLA,
    holdout_fraction: float = 0.25,
) -> RunsFit:
    """Fit every law form to one run per row, as a sweep does, and judge the Chinchilla-form law.

    `params`, `tokens` and `loss` name the columns of N, D and the final loss (`target`: "nats" per
    token or "bits_per_byte"); `flops` a column of training compute (default C = 6ND); `seed` a column
    of seeds (repeated runs of one N, D are then checked for agreement); `name` a column of unique run
    names (default "run0", "run1", ... by row).  `bootstrap` resamples give the intervals (0: sandwich
    errors only); `huber_delta` is the Huber threshold on log loss (math.inf: least squares)."""
    _check_options(target, bootstrap, huber_delta, holdout_fraction)
    columns = _Columns(table)
    N, D, L = (columns.positive(column, keyword) for column, keyword in _named(params, tokens, loss))
    C = 6 * N * D if flops is None else columns.positive(flops, "flops")
    seeds = np.zeros(len(N), dtype=int) if seed is None else columns.numeric(seed, "seed").astype(int)
    ids = [f"run{i}" for i in range(len(N))] if name is None else columns.names(name)
    if len(N) < MIN_RUNS:
        raise ValueError(
            f"The table has {len(N)} run(s); a Chinchilla law has 5 parameters, so pass at least "
            f"{MIN_RUNS} runs (ideally 3 or more compute budgets of 5 or more model sizes each)."
        )
    points = fits.SweepPoints(
        cell_ids=ids,
        N=N,
        D=D,
        C=C,
        loss=L,
        params_kind=params,
        compute_kind="6nd" if flops is None else flops,
        target=target,
        seeds=seeds,
    )
    sweep = fits.fit_sweep(points, bootstrap, holdout_fraction, huber_delta)
    return RunsFit(sweep, judge(sweep), bootstrap)


def _named(params: str, tokens: str, loss: str) -> tuple[tuple[str, str], ...]:
    return ((params, "params"), (tokens, "tokens"), (loss, "loss"))


def _check_options(target: str, bootstrap: int, huber_delta: float, holdout_fraction: float) -> None:
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)} (got {target!r}); it labels the loss.")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int | np.integer) or bootstrap < 0:
        raise ValueError(
            f"bootstrap must be a whole number, 0 or more (got {bootstrap!r}); pass 0 to skip resampling."
        )
    if not (isinstance(huber_delta, int | float) and huber_delta > 0):
        raise ValueError(
            f"huber_delta must be positive (got {huber_delta!r}); pass math.inf for plain least squares."
        )
    if not 0 <= holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must lie in [0, 1) (got {holdout_fraction!r}); 0.25 is usual.")


class _Columns:
    """The table's columns by name, whatever the table: pyarrow, pandas (duck-typed) or a mapping."""

    def __init__(self, table) -> None:
        if hasattr(table, "column_names") and hasattr(table, "column"):  # pyarrow Table or RecordBatch
            self.available = [str(c) for c in table.column_names]
            self._get = lambda column: table.column(column).to_pylist()
        elif hasattr(table, "columns") and hasattr(table, "to_dict"):  # a pandas DataFrame
            self.available = [str(c) for c in table.columns]
            self._get = lambda column: table[column].to_numpy(dtype=object)
        elif isinstance(table, Mapping):
            self.available = [str(c) for c in table]
            self._get = lambda column: list(table[column])
        else:
            raise TypeError(
                f"fit_runs takes a pandas DataFrame, a pyarrow Table or a dict of columns, not a "
                f"{type(table).__name__}; convert it to one of those."
            )
        self.length: int | None = None
        self.first: str | None = None

    def raw(self, column: str, keyword: str) -> list:
        if column not in self.available:
            raise ValueError(
                f"The table has no column {column!r} (it has {', '.join(map(repr, self.available))}); "
                f"name the right one with {keyword}='...'."
            )
        values = list(self._get(column))
        if self.length is None:
            self.length, self.first = len(values), column
        elif len(values) != self.length:
            raise ValueError(
                f"Column {column!r} has {len(values)} values but {self.first!r} has {self.length}; "
                "pass one value per run in every column."
            )
        return values

    def numeric(self, column: str, keyword: str) -> np.ndarray:
        values = self.raw(column, keyword)
        converted = np.full(len(values), np.nan)
        for i, value in enumerate(values):
            if value is None or (not isinstance(value, str | bytes) and _is_missing(value)):
                continue
            try:
                converted[i] = float(value)
            except (TypeError, ValueError):
                raise ValueError(
                    f"Column {column!r} is not numeric (position {i} holds {value!r}); pass numbers "
                    "(pandas.to_numeric converts a column of text)."
                ) from None
        missing = np.flatnonzero(~np.isfinite(converted))
        if missing.size:
            raise ValueError(
                f"Column {column!r} has {missing.size} missing or infinite value(s) (first at position "
                f"{missing[0]}); drop those runs (df.dropna()) before fitting."
            )
        return converted

    def positive(self, column: str, keyword: str) -> np.ndarray:
        values = self.numeric(column, keyword)
        bad = np.flatnonzero(values <= 0)
        if bad.size:
            raise ValueError(
                f"Column {column!r} has {bad.size} value(s) that are not positive (position {bad[0]}: "
                f"{values[bad[0]]:g}); every run needs {keyword} > 0, so drop or correct those runs."
            )
        return values

    def names(self, column: str) -> list[str]:
        names = [str(value) for value in self.raw(column, "name")]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(
                f"Column {column!r} repeats the run name(s) {', '.join(repeated[:3])}; pass unique names "
                "or leave name=None to number the runs."
            )
        return names


def _is_missing(value) -> bool:
    try:
        return bool(value != value)  # nan, pandas.NA and NaT are not equal to themselves
    except TypeError:  # pandas.NA refuses bool()
        return True


@dataclass(frozen=True, repr=False)
class RunsFit:
    """The fitted laws of a table of runs, their verdict, and the report's plots as methods."""

    sweep: fits.SweepFits
    verdict: Verdict
    bootstrap: int = 0

    @property
    def forms(self) -> list[str]:
        return [f.form for f in self.sweep.fits]

    @property
    def optimal(self) -> list[fits.OptimalAllocation]:
        """The compute-optimal allocation by budget (Approach 3), with bootstrap bands of N_opt."""
        return self.sweep.optimal

    @property
    def isoflop(self) -> list[checks.IsoflopProfile]:
        """Per budget (or compute band): the IsoFLOP parabola and its minimum (Approach 2)."""
        return self.sweep.isoflop

    @property
    def extrapolation(self) -> list[checks.HeldOutCell]:
        """The held-out largest runs: observed against predicted loss."""
        return self.sweep.extrapolation

    def law(self, form: str = "chinchilla") -> laws.FitResult:
        """The fitted law of one form (`.forms` lists them): params, intervals, predict()."""
        for fit in self.sweep.fits:
            if fit.form == form:
                return fit
        if form in self.sweep.skipped:
            raise ValueError(f"The {form} form was not fitted: {self.sweep.skipped[form].rstrip('.')}.")
        raise ValueError(f"No form {form!r}; the fitted forms are {', '.join(self.forms)}.")

    def summary(self) -> str:
        """One screen: the verdict and its findings, the Chinchilla law with intervals, both IsoFLOP
        exponents against the law's, and the held-out error."""
        points = self.sweep.points
        unit = plots.loss_label(points.target).removeprefix("validation loss ")
        lines = [
            f"{len(points.N)} runs: N {_span(points.N)}, D {_span(points.D)}, C {_span(points.C)} FLOP; "
            f"loss in {unit.strip('()')}",
            f"Verdict: {self.verdict.headline}",
            *_findings(self.verdict),
            *self._law_lines(),
            *self._isoflop_lines(),
            self._held_out_line(),
        ]
        other = [f.form for f in self.sweep.fits if f.form != "chinchilla"]
        lines.append(f"Other forms: {', '.join(other) or 'none'} (.law(form))")
        if self.sweep.skipped:
            lines.append(f"Not fitted: {', '.join(self.sweep.skipped)} (.sweep.skipped says why)")
        lines.append(f"Plots: {' '.join(f'.{name}()' for name in PLOT_METHODS)}")
        return "\n".join(lines)

    def _law_lines(self) -> list[str]:
        if "chinchilla" not in self.forms:
            return [f"Chinchilla law: not fitted ({self.sweep.skipped.get('chinchilla', 'no runs')})"]
        fit = self.law()
        source = f"{self.bootstrap} bootstrap resamples" if fit.samples is not None else "sandwich"
        parts = [f"{name} {fit.params[name]:.3f} {_interval(fit, name)}" for name in ("alpha", "beta", "E")]
        return [f"Chinchilla law: {fits.law_text(fit)}", f"  {'  '.join(parts)}  95%, {source}"]

    def _isoflop_lines(self) -> list[str]:
        rows = self.sweep.isoflop
        a = checks.isoflop_exponent(rows) if rows else {"a": math.nan, "budgets": 0}
        b = checks.isoflop_exponent([replace(r, n_opt=r.d_opt) for r in rows]) if rows else a
        lines = [
            f"IsoFLOP minima (Approach 2, {a['budgets']} interior budgets): "
            f"N_opt ∝ C^{_exponent(a)}, D_opt ∝ C^{_exponent(b)}"
        ]
        if "chinchilla" in self.forms:
            p = self.law().params
            lines.append(f"  the law (Approach 3): N_opt ∝ C^{p['a_opt']:.3f}, D_opt ∝ C^{p['b_opt']:.3f}")
        return lines

    def _held_out_line(self) -> str:
        rows = self.sweep.extrapolation
        if not rows:
            return "Held-out: no check (too few runs to fit without the largest-compute ones)"
        errors = np.array([r.relative_error for r in rows])
        return (
            f"Held-out: fitted without its {len(rows)} largest-compute runs, the law misses them by "
            f"{np.mean(np.abs(errors)):.2%} (mean), worst {errors[np.argmax(np.abs(errors))]:+.2%}"
        )

    def plot_isoflop(self, ax=None):
        """Each budget's parabola in ln N and its minimum with a 95% interval; returns the Figure."""
        return _laid_out(plots.draw_isoflop(self.sweep, ax), ax)

    def plot_compute_optimal(self, axes=None):
        """N_opt and D_opt against C, Approaches 2 and 3, on a pair of Axes; returns the Figure."""
        return _laid_out(plots.draw_compute_optimal(self.sweep, axes), axes)

    def plot_contours(self, ax=None):
        """Loss contours of the fitted surface over (N, D), the runs and the efficient frontier."""
        return _laid_out(plots.draw_contours(self.sweep, ax), ax)

    def plot_extrapolation(self, ax=None):
        """The held-out runs' predicted against observed loss."""
        return _laid_out(plots.draw_extrapolation(self.sweep, ax), ax)

    def plot_loss(self, axis: str = "N", ax=None):
        """Loss against N (or D) with the law's curves at a few values of the other."""
        if axis not in ("N", "D"):
            raise ValueError(f"axis must be 'N' or 'D' (got {axis!r}).")
        return _laid_out(plots.draw_loss_against(self.sweep, axis, ax), ax)

    def plot_residuals(self, ax=None):
        """The Chinchilla law's log residuals against compute."""
        return _laid_out(plots.draw_residuals(self.sweep, ax), ax)

    def __repr__(self) -> str:
        return f"<RunsFit of {len(self.sweep.points.N)} runs: {self.verdict.headline}>"

    def __str__(self) -> str:
        return self.summary()

    def _repr_pretty_(self, printer, cycle: bool) -> None:  # IPython shows the summary
        printer.text(self.summary())


def _laid_out(figure, given):
    if given is None:  # a figure of our own: lay it out as the report does
        figure.tight_layout()
    return figure


def _span(values: np.ndarray) -> str:
    return f"{values.min():.3g}..{values.max():.3g}"


def _interval(fit: laws.FitResult, name: str) -> str:
    low, high = fit.ci_low.get(name), fit.ci_high.get(name)
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return "[no interval]"
    return f"[{low:.3f}, {high:.3f}]"


def _exponent(result: dict) -> str:
    if not math.isfinite(result["a"]):
        return "? (needs 2 budgets with an interior minimum)"
    if not math.isfinite(result["a_ci_low"]):
        return f"{result['a']:.3f}"
    return f"{result['a']:.3f} [{result['a_ci_low']:.3f}, {result['a_ci_high']:.3f}]"


def _findings(verdict: Verdict) -> list[str]:
    """Each finding wrapped to the summary's width, the block cut at MAX_FINDING_LINES."""
    lines: list[str] = []
    for shown, finding in enumerate(verdict.findings):
        wrapped = textwrap.wrap(
            f"[{finding.severity}] {finding.reason} Fix: {finding.fix}.",
            SUMMARY_WIDTH,
            initial_indent="  - ",
            subsequent_indent="    ",
        )
        if len(lines) + len(wrapped) > MAX_FINDING_LINES:
            lines.append(f"  ... and {len(verdict.findings) - shown} more in .verdict.findings")
            break
        lines.extend(wrapped)
    return lines
