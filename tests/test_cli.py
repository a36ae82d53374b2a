"""The real CLI: help for every command the parser has (fit and serve included), with every option it
takes, and queries over an empty store in a fresh process.

Bad input, refused with one sentence and exit status 2, is tested row by row in test_bad_inputs.py."""

from __future__ import annotations

import argparse

import pytest
from conftest import run_cli

from flows import cli


def subcommands() -> dict[str, argparse.ArgumentParser]:
    (action,) = (a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings if a.help != argparse.SUPPRESS}


def test_the_top_level_help_in_a_fresh_process_lists_every_command(tmp_path):
    """Catches a command added without a help line, or an import error that only a fresh process sees."""
    result = run_cli(["--help"], tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("usage: scalelaw")
    assert {"run", "query", "status", "fit", "serve"} <= set(subcommands())
    for name in subcommands():
        assert f"\n    {name} " in result.stdout, name


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_each_commands_help_renders_and_names_each_of_its_options(name, capsys):
    """Catches a help text that argparse cannot format (a bare '%', as in '95%', raises only when
    --help is asked) and an option left out of its command's help."""
    with pytest.raises(SystemExit) as exited:
        cli._parser().parse_args([name, "--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: scalelaw {name}")
    missing = {option for option in option_strings(subcommands()[name]) if option not in shown}
    assert not missing, f"{name} --help does not show {sorted(missing)}"


def test_query_on_an_empty_store_sees_empty_views(tmp_path):
    (tmp_path / "store").mkdir()
    result = run_cli(
        ["query", "--store", str(tmp_path / "store"), "--format", "csv", "select count(*) n from runs"],
        tmp_path,
    )
    assert result.returncode == 0 and result.stdout.split() == ["n", "0"]


def test_a_fresh_process_exits_with_the_status_and_all_the_output_of_main(tmp_path, monkeypatch):
    """Catches the quick exit (`flows.cli.entry`) losing output still buffered or main's exit status:
    100,000 rows through a pipe arrive whole, and a user error exits 2 with its message."""
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)  # buffered, as a user's Python is
    (tmp_path / "store").mkdir()
    query = ["query", "--store", str(tmp_path / "store"), "--format", "csv"]
    rows = run_cli([*query, "select range as i from range(100000)"], tmp_path)
    assert rows.returncode == 0 and rows.stdout.split() == ["i", *map(str, range(100000))]
    refused = run_cli([*query, "select * from no_such_view"], tmp_path)
    assert refused.returncode == cli.EXIT_USER_ERROR
    assert "no_such_view does not exist" in refused.stderr
