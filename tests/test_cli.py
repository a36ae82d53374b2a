"""Bad input through the real CLI: one clear sentence, exit status 2, no traceback, nothing half-written."""

from __future__ import annotations

import pytest
import yaml
from conftest import run_cli

from flows.spec import PRESETS


def write_spec(tmp_path, **changes) -> str:
    data = PRESETS["smoke"].model_dump(mode="json")
    for dotted, value in changes.items():
        section, field = dotted.split("__")
        data[section][field] = value
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def assert_user_error(result, message: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert message in result.stderr
    assert result.stderr.strip().startswith("error:")


def test_help_explains_every_command(tmp_path):
    for args in (["--help"], ["run", "--help"], ["query", "--help"], ["status", "--help"]):
        result = run_cli(args, tmp_path)
        assert result.returncode == 0 and "usage: scalelaw" in result.stdout


def test_unknown_preset(tmp_path):
    assert_user_error(run_cli(["run", "--preset", "huge"], tmp_path), "unknown preset 'huge'")


def test_missing_corpus_file(tmp_path):
    spec = write_spec(tmp_path, corpus__source=str(tmp_path / "missing.txt"))
    result = run_cli(["run", "--spec", spec, "--store", str(tmp_path / "store")], tmp_path)
    assert_user_error(result, "corpus.source")
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").glob("clean/*"))


def test_empty_corpus(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    spec = write_spec(tmp_path, corpus__source=str(tmp_path / "empty.txt"))
    result = run_cli(["run", "--spec", spec, "--store", str(tmp_path / "store")], tmp_path, timeout=200)
    assert_user_error(result, "documents are left after cleaning")
    assert not any((tmp_path / "store").glob("clean/*"))


def test_data_size_beyond_the_training_split(tmp_path, text_folder):
    spec = write_spec(tmp_path, corpus__source=str(text_folder), vocab__size=300, grid__tokens=[10**6])
    result = run_cli(["run", "--spec", spec, "--store", str(tmp_path / "store")], tmp_path, timeout=200)
    assert_user_error(result, "allow_repeated_epochs")
    assert not any((tmp_path / "store").glob("cells/*"))


def test_unknown_field_in_a_yaml_spec(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("grid: {model_sizes: [5000], tokens: [10000]}\ntrain: {learning_rate: 0.1}\n")
    assert_user_error(run_cli(["run", "--spec", str(path)], tmp_path), "spec field train.learning_rate")


def test_store_that_is_a_file(tmp_path):
    (tmp_path / "store").write_text("not a folder")
    result = run_cli(["run", "--preset", "smoke", "--store", str(tmp_path / "store")], tmp_path)
    assert_user_error(result, "is a file, not a folder")


@pytest.mark.parametrize(
    "sql",
    [
        "select nope from runs",
        "selec 1",
        "copy (select 1) to 'leak.csv'",
        "create table t as select 1",
        "select 1; select 2",
        "attach 'other.db'",
    ],
)
def test_sql_errors_in_query(tmp_path, sql):
    (tmp_path / "store").mkdir()
    assert_user_error(run_cli(["query", "--store", str(tmp_path / "store"), sql], tmp_path), "query:")
    assert not (tmp_path / "leak.csv").exists() and not (tmp_path / "other.db").exists()


def test_query_on_an_empty_store_sees_empty_views(tmp_path):
    (tmp_path / "store").mkdir()
    result = run_cli(
        ["query", "--store", str(tmp_path / "store"), "--format", "csv", "select count(*) n from runs"],
        tmp_path,
    )
    assert result.returncode == 0 and result.stdout.split() == ["n", "0"]
