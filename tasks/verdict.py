"""Whether a sweep's law is to be trusted: each check that fails, with the reason in numbers and the
cells that would fix it. A law is trustworthy when no check finds it `untrusted`; a `caution` is a
limit to state alongside the law (E not identified), not a reason to discard it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tasks import checks
from tasks.fits import SweepFits

UNTRUSTED, CAUTION = "untrusted", "caution"
MIN_SPAN_DECADES = 1.0  # N and D should each span a decade
E_AT_BOUND_SHARE = 1e-3  # E below this share of the smallest loss sits at its bound of 0
EXPONENT_EDGES = (0.05, 2.0)  # exponents outside these are at the edge of what the data can say
MAX_EXPONENT_INTERVAL = 0.3  # widest acceptable 95% interval of alpha or beta
MAX_EXTRAPOLATION_ERROR = 0.02  # mean |relative error| on the held-out cells
MAX_SEED_SPREAD = 0.02  # largest relative spread of one cell's loss across seeds
MAX_APPROACH_GAP = 0.15  # |Approach 2's a - Approach 3's beta / (alpha + beta)|
MIN_INTERIOR_BUDGETS = 3


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str  # UNTRUSTED or CAUTION
    reason: str
    fix: str


@dataclass(frozen=True)
class Verdict:
    findings: tuple[Finding, ...]

    @property
    def trustworthy(self) -> bool:
        return not any(f.severity == UNTRUSTED for f in self.findings)

    @property
    def headline(self) -> str:
        untrusted = sum(f.severity == UNTRUSTED for f in self.findings)
        cautions = len(self.findings) - untrusted
        if untrusted:
            return f"Not to be trusted: {untrusted} check(s) failed; add the cells each fix names and rerun."
        if cautions:
            return f"Trustworthy, with {cautions} caution(s) to state alongside the law."
        return "Trustworthy: every check passed."


def judge(sweep: SweepFits) -> Verdict:
    """Every check of the sweep's Chinchilla-form law and its IsoFLOP profiles."""
    chinchilla = next((f for f in sweep.fits if f.form == "chinchilla"), None)
    if chinchilla is None:
        why = sweep.skipped.get("chinchilla", "no cells finished").rstrip(".")
        return Verdict((Finding("no_fit", UNTRUSTED, f"The Chinchilla form was not fitted: {why}.", _MORE),))
    findings = [
        *_span(sweep),
        *_bounds(sweep, chinchilla.params),
        *_intervals(chinchilla),
        *_isoflop_edges(sweep),
        *_extrapolation(sweep),
        *_seeds(sweep),
        *_approaches(sweep, chinchilla.params),
    ]
    return Verdict(tuple(findings))


_MORE = "train more cells: IsoFLOP budgets over at least a decade of compute, 5 or more sizes each"


def _span(sweep: SweepFits) -> list[Finding]:
    found = []
    for axis, values in (("N", sweep.points.N), ("D", sweep.points.D)):
        decades = math.log10(values.max() / values.min()) if len(values) else 0.0
        if decades < MIN_SPAN_DECADES:
            found.append(
                Finding(
                    f"{axis}_span",
                    UNTRUSTED,
                    f"{axis} spans {decades:.2f} decades ({values.min():.3g} to {values.max():.3g}), "
                    f"under the {MIN_SPAN_DECADES:g} a law needs.",
                    f"add cells with {axis} up to {values.min() * 10**MIN_SPAN_DECADES:.3g} "
                    f"(or down to {values.max() / 10**MIN_SPAN_DECADES:.3g})",
                )
            )
    return found


def _bounds(sweep: SweepFits, params: dict[str, float]) -> list[Finding]:
    found = []
    if params["E"] < E_AT_BOUND_SHARE * sweep.points.loss.min():
        found.append(
            Finding(
                "E_unidentified",
                CAUTION,
                f"E sits at its bound 0: the smallest loss, {sweep.points.loss.min():.3f}, lies too far "
                "above the entropy floor for the data to place it, so E is not identified (the exponents "
                "still are).",
                "larger models on more tokens would approach the floor; read E as unknown, not as 0",
            )
        )
    low, high = EXPONENT_EDGES
    for name in ("alpha", "beta"):
        if not low <= params[name] <= high:
            found.append(
                Finding(
                    f"{name}_edge",
                    UNTRUSTED,
                    f"{name} = {params[name]:.3g} lies outside {low:g} .. {high:g}: the data cannot "
                    "place it.",
                    "add model sizes (alpha) or data sizes (beta) spanning a decade around the optimum",
                )
            )
    return found


def _intervals(chinchilla) -> list[Finding]:
    found = []
    for name in ("alpha", "beta"):
        low, high = chinchilla.ci_low.get(name), chinchilla.ci_high.get(name)
        if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
            found.append(
                Finding(
                    f"{name}_interval",
                    CAUTION,
                    f"{name} has no interval.",
                    "fit with bootstrap resamples (fit.bootstrap) to know how well it is determined",
                )
            )
        elif high - low > MAX_EXPONENT_INTERVAL:
            found.append(
                Finding(
                    f"{name}_interval",
                    UNTRUSTED,
                    f"{name}'s 95% interval {low:.3f} .. {high:.3f} is {high - low:.2f} wide "
                    f"(at most {MAX_EXPONENT_INTERVAL} is useful).",
                    "add seeds or sizes per budget, or a budget beyond the largest",
                )
            )
    return found


def _isoflop_edges(sweep: SweepFits) -> list[Finding]:
    rows = sweep.isoflop
    interior = sum(r.interior for r in rows)
    severity = UNTRUSTED if interior < MIN_INTERIOR_BUDGETS else CAUTION
    found = []
    for r in rows:
        if r.interior:
            continue
        side = "larger" if math.isfinite(r.n_opt) and r.n_opt >= r.n_max else "smaller"
        where = f"at N = {r.n_opt:.3g}" if math.isfinite(r.n_opt) else "nowhere"
        found.append(
            Finding(
                "isoflop_edge",
                severity,
                f"The IsoFLOP minimum of budget {r.budget_flops:.3g} FLOPs lies {where}, not inside "
                f"its sampled sizes {r.n_min:.3g} .. {r.n_max:.3g} ({interior} of {len(rows)} "
                "budgets are).",
                f"add {side} model sizes at that budget",
            )
        )
    if rows and interior < MIN_INTERIOR_BUDGETS and not found:
        found.append(
            Finding(
                "isoflop_budgets",
                UNTRUSTED,
                f"Only {len(rows)} compute budget(s); Approach 2 needs {MIN_INTERIOR_BUDGETS}.",
                "add budgets",
            )
        )
    return found


def _extrapolation(sweep: SweepFits) -> list[Finding]:
    if not sweep.extrapolation:
        return [Finding("extrapolation", CAUTION, "No extrapolation check could be made.", _MORE)]
    errors = np.array([r.relative_error for r in sweep.extrapolation])
    mean_error = float(np.mean(np.abs(errors)))
    if mean_error <= MAX_EXTRAPOLATION_ERROR:
        return []
    return [
        Finding(
            "extrapolation",
            UNTRUSTED,
            f"Fitted without the {len(errors)} largest-compute cells, the law misses them by "
            f"{mean_error:.1%} on average (worst {errors[np.argmax(np.abs(errors))]:+.1%}; at most "
            f"{MAX_EXTRAPOLATION_ERROR:.0%} is acceptable).",
            "add budgets between the largest and the rest, or more sizes per budget",
        )
    ]


def _seeds(sweep: SweepFits) -> list[Finding]:
    points = sweep.points
    if len(np.unique(points.seeds)) < 2:
        return []
    spreads = []
    for n, d in set(zip(points.N, points.D, strict=True)):
        losses = points.loss[np.isclose(points.N, n) & np.isclose(points.D, d)]
        if len(losses) > 1:
            spreads.append((losses.max() - losses.min()) / losses.mean())
    if not spreads or max(spreads) <= MAX_SEED_SPREAD:
        return []
    return [
        Finding(
            "seeds",
            UNTRUSTED,
            f"Seeds disagree: one cell's loss spreads {max(spreads):.1%} across seeds (mean "
            f"{np.mean(spreads):.1%}, at most {MAX_SEED_SPREAD:.0%} is acceptable).",
            "tune the learning rate per size (train.lr_by_size) or add seeds and average them",
        )
    ]


def _approaches(sweep: SweepFits, params: dict[str, float]) -> list[Finding]:
    approach_2 = checks.isoflop_exponent(sweep.isoflop)["a"]
    approach_3 = params["beta"] / (params["alpha"] + params["beta"])
    if not math.isfinite(approach_2) or abs(approach_2 - approach_3) <= MAX_APPROACH_GAP:
        return []
    return [
        Finding(
            "approaches",
            UNTRUSTED,
            f"Approach 2 (IsoFLOP minima) gives N_opt ∝ C^{approach_2:.3f}, Approach 3 (the fitted law) "
            f"C^{approach_3:.3f}: they differ by more than {MAX_APPROACH_GAP}.",
            "add sizes around each budget's minimum and a further budget",
        )
    ]
