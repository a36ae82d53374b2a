"""`scalelaw suggest`: the design narrows the interval on a known law, honours its budget, and writes
a spec that extends the sweep without changing its cells' ids; a sweep with no usable fit is refused in
one sentence. Stores are real; their cells' results are drawn from a known law instead of trained."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flows.plan import sweep_plan
from flows.spec import PRESETS, ExtraCell, spec_from_yaml, validate_spec
from flows.status import grid_status
from flows.suggest import write_spec
from storage import datasets
from storage.catalog import open_catalog
from storage.store import Store
from tasks import laws, suggest
from tasks.cell import plan_columns
from tasks.model import training_flops_per_token

LAW = {"E": 2.0, "A": 60.0, "alpha": 0.45, "B": 900.0, "beta": 0.55}
DATA = {"vocab_size": 512, "train_tokens": 2_000_000, "val_tokens": 100_000}


def law_loss(N: np.ndarray, D: np.ndarray) -> np.ndarray:
    return LAW["E"] + LAW["A"] / N ** LAW["alpha"] + LAW["B"] / D ** LAW["beta"]


def small_spec(store: Path, **grid) -> object:
    data = PRESETS["smoke"].model_dump(mode="json")
    data["grid"] = {"model_sizes": [3000, 8000, 20000, 50000], "tokens": [16384, 49152, 147456], **grid}
    data["execution"]["store"] = str(store)
    return validate_spec(data)


def write_sweep(spec, noise: float = 0.005, seed: int = 0) -> list[str]:
    """Publish the spec's data records and every cell, its loss drawn from LAW; the cell ids."""
    store = Store(spec.execution.store)
    records: dict[str, dict] = {}
    for kind in ("clean", "vocab", "tokens"):
        step = sweep_plan(spec, store.location, records).step(kind)
        records[kind] = store.publish(kind, step.fp, lambda out, fp=step.fp: {"fp": fp, **DATA})
    plan = sweep_plan(spec, store.location, records)
    rng = np.random.default_rng(seed)
    for step, cell in zip(plan.of("cells"), plan.cell_plans, strict=True):
        n, d = cell.shape.params_nonembedding(), cell.tokens_seen
        flops = training_flops_per_token(cell.shape, cell.vocab_size, cell.context)
        row = {
            **plan_columns(cell),
            "cell_id": step.fp,
            "status": "ok",
            "tokens_seen": d,
            "flops_6nd": flops["6nd"] * d,
            "flops_with_attention": flops["with_attention"] * d,
            "val_loss_nats": float(law_loss(np.array(n), np.array(d)) * np.exp(rng.normal(0, noise))),
        }
        store.publish(
            "cells", step.fp, lambda out, row=row: datasets.RUNS.write([row], out) or {"status": "ok"}
        )
    return plan.cell_ids


def stored_plan_of(spec):
    store = Store(spec.execution.store)
    records = {}
    for kind in ("clean", "vocab", "tokens"):
        records[kind] = store.marker(kind, sweep_plan(spec, store.location, records).step(kind).fp)
    return sweep_plan(spec, store.location, records)


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_extra_cells_keep_the_old_cells_ids(tmp_path, schedule):
    spec = small_spec(tmp_path / "store")
    data = spec.model_dump()
    data["train"]["schedule"] = schedule
    spec = validate_spec(data)
    records = {k: {"fp": k, **DATA} for k in ("clean", "vocab", "tokens")}
    old = sweep_plan(spec, "s", records).cell_ids
    data["grid"]["extra_cells"] = [
        ExtraCell(model_size=8000, tokens=300_000),
        ExtraCell(model_size=120_000, tokens=60_000),
    ]
    new = sweep_plan(validate_spec(data), "s", records).cell_ids
    assert set(old) < set(new) and len(new) == len(old) + 2


def test_the_default_presets_spec_with_a_shape_as_extra_cell_round_trips_and_keeps_its_ids(tmp_path):
    records = {
        k: {"fp": k, **DATA, "vocab_size": 1024, "train_tokens": 3_800_000}
        for k in ("clean", "vocab", "tokens")
    }
    spec = PRESETS["default"]
    data = spec.model_dump()
    data["grid"]["extra_cells"] = [ExtraCell(model_size=spec.grid.model_sizes[-1], tokens=1_404_928)]
    extended = spec_from_yaml(write_spec(validate_spec(data), tmp_path / "extended.yaml"))
    assert extended.grid.extra_cells == validate_spec(data).grid.extra_cells
    old, new = sweep_plan(spec, "s", records).cell_ids, sweep_plan(extended, "s", records).cell_ids
    assert set(old) < set(new) and len(new) == len(old) + 1


def observe(N: np.ndarray, D: np.ndarray, seed: int, noise: float = 0.007) -> np.ndarray:
    return law_loss(N, D) * np.exp(np.random.default_rng(seed).normal(0, noise, len(N)))


def refit(N: np.ndarray, D: np.ndarray, loss: np.ndarray) -> laws.FitResult:
    return laws.fit_chinchilla(N, D, loss, huber_delta=1e-2, bootstrap=60)


GRID = [a.ravel() for a in np.meshgrid([8e3, 2.5e4, 8e4], [2e5, 6e5, 1.8e6])]
LADDER = [a.ravel() for a in np.meshgrid(np.geomspace(5e3, 8e5, 8), np.geomspace(1e5, 5e6, 8))]


def test_the_design_honours_its_budget_and_cell_count():
    N, D = GRID
    fit = refit(N, D, observe(N, D, 0))
    candidates = [suggest.Candidate(n, n, int(d), 6 * n, trunk=n) for n, d in zip(*LADDER, strict=True)]
    cost = suggest.set_cost(candidates, seeds=2, wsd=suggest.WsdCosts(0.2, {8e3: 2_000_000}))
    for budget in (1e11, 1e12, 1e13):
        design = laws.design_cells(
            fit, N, D, *LADDER, compute=1e14, budget=budget, max_cells=5, set_cost=cost
        )
        assert cost(design.chosen) <= budget and design.total_cost == pytest.approx(cost(design.chosen))
        assert len(design.chosen) <= 5 and len(set(design.chosen)) == len(design.chosen)
    cheapest = min(cost([i]) for i in range(len(candidates)))
    assert (
        laws.design_cells(
            fit, N, D, *LADDER, compute=1e14, budget=cheapest / 2, max_cells=5, set_cost=cost
        ).chosen
        == ()
    )


def test_the_suggested_cells_narrow_the_interval_on_a_known_law():
    """Trained (drawn from the law) and refitted, the suggested cells narrow N_opt's interval by about as
    much as the design expects, and by more than the same FLOPs spent on the grid's next row of N."""
    N, D = GRID
    compute = 100 * float((6 * N * D).max())
    next_row = (np.full(3, 2.5e5), np.array([2e5, 6e5, 1.8e6]))
    budget = float((6 * next_row[0] * next_row[1]).sum())
    ratios, versus_grid = [], []
    costs = 6 * LADDER[0] * LADDER[1]
    for seed in range(3):
        loss = observe(N, D, seed)
        fit = refit(N, D, loss)
        _, low, high = laws.target_interval(fit, compute)
        design = laws.design_cells(
            fit,
            N,
            D,
            *LADDER,
            compute=compute,
            budget=budget,
            max_cells=12,
            set_cost=lambda chosen: float(costs[list(chosen)].sum()),
        )
        assert 0 < design.final_width_ratio < 1
        widths = []
        for new_n, new_d in ((LADDER[0][list(design.chosen)], LADDER[1][list(design.chosen)]), next_row):
            new_loss = observe(new_n, new_d, seed + 100)
            after = refit(np.r_[N, new_n], np.r_[D, new_d], np.r_[loss, new_loss])
            _, low_after, high_after = laws.target_interval(after, compute)
            widths.append(np.log(high_after / low_after))
        ratios.append(widths[0] / np.log(high / low))
        versus_grid.append(widths[0] / widths[1])
    assert np.median(ratios) < 0.7
    assert np.median(versus_grid) < 1


def test_suggest_writes_a_spec_that_extends_the_sweep(tmp_path, scalelaw_here):
    spec = small_spec(tmp_path / "store")
    old_ids = write_sweep(spec)
    spec_file = write_spec(spec, tmp_path / "sweep.yaml")
    output = tmp_path / "next.yaml"
    budget = 2e11
    status, out, err = scalelaw_here(
        [
            "suggest",
            "--spec",
            str(spec_file),
            "--flops",
            str(budget),
            "--cells",
            "3",
            "--bootstrap",
            "40",
            "--output",
            str(output),
        ]
    )
    assert status == 0, out + err
    extended = spec_from_yaml(output)
    assert write_spec(extended, tmp_path / "again.yaml").read_text() == output.read_text()  # round-trips
    assert 1 <= len(extended.grid.extra_cells) <= 3
    new_ids = stored_plan_of(extended).cell_ids
    assert set(old_ids) < set(new_ids)
    states = {cell.cell_id: cell.state for cell in grid_status(extended)}
    assert {cell for cell, state in states.items() if state == "missing"} == set(new_ids) - set(old_ids)
    rows = (
        open_catalog(Store(spec.execution.store))
        .execute("select sum(cost_flops), max(budget_flops), count(*) from suggestions")
        .fetchone()
    )
    assert rows[0] <= budget == rows[1] and rows[2] == len(extended.grid.extra_cells)


def test_a_sweep_with_no_usable_fit_is_refused_in_one_sentence(tmp_path, scalelaw_here):
    spec = small_spec(tmp_path / "store", model_sizes=[3000, 8000])  # two N values: alpha is not identified
    write_sweep(spec)
    spec_file = write_spec(spec, tmp_path / "sweep.yaml")
    status, out, err = scalelaw_here(["suggest", "--spec", str(spec_file), "--bootstrap", "40"])
    message = " ".join(err.split())
    assert status == 2 and "Traceback" not in err, out + err
    assert message.startswith("error: sweep smoke: no usable Chinchilla fit to design from (")
    assert message.endswith("train more of its cells with scalelaw run, then ask again.")
    assert message.count(". ") == 0, message


def test_the_suggest_deployment_is_served_with_the_default_spec():
    from deployments.serve import project_deployments

    (deployment,) = [d for d in project_deployments() if d.name == "suggest"]
    assert deployment.flow_name == "suggest-cells"
    assert deployment.parameters["spec"] == PRESETS["default"].model_dump(mode="json")


def test_a_new_wsd_cell_pays_for_retraining_its_trunk_and_a_cosine_cell_for_itself_per_seed():
    per_token = 6e4
    cells = [suggest.Candidate("a", 1e4, tokens, per_token, trunk="a") for tokens in (1_000_000, 3_000_000)]
    wsd = suggest.set_cost(cells, seeds=1, wsd=suggest.WsdCosts(0.2, {"a": 2_000_000}))
    assert wsd([0]) == pytest.approx(per_token * (0.8 * 2_000_000 + 0.2 * 1_000_000))
    assert wsd([0, 1]) == pytest.approx(per_token * (0.8 * 3_000_000 + 0.2 * 4_000_000))
    assert suggest.set_cost(cells, seeds=2)([0]) == pytest.approx(2 * per_token * 1_000_000)
