"""The `vllm` rollout backend, for real on CPU with vLLM's CPU build (`make test-vllm`, where an import failure
is an error); skipped in a venv without vLLM.

One engine serves the whole module: every test uses the same policy object and context length, so
`rollout_vllm.engine_for` builds it once (~30 s) and reuses it. The policy is the random-init toy model
after a few SFT steps on `<answer>n</answer>`, so completions end with EOS within `max_len` or run out of
it: both finish reasons occur.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from backends import import_backend

import_backend("vllm")

from eureka_kit.config import RunConfig  # noqa: E402
from eureka_kit.data import toyworld  # noqa: E402
from eureka_kit.data.prompts import prompt_text  # noqa: E402
from eureka_kit.engine import rollout, rollout_vllm  # noqa: E402
from eureka_kit.engine.base_policy import SFTConfig, sft  # noqa: E402
from eureka_kit.engine.logprobs import batched_logprobs, completion_logprobs  # noqa: E402
from eureka_kit.engine.loop import train  # noqa: E402
from eureka_kit.engine.runs import open_run  # noqa: E402
from eureka_kit.models import build_toy_model  # noqa: E402

pytestmark = pytest.mark.vllm

SMALL = dict(rollout_backend="vllm", rollout_batch_size=4, group_size=4, train_batch_size=16, micro_batch_size=16,
             max_len=6, lr=1e-2)
# Engine (vLLM's fp32 CPU kernels) vs learner (transformers) log-probs: measured max |diff| ~1e-6 per token.
LOGP_ATOL = 1e-4


@pytest.fixture(scope="module")
def problems():
    return toyworld.load("train", "math", seed=0, n_per_level=4)


@pytest.fixture(scope="module")
def policy(problems):
    model, tok = build_toy_model(seed=0)
    short = [dict(prompt=prompt_text(tok, p, "none"), completion=f"<answer>{p['answer']}</answer>") for p in problems]
    sft(model, tok, short, SFTConfig(steps=40, batch_size=16, warmup=5), progress=False)
    yield model, tok
    rollout_vllm.shutdown()


def engine_logprobs(ro: rollout.Rollouts) -> torch.Tensor:
    """The engine's log-probs (temperature 1) of `ro`'s fixed completions, scored as prompt log-probs. (B, T)"""
    from vllm import SamplingParams

    prompts, starts = [], []
    for p, pm, c, cm in zip(ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask, strict=True):
        prompt = p[pm.bool()].tolist()
        prompts.append({"prompt_token_ids": prompt + c[cm.bool()].tolist()})
        starts.append(len(prompt))
    outs = rollout_vllm._engine.llm.generate(prompts, SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False),
                                             use_tqdm=False)
    logp = torch.zeros(ro.completion_ids.shape)
    for i, (out, start) in enumerate(zip(outs, starts, strict=True)):
        for t in range(int(ro.completion_mask[i].sum())):
            logp[i, t] = out.prompt_logprobs[start + t][int(ro.completion_ids[i, t])].logprob
    return logp


def masked_max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return float(((a - b).abs() * mask).max())


def test_rollouts_have_the_record_shapes_and_decode_their_ids(policy, problems):
    model, tok = policy
    cfg = RunConfig(**SMALL)
    ro = rollout.generate(model, tok, problems[:4], cfg, torch.Generator().manual_seed(0))

    B, K = 16, 4
    assert ro.prompt_ids.shape == ro.prompt_mask.shape and ro.prompt_ids.shape[0] == B
    assert ro.completion_ids.shape == ro.completion_mask.shape == ro.behavior_logp.shape
    assert ro.completion_ids.shape[0] == B and ro.completion_ids.shape[1] <= cfg.max_len
    assert ro.problem_index.tolist() == [i // K for i in range(B)]
    # The prompts are our own encoding, K times each, left-padded.
    ids, attn, _ = rollout.encode_prompts(tok, problems[:4], cfg.prompt_template, False, cfg.max_prompt_len)
    assert torch.equal(ro.prompt_ids, ids.repeat_interleave(K, dim=0)) and torch.equal(ro.prompt_mask, attn.repeat_interleave(K, dim=0))
    assert set(ro.finish_reasons) == {"stop", "length"}, ro.finish_reasons
    for i in range(B):
        n = int(ro.completion_mask[i].sum())
        row = ro.completion_ids[i, :n]
        assert ro.completion_mask[i, :n].all() and not ro.completion_mask[i, n:].any()
        if ro.finish_reasons[i] == "stop":  # EOS ends the completion and is part of it
            assert row[-1] == tok.eos_token_id and (row[:-1] != tok.eos_token_id).all()
        else:
            assert n == cfg.max_len and (row != tok.eos_token_id).all()
        assert ro.texts[i] == tok.decode(row[row != tok.eos_token_id].tolist(), skip_special_tokens=False)
        assert (ro.behavior_logp[i, :n] < 0).all() and (ro.behavior_logp[i, n:] == 0).all()
    assert len(set(ro.texts)) > 1, "every sample identical: the per-request seeds collide"
    # Seeded from our generator: the same seed gives the same rollouts.
    again = rollout.generate(model, tok, problems[:4], cfg, torch.Generator().manual_seed(0))
    assert torch.equal(again.completion_ids, ro.completion_ids)


def test_a_rollout_larger_than_one_scheduler_step(policy, problems):
    """128 seeded requests whose prompts together exceed one engine step's token budget, as in a default-sized
    run (on CPU, vLLM's chunked prefill rewinds seeded generators, which CPU generators cannot do)."""
    model, tok = policy
    cfg = RunConfig(**{**SMALL, "rollout_batch_size": 16, "group_size": 8})
    wordy = [dict(p, question="Think step by step. " * 2 + p["question"]) for p in problems[:16]]
    ro = rollout.generate(model, tok, wordy, cfg, torch.Generator().manual_seed(4))
    budget = rollout_vllm._engine.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    assert int(ro.prompt_mask.sum()) > budget
    assert len(ro.texts) == 128
    assert masked_max_diff(ro.behavior_logp, batched_logprobs(model, ro, cfg), ro.completion_mask) < LOGP_ATOL


def test_greedy_completions_equal_transformers_greedy(policy, problems):
    model, tok = policy
    cfg = RunConfig(**SMALL)
    engine = rollout.generate(model, tok, problems[:8], cfg, greedy=True, num_samples=2)
    hf = rollout.generate_hf(model, tok, problems[:8], cfg, greedy=True, num_samples=2)
    assert engine.texts == hf.texts
    assert torch.equal(engine.completion_ids, hf.completion_ids) and engine.finish_reasons == hf.finish_reasons
    # Greedy behavior_logp are temperature-1 log-probs in both backends.
    assert masked_max_diff(engine.behavior_logp, hf.behavior_logp, hf.completion_mask) < LOGP_ATOL


def test_weights_pushed_after_an_optimizer_step_reach_the_engine(policy, problems):
    """The key test: after an AdamW step on the learner and `sync_weights`, the engine's log-probs of a fixed
    completion equal the learner's new ones (and no longer the old ones)."""
    model, tok = policy
    cfg = RunConfig(**SMALL)
    # Prompts longer than one KV block (128 tokens on CPU), so that vLLM's prefix cache holds some of them.
    long = [dict(p, question="Think step by step. " * 7 + p["question"]) for p in problems[4:8]]
    ro = rollout.generate(model, tok, long, cfg, torch.Generator().manual_seed(1))
    assert ro.prompt_mask.sum(dim=1).min() > 128
    mask = ro.completion_mask.float()
    old = batched_logprobs(model, ro, cfg)
    assert masked_max_diff(engine_logprobs(ro), old, mask) < LOGP_ATOL
    assert masked_max_diff(ro.behavior_logp, old, mask) < LOGP_ATOL  # the sampler's own log-probs agree too

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss = -(completion_logprobs(model, ro, torch.arange(len(ro.texts)), cfg) * mask).sum() / mask.sum()
    loss.backward()
    optimizer.step()
    new = batched_logprobs(model, ro, cfg)
    assert masked_max_diff(new, old, mask) > 0.05, "the step barely moved the policy: the test would prove nothing"
    assert masked_max_diff(engine_logprobs(ro), old, mask) < LOGP_ATOL  # not pushed yet: the engine is behind

    rollout_vllm.sync_weights(model)
    assert masked_max_diff(engine_logprobs(ro), new, mask) < LOGP_ATOL
    # Fresh samples for prompts the engine has seen: no KV computed with the old weights may be reused.
    fresh = rollout.generate(model, tok, long, cfg, torch.Generator().manual_seed(2))
    assert masked_max_diff(fresh.behavior_logp, batched_logprobs(model, fresh, cfg), fresh.completion_mask) < LOGP_ATOL


def test_train_two_steps_with_the_vllm_backend(policy, problems, tmp_path, monkeypatch):
    """train() pushes the weights after its optimizer steps: step 1's rollouts come from the updated policy."""
    from eureka_kit.data import rewards

    def parity(completions, golds, **_):  # mixed rewards within groups, so every step moves the weights
        return [dict(accuracy=float(len(c) % 2), format=0.0, total=float(len(c) % 2), timeout=0.0) for c in completions]

    monkeypatch.setattr(rewards, "score_batch", parity)
    model, tok = policy
    cfg = RunConfig.from_preset("grpo", run_dir=str(tmp_path / "run"), num_steps=2, **SMALL)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    run = train(cfg, policy=model, processor=tok, problems=problems, progress=False)

    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    metrics = open_run(tmp_path / "run").metrics()
    assert len(metrics) == 2 and len(run.history) == 2
    for step in run.history:
        assert step["mismatch/abs_mean"] < LOGP_ATOL, step["mismatch/abs_mean"]
        assert torch.isfinite(torch.tensor(step["reward/mean"]))
    ro = rollout.generate(model, tok, problems[:4], RunConfig(**SMALL), torch.Generator().manual_seed(3))
    assert masked_max_diff(engine_logprobs(ro), batched_logprobs(model, ro, cfg), ro.completion_mask) < LOGP_ATOL


def test_another_policy_gets_its_own_engine_and_the_build_leaves_global_rngs_alone(policy, problems):
    """vLLM reseeds the global RNGs when it starts; the learner's streams must not notice. (Runs last: it
    replaces the module's engine.)"""
    model, tok = policy
    cfg = RunConfig(**SMALL)
    first = rollout_vllm.engine_for(model, tok, cfg)
    other, _ = build_toy_model(seed=1)
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    torch_state, py_state, np_state = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    ro = rollout.generate(other, tok, problems[:4], cfg, torch.Generator().manual_seed(0))
    assert rollout_vllm._engine is not first and rollout_vllm._engine.policy() is other
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == py_state
    assert (np.random.get_state()[1] == np_state).all()
    assert masked_max_diff(ro.behavior_logp, batched_logprobs(other, ro, cfg), ro.completion_mask) < LOGP_ATOL
