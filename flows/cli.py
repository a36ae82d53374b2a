"""The `scalelaw` command: run a sweep, query the store, show a grid's status."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from flows.spec import PRESETS, SpecError, SweepSpec, load_spec
from storage.store import DEFAULT_STORE, Store, StoreError
from tasks.corpus import source_version
from tasks.errors import InputError

USER_ERRORS = (InputError, SpecError, StoreError)
EXIT_USER_ERROR = 2
EXIT_CELLS_FAILED = 1

console = Console()
errors = Console(stderr=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _configure_prefect(args.verbose)
    try:
        return args.command(args)
    except USER_ERRORS as error:
        errors.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        errors.print("interrupted; finished cells are kept and a rerun resumes the rest.")
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scalelaw",
        description="Turn a text corpus into scaling laws: clean, tokenize, train a grid of models, fit.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show Prefect's own log lines")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run a sweep (resumes: finished cells are not trained again)",
        description="Run a sweep from a preset or a YAML spec; finished cells come back from the store.",
    )
    _add_spec_options(run)
    run.add_argument("--workers", type=int, help="cells trained at once (overrides execution.workers)")
    run.set_defaults(command=_run)

    query = commands.add_parser(
        "query",
        help="run SQL over the store (views: runs, curves, fits, sweeps, corpus_stats)",
        description="Run one SQL statement against the store's DuckDB catalog and print the result.",
    )
    query.add_argument("sql", help='e.g. "select params_nonembedding, tokens_seen, val_loss_nats from runs"')
    query.add_argument("--store", default=DEFAULT_STORE, help=f"store folder (default: {DEFAULT_STORE})")
    query.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output format")
    query.set_defaults(command=_query)

    status = commands.add_parser(
        "status",
        help="show which cells of a spec's grid are done, failed or missing",
        description="Show the N x D grid of a spec with each cell's state in the store.",
    )
    _add_spec_options(status)
    status.set_defaults(command=_status)
    return parser


def _add_spec_options(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", help=f"named spec: {', '.join(PRESETS)} (default: default)")
    source.add_argument("--spec", type=Path, help="YAML file with a SweepSpec")
    parser.add_argument("--store", help=f"store folder (default: the spec's, {DEFAULT_STORE})")


def _spec_from(args: argparse.Namespace, **execution: object) -> SweepSpec:
    spec = load_spec(args.preset, args.spec)
    overrides = {"store": args.store, **execution}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if not overrides:
        return spec
    from flows.spec import validate_spec

    data = spec.model_dump()
    data["execution"] |= overrides
    return validate_spec(data)


def _configure_prefect(verbose: bool) -> None:
    """Offline-friendly defaults; Prefect's console handler prints every task log and traceback,
    so unless --verbose the CLI prints its own progress instead."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")


def _run(args: argparse.Namespace) -> int:
    spec = _spec_from(args, workers=args.workers)
    Store(spec.execution.store)  # a store path that is a file fails here, before any work
    source_version(spec.corpus.source)  # so does a missing corpus path
    from flows import progress
    from flows.sweep import CellsFailed, scaling_sweep

    started = time.perf_counter()
    console.print(f"sweep [bold]{spec.name}[/bold] into {Store(spec.execution.store).root}")
    with progress.terminal_progress(console):
        try:
            summary = scaling_sweep(spec)
            failure = None
        except CellsFailed as error:
            summary, failure = None, error
    _print_cells(Store(spec.execution.store), spec)
    if summary is not None:
        _print_laws(summary["fits"])
        console.print(f"report: {summary['report']}")
    console.print(f"finished in {time.perf_counter() - started:.1f} s")
    if failure is not None:
        errors.print(f"[red]{failure}[/red]; rerun the same command to retry them.", highlight=False)
        return EXIT_CELLS_FAILED
    return 0


def _print_laws(fits: dict) -> None:
    console.print("[bold]fitted laws[/bold]")
    for form, law in fits["laws"].items():
        console.print(f"  {form:16s} {law}", highlight=False)
    for form, why in fits["skipped"].items():
        console.print(f"  {form:16s} not fitted: {why}", highlight=False)


def _print_cells(store: Store, spec: SweepSpec) -> None:
    from flows.status import grid_status

    cells = grid_status(spec)
    table = Table(title="cells")
    for column in ("N (non-emb.)", "D (tokens)", "seed", "status", "val loss", "train s"):
        table.add_column(column, justify="right")
    for cell in cells:
        loss = "" if cell.val_loss_nats is None else f"{cell.val_loss_nats:.4f}"
        seconds = "" if cell.train_seconds is None else f"{cell.train_seconds:.1f}"
        table.add_row(f"{cell.params:,}", f"{cell.tokens:,}", str(cell.seed), cell.state, loss, seconds)
    console.print(table)


def _status(args: argparse.Namespace) -> int:
    from flows.status import grid_status, grid_table

    spec = _spec_from(args)
    cells = grid_status(spec)
    console.print(grid_table(spec, cells))
    for cell in cells:
        if cell.error:
            console.print(f"  {cell.cell_id}: {cell.state}: {cell.error}", highlight=False)
    return 0


def _query(args: argparse.Namespace) -> int:
    import duckdb

    from storage.catalog import open_catalog

    store = Store(args.store)
    if not store.root.is_dir():
        raise StoreError(f"store: {store.root} does not exist; run a sweep first or pass --store.")
    try:
        result = open_catalog(store).execute(args.sql)
    except duckdb.Error as error:
        raise InputError(f"query: {str(error).splitlines()[0]}; fix the SQL.") from None
    if result.description is None:
        return 0
    columns = [d[0] for d in result.description]
    rows = result.fetchall()
    FORMATTERS[args.format](columns, rows)
    return 0


def _print_table(columns: list[str], rows: list[tuple]) -> None:
    table = Table()
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)


def _print_csv(columns: list[str], rows: list[tuple]) -> None:
    import csv

    writer = csv.writer(sys.stdout)
    writer.writerow(columns)
    writer.writerows(rows)


def _print_json(columns: list[str], rows: list[tuple]) -> None:
    print(json.dumps([dict(zip(columns, row, strict=True)) for row in rows], default=str, indent=1))


FORMATTERS: dict[str, Callable[[list[str], list[tuple]], None]] = {
    "table": _print_table,
    "csv": _print_csv,
    "json": _print_json,
}


if __name__ == "__main__":
    sys.exit(main())
