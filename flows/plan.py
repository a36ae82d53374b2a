"""From a SweepSpec to the list of grid cells it asks for."""

from __future__ import annotations

from dataclasses import asdict

from flows.spec import SweepSpec
from tasks.cell import CellPlan, batch_size_for, lr_for_size
from tasks.corpus import source_version
from tasks.errors import InputError
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
    return sorted(plans, key=training_cost, reverse=True)


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


def cell_params(spec: SweepSpec, store: str, tokens_fp: str, vocab_fp: str, plan: CellPlan) -> dict:
    return {
        "store": store,
        "tokens_fp": tokens_fp,
        "vocab_fp": vocab_fp,
        "plan": asdict(plan),
        "threads": spec.execution.threads_per_worker,
        "checkpoint_seconds": spec.execution.checkpoint_seconds,
    }
