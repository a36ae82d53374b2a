"""The pipeline's Prefect tasks: each turns inputs into one store artifact, at a fingerprinted path.

A task's fingerprint is a hash of its parameters (less the ones that do not change the result) and
the code version; it is both the artifact's folder name and the Prefect cache key. A task whose
artifact is complete returns its record without work, so a sweep resumes even without Prefect's
database; the flow asks Prefect to refresh the cache when the artifact is missing.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from prefect import get_run_logger, task
from prefect.exceptions import MissingContextError

from storage import datasets
from storage.datasets import Kind
from storage.store import Store, fingerprint
from tasks import corpus, tokens
from tasks.cell import CellPlan, Checkpoints, plan_columns
from tasks.identity import plan_from_dict, reusable, step_fingerprint, work_dir

Record = dict[str, Any]


def _cache_key(context: Any, parameters: dict[str, Any]) -> str:
    kind = context.task.name
    return f"{kind}-{step_fingerprint(kind, parameters)}-{fingerprint('store', parameters['store'])}"


def artifact_task(kind: str) -> Callable:
    return task(name=kind, cache_key_fn=_cache_key, persist_result=True, result_serializer="json")


def _materialize(kind: str, params: dict[str, Any], build: Callable[[Path, str], Record]) -> Record:
    """The artifact's record: from the store when complete, else built and published atomically."""
    store = Store(params["store"])
    fp = step_fingerprint(kind, params)
    record = store.marker(kind, fp)
    if reusable(record):
        return record
    return store.publish(kind, fp, lambda out: {"fp": fp, **build(out, fp)}, keep_existing=reusable)


@artifact_task(Kind.CLEAN)
def prepare_corpus(
    store: str,
    source: str,
    text_field: str,
    hf_split: str,
    max_documents: int | None,
    normalization: str,
    min_chars: int,
    val_fraction: float,
    source_version: str,
) -> Record:
    """Read, normalise, filter, de-duplicate and split the corpus into docs.parquet."""
    params = dict(locals())

    def build(out: Path, fp: str) -> Record:
        texts = corpus.read_documents(source, text_field, hf_split, max_documents)
        cleaned = corpus.clean_corpus(texts, normalization, min_chars, val_fraction)
        rows = [{**vars(d), "n_bytes": len(d.text.encode())} for d in cleaned.documents]
        datasets.DOCS.write(rows, out)
        datasets.CORPUS_STATS.write(cleaned.stats, out)
        by_stage = {row["stage"]: row for row in cleaned.stats}
        _logger().info(
            "corpus: %s", "; ".join(f"{r['stage']} {r['reason']} {r['documents']}" for r in cleaned.stats)
        )
        return {
            f"{split}_{unit}": by_stage[split][unit]
            for split in ("train", "val")
            for unit in ("documents", "bytes")
        }

    return _materialize(Kind.CLEAN, params, build)


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run's logger; outside a run (the CLI's data steps while Prefect's server starts),
    the module's."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def _texts(store: Store, corpus_fp: str, split: str) -> list[str]:
    table = datasets.DOCS.read(store, corpus_fp, filters=[("split", "=", split)], cached=True)
    return table.column("text").to_pylist()


@artifact_task(Kind.VOCAB)
def build_vocab(store: str, corpus_fp: str, vocab_size: int) -> Record:
    """Byte-level BPE trained on the training split; loadable by PreTrainedTokenizerFast."""
    params = dict(locals())

    def build(out: Path, fp: str) -> Record:
        tokenizer = tokens.train_tokenizer(_texts(Store(store), corpus_fp, "train"), vocab_size)
        tokens.save_tokenizer(tokenizer, out)
        return {"vocab_size": tokenizer.get_vocab_size()}

    return _materialize(Kind.VOCAB, params, build)


@artifact_task(Kind.TOKENS)
def tokenize(store: str, corpus_fp: str, vocab_fp: str) -> Record:
    """Both splits as flat token-id streams (train.parquet, val.parquet)."""
    params = dict(locals())

    def build(out: Path, fp: str) -> Record:
        tokenizer = tokens.load_tokenizer(Store(store).local(Kind.VOCAB, vocab_fp))
        counts = {}
        for split, dataset in datasets.TOKEN_STREAMS.items():
            stream = tokens.encode_documents(tokenizer, _texts(Store(store), corpus_fp, split))
            dataset.write(pa.table({"token_id": pa.array(stream, type=pa.uint16())}), out)
            counts[f"{split}_tokens"] = len(stream)
        return counts

    return _materialize(Kind.TOKENS, params, build)


def load_stream(store: Store, tokens_fp: str, split: str) -> np.ndarray:
    """A split's token ids as a read-only numpy view of the memory-mapped Parquet column."""
    column = datasets.TOKEN_STREAMS[split].read(store, tokens_fp, cached=True).column("token_id")
    return column.chunk(0).to_numpy(zero_copy_only=True) if column.num_chunks == 1 else column.to_numpy()


SUMMARY_COLUMNS = (
    "cell_id",
    "status",
    "error",
    "params_nonembedding",
    "tokens_seen",
    "val_loss_nats",
    "train_seconds",
)


def _training_artifact(
    kind: str,
    params: dict[str, Any],
    train: Callable[[Path, Path, Checkpoints], Any],
    failed: Callable[[str], Any],
    finish: Callable[[Path, Path, str, Any], Record],
) -> Record:
    """The body the trunk and cell tasks share: torch on `threads` threads, transformers without its
    progress bars (a worker's would reach the sweep's terminal), a checkpoint in the work
    folder every `checkpoint_seconds` that a rerun continues from, a failure recorded rather than
    raised, and the work folder removed once the artifact is published.

    `train(out, work, checkpoints)` returns the result, `failed(error)` the result of a failure, and
    `finish(out, work, fp, result)` writes the artifact and returns its record."""
    store, logger = params["store"], get_run_logger()
    name = kind.removesuffix("s")

    def build(out: Path, fp: str) -> Record:
        import torch  # imported by the worker that trains, not by the flow's process
        from transformers.utils import logging as transformers_logging

        torch.set_num_threads(params["threads"])
        transformers_logging.disable_progress_bar()
        work = work_dir(store, kind, fp)
        try:
            result = train(out, work, Checkpoints(work / "checkpoint.pt", params["checkpoint_seconds"]))
        except Exception as error:  # one trunk's or cell's failure is recorded and must not stop the sweep
            logger.exception("%s %s failed", name, fp)
            result = failed(f"{type(error).__name__}: {error}")
        return finish(out, work, fp, result)

    record = _materialize(kind, params, build)
    shutil.rmtree(work_dir(store, kind, record["fp"]), ignore_errors=True)
    return record


@artifact_task(Kind.TRUNKS)
def train_grid_trunk(
    store: str,
    tokens_fp: str,
    plan: dict[str, Any],
    branch_steps: list[int],
    threads: int,
    checkpoint_seconds: float,
) -> Record:
    """Train the trunk that the WSD cells of one (N, seed) branch from, with a snapshot at each branch
    step; a failure is recorded in the trunk, not raised (its cells then fail and say so).

    The trunk checkpoints every `checkpoint_seconds` and a rerun continues from that checkpoint.
    """
    params = dict(locals())
    trunk_plan = plan_from_dict(plan)

    def train(out: Path, work: Path, checkpoints: Checkpoints) -> Record:
        from tasks.train import train_trunk

        # snapshots stay in the work folder until published: a resumed trunk does not save them again
        return train_trunk(
            trunk_plan, branch_steps, load_stream(Store(store), tokens_fp, "train"), work, checkpoints
        )

    def finish(out: Path, work: Path, trunk_id: str, record: Record) -> Record:
        from tasks.train import snapshot_name

        snapshots = [work / snapshot_name(step) for step in branch_steps]
        for snapshot in (path for path in snapshots if path.exists()):
            shutil.copyfile(snapshot, out / snapshot.name)
        get_run_logger().info("trunk %s %s: snapshots at steps %s", trunk_id, record["status"], branch_steps)
        return record

    return _training_artifact(
        Kind.TRUNKS, params, train, lambda error: {"status": "failed", "error": error}, finish
    )


@artifact_task(Kind.CELLS)
def train_grid_cell(
    store: str,
    tokens_fp: str,
    vocab_fp: str,
    plan: dict[str, Any],
    threads: int,
    checkpoint_seconds: float,
    trunk_fp: str | None = None,
) -> Record:
    """Train, evaluate and save one grid cell; a failure is recorded in the cell, not raised.

    The cell checkpoints every `checkpoint_seconds` and a rerun continues from that checkpoint. A WSD
    cell with a `trunk_fp` starts from that trunk's snapshot at its branch step.
    """
    params = dict(locals())
    cell_plan = plan_from_dict(plan)

    def train(out: Path, work: Path, checkpoints: Checkpoints) -> tuple[dict, list]:
        return _train(Store(store), tokens_fp, vocab_fp, cell_plan, out / "model", checkpoints, trunk_fp)

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
        get_run_logger().info(
            "cell %s %s: val loss %s nats/token", cell_id, row["status"], row.get("val_loss_nats")
        )
        return {key: row.get(key) for key in SUMMARY_COLUMNS}

    def failed(error: str) -> tuple[dict, list]:
        return plan_columns(cell_plan) | {"status": "failed", "error": error}, []

    return _training_artifact(Kind.CELLS, params, train, failed, finish)


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


def cell_rows(store: Store, cell_ids: list[str]) -> list[dict]:
    """The `runs` rows of the given cells."""
    return [datasets.RUNS.rows(store, c)[0] for c in cell_ids]


@task(name="record-sweep", persist_result=False)
def record_sweep(store: str, sweep_id: str, sweep_name: str, cell_ids: list[str]) -> str:
    """The sweep's membership (which cells it holds), for the `sweeps` view."""
    rows = [{"sweep_id": sweep_id, "sweep_name": sweep_name, "cell_id": c} for c in cell_ids]

    def build(out: Path) -> Record:
        datasets.SWEEPS.write(rows, out)
        return {"sweep_name": sweep_name, "cells": len(rows), "recorded_at": datetime.now(UTC).isoformat()}

    Store(store).publish(datasets.SWEEPS.kind, sweep_id, build)
    return sweep_id


@artifact_task(Kind.FITS)
def fit_laws(
    store: str,
    cell_ids: list[str],
    params_kind: str,
    compute_kind: str,
    target: str,
    bootstrap: int,
    holdout_fraction: float,
    huber_delta: float,
) -> Record:
    """Every law form fitted to the sweep's finished cells (fits.parquet), the compute-optimal
    allocation (optimal.parquet), the extrapolation check (extrapolation.parquet), the IsoFLOP
    profiles (isoflop.parquet) and the verdict on the law (verdict.parquet)."""
    params = dict(locals())

    def build(out: Path, fp: str) -> Record:
        from tasks import fits, verdict  # scipy: imported where laws are fitted, not by every worker

        rows = cell_rows(Store(store), cell_ids)
        points = fits.points_from_runs(rows, params_kind, compute_kind, target)
        sweep = fits.fit_sweep(points, bootstrap, holdout_fraction, huber_delta)
        judged = verdict.judge(sweep)
        datasets.FITS.write(fits.fit_rows(fp, sweep), out)
        datasets.OPTIMAL.write(sweep.optimal, out)
        datasets.EXTRAPOLATION.write(sweep.extrapolation, out, fit_id=fp)
        datasets.ISOFLOP.write(sweep.isoflop, out, fit_id=fp)
        datasets.VERDICT.write(judged.findings, out, fit_id=fp)
        return {
            "laws": {f.form: fits.law_text(f) for f in sweep.fits},
            "skipped": sweep.skipped,
            "excluded": points.excluded,
            "verdict": {"headline": judged.headline, "findings": [vars(f) for f in judged.findings]},
        }

    return _materialize(Kind.FITS, params, build)


@artifact_task(Kind.REPORTS)
def write_report(store: str, sweep_name: str, cell_ids: list[str], fits_fp: str) -> Record:
    """The Markdown report with its plots, rendered from the stored runs and fits."""
    params = dict(locals())

    def build(out: Path, fp: str) -> Record:
        from tasks import checks, fits, report, verdict  # matplotlib and scipy, only where drawn

        rows, stored = cell_rows(Store(store), cell_ids), Store(store)
        sweep = fits.load_sweep_fits(
            rows,
            datasets.FITS.rows(stored, fits_fp),
            datasets.OPTIMAL.records(stored, fits_fp, fits.OptimalAllocation),
            datasets.EXTRAPOLATION.records(stored, fits_fp, checks.HeldOutCell),
            datasets.ISOFLOP.records(stored, fits_fp, checks.IsoflopProfile),
        )
        findings = datasets.VERDICT.records(stored, fits_fp, verdict.Finding)
        markdown = report.render_report(sweep_name, sweep, verdict.Verdict(tuple(findings)), rows, out)
        (out / "report.md").write_text(markdown)
        return {"path": Store(store).url(Kind.REPORTS, fp, "report.md"), "markdown": markdown}

    return _materialize(Kind.REPORTS, params, build)
