"""Training throughput: the project's step against the fastest hand-written step of the same model.

    python bench/bench_train.py [--sizes 25k,100k,400k,1m,default] [--windows 5] [--steps 3]
                                [--device cpu|cuda] [--bf16] [--compile] [--threads 1]
    python bench/bench_train.py --device cuda --bf16 --compile --sizes 20m,100m,300m

For each size, in one process, trains three ways with the same shapes and batches:
`project` (the step `train_cell` runs: the transformers Llama body, the chunked tied-head loss, fused
AdamW, clipping), and two hand-written references of the same decoder (fused QKV, RMSNorm, RoPE,
SwiGLU, SDPA causal attention, tied embeddings, the same AdamW and clipping): `ref_chunked` with the
project's chunked head loss and `ref_fused` through full logits and F.cross_entropy (which
torch.compile fuses). `--compile` compiles every contender's model. Windows of `--steps` steps alternate
between them; each prints the median over `--windows` windows of tokens/s and MFU (training FLOPs with
attention and head, over the matmul peak measured in this process on the same device), and `ratio`:
project over the faster reference.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tasks.cell import CellPlan
from tasks.device import Placement, resolve_device
from tasks.head_loss import TiedHeadLoss
from tasks.model import (
    ModelShape,
    build_model,
    matmul_flops_per_second,
    model_flops_utilization,
    shape_for_params,
    training_flops_per_token,
)
from tasks.train import make_learner, make_optimizer


@dataclass(frozen=True)
class Setting:
    shape: ModelShape
    vocab: int
    context: int
    batch: int


CPU_SIZES = {
    "25k": Setting(ModelShape(32, 2), 4096, 128, 32),
    "100k": Setting(ModelShape(64, 2), 4096, 128, 32),
    "400k": Setting(ModelShape(128, 2), 4096, 128, 32),
    "1m": Setting(ModelShape(144, 4), 4096, 128, 32),
    "default": Setting(ModelShape(192, 2), 1024, 128, 8),  # the default preset's largest cell
}
GPU_SIZES = {  # the gpu preset's vocabulary and context, a micro-batch of 16 sequences
    name: Setting(shape_for_params(params), 32768, 1024, 16)
    for name, params in (("20m", 20 * 10**6), ("100m", 100 * 10**6), ("300m", 300 * 10**6))
}
SIZES = CPU_SIZES | GPU_SIZES


class Block(nn.Module):
    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        d, self.heads = shape.d_model, shape.heads
        self.attention_norm = nn.RMSNorm(d, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.mlp_norm = nn.RMSNorm(d, eps=1e-6)
        self.gate_up = nn.Linear(d, 2 * shape.ff, bias=False)
        self.down = nn.Linear(shape.ff, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, length, d = x.shape
        qkv = self.qkv(self.attention_norm(x)).view(batch, length, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(rotate(q, cos, sin), rotate(k, cos, sin), v, is_causal=True)
        x = x + self.out(attended.transpose(1, 2).reshape(batch, length, d))
        gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE in the rotate-half layout that transformers' Llama uses."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class Reference(nn.Module):
    """The same decoder as `build_model` makes, written as plainly as PyTorch allows; `forward` gives
    the final hidden states, which the tied head turns into a loss."""

    def __init__(self, setting: Setting) -> None:
        super().__init__()
        shape = setting.shape
        self.embedding = nn.Embedding(setting.vocab, shape.d_model)
        self.blocks = nn.ModuleList(Block(shape) for _ in range(shape.n_layers))
        self.norm = nn.RMSNorm(shape.d_model, eps=1e-6)
        head_dim = shape.d_model // shape.heads
        inverse_frequency = 10000.0 ** -(torch.arange(0, head_dim, 2).float() / head_dim)
        angles = torch.outer(torch.arange(setting.context).float(), inverse_frequency).repeat(1, 2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)
        for parameter in self.parameters():
            if parameter.dim() == 2:
                nn.init.normal_(parameter, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embedding(tokens)
        for block in self.blocks:
            x = block(x, self.cos, self.sin)
        return self.norm(x)


def bench_plan(setting: Setting, compile_model: bool, bf16: bool, device: str) -> CellPlan:
    return CellPlan(
        shape=setting.shape,
        params_target=setting.shape.params_nonembedding(),
        vocab_size=setting.vocab,
        context=setting.context,
        tokens_target=10**12,
        batch_size=setting.batch,
        seed=0,
        lr=1e-3,
        val_tokens=setting.context,
        sample_prompt="",
        sample_tokens=0,
        precision="bf16" if bf16 else "fp32",
        compile=compile_model,
        device=device,
    )


def reference_step(
    setting: Setting, plan: CellPlan, place: Placement, fused_loss: bool
) -> Callable[[torch.Tensor], float]:
    """A hand-written step: the reference body, its loss through the project's chunked head or full
    logits and F.cross_entropy (`fused_loss`, one kernel once compiled), the project's optimizer."""
    torch.manual_seed(0)
    model = Reference(setting).to(place.device)
    optimizer = make_optimizer(model, plan)
    params = list(model.parameters())
    weight = model.embedding.weight

    def loss_of(ids: torch.Tensor) -> torch.Tensor:
        with place.autocast(plan.dtype):
            hidden = model(ids[:, :-1])
            if fused_loss:
                logits = F.linear(hidden, weight)
                return F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        return TiedHeadLoss.apply(hidden.flatten(0, 1).float(), weight, ids[:, 1:].flatten())

    loss_fn = torch.compile(loss_of) if plan.compile else loss_of

    def step(batch: torch.Tensor) -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(place.batch(batch))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, plan.grad_clip)
        optimizer.step()
        return loss.item()

    return step


def contenders(
    setting: Setting, plan: CellPlan, place: Placement
) -> dict[str, Callable[[torch.Tensor], float]]:
    model = build_model(plan.shape, plan.vocab_size, plan.context, plan.seed).to(place.device)
    return {
        "project": make_learner(model, plan, place).step,
        "ref_chunked": reference_step(setting, plan, place, fused_loss=False),
        "ref_fused": reference_step(setting, plan, place, fused_loss=True),
    }


def measure(steps: dict[str, Callable], setting: Setting, windows: int, steps_per_window: int) -> dict:
    """Median tokens/s of each contender over windows that alternate between them."""
    shape = (setting.batch, setting.context + 1)
    batches = [torch.randint(0, setting.vocab, shape) for _ in range(steps_per_window)]
    for step in steps.values():  # warm-up: first calls allocate, select kernels, compile
        for batch in batches[:2]:
            step(batch)
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(windows):
        for name, step in steps.items():
            started = time.perf_counter()
            for batch in batches:
                step(batch)  # returns the loss as a number: the device has finished the step
            seconds[name].append(time.perf_counter() - started)
    tokens = steps_per_window * setting.batch * setting.context
    return {name: tokens / statistics.median(s) for name, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default=",".join(CPU_SIZES), help=f"comma-separated, of {', '.join(SIZES)}"
    )
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per timed window")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps", "auto"])
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for every contender")
    parser.add_argument("--compile", action="store_true", help="torch.compile every contender's model")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (a worker runs one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    place = Placement(resolve_device(args.device))
    if place.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    kind, dtype = place.device.type, "bfloat16" if args.bf16 else "float32"
    fp32, bf16 = (matmul_flops_per_second(d, kind) / 1e9 for d in ("float32", "bfloat16"))
    print(f"device {place.name}, {args.threads} thread(s); matmul peak {fp32:.0f} GFLOP/s fp32, ", end="")
    print(f"{bf16:.0f} GFLOP/s bf16; MFU below is against {dtype}; median of {args.windows} windows")
    names = ("project", "ref_chunked", "ref_fused")
    print(f"{'size':>7} {'shape':>9} {'N':>10} {'vocab':>6} {'ctx':>5} {'batch':>5} ", end="")
    print("".join(f"{name:>18}" for name in names) + "  ratio")
    for size in args.sizes.split(","):
        setting = SIZES[size]
        plan = bench_plan(setting, args.compile, args.bf16, args.device)
        flops = training_flops_per_token(setting.shape, setting.vocab, setting.context)["with_attention"]
        speed = measure(contenders(setting, plan, place), setting, args.windows, args.steps)
        cells = "".join(
            f" {speed[name]:9.0f} t/s {model_flops_utilization(speed[name], flops, dtype, kind):4.0%}"
            for name in names
        )
        shape = f"d{setting.shape.d_model} L{setting.shape.n_layers}"
        ratio = speed["project"] / max(speed["ref_chunked"], speed["ref_fused"])
        print(
            f"{size:>7} {shape:>9} {setting.shape.params_nonembedding():10d} {setting.vocab:6d} "
            f"{setting.context:5d} {setting.batch:5d}{cells}  {ratio:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
