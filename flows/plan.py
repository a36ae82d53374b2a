"""From a SweepSpec to its plan: the grid cells it asks for, and the ordered steps of the sweep
(corpus -> vocabulary -> tokens -> trunks and cells -> sweep record -> fits -> report), each with its
parameters and fingerprint. Pure and without Prefect: the flow executes the plan, and `scalelaw status`
and the rerun of a complete sweep read the store by it."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from flows.spec import SweepSpec
from storage.store import fingerprint
from tasks.cell import CellPlan, WsdSchedule, batch_size_for, lr_for_size
from tasks.corpus import source_version
from tasks.errors import InputError
from tasks.identity import plan_from_dict, plan_to_dict, step_fingerprint
from tasks.model import ModelShape, shape_for_params, training_flops_per_token


def model_shape(size: int | ModelShape) -> ModelShape:
    return size if isinstance(size, ModelShape) else shape_for_params(size)


def cell_plans(spec: SweepSpec, vocab_size: int, train_tokens: int, val_tokens: int) -> list[CellPlan]:
    """One plan per (N, D, seed), most expensive first so that parallel workers finish together."""
    context = spec.train.context
    if val_tokens <= context:
        raise InputError(
            f"corpus: the validation split has {val_tokens} tokens, fewer than one context window "
            f"({context}); add text, raise corpus.val_fraction or lower train.context."
        )
    train = spec.train
    plans = []
    for size, tokens_target in grid_points(spec, vocab_size, train_tokens):
        shape = model_shape(size)
        lr = lr_for_size(shape.params_nonembedding()) if train.lr == "rule" else train.lr
        for seed in spec.grid.seeds:
            plans.append(
                CellPlan(
                    shape=shape,
                    params_target=size if isinstance(size, int) else shape.params_nonembedding(),
                    vocab_size=vocab_size,
                    context=context,
                    tokens_target=tokens_target,
                    batch_size=batch_size_for(
                        tokens_target,
                        context,
                        train.batch_size_by_size.get(size, train.largest_batch),
                        train.min_steps,
                    ),
                    seed=seed,
                    lr=train.lr_by_size.get(size, lr),
                    warmup_fraction=train.warmup_fraction,
                    min_lr_ratio=train.min_lr_ratio,
                    weight_decay=train.weight_decay,
                    beta1=train.beta1,
                    beta2=train.beta2_by_size.get(size, train.beta2),
                    grad_clip=train.grad_clip,
                    val_tokens=spec.eval.val_tokens,
                    sample_prompt=spec.eval.sample_prompt,
                    sample_tokens=spec.eval.sample_tokens,
                    warmup_tokens_per_param=train.warmup_tokens_per_param,
                    precision=train.precision,
                    bf16_min_params=train.bf16_min_params,
                    compile=train.compile,
                    device=train.device,
                    micro_batch_size=train.micro_batch_size,
                )
            )
    if train.schedule == "wsd":
        plans = wsd_branches(plans, train.cooldown_fraction)
    return sorted(plans, key=training_cost, reverse=True)


def grid_points(spec: SweepSpec, vocab_size: int, train_tokens: int) -> list[tuple[int | ModelShape, int]]:
    """The grid's (model size, D) pairs: the product of sizes and tokens, or each budget's profile, and
    then `grid.extra_cells`."""
    grid = spec.grid
    if grid.budgets is None:
        points = [(size, tokens) for size in grid.model_sizes for tokens in grid.tokens]
    else:
        points = [
            p for budget in grid.budgets for p in isoflop_points(spec, budget, vocab_size, train_tokens)
        ]
    extra = [(cell.model_size, cell.tokens) for cell in grid.extra_cells]
    for _, tokens in (points if grid.budgets is None else []) + extra:
        _check_epochs(spec, tokens, train_tokens)
    return list(dict.fromkeys(points + extra))


def isoflop_points(
    spec: SweepSpec, budget_flops: float, vocab_size: int, train_tokens: int
) -> list[tuple[int | ModelShape, int]]:
    """One budget's profile: `models_per_budget` consecutive sizes of the ladder, each with the D that
    spends the budget in the fit's compute accounting, centred on the size whose D/N is nearest the
    expected optimum's `tokens_per_param`. Windows whose D would exceed the training split (unless
    repeated epochs are allowed) or leave fewer than `train.min_steps` full batches are passed over."""
    grid, fit, context = spec.grid, spec.fit, spec.train.context
    ladder = sorted(grid.model_sizes, key=lambda size: model_shape(size).params_nonembedding())
    params = [_fit_params(model_shape(size), vocab_size, fit.params_kind) for size in ladder]
    tokens = [
        round(budget_flops / _flops_per_token(model_shape(size), vocab_size, context, fit.compute_kind))
        for size in ladder
    ]
    most_tokens = math.inf if grid.allow_repeated_epochs else train_tokens
    fewest_tokens = spec.train.min_steps * context * spec.train.largest_batch
    width = grid.models_per_budget
    windows = [
        start
        for start in range(len(ladder) - width + 1)
        if max(tokens[start : start + width]) <= most_tokens
        and min(tokens[start : start + width]) >= fewest_tokens
    ]
    if not windows:
        raise InputError(
            f"grid.budgets: no {width} consecutive model sizes spend {budget_flops:.3g} FLOPs on between "
            f"{fewest_tokens:,} and {most_tokens:,} tokens each; change that budget or the ladder of "
            "grid.model_sizes."
        )

    def miss(start: int) -> float:
        centre = start + width // 2
        return abs(math.log(tokens[centre] / params[centre] / grid.tokens_per_param))

    start = min(windows, key=miss)
    return list(zip(ladder[start : start + width], tokens[start : start + width], strict=True))


def _fit_params(shape: ModelShape, vocab_size: int, params_kind: str) -> int:
    return shape.params_nonembedding() if params_kind == "nonembedding" else shape.params_total(vocab_size)


def _flops_per_token(shape: ModelShape, vocab_size: int, context: int, compute_kind: str) -> float:
    return training_flops_per_token(shape, vocab_size, context)[compute_kind]


def wsd_branches(plans: list[CellPlan], cooldown_fraction: float) -> list[CellPlan]:
    """The cells as WSD branches: those of one trunk (one N and seed) take the batch and warmup of its
    smallest D. That batch keeps every branch at `min_steps` steps or more (the largest D's batch would
    leave the small cells too few), and that warmup takes at most `warmup_fraction` of every branch."""
    branches = []
    for group in _by_trunk(plans):
        shortest = min(group, key=lambda plan: plan.tokens_target)
        wsd = WsdSchedule(cooldown_fraction, shortest.warmup_steps)
        branches += [replace(plan, batch_size=shortest.batch_size, wsd=wsd) for plan in group]
    return branches


def _by_trunk(plans: list[CellPlan]) -> list[list[CellPlan]]:
    """The plans grouped by all they hold but D and the batch it implies: one group per trunk."""
    groups: dict[CellPlan, list[CellPlan]] = {}
    for plan in plans:
        groups.setdefault(replace(plan, tokens_target=0, batch_size=0), []).append(plan)
    return list(groups.values())


def _check_epochs(spec: SweepSpec, tokens_target: int, train_tokens: int) -> None:
    if tokens_target > train_tokens and not spec.grid.allow_repeated_epochs:
        raise InputError(
            f"grid.tokens: {tokens_target:,} tokens exceed the training split ({train_tokens:,} tokens); "
            "lower grid.tokens, add text, or set grid.allow_repeated_epochs: true."
        )


def training_cost(plan: CellPlan) -> float:
    return _cell_flops_per_token(plan) * plan.tokens_target


def _cell_flops_per_token(plan: CellPlan) -> float:
    return _flops_per_token(plan.shape, plan.vocab_size, plan.context, "with_attention")


def task_cost(kind: str, params: Mapping[str, Any]) -> float:
    """The FLOPs a trunk's or a cell's task trains: a trunk up to its last branch step, a WSD cell from
    its branch step on (its trunk trained the rest)."""
    plan = plan_from_dict(params["plan"])
    if kind == "trunks":
        steps = max(params["branch_steps"])
    else:
        steps = plan.steps - (plan.branch_step if params.get("trunk_fp") else 0)
    return _cell_flops_per_token(plan) * steps * plan.tokens_per_step


def corpus_params(spec: SweepSpec, store: str) -> dict:
    return {"store": store, **spec.corpus.model_dump(), "source_version": source_version(spec.corpus.source)}


def vocab_params(spec: SweepSpec, store: str, corpus_fp: str) -> dict:
    return {"store": store, "corpus_fp": corpus_fp, "vocab_size": spec.vocab.size}


def tokens_params(store: str, corpus_fp: str, vocab_fp: str) -> dict:
    return {"store": store, "corpus_fp": corpus_fp, "vocab_fp": vocab_fp}


def sweep_id(spec: SweepSpec) -> str:
    """A sweep's id: its spec less where and how it runs (`execution`, `train.device`,
    `train.micro_batch_size`), and less fields added since at the values that keep the meaning old ids
    had (an empty `grid.extra_cells`, no `train.tokens_per_step`, and `train.precision` auto-by-size
    when every model is below `bf16_min_params`, so trained in fp32 before too), so that those sweeps
    keep the ids they had before the fields existed."""
    train = {"device", "micro_batch_size"}
    train |= {"tokens_per_step"} if spec.train.tokens_per_step is None else set()
    train |= {"precision"} if _fp32_as_before(spec) else set()
    excluded: dict = {"execution": True, "train": train}
    if not spec.grid.extra_cells:
        excluded["grid"] = {"extra_cells"}
    return fingerprint("sweep", spec.model_dump(exclude=excluded))


def _fp32_as_before(spec: SweepSpec) -> bool:
    threshold = spec.train.bf16_min_params
    sizes = [*spec.grid.model_sizes, *(cell.model_size for cell in spec.grid.extra_cells)]
    small = threshold is None or all(model_shape(size).params_nonembedding() < threshold for size in sizes)
    return spec.train.precision == "auto-by-size" and small


def fit_params(store: str, cell_ids: list[str], **fit_options: object) -> dict:
    """`fit_options`: the fields of a FitSpec."""
    return {"store": store, "cell_ids": cell_ids, **fit_options}


def report_params(store: str, sweep_name: str, cell_ids: list[str], fits_fp: str) -> dict:
    return {"store": store, "sweep_name": sweep_name, "cell_ids": cell_ids, "fits_fp": fits_fp}


def sweep_params(store: str, this_sweep: str, sweep_name: str, cell_ids: list[str]) -> dict:
    return {"store": store, "sweep_id": this_sweep, "sweep_name": sweep_name, "cell_ids": cell_ids}


def cell_params(
    spec: SweepSpec, store: str, tokens_fp: str, vocab_fp: str, plan: CellPlan, trunk_fp: str | None = None
) -> dict:
    return {
        "store": store,
        "tokens_fp": tokens_fp,
        "vocab_fp": vocab_fp,
        "plan": plan_to_dict(plan),
        "threads": spec.execution.threads_per_worker,
        "checkpoint_seconds": spec.execution.checkpoint_seconds,
        "trunk_fp": trunk_fp,
    }


def trunk_params(spec: SweepSpec, store: str, tokens_fp: str, branches: list[CellPlan]) -> dict:
    """A trunk runs its longest branch's plan up to the last branch step, with a snapshot at each."""
    return {
        "store": store,
        "tokens_fp": tokens_fp,
        "plan": plan_to_dict(max(branches, key=lambda plan: plan.tokens_target)),
        "branch_steps": sorted({plan.branch_step for plan in branches}),
        "threads": spec.execution.threads_per_worker,
        "checkpoint_seconds": spec.execution.checkpoint_seconds,
    }


def grid_params(
    spec: SweepSpec, store: str, tokens_fp: str, vocab_fp: str, plans: list[CellPlan]
) -> tuple[list[dict], list[dict]]:
    """The parameters of every cell, and of the WSD trunks they branch from (none with cosine). A WSD
    cell names its trunk's fingerprint, which is not part of the cell's: a branch gives the numbers of
    a run of its own."""
    trunks, trunk_of = [], {}
    for branches in _by_trunk([plan for plan in plans if plan.wsd is not None]):
        trunk = trunk_params(spec, store, tokens_fp, branches)
        trunks.append(trunk)
        trunk_of |= dict.fromkeys(branches, step_fingerprint("trunks", trunk))
    cells = [cell_params(spec, store, tokens_fp, vocab_fp, plan, trunk_of.get(plan)) for plan in plans]
    return cells, trunks


# The steps that prepare the data, in order; the cells' plans need their records (vocabulary size,
# token counts), so the plan goes past them only once these are known.
DATA_KINDS = ("clean", "vocab", "tokens")
TRAINING_KINDS = ("trunks", "cells")
Record = Mapping[str, Any]


@dataclass(frozen=True)
class Step:
    """One step of a sweep: the artifact kind it builds (also its task's name), the task's parameters,
    and the fingerprint of its artifact."""

    kind: str
    params: dict[str, Any]
    fp: str


def planned(kind: str, params: dict[str, Any]) -> Step:
    return Step(kind, params, step_fingerprint(kind, params))


@dataclass(frozen=True)
class SweepPlan:
    """A sweep's steps in the order they run. Until the data steps' records are known it holds those
    steps alone (`known` false); `cell_plans` are the cells' plans, in the order of the cell steps."""

    sweep_id: str
    steps: tuple[Step, ...]
    cell_plans: tuple[CellPlan, ...] = ()

    @property
    def known(self) -> bool:
        return any(step.kind not in DATA_KINDS for step in self.steps)

    def of(self, kind: str) -> list[Step]:
        return [step for step in self.steps if step.kind == kind]

    def step(self, kind: str) -> Step:
        (step,) = self.of(kind)
        return step

    def params(self, kind: str) -> list[dict[str, Any]]:
        return [step.params for step in self.of(kind)]

    @property
    def cell_ids(self) -> list[str]:
        return sorted({step.fp for step in self.of("cells")})

    @property
    def after_training(self) -> list[Step]:
        """The steps that follow the cells (sweep record, fits, report): all complete in the store, with
        every cell done, means a rerun has nothing to do."""
        return [step for step in self.steps if step.kind not in (*DATA_KINDS, *TRAINING_KINDS)]


def sweep_plan(spec: SweepSpec, store: str, data: Mapping[str, Record] | None = None) -> SweepPlan:
    """The sweep's plan in the store at `store`. `data`: the records of the data steps known so far, by
    kind (from running them, or from the store); a step downstream of a known record takes its
    fingerprint from it, the same string (so that Prefect's UI draws the edge between the two)."""
    data = data or {}
    clean = planned("clean", corpus_params(spec, store))
    vocab = planned("vocab", vocab_params(spec, store, _fp(data, clean)))
    tokens = planned("tokens", tokens_params(store, _fp(data, clean), _fp(data, vocab)))
    this_sweep = sweep_id(spec)
    if "vocab" not in data or "tokens" not in data:
        return SweepPlan(this_sweep, (clean, vocab, tokens))
    counts = data["tokens"]
    plans = cell_plans(spec, data["vocab"]["vocab_size"], counts["train_tokens"], counts["val_tokens"])
    grid, trunk_grid = grid_params(spec, store, _fp(data, tokens), _fp(data, vocab), plans)
    trunks = [planned("trunks", params) for params in trunk_grid]
    cells = [planned("cells", params) for params in grid]
    cell_ids = sorted({cell.fp for cell in cells})
    record = Step("sweeps", sweep_params(store, this_sweep, spec.name, cell_ids), this_sweep)
    fits, report = analysis_steps(store, spec.name, cell_ids, spec.fit.model_dump())
    steps = (clean, vocab, tokens, *trunks, *cells, record, fits, report)
    return SweepPlan(this_sweep, steps, tuple(plans))


def analysis_steps(
    store: str,
    sweep_name: str,
    cell_ids: list[str],
    fit_options: Mapping[str, Any],
    fits: Record | None = None,
) -> tuple[Step, Step]:
    """The fits of the cells and the report on them (a sweep's last steps, and all of a refit);
    `fit_options`: the fields of a FitSpec; `fits`: the fits' record once known."""
    fit_step = planned("fits", fit_params(store, cell_ids, **fit_options))
    report = planned("reports", report_params(store, sweep_name, cell_ids, _fp(fits or {}, fit_step)))
    return fit_step, report


def resolved_plan(spec: SweepSpec, store: str, record_of: Callable[[Step], Record | None]) -> SweepPlan:
    """The plan once its data steps are known: `record_of` runs each in turn (the flow) or reads it
    from the store (status), and answers None when it is not there; the plan stops at that step."""
    data: dict[str, Record] = {}
    for kind in DATA_KINDS:
        record = record_of(sweep_plan(spec, store, data).step(kind))
        if record is None:
            break
        data[kind] = record
    return sweep_plan(spec, store, data)


def _fp(data: Mapping[str, Record], step: Step) -> str:
    """The fingerprint of a step: its record's when known (the two are equal), else the planned one."""
    record = data.get(step.kind)
    return record["fp"] if record else step.fp
