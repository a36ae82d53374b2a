"""From a SweepSpec to the list of grid cells it asks for."""

from __future__ import annotations

from dataclasses import replace

from flows.spec import SweepSpec
from storage.store import fingerprint
from tasks.cell import CellPlan, WsdSchedule, batch_size_for, lr_for_size
from tasks.corpus import source_version
from tasks.errors import InputError
from tasks.identity import plan_to_dict, step_fingerprint
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
    for size in spec.grid.model_sizes:
        shape = model_shape(size)
        lr = lr_for_size(shape.params_nonembedding()) if train.lr == "rule" else train.lr
        for tokens_target in spec.grid.tokens:
            _check_epochs(spec, tokens_target, train_tokens)
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
                            train.batch_size_by_size.get(size, train.batch_size),
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
                        bf16_min_params=train.bf16_min_params,
                        compile=train.compile,
                    )
                )
    if train.schedule == "wsd":
        plans = wsd_branches(plans, train.cooldown_fraction)
    return sorted(plans, key=training_cost, reverse=True)


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
    flops = training_flops_per_token(plan.shape, plan.vocab_size, plan.context)["with_attention"]
    return flops * plan.tokens_target


def corpus_params(spec: SweepSpec, store: str) -> dict:
    return {"store": store, **spec.corpus.model_dump(), "source_version": source_version(spec.corpus.source)}


def vocab_params(spec: SweepSpec, store: str, corpus_fp: str) -> dict:
    return {"store": store, "corpus_fp": corpus_fp, "vocab_size": spec.vocab.size}


def tokens_params(store: str, corpus_fp: str, vocab_fp: str) -> dict:
    return {"store": store, "corpus_fp": corpus_fp, "vocab_fp": vocab_fp}


def sweep_id(spec: SweepSpec) -> str:
    """A sweep's id: its spec less where and how it runs."""
    return fingerprint("sweep", spec.model_dump(exclude={"execution"}))


def fit_params(store: str, cell_ids: list[str], **fit_options: object) -> dict:
    """`fit_options`: the fields of a FitSpec."""
    return {"store": store, "cell_ids": cell_ids, **fit_options}


def report_params(store: str, sweep_name: str, cell_ids: list[str], fits_fp: str) -> dict:
    return {"store": store, "sweep_name": sweep_name, "cell_ids": cell_ids, "fits_fp": fits_fp}


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
