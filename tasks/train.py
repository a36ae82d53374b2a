"""Training and evaluating one grid cell: data order, schedule, loop, held-out metrics, sample; and the
trunks that warmup-stable-decay (WSD) cells branch from."""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from tasks.cell import CellPlan, Checkpoints, plan_columns, schedule_multiplier
from tasks.model import (
    bf16_pays,
    build_model,
    count_params,
    model_flops_utilization,
    training_flops_per_token,
)

DIVERGENCE_FACTOR = 2.0  # a loss above this times the uniform-guess loss counts as exploding
HEAD_CHUNK_LOGITS = 2**19  # logits per chunk of the head's loss: 2 MB in fp32, so they stay in cache

Precision = Literal["float32", "bfloat16"]


def windows(stream: np.ndarray, context: int) -> np.ndarray:
    """A zero-copy (n, context + 1) view of consecutive windows that overlap by one token."""
    count = (len(stream) - 1) // context
    if count < 1:
        raise ValueError(f"a token stream of {len(stream)} tokens is shorter than one context window")
    step = stream.strides[0]
    return np.lib.stride_tricks.as_strided(
        stream, (count, context + 1), (context * step, step), writeable=False
    )


def sequence_order(n_windows: int, n_needed: int, seed: int) -> np.ndarray:
    """Window indices for the whole run: seeded permutations, one per epoch, as many as needed."""
    rng = np.random.default_rng(seed)
    epochs = math.ceil(n_needed / n_windows)
    return np.concatenate([rng.permutation(n_windows) for _ in range(epochs)])[:n_needed]


@dataclass(frozen=True)
class CellOutcome:
    row: dict
    curve: list[dict]


@dataclass
class Progress:
    """Where a run stands: what a checkpoint holds besides the model, optimizer and schedule."""

    step: int = 0
    curve: list[dict] = field(default_factory=list)
    interval_losses: list[float] = field(default_factory=list)
    train_seconds: float = 0.0

    def record(self, plan: CellPlan, step: int, loss: float, lr: float, curve_every: int) -> None:
        """Count a step's loss; every `curve_every` steps, and on the last, their mean is a curve point."""
        self.interval_losses.append(loss)
        if (step + 1) % curve_every == 0 or step + 1 == plan.steps:
            self.curve.append(_curve_point(plan, step, self.interval_losses, lr))
            self.interval_losses = []


@dataclass
class Run:
    """A run under way: what trains, its learning-rate schedule, and where it stands."""

    learner: Learner
    schedule: torch.optim.lr_scheduler.LambdaLR
    progress: Progress


@dataclass(frozen=True)
class Divergence:
    step: int
    loss: float

    def columns(self) -> dict:
        return {
            "status": "diverged",
            "diverged_step": self.step,
            "error": f"loss {self.loss:.4g} at step {self.step}",
        }


def train_cell(
    plan: CellPlan,
    train_stream: np.ndarray,
    val_stream: np.ndarray,
    token_bytes: np.ndarray,
    model_dir: Path,
    checkpoints: Checkpoints | None = None,
    branch_from: Path | None = None,
) -> CellOutcome:
    """Train (continuing from a checkpoint if there is one), evaluate and save one cell.

    A WSD cell given `branch_from`, its trunk's snapshot at the cell's branch step, starts from there and
    trains only its cooldown, to the numbers of a run from the first step. A diverged run is reported in
    the outcome, not raised.
    """
    run = _start(plan, checkpoints)
    resumed_from_step = run.progress.step
    if branch_from is not None and not resumed_from_step:
        run = _branch(run, plan, branch_from)
    diverged = _train_steps(plan, run, train_stream, plan.steps, _curve_every(plan), checkpoints)
    steps_done = plan.steps if diverged is None else diverged.step
    progress = run.progress
    row = _result_row(plan, run.learner, train_stream, steps_done, progress.train_seconds, progress.curve)
    row["resumed_from_step"] = resumed_from_step
    if diverged is not None:
        return CellOutcome(row | diverged.columns(), progress.curve)
    row |= evaluate(run.learner.model, val_stream, token_bytes, plan.context, plan.val_tokens)
    run.learner.model.save_pretrained(model_dir)
    return CellOutcome(row, progress.curve)


def train_trunk(
    plan: CellPlan,
    branch_steps: list[int],
    train_stream: np.ndarray,
    snapshot_dir: Path,
    checkpoints: Checkpoints | None = None,
) -> dict:
    """Train the trunk that the WSD cells of one (N, seed) branch from: `plan` (its longest cell) up to
    the last of `branch_steps`, saving a snapshot in the checkpoint format after each branch step, as
    `snapshot_dir / snapshot_name(step)`. Returns its record; a divergence is reported there, not raised.
    """
    run = _start(plan, checkpoints)
    resumed_from_step = run.progress.step
    snapshots = {step: snapshot_dir / snapshot_name(step) for step in branch_steps}
    # a point per step: each branch rebuilds its own curve from them (see _branch)
    diverged = _train_steps(plan, run, train_stream, max(branch_steps), 1, checkpoints, snapshots)
    outcome = (
        {"status": "ok", "error": None, "diverged_step": None} if diverged is None else diverged.columns()
    )
    return outcome | {
        "steps": run.progress.step,
        "train_seconds": run.progress.train_seconds,
        "resumed_from_step": resumed_from_step,
    }


def snapshot_name(step: int) -> str:
    return f"step-{step}.pt"


def _start(plan: CellPlan, checkpoints: Checkpoints | None) -> Run:
    model = build_model(plan.shape, plan.vocab_size, plan.context, plan.seed)
    learner = make_learner(model, plan)
    schedule = lr_schedule(learner.optimizer, plan)
    return Run(learner, schedule, _resume(checkpoints, model, learner.optimizer, schedule))


def _branch(run: Run, plan: CellPlan, snapshot: Path) -> Run:
    """The run continued from its trunk's snapshot as if it had trained the trunk's steps itself: the rate
    follows this plan from the snapshot's step on, and the trunk's per-step losses become this plan's
    curve points, with the rates this plan's schedule gives them."""
    state = _load_state(snapshot, run.learner.model, run.learner.optimizer)
    trunk = Progress(**state["progress"])
    progress = Progress(step=trunk.step, train_seconds=trunk.train_seconds)
    for point in trunk.curve:
        step = point["step"] - 1
        lr = plan.lr * schedule_multiplier(plan, step + 1)  # as LambdaLR computes it after `step`
        progress.record(plan, step, point["train_loss_nats"], lr, _curve_every(plan))
    schedule = lr_schedule(run.learner.optimizer, plan, first_step=trunk.step)
    return Run(run.learner, schedule, progress)


def _train_steps(
    plan: CellPlan,
    run: Run,
    train_stream: np.ndarray,
    until: int,
    curve_every: int,
    checkpoints: Checkpoints | None,
    snapshots: dict[int, Path] | None = None,
) -> Divergence | None:
    """Train from where the run stands up to step `until`, with a checkpoint every so often and a
    snapshot after each step count that `snapshots` names; returns the divergence that stopped it."""
    train_windows = windows(train_stream, plan.context)
    order = sequence_order(len(train_windows), plan.steps * plan.batch_size, plan.seed)
    explode_at = DIVERGENCE_FACTOR * math.log(plan.vocab_size)
    progress, snapshots = run.progress, snapshots or {}
    run.learner.model.train()
    clock = last_save = time.perf_counter()
    for step in range(progress.step, until):
        rows = order[step * plan.batch_size : (step + 1) * plan.batch_size]
        loss = run.learner.step(torch.from_numpy(train_windows[rows].astype(np.int64)))
        now = time.perf_counter()
        progress.train_seconds += now - clock
        clock = now
        if not math.isfinite(loss) or loss > explode_at:
            return Divergence(step, loss)
        run.schedule.step()
        progress.record(plan, step, loss, run.schedule.get_last_lr()[0], curve_every)
        progress.step = step + 1
        if progress.step in snapshots:  # before the checkpoint: a run resumed past it never saves it
            _save_checkpoint(snapshots[progress.step], run)
        if checkpoints and now - last_save >= checkpoints.every_seconds:
            _save_checkpoint(checkpoints.path, run)
            last_save = now
    return None


def _curve_every(plan: CellPlan) -> int:
    return max(1, plan.steps // 50)


@dataclass(frozen=True)
class Learner:
    """What one training step touches. `body` is the decoder without its head (compiled or not);
    the head is the tied embedding, whose loss `TiedHeadLoss` takes a chunk of tokens at a time."""

    model: torch.nn.Module
    body: torch.nn.Module
    optimizer: torch.optim.Optimizer
    params: list[torch.nn.Parameter]
    grad_clip: float
    precision: Precision

    def step(self, batch: torch.Tensor) -> float:
        """One optimizer step on a (batch, context + 1) block of token ids; returns the mean loss."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bfloat16"):
            hidden = self.body(input_ids=batch[:, :-1]).last_hidden_state
        # the head stays fp32, outside autocast: its in-place steps must not meet bf16 operands
        loss = TiedHeadLoss.apply(
            hidden.reshape(-1, hidden.shape[-1]).float(),
            self.model.lm_head.weight,
            batch[:, 1:].reshape(-1),
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        return loss.item()


def make_learner(model: torch.nn.Module, plan: CellPlan) -> Learner:
    body = torch.compile(model.model) if plan.compile else model.model
    return Learner(
        model,
        body,
        make_optimizer(model, plan),
        list(model.parameters()),
        plan.grad_clip,
        precision_for(plan),
    )


def precision_for(plan: CellPlan) -> Precision:
    """bf16 autocast for models from `plan.bf16_min_params` non-embedding parameters up, on machines
    whose bf16 matmuls beat fp32: below that size bf16 gains nothing (the step is memory-bound)."""
    large = plan.bf16_min_params is not None and plan.shape.params_nonembedding() >= plan.bf16_min_params
    return "bfloat16" if large and bf16_pays() else "float32"


def lr_schedule(
    optimizer: torch.optim.Optimizer, plan: CellPlan, first_step: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """The plan's schedule. From a `first_step` after 0 it continues an optimizer whose state was loaded
    (torch's way to restore a schedule), and sets the rate that step takes."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: schedule_multiplier(plan, s), last_epoch=first_step - 1
    )


class TiedHeadLoss(torch.autograd.Function):
    """Mean cross-entropy of the logits `hidden @ weight.T` against `targets`, a chunk of tokens at a time.

    The full logits (tokens x vocab floats: 67 MB for 32 x 128 tokens at vocab 4096) never exist. Each
    chunk's gradient is taken in the forward pass while its logits are still in cache; this replaces
    the passes of log-softmax, of the zero-filled one-hot and the page faults of fresh 67 MB buffers,
    which took more than half of a 25k-parameter model's step. For training only: its forward already
    pays for the backward.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight)
        loss_sum = hidden.new_zeros(())
        rows = max(1, HEAD_CHUNK_LOGITS // weight.shape[0])
        for start in range(0, len(hidden), rows):
            chunk, target = hidden[start : start + rows], targets[start : start + rows]
            logits = chunk @ weight.T
            target_logits = logits.gather(1, target[:, None])
            peak = logits.amax(dim=1, keepdim=True)
            exp = logits.sub_(peak).exp_()
            total = exp.sum(dim=1, keepdim=True)
            loss_sum += (total.log() + peak - target_logits).sum()
            # d loss / d logits = exp / total - one_hot(target); 1/total scales the narrow operand
            inverse = total.reciprocal_()
            grad_chunk = torch.mm(exp, weight, out=grad_hidden[start : start + rows])
            grad_chunk.mul_(inverse).sub_(weight[target])
            grad_weight.addmm_(exp.T, chunk * inverse)
            grad_weight.index_add_(0, target, chunk, alpha=-1.0)
        ctx.save_for_backward(grad_hidden.div_(len(hidden)), grad_weight.div_(len(hidden)))
        return loss_sum / len(hidden)

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss, grad_weight * grad_loss, None


@torch.no_grad()
def next_token_nats(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Loss in nats of each next token of a (batch, context + 1) block: (batch, context)."""
    hidden = model.model(input_ids=batch[:, :-1]).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = batch[:, 1:].reshape(-1)
    weight = model.lm_head.weight
    rows = max(1, HEAD_CHUNK_LOGITS // weight.shape[0])
    nats = []
    for start in range(0, len(hidden), rows):
        logits = hidden[start : start + rows] @ weight.T
        target_logits = logits.gather(1, targets[start : start + rows, None]).squeeze(1)
        nats.append(logits.logsumexp(dim=1) - target_logits)
    return torch.cat(nats).view(len(batch), -1)


def _save_checkpoint(path: Path, run: Run) -> None:
    """Model, optimizer, schedule, RNG and data position, replaced atomically (whole or not at all)."""
    state = {
        "model": run.learner.model.state_dict(),
        "optimizer": run.learner.optimizer.state_dict(),
        "schedule": run.schedule.state_dict(),
        "rng": torch.random.get_rng_state(),
        "progress": asdict(run.progress),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    with partial.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, path)


def _resume(checkpoints: Checkpoints | None, model, optimizer, schedule) -> Progress:
    if checkpoints is None or not checkpoints.path.exists():
        return Progress()
    state = _load_state(checkpoints.path, model, optimizer)
    schedule.load_state_dict(state["schedule"])
    return Progress(**state["progress"])


def _load_state(path: Path, model, optimizer) -> dict:
    """A checkpoint's model, optimizer and RNG state put in place; returns the whole checkpoint."""
    state = torch.load(path, weights_only=True)  # never unpickle arbitrary objects
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.random.set_rng_state(state["rng"])
    return state


def make_optimizer(model: torch.nn.Module, plan: CellPlan) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only; fused: one kernel per parameter, not ten."""
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": matrices, "weight_decay": plan.weight_decay},
        {"params": vectors, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=plan.lr, betas=(plan.beta1, plan.beta2), fused=True)


def _curve_point(plan: CellPlan, step: int, losses: list[float], lr: float) -> dict:
    return {
        "step": step + 1,
        "tokens_seen": (step + 1) * plan.batch_size * plan.context,
        "train_loss_nats": float(np.mean(losses)),
        "lr": lr,
    }


def _result_row(
    plan: CellPlan, learner: Learner, train_stream: np.ndarray, steps: int, seconds: float, curve: list
) -> dict:
    params_nonembedding, params_total = count_params(learner.model)
    tokens_seen = steps * plan.batch_size * plan.context
    flops = training_flops_per_token(plan.shape, plan.vocab_size, plan.context)
    tokens_per_second = tokens_seen / seconds if seconds > 0 else None
    return plan_columns(plan) | {
        "status": "ok",
        "error": None,
        "diverged_step": None,
        "params_nonembedding": params_nonembedding,
        "params_total": params_total,
        "tokens_seen": tokens_seen,
        "steps": steps,
        "epochs": tokens_seen / len(train_stream),
        "compute_6nd": flops["6nd"] * tokens_seen,
        "compute_with_attention": flops["with_attention"] * tokens_seen,
        "train_loss_nats": curve[-1]["train_loss_nats"] if curve else None,
        "train_seconds": seconds,
        "tokens_per_second": tokens_per_second,
        "mfu": model_flops_utilization(tokens_per_second, flops["with_attention"], learner.precision)
        if tokens_per_second
        else None,
        "precision": learner.precision,
        "compiled": plan.compile,
    }


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, val_stream: np.ndarray, token_bytes: np.ndarray, context: int, val_tokens: int
) -> dict:
    """Held-out loss over fixed windows (the same for every cell), with its standard error."""
    model.eval()
    val_windows = windows(val_stream, context)[: max(1, val_tokens // context)]
    window_nats = []
    for start in range(0, len(val_windows), 16):
        batch = torch.from_numpy(val_windows[start : start + 16].astype(np.int64))
        window_nats.append(next_token_nats(model, batch).sum(dim=1).double().numpy())
    nats_per_window = np.concatenate(window_nats)
    n_tokens = len(val_windows) * context
    loss = float(nats_per_window.sum() / n_tokens)
    stderr = (
        float(np.std(nats_per_window / context, ddof=1) / math.sqrt(len(nats_per_window)))
        if len(nats_per_window) > 1
        else float("nan")
    )
    target_bytes = int(token_bytes[val_windows[:, 1:]].sum())
    return {
        "val_loss_nats": loss,
        "val_loss_stderr": stderr,
        "val_perplexity": math.exp(loss),
        "val_bits_per_byte": float(nats_per_window.sum() / math.log(2) / max(target_bytes, 1)),
        "val_tokens": n_tokens,
    }


@torch.no_grad()
def generate_sample(model_dir: Path, prompt: str, max_new_tokens: int) -> str:
    """Greedy continuation of `prompt` by the saved model, loaded the way a user would load it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if max_new_tokens == 0:
        return ""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    inputs = tokenizer(prompt, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
    return tokenizer.decode(output[0], skip_special_tokens=True)
