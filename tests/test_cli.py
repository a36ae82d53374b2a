"""The real CLI in a fresh process: help for every command, and queries over an empty store.

Bad input, refused with one sentence and exit status 2, is tested row by row in test_bad_inputs.py."""

from __future__ import annotations

from conftest import run_cli


def test_help_explains_every_command(tmp_path):
    for args in (["--help"], ["run", "--help"], ["query", "--help"], ["status", "--help"]):
        result = run_cli(args, tmp_path)
        assert result.returncode == 0 and "usage: scalelaw" in result.stdout


def test_query_on_an_empty_store_sees_empty_views(tmp_path):
    (tmp_path / "store").mkdir()
    result = run_cli(
        ["query", "--store", str(tmp_path / "store"), "--format", "csv", "select count(*) n from runs"],
        tmp_path,
    )
    assert result.returncode == 0 and result.stdout.split() == ["n", "0"]
