"""Which cells of a spec's grid the store holds, found from fingerprints alone (no Prefect, no work)."""

from __future__ import annotations

from dataclasses import dataclass

from rich.table import Table

from flows.plan import cell_params, cell_plans, corpus_params, tokens_params, vocab_params
from flows.spec import SweepSpec
from storage import schemas
from storage.store import Store
from tasks.cell import CellPlan
from tasks.model import ModelShape
from tasks.steps import step_fingerprint

STATE_STYLE = {"done": "green", "failed": "red", "diverged": "red", "missing": "dim"}


@dataclass(frozen=True)
class CellState:
    cell_id: str | None
    params: int
    tokens: int
    seed: int
    state: str  # done | failed | diverged | missing
    val_loss_nats: float | None = None
    train_seconds: float | None = None
    error: str | None = None


def grid_status(spec: SweepSpec) -> list[CellState]:
    """Every cell of the spec's grid with its state; all missing while the data is not prepared."""
    store = Store(spec.execution.store)
    root = str(store.root)
    corpus = store.marker("clean", step_fingerprint("clean", corpus_params(spec, root)))
    vocab = corpus and store.marker(
        "vocab", step_fingerprint("vocab", vocab_params(spec, root, corpus["fp"]))
    )
    tokens = vocab and store.marker(
        "tokens", step_fingerprint("tokens", tokens_params(root, corpus["fp"], vocab["fp"]))
    )
    if not tokens:
        unknown_size = 2**62  # the data is not tokenized yet: list the grid without the size checks
        return [_missing(plan) for plan in cell_plans(spec, spec.vocab.size, unknown_size, unknown_size)]
    plans = cell_plans(spec, vocab["vocab_size"], tokens["train_tokens"], tokens["val_tokens"])
    states = []
    for plan in plans:
        cell_id = step_fingerprint("cells", cell_params(spec, root, tokens["fp"], vocab["fp"], plan))
        states.append(_stored_state(store, cell_id, plan))
    return sorted(states, key=lambda s: (s.params, s.tokens, s.seed))


def _missing(plan: CellPlan, cell_id: str | None = None) -> CellState:
    return CellState(cell_id, plan.shape.params_nonembedding(), plan.tokens_target, plan.seed, "missing")


def _stored_state(store: Store, cell_id: str, plan: CellPlan) -> CellState:
    if not store.is_complete("cells", cell_id):
        return _missing(plan, cell_id)
    row = schemas.read_parquet(store.path("cells", cell_id) / "result.parquet").to_pylist()[0]
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


def grid_table(spec: SweepSpec, cells: list[CellState]) -> Table:
    """Rows N, columns D; each entry the cell's state (and loss when done)."""
    table = Table(
        title=f"sweep {spec.name}: {sum(c.state == 'done' for c in cells)} of {len(cells)} cells done"
    )
    tokens = sorted({c.tokens for c in cells})
    table.add_column("N \\ D", justify="right")
    for value in tokens:
        table.add_column(f"{value:,}", justify="center")
    for params in sorted({c.params for c in cells}):
        entries = []
        for value in tokens:
            here = [c for c in cells if c.params == params and c.tokens == value]
            entries.append(" ".join(_entry(c) for c in here))
        table.add_row(f"{params:,}", *entries)
    return table


def _entry(cell: CellState) -> str:
    text = f"{cell.val_loss_nats:.3f}" if cell.state == "done" else cell.state
    return f"[{STATE_STYLE[cell.state]}]{text}[/]"


def grid_artifact_rows(grid: list[dict], records: dict[str, dict]) -> list[dict]:
    """The N x D table for Prefect's UI: one row per N, one column per D, each cell's state."""
    entries: dict[int, dict[str, str]] = {}
    for params in grid:
        plan = params["plan"]
        n = ModelShape(**plan["shape"]).params_nonembedding()
        record = records.get(step_fingerprint("cells", params))
        if record is None:
            state = "pending"
        elif record["status"] == "ok":
            state = f"done {record['val_loss_nats']:.3f}"
        else:
            state = f"{record['status']}: {record['error']}"
        entries.setdefault(n, {})[f"D={plan['tokens_target']:,}"] = state
    return [{"N": f"{n:,}", **columns} for n, columns in sorted(entries.items())]
