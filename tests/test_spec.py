import pytest
import yaml

from flows.plan import cell_plans
from flows.spec import PRESETS, SpecError, load_spec, spec_from_yaml, validate_spec
from tasks.errors import InputError


def test_presets_are_valid_and_default_spans_enough_decades():
    default = PRESETS["default"]
    plans = cell_plans(default, 1024, 3_800_000, 400_000)
    n = [p.shape.params_nonembedding() for p in plans]
    d = [p.tokens_target for p in plans]
    compute = [6 * p.shape.params_nonembedding() * p.tokens_seen for p in plans]
    assert max(n) / min(n) >= 10 and max(d) / min(d) >= 10 and max(compute) / min(compute) >= 10
    assert len(plans) == 5 * 6 and max(d) <= 3_800_000  # one epoch of the embedded corpus at most
    assert min(p.steps for p in plans) >= 200
    assert len(cell_plans(PRESETS["smoke"], 512, 10**6, 10**5)) == 9


def test_cells_come_most_expensive_first():
    plans = cell_plans(PRESETS["smoke"], 512, 10**6, 10**5)
    assert plans[0].tokens_target == max(p.tokens_target for p in plans)


def test_yaml_spec_round_trips(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(PRESETS["smoke"].model_dump(mode="json")))
    assert spec_from_yaml(path) == PRESETS["smoke"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"grid": {"model_sizes": [5000], "tokens": [10000]}, "colour": 1},
            "spec field colour: is not a known field",
        ),
        ({"grid": {"model_sizes": [5000]}}, r"spec field grid: give tokens \(a product grid\) or budgets"),
        ({"grid": {"model_sizes": [5000], "tokens": [-5]}}, "spec field grid.tokens.0"),
        ({"grid": {"model_sizes": [5000], "tokens": ["many"]}}, "spec field grid.tokens.0"),
        ({"grid": {"model_sizes": [5000], "tokens": [10]}}, "smaller than one context window"),
        (
            {"grid": {"model_sizes": [{"d_model": 48, "n_layers": 2, "n_heads": 5}], "tokens": [1000]}},
            "does not divide",
        ),
        (
            {"grid": {"model_sizes": [5000], "tokens": [10000]}, "vocab": {"size": 10**6}},
            "spec field vocab.size",
        ),
    ],
)
def test_bad_specs_get_one_sentence_naming_the_field(data, message):
    with pytest.raises(SpecError, match=message):
        validate_spec(data)


def test_unknown_preset_and_missing_or_broken_files(tmp_path):
    with pytest.raises(SpecError, match="unknown preset 'huge'; choose one of smoke, default"):
        load_spec("huge")
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(spec_file=tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("grid: [unclosed")
    with pytest.raises(SpecError, match="is not valid YAML"):
        load_spec(spec_file=tmp_path / "bad.yaml")


def test_data_size_beyond_the_training_split_needs_repeated_epochs_allowed():
    spec = PRESETS["smoke"]
    with pytest.raises(InputError, match="grid.tokens: 65,536 tokens exceed the training split"):
        cell_plans(spec, 512, 50_000, 10_000)
    allowed = validate_spec(
        spec.model_dump() | {"grid": spec.grid.model_dump() | {"allow_repeated_epochs": True}}
    )
    assert len(cell_plans(allowed, 512, 50_000, 10_000)) == 9
