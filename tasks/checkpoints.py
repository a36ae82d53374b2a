"""A run's checkpoint on disk: model, optimizer, schedule, RNG and progress, written whole or not at
all, and read back without unpickling arbitrary objects. A trunk's snapshots use the same format. The
file holds CPU tensors whatever the run trained on, so a checkpoint saved on a GPU continues on a CPU,
and back: loading puts each tensor on the device of the model and optimizer it is loaded into."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def snapshot_name(step: int) -> str:
    """The file name of a trunk's snapshot after `step` steps."""
    return f"step-{step}.pt"


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    progress: dict,
) -> None:
    """Model, optimizer, schedule, RNG and data position, replaced atomically (whole or not at all)."""
    state = {
        "model": _on_cpu(model.state_dict()),
        "optimizer": _on_cpu(optimizer.state_dict()),
        "schedule": schedule.state_dict(),
        "rng": torch.random.get_rng_state(),
        "progress": progress,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    with partial.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, path)


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """A checkpoint's model, optimizer and RNG state put in place; returns the whole checkpoint."""
    state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
    model.load_state_dict(state["model"])  # copies into the model's tensors, on its device
    optimizer.load_state_dict(state["optimizer"])  # moves the state to its parameters' device
    torch.random.set_rng_state(state["rng"])
    return state


def _on_cpu(state: object) -> object:
    """A state dict with every tensor copied to the CPU (nested dicts and lists followed)."""
    if isinstance(state, torch.Tensor):
        return state.cpu()
    if isinstance(state, dict):
        return {key: _on_cpu(value) for key, value in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(_on_cpu(value) for value in state)
    return state
