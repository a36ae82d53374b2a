"""Training one grid cell: the learner's step, the schedule and the loop, with checkpoints; and the
trunks that warmup-stable-decay (WSD) cells branch from. The head's loss, the checkpoint format and the
held-out evaluation live in tasks.head_loss, tasks.checkpoints and tasks.evaluate."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from tasks.cell import CellPlan, Checkpoints, Dtype, plan_columns, schedule_multiplier
from tasks.checkpoints import load_checkpoint, save_checkpoint
from tasks.checkpoints import snapshot_name as snapshot_name  # re-exported: tasks.steps imports it here
from tasks.device import Placement, placement
from tasks.evaluate import evaluate
from tasks.evaluate import generate_sample as generate_sample  # re-exported, as snapshot_name
from tasks.head_loss import TiedHeadLoss
from tasks.model import build_model, count_params, model_flops_utilization, training_flops_per_token
from tasks.windows import sequence_order, windows

DIVERGENCE_FACTOR = 2.0  # a loss above this times the uniform-guess loss counts as exploding


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

    def save(self, path: Path) -> None:
        """A checkpoint of the run as it stands (see tasks.checkpoints)."""
        save_checkpoint(
            path, self.learner.model, self.learner.optimizer, self.schedule, asdict(self.progress)
        )


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
    with placement(plan.device) as place:
        run = _start(plan, checkpoints, place)
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
        run.learner.model.save_pretrained(model_dir)  # safetensors, which any device loads
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
    with placement(plan.device) as place:
        run = _start(plan, checkpoints, place)
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


def _start(plan: CellPlan, checkpoints: Checkpoints | None, place: Placement) -> Run:
    model = build_model(plan.shape, plan.vocab_size, plan.context, plan.seed).to(place.device)
    learner = make_learner(model, plan, place)
    schedule = lr_schedule(learner.optimizer, plan)
    return Run(learner, schedule, _resume(checkpoints, model, learner.optimizer, schedule))


def _resume(checkpoints: Checkpoints | None, model, optimizer, schedule) -> Progress:
    if checkpoints is None or not checkpoints.path.exists():
        return Progress()
    state = load_checkpoint(checkpoints.path, model, optimizer)
    schedule.load_state_dict(state["schedule"])
    return Progress(**state["progress"])


def _branch(run: Run, plan: CellPlan, snapshot: Path) -> Run:
    """The run continued from its trunk's snapshot as if it had trained the trunk's steps itself: the rate
    follows this plan from the snapshot's step on, and the trunk's per-step losses become this plan's
    curve points, with the rates this plan's schedule gives them."""
    state = load_checkpoint(snapshot, run.learner.model, run.learner.optimizer)
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
        now = time.perf_counter()  # the loss came back from the device: its step is done
        progress.train_seconds += now - clock
        clock = now
        if not math.isfinite(loss) or loss > explode_at:
            return Divergence(step, loss)
        run.schedule.step()
        progress.record(plan, step, loss, run.schedule.get_last_lr()[0], curve_every)
        progress.step = step + 1
        if progress.step in snapshots:  # before the checkpoint: a run resumed past it never saves it
            run.save(snapshots[progress.step])
        if checkpoints and now - last_save >= checkpoints.every_seconds:
            run.save(checkpoints.path)
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
    precision: Dtype
    place: Placement
    micro_batch_size: int | None = None

    def step(self, batch: torch.Tensor) -> float:
        """One optimizer step on a (batch, context + 1) block of token ids on the CPU, a micro-batch at
        a time with their gradients accumulated; returns the mean loss."""
        self.optimizer.zero_grad(set_to_none=True)
        parts = batch.split(self.micro_batch_size or len(batch))
        total = None
        for part in parts:
            share = len(part) / len(batch)  # 1.0 for a whole batch: the same numbers as no accumulation
            loss = self._loss(self.place.batch(part)) * share
            loss.backward()
            total = loss.detach() if total is None else total + loss.detach()
        torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        return total.item()

    def _loss(self, batch: torch.Tensor) -> torch.Tensor:
        with self.place.autocast(self.precision):
            hidden = self.body(input_ids=batch[:, :-1]).last_hidden_state
        # the head stays fp32, outside autocast: its in-place steps must not meet bf16 operands
        return TiedHeadLoss.apply(
            hidden.reshape(-1, hidden.shape[-1]).float(),
            self.model.lm_head.weight,
            batch[:, 1:].reshape(-1),
        )


def make_learner(model: torch.nn.Module, plan: CellPlan, place: Placement) -> Learner:
    """The learner of a model already on `place`'s device."""
    body = torch.compile(model.model) if plan.compile else model.model
    return Learner(
        model,
        body,
        make_optimizer(model, plan),
        list(model.parameters()),
        plan.grad_clip,
        plan.dtype,
        place,
        plan.micro_batch_size,
    )


def lr_schedule(
    optimizer: torch.optim.Optimizer, plan: CellPlan, first_step: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """The plan's schedule. From a `first_step` after 0 it continues an optimizer whose state was loaded
    (torch's way to restore a schedule), and sets the rate that step takes."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: schedule_multiplier(plan, s), last_epoch=first_step - 1
    )


def make_optimizer(model: torch.nn.Module, plan: CellPlan) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only; fused (one kernel per parameter, not ten) on the CPU and
    CUDA, where torch has that kernel. The model must be on its device already."""
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": matrices, "weight_decay": plan.weight_decay},
        {"params": vectors, "weight_decay": 0.0},
    ]
    fused = matrices[0].device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=plan.lr, betas=(plan.beta1, plan.beta2), fused=fused or None)


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
        "flops_6nd": flops["6nd"] * tokens_seen,
        "flops_with_attention": flops["with_attention"] * tokens_seen,
        "train_loss_nats": curve[-1]["train_loss_nats"] if curve else None,
        "train_seconds": seconds,
        "tokens_per_second": tokens_per_second,
        "mfu": model_flops_utilization(
            tokens_per_second, flops["with_attention"], learner.precision, learner.place.device.type
        )
        if tokens_per_second
        else None,
        "precision": learner.precision,
        "device": learner.place.name,
        "compiled": plan.compile,
    }
