"""The catalog of datasets: every Parquet file the store holds, declared once with its kind (the store
folder), its file name, its schema and, where users query it, its DuckDB view; and the one way each is
written and read.

`storage.catalog` derives its views from DATASETS, and the tasks write and read their tables through
these declarations, so a new table (or a new column) is a change to this file alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from storage.store import Store

SCHEMA_VERSION = "1"
Record = TypeVar("Record")


class Kind:
    """The kinds of artifact, one store folder each: `<store>/<kind>/<fingerprint>/`. The names are
    part of every fingerprint and Prefect task name, so they never change."""

    CLEAN = "clean"
    VOCAB = "vocab"
    TOKENS = "tokens"
    TRUNKS = "trunks"
    CELLS = "cells"
    SWEEPS = "sweeps"
    FITS = "fits"
    REPORTS = "reports"
    SUGGESTIONS = "suggestions"


@dataclass(frozen=True)
class Dataset:
    """One Parquet file of every artifact of a kind, with its schema; `view`: its DuckDB view."""

    kind: str
    file: str
    schema: pa.Schema
    view: str | None = None

    def write(self, rows: list[Any] | pa.Table, folder: Path, **same_in_every_row: Any) -> None:
        """The rows (dicts or dataclass instances) as this dataset's file in an artifact folder being
        built; `same_in_every_row`: columns the records do not hold, such as the artifact's id."""
        if not isinstance(rows, pa.Table):
            rows = [{**same_in_every_row, **_as_dict(row)} for row in rows]
        write_parquet(rows, self.schema, folder / self.file)

    def read(self, store: Store, fp: str, filters: Any = None, cached: bool = False) -> pa.Table:
        """The file of artifact `fp`, memory-mapped when on this machine; `cached`: from the local copy
        of a remote artifact (for files read again and again, such as token streams)."""
        return store.read_table(self.kind, fp, self.file, filters=filters, cached=cached)

    def rows(self, store: Store, fp: str) -> list[dict[str, Any]]:
        return self.read(store, fp).to_pylist()

    def records(self, store: Store, fp: str, record: type[Record]) -> list[Record]:
        """The rows as instances of the dataclass `record`, from the columns it declares."""
        names = [field.name for field in dataclasses.fields(record)]
        return [record(**{name: row[name] for name in names}) for row in self.rows(store, fp)]

    def files(self, store: Store) -> list[str]:
        """The file of every complete artifact of the kind, as paths or URLs DuckDB can read."""
        return store.complete_files(self.kind, self.file)


def _as_dict(row: Any) -> dict[str, Any]:
    return dataclasses.asdict(row) if dataclasses.is_dataclass(row) else row


def write_parquet(rows: list[dict[str, Any]] | pa.Table, schema: pa.Schema, where: Path | IO[bytes]) -> None:
    """Write rows with `schema`, tagging the file with the schema version."""
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=schema)
    table = table.cast(schema).replace_schema_metadata({"scalelaw.schema_version": SCHEMA_VERSION})
    pq.write_table(table, where, row_group_size=max(table.num_rows, 1))


DOCS = Dataset(
    Kind.CLEAN,
    "docs.parquet",
    pa.schema(
        [
            ("doc_id", pa.string()),
            ("split", pa.string()),
            ("n_bytes", pa.int64()),
            ("text", pa.large_string()),
        ]
    ),
)

CORPUS_STATS = Dataset(
    Kind.CLEAN,
    "stats.parquet",
    pa.schema(
        [
            ("stage", pa.string()),  # "input", "dropped", "kept", "train", "val"
            ("reason", pa.string()),
            ("documents", pa.int64()),
            ("bytes", pa.int64()),
        ]
    ),
    view="corpus_stats",
)

_TOKEN_IDS = pa.schema([("token_id", pa.uint16())])
TOKEN_STREAMS = {split: Dataset(Kind.TOKENS, f"{split}.parquet", _TOKEN_IDS) for split in ("train", "val")}

RUNS = Dataset(
    Kind.CELLS,
    "result.parquet",
    pa.schema(
        [
            ("cell_id", pa.string()),
            ("status", pa.string()),  # ok | failed | diverged
            ("error", pa.string()),
            ("diverged_step", pa.int64()),
            ("data_fp", pa.string()),
            ("seed", pa.int64()),
            ("arch", pa.string()),
            ("d_model", pa.int64()),
            ("n_layers", pa.int64()),
            ("n_heads", pa.int64()),
            ("d_ff", pa.int64()),
            ("vocab_size", pa.int64()),
            ("context", pa.int64()),
            ("batch_size", pa.int64()),
            ("params_target", pa.int64()),
            ("params_nonembedding", pa.int64()),
            ("params_total", pa.int64()),
            ("tokens_target", pa.int64()),
            ("tokens_seen", pa.int64()),
            ("steps", pa.int64()),
            ("epochs", pa.float64()),
            ("flops_6nd", pa.float64()),
            ("flops_with_attention", pa.float64()),
            ("lr", pa.float64()),
            ("warmup_steps", pa.int64()),
            ("beta2", pa.float64()),
            ("schedule", pa.string()),  # cosine | wsd (null in files written before WSD existed: cosine)
            ("trunk_id", pa.string()),  # wsd: the trunk the cell branched from
            ("branch_tokens", pa.int64()),  # wsd: tokens seen when the cooldown began (the branch point)
            ("train_loss_nats", pa.float64()),
            ("val_loss_nats", pa.float64()),
            ("val_loss_stderr", pa.float64()),
            ("val_perplexity", pa.float64()),
            ("val_bits_per_byte", pa.float64()),
            ("val_tokens", pa.int64()),
            ("sample", pa.string()),
            ("resumed_from_step", pa.int64()),
            ("train_seconds", pa.float64()),
            ("tokens_per_second", pa.float64()),
            ("mfu", pa.float64()),  # achieved FLOP/s (with attention and head) over the measured matmul peak
            ("precision", pa.string()),  # float32 | bfloat16 (autocast)
            ("device", pa.string()),  # cpu, mps, or the GPU's name (null in files from before devices)
            ("compiled", pa.bool_()),
            ("finished_at", pa.timestamp("s", tz="UTC")),
        ]
    ),
    view="runs",
)

CURVES = Dataset(
    Kind.CELLS,
    "curve.parquet",
    pa.schema(
        [
            ("cell_id", pa.string()),
            ("step", pa.int64()),
            ("tokens_seen", pa.int64()),
            ("train_loss_nats", pa.float64()),
            ("lr", pa.float64()),
        ]
    ),
    view="curves",
)

SWEEPS = Dataset(
    Kind.SWEEPS,
    "cells.parquet",
    pa.schema(
        [
            ("sweep_id", pa.string()),
            ("sweep_name", pa.string()),
            ("cell_id", pa.string()),
        ]
    ),
    view="sweeps",
)

FITS = Dataset(
    Kind.FITS,
    "fits.parquet",
    pa.schema(
        [
            # keyed by fit_id alone: one fits artifact serves every sweep of the same cells and options
            ("fit_id", pa.string()),
            ("form", pa.string()),
            ("parameter", pa.string()),
            ("estimate", pa.float64()),
            ("stderr", pa.float64()),
            ("ci_low", pa.float64()),
            ("ci_high", pa.float64()),
            ("objective", pa.float64()),
            ("n_points", pa.int64()),
            ("converged", pa.bool_()),
            ("params_kind", pa.string()),
            ("compute_kind", pa.string()),
            ("target", pa.string()),  # nats (per token) | bits_per_byte
            ("note", pa.string()),
        ]
    ),
    view="fits",
)

OPTIMAL = Dataset(
    Kind.FITS,
    "optimal.parquet",
    pa.schema(
        [
            ("flops", pa.float64()),  # in the fit's compute accounting (fits.compute_kind)
            ("N_opt", pa.float64()),
            ("N_opt_low", pa.float64()),
            ("N_opt_high", pa.float64()),
            ("D_opt", pa.float64()),
            ("tokens_per_param", pa.float64()),
            ("loss", pa.float64()),
        ]
    ),
)

EXTRAPOLATION = Dataset(
    Kind.FITS,
    "extrapolation.parquet",
    pa.schema(
        [
            ("fit_id", pa.string()),
            ("cell_id", pa.string()),
            ("flops", pa.float64()),  # in the fit's compute accounting (fits.compute_kind)
            ("threshold_flops", pa.float64()),  # the smallest held-out cell's FLOPs
            ("observed_loss", pa.float64()),  # in the fit's target (fits.target)
            ("predicted_loss", pa.float64()),
            ("relative_error", pa.float64()),  # (predicted - observed) / observed
        ]
    ),
    view="extrapolation",
)

ISOFLOP = Dataset(
    Kind.FITS,
    "isoflop.parquet",
    pa.schema(
        [
            ("fit_id", pa.string()),
            ("budget_flops", pa.float64()),  # in the fit's compute accounting; a band's geometric mean
            ("cells", pa.int64()),
            ("n_min", pa.float64()),
            ("n_max", pa.float64()),
            ("n_opt", pa.float64()),
            ("n_opt_ci_low", pa.float64()),
            ("n_opt_ci_high", pa.float64()),
            ("d_opt", pa.float64()),
            ("loss_at_opt", pa.float64()),
            ("interior", pa.bool_()),  # the minimum lies strictly inside [n_min, n_max]
            ("log_n_centre", pa.float64()),  # loss = curvature·x² + slope·x + intercept, x = ln N - centre
            ("curvature", pa.float64()),
            ("slope", pa.float64()),
            ("intercept", pa.float64()),
            ("note", pa.string()),
        ]
    ),
    view="isoflop",
)

VERDICT = Dataset(
    Kind.FITS,
    "verdict.parquet",
    pa.schema(
        [
            ("fit_id", pa.string()),
            ("rule", pa.string()),
            ("severity", pa.string()),  # untrusted | caution
            ("reason", pa.string()),
            ("fix", pa.string()),
        ]
    ),
    view="verdict",
)

SUGGESTIONS = Dataset(
    Kind.SUGGESTIONS,
    "suggestions.parquet",
    pa.schema(
        [
            ("suggestion_id", pa.string()),
            ("sweep_name", pa.string()),
            ("round", pa.int64()),  # 0: a proposal alone; 1, 2, ...: the rounds of `scalelaw suggest --loop`
            ("objective", pa.string()),  # n_opt | loss_at_target
            ("target_flops", pa.float64()),  # in the fit's compute accounting (fits.compute_kind)
            ("budget_flops", pa.float64()),
            ("estimate_before", pa.float64()),  # N_opt (or the loss there) at target_flops, and its 95%
            ("low_before", pa.float64()),  # bootstrap interval before the proposed cells
            ("high_before", pa.float64()),
            ("expected_low_after", pa.float64()),  # the interval the design expects once they are trained
            ("expected_high_after", pa.float64()),
            ("estimate_after", pa.float64()),  # measured after training them (--loop); null before
            ("low_after", pa.float64()),
            ("high_after", pa.float64()),
            ("rank", pa.int64()),  # the order the design picked the cells in
            ("model_size", pa.string()),  # as the spec names it: a target N, or a shape d_model x n_layers
            ("params", pa.float64()),  # N as the fit counts it
            ("tokens", pa.int64()),
            ("cost_flops", pa.float64()),  # what the cell adds to the proposal's cost
            ("expected_width_ratio", pa.float64()),  # expected width after this and earlier cells / now
        ]
    ),
    view="suggestions",
)


DATASETS = (
    DOCS,
    CORPUS_STATS,
    *TOKEN_STREAMS.values(),
    RUNS,
    CURVES,
    SWEEPS,
    FITS,
    OPTIMAL,
    EXTRAPOLATION,
    ISOFLOP,
    VERDICT,
    SUGGESTIONS,
)
FIT_DATASETS = tuple(d for d in DATASETS if d.kind == Kind.FITS)  # the tables of one `fits` artifact
