"""Reading a table of runs for `scalelaw fit --csv`: CSV, TSV, semicolon- or pipe-separated text (the
delimiter is sniffed) or Parquet, with a header line naming the columns."""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from tasks.errors import InputError

PARQUET_SUFFIXES = {".parquet", ".pq"}
DELIMITERS = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe"}


def read_runs(args: argparse.Namespace) -> dict[str, np.ndarray]:
    """N, D, C and loss (and each run's budget label with --budget-col) from the table file."""
    table, how = _read_table(args.csv)
    wanted = {"--params-col": args.params_col, "--loss-col": args.loss_col}
    wanted |= {"--flops-col": args.flops_col} if args.flops_col else {"--tokens-col": args.tokens_col}
    if args.budget_col:
        if args.form != "isoflop":
            raise InputError(
                "--budget-col: only the isoflop form groups runs by budget; drop it or pass --form isoflop."
            )
        wanted["--budget-col"] = args.budget_col
    missing = [f"{option} {name!r}" for option, name in wanted.items() if name not in table.column_names]
    if missing:
        raise InputError(
            f"--csv: {args.csv} ({how}) has no column {', '.join(missing)} (its header: "
            f"{', '.join(table.column_names)}); name the right columns with those options."
        )
    numeric = [name for option, name in wanted.items() if option != "--budget-col"]
    try:
        columns = {
            name: np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=float)
            for name in numeric
        }
    except (ValueError, TypeError):
        hint = " (decimal commas? write 1.5, not 1,5)" if "semicolon" in how else ""
        raise InputError(f"--csv: columns {', '.join(numeric)} must hold numbers only{hint}.") from None
    N, loss = columns[args.params_col], columns[args.loss_col]
    with np.errstate(
        divide="ignore", invalid="ignore", over="ignore"
    ):  # bad N is refused by the fit, naming N
        if args.flops_col:
            C = columns[args.flops_col]
            D = C / (6 * N)
        else:
            D = columns[args.tokens_col]
            C = 6 * N * D
    runs = {"N": N, "D": D, "C": C, "loss": loss}
    if args.budget_col:
        runs["budget"] = np.asarray(table.column(args.budget_col).to_pylist(), dtype=object).astype(str)
    return runs


def _read_table(path: Path) -> tuple[Any, str]:
    """The table and how it was read ("Parquet", or "comma-separated with a header line", ...)."""
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet as pq

    if not path.is_file():
        raise InputError(f"--csv: {path} is not an existing file; pass a CSV, TSV or Parquet file of runs.")
    if path.suffix.lower() in PARQUET_SUFFIXES:
        try:
            return pq.read_table(path), "Parquet"
        except (pa.ArrowException, OSError) as error:
            raise InputError(
                f"--csv: {path} is not a readable Parquet file ({error}); fix the file."
            ) from None
    delimiter = _sniffed_delimiter(path)
    how = f"read as {DELIMITERS[delimiter]}-separated with a header line"
    try:
        table = pyarrow.csv.read_csv(path, parse_options=pyarrow.csv.ParseOptions(delimiter=delimiter))
    except pa.ArrowInvalid as error:
        raise InputError(
            f"--csv: {path} is not a readable CSV ({str(error).splitlines()[0]}; {how}); fix the file."
        ) from None
    return table, how


def _sniffed_delimiter(path: Path) -> str:
    """The delimiter of a text table (comma, tab, semicolon or pipe); refuses a file that is empty, not
    text, or without a header line."""
    with open(path, "rb") as handle:
        head = handle.read(65536)
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError:
        if len(head) < 65536:
            raise InputError(
                f"--csv: {path} is not UTF-8 text; pass a CSV, TSV or Parquet (.parquet) file."
            ) from None
        text = head[:-4].decode("utf-8", errors="ignore")  # a multi-byte character cut by the read
    lines = [line for line in io.StringIO(text).read().splitlines() if line.strip()]
    if not lines:
        raise InputError(
            f"--csv: {path} is not a readable CSV (it is empty); write a header line such as "
            "params,tokens,loss and one row per run."
        )
    header = lines[0]
    try:
        delimiter = csv.Sniffer().sniff("\n".join(lines[:20]), delimiters="".join(DELIMITERS)).delimiter
    except csv.Error:
        counts = {d: header.count(d) for d in DELIMITERS}
        delimiter = max(counts, key=counts.get) if max(counts.values()) else ","
    fields = [field.strip().strip('"') for field in header.split(delimiter)]
    if all(_is_number(field) for field in fields):
        raise InputError(
            f"--csv: {path} has no header line (its first line, {header[:60]!r}, holds only numbers); "
            f"expected a first line naming the columns ({DELIMITERS[delimiter]}-separated, e.g. "
            "params,tokens,loss), so add one."
        )
    return delimiter


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------------
