"""The functional Qwen2 decode step (`engine.fast_decode`) against the model's own forward in the lean loop.

Same tokens and the same behavior log-probs, bit for bit, from the same seed (the toy model and tiny random Qwen2s
with other head groupings, left padding, temperature / top-k / top-p, min_new_tokens, EOS stops); the fast step is
taken exactly where it is exact, and never elsewhere.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from eureka_kit.config import RunConfig
from eureka_kit.data import toyworld
from eureka_kit.engine import fast_decode, rollout
from eureka_kit.models import build_toy_model

K, NEW = 3, 20


@pytest.fixture(scope="module")
def problems():
    return toyworld.load("train", "math", seed=0, n_per_level=4)


@pytest.fixture(scope="module")
def tok():
    return build_toy_model(seed=0)[1]


@pytest.fixture(scope="module")
def prompts(problems, tok):
    """5 prompts of different lengths (left padding) and their mask."""
    ids, attn, _ = rollout.encode_prompts(tok, problems[::4][:5], "none", False, 512)
    assert (attn == 0).any()
    return ids, attn


def _eos_prone(model, tok, scale=0.3):
    """EOS made likely along the hidden states' common direction: rows stop at different steps."""
    with torch.no_grad():
        x = torch.randint(3, 100, (8, 30), generator=torch.Generator().manual_seed(0))
        common = model.model(input_ids=x).last_hidden_state.mean(dim=(0, 1))
        model.lm_head.weight[tok.eos_token_id] += scale * common / common.norm()
    return model


def _qwen2(tok, seed=0, **overrides):
    """A tiny random Qwen2ForCausalLM (sdpa attention, like a loaded model)."""
    torch.manual_seed(seed)
    dims = dict(vocab_size=len(tok), hidden_size=96, intermediate_size=160, num_hidden_layers=2,
                num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=256,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    config = Qwen2Config(**{**dims, **overrides})
    config._attn_implementation = "sdpa"
    return Qwen2ForCausalLM(config).eval()


MODELS = {
    "toy": lambda tok: build_toy_model(seed=0)[0],  # 4 heads, 2 kv heads, tied embeddings
    "gqa3_untied": lambda tok: _qwen2(tok, seed=1, tie_word_embeddings=False),  # 6 heads in 2 groups of 3
    "mha": lambda tok: _qwen2(tok, seed=2, num_attention_heads=4, num_key_value_heads=4, hidden_size=64),
    "mqa_head_dim": lambda tok: _qwen2(tok, seed=3, num_attention_heads=4, num_key_value_heads=1, head_dim=32,
                                       rope_parameters={"rope_type": "default", "rope_theta": 500.0}),
    "toy_bf16": lambda tok: build_toy_model(seed=0)[0].to(torch.bfloat16),  # a sampler_dtype copy
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request, tok):
    return _eos_prone(MODELS[request.param](tok), tok)


def _sample(model, tok, ids, attn, fast, seed=7, **kw):
    steps = []
    original = fast_decode.Qwen2Decoder.step

    def counting(self, *a):
        steps.append(1)
        return original(self, *a)

    fast_decode.Qwen2Decoder.step = counting
    try:
        with rollout.cpu_attention(model):
            tokens, logp = rollout.sample_with_cache(
                model, ids, attn, K, NEW, tok.eos_token_id, tok.pad_token_id, fast_decode=fast,
                generator=torch.Generator().manual_seed(seed), **kw)
    finally:
        fast_decode.Qwen2Decoder.step = original
    return tokens, logp, len(steps)


@pytest.mark.parametrize("kw", [
    dict(),
    dict(temperature=0.7, top_p=0.9),
    dict(temperature=1.3, top_k=5),
    dict(temperature=0.8, top_k=12, top_p=0.8, min_new_tokens=6),
    dict(greedy=True),
], ids=["plain", "temperature_top_p", "top_k", "all_and_min_new_tokens", "greedy"])
def test_fast_decode_draws_the_same_tokens_and_logp_as_the_model_forward(model, tok, prompts, kw):
    ids, attn = prompts
    fast_tokens, fast_logp, fast_steps = _sample(model, tok, ids, attn, True, **kw)
    ref_tokens, ref_logp, ref_steps = _sample(model, tok, ids, attn, False, **kw)
    assert fast_steps == fast_tokens.shape[1] - 1 and ref_steps == 0  # every forward after the prefill was fast
    assert torch.equal(fast_tokens, ref_tokens)
    assert torch.equal(fast_logp, ref_logp)  # bitwise, PAD positions included
    if kw.get("min_new_tokens"):
        assert not (fast_tokens[:, :kw["min_new_tokens"]] == tok.eos_token_id).any()


def test_the_runs_exercise_eos_stops_and_padding(tok, prompts):
    """The toy model's rollouts in the test above stop early on some rows and not others (EOS, PAD after it)."""
    model = _eos_prone(build_toy_model(seed=0)[0], tok)
    tokens, _, _ = _sample(model, tok, *prompts, True)
    finished = (tokens == tok.eos_token_id).any(dim=1)
    assert 0 < finished.sum() < len(tokens)
    assert (tokens == tok.pad_token_id).any()


def test_logits_are_bitwise_the_model_forward_without_padding(tok):
    """Step by step against the model forward on the same reserved cache (no padding: no mask at all)."""
    model = _qwen2(tok, seed=4, tie_word_embeddings=False)
    ids = torch.randint(10, 90, (3, 11), generator=torch.Generator().manual_seed(0))
    attn = torch.ones_like(ids)
    with torch.no_grad(), rollout.cpu_attention(model):
        caches, firsts = zip(*[rollout.prefill_shared_prompts(model, ids, attn, 2) for _ in range(2)], strict=True)
        for cache in caches:
            rollout.reserve_cache(cache, 6)
        assert fast_decode.unsupported_reason(model, caches[1].layers) is None
        decoder = fast_decode.Qwen2Decoder(model, caches[1].layers)
        token, position = firsts[0].argmax(-1), torch.full((6, 1), 10)
        for t in range(5):
            position = position + 1
            ref = model(input_ids=token[:, None], position_ids=position, use_cache=True,
                        **{rollout.cache_kwarg(model): caches[0]}).logits[:, -1].float()
            got = decoder.step(token, position, 11 + t)
            assert torch.equal(got, ref), t
            token = ref.argmax(-1)
        decoder.sync_cache(16)
    for ref_layer, layer in zip(caches[0].layers, caches[1].layers, strict=True):
        assert torch.equal(ref_layer.keys, layer.keys) and torch.equal(ref_layer.values, layer.values)


def test_the_decoder_reads_the_live_weights(tok, prompts):
    """No weight copies: an in-place update (what the optimizer does) changes the next step's logits."""
    model = build_toy_model(seed=0)[0]
    ids, attn = prompts
    with torch.no_grad(), rollout.cpu_attention(model):
        cache, logits = rollout.prefill_shared_prompts(model, ids, attn, 1)
        rollout.reserve_cache(cache, 4)
        mask = torch.cat([attn, attn.new_ones(len(ids), 4)], dim=1)
        decoder = fast_decode.Qwen2Decoder(model, cache.layers, mask)
        position = attn.sum(dim=1, keepdim=True)
        before = decoder.step(logits.argmax(-1), position, ids.shape[1])
        model.model.layers[0].mlp.down_proj.weight.mul_(2.0)
        after = decoder.step(logits.argmax(-1), position, ids.shape[1])
    assert not torch.equal(before, after)
    assert decoder.layers[0].down.data_ptr() == model.model.layers[0].mlp.down_proj.weight.data_ptr()


def test_generate_hf_rollouts_are_identical_with_and_without_the_fast_step(problems, tok, monkeypatch):
    model = _eos_prone(build_toy_model(seed=0)[0], tok)
    cfg = RunConfig.from_preset("grpo", group_size=K, max_len=NEW, prompt_template="none", temperature=0.9,
                                top_k=20)
    chunk = problems[::4][:5]
    fast = rollout.generate_hf(model, tok, chunk, cfg, torch.Generator().manual_seed(5))
    original = rollout.sample_with_cache
    monkeypatch.setattr(rollout, "sample_with_cache", lambda *a, **k: original(*a, **{**k, "fast_decode": False}))
    plain = rollout.generate_hf(model, tok, chunk, cfg, torch.Generator().manual_seed(5))
    assert torch.equal(fast.completion_ids, plain.completion_ids) and fast.texts == plain.texts
    assert torch.equal(fast.behavior_logp, plain.behavior_logp)
    assert fast.finish_reasons == plain.finish_reasons and "stop" in fast.finish_reasons
    assert model.config._attn_implementation == "sdpa"  # restored after the loop


def _reason(model, swap=True):
    if not swap:
        return fast_decode.unsupported_reason(model)
    with rollout.cpu_attention(model):
        return fast_decode.unsupported_reason(model)


def test_the_fast_step_is_taken_only_where_it_is_exact(tok, prompts):
    assert _reason(build_toy_model(seed=0)[0]) is None
    assert "attention" in _reason(build_toy_model(seed=0)[0], swap=False)  # plain sdpa: the loop's reference path
    eager = _qwen2(tok)
    eager.config._attn_implementation = "eager"
    assert "attention" in _reason(eager)
    assert "sliding" in _reason(_qwen2(tok, use_sliding_window=True, sliding_window=8, max_window_layers=0))
    assert "rope_type" in _reason(_qwen2(tok, rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                               "rope_theta": 1e4}))
    assert "hidden_act" in _reason(_qwen2(tok, hidden_act="gelu"))
    assert "training" in _reason(_qwen2(tok, attention_dropout=0.1).train())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "autocast" in _reason(build_toy_model(seed=0)[0])
    assert "Qwen2ForCausalLM" in _reason(build_toy_model(multimodal=True, seed=0)[0], swap=False)

    class Custom(Qwen2ForCausalLM):
        pass

    assert "Custom" in _reason(Custom(_qwen2(tok).config).eval())
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    assert "LlamaForCausalLM" in _reason(llama.eval())
    hooked = build_toy_model(seed=0)[0]
    handle = hooked.model.layers[1].mlp.register_forward_hook(lambda *a: None)
    assert "hooks" in _reason(hooked)
    handle.remove()
    assert _reason(hooked) is None
    replaced = build_toy_model(seed=0)[0]
    replaced.model.layers[0].self_attn.q_proj = torch.nn.Sequential(replaced.model.layers[0].self_attn.q_proj)
    assert "stock" in _reason(replaced)
    model = build_toy_model(seed=0)[0]  # a cache that was not reserved (a DynamicLayer per layer)
    ids, attn = prompts
    with torch.no_grad(), rollout.cpu_attention(model):
        cache, _ = rollout.prefill_shared_prompts(model, ids, attn, 1)
        assert "reserved" in fast_decode.unsupported_reason(model, cache.layers)


def test_unsupported_models_keep_the_model_forward(tok, prompts):
    """A sliding-window Qwen2 samples through its own forward (the fast step is never called)."""
    model = _eos_prone(_qwen2(tok, use_sliding_window=True, sliding_window=8, max_window_layers=0), tok)
    _, _, steps = _sample(model, tok, *prompts, True)
    assert steps == 0
