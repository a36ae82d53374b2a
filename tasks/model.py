"""Model shapes, parameter and FLOP accounting, and the Llama-style decoder (a transformers config)."""

from __future__ import annotations

import functools
import importlib
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM

HEAD_DIM_SMALL = 16  # d_model below 256
HEAD_DIM_LARGE = 64
TARGET_ASPECT = 32.0  # d_model / n_layers; Kaplan et al. find loss flat over 20-200
SIZE_TOLERANCE = math.log(1.15)
MAX_D_MODEL, MAX_LAYERS = 8192, 96  # the largest shape that shape_for_params picks from
CEILING_MATMUL_SIZE = 512  # reaches the BLAS peak on one core: 110 GFLOP/s here, 112 at 1024
GPU_CEILING_MATMUL_SIZE = 8192  # large enough to saturate a data-centre GPU's tensor cores
CEILING_REPEATS = 20  # the best of many: on a shared machine some runs lose the core


@dataclass(frozen=True)
class ModelShape:
    d_model: int
    n_layers: int
    n_heads: int = 0  # 0: derived from d_model
    d_ff: int = 0  # 0: the Llama rule, 8/3 d_model rounded up to a multiple of 16

    def __post_init__(self) -> None:
        if self.d_model < 8 or self.n_layers < 1:
            raise ValueError("a model shape needs d_model >= 8 and n_layers >= 1")
        if self.n_heads < 0 or self.d_ff < 0:
            raise ValueError("n_heads and d_ff must be positive (or 0 to derive them)")
        if self.d_model % self.heads:
            raise ValueError(f"n_heads {self.heads} does not divide d_model {self.d_model}; pick a divisor")

    @property
    def heads(self) -> int:
        if self.n_heads:
            return self.n_heads
        head_dim = HEAD_DIM_SMALL if self.d_model < 256 else HEAD_DIM_LARGE
        return max(1, self.d_model // head_dim)

    @property
    def ff(self) -> int:
        return self.d_ff or 16 * math.ceil(8 * self.d_model / 3 / 16)

    def params_nonembedding(self) -> int:
        d = self.d_model
        per_layer = 4 * d * d + 3 * d * self.ff + 2 * d  # attention, SwiGLU MLP, two RMSNorms
        return self.n_layers * per_layer + d  # plus the final norm

    def params_total(self, vocab_size: int) -> int:
        return self.params_nonembedding() + vocab_size * self.d_model  # embeddings tied to the LM head


@functools.lru_cache(maxsize=256)
def shape_for_params(target: int) -> ModelShape:
    """The shape nearest the target aspect among those within 15% of `target` non-embedding
    parameters, or the closest in size when none is that close."""
    candidates = []
    for d_model in range(16, MAX_D_MODEL + 1, 16):
        if d_model >= 256 and d_model % HEAD_DIM_LARGE:
            continue
        for n_layers in range(1, MAX_LAYERS + 1):
            shape = ModelShape(d_model, n_layers)
            size_miss = abs(math.log(shape.params_nonembedding() / target))
            aspect_miss = abs(math.log(d_model / n_layers / TARGET_ASPECT))
            candidates.append((size_miss, aspect_miss, shape))
    close = [c for c in candidates if c[0] < SIZE_TOLERANCE]
    if close:
        return min(close, key=lambda c: (c[1], c[0]))[2]
    return min(candidates, key=lambda c: (c[0], c[1]))[2]


def training_flops_per_token(shape: ModelShape, vocab_size: int, context: int) -> dict[str, float]:
    """Training FLOPs per token: 6N (Kaplan's C), and with attention scores and the unembedding."""
    six_n = 6.0 * shape.params_nonembedding()
    attention = 6.0 * shape.n_layers * context * shape.d_model
    unembedding = 6.0 * shape.d_model * vocab_size
    return {"6nd": six_n, "with_attention": six_n + attention + unembedding}


def build_model(shape: ModelShape, vocab_size: int, context: int, seed: int) -> LlamaForCausalLM:
    import torch  # heavy imports, kept out of the spec's import path
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.d_model,
        intermediate_size=shape.ff,
        num_hidden_layers=shape.n_layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=context,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=0,
        pad_token_id=0,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


# What a worker process imports to build, train, evaluate, sample and save a cell's model: torch,
# transformers' Llama and Auto classes, the training and artifact code (not Prefect: a cell's task runs
# in the flow's process), and pyarrow's dataset module, which reading the token stream imports (0.2 s
# alone, 0.4 s in a sweep's worker)
TRAINING_MODULES = (
    "transformers.models.llama.modeling_llama",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto",
    "tasks.train",
    "tasks.artifacts",
    "pyarrow.dataset",
)


def preload_training() -> None:
    """Import TRAINING_MODULES, for a worker process started ahead of its first cell."""
    for module in TRAINING_MODULES:
        importlib.import_module(module)


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(non-embedding, total) parameters of a built model; tied weights are counted once."""
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    return total - embedding, total


@functools.cache
def matmul_flops_per_second(dtype: str, device: str = "cpu") -> float:
    """This process's matmul ceiling in `dtype` ("float32" or "bfloat16") on `device` ("cpu", or "cuda"
    for the current GPU): the best of a few timed square matmuls, measured once per process (on the CPU
    with the thread count set at the time)."""
    import torch

    size = CEILING_MATMUL_SIZE if device == "cpu" else GPU_CEILING_MATMUL_SIZE
    a = torch.randn(size, size, device=device).to(getattr(torch, dtype))
    torch.mm(a, a)  # first call pays one-off kernel selection
    sync = getattr(torch, device).synchronize if device != "cpu" else (lambda: None)  # torch.cuda, torch.mps
    best_seconds = math.inf
    for _ in range(CEILING_REPEATS):
        sync()
        started = time.perf_counter()
        torch.mm(a, a)
        sync()
        best_seconds = min(best_seconds, time.perf_counter() - started)
    return 2 * size**3 / best_seconds


def model_flops_utilization(
    tokens_per_second: float, flops_per_token: float, dtype: str, device: str = "cpu"
) -> float:
    """Achieved training FLOP/s as a share of the measured matmul ceiling in `dtype` on `device`."""
    return tokens_per_second * flops_per_token / matmul_flops_per_second(dtype, device)
