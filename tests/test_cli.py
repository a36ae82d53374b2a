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
