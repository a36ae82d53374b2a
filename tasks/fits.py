"""From a sweep's `runs` rows to fitted laws: which points each form sees, and the fits table."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tasks import checks, laws

PARAMS_COLUMN = {"nonembedding": "params_nonembedding", "total": "params_total"}
COMPUTE_COLUMN = {"6nd": "flops_6nd", "with_attention": "flops_with_attention"}
TARGET_COLUMN = {"nats": "val_loss_nats", "bits_per_byte": "val_bits_per_byte"}


@dataclass(frozen=True)
class SweepPoints:
    """The finished cells of a sweep as arrays; N and C as the fit's accounting chose them."""

    cell_ids: list[str]
    N: np.ndarray
    D: np.ndarray
    C: np.ndarray
    loss: np.ndarray  # in the fit's target: nats per token or bits per byte
    params_kind: str
    compute_kind: str
    target: str = "nats"
    seeds: np.ndarray = field(default_factory=lambda: np.array([], dtype=int))
    excluded: list[str] = field(default_factory=list)  # "cell_id (status)" of cells left out


@dataclass(frozen=True)
class OptimalAllocation:
    """The compute-optimal model size and data at one budget (Approach 3), with N_opt's 95% band from
    the bootstrap (nan without one)."""

    flops: float  # in the fit's compute accounting
    N_opt: float
    N_opt_low: float
    N_opt_high: float
    D_opt: float
    tokens_per_param: float
    loss: float


@dataclass(frozen=True)
class SweepFits:
    points: SweepPoints
    fits: list[laws.FitResult]
    skipped: dict[str, str]  # form -> why it was not fitted
    optimal: list[OptimalAllocation]  # by budget, with bands when bootstrapped
    extrapolation: list[checks.HeldOutCell]  # held-out largest cells: observed against predicted loss
    isoflop: list[checks.IsoflopProfile]  # Chinchilla's Approach 2: per budget (or compute band)


def points_from_runs(
    rows: list[dict], params_kind: str, compute_kind: str, target: str = "nats"
) -> SweepPoints:
    """Points of the cells that finished `ok`; the others are listed as excluded."""
    ok = [r for r in rows if r["status"] == "ok"]
    excluded = [f"{r['cell_id']} ({r['status']})" for r in rows if r["status"] != "ok"]
    return SweepPoints(
        cell_ids=[r["cell_id"] for r in ok],
        N=np.array([r[PARAMS_COLUMN[params_kind]] for r in ok], dtype=float),
        D=np.array([r["tokens_seen"] for r in ok], dtype=float),
        C=np.array([r[COMPUTE_COLUMN[compute_kind]] for r in ok], dtype=float),
        loss=np.array([r[TARGET_COLUMN[target]] for r in ok], dtype=float),
        params_kind=params_kind,
        compute_kind=compute_kind,
        target=target,
        seeds=np.array([r["seed"] for r in ok], dtype=int),
        excluded=excluded,
    )


def best_per(key: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Indices of the lowest-loss point for each distinct value of `key`."""
    return np.array([np.flatnonzero(key == value)[np.argmin(loss[key == value])] for value in np.unique(key)])


def compute_frontier(compute: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Indices of the points that beat every point of smaller compute (the loss-compute frontier)."""
    order = np.argsort(compute)
    frontier, best = [], np.inf
    for index in order:
        if loss[index] < best:
            frontier.append(index)
            best = loss[index]
    return np.array(frontier)


def fit_sweep(
    points: SweepPoints,
    bootstrap: int = 0,
    holdout_fraction: float = 0.25,
    huber_delta: float = laws.HUBER_DELTA_CHINCHILLA,
    elsewhere: Executor | None = None,
) -> SweepFits:
    """Every form of the laws registry that the points can determine (the others skipped, with the
    reason), the compute-optimal allocation, and an extrapolation check on the largest cells. `huber_delta` is
    the Chinchilla form's Huber threshold on log loss (Hoffmann et al.'s 1e-3 by default). With
    `elsewhere` (another process), the Chinchilla form, about half the work with its bootstrap, is fitted
    there while the rest is fitted here; the results are the same."""
    everything = np.arange(len(points.N))
    frontier = compute_frontier(points.C, points.loss)
    # Which cells each registered form sees, and its options: the one-axis laws the best cell per N,
    # per D or on the loss-compute frontier; C-laws the compute of the fit's accounting, not 6 N D.
    # Kaplan is fitted by least squares, without a bootstrap: 0.1 s on a 30-cell sweep.
    subsets = {
        "power_law_N": best_per(points.N, points.loss),
        "power_law_D": best_per(points.D, points.loss),
        "power_law_C": frontier,
    }
    options = {
        "chinchilla": {"bootstrap": bootstrap, "huber_delta": huber_delta},
        "power_law_C": {"compute": points.C[frontier]},
        "multiplicative": {"compute": points.C},
    }

    def fitted(form: str) -> Future:
        cells = subsets.get(form, everything)
        arguments = (form, points.N[cells], points.D[cells], points.loss[cells])
        run = elsewhere.submit if elsewhere and form == "chinchilla" else _run_here
        return run(laws.fit, *arguments, **options.get(form, {}))

    chinchilla = fitted("chinchilla")  # first, so that it fits elsewhere while the others fit here
    futures = {form: chinchilla if form == "chinchilla" else fitted(form) for form in laws.FORMS}
    held_out = checks.held_out(points.N, points.C, holdout_fraction)
    extrapolation = checks.extrapolation_rows(
        points.cell_ids, points.N, points.D, points.C, points.loss, held_out, huber_delta
    )
    isoflop = checks.isoflop_rows(points.N, points.D, points.C, points.loss) if len(points.N) else []
    fits, skipped = [], {}
    for form, future in futures.items():
        try:
            fits.append(future.result())
        except laws.FitInputError as error:  # the cells cannot determine the form; anything else is a bug
            skipped[form] = str(error)
    return SweepFits(points, fits, skipped, _optimal_rows(points, fits), extrapolation, isoflop)


def _run_here(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
    """`function(*args, **kwargs)` run now, as a done future (its result or its exception)."""
    future: Future = Future()
    try:
        future.set_result(function(*args, **kwargs))
    except Exception as error:
        future.set_exception(error)
    return future


def flops_per_token(points: SweepPoints) -> laws.FlopsPerToken:
    """The per-token FLOPs of the fit's accounting, f(N) = C / D as the points count C (6 N when they
    count 6 N D); raises FitInputError when N and C are counted so that C / D < 6 N."""
    return laws.flops_per_token_from_runs(points.N, points.D, points.C)


def _optimal_rows(points: SweepPoints, results: list[laws.FitResult]) -> list[OptimalAllocation]:
    chinchilla = next((f for f in results if f.form == "chinchilla"), None)
    if chinchilla is None or not (chinchilla.params["alpha"] > 0 and chinchilla.params["beta"] > 0):
        return []  # a fit without positive exponents has no finite optimum
    try:  # the optimum along the fit's own budgets (C as the points count it), not along 6 N D
        flops = flops_per_token(points)
    except laws.FitInputError:  # N and C counted differently: no allocation to give (the report says why)
        return []
    budgets = np.geomspace(points.C.min(), points.C.max() * 100, 24)
    optimal = laws.compute_optimal(chinchilla, budgets, flops)
    low, high = optimal.N_opt_ci or (np.full_like(optimal.N_opt, np.nan),) * 2
    return [
        OptimalAllocation(
            flops=float(c),
            N_opt=float(n),
            N_opt_low=float(lo),
            N_opt_high=float(hi),
            D_opt=float(d),
            tokens_per_param=float(t),
            loss=float(loss),
        )
        for c, n, lo, hi, d, t, loss in zip(
            optimal.compute,
            optimal.N_opt,
            low,
            high,
            optimal.D_opt,
            optimal.tokens_per_param,
            optimal.loss,
            strict=True,
        )
    ]


def fit_rows(fit_id: str, sweep: SweepFits) -> list[dict]:
    """One row per fitted parameter, for the `fits` table; skipped forms get one row saying why."""
    rows = [
        {
            "fit_id": fit_id,
            "form": fit.form,
            "parameter": name,
            "estimate": estimate,
            "stderr": fit.stderr.get(name),
            "ci_low": fit.ci_low.get(name),
            "ci_high": fit.ci_high.get(name),
            "objective": fit.objective,
            "n_points": fit.n_points,
            "converged": fit.converged,
            "params_kind": sweep.points.params_kind,
            "compute_kind": sweep.points.compute_kind,
            "target": sweep.points.target,
            "note": fit.note,
        }
        for fit in sweep.fits
        for name, estimate in fit.params.items()
    ]
    for form, why in sweep.skipped.items():
        rows.append(
            {
                "fit_id": fit_id,
                "form": form,
                "parameter": None,
                "n_points": len(sweep.points.cell_ids),
                "converged": False,
                "params_kind": sweep.points.params_kind,
                "compute_kind": sweep.points.compute_kind,
                "target": sweep.points.target,
                "note": f"not fitted: {why}",
            }
        )
    return rows


def load_sweep_fits(
    run_rows: list[dict],
    fit_table_rows: list[dict],
    optimal: list[OptimalAllocation],
    extrapolation: list[checks.HeldOutCell],
    isoflop: list[checks.IsoflopProfile],
) -> SweepFits:
    """Rebuild the fitted laws from the stored tables (estimates and intervals; no residuals)."""
    first = fit_table_rows[0]
    points = points_from_runs(
        run_rows, first["params_kind"], first["compute_kind"], first.get("target") or "nats"
    )
    by_form: dict[str, list[dict]] = {}
    for row in fit_table_rows:
        by_form.setdefault(row["form"], []).append(row)
    results, skipped = [], {}
    for form, rows in by_form.items():
        if rows[0]["parameter"] is None:
            skipped[form] = rows[0]["note"].removeprefix("not fitted: ")
            continue
        results.append(
            laws.FitResult(
                form=form,
                params={r["parameter"]: r["estimate"] for r in rows},
                stderr={r["parameter"]: r["stderr"] for r in rows},
                ci_low={r["parameter"]: r["ci_low"] for r in rows},
                ci_high={r["parameter"]: r["ci_high"] for r in rows},
                objective=rows[0]["objective"],
                n_points=rows[0]["n_points"],
                converged=rows[0]["converged"],
                residuals=np.array([]),
                note=rows[0]["note"],
            )
        )
    return SweepFits(points, results, skipped, optimal, extrapolation, isoflop)


def law_text(fit: laws.FitResult) -> str:
    """The fitted law as one readable line."""
    p = fit.params
    if fit.form == "chinchilla":
        return (
            f"L(N, D) = {p['E']:.3f} + {p['A']:.4g} / N^{p['alpha']:.3f} + {p['B']:.4g} / D^{p['beta']:.3f}"
        )
    if fit.form.startswith("power_law_"):
        x = fit.form.removeprefix("power_law_")
        return f"L({x}) = {p['E']:.3f} + {p['A']:.4g} · {x}^-{p['alpha']:.3f}"
    if fit.form == "kaplan":
        return (
            f"L(N, D) = [({p['N_c']:.3g}/N)^({p['alpha_N']:.3f}/{p['alpha_D']:.3f}) "
            f"+ {p['D_c']:.3g}/D]^{p['alpha_D']:.3f}"
        )
    terms = [
        f"{axis}^{p[name]:.3f}"
        for axis, name in zip("NDC", "bcd", strict=True)
        if np.isfinite(p.get(name, np.nan))
    ]
    return f"L = {p['a']:.4g} · {' · '.join(terms)}"
