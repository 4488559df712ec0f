"""Pure tensor ops: masked statistics and memory-lean per-token log-probs.

A policy-gradient step needs log p(token) for the sampled tokens only, yet the textbook
`log_softmax(logits.float()).gather(...)` materialises [B, T, V] in fp32 at least twice (the
fp32 copy and the log-softmax output kept for backward), and twice more in backward. With
V = 151,936 and 64k tokens that is ~40 GB per copy (a +79.7 GB forward peak).
The two autograd Functions here walk the B*T rows in chunks instead, keep only per-row
log-sum-exp and entropy (N floats), and recompute each chunk's softmax in backward:

- `token_logprobs_from_logits`: logits exist (any float dtype); only `chunk_size x V` fp32 is live.
- `token_logprobs_from_hidden`: fuses the output projection too, so [B, T, V] never exists in
  any dtype (the Liger-kernel / "cut cross-entropy" idea, written in plain PyTorch).

Softmax math runs in fp32 (fp64 for fp64 inputs, so `gradcheck` works); matmuls run in the input
dtype. Logits are divided by `temperature` before the softmax so that learner log-probs match the
rollout engine's log-probs sampled at that temperature. Nothing here does I/O or `.item()`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

# ---------------------------------------------------------------------------------------------
# Masked statistics. `mask` is bool or {0, 1}; masked-out entries are *selected away* with
# torch.where rather than multiplied by 0, so NaN/inf in padding cannot leak into the result.


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of `x` where `mask` is set.

    Args:
        x: float tensor, any shape, e.g. (B, T).
        mask: bool or {0, 1} tensor broadcastable to `x`.
        dim: reduce over this dim; None reduces over everything.

    Returns:
        Scalar tensor if `dim` is None, else `x` with `dim` removed.
    """
    kept = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over the set entries of `mask`; an empty selection gives 0, not NaN.

    Args:
        x: float tensor, any shape, e.g. (B, T) per-token losses.
        mask: bool or {0, 1} tensor broadcastable to `x`.
        dim: reduce over this dim; None reduces over everything.

    Returns:
        Scalar tensor if `dim` is None, else `x` with `dim` removed.

    Example:
        masked_mean(torch.tensor([[1., 2.], [3., 4.]]), torch.tensor([[1, 0], [0, 0]]), dim=1)
        # -> tensor([1., 0.])   (second row is empty -> 0)
    """
    count = masked_sum(torch.ones_like(x), mask, dim)
    # clamp only matters when count == 0, where the numerator is 0 too -> 0 instead of 0/0.
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = False, dim: int | None = None) -> Tensor:
    """Variance of `x` over the set entries of `mask` (two-pass, so no E[x^2]-E[x]^2 cancellation).

    Args:
        x: float tensor, any shape.
        mask: bool or {0, 1} tensor broadcastable to `x`.
        unbiased: divide by n - 1 (numpy ddof=1) instead of n.
        dim: reduce over this dim; None reduces over everything.

    Returns:
        Scalar tensor if `dim` is None, else `x` with `dim` removed. A selection too small to
        define the variance (n = 0, or n = 1 with `unbiased`) gives 0, like `masked_mean`.
    """
    mean = masked_mean(x, mask, dim)
    centred = x - (mean if dim is None else mean.unsqueeze(dim))
    count = masked_sum(torch.ones_like(x), mask, dim)
    denom = (count - 1) if unbiased else count
    return masked_sum(centred.square(), mask, dim) / denom.clamp(min=1)


def masked_quantiles(x: Tensor, mask: Tensor, qs: Sequence[float] | Tensor) -> Tensor:
    """Quantiles of the selected entries of `x`, linear interpolation (numpy's default).

    Args:
        x: float tensor, any shape (all selected entries are pooled).
        mask: bool or {0, 1} tensor broadcastable to `x`.
        qs: K quantile levels in [0, 1].

    Returns:
        (K,) tensor in `x`'s dtype; all zeros if nothing is selected (like `masked_mean`).
    """
    q = torch.as_tensor(qs, dtype=x.dtype, device=x.device)
    values = x[mask.bool().expand_as(x)]  # (n,), data-dependent size
    if values.numel() == 0:
        return torch.zeros_like(q)
    return torch.quantile(values, q)


# ---------------------------------------------------------------------------------------------
# Chunked selective log-softmax. Each chunk is (c, V) logits `z` in the caller's dtype; the softmax runs in the
# compute dtype through torch's fused (log_)softmax kernels, which read `z` once and write one (c, V) result, so a
# chunk costs one pass in forward and two in backward instead of one per elementwise op (memory-bound at large V).


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # fp32 for bf16/fp16/fp32; fp64 stays fp64 so gradcheck sees full precision.
    return torch.promote_types(dtype, torch.float32)


def _scaled(z: Tensor, temperature: float, cdt: torch.dtype) -> Tensor:
    # z / T in the compute dtype, never in place (z may be the caller's logits); T = 1 skips the copy, since the
    # softmax kernels upcast their input themselves.
    return z if temperature == 1.0 else z.to(cdt) / temperature


def _chunk_forward(z: Tensor, ids: Tensor, temperature: float, want_entropy: bool) -> tuple[Tensor, Tensor | None]:
    """(c, V) logits, (c,) ids -> logp (c,) and entropy (c,) or None, of softmax(z / T) in the compute dtype."""
    cdt = _compute_dtype(z.dtype)
    logq = torch.log_softmax(_scaled(z, temperature, cdt), dim=-1, dtype=cdt)
    logp = logq.gather(-1, ids[:, None]).squeeze(-1)
    # -sum p log p directly: the shorter `lse - sum p x` cancels badly when H << lse.
    ent = -logq.exp().mul_(logq).sum(-1) if want_entropy else None
    return logp, ent


def _chunk_grad(z: Tensor, ids: Tensor, temperature: float, g_logp: Tensor, g_ent: Tensor | None,
                ent: Tensor | None, out: Tensor) -> Tensor:
    """Gradient w.r.t. the chunk's *unscaled* logits z, written into `out` (c, V) (any float dtype) and returned;
    the softmax is recomputed.

    d logp_i / d x_v = onehot_v - p_v  and  d H / d x_v = -p_v (log p_v + H), then d x / d z = 1/T.
    """
    cdt = _compute_dtype(z.dtype)
    x = _scaled(z, temperature, cdt)
    inv_t = 1.0 / temperature
    if g_ent is None:
        # (p - onehot) * (-g / T): softmax, a (c,) scatter, and one multiply that writes `out` directly.
        p = torch.softmax(x, dim=-1, dtype=cdt)
        p.scatter_add_(1, ids[:, None], torch.full_like(g_logp[:, None], -1.0))
        return torch.mul(p, g_logp[:, None].mul(-inv_t), out=out)
    logq = torch.log_softmax(x, dim=-1, dtype=cdt)
    p = logq.exp()
    dz = logq.add_(ent[:, None]).mul_(p).mul_(-g_ent[:, None])
    dz.sub_(p.mul_(g_logp[:, None]))
    dz.scatter_add_(1, ids[:, None], g_logp[:, None])
    return out.copy_(dz.mul_(inv_t))


def _grads_in(g_logp: Tensor | None, g_ent: Tensor | None, n: int, like: Tensor) -> tuple[Tensor, Tensor | None]:
    # With materialised grads off, an unused output arrives as None: logp's becomes zeros (N floats,
    # cheap); entropy's stays None so its extra (c, V) work is skipped entirely.
    g_logp = torch.zeros(n, dtype=like.dtype, device=like.device) if g_logp is None else g_logp
    g_logp = g_logp.reshape(-1).to(like.dtype)
    return g_logp, (None if g_ent is None else g_ent.reshape(-1).to(like.dtype))


def _chunked_forward(flat_ids: Tensor, chunk_size: int, logits_of, temperature: float, want_entropy: bool,
                     cdt: torch.dtype) -> tuple[Tensor, Tensor]:
    """logp and entropy (N,) in `cdt` over the N = len(flat_ids) rows; `logits_of(a, b)` gives rows a:b's logits."""
    n = flat_ids.shape[0]
    logp = torch.empty(n, dtype=cdt, device=flat_ids.device)
    ent = torch.zeros(n, dtype=cdt, device=flat_ids.device)  # stays 0 unless asked for
    for s in range(0, n, chunk_size):
        lp, en = _chunk_forward(logits_of(s, s + chunk_size), flat_ids[s:s + chunk_size], temperature, want_entropy)
        logp[s:s + chunk_size] = lp
        if en is not None:
            ent[s:s + chunk_size] = en
    return logp, ent


def _accumulate_weight_grad(grad_w: Tensor, dz: Tensor, h: Tensor) -> None:
    """grad_w (fp32) += dz^T @ h. For bf16/fp16 on CUDA the matmul accumulates straight into the fp32 buffer
    (cuBLAS with an fp32 C, no (V, H) temporaries per chunk); elsewhere through one temporary."""
    if grad_w.is_cuda and dz.dtype in (torch.bfloat16, torch.float16) and grad_w.dtype == torch.float32:
        torch.addmm(grad_w, dz.t(), h, out_dtype=torch.float32, out=grad_w)
    elif dz.dtype == grad_w.dtype:
        grad_w.addmm_(dz.t(), h)
    else:
        grad_w += (dz.t() @ h).to(grad_w.dtype)


class _LogitsLogp(torch.autograd.Function):
    """logits (..., V) -> (logp, entropy) over rows, chunked; see token_logprobs_from_logits."""

    @staticmethod
    def forward(ctx, logits, ids, chunk_size, temperature, want_entropy):
        ctx.set_materialize_grads(False)
        V = logits.shape[-1]
        flat, flat_ids = logits.reshape(-1, V), ids.reshape(-1)  # a view when logits is contiguous
        logp, ent = _chunked_forward(flat_ids, chunk_size, lambda a, b: flat[a:b], temperature, want_entropy,
                                     _compute_dtype(logits.dtype))
        ctx.save_for_backward(logits, ids, ent)
        ctx.chunk_size, ctx.temperature = chunk_size, temperature
        return logp.view(ids.shape), ent.view(ids.shape)

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        logits, ids, ent = ctx.saved_tensors
        if not ctx.needs_input_grad[0] or (g_logp is None and g_ent is None):
            return None, None, None, None, None
        V, c = logits.shape[-1], ctx.chunk_size
        flat, flat_ids = logits.reshape(-1, V), ids.reshape(-1)
        g_logp, g_ent = _grads_in(g_logp, g_ent, flat.shape[0], ent)
        grad = torch.empty_like(flat, memory_format=torch.contiguous_format)  # logits' dtype
        for s in range(0, flat.shape[0], c):
            _chunk_grad(flat[s:s + c], flat_ids[s:s + c], ctx.temperature, g_logp[s:s + c],
                        None if g_ent is None else g_ent[s:s + c], None if g_ent is None else ent[s:s + c],
                        out=grad[s:s + c])
        return grad.view(logits.shape), None, None, None, None


class _HiddenLogp(torch.autograd.Function):
    """hidden (..., H) @ weight (V, H)^T [+ bias] -> (logp, entropy), chunked; logits never stored."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, ids, chunk_size, temperature, want_entropy):
        ctx.set_materialize_grads(False)
        flat, flat_ids = hidden.reshape(-1, hidden.shape[-1]), ids.reshape(-1)

        def logits_of(a: int, b: int) -> Tensor:  # (c, V) in the input dtype, fresh
            return torch.nn.functional.linear(flat[a:b], weight, bias)

        logp, ent = _chunked_forward(flat_ids, chunk_size, logits_of, temperature, want_entropy,
                                     _compute_dtype(hidden.dtype))
        ctx.save_for_backward(hidden, weight, bias, ids, ent)
        ctx.chunk_size, ctx.temperature = chunk_size, temperature
        return logp.view(ids.shape), ent.view(ids.shape)

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        hidden, weight, bias, ids, ent = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if g_logp is None and g_ent is None:
            return (None,) * 7
        c, H = ctx.chunk_size, hidden.shape[-1]
        flat, flat_ids = hidden.reshape(-1, H), ids.reshape(-1)
        g_logp, g_ent = _grads_in(g_logp, g_ent, flat.shape[0], ent)
        # Weight/bias grads are sums over all chunks: accumulate in fp32 so bf16 rounding does not
        # compound across ~N/c additions; cast once at the end.
        acc = _compute_dtype(weight.dtype)
        grad_h = torch.empty_like(flat, memory_format=torch.contiguous_format) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if need_b else None
        for s in range(0, flat.shape[0], c):
            h = flat[s:s + c]
            z = torch.nn.functional.linear(h, weight, bias)  # recompute instead of storing (N, V)
            # dz in the input dtype: the matmuls below run in it, as in forward
            dz = _chunk_grad(z, flat_ids[s:s + c], ctx.temperature, g_logp[s:s + c],
                             None if g_ent is None else g_ent[s:s + c], None if g_ent is None else ent[s:s + c],
                             out=torch.empty(z.shape, dtype=hidden.dtype, device=z.device))
            del z
            if need_b:
                grad_b += dz.sum(0, dtype=acc)
            if need_h:
                grad_h[s:s + c] = dz @ weight
            if need_w:
                _accumulate_weight_grad(grad_w, dz, h)
        grad_h = None if grad_h is None else grad_h.view(hidden.shape)
        grad_w = None if grad_w is None else grad_w.to(weight.dtype)
        grad_b = None if grad_b is None else grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None, None


def _check(ids: Tensor, rows_shape: torch.Size, chunk_size: int, temperature: float) -> None:
    if ids.shape != rows_shape:
        raise ValueError(f"ids shape {tuple(ids.shape)} != leading shape {tuple(rows_shape)}")
    if chunk_size < 1 or temperature <= 0:
        raise ValueError(f"need chunk_size >= 1 and temperature > 0, got {chunk_size}, {temperature}")


def token_logprobs_from_logits(logits: Tensor, ids: Tensor, chunk_size: int = 1024,
                               temperature: float = 1.0, return_entropy: bool = False):
    """log softmax(logits / temperature)[ids], computed `chunk_size` rows at a time.

    Peak extra memory is O(chunk_size * V) fp32 in forward and backward (plus, in backward, the
    unavoidable gradient for `logits` in logits' own dtype). A non-contiguous `logits` (e.g.
    `logits[:, :-1]`) is copied once in its own dtype by the flatten: slice `ids`, not logits,
    where you can.

    Args:
        logits: (B, T, V) float tensor of any float dtype (bf16 from the model is fine).
        ids: (B, T) long tensor, the token whose log-prob is wanted at each position.
        chunk_size: rows of the flattened (B*T, V) processed at once; need not divide B*T.
        temperature: logits are divided by it before the softmax (use the rollout temperature).
        return_entropy: also return the per-token entropy of softmax(logits / temperature).

    Returns:
        logp: (B, T) fp32 (fp64 for fp64 logits), differentiable w.r.t. `logits`.
        entropy: (B, T), same dtype, also differentiable; only when `return_entropy`.

    Example:
        logp = token_logprobs_from_logits(model(inp).logits[:, :-1], inp[:, 1:], temperature=0.7)
    """
    _check(ids, logits.shape[:-1], chunk_size, temperature)
    logp, ent = _LogitsLogp.apply(logits, ids, chunk_size, float(temperature), return_entropy)
    return (logp, ent) if return_entropy else logp


def token_logprobs_from_hidden(hidden: Tensor, weight: Tensor, ids: Tensor, chunk_size: int = 1024,
                               bias: Tensor | None = None, temperature: float = 1.0,
                               return_entropy: bool = False):
    """log softmax((hidden @ weight.T + bias) / temperature)[ids] without ever forming the logits.

    Each chunk's logits are computed in the input dtype, reduced in fp32, dropped, and recomputed in
    backward (one extra output-projection matmul per step, in exchange for O(chunk_size * V) memory).

    Args:
        hidden: (B, T, H) final hidden states (after the last norm), any float dtype.
        weight: (V, H) output projection (`lm_head.weight`; tied embeddings work too).
        ids: (B, T) long tensor of target tokens.
        chunk_size: rows of the flattened (B*T, H) processed at once; need not divide B*T.
        bias: optional (V,) output bias.
        temperature: logits are divided by it before the softmax.
        return_entropy: also return the per-token entropy.

    Returns:
        logp: (B, T) fp32 (fp64 for fp64 inputs), differentiable w.r.t. hidden, weight and bias.
        entropy: (B, T), same dtype, also differentiable; only when `return_entropy`.
    """
    _check(ids, hidden.shape[:-1], chunk_size, temperature)
    logp, ent = _HiddenLogp.apply(hidden, weight, bias, ids, chunk_size, float(temperature), return_entropy)
    return (logp, ent) if return_entropy else logp


token_logprobs = token_logprobs_from_logits  # the short name the docs and tests use


def naive_token_logprobs(logits: Tensor, ids: Tensor, temperature: float = 1.0) -> Tensor:
    """Reference: full fp32 log_softmax then gather. Materialises (B, T, V) fp32; tests/benchmarks only.

    Args:
        logits: (B, T, V) float tensor.
        ids: (B, T) long tensor.
        temperature: logits are divided by it before the softmax.

    Returns:
        (B, T) fp32 (fp64 for fp64 logits) log-probs.
    """
    x = logits.to(_compute_dtype(logits.dtype)) / temperature
    return torch.log_softmax(x, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)


# ---------------------------------------------------------------------------------------------
# Sampling.


def sampling_logits(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """The logits a sampler draws the next token from: divided by `temperature`, then top-k and top-p
    (nucleus) filtered to -inf.

    Same order, tie rules and at-least-one-token guarantee as transformers' Temperature, TopK and TopP
    warpers, so `softmax` of the result is `generate(do_sample=True)`'s next-token distribution and its
    `log_softmax` at the drawn token is the rollout log-prob.

    Args:
        logits: (B, V) float next-token logits.
        temperature: > 0; 1 leaves the logits unchanged.
        top_k: keep the k largest logits (ties with the k-th are kept); 0 keeps all.
        top_p: keep the smallest set of largest-probability tokens whose mass reaches top_p; 1 keeps all.

    Returns:
        (B, V) tensor in `logits`' dtype, filtered entries -inf.

    Example:
        sampling_logits(torch.tensor([[2.0, 1.0, 0.0]]), top_k=2)  # -> [[2., 1., -inf]]
    """
    x = logits / temperature if temperature != 1.0 else logits
    if top_k:
        kth = torch.topk(x, min(top_k, x.shape[-1])).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        # Ascending sort: drop the low tail whose cumulative mass is <= 1 - top_p, never the largest token.
        sorted_x, order = torch.sort(x, dim=-1)
        drop_sorted = sorted_x.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p
        drop_sorted[..., -1] = False
        x = x.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return x
