"""What identifies an artifact, without Prefect: its fingerprint, a plan as a task parameter, and where
it is built. `scalelaw status` and the rerun of a complete sweep need only this, and answer in seconds."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from storage.store import Store, fingerprint
from tasks.cell import CellPlan, WsdSchedule
from tasks.model import ModelShape

# Bump a step's version when a code change alters its artifact: only that step and those
# downstream of it are redone (a change to the fitting does not retrain any cell).
CODE_VERSIONS = {"clean": 1, "vocab": 1, "tokens": 1, "trunks": 1, "cells": 2, "fits": 5, "reports": 5}
# Parameters that do not change a result. A WSD cell's numbers are those of a run of its own (a test
# holds them equal), so the trunk it branches from is not part of its identity.
NOT_IDENTITY = frozenset({"store", "threads", "checkpoint_seconds", "trunk_fp"})


# Plan fields that say how a cell runs, not what it computes: a cell trained on a GPU, or in
# micro-batches, is the cell trained on a CPU in one batch (up to the order of float sums).
RUNTIME_PLAN_FIELDS = frozenset({"device", "micro_batch_size"})


def step_fingerprint(kind: str, params: dict[str, Any]) -> str:
    identity = {k: v for k, v in params.items() if k not in NOT_IDENTITY}
    if "plan" in identity:
        identity["plan"] = plan_identity(identity["plan"])
    return fingerprint(kind, {"code": CODE_VERSIONS[kind], **identity})


def plan_identity(plan: dict[str, Any]) -> dict[str, Any]:
    """The part of a plan (as a task parameter) that determines its cell's numbers. Fields added since
    cells were first stored are left out where they keep the meaning old ids had: no WSD (cosine), and
    precision 'auto-by-size' on a model below `bf16_min_params`, which trained in fp32 on every machine.
    (Above it the old ids depended on a benchmark of the machine; those cells get ids of their own.)"""
    identity = {k: v for k, v in plan.items() if k not in RUNTIME_PLAN_FIELDS}
    if identity.get("wsd") is None:
        identity.pop("wsd", None)
    cell = plan_from_dict(plan)
    if cell.precision == "auto-by-size" and cell.dtype == "float32":
        identity.pop("precision", None)
    return identity


def reusable(record: dict[str, Any] | None) -> bool:
    """A stored artifact that a rerun may return as is (failed and diverged cells are retried)."""
    return record is not None and record.get("status", "ok") == "ok"


def plan_to_dict(plan: CellPlan) -> dict[str, Any]:
    """The plan as a task parameter (its identity is `plan_identity`)."""
    return asdict(plan)


def plan_from_dict(plan: dict[str, Any]) -> CellPlan:
    wsd = plan.get("wsd")
    return CellPlan(**{**plan, "shape": ModelShape(**plan["shape"]), "wsd": wsd and WsdSchedule(**wsd)})


def work_dir(store: str, kind: str, fp: str, create: bool = True) -> Path:
    """Where an artifact in progress keeps its checkpoints, on the machine that builds it."""
    return Store(store).scratch_dir(f"{kind}-{fp}", create)
