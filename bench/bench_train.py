"""Training throughput: the project's step against a minimal hand-written reference of the same model.

    python bench/bench_train.py [--sizes 25k,100k,400k,1m] [--windows 5] [--steps 3] [--bf16] [--compile]

For each size, in one process and one thread, trains three ways with the same shapes and batches:
`project` (the step `train_cell` runs: the transformers Llama body, the chunked tied-head loss, fused
AdamW, clipping), `reference` (a nanoGPT-like model written here: fused QKV, RMSNorm, RoPE, SwiGLU,
SDPA causal attention, tied embeddings, full logits and F.cross_entropy, the same AdamW and clipping)
and `hf_logits` (the transformers model through its own logits and F.cross_entropy, which is what the
project did before). Windows of `--steps` steps alternate between them; each prints the median over
`--windows` windows of tokens/s and MFU (training FLOPs with attention and head, over the matmul peak
measured in this process), and the ratio project/reference.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tasks.cell import CellPlan
from tasks.model import (
    ModelShape,
    build_model,
    matmul_flops_per_second,
    model_flops_utilization,
    training_flops_per_token,
)
from tasks.train import make_learner, make_optimizer

VOCAB = 4096
CONTEXT = 128
BATCH = 32
SHAPES = {
    "25k": ModelShape(32, 2),
    "100k": ModelShape(64, 2),
    "400k": ModelShape(128, 2),
    "1m": ModelShape(144, 4),
}


class Block(nn.Module):
    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        d, self.heads = shape.d_model, shape.heads
        self.attention_norm = nn.RMSNorm(d, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.mlp_norm = nn.RMSNorm(d, eps=1e-6)
        self.gate = nn.Linear(d, shape.ff, bias=False)
        self.up = nn.Linear(d, shape.ff, bias=False)
        self.down = nn.Linear(shape.ff, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, length, d = x.shape
        qkv = self.qkv(self.attention_norm(x)).view(batch, length, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(rotate(q, cos, sin), rotate(k, cos, sin), v, is_causal=True)
        x = x + self.out(attended.transpose(1, 2).reshape(batch, length, d))
        h = self.mlp_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE in the rotate-half layout that transformers' Llama uses."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class Reference(nn.Module):
    """The same decoder as `build_model` makes, written as plainly as PyTorch allows."""

    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, shape.d_model)
        self.blocks = nn.ModuleList(Block(shape) for _ in range(shape.n_layers))
        self.norm = nn.RMSNorm(shape.d_model, eps=1e-6)
        head_dim = shape.d_model // shape.heads
        inverse_frequency = 10000.0 ** -(torch.arange(0, head_dim, 2).float() / head_dim)
        angles = torch.outer(torch.arange(CONTEXT).float(), inverse_frequency).repeat(1, 2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)
        for parameter in self.parameters():
            if parameter.dim() == 2:
                nn.init.normal_(parameter, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embedding(tokens)
        for block in self.blocks:
            x = block(x, self.cos, self.sin)
        return F.linear(self.norm(x), self.embedding.weight)


def bench_plan(shape: ModelShape, compile_model: bool) -> CellPlan:
    return CellPlan(
        shape=shape,
        params_target=shape.params_nonembedding(),
        vocab_size=VOCAB,
        context=CONTEXT,
        tokens_target=10**9,
        batch_size=BATCH,
        seed=0,
        lr=1e-3,
        val_tokens=CONTEXT,
        sample_prompt="",
        sample_tokens=0,
        compile=compile_model,
    )


def project_step(plan: CellPlan, bf16: bool) -> Callable[[torch.Tensor], float]:
    learner = make_learner(build_model(plan.shape, VOCAB, CONTEXT, plan.seed), plan)
    return dataclasses.replace(learner, precision="bfloat16" if bf16 else "float32").step


def logits_step(model: nn.Module, forward: Callable, plan: CellPlan, bf16: bool) -> Callable:
    """A step through full logits and F.cross_entropy, with the project's optimizer and clipping."""
    optimizer = make_optimizer(model, plan)
    params = list(model.parameters())

    def step(batch: torch.Tensor) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = forward(batch[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, VOCAB), batch[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, plan.grad_clip)
        optimizer.step()
        return loss.item()

    return step


def contenders(shape: ModelShape, bf16: bool, compile_model: bool) -> dict[str, Callable]:
    plan = bench_plan(shape, compile_model)
    torch.manual_seed(0)
    reference = Reference(shape)
    hf = build_model(shape, VOCAB, CONTEXT, seed=0)
    maybe_compiled = torch.compile if compile_model else (lambda module: module)
    hf_forward = maybe_compiled(hf)

    def hf_logits(ids: torch.Tensor) -> torch.Tensor:
        return hf_forward(input_ids=ids, use_cache=False).logits

    return {
        "project": project_step(plan, bf16),
        "reference": logits_step(reference, maybe_compiled(reference), plan, bf16),
        "hf_logits": logits_step(hf, hf_logits, plan, bf16),
    }


def measure(steps: dict[str, Callable], windows: int, steps_per_window: int) -> dict[str, float]:
    """Median tokens/s of each contender over windows that alternate between them."""
    batches = [torch.randint(0, VOCAB, (BATCH, CONTEXT + 1)) for _ in range(steps_per_window)]
    for step in steps.values():  # warm-up: first calls allocate, select kernels, compile
        for batch in batches[:2]:
            step(batch)
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(windows):
        for name, step in steps.items():
            started = time.perf_counter()
            for batch in batches:
                step(batch)
            seconds[name].append(time.perf_counter() - started)
    tokens = steps_per_window * BATCH * CONTEXT
    return {name: tokens / statistics.median(s) for name, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per timed window")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for every contender")
    parser.add_argument("--compile", action="store_true", help="torch.compile every contender's model")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dtype = "bfloat16" if args.bf16 else "float32"
    print(f"matmul peak, 1 thread: {matmul_flops_per_second('float32') / 1e9:.0f} GFLOP/s fp32, ", end="")
    print(f"{matmul_flops_per_second('bfloat16') / 1e9:.0f} GFLOP/s bf16; MFU below is against {dtype}")
    print(f"vocab {VOCAB}, context {CONTEXT}, batch {BATCH}; median of {args.windows} windows")
    print(f"{'size':>5} {'shape':>7} {'N':>8}  {'project':>16} {'reference':>16} {'hf_logits':>16}  ratio")
    for size in args.sizes.split(","):
        shape = SHAPES[size]
        flops = training_flops_per_token(shape, VOCAB, CONTEXT)["with_attention"]
        speed = measure(contenders(shape, args.bf16, args.compile), args.windows, args.steps)
        cells = "".join(
            f" {speed[name]:7.0f} t/s {model_flops_utilization(speed[name], flops, dtype):4.0%}"
            for name in ("project", "reference", "hf_logits")
        )
        name = f"d{shape.d_model} L{shape.n_layers}"
        ratio = speed["project"] / speed["reference"]
        print(f"{size:>5} {name:>7} {shape.params_nonembedding():8d} {cells}  {ratio:.2f}", flush=True)


if __name__ == "__main__":
    main()
