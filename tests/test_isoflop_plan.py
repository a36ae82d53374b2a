"""The IsoFLOP planner: each budget spent as the spec's compute accounting counts it, on consecutive
ladder sizes centred on the expected optimum."""

import math

import pytest

from flows.plan import cell_plans
from flows.spec import SpecError, validate_spec
from tasks.errors import InputError
from tasks.model import ModelShape, training_flops_per_token

LADDER = [{"d_model": d, "n_layers": 2} for d in (16, 24, 32, 40, 48, 64, 80, 96, 128)]
VOCAB, TRAIN_TOKENS = 1024, 4_000_000


def isoflop_spec(**grid) -> dict:
    return {
        "vocab": {"size": VOCAB},
        "grid": {"model_sizes": LADDER, "budgets": [1e11, 3e11, 1e12], "models_per_budget": 5} | grid,
        "train": {"context": 128, "batch_size": 16, "schedule": "wsd"},
    }


def compute_of(plan, kind: str) -> float:
    return training_flops_per_token(plan.shape, VOCAB, plan.context)[kind] * plan.tokens_seen


@pytest.mark.parametrize("kind", ["6nd", "with_attention"])
def test_every_cell_spends_its_budget_in_the_named_accounting(kind):
    spec = validate_spec(isoflop_spec() | {"fit": {"compute_kind": kind}})
    plans = cell_plans(spec, VOCAB, TRAIN_TOKENS, 100_000)
    for budget in spec.grid.budgets:
        cells = [p for p in plans if abs(math.log(compute_of(p, kind) / budget)) < math.log(1.1)]
        assert len({p.shape for p in cells}) == 5, f"budget {budget:g} has {len(cells)} cells"
    assert len(plans) == 15  # every cell belongs to exactly one budget


def test_sizes_are_consecutive_on_the_ladder_and_centred_on_the_expected_optimum():
    shapes = [ModelShape(**s) for s in LADDER]
    for tokens_per_param in (2.0, 20.0):
        spec = validate_spec(isoflop_spec(budgets=[6e11], tokens_per_param=tokens_per_param))
        plans = sorted(cell_plans(spec, VOCAB, 10**9, 100_000), key=lambda p: p.shape.params_nonembedding())
        indices = [shapes.index(p.shape) for p in plans]
        assert indices == list(range(indices[0], indices[0] + 5))
        centre = plans[2]
        ratio = centre.tokens_seen / centre.shape.params_nonembedding()
        # no other centre on the ladder lies nearer the expected ratio
        for shape in shapes[2:-2]:
            other = 6e11 / training_flops_per_token(shape, VOCAB, 128)["6nd"] / shape.params_nonembedding()
            assert abs(math.log(ratio / tokens_per_param)) <= abs(math.log(other / tokens_per_param)) + 0.01
    small = validate_spec(isoflop_spec(budgets=[6e11], tokens_per_param=2.0))
    large = validate_spec(isoflop_spec(budgets=[6e11], tokens_per_param=20.0))
    n_small = max(p.shape.params_nonembedding() for p in cell_plans(small, VOCAB, 10**9, 100_000))
    n_large = max(p.shape.params_nonembedding() for p in cell_plans(large, VOCAB, 10**9, 100_000))
    assert n_small > n_large  # fewer tokens per parameter: larger models


def test_the_window_moves_to_stay_inside_the_training_split():
    spec = validate_spec(isoflop_spec(budgets=[1e12], tokens_per_param=100.0))
    plans = cell_plans(spec, VOCAB, TRAIN_TOKENS, 100_000)
    assert max(p.tokens_target for p in plans) <= TRAIN_TOKENS
    with pytest.raises(InputError, match=r"grid.budgets: no 5 consecutive model sizes spend 1e\+14 FLOPs"):
        cell_plans(validate_spec(isoflop_spec(budgets=[1e14])), VOCAB, TRAIN_TOKENS, 100_000)


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"tokens": [100_000]}, r"give tokens \(a product grid\) or budgets \(IsoFLOP profiles\), not both"),
        ({"budgets": None}, r"grid: give tokens \(a product grid\) or budgets \(IsoFLOP profiles\)\.$"),
        ({"models_per_budget": 12}, "models_per_budget 12 exceeds the 9 model_sizes"),
    ],
)
def test_grid_mistakes_are_one_sentence(grid, message):
    with pytest.raises(SpecError, match=message):
        validate_spec(isoflop_spec(**grid))
