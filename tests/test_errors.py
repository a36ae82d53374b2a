"""One hierarchy of errors: a user's mistake is a UserError (one sentence, exit 2), cells that cannot
identify a law form leave it "not fitted" with the reason, and a bug inside a fit surfaces."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from flows import cli
from flows.spec import SpecError
from storage.catalog import QueryError
from storage.store import StoreError
from tasks import checks, fits, laws
from tasks.errors import InputError

STORAGE = Path(__file__).parents[1] / "storage"


def product_rows(sizes=(1e6, 3e6, 1e7, 3e7), tokens=(1e8, 3e8, 1e9)) -> list[dict]:
    rows = []
    for n in sizes:
        for d in tokens:
            loss = 1.7 + 400 / n**0.34 + 410 / d**0.28
            rows.append(
                {
                    "cell_id": f"c{len(rows)}",
                    "status": "ok",
                    "seed": 0,
                    "params_nonembedding": n,
                    "params_total": n,
                    "tokens_seen": d,
                    "flops_6nd": 6 * n * d,
                    "flops_with_attention": 7 * n * d,
                    "val_loss_nats": loss,
                }
            )
    return rows


def points(rows: list[dict]) -> fits.SweepPoints:
    return fits.points_from_runs(rows, "nonembedding", "6nd")


@pytest.mark.parametrize("error", [InputError, SpecError, StoreError, QueryError])
def test_every_user_error_is_printed_as_one_sentence_with_exit_status_2(error, monkeypatch, capsys):
    def command(args):
        raise error("field: what is wrong; the fix.")

    monkeypatch.setattr(cli, "_parser", lambda: _parser_running(command))
    monkeypatch.setattr(cli, "_configure_prefect", lambda verbose: None)
    assert cli.main([]) == cli.EXIT_USER_ERROR
    assert capsys.readouterr().err.strip() == "error: field: what is wrong; the fix."


def _parser_running(command):
    class Parser:
        def parse_args(self, argv):
            return type("Args", (), {"command": staticmethod(command), "verbose": False})()

    return Parser()


def test_a_bug_in_a_command_is_not_taken_for_a_user_error(monkeypatch):
    def command(args):
        raise ValueError("a bug, not the user's mistake")

    monkeypatch.setattr(cli, "_parser", lambda: _parser_running(command))
    monkeypatch.setattr(cli, "_configure_prefect", lambda verbose: None)
    with pytest.raises(ValueError, match="a bug"):
        cli.main([])


def test_storage_imports_nothing_of_the_layers_above_it():
    for module in STORAGE.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n.split(".")[0] in {"tasks", "flows", "deployments"}], module


def test_cells_that_cannot_identify_a_form_leave_it_not_fitted_with_the_reason():
    one_token_count = product_rows(sizes=tuple(1e6 * 2**k for k in range(8)), tokens=(1e8,))
    sweep = fits.fit_sweep(points(one_token_count))
    assert "D takes 1 distinct value" in sweep.skipped["chinchilla"]
    assert "collinear (or one is constant)" in sweep.skipped["multiplicative"]
    assert "power_law_N" in {f.form for f in sweep.fits}
    (row,) = [r for r in fits.fit_rows("f1", sweep) if r["form"] == "chinchilla"]
    assert row["parameter"] is None and row["note"].startswith("not fitted: The chinchilla form is")


@pytest.mark.parametrize("bug", [TypeError("unexpected keyword"), ValueError("a bug"), ZeroDivisionError()])
@pytest.mark.parametrize("form", ["chinchilla", "kaplan", "power_law_N", "multiplicative"])
def test_a_bug_inside_a_fit_surfaces_instead_of_being_recorded_as_not_fitted(form, bug, monkeypatch):
    def broken(*args, **kwargs):
        raise bug

    monkeypatch.setitem(laws.FORMS, form, replace(laws.FORMS[form], fit=broken))  # the sweep's fits
    with pytest.raises(type(bug)):
        fits.fit_sweep(points(product_rows()))


def test_a_bug_inside_the_extrapolation_fit_surfaces(monkeypatch):
    def broken(*args, **kwargs):
        raise TypeError("fit_chinchilla() got an unexpected keyword argument")

    monkeypatch.setattr(laws, "fit_chinchilla", broken)
    p = points(product_rows())
    held_out = checks.held_out(p.N, p.C, 0.25)
    with pytest.raises(TypeError, match="unexpected keyword"):
        checks.extrapolation_rows(p.cell_ids, p.N, p.D, p.C, p.loss, held_out)


def test_too_few_cells_left_for_the_extrapolation_fit_give_no_rows():
    p = points(product_rows(sizes=(1e6, 3e6), tokens=(1e8, 3e8)))
    held_out = np.array([False, False, False, True])
    assert checks.extrapolation_rows(p.cell_ids, p.N, p.D, p.C, p.loss, held_out) == []
