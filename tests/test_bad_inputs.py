"""Bad input through the CLI, one row per input: each is refused with one sentence naming the field and
the fix, exit status 2, no traceback, and nothing half-written in the store.

Rows run in this process (a sweep's corpus rows run the flow up to the step that refuses them); a few
run again as a user runs them, in a fresh process, to show that no traceback reaches the terminal.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import FIGURES, make_documents, run_cli, write_smoke_spec

from storage.store import COMPLETE_MARKER

Setup = Callable[[Path], list[str]]  # writes what a row needs into a folder; returns the CLI's arguments
Maker = Callable[[Path], str]  # writes a file into a folder; returns its path

DOCUMENTS = make_documents(30)
TALLY = {"tried": 0, "refused": 0, "fresh": 0}


def run(**sections: dict) -> Setup:
    """`scalelaw run` of the smoke spec with fields changed; a Maker value is made in the row's folder."""

    def setup(folder: Path) -> list[str]:
        made = {
            section: {field: value(folder) if callable(value) else value for field, value in changes.items()}
            for section, changes in sections.items()
        }
        spec = write_smoke_spec(folder / "spec.yaml", **made)
        return ["run", "--spec", str(spec), "--store", str(folder / "store")]

    return setup


def run_yaml(text: str) -> Setup:
    """`scalelaw run` of a spec file with this text."""

    def setup(folder: Path) -> list[str]:
        (folder / "spec.yaml").write_text(text)
        return ["run", "--spec", str(folder / "spec.yaml"), "--store", str(folder / "store")]

    return setup


def command(*args: str) -> Setup:
    """Fixed arguments; `{folder}` stands for the row's folder."""
    return lambda folder: [arg.format(folder=folder) for arg in args]


def query(sql: str) -> Setup:
    def setup(folder: Path) -> list[str]:
        (folder / "store").mkdir()
        return ["query", "--store", str(folder / "store"), sql]

    return setup


def store_is_a_file(*args: str) -> Setup:
    def setup(folder: Path) -> list[str]:
        (folder / "store").write_text("not a folder")
        return [*args, "--store", str(folder / "store")]

    return setup


def fit_csv(text: str, *options: str) -> Setup:
    def setup(folder: Path) -> list[str]:
        (folder / "runs.csv").write_text(text)
        return ["fit", "--csv", str(folder / "runs.csv"), *options]

    return setup


def file_with(name: str, content: bytes) -> Maker:
    def make(folder: Path) -> str:
        (folder / name).write_bytes(content)
        return str(folder / name)

    return make


def folder_of(documents: list[str]) -> Maker:
    def make(folder: Path) -> str:
        (folder / "corpus").mkdir()
        for i, text in enumerate(documents):
            (folder / "corpus" / f"doc{i:02d}.txt").write_text(text)
        return str(folder / "corpus")

    return make


def parquet_without_text(folder: Path) -> str:
    pq.write_table(pa.table({"body": DOCUMENTS}), folder / "docs.parquet")
    return str(folder / "docs.parquet")


def runs_csv(bad_loss: str | None = None, runs: int = 16) -> str:
    """Runs on a 4 x 4 grid that follow a Chinchilla law; `bad_loss` replaces the fourth run's loss."""
    lines = ["params,tokens,loss"]
    for i in range(runs):
        n, d = 1e6 * 3 ** (i // 4), 1e8 * 3 ** (i % 4)
        loss = bad_loss if i == 3 and bad_loss is not None else 1.7 + 400 / n**0.34 + 410 / d**0.28
        lines.append(f"{n},{d},{loss}")
    return "\n".join(lines) + "\n"


JSONL_WITHOUT_TEXT = "\n".join(json.dumps({"body": d}) for d in DOCUMENTS).encode()
SHAPE_WITH_5_HEADS = "grid: {model_sizes: [{d_model: 48, n_layers: 2, n_heads: 5}], tokens: [10000]}\n"

BAD_INPUTS = [
    # the corpus: refused while the sweep prepares its data, before any training
    pytest.param(
        run(corpus={"source": lambda f: str(f / "missing.txt")}), "corpus.source: ", id="corpus-missing"
    ),
    pytest.param(
        run(corpus={"source": file_with("empty.txt", b"")}), "left after cleaning", id="corpus-empty"
    ),
    pytest.param(
        run(corpus={"source": file_with("binary.txt", bytes(range(256)) * 40)}),
        "not UTF-8",
        id="corpus-binary",
    ),
    pytest.param(
        run(corpus={"source": file_with("latin1.txt", "Café, naïve façade. ".encode("latin-1") * 40)}),
        "convert it to UTF-8",
        id="corpus-not-utf8",
    ),
    pytest.param(
        run(corpus={"source": file_with("zeros.txt", b"\0" * 4096)}),
        "left after cleaning",
        id="corpus-nul-bytes",
    ),
    pytest.param(
        run(corpus={"source": file_with("docs.jsonl", JSONL_WITHOUT_TEXT)}),
        "corpus.text_field: ",
        id="jsonl-without-text-field",
    ),
    pytest.param(
        run(corpus={"source": file_with("docs.jsonl", b'{"text": "unclosed\n')}),
        "not valid JSON",
        id="jsonl-broken",
    ),
    pytest.param(
        run(corpus={"source": parquet_without_text}), "has no column 'text'", id="parquet-without-text-column"
    ),
    pytest.param(
        run(corpus={"source": file_with("docs.parquet", b"PAR1" + bytes(500))}),
        "not a readable Parquet file",
        id="parquet-damaged",
    ),
    pytest.param(
        run(corpus={"source": file_with("notes.csv", b"a,b\n")}),
        "holds no .txt",
        id="corpus-without-text-files",
    ),
    pytest.param(
        run(
            corpus={"source": folder_of(make_documents(2, words_per_doc=40)), "min_chars": 10},
            vocab={"size": 260},
            train={"context": 512},
        ),
        "fewer than one context window",
        id="corpus-smaller-than-a-context",
    ),
    pytest.param(
        run(corpus={"source": folder_of(DOCUMENTS)}, vocab={"size": 8000}),
        "vocab.size: ",
        id="vocab-beyond-corpus",
    ),
    pytest.param(
        run(corpus={"source": folder_of(DOCUMENTS)}, vocab={"size": 300}, grid={"tokens": [10**30]}),
        "allow_repeated_epochs",
        id="tokens-beyond-the-training-split",
    ),
    # the spec: refused before anything runs
    pytest.param(run(grid={"tokens": [-5]}), "grid.tokens.0: ", id="tokens-negative"),
    pytest.param(
        run(grid={"model_sizes": [0]}), "grid.model_sizes.0: Input should be greater", id="size-zero"
    ),
    pytest.param(
        run(grid={"model_sizes": [10**15]}), "grid.model_sizes.0: Input should be less", id="size-absurd"
    ),
    pytest.param(run(grid={"model_sizes": []}), "grid.model_sizes: ", id="sizes-empty"),
    pytest.param(run(grid={"tokens": [32]}), "smaller than one context window", id="tokens-below-a-context"),
    pytest.param(run(vocab={"size": 10**6}), "vocab.size: ", id="vocab-absurd"),
    pytest.param(run(train={"lr": 5}), "lr 5 is neither", id="lr-out-of-range"),
    pytest.param(
        run(train={"lr_by_size": {123: 0.1}}), "train.lr_by_size names sizes", id="lr-for-unknown-size"
    ),
    pytest.param(run_yaml(SHAPE_WITH_5_HEADS), "grid.model_sizes.0: n_heads 5 does not divide", id="heads"),
    pytest.param(
        run_yaml("grid: {model_sizes: [5000], tokens: [10000]}\ntrain: {learning_rate: 0.1}\n"),
        "train.learning_rate: is not a known field",
        id="yaml-unknown-key",
    ),
    pytest.param(
        run_yaml("grid: {model_sizes: [5000], tokens: [many]}\n"), "grid.tokens.0: ", id="yaml-wrong-type"
    ),
    pytest.param(run_yaml("grid: big\n"), "spec field grid: ", id="yaml-section-not-a-mapping"),
    pytest.param(run_yaml("- grid\n- tokens\n"), "must hold a mapping", id="yaml-a-list"),
    pytest.param(run_yaml("grid: [unclosed\n"), "is not valid YAML", id="yaml-broken"),
    pytest.param(command("run", "--spec", "{folder}/nope.yaml"), "does not exist", id="spec-missing"),
    pytest.param(command("run", "--spec", "{folder}"), "cannot be read", id="spec-a-folder"),
    pytest.param(command("run", "--preset", "huge"), "unknown preset 'huge'", id="preset-unknown"),
    pytest.param(
        command("run", "--preset", "smoke", "--workers", "0"), "execution.workers: ", id="workers-zero"
    ),
    pytest.param(
        command("run", "--preset", "smoke", "--workers", "many"),
        "argument --workers",
        id="workers-not-a-number",
    ),
    # the store
    pytest.param(
        store_is_a_file("run", "--preset", "smoke"), "is a file, not a folder", id="run-store-a-file"
    ),
    pytest.param(store_is_a_file("query", "select 1"), "is a file, not a folder", id="query-store-a-file"),
    pytest.param(
        command("query", "--store", "{folder}/none", "select 1"), "does not exist", id="query-store-missing"
    ),
    pytest.param(command("fit", "--store", "{folder}/none"), "does not exist", id="refit-store-missing"),
    # SQL for `scalelaw query`: wrong, or not read-only
    pytest.param(query("select nope from runs"), "query: ", id="sql-unknown-column"),
    pytest.param(query("selec 1"), "query: ", id="sql-syntax"),
    pytest.param(query("copy (select 1) to 'leak.csv'"), "not allowed", id="sql-copy-to-file"),
    pytest.param(query("create table t as select 1"), "not allowed", id="sql-create"),
    pytest.param(query("select 1; select 2"), "exactly one SQL statement", id="sql-two-statements"),
    pytest.param(query("attach 'other.db'"), "not allowed", id="sql-attach"),
    pytest.param(query("select * from read_csv('/etc/passwd')"), "Permission Error", id="sql-file-outside"),
    # runs for `scalelaw fit --csv`
    pytest.param(command("fit", "--csv", "{folder}/none.csv"), "--csv: ", id="csv-missing"),
    pytest.param(command("fit", "--csv", "{folder}"), "--csv: ", id="csv-a-folder"),
    pytest.param(
        fit_csv("params,loss\n1e6,3.1\n"), "no column --tokens-col 'tokens'", id="csv-missing-column"
    ),
    pytest.param(fit_csv(""), "not a readable CSV", id="csv-empty"),
    pytest.param(fit_csv(runs_csv("much")), "must hold numbers only", id="csv-text-in-a-number-column"),
    pytest.param(fit_csv(runs_csv("nan")), "loss contains NaN", id="csv-nan-loss"),
    pytest.param(fit_csv(runs_csv("inf")), "loss contains NaN or infinite", id="csv-infinite-loss"),
    pytest.param(fit_csv(runs_csv("-1.5")), "loss must be positive", id="csv-negative-loss"),
    pytest.param(fit_csv(runs_csv("0")), "loss must be positive", id="csv-zero-loss"),
    pytest.param(
        fit_csv(runs_csv(runs=4)), "needs at least 6 runs, got 4", id="csv-fewer-runs-than-parameters"
    ),
    pytest.param(fit_csv(runs_csv(), "--form", "cubic"), "--form: unknown form", id="csv-unknown-form"),
    pytest.param(fit_csv(runs_csv(), "--bootstrap", "-3"), "--bootstrap: ", id="csv-negative-bootstrap"),
    pytest.param(fit_csv(runs_csv(), "--bootstrap", "100000000"), "--bootstrap: ", id="csv-absurd-bootstrap"),
]


def assert_refused(status: int, stderr: str, fragment: str) -> None:
    """Exit status 2 and one line, `error: <sentence>`, under argparse's usage for a malformed option."""
    *usage, message = stderr.strip().splitlines()
    assert status == 2, stderr
    assert "Traceback" not in stderr
    assert "error: " in message and fragment in message, stderr
    assert not usage or usage[0].startswith("usage: ")


def assert_nothing_half_written(store: Path) -> None:
    """Every artifact holds its completion marker, no cell was trained, and no scratch folder is left."""
    if not store.is_dir():
        return
    kinds = [path for path in store.iterdir() if not path.name.startswith(".")]
    assert "cells" not in {kind.name for kind in kinds}
    for folder in (folder for kind in kinds for folder in kind.iterdir()):
        assert (folder / COMPLETE_MARKER).is_file(), f"{folder} has no completion marker"
    assert not any((store / ".tmp").glob("*"))


def tally(counter: str) -> None:
    TALLY[counter] += 1
    refused = "all refused cleanly" if TALLY["refused"] == TALLY["tried"] else f"refused: {TALLY['refused']}"
    FIGURES["bad inputs"] = (
        f"bad inputs tried: {TALLY['tried']}, {refused}; {TALLY['fresh']} of them again in a fresh process"
    )


@pytest.mark.parametrize(("setup", "fragment"), BAD_INPUTS)
def test_bad_input_is_refused_cleanly(setup, fragment, tmp_path, scalelaw_here, monkeypatch):
    tally("tried")
    monkeypatch.chdir(tmp_path)  # where a query's COPY ... TO would write
    status, _, stderr = scalelaw_here(setup(tmp_path))
    assert_refused(status, stderr, fragment)
    assert_nothing_half_written(tmp_path / "store")
    assert not (tmp_path / "leak.csv").exists() and not (tmp_path / "other.db").exists()
    tally("refused")


ROWS = {row.id: row.values for row in BAD_INPUTS}


@pytest.mark.parametrize(
    "row", ["jsonl-without-text-field", "yaml-unknown-key", "sql-copy-to-file", "csv-nan-loss"]
)
def test_a_fresh_process_shows_no_traceback(row, tmp_path):
    """As a user runs it: Prefect's own log of the failed task stays off the terminal too."""
    setup, fragment = ROWS[row]
    result = run_cli(setup(tmp_path), tmp_path)
    assert_refused(result.returncode, result.stderr, fragment)
    assert "Traceback" not in result.stdout
    assert_nothing_half_written(tmp_path / "store")
    tally("fresh")
