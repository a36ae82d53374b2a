"""How `scalelaw query` prints the rows of a query: a table, CSV or JSON."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable

from rich.console import Console
from rich.table import Table


def _print_table(columns: list[str], rows: list[tuple], console: Console) -> None:
    table = Table()
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)


def _print_csv(columns: list[str], rows: list[tuple], console: Console) -> None:
    writer = csv.writer(sys.stdout)
    writer.writerow(columns)
    writer.writerows(rows)


def _print_json(columns: list[str], rows: list[tuple], console: Console) -> None:
    print(json.dumps([dict(zip(columns, row, strict=True)) for row in rows], default=str, indent=1))


FORMATTERS: dict[str, Callable[[list[str], list[tuple], Console], None]] = {
    "table": _print_table,
    "csv": _print_csv,
    "json": _print_json,
}
