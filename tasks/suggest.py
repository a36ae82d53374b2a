"""Which cells a sweep should train next: the Chinchilla fit of its finished cells, its bootstrap, and
the design of tasks.laws.design over candidate cells that the sweep can add without changing any
cell it has; the proposal as rows of the `suggestions` table.

Plain functions of data (no Prefect, no spec): flows/suggest.py builds the candidates from the spec.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from tasks import laws
from tasks.errors import InputError
from tasks.fits import SweepPoints, flops_per_token

MIN_DRAWS = 10  # bootstrap refits with positive exponents below which the interval means nothing
TARGET_COMPUTE_FACTOR = 100.0  # default target compute: this many times the sweep's largest cell
BUDGET_SHARE = 0.25  # default budget: this share of the FLOPs the sweep's cells took


class NoUsableFit(InputError):
    """The sweep's cells give no Chinchilla fit to design from; the message says why and what to do."""


@dataclass(frozen=True)
class Candidate:
    """A cell the sweep could add: its model size as the spec names it, N as the fit counts it, D,
    the training FLOPs per token in the fit's accounting, and (WSD) the trunk it would branch from."""

    size: Hashable
    params: float
    tokens: int
    flops_per_token: float
    trunk: Hashable | None = None


@dataclass(frozen=True)
class WsdCosts:
    """A WSD sweep's trunks: a new cell of an existing trunk retrains it up to the last branch point
    (the trunk's fingerprint changes); `longest`: the largest D of the cells each trunk has now."""

    cooldown_fraction: float
    longest: dict[Hashable, int] = field(default_factory=dict)


def set_cost(candidates: Sequence[Candidate], seeds: int, wsd: WsdCosts | None = None):
    """FLOPs (the fit's accounting) of training a set of candidates, each once per seed: D tokens
    each, or under WSD each touched trunk up to its longest branch point plus each new cooldown."""

    def cost(chosen: Sequence[int]) -> float:
        picked = [candidates[i] for i in chosen]
        if wsd is None:
            return seeds * sum(c.flops_per_token * c.tokens for c in picked)
        cooldowns = sum(c.flops_per_token * c.tokens for c in picked) * wsd.cooldown_fraction
        trunks: dict[Hashable, tuple[float, int]] = {}
        for c in picked:
            _, longest = trunks.get(c.trunk, (0.0, wsd.longest.get(c.trunk, 0)))
            trunks[c.trunk] = (c.flops_per_token, max(longest, c.tokens))
        stable = sum(f * longest for f, longest in trunks.values()) * (1 - wsd.cooldown_fraction)
        return seeds * (cooldowns + stable)

    return cost


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    @property
    def decades(self) -> float:
        """The width of the interval in decades, log10(high / low)."""
        return math.log10(self.high / self.low)

    def narrowed(self, ratio: float) -> Interval:
        """The interval around the same estimate, `ratio` times as wide in log space."""
        return Interval(
            self.estimate,
            self.estimate * (self.low / self.estimate) ** ratio,
            self.estimate * (self.high / self.estimate) ** ratio,
        )


@dataclass(frozen=True)
class ProposedCell:
    candidate: Candidate
    cost_flops: float  # what it adds to the set's cost (its trunk's too, for the first on a trunk)
    width_ratio: float  # the interval's expected width once it and those before it are trained


@dataclass(frozen=True)
class Proposal:
    objective: str
    target_flops: float
    budget_flops: float
    before: Interval
    cells: tuple[ProposedCell, ...]

    @property
    def cost_flops(self) -> float:
        return sum(cell.cost_flops for cell in self.cells)

    @property
    def expected_after(self) -> Interval:
        return self.before.narrowed(self.cells[-1].width_ratio if self.cells else 1.0)


def default_target(points: SweepPoints) -> float:
    return TARGET_COMPUTE_FACTOR * float(points.C.max())


def default_budget(points: SweepPoints, seeds: int = 1) -> float:
    return BUDGET_SHARE * float(points.C.sum()) * seeds


def usable_fit(
    points: SweepPoints,
    sweep_name: str,
    bootstrap: int,
    huber_delta: float,
    target_flops: float,
    objective: str,
) -> tuple[laws.FitResult, Interval]:
    """The Chinchilla fit with its bootstrap and the target's interval, or NoUsableFit saying why."""

    def refuse(why: str) -> NoUsableFit:
        return NoUsableFit(
            f"sweep {sweep_name}: no usable Chinchilla fit to design from ({why}); train more of its "
            "cells with scalelaw run, then ask again."
        )

    if len(points.N) == 0:
        raise refuse("no finished cells in the store")
    try:
        fit = laws.fit_chinchilla(
            points.N, points.D, points.loss, huber_delta=huber_delta, bootstrap=bootstrap
        )
    except laws.FitInputError as error:
        raise refuse(str(error).rstrip(".")) from None
    alpha, beta = fit.params["alpha"], fit.params["beta"]
    if not (alpha > 0 and beta > 0):
        raise refuse(f"alpha {alpha:.3g} and beta {beta:.3g} must both be positive")
    draws = (
        np.isfinite(fit.samples).all(axis=1)
        & (fit.sample_column("alpha") > 0)
        & (fit.sample_column("beta") > 0)
    )
    if draws.sum() < MIN_DRAWS:
        raise refuse(f"only {int(draws.sum())} of {bootstrap} bootstrap refits have positive exponents")
    try:
        flops = flops_per_token(points)
    except laws.FitInputError as error:  # N and C counted so that a cell costs less than 6 N per token
        raise refuse(str(error).rstrip(".")) from None
    interval = Interval(*laws.target_interval(fit, target_flops, objective, flops))
    if not all(math.isfinite(v) and v > 0 for v in (interval.estimate, interval.low, interval.high)):
        raise refuse(f"the {objective} interval at {target_flops:.3g} FLOPs is not finite")
    return fit, interval


def propose(
    points: SweepPoints,
    fit: laws.FitResult,
    before: Interval,
    candidates: Sequence[Candidate],
    *,
    objective: str,
    target_flops: float,
    budget_flops: float,
    max_cells: int,
    seeds: int = 1,
    wsd: WsdCosts | None = None,
) -> Proposal:
    """The cells of `candidates` that most narrow the interval (tasks.laws.design_cells)."""
    design = laws.design_cells(
        fit,
        points.N,
        points.D,
        [c.params for c in candidates],
        [c.tokens for c in candidates],
        compute=target_flops,
        budget=budget_flops,
        max_cells=max_cells,
        set_cost=set_cost(candidates, seeds, wsd),
        objective=objective,
        flops=flops_per_token(points),
    )
    cells = tuple(
        ProposedCell(candidates[i], cost, ratio)
        for i, cost, ratio in zip(design.chosen, design.marginal_cost, design.width_ratio, strict=True)
    )
    return Proposal(objective, target_flops, budget_flops, before, cells)


def proposal_rows(
    proposal: Proposal, sweep_name: str, round_number: int, after: Interval | None, describe
) -> list[dict]:
    """One `suggestions` row per proposed cell; `after`: the measured interval once trained (None
    before); `describe(size)`: the model size as text."""
    before, expected = proposal.before, proposal.expected_after
    common = {
        "sweep_name": sweep_name,
        "round": round_number,
        "objective": proposal.objective,
        "target_flops": proposal.target_flops,
        "budget_flops": proposal.budget_flops,
        "estimate_before": before.estimate,
        "low_before": before.low,
        "high_before": before.high,
        "expected_low_after": expected.low,
        "expected_high_after": expected.high,
        "estimate_after": after and after.estimate,
        "low_after": after and after.low,
        "high_after": after and after.high,
    }
    return [
        {
            **common,
            "rank": rank,
            "model_size": describe(cell.candidate.size),
            "params": cell.candidate.params,
            "tokens": cell.candidate.tokens,
            "cost_flops": cell.cost_flops,
            "expected_width_ratio": cell.width_ratio,
        }
        for rank, cell in enumerate(proposal.cells, start=1)
    ]
