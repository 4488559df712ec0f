"""The fast paths of a CPU RL step against the plain ones they replace.

- the lean sampling loop (`rollout.sample_with_cache`) vs transformers `generate`: same tokens greedy and,
  under the same seed, sampled; its log-probs vs generate's scores and a teacher-forced forward;
- the shared-prompt prefill (P4) in both samplers, the shared-prompt learner forward (P5) and the on-policy
  step that takes old_logp from the learner forward (P1) vs the paths without them.
"""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from eureka_kit.algos import ops
from eureka_kit.config import RunConfig
from eureka_kit.data import toyworld
from eureka_kit.engine import loop as train_mod
from eureka_kit.engine import rollout
from eureka_kit.models import build_toy_model

K, NEW = 3, 24


@pytest.fixture(scope="module")
def problems():
    return toyworld.load("train", "math", seed=0, n_per_level=4)


@pytest.fixture(scope="module")
def prompts(problems):
    """5 prompts of different lengths (left padding is exercised) and their mask."""
    tok = build_toy_model(seed=0)[1]
    ids, attn, _ = rollout.encode_prompts(tok, problems[::4][:5], "none", False, 512)
    assert (attn == 0).any()
    return ids, attn


@pytest.fixture(scope="module")
def eos_prone_model():
    """The random-init toy model with EOS made likely (~3% per step, along the hidden states' common direction):
    sampled rows stop at different steps, so EOS handling, PAD after EOS and the early stop are exercised."""
    model, tok = build_toy_model(seed=0)
    with torch.no_grad():
        x = torch.randint(3, 100, (8, 30), generator=torch.Generator().manual_seed(0))
        common = model.model(input_ids=x).last_hidden_state.mean(dim=(0, 1))
        model.lm_head.weight[tok.eos_token_id] = 0.3 * common / common.norm()
    return model, tok


def _generate(model, tok, ids, attn, **kw):
    out = model.generate(input_ids=ids.repeat_interleave(K, 0), attention_mask=attn.repeat_interleave(K, 0),
                         max_new_tokens=NEW, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         output_scores=True, return_dict_in_generate=True, **kw)
    tokens = out.sequences[:, ids.shape[1]:]
    logp = torch.stack([torch.log_softmax(s, -1).gather(1, tokens[:, t:t + 1]).squeeze(1)
                        for t, s in enumerate(out.scores)], dim=1)
    return tokens, logp


def test_sampling_logits_match_transformers_warpers():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=g) * 3
    logits[0, :10] = 2.5  # ties at the top-k / top-p boundary
    for temperature, top_k, top_p in [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 5, 1.0), (1.0, 0, 0.8), (0.6, 12, 0.9)]:
        expected = logits
        if temperature != 1.0:
            expected = TemperatureLogitsWarper(temperature)(None, expected)
        if top_k:
            expected = TopKLogitsWarper(top_k)(None, expected)
        if top_p < 1.0:
            expected = TopPLogitsWarper(top_p)(None, expected)
        got = ops.sampling_logits(logits, temperature, top_k, top_p)
        assert torch.equal(got, expected), (temperature, top_k, top_p)
    assert torch.equal(ops.sampling_logits(torch.tensor([[2.0, 1.0, 0.0]]), top_k=2),
                       torch.tensor([[2.0, 1.0, float("-inf")]]))


def test_lean_loop_greedy_is_generate_greedy(eos_prone_model, prompts):
    model, tok = eos_prone_model
    ids, attn = prompts
    expected, expected_logp = _generate(model, tok, ids, attn, do_sample=False)
    tokens, logp = rollout.sample_with_cache(model, ids, attn, K, NEW, tok.eos_token_id, tok.pad_token_id,
                                             greedy=True)
    assert torch.equal(tokens, expected)
    assert tokens.shape[1] < NEW and (tokens == tok.eos_token_id).any(dim=1).all()  # every row stopped: early stop
    torch.testing.assert_close(logp, expected_logp, atol=1e-6, rtol=0)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_lean_loop_samples_what_generate_samples_under_the_same_seed(eos_prone_model, prompts, temperature, top_p):
    model, tok = eos_prone_model
    ids, attn = prompts
    torch.manual_seed(1234)
    expected, expected_logp = _generate(model, tok, ids, attn, do_sample=True, temperature=temperature,
                                        top_p=top_p, top_k=0)

    def lean(seed):
        return rollout.sample_with_cache(model, ids, attn, K, NEW, tok.eos_token_id, tok.pad_token_id,
                                         temperature=temperature, top_p=top_p,
                                         generator=torch.Generator().manual_seed(seed))

    tokens, logp = lean(1234)
    assert torch.equal(tokens, expected)
    assert torch.equal(tokens, lean(1234)[0]) and not torch.equal(tokens, lean(99)[0])
    finished = (tokens == tok.eos_token_id).any(dim=1)
    assert 0 < finished.sum() < len(tokens)
    valid = (tokens == tok.eos_token_id).cumsum(1) - (tokens == tok.eos_token_id).long() == 0
    assert (tokens[~valid] == tok.pad_token_id).all()  # PAD after EOS, as generate pads
    torch.testing.assert_close(logp[valid], expected_logp[valid], atol=1e-6, rtol=0)


def test_lean_loop_honours_min_new_tokens(eos_prone_model, prompts):
    model, tok = eos_prone_model
    ids, attn = prompts
    tokens, _ = rollout.sample_with_cache(model, ids, attn, K, NEW, tok.eos_token_id, tok.pad_token_id,
                                          min_new_tokens=10, generator=torch.Generator().manual_seed(0))
    assert not (tokens[:, :10] == tok.eos_token_id).any() and (tokens == tok.eos_token_id).any()


def test_generate_hf_picks_the_lean_loop_only_where_it_reproduces_generate(eos_prone_model):
    model, _ = eos_prone_model
    assert rollout.uses_lean_loop(model, multimodal=False)
    assert not rollout.uses_lean_loop(model, multimodal=True)
    model.generation_config.repetition_penalty = 1.1  # an option the lean loop does not implement
    try:
        assert not rollout.uses_lean_loop(model, multimodal=False)
    finally:
        model.generation_config.repetition_penalty = 1.0


@pytest.mark.parametrize("warp", [dict(temperature=0.8), dict(temperature=0.8, top_k=5, top_p=0.7)],
                         ids=["temperature", "top_k_top_p"])
def test_both_samplers_give_the_same_rollouts_and_logp_matches_the_learner(eos_prone_model, problems, monkeypatch,
                                                                          warp):
    """generate_hf through the lean loop and through transformers `generate` (with the shared-prompt
    prefill) draws identical tokens from one seed and records the same mu (generate's through
    `BehaviorLogpRecorder`); untruncated, mu equals a teacher-forced forward, truncated it is >= it."""
    model, tok = eos_prone_model
    cfg = RunConfig.from_preset("grpo", group_size=K, max_len=NEW, prompt_template="none", **warp)
    chunk = problems[::4][:5]
    lean = rollout.generate_hf(model, tok, chunk, cfg, torch.Generator().manual_seed(5))
    monkeypatch.setattr(rollout, "uses_lean_loop", lambda *a: False)
    via_generate = rollout.generate_hf(model, tok, chunk, cfg, torch.Generator().manual_seed(5))
    assert torch.equal(lean.completion_ids, via_generate.completion_ids) and lean.texts == via_generate.texts
    assert lean.finish_reasons == via_generate.finish_reasons and "stop" in lean.finish_reasons
    torch.testing.assert_close(lean.behavior_logp, via_generate.behavior_logp, atol=1e-6, rtol=0)
    with torch.no_grad():
        learner = train_mod.completion_logprobs(model, lean, torch.arange(len(lean.texts)), cfg)
    valid = lean.completion_mask.bool()
    if "top_k" in warp:  # renormalised over the kept tokens: mu >= pi_old, strictly somewhere
        assert (lean.behavior_logp[valid] >= learner[valid] - 1e-5).all()
        assert (lean.behavior_logp[valid] > learner[valid] + 1e-3).any()
    else:
        torch.testing.assert_close(lean.behavior_logp[valid], learner[valid], atol=1e-5, rtol=0)


def test_shared_prompt_learner_forward_matches_the_full_forward(problems, monkeypatch):
    """P5: log-probs, entropy and every parameter gradient equal the plain forward's."""
    model, tok = build_toy_model(seed=4)
    cfg = RunConfig.from_preset("grpo", group_size=4, max_len=16, prompt_template="none")
    ro = rollout.generate_hf(model, tok, problems[::5][:4], cfg, torch.Generator().manual_seed(0))
    rows = torch.arange(len(ro.texts))
    assert rollout.can_share_prompts(model, ro.prompt_ids, ro.completion_ids, 4, multimodal=False)
    assert not rollout.can_share_prompts(model, ro.prompt_ids[1:-3], ro.completion_ids[1:-3], 4, multimodal=False)

    def forward_backward():
        model.zero_grad()
        logp, ent = train_mod.completion_logprobs(model, ro, rows, cfg, with_entropy=True)
        mask = ro.completion_mask.float()
        ((logp * torch.linspace(-1, 1, len(rows))[:, None] + 0.1 * ent) * mask).sum().backward()
        return logp.detach(), ent.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    shared = forward_backward()
    monkeypatch.setattr(rollout, "can_share_prompts", lambda *a: False)
    plain = forward_backward()
    valid = ro.completion_mask.bool()
    torch.testing.assert_close(shared[0][valid], plain[0][valid], atol=1e-5, rtol=0)
    torch.testing.assert_close(shared[1][valid], plain[1][valid], atol=1e-5, rtol=0)
    for name, grad in plain[2].items():
        scale = grad.abs().max().clamp(min=1e-12)
        assert (shared[2][name] - grad).abs().max() <= 1e-4 * scale, name


@pytest.mark.parametrize("share", [True, False])
def test_learner_forward_attends_without_repeat_kv_and_matches_transformers_sdpa(problems, monkeypatch, share):
    """The learner's forward (shared-prompt completion pass, or the plain masked one) runs `cpu_attention_forward`:
    no repeat_kv copies, the same log-probs (bitwise) as transformers' own sdpa attention, and the same gradients to
    float rounding (the two attentions block their sums differently)."""
    import contextlib

    from transformers.integrations import sdpa_attention

    model, tok = build_toy_model(seed=4)
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # grouped heads: the copy to skip
    cfg = RunConfig.from_preset("grpo", group_size=4, max_len=16, prompt_template="none")
    ro = rollout.generate_hf(model, tok, problems[::5][:4], cfg, torch.Generator().manual_seed(0))
    rows = torch.arange(len(ro.texts))
    if not share:
        monkeypatch.setattr(rollout, "can_share_prompts", lambda *a: False)

    def forward_backward():
        model.zero_grad()
        logp = train_mod.completion_logprobs(model, ro, rows, cfg)
        (logp * ro.completion_mask).sum().backward()
        return logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    with monkeypatch.context() as patched:
        patched.setattr(sdpa_attention, "repeat_kv", lambda *a: pytest.fail("repeat_kv called"))
        ours = forward_backward()
    monkeypatch.setattr(rollout, "cpu_attention", lambda policy: contextlib.nullcontext())
    reference = forward_backward()  # the model's own sdpa attention
    assert torch.equal(ours[0], reference[0])
    for name, grad in reference[1].items():
        # fp32 rounding of differently blocked sums: a few ulps of the largest entry (a masking error is O(1))
        assert (ours[1][name] - grad).abs().max() <= 1e-5 * grad.abs().max().clamp(min=1e-12), name


def test_learner_under_gradient_checkpointing_keeps_the_models_attention(problems):
    """Checkpointing recomputes each layer during backward, after the learner's `cpu_attention` block has ended:
    the learner keeps the model's own attention then (the swapped one saved un-repeated keys and values, which the
    recompute's repeated ones did not match: CheckpointError), with the same log-probs and gradients as without
    checkpointing. Rollouts run in eval mode, where nothing is checkpointed, and keep the swap."""
    model, tok = build_toy_model(seed=4)
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # the case that failed
    cfg = RunConfig.from_preset("grpo", group_size=4, max_len=16, prompt_template="none")
    ro = rollout.generate_hf(model, tok, problems[::5][:4], cfg, torch.Generator().manual_seed(0))
    rows = torch.arange(len(ro.texts))

    def forward_backward():
        model.zero_grad()
        logp = train_mod.completion_logprobs(model, ro, rows, cfg)
        (logp * torch.linspace(-1, 1, len(rows))[:, None] * ro.completion_mask).sum().backward()
        return logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    model.train()
    plain = forward_backward()
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()  # 5.24 name
    assert rollout.checkpointing_active(model)
    with rollout.cpu_attention(model):
        assert model.config._attn_implementation == "sdpa"
    checkpointed = forward_backward()
    valid = ro.completion_mask.bool()
    torch.testing.assert_close(checkpointed[0][valid], plain[0][valid], atol=1e-5, rtol=0)
    for name, grad in plain[1].items():
        assert (checkpointed[1][name] - grad).abs().max() <= 1e-4 * grad.abs().max().clamp(min=1e-12), name
    model.eval()
    assert not rollout.checkpointing_active(model)
    with rollout.cpu_attention(model):
        assert model.config._attn_implementation == rollout.CPU_ATTENTION


@pytest.mark.usefixtures("parity_reward")  # rewards that vary within a group: nonzero advantages
def test_train_with_gradient_checkpointing_on_cpu_updates_the_policy(tmp_path, problems):
    """`gradient_checkpointing=True` on CPU: every step is a finite optimizer step that moves the weights."""
    model, tok = build_toy_model(seed=5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = RunConfig.from_preset("grpo", run_dir=str(tmp_path / "run"), rollout_batch_size=4, group_size=4,
                                train_batch_size=16, micro_batch_size=8, max_len=12, num_steps=2, lr=1e-3,
                                prompt_template="none", gradient_checkpointing=True)
    history = train_mod.train(cfg, policy=model, processor=tok, problems=problems, progress=False).history
    assert len(history) == 2 and all(h["optim/skipped_steps"] == 0 for h in history)
    assert all(0 < h["optim/grad_norm"] < float("inf") for h in history)
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_on_policy_step_takes_old_logp_from_the_learner_with_identical_metrics(tmp_path, problems, monkeypatch):
    """P1: with one epoch and one optimizer step per batch, skipping the no-grad pass changes no metric."""
    from eureka_kit.data import rewards

    monkeypatch.setattr(rewards, "score_batch", lambda completions, golds, **_: [
        dict(accuracy=float(len(c) % 2), format=0.0, total=float(len(c) % 2), timeout=0.0) for c in completions])
    no_grad_passes = []
    batched = train_mod.batched_logprobs
    monkeypatch.setattr(train_mod, "batched_logprobs", lambda *a, **k: no_grad_passes.append(1) or batched(*a, **k))

    def run(name):
        model, tok = build_toy_model(seed=5)
        cfg = RunConfig.from_preset("grpo", run_dir=str(tmp_path / name), rollout_batch_size=4, group_size=4,
                                    train_batch_size=16, micro_batch_size=8, update_epochs=1, max_len=12,
                                    num_steps=3, lr=1e-3, prompt_template="none")
        return train_mod.train(cfg, policy=model, processor=tok, problems=problems, progress=False).history

    one_pass = run("one_pass")
    assert not no_grad_passes
    # two ranks of 16 responses with train_batch_size 16 make two optimizer steps each: not on-policy
    assert not train_mod.takes_old_logp_from_learner(RunConfig(train_batch_size=16), 16, world_size=2)
    monkeypatch.setattr(train_mod, "takes_old_logp_from_learner", lambda *a, **k: False)
    two_pass = run("two_pass")
    assert len(no_grad_passes) == 3
    for a, b in zip(one_pass, two_pass, strict=True):
        a, b = {k: v for k, v in a.items() if not k.startswith("perf/")}, {k: v for k, v in b.items()
                                                                         if not k.startswith("perf/")}
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7, nan_ok=True), key


def test_small_cpu_decodes_run_on_one_thread_and_restore_the_setting(monkeypatch):
    model, _ = build_toy_model(seed=0)  # widest layer: intermediate 256
    before = torch.get_num_threads()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # as if torch ran 2 threads
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    with rollout.cpu_decode_threads(model, rows=rollout.TORCH_GRAIN_SIZE // 256):
        assert calls == [1]
    assert calls == [1, 2]
    with rollout.cpu_decode_threads(model, rows=rollout.TORCH_GRAIN_SIZE // 256 + 1):
        pass
    assert calls == [1, 2]  # too big to stay single-threaded: untouched
    monkeypatch.undo()
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_cpu_attention_forward_equals_sdpa_for_one_query(mask_kind):
    """The CPU decode attention (query heads grouped by key/value head) against transformers' sdpa function,
    on GQA shapes with left padding; several queries per row go to sdpa itself."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    g = torch.Generator().manual_seed(0)
    B, H, KV, S, D = 6, 4, 2, 9, 8
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = H // KV, True
    key, value = torch.randn(B, KV, S, D, generator=g), torch.randn(B, KV, S, D, generator=g)
    padded = torch.arange(S)[None, :] >= torch.tensor([0, 1, 3, 0, 2, 5])[:, None]  # left padding per row
    mask = {"none": None, "bool": padded[:, None, None, :],
            "float": torch.zeros(B, 1, 1, S).masked_fill(~padded[:, None, None, :], float("-inf"))}[mask_kind]
    query = torch.randn(B, H, 1, D, generator=g)
    ours, _ = rollout.cpu_attention_forward(module, query, key, value, mask, scaling=0.3)
    ref, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
    assert ours.shape == ref.shape == (B, 1, H, D)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    if mask_kind == "bool":  # a padded key changes nothing; the same key unmasked does
        key2 = key.clone()
        key2[2, :, 0] += 10.0
        torch.testing.assert_close(rollout.cpu_attention_forward(module, query, key2, value, mask)[0],
                                   rollout.cpu_attention_forward(module, query, key, value, mask)[0])
        assert not torch.allclose(rollout.cpu_attention_forward(module, query, key2, value, None)[0],
                                  rollout.cpu_attention_forward(module, query, key, value, None)[0])
    prefill = torch.randn(B, H, S, D, generator=g)
    assert torch.equal(rollout.cpu_attention_forward(module, prefill, key, value, None)[0],
                       sdpa_attention_forward(module, prefill, key, value, None)[0])


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_cpu_attention_forward_several_queries_skips_repeat_kv_and_matches_sdpa(monkeypatch, kv_heads, mask_kind):
    """Several queries with a mask (the learner's completion pass over a cached prompt): sdpa with enable_gqa on the
    key/value heads as they are gives transformers' repeat_kv + sdpa outputs bitwise and the same gradients, and
    never calls repeat_kv."""
    from transformers.integrations import sdpa_attention

    g = torch.Generator().manual_seed(1)
    B, H, Q, S, D = 3, 4, 5, 11, 8
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = H // kv_heads, True
    query = torch.randn(B, H, Q, D, generator=g)
    key, value = torch.randn(B, kv_heads, S, D, generator=g), torch.randn(B, kv_heads, S, D, generator=g)
    starts = torch.tensor([0, 2, 4])  # left padding per row; query i sits at key column S - Q + i
    allowed = (torch.arange(S)[None, None, :] >= starts[:, None, None]) & \
        (torch.arange(S)[None, None, :] <= (S - Q + torch.arange(Q))[None, :, None])
    mask = allowed[:, None] if mask_kind == "bool" else \
        torch.zeros(B, 1, Q, S).masked_fill(~allowed[:, None], float("-inf"))
    grad_out = torch.randn(B, Q, H, D, generator=g)

    def run(attention):
        leaves = [t.clone().requires_grad_() for t in (query, key, value)]
        out, _ = attention(module, *leaves, mask, scaling=0.3)
        (out * grad_out).sum().backward()
        return out.detach(), [t.grad for t in leaves]

    ref_out, ref_grads = run(sdpa_attention.sdpa_attention_forward)
    monkeypatch.setattr(sdpa_attention, "repeat_kv", lambda *a: pytest.fail("repeat_kv called"))
    out, grads = run(rollout.cpu_attention_forward)
    assert out.shape == (B, Q, H, D) and out.is_contiguous()
    assert torch.equal(out, ref_out)
    for ours, ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    # a padded key is ignored, an attended one is not
    key2 = key.clone()
    key2[2, :, 1] += 10.0
    torch.testing.assert_close(rollout.cpu_attention_forward(module, query, key2, value, mask)[0],
                               rollout.cpu_attention_forward(module, query, key, value, mask)[0])
    key2[2, :, 6] += 10.0
    assert not torch.allclose(rollout.cpu_attention_forward(module, query, key2, value, mask)[0],
                              rollout.cpu_attention_forward(module, query, key, value, mask)[0])


def test_cpu_attention_swaps_the_model_and_restores_sdpa():
    model, _ = build_toy_model(seed=0)
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError), rollout.cpu_attention(model):
        assert model.config._attn_implementation == rollout.CPU_ATTENTION
        raise RuntimeError
    assert model.config._attn_implementation == "sdpa"
    vlm, _ = build_toy_model(multimodal=True, seed=0)  # composite: left alone
    with rollout.cpu_attention(vlm):
        assert vlm.config._attn_implementation == "sdpa"


def test_reserved_cache_writes_in_place_and_matches_concatenation(eos_prone_model, prompts):
    model, _ = eos_prone_model
    ids, attn = prompts
    dynamic, _ = rollout.prefill_shared_prompts(model, ids, attn, K)
    reserved, _ = rollout.prefill_shared_prompts(model, ids, attn, K)
    rollout.reserve_cache(reserved, 2)
    layer = reserved.layers[0]
    buffer = layer.key_buffer.data_ptr()
    B, H, _, D = dynamic.layers[0].keys.shape
    for _ in range(2):
        new_k = torch.randn(B, H, 1, D)
        new_v = torch.randn_like(new_k)
        expected = dynamic.layers[0].update(new_k, new_v)
        got = layer.update(new_k, new_v)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert layer.keys.data_ptr() == buffer  # a view of the reserved buffer: nothing was reallocated
    assert reserved.get_seq_length() == dynamic.get_seq_length() == ids.shape[1] + 2
    with pytest.raises(RuntimeError, match="reserved for"):
        layer.update(new_k, new_v)
