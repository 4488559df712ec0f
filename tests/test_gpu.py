"""CUDA checks (run by benchmarks/gpu_check.sh on a GPU machine; skipped cleanly without CUDA).

* chunked log-probs (from logits and fused from hidden states) equal the naive full-vocab path on CUDA,
  values and gradients, in fp32 and bf16; the bf16 weight gradient accumulates in fp32 inside cuBLAS;
* `losses.policy_loss` on CUDA tensors equals the CPU result (loss, gradient, logged stats);
* `train()` runs 2 RL steps on CUDA (random-init toy model, bf16 autocast, gradient checkpointing) and
  leaves finite metrics and changed parameters.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

CUDA = torch.device("cuda")
B, T, V, H = 4, 300, 5000, 64  # 1200 rows; chunk 128 does not divide it
CHUNK, TEMP = 128, 0.7
# fp32: only summation order differs. bf16: logits are rounded to bf16 (~0.4% relative) in both paths,
# possibly by different GEMM tilings in the fused path, so compare at bf16 resolution.
TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4, grad_rel=1e-4),
       torch.bfloat16: dict(atol=5e-2, rtol=2e-2, grad_rel=3e-2)}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def _inputs(dtype, seed=0):
    g = torch.Generator(device=CUDA).manual_seed(seed)
    logits = (torch.randn(B, T, V, generator=g, device=CUDA) * 3).to(dtype)
    hidden = torch.randn(B, T, H, generator=g, device=CUDA).to(dtype)
    weight = (torch.randn(V, H, generator=g, device=CUDA) * 3 / H**0.5).to(dtype)
    ids = torch.randint(0, V, (B, T), generator=g, device=CUDA)
    upstream = torch.randn(B, T, generator=g, device=CUDA)
    return logits, hidden, weight, ids, upstream


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_chunked_logprobs_from_logits_match_naive_on_cuda(dtype):
    from eureka_kit.algos.ops import naive_token_logprobs, token_logprobs_from_logits

    logits, _, _, ids, up = _inputs(dtype)
    tol = TOL[dtype]
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    lp_chunk = token_logprobs_from_logits(a, ids, chunk_size=CHUNK, temperature=TEMP)
    lp_naive = naive_token_logprobs(b, ids, temperature=TEMP)
    assert lp_chunk.device.type == "cuda" and lp_chunk.dtype == torch.float32
    torch.testing.assert_close(lp_chunk, lp_naive, atol=tol["atol"], rtol=tol["rtol"])
    (lp_chunk * up).sum().backward()
    (lp_naive * up).sum().backward()
    assert a.grad.dtype == dtype
    assert _rel(a.grad, b.grad) < tol["grad_rel"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_logprobs_from_hidden_match_naive_on_cuda(dtype):
    from eureka_kit.algos.ops import naive_token_logprobs, token_logprobs_from_hidden

    _, hidden, weight, ids, up = _inputs(dtype, seed=1)
    tol = TOL[dtype]
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    lp_fused, ent_fused = token_logprobs_from_hidden(h1, w1, ids, chunk_size=CHUNK, temperature=TEMP,
                                                     return_entropy=True)
    logits = h2 @ w2.t()
    lp_naive = naive_token_logprobs(logits, ids, temperature=TEMP)
    logq = torch.log_softmax(logits.float() / TEMP, dim=-1)
    ent_naive = -(logq.exp() * logq).sum(-1)
    torch.testing.assert_close(lp_fused, lp_naive, atol=tol["atol"], rtol=tol["rtol"])
    torch.testing.assert_close(ent_fused, ent_naive, atol=tol["atol"], rtol=tol["rtol"])
    ((lp_fused * up).sum() + ent_fused.sum()).backward()
    ((lp_naive * up).sum() + ent_naive.sum()).backward()
    assert h1.grad.dtype == dtype and w1.grad.dtype == dtype
    assert _rel(h1.grad, h2.grad) < tol["grad_rel"]
    assert _rel(w1.grad, w2.grad) < tol["grad_rel"]


def test_weight_grad_accumulates_in_fp32_on_cuda():
    # bf16 dz^T h added into an fp32 buffer by cuBLAS itself (addmm with out_dtype, out aliasing the input):
    # equals the fp64 product of the same bf16 values to fp32 accumulation error, and a second call adds.
    from eureka_kit.algos.ops import _accumulate_weight_grad

    g = torch.Generator(device=CUDA).manual_seed(3)
    dz = torch.randn(512, V, generator=g, device=CUDA).bfloat16()
    h = torch.randn(512, H, generator=g, device=CUDA).bfloat16()
    exact = dz.double().t() @ h.double()
    acc = torch.zeros(V, H, device=CUDA)
    _accumulate_weight_grad(acc, dz, h)
    assert acc.dtype == torch.float32 and _rel(acc, exact) < 1e-5
    _accumulate_weight_grad(acc, dz, h)
    assert _rel(acc, 2 * exact) < 1e-5


def test_fused_logprobs_bf16_at_temperature_one_match_fp64_on_cuda():
    # T = 1 and no entropy: the path the learner takes (softmax straight from bf16 logits, dz written in bf16).
    from eureka_kit.algos.ops import naive_token_logprobs, token_logprobs_from_hidden

    _, hidden, weight, ids, up = _inputs(torch.bfloat16, seed=2)
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    h2, w2 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    lp = token_logprobs_from_hidden(h1, w1, ids, chunk_size=CHUNK)
    ref = naive_token_logprobs(h2 @ w2.t(), ids)
    torch.testing.assert_close(lp.double(), ref, atol=5e-2, rtol=2e-2)  # logits rounded to bf16 on our side
    (lp * up).sum().backward()
    (ref * up.double()).sum().backward()
    assert _rel(h1.grad, h2.grad) < 3e-2 and _rel(w1.grad, w2.grad) < 3e-2


@pytest.mark.parametrize("preset", ["cpgd", "grpo", "cispo", "dr_grpo"])
def test_policy_loss_on_cuda_equals_cpu(preset):
    from eureka_kit.algos import losses

    g = torch.Generator().manual_seed(0)
    Bp, Tp = 8, 16
    logp = -torch.rand(Bp, Tp, generator=g) * 3
    old = logp + 0.3 * torch.randn(Bp, Tp, generator=g)
    adv = torch.randn(Bp, generator=g)
    mask = (torch.rand(Bp, Tp, generator=g) > 0.2).float()
    mask[:, 0] = 1.0
    overrides = dict(group_size=4, max_len=Tp)

    def run(dev):
        x = logp.clone().to(dev).requires_grad_()
        loss, stats = losses.policy_loss(x, old.to(dev), adv.to(dev), mask.to(dev), preset=preset, **overrides)
        loss.backward()
        return loss.detach().cpu(), x.grad.cpu(), stats

    loss_cpu, grad_cpu, stats_cpu = run(torch.device("cpu"))
    loss_gpu, grad_gpu, stats_gpu = run(CUDA)
    torch.testing.assert_close(loss_gpu, loss_cpu, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad_gpu, grad_cpu, atol=1e-7, rtol=1e-5)
    assert set(stats_gpu) == set(stats_cpu)
    for key, value in stats_cpu.items():
        other = stats_gpu[key]
        assert (math.isnan(value) and math.isnan(other)) or math.isclose(other, value, rel_tol=1e-4, abs_tol=1e-6), key


def test_train_two_steps_on_cuda(tmp_path, parity_reward):
    from eureka_kit.config import RunConfig
    from eureka_kit.data import toyworld
    from eureka_kit.data.prompts import prompt_text
    from eureka_kit.engine.loop import train
    from eureka_kit.models import build_toy_model

    model, tok = build_toy_model(seed=0)
    # One prompt width for every step: if generate_hf uses a static KV cache on CUDA (compiled decode),
    # a new prompt width would mean a new max_cache_len and another compile inside this test.
    problems = toyworld.load("train", "math", seed=0, n_per_level=4)
    widths = [len(tok(prompt_text(tok, p, "none"), add_special_tokens=False)["input_ids"]) for p in problems]
    modal = Counter(widths).most_common(1)[0][0]
    problems = [p for p, w in zip(problems, widths, strict=True) if w == modal]
    assert len(problems) >= 4
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = RunConfig.from_preset("cpgd", run_dir=str(tmp_path / "run"), rollout_batch_size=4, group_size=4,
                                train_batch_size=8, micro_batch_size=8, max_len=16, num_steps=2, lr=1e-3,
                                bf16=True, gradient_checkpointing=True, update_epochs=2)
    run = train(cfg, policy=model, processor=tok, problems=problems, progress=False)

    assert next(run.policy.parameters()).device.type == "cuda"
    assert len(run.history) == 2
    for h in run.history:
        for key in ("loss/policy", "loss/total", "optim/grad_norm", "policy/entropy", "reward/mean",
                    "rollout/len_mean", "perf/step_s"):
            assert key in h, key
            assert math.isfinite(float(h[key])), (key, h[key])
    changed = [n for n, p in run.policy.named_parameters() if not torch.equal(p.detach().cpu(), before[n])]
    assert changed, "no parameter changed after two RL steps on CUDA"
    assert all(torch.isfinite(p).all() for p in run.policy.parameters())
