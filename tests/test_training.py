import dataclasses
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, make_documents
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from flows.plan import cell_params, cell_plans, grid_params
from flows.spec import PRESETS, EvalSpec, GridSpec, SpecError, SweepSpec, TrainSpec, validate_spec
from tasks import tokens
from tasks.cell import (
    CellPlan,
    Checkpoints,
    WsdSchedule,
    batch_size_for,
    lr_for_size,
    lr_multiplier,
    wsd_multiplier,
)
from tasks.checkpoints import snapshot_name
from tasks.evaluate import evaluate, generate_sample
from tasks.head_loss import TiedHeadLoss, next_token_nats
from tasks.identity import step_fingerprint
from tasks.model import ModelShape, build_model, count_params, shape_for_params
from tasks.train import Learner, lr_schedule, train_cell, train_trunk
from tasks.windows import sequence_order, windows


@pytest.fixture(scope="module")
def tokenizer():
    return tokens.train_tokenizer(make_documents(60), vocab_size=300)


@pytest.fixture(scope="module")
def streams(tokenizer):
    docs = make_documents(60, seed=1)
    return tokens.encode_documents(tokenizer, docs[:50]), tokens.encode_documents(tokenizer, docs[50:])


def tiny_plan(**changes) -> CellPlan:
    plan = dict(
        shape=ModelShape(16, 1),
        params_target=3000,
        vocab_size=300,
        context=32,
        tokens_target=8192,
        batch_size=8,
        seed=0,
        lr=3e-3,
        warmup_fraction=0.1,
        val_tokens=1024,
        sample_prompt="The nation",
        sample_tokens=5,
    )
    return CellPlan(**(plan | changes))


def test_cell_plan_defaults_are_the_specs_defaults():
    """A test's or bench's plan that leaves a field out trains as a sweep with default settings would."""
    defaults = {
        f.name: f.default for f in dataclasses.fields(CellPlan) if f.default is not dataclasses.MISSING
    }
    train, evaluation = TrainSpec(), EvalSpec()
    specs = {name: getattr(train, name) for name in defaults if name in TrainSpec.model_fields}
    specs |= {name: getattr(evaluation, name) for name in defaults if name in EvalSpec.model_fields}
    specs.pop("bf16_min_params")  # None here: a plan built by hand trains in fp32 whatever the machine
    assert {name: defaults[name] for name in specs} == specs
    assert set(defaults) - set(specs) == {"bf16_min_params", "wsd"}


def test_tokenizer_loads_in_transformers_and_round_trips(tokenizer, tmp_path):
    tokens.save_tokenizer(tokenizer, tmp_path)
    text = "The nation , and  the people ."  # spaces before punctuation come back as they were
    for loaded in (
        PreTrainedTokenizerFast.from_pretrained(tmp_path),
        AutoTokenizer.from_pretrained(tmp_path),
    ):
        assert loaded(text)["input_ids"] == tokenizer.encode(text).ids
        assert loaded.decode(loaded(text)["input_ids"]) == text
        assert loaded.eos_token_id == loaded.pad_token_id == tokens.END_OF_TEXT_ID


def test_saving_a_tokenizer_leaves_transformers_unimported(tmp_path):
    """The flow's process saves the vocabulary; transformers would cost it 0.4 s of CPU to import."""
    script = f"""
import pathlib, sys
from conftest import make_documents
from tasks import tokens
tokens.save_tokenizer(tokens.train_tokenizer(make_documents(20), 300), pathlib.Path({str(tmp_path)!r}))
print("transformers" in sys.modules)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"
    assert (tmp_path / "tokenizer.json").exists()


def test_byte_lengths_add_up_to_the_utf8_size(tokenizer):
    text = "Peace — and justice, ünïcode."
    ids = tokenizer.encode(text).ids
    assert tokens.token_byte_lengths(tokenizer)[ids].sum() == len(text.encode())


def test_vocabulary_larger_than_the_corpus_can_fill_is_refused():
    with pytest.raises(ValueError, match="vocab.size: the corpus fills only"):
        tokens.train_tokenizer(["tiny corpus"], vocab_size=5000)


def test_shape_rule_hits_targets_and_counts_match_the_built_model():
    for target in (3_000, 25_000, 400_000, 1_000_000):
        shape = shape_for_params(target)
        assert abs(math.log(shape.params_nonembedding() / target)) < 0.25
        model = build_model(shape, vocab_size=512, context=64, seed=0)
        assert count_params(model) == (shape.params_nonembedding(), shape.params_total(512))


def test_heads_must_divide_d_model():
    with pytest.raises(ValueError, match="does not divide d_model"):
        ModelShape(d_model=48, n_layers=2, n_heads=5)


def test_schedule_warms_up_then_decays_to_the_floor_on_the_last_step():
    total, warmup = 100, 10
    values = [lr_multiplier(s, total, warmup, 0.1) for s in range(total)]
    assert values[0] == pytest.approx(0.1) and values[warmup - 1] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[warmup:], values[warmup + 1 :], strict=False))
    assert values[-1] == pytest.approx(0.1)


def test_small_budgets_get_smaller_batches_to_keep_enough_steps():
    assert batch_size_for(8192, 64, 16, 16) == 8
    assert batch_size_for(10**7, 64, 16, 16) == 16
    assert batch_size_for(100, 64, 16, 16) == 1


def test_windows_are_a_zero_copy_view():
    stream = np.arange(100, dtype=np.uint16)
    view = windows(stream, 10)
    assert view.shape == (9, 11) and np.shares_memory(view, stream)
    assert list(view[1][:3]) == [10, 11, 12]


def test_data_order_is_fixed_by_the_seed_and_covers_epochs():
    assert np.array_equal(sequence_order(10, 25, 3), sequence_order(10, 25, 3))
    order = sequence_order(10, 20, 3)
    assert sorted(order[:10]) == list(range(10)) and sorted(order[10:]) == list(range(10))


def test_training_is_deterministic_and_saved_model_generates(streams, tokenizer, tmp_path):
    train, val = streams
    token_bytes = tokens.token_byte_lengths(tokenizer)
    torch.set_num_threads(1)
    first = train_cell(tiny_plan(), train, val, token_bytes, tmp_path / "a")
    second = train_cell(tiny_plan(), train, val, token_bytes, tmp_path / "b")
    assert first.row["status"] == "ok"
    assert first.row["val_loss_nats"] == second.row["val_loss_nats"]
    assert [p["train_loss_nats"] for p in first.curve] == [p["train_loss_nats"] for p in second.curve]
    assert first.curve[-1]["train_loss_nats"] < first.curve[0]["train_loss_nats"]
    assert first.row["val_loss_nats"] < math.log(300)
    assert first.row["tokens_seen"] == first.row["steps"] * 8 * 32
    assert first.row["precision"] == "float32" and 0 < first.row["mfu"] < 1
    other_seed = train_cell(tiny_plan(seed=1), train, val, token_bytes, tmp_path / "c")
    assert other_seed.row["val_loss_nats"] != first.row["val_loss_nats"]

    tokens.save_tokenizer(tokenizer, tmp_path / "a")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    assert count_params(model)[0] == first.row["params_nonembedding"]
    assert generate_sample(tmp_path / "a", "The nation", 5).startswith("The nation")


def test_evaluation_reports_loss_stderr_and_bits_per_byte(streams, tokenizer):
    _, val = streams
    model = build_model(ModelShape(16, 1), 300, 32, seed=0)
    metrics = evaluate(model, val, tokens.token_byte_lengths(tokenizer), 32, 1024)
    assert metrics["val_tokens"] == 1024
    assert metrics["val_loss_nats"] == pytest.approx(math.log(300), rel=0.05)  # untrained: near uniform
    assert 0 < metrics["val_loss_stderr"] < 0.1
    assert metrics["val_perplexity"] == pytest.approx(math.exp(metrics["val_loss_nats"]))
    assert metrics["val_bits_per_byte"] > 0


def test_evaluation_numbers_do_not_depend_on_the_windows_per_forward_pass(streams, tokenizer, monkeypatch):
    """EVAL_BATCH_WINDOWS is a matter of speed alone: a cell's numbers are the same to the last bit."""
    import tasks.evaluate

    _, val = streams
    model = build_model(ModelShape(32, 2), 300, 32, seed=0)
    results = []
    for windows_per_pass in (1, 5, 16, 64):
        monkeypatch.setattr(tasks.evaluate, "EVAL_BATCH_WINDOWS", windows_per_pass)
        results.append(evaluate(model, val, tokens.token_byte_lengths(tokenizer), 32, 2048))
    assert all(result == results[0] for result in results)


def test_exploding_loss_is_reported_as_diverged(streams, tokenizer, tmp_path):
    train, val = streams
    outcome = train_cell(
        tiny_plan(lr=0.9, warmup_fraction=0.0), train, val, tokens.token_byte_lengths(tokenizer), tmp_path
    )
    assert outcome.row["status"] == "diverged"
    assert outcome.row["diverged_step"] is not None and "at step" in outcome.row["error"]


def _train_in_child(plan, train, val, token_bytes, model_dir, checkpoints):
    torch.set_num_threads(1)
    train_cell(plan, train, val, token_bytes, model_dir, checkpoints)


def test_a_killed_cell_continues_from_its_checkpoint_to_identical_numbers(streams, tokenizer, tmp_path):
    import multiprocessing
    import os
    import signal
    import time

    train, val = streams
    token_bytes = tokens.token_byte_lengths(tokenizer)
    plan = tiny_plan(tokens_target=120_000, shape=ModelShape(32, 2))
    checkpoints = Checkpoints(tmp_path / "work" / "checkpoint.pt", every_seconds=0.2)
    child = multiprocessing.get_context("spawn").Process(
        target=_train_in_child, args=(plan, train, val, token_bytes, tmp_path / "killed", checkpoints)
    )
    child.start()
    deadline = time.monotonic() + 120
    while not checkpoints.path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert child.exitcode == -signal.SIGKILL and not (tmp_path / "killed").exists()
    torch.set_num_threads(1)
    resumed = train_cell(plan, train, val, token_bytes, tmp_path / "resumed", checkpoints)
    assert 0 < resumed.row["resumed_from_step"] < plan.steps
    uninterrupted = train_cell(plan, train, val, token_bytes, tmp_path / "whole")
    assert uninterrupted.row["resumed_from_step"] == 0
    assert resumed.row["val_loss_nats"] == uninterrupted.row["val_loss_nats"]
    assert resumed.curve == uninterrupted.curve


def test_tied_head_loss_matches_full_logits_cross_entropy():
    torch.manual_seed(0)
    hidden = torch.randn(300, 16, requires_grad=True)  # 300 rows: more than one chunk, the last one short
    weight = (torch.randn(5000, 16) * 0.5).requires_grad_()
    targets = torch.randint(0, 5000, (300,))
    expected = F.cross_entropy(hidden @ weight.T, targets)
    expected_grads = torch.autograd.grad(expected, (hidden, weight))
    loss = TiedHeadLoss.apply(hidden, weight, targets)
    grads = torch.autograd.grad(loss, (hidden, weight))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-8)


def test_per_token_nats_match_the_models_own_logits():
    model = build_model(ModelShape(16, 1), 300, 32, seed=0)
    batch = torch.randint(0, 300, (3, 33))
    logits = model(input_ids=batch[:, :-1]).logits
    expected = F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")
    torch.testing.assert_close(next_token_nats(model, batch), expected)


def test_lr_rule_falls_as_n_to_the_minus_0_36_through_the_measured_optima():
    assert lr_for_size(25_000) == pytest.approx(1.2e-2, rel=0.05)
    assert lr_for_size(160_000) == pytest.approx(6.0e-3, rel=0.05)
    assert lr_for_size(8_000) / lr_for_size(1_000) == pytest.approx(8**-0.36)


def schedule_values(plan: CellPlan, steps: int, state: dict | None = None) -> tuple[list[float], dict]:
    """The learning rate of each of `steps` optimizer steps (as train_cell steps the schedule)."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=plan.lr)
    schedule = lr_schedule(optimizer, plan)
    if state:
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
    values = []
    for _ in range(steps):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return values, {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}


def test_warmup_is_n_tokens_at_most_the_fraction_and_cosine_ends_on_the_floor():
    plan = tiny_plan(tokens_target=512_000, warmup_fraction=0.05)  # 63 tokens per parameter
    assert plan.warmup_steps == math.ceil(plan.shape.params_total(300) / (8 * 32))
    values, _ = schedule_values(plan, plan.steps)
    assert len(values) == plan.steps and plan.steps * 8 * 32 == plan.tokens_seen == 512_000
    assert values[0] == pytest.approx(plan.lr / plan.warmup_steps)
    assert max(values) == pytest.approx(plan.lr) == values[plan.warmup_steps - 1]
    assert values[-1] == pytest.approx(plan.lr * plan.min_lr_ratio)
    short = tiny_plan(tokens_target=25_600)  # 100 steps, 3 tokens per parameter: the 10% cap binds
    assert short.warmup_steps == 10
    assert tiny_plan(warmup_tokens_per_param=0.0).warmup_steps == 0


def test_a_resumed_schedule_continues_with_the_same_learning_rates():
    plan = tiny_plan(tokens_target=30_000)
    whole, _ = schedule_values(plan, plan.steps)
    first, state = schedule_values(plan, 40)
    rest, _ = schedule_values(plan, plan.steps - 40, state)
    assert first + rest == whole


def test_per_size_overrides_and_the_rule_reach_the_cells():
    train = TrainSpec(lr_by_size={20_000: 0.02}, batch_size_by_size={80_000: 8}, beta2_by_size={80_000: 0.99})
    spec = SweepSpec(grid=GridSpec(model_sizes=[20_000, 80_000], tokens=[640_000]), train=train)
    by_size = {p.params_target: p for p in cell_plans(spec, 4096, 10**7, 10**6)}
    assert by_size[20_000].lr == 0.02 and by_size[20_000].batch_size == 32 and by_size[20_000].beta2 == 0.95
    rule = lr_for_size(by_size[80_000].shape.params_nonembedding())
    assert by_size[80_000].lr == rule and by_size[80_000].batch_size == 8 and by_size[80_000].beta2 == 0.99
    fixed = spec.model_copy(update={"train": TrainSpec(lr=3e-3)})
    assert {p.lr for p in cell_plans(fixed, 4096, 10**7, 10**6)} == {3e-3}
    assert {p.lr for p in cell_plans(PRESETS["smoke"], 512, 10**6, 10**5)} == {5e-3}


def test_precision_is_the_plans_alone_and_auto_by_size_takes_bf16_from_the_threshold_up():
    """No benchmark of the machine decides numerics: the plan does, the same on every machine."""
    assert tiny_plan(bf16_min_params=1000).dtype == "bfloat16"  # N = 3.1k
    assert tiny_plan(bf16_min_params=10**6).dtype == "float32"
    assert tiny_plan(bf16_min_params=None).dtype == "float32"
    assert tiny_plan(precision="bf16").dtype == "bfloat16"
    assert tiny_plan(precision="fp32", bf16_min_params=1000).dtype == "float32"


def test_a_bad_lr_gets_one_sentence():
    with pytest.raises(
        SpecError, match=r"^spec field train: lr 'fast' is neither .* nor 'rule'; give one of those\.$"
    ):
        validate_spec({"grid": {"model_sizes": [3000], "tokens": [8192]}, "train": {"lr": "fast"}})


def test_wsd_schedule_warms_up_holds_then_cools_down_to_the_floor_on_the_last_step():
    total, warmup, cooldown = 100, 10, 20
    values = [wsd_multiplier(s, total, warmup, cooldown, 0.1) for s in range(total)]
    assert values[0] == pytest.approx(0.1) and values[warmup - 1] == pytest.approx(1.0)
    assert values[warmup : total - cooldown] == [1.0] * (total - cooldown - warmup)
    decay = values[total - cooldown :]
    assert np.all(np.diff(decay) < 0) and decay[-1] == pytest.approx(0.1)
    assert decay[9] == pytest.approx(0.1 + 0.9 * (1 - math.sqrt(10 / 20)))  # 1-sqrt, not linear
    longer = [wsd_multiplier(s, 2 * total, warmup, 2 * cooldown, 0.1) for s in range(total - cooldown)]
    assert longer == values[: total - cooldown]  # up to a cooldown, runs of any length agree

    plan = tiny_plan(wsd=WsdSchedule(cooldown_fraction=0.2, warmup_steps=3))
    assert (plan.warmup_steps, plan.cooldown_steps, plan.branch_step) == (3, 6, 26)
    rates, _ = schedule_values(plan, plan.steps)
    assert rates[plan.branch_step - 1] == plan.lr > rates[plan.branch_step]
    assert rates[-1] == pytest.approx(plan.lr * plan.min_lr_ratio)


def test_wsd_cells_of_one_trunk_share_batch_and_warmup_and_cosine_cell_ids_stay():
    grid = GridSpec(model_sizes=[3000, 8000], tokens=[8192, 65536])
    smoke = PRESETS["smoke"]
    wsd = smoke.model_copy(update={"grid": grid, "train": TrainSpec(context=64, schedule="wsd")})
    plans = cell_plans(wsd, 512, 10**6, 10**5)
    cells, trunks = grid_params(wsd, "/store", "tokens", "vocab", plans)
    assert len(trunks) == 2 and {len(t["branch_steps"]) for t in trunks} == {2}
    for size in (3000, 8000):
        branches = [p for p in plans if p.params_target == size]
        shortest = min(branches, key=lambda p: p.tokens_target)
        assert {p.batch_size for p in branches} == {batch_size_for(8192, 64, 32, 50)}
        assert {p.warmup_steps for p in branches} == {shortest.warmup_steps}
    trunk_ids = {step_fingerprint("trunks", t) for t in trunks}
    assert {c["trunk_fp"] for c in cells} == trunk_ids
    first = cell_plans(smoke, 512, 10**7, 10**6)[0]  # cosine: ids from before WSD existed
    assert (
        step_fingerprint("cells", cell_params(smoke, "/s", "tokfp", "vocfp", first)) == "ced1d5d3c9fff626a0b4"
    )
    with pytest.raises(SpecError, match="add up to more than 1"):
        validate_spec(
            {
                "grid": {"model_sizes": [3000], "tokens": [8192]},
                "train": {"schedule": "wsd", "warmup_fraction": 0.5, "cooldown_fraction": 0.6},
            }
        )


def test_wsd_branches_from_one_trunk_equal_runs_straight_through(streams, tokenizer, tmp_path, monkeypatch):
    train, val = streams
    token_bytes = tokens.token_byte_lengths(tokenizer)
    torch.set_num_threads(1)
    batches = []
    learner_step = Learner.step
    monkeypatch.setattr(
        Learner, "step", lambda self, batch: batches.append(batch) or learner_step(self, batch)
    )
    wsd = WsdSchedule(cooldown_fraction=0.2, warmup_steps=3)
    plans = [tiny_plan(tokens_target=d, wsd=wsd) for d in (8192, 16384)]
    branch_steps = [p.branch_step for p in plans]
    trunk = train_trunk(plans[-1], branch_steps, train, tmp_path / "trunk")
    assert trunk["status"] == "ok" and trunk["steps"] == max(branch_steps) == 51
    for plan in plans:
        snapshot = tmp_path / "trunk" / snapshot_name(plan.branch_step)
        batches.clear()
        branch = train_cell(plan, train, val, token_bytes, tmp_path / f"branch{plan.steps}", None, snapshot)
        assert len(batches) == plan.cooldown_steps  # the branch trained its cooldown only
        whole = train_cell(plan, train, val, token_bytes, tmp_path / f"whole{plan.steps}")
        timing = {"train_seconds", "tokens_per_second", "mfu"}
        assert {k: v for k, v in branch.row.items() if k not in timing} == {
            k: v for k, v in whole.row.items() if k not in timing
        }
        assert branch.curve == whole.curve
        assert branch.row["tokens_seen"] == plan.tokens_target and branch.row["schedule"] == "wsd"
        assert branch.row["branch_tokens"] == plan.branch_step * 8 * 32
