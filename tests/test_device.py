"""Devices, precision and the GPU worker plan: what can be shown on a machine without a GPU, and one
test that needs CUDA (skipped here, with its reason)."""

import concurrent.futures
import hashlib
import math
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_documents
from test_training import tiny_plan

from flows.plan import _fp32_as_before, cell_params, cell_plans, grid_params, sweep_id
from flows.runtime import local_gpu_workers
from flows.spec import PRESETS, SpecError, validate_spec
from tasks import tokens
from tasks.cell import CellPlan, Checkpoints
from tasks.device import (
    DeviceError,
    gpu_lease,
    gpus_for_workers,
    placement,
    resolve_device,
    visible_gpus,
    worker_gpu_plan,
)
from tasks.identity import step_fingerprint
from tasks.train import _curve_every, _start, _train_steps, train_cell

HAS_CUDA = torch.cuda.is_available()
TIMING = {"train_seconds", "tokens_per_second", "mfu"}


@pytest.fixture(scope="module")
def data():
    tokenizer = tokens.train_tokenizer(make_documents(60), vocab_size=300)
    docs = make_documents(60, seed=1)
    train = tokens.encode_documents(tokenizer, docs[:50])
    val = tokens.encode_documents(tokenizer, docs[50:])
    return train, val, tokens.token_byte_lengths(tokenizer)


def plan(**changes) -> CellPlan:
    """test_training's tiny plan without a sample: these tests compare runs, not text."""
    return tiny_plan(**({"sample_tokens": 0} | changes))


def without_timing(row: dict) -> dict:
    return {key: value for key, value in row.items() if key not in TIMING}


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA GPU: 'auto' resolves to it")
def test_auto_resolves_to_the_cpu_here_and_a_missing_gpu_is_one_sentence():
    assert resolve_device("auto") == torch.device("cpu")
    assert local_gpu_workers(2, "auto") is None and local_gpu_workers(2, "cpu") is None
    for ask in (lambda: resolve_device("cuda"), lambda: local_gpu_workers(1, "cuda")):
        with pytest.raises(DeviceError, match=r"^train.device is 'cuda' but this machine has no CUDA GPU"):
            ask()
    with pytest.raises(DeviceError, match="not one of auto, cpu, cuda, mps"):
        resolve_device("tpu")


def test_explicit_cpu_trains_the_numbers_of_auto_and_records_the_device(data, tmp_path):
    train, val, token_bytes = data
    torch.set_num_threads(1)
    explicit = train_cell(plan(device="cpu"), train, val, token_bytes, tmp_path / "cpu")
    auto = train_cell(plan(), train, val, token_bytes, tmp_path / "auto")
    assert explicit.row["device"] == "cpu" and explicit.row["precision"] == "float32"
    assert without_timing(explicit.row) == without_timing(auto.row) and explicit.curve == auto.curve


def test_micro_batches_accumulate_to_the_whole_batchs_step(data, tmp_path):
    """Gradient accumulation changes the order of float sums only; a micro-batch as large as the batch
    changes nothing at all."""
    train, val, token_bytes = data
    torch.set_num_threads(1)
    whole = train_cell(plan(), train, val, token_bytes, tmp_path / "whole")
    same = train_cell(plan(micro_batch_size=8), train, val, token_bytes, tmp_path / "same")
    parts = train_cell(plan(micro_batch_size=3), train, val, token_bytes, tmp_path / "parts")
    assert without_timing(same.row) == without_timing(whole.row)
    assert parts.row["val_loss_nats"] == pytest.approx(whole.row["val_loss_nats"], rel=1e-4)
    losses = [p["train_loss_nats"] for p in parts.curve]
    assert losses == pytest.approx([p["train_loss_nats"] for p in whole.curve], rel=1e-4)
    assert losses != [p["train_loss_nats"] for p in whole.curve]  # it did split the batch


def test_bf16_autocast_trains_on_the_cpu_path_too(data, tmp_path):
    train, val, token_bytes = data
    torch.set_num_threads(1)
    bf16 = train_cell(plan(precision="bf16"), train, val, token_bytes, tmp_path / "bf16")
    fp32 = train_cell(plan(), train, val, token_bytes, tmp_path / "fp32")
    assert bf16.row["precision"] == "bfloat16" and bf16.row["status"] == "ok"
    assert bf16.row["val_loss_nats"] != fp32.row["val_loss_nats"]
    assert bf16.row["val_loss_nats"] == pytest.approx(fp32.row["val_loss_nats"], rel=0.02)


def interrupted_then_continued(data, tmp_path, first: CellPlan, then: CellPlan, steps: int):
    """`first` trains `steps` steps and saves a checkpoint; `then` continues from it to the end."""
    train, val, token_bytes = data
    checkpoints = Checkpoints(tmp_path / "checkpoint.pt", every_seconds=math.inf)
    with placement(first.device) as place:
        run = _start(first, None, place)
        _train_steps(first, run, train, steps, _curve_every(first), None)
        run.save(checkpoints.path)
    return train_cell(then, train, val, token_bytes, tmp_path / "continued", checkpoints)


def test_a_checkpoint_holds_cpu_tensors_and_continues_under_another_device_map(data, tmp_path):
    """Saved with the run on one device, loaded with map_location into a run that resolved its own, it
    continues to the numbers of a run never interrupted."""
    torch.set_num_threads(1)
    cell = plan(tokens_target=16384)
    continued = interrupted_then_continued(data, tmp_path, cell, plan(tokens_target=16384, device="cpu"), 25)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # no map_location: as saved
    devices = {t.device.type for t in [*saved["model"].values(), *_tensors(saved["optimizer"])]}
    assert devices == {"cpu"} and saved["progress"]["step"] == 25
    train, val, token_bytes = data
    whole = train_cell(cell, train, val, token_bytes, tmp_path / "whole")
    assert continued.row["resumed_from_step"] == 25
    assert without_timing(continued.row) | {"resumed_from_step": 0} == without_timing(whole.row)
    assert continued.curve == whole.curve


def _tensors(state: object) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for value in state.values() for t in _tensors(value)]
    if isinstance(state, list | tuple):
        return [t for value in state for t in _tensors(value)]
    return []


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (run bench/gpu_check.sh on one)")
def test_a_bf16_run_on_cuda_continues_on_the_cpu_and_back(data, tmp_path):
    gpu = plan(tokens_target=16384, device="cuda", precision="bf16")
    cpu = plan(tokens_target=16384, device="cpu", precision="bf16")
    on_cpu = interrupted_then_continued(data, tmp_path / "to-cpu", gpu, cpu, 25)
    on_gpu = interrupted_then_continued(data, tmp_path / "to-gpu", cpu, gpu, 25)
    assert on_gpu.row["device"] == torch.cuda.get_device_name() and on_cpu.row["device"] == "cpu"
    assert on_cpu.row["val_loss_nats"] == pytest.approx(on_gpu.row["val_loss_nats"], rel=0.02)


def preset_ids(name: str) -> list[str]:
    spec = PRESETS[name]
    cells, trunks = grid_params(
        spec, "/s", "tokfp", "vocfp", cell_plans(spec, spec.vocab.size, 3_800_000, 4 * 10**5)
    )
    return sorted(step_fingerprint("cells", c) for c in cells) + sorted(
        step_fingerprint("trunks", t) for t in trunks
    )


def test_presets_keep_every_cell_and_trunk_id_and_precision_is_identity_but_device_is_not():
    # the digest of every id of each preset: smoke's computed by the code before train.precision
    # existed; default's since its evaluation took 16,384 held-out tokens instead of 65,536
    # (default alone was e02dd614c58674e7 before that; the two together dc7a48ccd18ca148)
    def digest(name: str) -> str:
        return hashlib.sha256(" ".join(preset_ids(name)).encode()).hexdigest()[:16]

    assert digest("smoke") == "b18beda1261d7b53"
    assert digest("default") == "7b88abad5b8b1688"
    smoke = PRESETS["smoke"]

    def first_cell_id(**train: object) -> str:
        spec = smoke.model_copy(update={"train": smoke.train.model_copy(update=train)})
        first = cell_plans(spec, 512, 10**7, 10**6)[0]
        return step_fingerprint("cells", cell_params(spec, "/s", "tokfp", "vocfp", first))

    default = first_cell_id()
    assert len({default, first_cell_id(precision="bf16"), first_cell_id(precision="fp32")}) == 3
    assert first_cell_id(device="cuda") == first_cell_id(micro_batch_size=2) == default
    assert first_cell_id(bf16_min_params=1000) != default  # auto-by-size now takes bf16 there
    moved = smoke.model_copy(update={"train": smoke.train.model_copy(update={"device": "cuda"})})
    assert sweep_id(moved) == sweep_id(smoke)


def test_tokens_per_step_sets_the_batch_and_must_hold_whole_sequences():
    grid = {"model_sizes": [3000], "tokens": [8192, 10**6]}
    in_tokens = validate_spec({"grid": grid, "train": {"context": 64, "tokens_per_step": 4096}})
    in_sequences = validate_spec({"grid": grid, "train": {"context": 64, "batch_size": 64}})
    plans = cell_plans(in_tokens, 512, 10**7, 10**6)
    assert [p.batch_size for p in plans] == [64, 2]  # the small cell still keeps min_steps
    assert plans == cell_plans(in_sequences, 512, 10**7, 10**6)
    with pytest.raises(SpecError, match=r"tokens_per_step 1000 is not a multiple of context 128; give"):
        validate_spec({"grid": grid, "train": {"tokens_per_step": 1000}})


def test_one_gpu_per_worker_and_never_one_gpu_for_two():
    assert visible_gpus(None, 4) == ["0", "1", "2", "3"]
    assert visible_gpus("3, 5", 2) == ["3", "5"]
    assert worker_gpu_plan(2, ["3", "5", "6"]) == ["3", "5"]
    with pytest.raises(DeviceError, match=r"execution.workers 3 exceeds the 2 GPU\(s\) visible here"):
        worker_gpu_plan(3, ["3", "5"])


def _visible_devices_of_worker(both_started) -> str:
    both_started.wait(timeout=120)  # holds this worker, so that the other task goes to the other one
    return os.environ["CUDA_VISIBLE_DEVICES"]


def test_a_spawned_pool_gives_each_worker_its_own_gpu():
    initializer, initargs = gpus_for_workers(["3", "5"])
    context = multiprocessing.get_context("spawn")
    with (
        context.Manager() as manager,
        concurrent.futures.ProcessPoolExecutor(2, context, initializer, initargs) as pool,
    ):
        both_started = manager.Barrier(2)
        seen = list(pool.map(_visible_devices_of_worker, [both_started, both_started]))
    assert sorted(seen) == ["3", "5"]


def test_a_lease_takes_a_gpu_no_other_training_holds(tmp_path):
    with gpu_lease(["0", "1"], tmp_path) as first, gpu_lease(["0", "1"], tmp_path) as second:
        assert (first, second) == (0, 1)
    with gpu_lease(["0", "1"], tmp_path) as again:
        assert again == 0  # released when its training ended


def test_the_gpu_preset_is_an_isoflop_sweep_over_20m_to_300m_parameters():
    spec = PRESETS["gpu"]
    plans = cell_plans(spec, spec.vocab.size, 5_500_000_000, 50_000_000)
    n = [p.shape.params_nonembedding() for p in plans]
    assert len(plans) == 4 * 6 and min(n) >= 20e6 and max(n) <= 300e6
    assert max(p.tokens_target for p in plans) <= 5e9 and min(p.steps for p in plans) >= 200
    assert {p.dtype for p in plans} == {"bfloat16"} and {p.device for p in plans} == {"cuda"}
    assert {p.batch_size * p.context for p in plans} == {2**19}


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA GPU: the check would run")
def test_gpu_check_stops_at_once_without_cuda(tmp_path):
    script = Path(__file__).parents[1] / "bench" / "gpu_check.sh"
    env = os.environ | {"PYTHON": sys.executable, "OUT": str(tmp_path)}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3 and "needs a CUDA GPU" in done.stderr and "--dry-run" in done.stderr
    assert "training benchmark" not in done.stdout  # no stage started


def test_sweep_ids_move_only_where_cells_do():
    smoke = PRESETS["smoke"]

    def with_train(**train: object) -> str:
        return sweep_id(smoke.model_copy(update={"train": smoke.train.model_copy(update=train)}))

    assert sweep_id(smoke) == "6335c9535377394d70d9"  # as before train.precision existed
    assert with_train(device="cuda") == with_train(micro_batch_size=2) == sweep_id(smoke)
    assert with_train(precision="fp32") != sweep_id(smoke) != with_train(tokens_per_step=1024)
    # auto-by-size with a model from bf16_min_params up: its cells' ids moved, so does the sweep's
    reaching = smoke.model_copy(update={"train": smoke.train.model_copy(update={"bf16_min_params": 5000})})
    assert _fp32_as_before(smoke) and not _fp32_as_before(reaching)
