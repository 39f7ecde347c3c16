"""Cross-entropy of a linear head that never holds the (tokens, vocab) logits at once.

The plain loss `F.cross_entropy(F.linear(x, W).float(), y)` keeps, per token, the logits, their
fp32 copy and log-probabilities and the fp32 gradient of both: at micro-batch 8, seq 2048 and a
32k vocab that is 2 GB per fp32 tensor, the largest activation of a small or mid-sized model.
`ChunkedLinearCrossEntropy` walks the tokens in chunks of `chunk_tokens`: per chunk it computes
the logits (matmul in the compute dtype, softmax in fp32), the summed loss and, right away, the
chunk's gradients with respect to x and W (softmax - one-hot, divided by the token count). Only a
(chunk, vocab) block is alive at a time; backward only scales the saved gradients by the incoming
gradient, so the head costs the same three matmuls as the plain loss (the Liger-Kernel / Apple
"Cut Your Losses" idea, here in plain PyTorch).

Dtypes follow the plain path: under autocast the matmuls run in the autocast dtype (as F.linear
would); logits, log-sum-exp and the loss are fp32; the gradient of W is accumulated in fp32 and
the gradient of x is returned in x's dtype. Pure PyTorch: no device or parallelism logic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # F.cross_entropy's default: targets with this value add no loss


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype F.linear would compute in here: autocast's if it is on, else x's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """mean cross-entropy of `x @ weight.T` against `targets`, `chunk_tokens` rows at a time."""

    @staticmethod
    def forward(ctx, x, weight, targets, chunk_tokens: int, dtype: torch.dtype):
        # x: (N, C), weight: (V, C), targets: (N,) int64
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        w = weight.to(dtype)  # (V, C), one cast for all chunks (a no-op in fp32)
        valid = targets != IGNORE_INDEX  # (N,)
        count = valid.sum().clamp(min=1).float()  # F.cross_entropy's mean divisor
        loss = torch.zeros((), dtype=torch.float32, device=x.device)
        grad_x = torch.empty_like(x) if need_x else None  # (N, C)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=x.device) if need_w else None
        for start in range(0, x.size(0), chunk_tokens):
            xc = x[start : start + chunk_tokens].to(dtype)  # (n, C)
            yc, vc = targets[start : start + chunk_tokens], valid[start : start + chunk_tokens]
            logits = (xc @ w.t()).float()  # (n, V) fp32
            target_logit = logits.gather(1, yc.clamp(min=0).unsqueeze(1)).squeeze(1)  # (n,)
            # log-sum-exp written out in place: torch.logsumexp would allocate another (n, V)
            top = logits.amax(dim=-1, keepdim=True)  # (n, 1)
            probs = logits.sub_(top).exp_()  # (n, V), unnormalised softmax
            total = probs.sum(dim=-1, keepdim=True)  # (n, 1)
            lse = (top + total.log()).squeeze(1)  # (n,)
            loss += ((lse - target_logit) * vc).sum()
            if not (need_x or need_w):
                del logits, probs
                continue
            # d loss / d logits = (softmax - one_hot(y)) / count on valid rows, built in place
            probs.mul_((vc.float() / count).unsqueeze(1) / total)
            probs.scatter_add_(1, yc.clamp(min=0).unsqueeze(1), -(vc.float() / count).unsqueeze(1))
            g = probs.to(dtype)  # (n, V) in the matmul dtype, as F.linear's backward has it
            if need_x:
                grad_x[start : start + chunk_tokens] = g @ w  # (n, C)
            if need_w and grad_w.dtype == g.dtype:
                grad_w.addmm_(g.t(), xc)  # (V, C), accumulated in place
            elif need_w:
                grad_w.add_(g.t() @ xc)  # bf16 product, accumulated in fp32
            del logits, probs, g  # free this chunk before the next one's matmul allocates
        ctx.save_for_backward(grad_x, grad_w)
        return loss / count

    @staticmethod
    def backward(ctx, grad_loss):
        grad_x, grad_w = ctx.saved_tensors
        # the gradients were computed for d(loss) = 1; scale in place (backward runs once)
        if grad_x is not None:
            grad_x = grad_x.mul_(grad_loss.to(grad_x.dtype))
        if grad_w is not None:
            grad_w = grad_w.mul_(grad_loss)
        return grad_x, grad_w, None, None, None


def linear_cross_entropy(
    x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_tokens: int
) -> torch.Tensor:
    """Mean cross-entropy of the logits `x @ weight.T` (x: (B, T, C), targets: (B, T)).

    `chunk_tokens` > 0 never materialises the (B*T, V) logits; 0 computes the plain loss.
    """
    if chunk_tokens <= 0:
        logits = F.linear(x, weight)  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(0, 1))
    return ChunkedLinearCrossEntropy.apply(
        x.flatten(0, 1), weight, targets.flatten(0, 1), chunk_tokens, _compute_dtype(x)
    )
