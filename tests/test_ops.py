"""eureka_kit.algos.ops: masked stats vs numpy, chunked log-probs vs the naive path (values, grads, gradcheck)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from eureka_kit.algos.ops import (
    masked_mean,
    masked_quantiles,
    masked_sum,
    masked_var,
    naive_token_logprobs,
    token_logprobs,
    token_logprobs_from_hidden,
    token_logprobs_from_logits,
)

B, T, V, H = 3, 5, 17, 8  # B*T = 15 rows


def _inputs(dtype=torch.float32, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, T, V, generator=g, dtype=torch.float64) * scale).to(dtype)
    hidden = torch.randn(B, T, H, generator=g, dtype=torch.float64).to(dtype)
    weight = (torch.randn(V, H, generator=g, dtype=torch.float64) * scale / H**0.5).to(dtype)
    bias = torch.randn(V, generator=g, dtype=torch.float64).to(dtype)
    ids = torch.randint(0, V, (B, T), generator=g)
    upstream = torch.randn(B, T, generator=g, dtype=torch.float64)  # random dL/dlogp
    return logits, hidden, weight, bias, ids, upstream


def _naive_entropy(logits, temperature=1.0):
    logq = torch.log_softmax(logits.double() / temperature, -1)
    return -(logq.exp() * logq).sum(-1)


# ---------------------------------------------------------------------------------------------
# masked stats on hand examples

X = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, -2.0, 0.5, 7.0]])
M = torch.tensor([[1, 1, 0, 1], [0, 1, 1, 0]])


def test_masked_sum_and_mean_match_numpy():
    x, m = X.numpy(), M.numpy().astype(bool)
    assert masked_sum(X, M).item() == pytest.approx(x[m].sum())
    assert masked_mean(X, M).item() == pytest.approx(x[m].mean())
    np.testing.assert_allclose(masked_mean(X, M, dim=1).numpy(), [7 / 3, -0.75])
    np.testing.assert_allclose(masked_sum(X, M, dim=0).numpy(), [1.0, 0.0, 0.5, 4.0])
    np.testing.assert_allclose(masked_mean(X, M, dim=0).numpy(), [1.0, 0.0, 0.5, 4.0])


def test_masked_mean_empty_mask_is_zero_not_nan():
    empty = torch.zeros_like(M)
    assert masked_mean(X, empty).item() == 0.0
    assert masked_var(X, empty).item() == 0.0
    row_empty = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]])
    torch.testing.assert_close(masked_mean(X, row_empty, dim=1), torch.tensor([1.0, 0.0]))
    assert torch.equal(masked_quantiles(X, empty, [0.5]), torch.zeros(1))


def test_masked_stats_ignore_nan_padding_and_bool_masks():
    x = X.clone()
    x[0, 2] = float("nan")  # padding may hold garbage; it must not leak through
    assert masked_mean(x, M.bool()).item() == pytest.approx(X.numpy()[M.numpy().astype(bool)].mean())
    assert torch.isfinite(masked_var(x, M)).all()


@pytest.mark.parametrize("unbiased", [False, True])
def test_masked_var_matches_numpy(unbiased):
    ddof = int(unbiased)
    x, m = X.numpy(), M.numpy().astype(bool)
    assert masked_var(X, M, unbiased=unbiased).item() == pytest.approx(x[m].var(ddof=ddof), rel=1e-6)
    per_row = [x[i][m[i]].var(ddof=ddof) for i in range(2)]
    np.testing.assert_allclose(masked_var(X, M, unbiased=unbiased, dim=1).numpy(), per_row, rtol=1e-6)


def test_masked_quantiles_match_numpy():
    qs = [0.0, 0.1, 0.5, 0.9, 1.0]
    x, m = X.numpy(), M.numpy().astype(bool)
    np.testing.assert_allclose(masked_quantiles(X, M, qs).numpy(), np.quantile(x[m], qs), rtol=1e-6)


def test_masked_mean_gradient_is_zero_on_masked_tokens():
    x = X.clone().requires_grad_()
    masked_mean(x, M).backward()
    assert torch.all(x.grad[M == 0] == 0) and torch.all(x.grad[M == 1] > 0)


# ---------------------------------------------------------------------------------------------
# chunked log-probs from logits: values and gradients equal the naive path in fp32

CHUNKS = [1, 4, 7, 15, 1024]  # 4 and 7 do not divide B*T = 15; 1024 > B*T


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_size", CHUNKS)
def test_logits_path_matches_naive_fp32(chunk_size, temperature):
    logits, _, _, _, ids, up = _inputs()
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    ours = token_logprobs_from_logits(a, ids, chunk_size=chunk_size, temperature=temperature)
    ref = naive_token_logprobs(b, ids, temperature=temperature)
    assert ours.dtype == torch.float32 and ours.shape == (B, T)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    (ours * up.float()).sum().backward()
    (ref * up.float()).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=0)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 1.3])
@pytest.mark.parametrize("chunk_size", CHUNKS)
def test_hidden_path_matches_naive_fp32(chunk_size, temperature, with_bias):
    _, hidden, weight, bias, ids, up = _inputs()
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    refs = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    ours = token_logprobs_from_hidden(leaves[0], leaves[1], ids, chunk_size=chunk_size,
                                      bias=leaves[2] if with_bias else None, temperature=temperature)
    logits = torch.nn.functional.linear(refs[0], refs[1], refs[2] if with_bias else None)
    ref = naive_token_logprobs(logits, ids, temperature=temperature)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    (ours * up.float()).sum().backward()
    (ref * up.float()).sum().backward()
    for ours_t, ref_t in zip(leaves[: 2 + with_bias], refs[: 2 + with_bias], strict=True):
        torch.testing.assert_close(ours_t.grad, ref_t.grad, atol=1e-5, rtol=0)
    if not with_bias:
        assert leaves[2].grad is None


def test_short_name_and_non_contiguous_logits():
    logits, _, _, _, ids, _ = _inputs()
    shifted = logits[:, :-1]  # the usual next-token slice is not contiguous
    assert not shifted.is_contiguous()
    torch.testing.assert_close(token_logprobs(shifted, ids[:, 1:], chunk_size=4),
                               naive_token_logprobs(shifted, ids[:, 1:]), atol=1e-5, rtol=0)


def test_frozen_weight_gets_no_grad_and_hidden_still_does():
    _, hidden, weight, _, ids, _ = _inputs()
    h = hidden.clone().requires_grad_()
    token_logprobs_from_hidden(h, weight, ids, chunk_size=4).sum().backward()
    assert h.grad is not None and weight.grad is None


def test_bad_shapes_raise():
    logits, _, _, _, ids, _ = _inputs()
    with pytest.raises(ValueError):
        token_logprobs_from_logits(logits, ids[:, :-1])
    with pytest.raises(ValueError):
        token_logprobs_from_logits(logits, ids, temperature=0.0)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 40), vocab=st.integers(2, 30), chunk=st.integers(1, 50), seed=st.integers(0, 10**6))
def test_chunking_never_changes_the_answer(rows, vocab, chunk, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, rows, vocab, generator=g) * 4
    ids = torch.randint(0, vocab, (1, rows), generator=g)
    torch.testing.assert_close(token_logprobs_from_logits(logits, ids, chunk_size=chunk),
                               naive_token_logprobs(logits, ids), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# bf16 inputs


def test_bf16_logits_close_to_naive():
    logits, _, _, _, ids, up = _inputs(torch.bfloat16)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    ours = token_logprobs_from_logits(a, ids, chunk_size=4, temperature=0.9)
    ref = naive_token_logprobs(b, ids, temperature=0.9)
    assert ours.dtype == torch.float32
    # Same fp32 math on the same bf16 values: only summation order differs.
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    (ours * up.float()).sum().backward()
    (ref * up.float()).sum().backward()
    assert a.grad.dtype == torch.bfloat16
    torch.testing.assert_close(a.grad.float(), b.grad.float(), atol=1e-2, rtol=1e-2)


def test_bf16_hidden_close_to_fp32_reference():
    _, hidden, weight, bias, ids, up = _inputs(torch.float64)
    leaves = [t.to(torch.bfloat16).requires_grad_() for t in (hidden, weight, bias)]
    refs = [t.to(torch.bfloat16).double().requires_grad_() for t in (hidden, weight, bias)]
    ours = token_logprobs_from_hidden(leaves[0], leaves[1], ids, chunk_size=4, bias=leaves[2])
    ref = naive_token_logprobs(torch.nn.functional.linear(*refs), ids)
    assert ours.dtype == torch.float32 and leaves[1].dtype == torch.bfloat16
    # bf16 logits carry ~3 significant digits; |logits| here is O(5), so 0.05 in logp is the budget.
    torch.testing.assert_close(ours.double(), ref, atol=5e-2, rtol=0)
    (ours * up.float()).sum().backward()
    (ref * up).sum().backward()
    for o, r in zip(leaves, refs, strict=True):
        assert o.grad.dtype == torch.bfloat16
        torch.testing.assert_close(o.grad.double(), r.grad, atol=5e-2, rtol=5e-2)


# ---------------------------------------------------------------------------------------------
# entropy


def test_entropy_matches_hand_formula_on_a_known_case():
    # softmax([0, log 3]) = [1/4, 3/4] -> H = -(1/4 log 1/4 + 3/4 log 3/4)
    logits = torch.tensor([[[0.0, float(np.log(3.0))]]])
    _, ent = token_logprobs_from_logits(logits, torch.tensor([[1]]), return_entropy=True)
    expected = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))
    assert ent.item() == pytest.approx(expected, abs=1e-6)
    # uniform distribution over V tokens -> log V
    _, ent_u = token_logprobs_from_logits(torch.zeros(1, 2, 7), torch.zeros(1, 2, dtype=torch.long),
                                          return_entropy=True)
    torch.testing.assert_close(ent_u, torch.full((1, 2), float(np.log(7))))


@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("chunk_size", [4, 1024])
def test_entropy_and_its_gradient_match_naive(chunk_size, temperature):
    logits, hidden, weight, bias, ids, up = _inputs()
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    logp, ent = token_logprobs_from_logits(a, ids, chunk_size=chunk_size, temperature=temperature,
                                           return_entropy=True)
    ref_ent = _naive_entropy(b, temperature).float()
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=0)
    # a loss that uses both outputs, like an entropy bonus
    (logp * up.float() - 0.1 * ent).sum().backward()
    (naive_token_logprobs(b, ids, temperature) * up.float() - 0.1 * ref_ent).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=0)
    _, ent_h = token_logprobs_from_hidden(hidden, weight, ids, chunk_size=chunk_size, bias=bias,
                                          temperature=temperature, return_entropy=True)
    torch.testing.assert_close(ent_h, _naive_entropy(torch.nn.functional.linear(hidden, weight, bias),
                                                     temperature).float(), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# gradcheck in float64, both Functions, both outputs


def test_gradcheck_logits_function():
    logits, _, _, _, ids, _ = _inputs(torch.float64)
    x = logits[:2, :3, :6].clone().requires_grad_()
    i = ids[:2, :3] % 6

    def fn(t):
        return token_logprobs_from_logits(t, i, chunk_size=4, temperature=0.8, return_entropy=True)

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradcheck(lambda t: fn(t)[0], (x,))  # entropy output unused -> None grad


def test_gradcheck_hidden_function():
    _, hidden, weight, bias, ids, _ = _inputs(torch.float64)
    h = hidden[:2, :3, :4].clone().requires_grad_()
    w = weight[:6, :4].clone().requires_grad_()
    b = bias[:6].clone().requires_grad_()
    i = ids[:2, :3] % 6

    def fn(h_, w_, b_):
        return token_logprobs_from_hidden(h_, w_, i, chunk_size=4, bias=b_, temperature=1.5,
                                          return_entropy=True)

    assert torch.autograd.gradcheck(fn, (h, w, b))


# ---------------------------------------------------------------------------------------------
# memory: no (N, V) fp32 tensor is ever created (CPU proxy for the GPU peak-memory claim)


class _LargestFp32(TorchDispatchMode):
    """Records the largest fp32 tensor any op outputs while active (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                self.max_numel = max(self.max_numel, t.numel())
        return out


def test_no_full_fp32_logits_tensor_is_materialised():
    n, vocab, hid, chunk = 64, 1000, 16, 8
    hidden = torch.randn(1, n, hid, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(vocab, hid, dtype=torch.bfloat16, requires_grad=True)
    logits = torch.randn(1, n, vocab, dtype=torch.bfloat16, requires_grad=True)
    ids = torch.randint(0, vocab, (1, n))
    for run in (lambda: token_logprobs_from_hidden(hidden, weight, ids, chunk_size=chunk),
                lambda: token_logprobs_from_logits(logits, ids, chunk_size=chunk)):
        with _LargestFp32() as mode:
            run().sum().backward()
        # fp32 buffers: chunk x V per chunk, and the fp32 (V, H) weight-grad accumulator.
        assert mode.max_numel <= max(chunk * vocab, vocab * hid) < n * vocab
    with _LargestFp32() as mode:
        naive_token_logprobs(logits, ids).sum().backward()
    assert mode.max_numel == n * vocab  # the check does see the naive path's full tensor


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_matches_naive():
    torch.manual_seed(0)
    n, vocab, hid = 300, 5000, 64
    hidden = torch.randn(2, n, hid, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weight = (torch.randn(vocab, hid, device="cuda") / hid**0.5).bfloat16().requires_grad_()
    ids = torch.randint(0, vocab, (2, n), device="cuda")
    ours = token_logprobs_from_hidden(hidden, weight, ids, chunk_size=128, temperature=0.8)
    ours.sum().backward()
    gh, gw = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    ref = naive_token_logprobs(hidden @ weight.t(), ids, temperature=0.8)
    ref.sum().backward()
    torch.testing.assert_close(ours, ref, atol=2e-2, rtol=0)
    torch.testing.assert_close(gh.float(), hidden.grad.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(gw.float(), weight.grad.float(), atol=5e-2, rtol=5e-2)
