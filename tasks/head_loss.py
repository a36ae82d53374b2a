"""The tied head's loss a chunk of tokens at a time: with its gradient for training, per token for
scoring. The full logits (tokens x vocab floats) never exist."""

from __future__ import annotations

import torch

HEAD_CHUNK_LOGITS = 2**19  # logits per chunk of the head's loss: 2 MB in fp32, so they stay in cache
# On a GPU each chunk costs kernel launches rather than cache misses: 256 MB chunks keep the matmuls large
GPU_HEAD_CHUNK_LOGITS = 2**26


def head_chunk_logits(device: torch.device) -> int:
    """Logits per chunk of the head's loss on `device`."""
    return HEAD_CHUNK_LOGITS if device.type == "cpu" else GPU_HEAD_CHUNK_LOGITS


class TiedHeadLoss(torch.autograd.Function):
    """Mean cross-entropy of the logits `hidden @ weight.T` against `targets`, a chunk of tokens at a time.

    The full logits (tokens x vocab floats: 67 MB for 32 x 128 tokens at vocab 4096) never exist. Each
    chunk's gradient is taken in the forward pass while its logits are still in cache; this replaces
    the passes of log-softmax, of the zero-filled one-hot and the page faults of fresh 67 MB buffers,
    which took more than half of a 25k-parameter model's step. For training only: its forward already
    pays for the backward.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight)
        loss_sum = hidden.new_zeros(())
        rows = max(1, head_chunk_logits(hidden.device) // weight.shape[0])
        for start in range(0, len(hidden), rows):
            chunk, target = hidden[start : start + rows], targets[start : start + rows]
            logits = chunk @ weight.T
            target_logits = logits.gather(1, target[:, None])
            peak = logits.amax(dim=1, keepdim=True)
            exp = logits.sub_(peak).exp_()
            total = exp.sum(dim=1, keepdim=True)
            loss_sum += (total.log() + peak - target_logits).sum()
            # d loss / d logits = exp / total - one_hot(target); 1/total scales the narrow operand
            inverse = total.reciprocal_()
            grad_chunk = torch.mm(exp, weight, out=grad_hidden[start : start + rows])
            grad_chunk.mul_(inverse).sub_(weight[target])
            grad_weight.addmm_(exp.T, chunk * inverse)
            grad_weight.index_add_(0, target, chunk, alpha=-1.0)
        ctx.save_for_backward(grad_hidden.div_(len(hidden)), grad_weight.div_(len(hidden)))
        return loss_sum / len(hidden)

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss, grad_weight * grad_loss, None


@torch.no_grad()
def next_token_nats(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Loss in nats of each next token of a (batch, context + 1) block: (batch, context)."""
    hidden = model.model(input_ids=batch[:, :-1]).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = batch[:, 1:].reshape(-1)
    weight = model.lm_head.weight
    rows = max(1, head_chunk_logits(weight.device) // weight.shape[0])
    nats = []
    for start in range(0, len(hidden), rows):
        logits = hidden[start : start + rows] @ weight.T
        target_logits = logits.gather(1, targets[start : start + rows, None]).squeeze(1)
        nats.append(logits.logsumexp(dim=1) - target_logits)
    return torch.cat(nats).view(len(batch), -1)
