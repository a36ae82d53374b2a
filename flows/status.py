"""Which cells of a spec's grid the store holds, found from fingerprints alone (no Prefect, no work)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

from rich.table import Table

from flows.plan import SweepPlan, cell_plans, resolved_plan
from flows.spec import SweepSpec
from storage.store import Store
from tasks.cell import CellPlan
from tasks.identity import step_fingerprint, work_dir
from tasks.model import ModelShape, training_flops_per_token

STATE_STYLE = {
    "done": "green",
    "running": "yellow",
    "interrupted": "magenta",
    "failed": "red",
    "diverged": "red",
    "missing": "dim",
}


@dataclass(frozen=True)
class CellState:
    cell_id: str | None
    params: int
    tokens: int
    seed: int
    state: str  # one of STATE_STYLE's
    val_loss_nats: float | None = None
    train_seconds: float | None = None
    error: str | None = None
    budget_flops: float | None = None  # IsoFLOP grids: the budget the cell spends


def stored_plan(spec: SweepSpec) -> SweepPlan:
    """The spec's plan as far as the store holds its data steps' records."""
    store = Store(spec.execution.store)
    return resolved_plan(spec, store.location, lambda step: store.marker(step.kind, step.fp))


def grid_status(spec: SweepSpec, plan: SweepPlan | None = None) -> list[CellState]:
    """Every cell of the spec's grid with its state; all missing while the data is not prepared.
    `plan`: the spec's `stored_plan`, when already read."""
    store = Store(spec.execution.store)
    plan = plan or stored_plan(spec)
    if not plan.known:
        unknown_size = 2**62  # the data is not tokenized yet: list the grid without the size checks
        plans = cell_plans(spec, spec.vocab.size, unknown_size, unknown_size)
        states = [(cell_plan, _missing(cell_plan)) for cell_plan in plans]
    else:
        checkpoint_seconds = spec.execution.checkpoint_seconds
        states = [
            (cell_plan, _stored_state(store, cell.fp, cell_plan, checkpoint_seconds))
            for cell_plan, cell in zip(plan.cell_plans, plan.of("cells"), strict=True)
        ]
    budgeted = [replace(state, budget_flops=_budget_of(spec, cell_plan)) for cell_plan, state in states]
    return sorted(budgeted, key=lambda s: (s.params, s.tokens, s.seed))


def _budget_of(spec: SweepSpec, plan: CellPlan) -> float | None:
    if spec.grid.budgets is None:
        return None
    flops = training_flops_per_token(plan.shape, plan.vocab_size, plan.context)[spec.fit.compute_kind]
    return min(spec.grid.budgets, key=lambda budget: abs(math.log(flops * plan.tokens_target / budget)))


def _missing(plan: CellPlan, cell_id: str | None = None) -> CellState:
    return CellState(cell_id, plan.shape.params_nonembedding(), plan.tokens_target, plan.seed, "missing")


def _stored_state(store: Store, cell_id: str, plan: CellPlan, checkpoint_seconds: float) -> CellState:
    if not store.is_complete("cells", cell_id):
        return _unfinished(store, cell_id, plan, checkpoint_seconds)
    row = store.read_table("cells", cell_id, "result.parquet").to_pylist()[0]
    return CellState(
        cell_id=cell_id,
        params=row["params_nonembedding"],
        tokens=row["tokens_target"],
        seed=row["seed"],
        state="done" if row["status"] == "ok" else row["status"],
        val_loss_nats=row["val_loss_nats"],
        train_seconds=row["train_seconds"],
        error=row["error"],
    )


def _unfinished(store: Store, cell_id: str, plan: CellPlan, checkpoint_seconds: float) -> CellState:
    """Missing; or, where this machine holds the cell's work folder, running while its checkpoint is
    rewritten and interrupted once that is older than two checkpoint intervals."""
    work = work_dir(store.location, "cells", cell_id, create=False)
    try:
        touched = max(path.stat().st_mtime for path in [work, *work.iterdir()])
    except FileNotFoundError:  # no work folder, or it was cleaned up as the cell finished
        return _missing(plan, cell_id)
    state = "running" if time.time() - touched < 2 * checkpoint_seconds + 30 else "interrupted"
    return replace(_missing(plan, cell_id), state=state)


def trains_cells(spec: SweepSpec, plan: SweepPlan | None = None) -> bool:
    """Whether a run of the spec has trunks or cells to train (so far as the store tells: yes while
    its data is not prepared). `plan`: the spec's `stored_plan`, when already read."""
    plan = plan or stored_plan(spec)
    return not plan.known or any(cell.state != "done" for cell in grid_status(spec, plan))


def stored_sweep(spec: SweepSpec, plan: SweepPlan) -> dict | None:
    """What a run of the spec would return, found without Prefect, when every step after its cells
    (the sweep's record, fits, report) is complete in the store; None when one is not. For a `plan`
    (the spec's `stored_plan`) whose cells are all done: `trains_cells` false."""
    store = Store(spec.execution.store)
    records = {step.kind: store.marker(step.kind, step.fp) for step in plan.after_training}
    if not all(records.values()):
        return None
    return {
        "sweep_id": plan.sweep_id,
        "store": store.location,
        "fits": records["fits"],
        "report": records["reports"]["path"],
    }


def grid_table(spec: SweepSpec, cells: list[CellState]) -> Table:
    """Rows N, columns D (or, for IsoFLOP grids, compute budgets); each entry the cell's state (and
    loss when done)."""
    table = Table(
        title=f"sweep {spec.name}: {sum(c.state == 'done' for c in cells)} of {len(cells)} cells done"
    )
    by_budget = spec.grid.budgets is not None
    column_of = (lambda c: c.budget_flops) if by_budget else (lambda c: c.tokens)
    columns = sorted({column_of(c) for c in cells})
    table.add_column("N \\ C (FLOPs)" if by_budget else "N \\ D", justify="right")
    for value in columns:
        table.add_column(f"{value:.3g}" if by_budget else f"{value:,}", justify="center")
    for params in sorted({c.params for c in cells}):
        entries = []
        for value in columns:
            here = [c for c in cells if c.params == params and column_of(c) == value]
            entries.append(" ".join(_entry(c, show_tokens=by_budget) for c in here))
        table.add_row(f"{params:,}", *entries)
    return table


def _entry(cell: CellState, show_tokens: bool = False) -> str:
    text = f"{cell.val_loss_nats:.3f}" if cell.state == "done" else cell.state
    tokens = f"D={cell.tokens / 1e6:.2f}M " if show_tokens else ""
    return f"{tokens}[{STATE_STYLE[cell.state]}]{text}[/]"


def grid_artifact_rows(grid: list[dict], records: dict[str, dict], running: set[str]) -> list[dict]:
    """The N x D table for Prefect's UI: one row per N, one column per D, each cell's state."""
    entries: dict[int, dict[str, str]] = {}
    for params in grid:
        plan = params["plan"]
        n = ModelShape(**plan["shape"]).params_nonembedding()
        cell_id = step_fingerprint("cells", params)
        record = records.get(cell_id)
        if record is None:
            state = "running" if cell_id in running else "pending"
        elif record["status"] == "ok":
            state = f"done {record['val_loss_nats']:.3f}"
        else:
            state = f"{record['status']}: {record['error']}"
        entries.setdefault(n, {})[f"D={plan['tokens_target']:,}"] = state
    return [{"N": f"{n:,}", **columns} for n, columns in sorted(entries.items())]
