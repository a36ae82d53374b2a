"""The pipeline's Prefect tasks: each turns inputs into one store artifact, at a fingerprinted path.

A task's fingerprint is a hash of its parameters (less the ones that do not change the result) and
the code version; it is both the artifact's folder name and the Prefect cache key. A task whose
artifact is complete returns its record without work, so a sweep resumes even without Prefect's
database; the flow asks Prefect to refresh the cache when the artifact is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from prefect import get_run_logger, task
from prefect.exceptions import MissingContextError

from storage import datasets
from storage.datasets import Kind
from storage.store import Store, fingerprint
from tasks import artifacts, corpus, tokens
from tasks.artifacts import Artifact, Record, materialize
from tasks.identity import reusable, step_fingerprint


def _cache_key(context: Any, parameters: dict[str, Any]) -> str:
    kind = context.task.name
    return f"{kind}-{step_fingerprint(kind, parameters)}-{fingerprint('store', parameters['store'])}"


def artifact_task(kind: str) -> Callable:
    return task(name=kind, cache_key_fn=_cache_key, persist_result=True, result_serializer="json")


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

    return materialize(Kind.CLEAN, params, build)


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

    return materialize(Kind.VOCAB, params, build)


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

    return materialize(Kind.TOKENS, params, build)


_training_pool: Executor | None = None  # a sweep's local worker processes, while it trains in them


def train_in(pool: Executor | None) -> None:
    """Trunks and cells train in `pool` (a sweep's local worker processes) from now on, instead of in
    the process that runs their task: Prefect's work for each stays in this one (the flow's, where its
    client and settings are built once), and the workers only train. None: where their task runs."""
    global _training_pool
    _training_pool = pool


def current_training_pool() -> Executor | None:
    """The pool that `train_in` named last; None: trunks and cells train where their task runs."""
    return _training_pool


_analysis_helper: Executor | None = None  # a process beside this one for the fits and the plots


def analyse_with(helper: Executor | None) -> None:
    """The fits and the report do about half their work in `helper` (another process, with the
    analysis modules imported) from now on, the rest in this one; None: all of it in this one."""
    global _analysis_helper
    _analysis_helper = helper


def analysis_helper() -> Executor | None:
    """The process that `analyse_with` named last; None: the fits and plots run in this one."""
    return _analysis_helper


def _trained(kind: str, artifact: Artifact, params: dict[str, Any]) -> Record:
    """`artifact(params)`, run in the training pool if there is one, its log lines logged again in
    this task's run (the UI shows them); a complete artifact's record, from the store, without a
    worker."""
    stored = Store(params["store"]).marker(kind, step_fingerprint(kind, params))
    if reusable(stored):
        artifacts.remove_work(params["store"], kind, stored["fp"])  # one a killed run left behind
        return stored
    pool = _training_pool
    record, lines = (
        artifacts.with_log(artifact, params)
        if pool is None
        else pool.submit(artifacts.with_log, artifact, params).result()
    )
    logger = _logger()
    for level, line in lines:
        logger.log(level, line)
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
    return _trained(Kind.TRUNKS, artifacts.trunk_artifact, dict(locals()))


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
    return _trained(Kind.CELLS, artifacts.cell_artifact, dict(locals()))


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
        sweep = fits.fit_sweep(points, bootstrap, holdout_fraction, huber_delta, _analysis_helper)
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

    return materialize(Kind.FITS, params, build)


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
        judged = verdict.Verdict(tuple(findings))
        markdown = report.render_report(sweep_name, sweep, judged, rows, out, _analysis_helper)
        (out / "report.md").write_text(markdown)
        return {"path": Store(store).url(Kind.REPORTS, fp, "report.md"), "markdown": markdown}

    return materialize(Kind.REPORTS, params, build)
