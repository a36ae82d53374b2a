"""A grid cell's plan: what determines its result, and the schedule and batch it implies."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from tasks.model import ModelShape


@dataclass(frozen=True)
class CellPlan:
    """Everything that determines a cell's result."""

    shape: ModelShape
    params_target: int
    vocab_size: int
    context: int
    tokens_target: int
    batch_size: int
    seed: int
    lr: float
    warmup_fraction: float
    min_lr_ratio: float
    weight_decay: float
    beta1: float
    beta2: float
    grad_clip: float
    val_tokens: int
    sample_prompt: str
    sample_tokens: int

    @property
    def steps(self) -> int:
        return max(1, round(self.tokens_target / (self.batch_size * self.context)))

    @property
    def warmup_steps(self) -> int:
        return round(self.warmup_fraction * self.steps)

    @property
    def tokens_seen(self) -> int:
        return self.steps * self.batch_size * self.context


def batch_size_for(tokens_target: int, context: int, largest_batch: int, min_steps: int) -> int:
    """The largest batch (up to `largest_batch`) that still gives `min_steps` steps."""
    return max(1, min(largest_batch, tokens_target // (context * min_steps)))


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Linear warmup, then cosine decay that reaches `min_ratio` on the last step."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps + 1) / max(1, total_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


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
    }


@dataclass(frozen=True)
class Checkpoints:
    """Where a cell keeps its checkpoint, and how often it rewrites it."""

    path: Path
    every_seconds: float
