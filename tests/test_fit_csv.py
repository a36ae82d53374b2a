"""`scalelaw fit --csv` as a standalone fitter of anyone's runs (issue 12): which runs each form sees,
the options of a fitter (forms, objective, fixed and tied parameters, IsoFLOP, the compute-optimal
table, output formats), table files of any common kind, and one sentence with exit 2 for a mistake."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks import laws
from tasks.fits import best_per, compute_frontier

TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
Fit = Callable[..., tuple[int, str, str]]


def chinchilla_loss(N: np.ndarray, D: np.ndarray) -> np.ndarray:
    return TRUE["E"] + TRUE["A"] / N ** TRUE["alpha"] + TRUE["B"] / D ** TRUE["beta"]


def grid(n_sizes: int = 6, n_tokens: int = 6, sigma: float = 2e-3, seed: int = 0) -> dict[str, np.ndarray]:
    N, D = np.meshgrid(np.geomspace(1e6, 1e9, n_sizes), np.geomspace(1e8, 1e11, n_tokens))
    N, D = N.ravel(), D.ravel()
    noise = np.exp(sigma * np.random.default_rng(seed).standard_normal(N.size))
    return {"params": N, "tokens": D, "loss": chinchilla_loss(N, D) * noise}


def write_table(
    path: Path, columns: dict[str, np.ndarray], delimiter: str = ",", header: bool = True
) -> Path:
    if path.suffix == ".parquet":
        pq.write_table(pa.table(columns), path)
        return path
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    if header:
        writer.writerow(columns)
    writer.writerows(zip(*(np.asarray(v).tolist() for v in columns.values()), strict=True))
    path.write_text(buffer.getvalue())
    return path


@pytest.fixture
def fit(tmp_path, capsys, monkeypatch) -> Fit:
    """`scalelaw fit ARGS` in this process (it starts no Prefect server): (exit status, stdout, stderr)."""
    from flows import cli

    monkeypatch.chdir(tmp_path)
    sigterm = signal.getsignal(signal.SIGTERM)
    environ = dict(os.environ)

    def run(*args: str) -> tuple[int, str, str]:
        try:
            status = cli.main(["fit", *map(str, args)])
        except SystemExit as exit:  # argparse refuses a malformed option itself
            status = exit.code
        printed = capsys.readouterr()
        return status, printed.out, printed.err

    yield run
    signal.signal(signal.SIGTERM, sigterm)
    os.environ.clear()
    os.environ.update(environ)


def fitted(fit: Fit, *args: str) -> dict:
    status, out, err = fit(*args, "--format", "json")
    assert status == 0, err
    return json.loads(out)


def assert_one_sentence(status: int, err: str, fragment: str) -> None:
    *usage, message = err.strip().splitlines()
    assert status == 2, err
    assert "Traceback" not in err and message.startswith("error: ") and message.endswith("."), err
    assert fragment in message, err
    assert not usage or usage[0].startswith("usage: ")


# --------------------------------------------------------------------------------------------------
# Which runs the one-axis forms see (issue 12, item 3)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("form", "axis"), [("power_law_N", "params"), ("power_law_D", "tokens")])
def test_one_axis_forms_fit_the_best_run_per_value_as_a_sweep_does(fit: Fit, tmp_path, form, axis) -> None:
    """Before issue 12 the CSV path fitted all 36 runs, while a sweep fits the 6 best per N (per D)."""
    runs = grid()
    path = write_table(tmp_path / "runs.csv", runs)
    record = fitted(fit, "--csv", path, "--form", form)
    best = best_per(runs[axis], runs["loss"])
    expected = laws.fit_power_law(runs[axis][best], runs["loss"][best], axis=form[-1])
    assert record["n_points"] == 6
    assert record["alpha"] == pytest.approx(expected.params["alpha"], rel=1e-9)
    assert f"best run of each of the 6 distinct {form[-1]} values (36 runs)" in record["note"]
    pooled = fitted(fit, "--csv", path, "--form", form, "--pool")
    assert pooled["n_points"] == 36 and "all 36 runs (--pool)" in pooled["note"]


def test_power_law_c_fits_the_loss_compute_frontier(fit: Fit, tmp_path) -> None:
    runs = grid()
    record = fitted(fit, "--csv", write_table(tmp_path / "runs.csv", runs), "--form", "power_law_C")
    compute = 6 * runs["params"] * runs["tokens"]
    frontier = compute_frontier(compute, runs["loss"])
    expected = laws.fit_power_law(compute[frontier], runs["loss"][frontier], axis="C")
    assert record["n_points"] == len(frontier) < 36
    assert record["alpha"] == pytest.approx(expected.params["alpha"], rel=1e-9)
    assert "loss-compute frontier" in record["note"]


# --------------------------------------------------------------------------------------------------
# Unidentifiable runs (item 2) and the options of a fitter
# --------------------------------------------------------------------------------------------------


def test_two_distinct_token_counts_are_called_unidentifiable(fit: Fit, tmp_path) -> None:
    N, D = np.meshgrid(np.geomspace(1e6, 1e9, 6), [1e9, 1e10])
    runs = {"params": N.ravel(), "tokens": D.ravel(), "loss": chinchilla_loss(N.ravel(), D.ravel())}
    path = write_table(tmp_path / "runs.csv", runs)
    status, out, err = fit("--csv", path)
    assert_one_sentence(status, err, "unidentifiable from these runs: D takes 2 distinct values")
    assert out == ""
    record = fitted(fit, "--csv", path, "--fix", "E=1.69")  # the suggested remedy works
    assert record["beta"] == pytest.approx(TRUE["beta"], rel=1e-5)


def test_objective_fixed_and_tied_parameters(fit: Fit, tmp_path) -> None:
    runs = grid()
    path = write_table(tmp_path / "runs.csv", runs)
    N, D, loss = runs["params"], runs["tokens"], runs["loss"]
    mse = fitted(fit, "--csv", path, "--loss", "mse")
    assert mse["alpha"] == pytest.approx(
        laws.fit_chinchilla(N, D, loss, huber_delta=math.inf).params["alpha"]
    )
    assert mse["note"].startswith("Least squares on log loss")
    huber = fitted(fit, "--csv", path, "--loss", "huber:0.01")
    assert huber["note"].startswith("Huber(delta=0.01)")
    tied = fitted(fit, "--csv", path, "--tie-exponents", "--fix", "E=1.7")
    assert tied["alpha"] == tied["beta"] and tied["E"] == 1.7
    assert tied["ci"]["E"] == [1.7, 1.7]


def test_optimal_table_is_the_closed_form_allocation(fit: Fit, tmp_path) -> None:
    runs = grid()
    record = fitted(fit, "--csv", write_table(tmp_path / "runs.csv", runs), "--optimal", "1e21,1e23")
    expected = laws.compute_optimal(
        laws.fit_chinchilla(runs["params"], runs["tokens"], runs["loss"]), [1e21, 1e23]
    )
    assert [row["flops"] for row in record["optimal"]] == [1e21, 1e23]
    np.testing.assert_allclose([row["N_opt"] for row in record["optimal"]], expected.N_opt, rtol=1e-9)
    np.testing.assert_allclose([row["D_opt"] for row in record["optimal"]], expected.D_opt, rtol=1e-9)
    status, out, _ = fit("--csv", tmp_path / "runs.csv", "--optimal", "1e21", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert status == 0 and {"alpha", "N_opt", "D_opt"} <= {row["quantity"] for row in rows}


def isoflop_runs(jitter: float) -> dict[str, np.ndarray]:
    """Nine sizes around the true optimum at each of five budgets; compute jittered by `jitter`."""
    a = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
    scale = (TRUE["alpha"] * TRUE["A"] / (TRUE["beta"] * TRUE["B"])) ** (1 / (TRUE["alpha"] + TRUE["beta"]))
    columns: dict[str, list] = {"params": [], "flops": [], "loss": [], "budget": []}
    rng = np.random.default_rng(0)
    for i, budget in enumerate(np.geomspace(1e18, 1e22, 5)):
        n = scale * (budget / 6) ** a * np.logspace(-0.6, 0.6, 9)
        flops = budget * np.exp(jitter * rng.standard_normal(9))
        columns["params"] += list(n)
        columns["flops"] += list(flops)
        columns["loss"] += list(chinchilla_loss(n, flops / (6 * n)) * np.exp(2e-3 * rng.standard_normal(9)))
        columns["budget"] += [f"budget-{i}"] * 9
    return {name: np.array(values) for name, values in columns.items()}


def test_isoflop_form_by_budget_column_or_compute_tolerance(fit: Fit, tmp_path) -> None:
    runs = isoflop_runs(jitter=0.02)
    path = write_table(tmp_path / "iso.csv", runs)
    true_a = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
    by_column = fitted(
        fit, "--csv", path, "--form", "isoflop", "--flops-col", "flops", "--budget-col", "budget"
    )
    assert by_column["n_groups_used"] == 5
    assert by_column["a"] == pytest.approx(true_a, abs=0.02) and by_column["b"] == pytest.approx(
        1 - true_a, abs=0.02
    )
    low, high = by_column["ci"]["a"]
    assert low < by_column["a"] < high
    for group in by_column["groups"]:
        assert group["N_opt_ci"][0] < group["N_opt"] < group["N_opt_ci"][1]
    # 2% jitter splits budgets at the default 5% tolerance only by chance; 20% holds each together.
    by_tolerance = fitted(
        fit, "--csv", path, "--form", "isoflop", "--flops-col", "flops", "--budget-rtol", "0.2"
    )
    assert len(by_tolerance["groups"]) == 5
    assert by_tolerance["a"] == pytest.approx(by_column["a"], abs=0.01)
    status, out, err = fit("--csv", path, "--form", "isoflop", "--flops-col", "flops", "--optimal", "1e23")
    assert status == 0 and "compute-optimal allocation" in out, err


def test_help_lists_every_form(fit: Fit) -> None:
    status, out, _ = fit("--help")
    assert status == 0
    for form in [*laws.FORMS, "isoflop"]:
        assert f"\n  {form} " in out, form


# --------------------------------------------------------------------------------------------------
# Table files: CSV, TSV, semicolons, Parquet; headerless files
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "delimiter"), [("runs.tsv", "\t"), ("runs.csv", ";"), ("runs.parquet", None)]
)
def test_tsv_semicolon_and_parquet_read_like_a_csv(fit: Fit, tmp_path, name, delimiter) -> None:
    runs = grid()
    reference = fitted(fit, "--csv", write_table(tmp_path / "reference.csv", runs), "--form", "power_law_N")
    record = fitted(
        fit, "--csv", write_table(tmp_path / name, runs, delimiter or ","), "--form", "power_law_N"
    )
    assert record["alpha"] == reference["alpha"]


def test_a_headerless_file_says_a_header_line_was_expected(fit: Fit, tmp_path) -> None:
    status, _, err = fit("--csv", write_table(tmp_path / "runs.tsv", grid(), "\t", header=False))
    assert_one_sentence(status, err, "has no header line")
    assert "expected a first line naming the columns (tab-separated, e.g. params,tokens,loss)" in err


def test_a_missing_column_says_how_the_file_was_read(fit: Fit, tmp_path) -> None:
    status, _, err = fit("--csv", write_table(tmp_path / "runs.csv", grid(), ";"), "--params-col", "N")
    assert_one_sentence(
        status, err, "read as semicolon-separated with a header line) has no column --params-col 'N'"
    )


# --------------------------------------------------------------------------------------------------
# Mistakes: one sentence, exit 2
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (["--params-kind", "total"], "--params-kind: applies to --store only"),
        (["--compute-kind", "6nd"], "--compute-kind: applies to --store only"),
        (["--sweep", "mine"], "--sweep: applies to --store only"),
        (["--target", "nats"], "--target: applies to --store only"),
        (["--loss", "huber:x"], "--loss: 'huber:x' is not huber"),
        (["--loss", "mse", "--form", "multiplicative"], "--loss: the multiplicative form is fitted by least"),
        (["--fix", "E"], "--fix: 'E' is not NAME=VALUE"),
        (["--fix", "C=1"], "fit: fixed: 'C' is not a parameter of the chinchilla form"),
        (["--fix", "alpha=0.3", "--tie-exponents"], "tie it, not both"),
        (["--tie-exponents", "--form", "kaplan"], "--tie-exponents: only the chinchilla form"),
        (["--optimal", "1e21,x"], "--optimal: '1e21,x' is not a list of positive FLOP counts"),
        (["--optimal", "1e21", "--form", "kaplan"], "--optimal: the kaplan form has no compute-optimal"),
        (["--budget-col", "b"], "--budget-col: only the isoflop form"),
        (["--form", "isoflop", "--bootstrap", "10"], "--bootstrap: the isoflop form"),
        (["--form", "cubic"], "--form: unknown form 'cubic'"),
    ],
)
def test_mistakes_are_one_sentence_and_exit_2(fit: Fit, tmp_path, options, fragment) -> None:
    status, out, err = fit("--csv", write_table(tmp_path / "runs.csv", grid()), *options)
    assert_one_sentence(status, err, fragment)
    assert out == ""


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (["--pool"], "--pool: applies to --csv only"),
        (["--format", "csv"], "--format csv: applies to --csv only"),
    ],
)
def test_csv_options_with_a_store_are_refused(fit: Fit, tmp_path, options, fragment) -> None:
    status, _, err = fit("--store", tmp_path / "nowhere", *options)
    assert_one_sentence(status, err, fragment)
