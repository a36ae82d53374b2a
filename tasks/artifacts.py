"""The trunk and cell artifacts as plain functions of their task's parameters, without Prefect: a
sweep's worker processes run them (tasks/steps.py wraps them as tasks, whose Prefect work stays in the
flow's process), so a worker imports torch and transformers but not Prefect. Also what every step's
artifact shares: built once, published atomically, and returned from the store when complete."""

from __future__ import annotations

import functools
import logging
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from storage import datasets
from storage.datasets import Kind
from storage.store import Store
from tasks import tokens
from tasks.cell import CellPlan, Checkpoints, plan_columns
from tasks.identity import plan_from_dict, reusable, step_fingerprint, work_dir

Record = dict[str, Any]
LogLine = tuple[int, str]  # (logging level, message), as a training's log comes back to its task
Artifact = Callable[[dict[str, Any]], Record]  # a task's artifact from the task's parameters

# What a trunk or cell logs as it trains; its task logs the lines again in its Prefect run
LOGGER = logging.getLogger("scalelaw.training")
LOGGER.propagate = False  # heard only by `with_log`, which hands the lines back
LOGGER.setLevel(logging.INFO)

SUMMARY_COLUMNS = (
    "cell_id",
    "status",
    "error",
    "params_nonembedding",
    "tokens_seen",
    "val_loss_nats",
    "train_seconds",
)


def materialize(kind: str, params: dict[str, Any], build: Callable[[Path, str], Record]) -> Record:
    """The artifact's record: from the store when complete, else built and published atomically."""
    store = Store(params["store"])
    fp = step_fingerprint(kind, params)
    record = store.marker(kind, fp)
    if reusable(record):
        return record
    return store.publish(kind, fp, lambda out: {"fp": fp, **build(out, fp)}, keep_existing=reusable)


def load_stream(store: Store, tokens_fp: str, split: str) -> np.ndarray:
    """A split's token ids as a read-only numpy array (a view of the memory-mapped Parquet column):
    read once per process, as a published artifact never changes, so that a worker's later trunks and
    cells find it in memory (15 ms a read on the default preset)."""
    return _stream(store.location, tokens_fp, split)


@functools.lru_cache(maxsize=8)
def _stream(store_location: str, tokens_fp: str, split: str) -> np.ndarray:
    table = datasets.TOKEN_STREAMS[split].read(Store(store_location), tokens_fp, cached=True)
    column = table.column("token_id")
    if column.num_chunks == 1:
        return column.chunk(0).to_numpy(zero_copy_only=True)
    stream = column.to_numpy()
    stream.setflags(write=False)  # shared by every caller
    return stream


def with_log(artifact: Artifact, params: dict[str, Any]) -> tuple[Record, list[LogLine]]:
    """`artifact(params)` and the lines it logged (tracebacks included), in the process it runs in."""
    lines: list[LogLine] = []
    handler = _Collecting(lines)
    LOGGER.addHandler(handler)
    try:
        return artifact(params), lines
    finally:
        LOGGER.removeHandler(handler)


class _Collecting(logging.Handler):
    def __init__(self, lines: list[LogLine]) -> None:
        super().__init__()
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, self.format(record)))


def trunk_artifact(params: dict[str, Any]) -> Record:
    """Train the trunk that the WSD cells of one (N, seed) branch from, with a snapshot at each branch
    step; `params` are train_grid_trunk's."""
    trunk_plan, branch_steps = plan_from_dict(params["plan"]), params["branch_steps"]

    def train(out: Path, work: Path, checkpoints: Checkpoints) -> Record:
        from tasks.train import train_trunk

        # snapshots stay in the work folder until published: a resumed trunk does not save them again
        stream = load_stream(Store(params["store"]), params["tokens_fp"], "train")
        return train_trunk(trunk_plan, branch_steps, stream, work, checkpoints)

    def finish(out: Path, work: Path, trunk_id: str, record: Record) -> Record:
        from tasks.train import snapshot_name

        snapshots = [work / snapshot_name(step) for step in branch_steps]
        for snapshot in (path for path in snapshots if path.exists()):
            shutil.copyfile(snapshot, out / snapshot.name)
        LOGGER.info("trunk %s %s: snapshots at steps %s", trunk_id, record["status"], branch_steps)
        return record

    return _training_artifact(
        Kind.TRUNKS, params, train, lambda error: {"status": "failed", "error": error}, finish
    )


def cell_artifact(params: dict[str, Any]) -> Record:
    """Train, evaluate and save one grid cell; `params` are train_grid_cell's."""
    cell_plan, store, tokens_fp = plan_from_dict(params["plan"]), Store(params["store"]), params["tokens_fp"]
    trunk_fp = params.get("trunk_fp")

    def train(out: Path, work: Path, checkpoints: Checkpoints) -> tuple[dict, list]:
        return _train(store, tokens_fp, params["vocab_fp"], cell_plan, out / "model", checkpoints, trunk_fp)

    def finish(out: Path, work: Path, cell_id: str, outcome: tuple[dict, list]) -> Record:
        row, curve = outcome
        row |= {
            "cell_id": cell_id,
            "data_fp": tokens_fp,
            "trunk_id": trunk_fp,
            "finished_at": datetime.now(UTC),
        }
        datasets.RUNS.write([row], out)
        datasets.CURVES.write([{"cell_id": cell_id, **point} for point in curve], out)
        LOGGER.info("cell %s %s: val loss %s nats/token", cell_id, row["status"], row.get("val_loss_nats"))
        return {key: row.get(key) for key in SUMMARY_COLUMNS}

    def failed(error: str) -> tuple[dict, list]:
        return plan_columns(cell_plan) | {"status": "failed", "error": error}, []

    return _training_artifact(Kind.CELLS, params, train, failed, finish)


def _training_artifact(
    kind: str,
    params: dict[str, Any],
    train: Callable[[Path, Path, Checkpoints], Any],
    failed: Callable[[str], Any],
    finish: Callable[[Path, Path, str, Any], Record],
) -> Record:
    """The body the trunk and cell share: torch on `threads` threads, transformers without its
    progress bars (a worker's would reach the sweep's terminal), a checkpoint in the work
    folder every `checkpoint_seconds` that a rerun continues from, a failure recorded rather than
    raised, and the work folder removed once the artifact is published.

    `train(out, work, checkpoints)` returns the result, `failed(error)` the result of a failure, and
    `finish(out, work, fp, result)` writes the artifact and returns its record."""
    store = params["store"]

    def build(out: Path, fp: str) -> Record:
        import torch  # imported by the worker that trains, not by the flow's process
        from transformers.utils import logging as transformers_logging

        torch.set_num_threads(params["threads"])
        transformers_logging.disable_progress_bar()
        work = work_dir(store, kind, fp)
        try:
            result = train(out, work, Checkpoints(work / "checkpoint.pt", params["checkpoint_seconds"]))
        except Exception as error:  # one trunk's or cell's failure is recorded and must not stop the sweep
            LOGGER.exception("%s %s failed", kind.removesuffix("s"), fp)
            result = failed(f"{type(error).__name__}: {error}")
        return finish(out, work, fp, result)

    record = materialize(kind, params, build)
    remove_work(store, kind, record["fp"])
    return record


def remove_work(store: str, kind: str, fp: str) -> None:
    """Remove the work folder (checkpoints) of a published trunk or cell, if it is there: also one
    that a run killed between publishing the artifact and removing its folder left behind."""
    shutil.rmtree(work_dir(store, kind, fp, create=False), ignore_errors=True)


def _train(
    store: Store,
    tokens_fp: str,
    vocab_fp: str,
    plan: CellPlan,
    model_dir: Path,
    checkpoints: Checkpoints,
    trunk_fp: str | None,
) -> tuple[dict, list]:
    from tasks.train import generate_sample, train_cell

    vocab_dir = store.local(Kind.VOCAB, vocab_fp)
    tokenizer = tokens.load_tokenizer(vocab_dir)
    outcome = train_cell(
        plan,
        load_stream(store, tokens_fp, "train"),
        load_stream(store, tokens_fp, "val"),
        tokens.token_byte_lengths(tokenizer),
        model_dir,
        checkpoints,
        _branch_snapshot(store, trunk_fp, plan),
    )
    if outcome.row["status"] == "ok":
        tokens.save_tokenizer(tokenizer, model_dir)
        outcome.row["sample"] = generate_sample(model_dir, plan.sample_prompt, plan.sample_tokens)
    return outcome.row, outcome.curve


def _branch_snapshot(store: Store, trunk_fp: str | None, plan: CellPlan) -> Path | None:
    """The trunk snapshot a WSD cell starts from; None: the cell trains from its first step."""
    from tasks.train import snapshot_name

    if trunk_fp is None:
        return None
    snapshot = store.local(Kind.TRUNKS, trunk_fp) / snapshot_name(plan.branch_step)
    if not snapshot.exists():
        trunk = store.marker(Kind.TRUNKS, trunk_fp) or {"status": "missing", "error": None}
        raise RuntimeError(
            f"trunk {trunk_fp} ({trunk['status']}: {trunk['error']}) has no snapshot at step "
            f"{plan.branch_step}; rerun the sweep to train it again"
        )
    return snapshot
