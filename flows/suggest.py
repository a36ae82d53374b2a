"""`scalelaw suggest`: the cells a sweep should train next, as a spec that extends it; with rounds,
suggest, train, refit and repeat within a total budget. Each round is recorded in the `suggestions`
table and published as a Prefect table artifact.

Wiring only: the candidates come from the spec and its stored plan, the fit and the design from
tasks/suggest.py and tasks/laws/design.py."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console
from rich.table import Table

from flows.plan import SweepPlan, model_shape
from flows.spec import MAX_BOOTSTRAP, PRESETS, ExtraCell, SweepSpec, validate_spec
from flows.spec_errors import describe_validation_error
from flows.status import stored_plan
from flows.sweep import FLOW_RESULTS, CellsFailed, artifact_key, scaling_sweep
from storage import datasets
from storage.store import Store, fingerprint
from tasks import laws, suggest
from tasks.errors import InputError
from tasks.fits import SweepPoints, points_from_runs
from tasks.model import ModelShape, training_flops_per_token

CANDIDATES_PER_OCTAVE = 2  # D values per doubling that each model size is offered at
DEFAULT_BOOTSTRAP = 200  # for sweeps whose spec asks for none


class SuggestOptions(BaseModel):
    """What `scalelaw suggest` asks of the design, checked at the CLI's edge."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_flops: float | None = Field(None, gt=0)
    budget_flops: float | None = Field(None, gt=0)
    cells: int = Field(8, ge=1, le=1000)
    objective: Literal["n_opt", "loss_at_target"] = "n_opt"
    rounds: int = Field(0, ge=0, le=100)
    bootstrap: int | None = Field(None, ge=20, le=MAX_BOOTSTRAP)
    output: str | None = None


_OPTION_NAMES = {"target_flops": "--target-compute", "budget_flops": "--flops", "rounds": "--loop"}


def checked_options(**options: Any) -> SuggestOptions:
    """The options as a SuggestOptions, or an InputError naming the option and the fix."""
    try:
        return SuggestOptions(**options)
    except ValidationError as error:
        sentence = describe_validation_error(error).removeprefix("spec field ")
        name = sentence.split(":", 1)[0]
        raise InputError(sentence.replace(name, _OPTION_NAMES.get(name, f"--{name}"), 1)) from None


@dataclass(frozen=True)
class SweepState:
    """A sweep as the store holds it now: its finished cells, their fit and the target's interval."""

    spec: SweepSpec
    plan: SweepPlan
    points: SweepPoints
    fit: laws.FitResult
    interval: suggest.Interval


def describe(size: int | ModelShape) -> str:
    if isinstance(size, int):
        return f"{size:,}"
    return f"{size.d_model}x{size.n_layers}"  # d_model x n_layers


def sweep_state(spec: SweepSpec, target_flops: float | None, objective: str, bootstrap: int) -> SweepState:
    """Read the spec's finished cells from the store and fit them; NoUsableFit when they cannot."""
    store = Store(spec.execution.store)
    plan = stored_plan(spec)
    rows = [
        datasets.RUNS.rows(store, cell.fp)[0]
        for cell in plan.of("cells")
        if store.is_complete(datasets.Kind.CELLS, cell.fp)
    ]
    fit_spec = spec.fit
    points = points_from_runs(rows, fit_spec.params_kind, fit_spec.compute_kind, fit_spec.target)
    target = target_flops or (suggest.default_target(points) if len(points.C) else math.nan)
    fit, interval = suggest.usable_fit(points, spec.name, bootstrap, fit_spec.huber_delta, target, objective)
    return SweepState(spec, plan, points, fit, interval)


def candidates(state: SweepState) -> tuple[list[suggest.Candidate], suggest.WsdCosts | None]:
    """Every ladder size (grid.model_sizes) at D values spaced CANDIDATES_PER_OCTAVE per doubling, from
    half the sweep's smallest D to its training split (4x its largest D with repeated epochs), less
    the cells it has; under WSD, a size's new D no smaller than its smallest, so that its trunk keeps
    its batch and warmup and its cells their ids."""
    spec, plan = state.spec, state.plan
    store = Store(spec.execution.store)
    train_tokens = store.marker(datasets.Kind.TOKENS, plan.step("tokens").fp)["train_tokens"]
    cell_plans = plan.cell_plans
    vocab, context = cell_plans[0].vocab_size, spec.train.context
    existing = {(p.shape, p.tokens_target) for p in cell_plans}
    longest = {p.shape: max(q.tokens_target for q in cell_plans if q.shape == p.shape) for p in cell_plans}
    shortest = {p.shape: min(q.tokens_target for q in cell_plans if q.shape == p.shape) for p in cell_plans}
    lowest = max(min(t for _, t in existing) // 2, spec.train.min_steps * context)
    highest = 4 * max(t for _, t in existing) if spec.grid.allow_repeated_epochs else train_tokens
    count = max(2, math.ceil(CANDIDATES_PER_OCTAVE * math.log2(highest / lowest)) + 1)
    tokens = sorted({int(t) // context * context for t in np.geomspace(lowest, highest, count)})
    wsd = spec.train.schedule == "wsd"
    found = []
    for size in dict.fromkeys(spec.grid.model_sizes):
        shape = model_shape(size)
        params = (
            shape.params_nonembedding()
            if spec.fit.params_kind == "nonembedding"
            else shape.params_total(vocab)
        )
        per_token = training_flops_per_token(shape, vocab, context)[spec.fit.compute_kind]
        for d in tokens:
            if wsd and d < shortest.get(shape, 0):
                continue
            if any(shape == s and abs(d / t - 1) < 0.02 for s, t in existing):
                continue
            found.append(suggest.Candidate(size, params, d, per_token, shape if wsd else None))
    costs = suggest.WsdCosts(spec.train.cooldown_fraction, longest) if wsd else None
    return found, costs


def extended(spec: SweepSpec, proposal: suggest.Proposal) -> SweepSpec:
    """The spec with the proposed cells appended to grid.extra_cells."""
    data = spec.model_dump()
    data["grid"]["extra_cells"] = [
        *spec.grid.extra_cells,
        *(ExtraCell(model_size=cell.candidate.size, tokens=cell.candidate.tokens) for cell in proposal.cells),
    ]
    return validate_spec(data)


def write_spec(spec: SweepSpec, path: Path) -> Path:
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
    return path


def record(store: Store, rows: list[dict]) -> str:
    """Publish one round's rows as a `suggestions` artifact (content-addressed); its id."""
    suggestion_id = fingerprint(datasets.Kind.SUGGESTIONS, rows)
    rows = [{"suggestion_id": suggestion_id, **row} for row in rows]

    def build(out: Path) -> dict:
        datasets.SUGGESTIONS.write(rows, out)
        return {
            "fp": suggestion_id,
            "sweep_name": rows[0]["sweep_name"] if rows else None,
            "cells": len(rows),
        }

    store.publish(datasets.Kind.SUGGESTIONS, suggestion_id, build)
    return suggestion_id


def proposal_table(proposal: suggest.Proposal) -> list[dict[str, str]]:
    """The proposed cells as text, for the terminal and the Prefect artifact: each with its cost, the
    interval's expected width once it and those before it are trained, and its expected reduction."""
    decades, rows, previous = proposal.before.decades, [], 1.0
    for rank, cell in enumerate(proposal.cells, start=1):
        rows.append(
            {
                "rank": str(rank),
                "model size": describe(cell.candidate.size),
                "N": f"{cell.candidate.params:,.0f}",
                "D (tokens)": f"{cell.candidate.tokens:,}",
                "cost (FLOPs)": f"{cell.cost_flops:.3g}",
                "width after (decades)": f"{decades * cell.width_ratio:.3f}",
                "reduction (decades)": f"{decades * (previous - cell.width_ratio):.3f}",
            }
        )
        previous = cell.width_ratio
    return rows


def publish_artifact(spec: SweepSpec, proposal: suggest.Proposal, round_number: int) -> None:
    before, expected = proposal.before, proposal.expected_after
    create_table_artifact(
        proposal_table(proposal),
        key=artifact_key("suggest", spec.name),
        description=(
            f"Round {round_number}: {len(proposal.cells)} cells, {proposal.cost_flops:.3g} of "
            f"{proposal.budget_flops:.3g} FLOPs; {proposal.objective} at {proposal.target_flops:.3g} FLOPs "
            f"{before.low:.4g} .. {before.high:.4g} now, {expected.low:.4g} .. {expected.high:.4g} expected."
        ),
    )


def _round(
    state: SweepState, proposal: suggest.Proposal, after: suggest.Interval | None, number: int
) -> dict:
    store = Store(state.spec.execution.store)
    rows = suggest.proposal_rows(proposal, state.spec.name, number, after, describe)
    publish_artifact(state.spec, proposal, number)
    return {
        "round": number,
        "suggestion_id": record(store, rows) if rows else None,
        "cells": rows,
        "table": proposal_table(proposal),
        "before": proposal.before,
        "expected": proposal.expected_after,
        "after": after,
        "cost_flops": proposal.cost_flops,
    }


@flow(name="suggest-cells", **FLOW_RESULTS)
def suggest_cells(
    spec: SweepSpec = PRESETS["default"],
    target_flops: float | None = None,
    budget_flops: float | None = None,
    cells: int = 8,
    objective: Literal["n_opt", "loss_at_target"] = "n_opt",
    rounds: int = 0,
    bootstrap: int | None = None,
    output: str | None = None,
) -> dict[str, Any]:
    """Propose up to `cells` new cells costing at most `budget_flops` (default: a quarter of the sweep's
    FLOPs) that most narrow the interval of N_opt (or of the loss there) at `target_flops` (default:
    100x the largest cell), and write the spec that extends the sweep with them to `output`. With
    `rounds` > 0: that many rounds of suggest, train and refit, sharing `budget_flops`."""
    draws = bootstrap or spec.fit.bootstrap or DEFAULT_BOOTSTRAP
    state = sweep_state(spec, target_flops, objective, draws)
    target = target_flops or suggest.default_target(state.points)
    budget = budget_flops or suggest.default_budget(state.points)
    path = Path(output or f"{spec.name}-suggested.yaml")
    history, left, failed = [], budget, None
    for number in range(1, rounds + 1) if rounds else [0]:
        proposal = _proposal(state, target, left / max(1, rounds - number + 1), cells, objective)
        if not proposal.cells:
            get_run_logger().info("round %d: no candidate fits the budget left (%.3g FLOPs)", number, left)
            break
        spec = extended(spec, proposal)
        write_spec(spec, path)
        after = None
        if rounds:
            try:
                scaling_sweep(spec)
            except CellsFailed as error:  # the cells that finished still count; the loop stops here
                failed = str(error)
            state = sweep_state(spec, target, objective, draws)
            after = state.interval
        history.append(_round(state, proposal, after, number))
        left -= proposal.cost_flops
        if failed:
            break
    summary = {"spec": str(path), "target_flops": target, "budget_flops": budget, "rounds": history}
    return summary | {"failed": failed}


def _proposal(
    state: SweepState, target: float, budget: float, cells: int, objective: str
) -> suggest.Proposal:
    found, wsd = candidates(state)
    return suggest.propose(
        state.points,
        state.fit,
        state.interval,
        found,
        objective=objective,
        target_flops=target,
        budget_flops=budget,
        max_cells=cells,
        seeds=len(state.spec.grid.seeds),
        wsd=wsd,
    )


def print_summary(summary: dict[str, Any], console: Console) -> None:
    """Each round's cells, cost and interval, and the spec to run."""
    for entry in summary["rounds"]:
        before, expected, after = entry["before"], entry["expected"], entry["after"]
        table = Table(title=f"round {entry['round']}: proposed cells" if entry["round"] else "proposed cells")
        for column in entry["table"][0]:
            table.add_column(column, justify="right")
        for row in entry["table"]:
            table.add_row(*row.values())
        console.print(table)
        what = "N_opt" if entry["cells"][0]["objective"] == "n_opt" else "loss"
        console.print(
            f"{what} at {summary['target_flops']:.3g} FLOPs: {_interval_text(before)} now, "
            f"{_interval_text(expected)} expected; cells cost {entry['cost_flops']:.3g} FLOPs",
            highlight=False,
        )
        if after is not None:
            console.print(f"  after training them: {_interval_text(after)}", highlight=False)
    if summary["failed"]:
        console.print(
            f"[red]{summary['failed']}[/red]; rerun scalelaw run --spec {summary['spec']} to retry them."
        )
    if not summary["rounds"]:
        console.print(
            f"no candidate cell fits the budget of {summary['budget_flops']:.3g} FLOPs; raise --flops."
        )
        return
    console.print(
        f"spec: {summary['spec']} (scalelaw run --spec {summary['spec']} trains only the new cells)"
    )


def _interval_text(interval: suggest.Interval) -> str:
    return (
        f"{interval.estimate:.4g} ({interval.low:.4g} .. {interval.high:.4g}, {interval.decades:.3f} decades)"
    )
