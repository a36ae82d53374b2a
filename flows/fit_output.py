"""How `scalelaw fit --csv` prints a fit: a table, JSON or CSV."""

from __future__ import annotations

import csv
import json
import math
import sys
from typing import Any

from rich.console import Console
from rich.table import Table


def finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def result_record(result: Any) -> dict[str, Any]:
    """A fit (or IsoFLOP result) as a JSON-ready dict."""
    from tasks import laws

    if not isinstance(result, laws.IsoFlopResult):
        return laws.result_to_dict(result)
    a_half = laws.Z_95 * result.a_stderr
    return {
        "form": "isoflop",
        "a": finite_or_none(result.a),
        "b": finite_or_none(1 - result.a),
        "coefficient": finite_or_none(result.coefficient),
        "stderr": {"a": finite_or_none(result.a_stderr), "b": finite_or_none(result.a_stderr)},
        "ci": {
            "a": [finite_or_none(result.a - a_half), finite_or_none(result.a + a_half)],
            "b": [finite_or_none(1 - result.a - a_half), finite_or_none(1 - result.a + a_half)],
        },
        "n_groups_used": result.n_groups_used,
        "groups": [
            {
                "flops": g.compute,
                "n_points": g.n_points,
                "N_opt": finite_or_none(g.N_opt),
                "N_opt_ci": [finite_or_none(g.N_opt_low), finite_or_none(g.N_opt_high)],
                "D_opt": finite_or_none(g.D_opt),
                "loss_at_opt": finite_or_none(g.loss_at_opt),
                "warning": g.warning or None,
            }
            for g in result.groups
        ],
        "note": result.note + " N_opt ∝ C^a, D_opt = C / (6 N_opt) ∝ C^b with b = 1 - a.",
    }


def _parameter_rows(
    record: dict[str, Any],
) -> list[tuple[str, float | None, float | None, float | None, float | None]]:
    return [
        (name, record[name], record["stderr"].get(name), *record["ci"].get(name, [None, None]))
        for name in record["ci"]
    ]


def _print_json(result: Any, optimum: list[dict] | None, console: Console) -> None:
    record = result_record(result)
    if optimum is not None:
        record["optimal"] = optimum
    print(json.dumps(record, indent=1))


def _print_csv(result: Any, optimum: list[dict] | None, console: Console) -> None:
    """Long format: one row per parameter, then one per (quantity, FLOPs) of the optimal table."""
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["form", "quantity", "flops", "estimate", "stderr", "ci_low", "ci_high"])
    record = result_record(result)
    for name, estimate, stderr, low, high in _parameter_rows(record):
        writer.writerow([record["form"], name, "", *(_cell(v) for v in (estimate, stderr, low, high))])
    for row in optimum or []:
        for quantity in ("N_opt", "D_opt", "tokens_per_param", "loss"):
            low, high = (row["N_opt_low"], row["N_opt_high"]) if quantity == "N_opt" else (None, None)
            writer.writerow(
                [
                    record["form"],
                    quantity,
                    row["flops"],
                    *(_cell(v) for v in (row[quantity], None, low, high)),
                ]
            )


def _cell(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _print_table(result: Any, optimum: list[dict] | None, console: Console) -> None:
    from tasks import laws

    record = result_record(result)
    if isinstance(result, laws.IsoFlopResult):
        groups = Table(title="IsoFLOP budgets")
        for column in ("flops", "runs", "N_opt", "95% interval", "D_opt", "loss", "warning"):
            groups.add_column(column, justify="right")
        for g in record["groups"]:
            low, high = g["N_opt_ci"]
            groups.add_row(
                f"{g['flops']:.3g}",
                str(g["n_points"]),
                _text(g["N_opt"]),
                f"{_text(low)} .. {_text(high)}",
                _text(g["D_opt"]),
                _text(g["loss_at_opt"]),
                g["warning"] or "",
            )
        console.print(groups)
    else:
        from tasks.fits import law_text

        console.print(law_text(result), highlight=False)
    table = Table()
    for column in ("parameter", "estimate", "stderr", "95% interval"):
        table.add_column(column, justify="right")
    for name, estimate, stderr, low, high in _parameter_rows(record):
        table.add_row(name, _text(estimate, 6), _text(stderr, 3), f"{_text(low)} .. {_text(high)}")
    console.print(table)
    if optimum is not None:
        optimal = Table(title="compute-optimal allocation")
        for column in ("flops", "N_opt", "95% interval", "D_opt", "D/N", "loss"):
            optimal.add_column(column, justify="right")
        for row in optimum:
            optimal.add_row(
                f"{row['flops']:.3g}",
                _text(row["N_opt"]),
                f"{_text(row['N_opt_low'])} .. {_text(row['N_opt_high'])}",
                _text(row["D_opt"]),
                _text(row["tokens_per_param"], 3),
                _text(row["loss"]),
            )
        console.print(optimal)
    if "objective" in record:
        console.print(
            f"objective {record['objective']:.6g} over {record['n_points']} runs; "
            f"converged: {record['converged']}"
        )
    if record["note"]:
        console.print(record["note"], highlight=False)


def _text(value: float | None, digits: int = 4) -> str:
    return "nan" if value is None else f"{value:.{digits}g}"


PRINTERS = {"table": _print_table, "json": _print_json, "csv": _print_csv}
