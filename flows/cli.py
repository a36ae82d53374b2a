"""The `scalelaw` command: run a sweep, query the store, show a grid's status."""

from __future__ import annotations

import argparse
import atexit
import errno
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from flows.fit_csv import add_csv_options, fit_csv, refuse_csv_options
from flows.query_output import FORMATTERS
from flows.spec import PRESETS, SweepSpec, load_spec, validate_spec
from storage.errors import UserError
from storage.store import DEFAULT_STORE, Store, StoreError
from tasks.corpus import source_version
from tasks.errors import InputError

EXIT_USER_ERROR = 2
EXIT_CELLS_FAILED = 1
EXIT_DISK_FULL = 74  # EX_IOERR of sysexits.h

console = Console()
errors = Console(stderr=True)


def main(argv: list[str] | None = None) -> int:
    # SIGTERM becomes SystemExit, so the temporary Prefect server and worker processes are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    args = _parser().parse_args(argv)
    _configure_prefect(args.verbose)
    try:
        return args.command(args)
    except UserError as error:  # InputError, SpecError, StoreError: one sentence, exit 2
        errors.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        errors.print("interrupted; finished cells are kept and a rerun resumes the rest.")
        return 130
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        errors.print(
            f"[red]error:[/red] no space left on the disk ({error}); free space or pass --store a folder on "
            "a larger disk, then rerun: finished work is kept.",
            highlight=False,
            soft_wrap=True,
        )
        return EXIT_DISK_FULL


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
    run.add_argument(
        "--engine", choices=["processes", "dask"], help="local worker processes (default) or a Dask cluster"
    )
    run.add_argument("--dask-address", help="scheduler of an existing Dask cluster, e.g. tcp://host:8786")
    run.add_argument(
        "--record-run",
        action="store_true",
        help="run the Prefect flow even when the store holds the whole sweep (every step then shows as "
        "Cached in the UI); without it such a rerun answers from the store in seconds",
    )
    run.set_defaults(command=_run)

    query = commands.add_parser(
        "query",
        help="run SQL over the store (views: runs, curves, fits, sweeps, corpus_stats)",
        description="Run one SQL statement against the store's DuckDB catalog and print the result.",
    )
    query.add_argument("sql", help='e.g. "select params_nonembedding, tokens_seen, val_loss_nats from runs"')
    query.add_argument(
        "--store",
        default=DEFAULT_STORE,
        help=f"store folder or URL, e.g. s3://bucket/x (default: {DEFAULT_STORE})",
    )
    query.add_argument("--format", choices=list(FORMATTERS), default="table", help="output format")
    query.set_defaults(command=_query)

    status = commands.add_parser(
        "status",
        help="show which cells of a spec's grid are done, failed or missing",
        description="Show the N x D grid of a spec with each cell's state in the store.",
    )
    _add_spec_options(status)
    status.set_defaults(command=_status)

    fit = commands.add_parser(
        "fit",
        help="fit laws to a stored sweep (--store) or to anyone's runs in a CSV, TSV or Parquet file (--csv)",
        description="Re-fit a stored sweep without training, or fit one law form to a table of runs "
        "(one row per run: parameters, tokens or FLOPs, final loss).",
    )
    target = fit.add_mutually_exclusive_group()
    target.add_argument("--store", help=f"re-fit the newest sweep in this store (default: {DEFAULT_STORE})")
    target.add_argument("--csv", type=Path, help="a CSV, TSV or Parquet file of runs (delimiter sniffed)")
    fit.add_argument("--sweep", help="with --store: the sweep's name (default: the newest sweep)")
    fit.add_argument(
        "--params-kind", choices=["nonembedding", "total"], help="with --store (default: nonembedding)"
    )
    fit.add_argument("--compute-kind", choices=["6nd", "with_attention"], help="with --store (default: 6nd)")
    fit.add_argument(
        "--target", choices=["nats", "bits_per_byte"], help="with --store: the loss (default: nats)"
    )
    add_csv_options(fit)
    fit.add_argument("--format", choices=["table", "json", "csv"], default="table", help="output format")
    fit.set_defaults(command=_fit)

    suggest = commands.add_parser(
        "suggest",
        help="propose the cells to train next: those that most narrow N_opt's interval per FLOP",
        description="From a sweep's fit and its bootstrap, propose new cells within a FLOP budget that "
        "most narrow the interval of N_opt (or of the loss) at a target compute, and write the spec that "
        "extends the sweep with them; --loop also trains them, refits and repeats.",
    )
    _add_spec_options(suggest)
    suggest.add_argument(
        "--flops", type=float, help="FLOPs the new cells may cost in all (default: 1/4 of the sweep's)"
    )
    suggest.add_argument(
        "--target-compute",
        type=float,
        help="compute C where N_opt matters, in FLOPs (default: 100x the largest cell)",
    )
    suggest.add_argument("--cells", type=int, default=8, help="most cells to propose (default: 8)")
    suggest.add_argument(
        "--objective", choices=["n_opt", "loss_at_target"], default="n_opt", help="whose interval to narrow"
    )
    suggest.add_argument(
        "--loop", type=int, default=0, metavar="ROUNDS", help="suggest, train, refit ROUNDS times"
    )
    suggest.add_argument(
        "--bootstrap", type=int, help="bootstrap refits (default: the spec's fit.bootstrap, or 200)"
    )
    suggest.add_argument("--output", type=Path, help="the extended spec (default: <sweep>-suggested.yaml)")
    suggest.set_defaults(command=_suggest)

    serve = commands.add_parser(
        "serve",
        help="serve the deployments (sweep, refit, nightly resume) with a Prefect UI on 127.0.0.1",
        description="Start a Prefect server bound to the loopback address (unless PREFECT_API_URL points at "
        "one), register the project's deployments and serve them until Ctrl-C.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address the server binds (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port of the server (default: a free one)")
    serve.set_defaults(command=_serve)
    return parser


def _add_spec_options(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", help=f"named spec: {', '.join(PRESETS)} (default: default)")
    source.add_argument("--spec", type=Path, help="YAML file with a SweepSpec")
    parser.add_argument(
        "--store", help=f"store folder or URL, e.g. s3://bucket/x (default: the spec's, {DEFAULT_STORE})"
    )


def _spec_from(args: argparse.Namespace, **execution: object) -> SweepSpec:
    spec = load_spec(args.preset, args.spec)
    overrides = {"store": args.store, **execution}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if not overrides:
        return spec
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
    engine = "dask" if args.dask_address else args.engine
    spec = _spec_from(args, workers=args.workers, engine=engine, dask_address=args.dask_address)
    Store(spec.execution.store).check_reachable()  # a file or an unreachable bucket fails before any work
    source_version(spec.corpus.source)  # so does a missing corpus path
    from flows.status import stored_plan, stored_sweep, trains_cells

    started = time.perf_counter()
    console.print(f"sweep [bold]{spec.name}[/bold] into {Store(spec.execution.store).location}")
    plan = stored_plan(spec)
    trains = trains_cells(spec, plan)
    summary = None if args.record_run or trains else stored_sweep(spec, plan)
    if summary is not None:
        failure = None
        console.print("every cell, the fits and the report are complete in the store: nothing to run")
    else:
        summary, failure = _run_flow(spec, trains)
    _print_cells(spec)
    if summary is not None:
        _print_laws(summary["fits"])
        console.print(f"report: {summary['report']}")
    console.print(f"finished in {time.perf_counter() - started:.1f} s")
    if failure is not None:
        errors.print(f"[red]{failure}[/red]; rerun the same command to retry them.", highlight=False)
        return EXIT_CELLS_FAILED
    return 0


def _run_flow(spec: SweepSpec, trains: bool) -> tuple[dict | None, Exception | None]:
    """The sweep's Prefect flow, with a progress bar: (its summary, None) or (None, the cells failed).
    `trains`: whether the store leaves trunks or cells to train (then workers start at once)."""
    from flows.api import early_server, prefect_api

    with prefect_api(early_server()) as api:
        from flows import progress  # the flow's code, imported while the API starts
        from flows.sweep import CellsFailed, sweep_started

        with sweep_started(spec, trains, api.wait_ready) as sweep, progress.terminal_progress(console):
            try:
                return sweep(spec), None
            except CellsFailed as error:
                return None, error


def _print_laws(fits: dict) -> None:
    verdict = fits.get("verdict")
    if verdict is not None:
        console.print(f"[bold]verdict[/bold]: {verdict['headline']}", highlight=False)
        for finding in verdict["findings"]:
            console.print(
                f"  {finding['severity']}: {finding['reason']} Fix: {finding['fix']}.", highlight=False
            )
    console.print("[bold]fitted laws[/bold]")
    for form, law in fits["laws"].items():
        console.print(f"  {form:16s} {law}", highlight=False)
    for form, why in fits["skipped"].items():
        console.print(f"  {form:16s} not fitted: {why}", highlight=False)
    if fits["excluded"]:
        console.print(f"  left out of every fit: {', '.join(fits['excluded'])}", highlight=False)


def _print_cells(spec: SweepSpec) -> None:
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


def _suggest(args: argparse.Namespace) -> int:
    from flows.api import prefect_api
    from flows.suggest import checked_options, print_summary, suggest_cells

    spec = _spec_from(args)
    _existing_store(spec.execution.store)
    options = checked_options(
        target_flops=args.target_compute,
        budget_flops=args.flops,
        cells=args.cells,
        objective=args.objective,
        rounds=args.loop,
        bootstrap=args.bootstrap,
        output=None if args.output is None else str(args.output),
    )
    with prefect_api() as api:
        api.wait_ready()
        summary = suggest_cells(spec, **options.model_dump())
    print_summary(summary, console)
    return EXIT_CELLS_FAILED if summary["failed"] else 0


def _serve(args: argparse.Namespace) -> int:
    from deployments.serve import serve_project

    serve_project(args.host, args.port)
    return 0


def _fit(args: argparse.Namespace) -> int:
    if args.csv is not None:
        return fit_csv(args, console)
    from flows.api import prefect_api
    from flows.refit import refit_sweep

    refuse_csv_options(args)
    if args.format == "csv":
        raise InputError("--format csv: applies to --csv only; pass --format table or json with --store.")
    store = _existing_store(args.store or DEFAULT_STORE)
    with prefect_api() as api:
        api.wait_ready()
        summary = refit_sweep(
            store.location,
            args.sweep,
            args.params_kind or "nonembedding",
            args.compute_kind or "6nd",
            args.target or "nats",
        )
    if args.format == "json":
        print(json.dumps(summary["fits"], indent=1, default=str))
    else:
        _print_laws(summary["fits"])
        console.print(f"report: {summary['report']}")
    return 0


def _existing_store(location: str) -> Store:
    store = Store(location)
    if not store.exists():
        raise StoreError(f"store: {store.location} does not exist; run a sweep first or pass --store.")
    return store


def _query(args: argparse.Namespace) -> int:
    import duckdb

    from storage.catalog import read_only_query

    store = _existing_store(args.store)
    try:
        result = read_only_query(store, args.sql)
    except duckdb.Error as error:  # read_only_query raises a QueryError (a UserError) itself
        raise InputError(f"query: {str(error).splitlines()[0]}; fix the SQL.") from None
    if result.description is None:
        return 0
    columns = [d[0] for d in result.description]
    rows = result.fetchall()
    FORMATTERS[args.format](columns, rows, console)
    return 0


def entry() -> None:
    """The `scalelaw` program: `main`, then, once the exit handlers have run and the output is
    flushed, the process ends without tearing its modules down: 0.5 s after a sweep, which leaves
    Prefect, pyarrow, DuckDB, scipy and matplotlib loaded. A thread still running gets the usual exit."""
    status = main()
    if any(thread is not threading.main_thread() and not thread.daemon for thread in threading.enumerate()):
        sys.exit(status)
    atexit._run_exitfuncs()  # CPython's own exit sequence would run them next
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    entry()
