"""A trained cell's held-out numbers, and a sample of its text."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from tasks.head_loss import next_token_nats
from tasks.windows import windows

# Windows per forward pass; the losses are bitwise the same at 1 to 64 (a test holds it). 16: on both
# cores of an Intel Xeon (bench/README.md), 15-25% faster than 64 from d_model 80 up, where 64
# windows' activations outgrow a core's cache, within 5% of the fastest below; the default's shapes
# 16-19% faster in all.
EVAL_BATCH_WINDOWS = 16


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, val_stream: np.ndarray, token_bytes: np.ndarray, context: int, val_tokens: int
) -> dict:
    """Held-out loss over fixed windows (the same for every cell), with its standard error."""
    model.eval()
    device = model.lm_head.weight.device
    val_windows = windows(val_stream, context)[: max(1, val_tokens // context)]
    window_nats = []
    for start in range(0, len(val_windows), EVAL_BATCH_WINDOWS):
        batch = val_windows[start : start + EVAL_BATCH_WINDOWS]
        batch = torch.from_numpy(batch.astype(np.int64)).to(device)
        window_nats.append(next_token_nats(model, batch).sum(dim=1).double().cpu().numpy())
    nats_per_window = np.concatenate(window_nats)
    n_tokens = len(val_windows) * context
    loss = float(nats_per_window.sum() / n_tokens)
    stderr = (
        float(np.std(nats_per_window / context, ddof=1) / math.sqrt(len(nats_per_window)))
        if len(nats_per_window) > 1
        else float("nan")
    )
    target_bytes = int(token_bytes[val_windows[:, 1:]].sum())
    return {
        "val_loss_nats": loss,
        "val_loss_stderr": stderr,
        "val_perplexity": math.exp(loss),
        "val_bits_per_byte": float(nats_per_window.sum() / math.log(2) / max(target_bytes, 1)),
        "val_tokens": n_tokens,
    }


@torch.no_grad()
def generate_sample(model_dir: Path, prompt: str, max_new_tokens: int) -> str:
    """Greedy continuation of `prompt` by the saved model, loaded the way a user would load it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if max_new_tokens == 0:
        return ""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    inputs = tokenizer(prompt, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
    return tokenizer.decode(output[0], skip_special_tokens=True)
