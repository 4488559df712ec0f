"""Rollouts: sample K completions per prompt and return one `Rollouts` record.

Backends sit behind one function, `generate(backend, policy, processor, problems, cfg, generator)`:
`hf` is implemented here; `vllm` (an offline engine in this process, fed the learner's weights after
every update) lives in `rollout_vllm`, since vLLM is installed separately (`make test-vllm`).

`hf` on CPU runs a lean sampling loop of its own (`sample_with_cache`: each prompt prefilled once for its K
samples, then one forward per token). It draws exactly the tokens transformers `generate` draws from the
same seed, without generate's per-token machinery, which dominates at toy-model size. Transformers
`generate` remains the sampler on CUDA (compiled static-cache decode), for multimodal inputs and for
generation options the loop does not implement (`uses_lean_loop`). Inside the loop an sdpa model attends through
`cpu_attention_forward` (two batched matmuls per layer for the one new token; torch's CPU sdpa is ~4x slower
at that shape; the learner's forward uses it too, for grouped key/value heads without copies), and a stock Qwen2 skips the modules altogether: `fast_decode.Qwen2Decoder.step` runs the same
arithmetic as plain torch calls, bitwise the same logits (~1.9x faster per token for the toy model). The learner's
shared-prompt forward (`shared_prompt_hidden`) lives here too.

The record (`Rollouts`) and the prompt encoding every backend shares live in `engine.batch`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any

import torch
from torch import Tensor

from eureka_kit.algos import ops
from eureka_kit.engine import fast_decode as fast_decode_module
from eureka_kit.engine.batch import Rollouts, encode_prompts, merge_mm, placeholder_token_ids
from eureka_kit.models import tokenizer_of

# Generation settings the lean sampling loop reproduces. A model whose own `generation_config` asks for
# anything else (repetition penalty, bad words, min_p, ...) keeps transformers `generate`, which applies it.
LEAN_LOOP_GENERATION_KEYS = frozenset({
    "bos_token_id", "eos_token_id", "pad_token_id", "do_sample", "temperature", "top_p", "top_k", "max_length",
    "max_new_tokens", "min_new_tokens", "use_cache", "output_attentions", "output_hidden_states",
    "_from_model_config", "transformers_version"})


def uses_lean_loop(policy, multimodal: bool) -> bool:
    """Which sampler `generate_hf` runs: the lean loop (`sample_with_cache`) on CPU for text-only models whose
    `generation_config` it fully honours; otherwise transformers `generate` (CUDA, where its compiled
    static-cache decode is ~10x faster; multimodal inputs; generation options the loop does not implement)."""
    device = next(policy.parameters()).device
    extra = set(policy.generation_config.to_diff_dict()) - LEAN_LOOP_GENERATION_KEYS
    return device.type == "cpu" and not multimodal and not extra


@functools.cache
def _forward_parameters(model_class: type) -> frozenset[str]:
    return frozenset(inspect.signature(model_class.forward).parameters)  # ~0.3 ms: once per class, not per token


# torch splits an elementwise CPU op across intra-op threads only above this many elements (at::internal::GRAIN_SIZE).
TORCH_GRAIN_SIZE = 32768


@contextlib.contextmanager
def cpu_decode_threads(policy, rows: int):
    """Decode on one intra-op thread when it is CPU work too small to split: each token's activations (rows x the
    widest layer) within torch's grain size, so no elementwise op would be split anyway and the few ops that are
    (attention over rows x heads, tiny matmuls) gain less than the barrier each adds. For the toy model's 32-row
    decode on 2 cores, one thread is as fast as two on an idle machine and 7-14x faster when other jobs share the
    cores (benchmarks/RESULTS.md). Bigger decodes keep torch's thread count, and the learner's forward/backward
    (a whole sequence per row) always does."""
    text = policy.config.get_text_config()
    width = max(text.hidden_size, getattr(text, "intermediate_size", 0), text.vocab_size)
    single = next(policy.parameters()).device.type == "cpu" and rows * width <= TORCH_GRAIN_SIZE
    threads = torch.get_num_threads()
    if single:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if single:
            torch.set_num_threads(threads)


CPU_ATTENTION = fast_decode_module.CPU_ATTENTION  # "eureka_kit_cpu", what the fast step reproduces


def cpu_attention_forward(module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                          dropout: float = 0.0, scaling: float | None = None, **kwargs) -> tuple[Tensor, None]:
    """transformers' sdpa attention on CPU without its `repeat_kv` copies (registered as `CPU_ATTENTION`).

    * One query per row (a decode step): `softmax(q k^T * scale + mask) v` as two batched matmuls with the query
      heads grouped by their key/value head. torch's CPU `scaled_dot_product_attention` spends ~5 ms per layer on
      the toy decode (512 rows x 4 heads x ~40 keys, 2 threads), slower than on 1 thread; this takes ~1.3 ms.
    * Several queries with a mask and grouped key/value heads (the learner's completion pass over a shared prompt's
      cache, left-padded prefills): torch's sdpa with `enable_gqa=True` on the key/value heads as they are.
      transformers copies keys and values `H / H_kv` times first (it passes `enable_gqa` only without a mask); on
      CPU the flash kernel gives bitwise the same outputs without the copies, their backward, or gradient buffers
      `H / H_kv` times too large (~5 ms of a toy RL step; tests/test_rollout_fast.py).
    * Anything else (dropout, softcap, sliding windows, position bias, an accelerator) goes to transformers' `sdpa`
      function unchanged.

    Shapes: query (B, H, Q, D); key, value (B, H_kv, S, D); attention_mask None or broadcastable to (B, 1, Q, S),
    bool (True = attend) or additive float. Returns ((B, Q, H, D), None), sdpa's layout.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    B, H, Q, D = query.shape
    kv_heads = key.shape[1]
    unsupported = kwargs.get("softcap") is not None or kwargs.get("sliding_window") is not None or \
        kwargs.get("position_bias") is not None or bool(kwargs.get("output_attentions"))
    if dropout or unsupported or query.device.type != "cpu" or (Q > 1 and (attention_mask is None or
                                                                           kv_heads == H)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if Q > 1:  # what sdpa_attention_forward computes with a mask, minus repeat_kv
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                               scale=scaling, enable_gqa=kv_heads != H)
        return out.transpose(1, 2).contiguous(), None
    grouped = query.reshape(B, kv_heads, H // kv_heads, D)  # head h = kv * group + j, as repeat_kv orders them
    scores = torch.matmul(grouped, key.transpose(-1, -2)) * (D**-0.5 if scaling is None else scaling)
    if attention_mask is not None:
        mask = attention_mask[..., -key.shape[2]:]
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = torch.softmax(scores.float(), dim=-1).to(value.dtype)
    return torch.matmul(probs, value).reshape(B, 1, H, D), None


@functools.cache
def _register_cpu_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(CPU_ATTENTION, cpu_attention_forward)
    AttentionMaskInterface.register(CPU_ATTENTION, sdpa_mask)  # the masks sdpa gets


@contextlib.contextmanager
def cpu_attention(policy):
    """Run `policy` with `cpu_attention_forward` inside the block (the rollout's decode, the learner's forward)
    when it is a plain (not composite) sdpa model on CPU: a composite model (a VLM) may run other implementations
    in its sub-models, which one swap-and-restore of the whole model would overwrite.

    Not while gradient checkpointing is active (`checkpointing_active`): its recompute replays each layer during
    backward, after this block has restored sdpa, and must make the tensors the forward saved (the swapped
    attention saves un-repeated keys and values; the recompute would repeat them: a CheckpointError)."""
    config = policy.config
    swap = next(policy.parameters()).device.type == "cpu" and config._attn_implementation == "sdpa" and \
        not getattr(config, "sub_configs", None) and not checkpointing_active(policy)
    if swap:
        _register_cpu_attention()
        policy.set_attn_implementation(CPU_ATTENTION)
    try:
        yield
    finally:
        if swap:
            policy.set_attn_implementation("sdpa")


def checkpointing_active(policy) -> bool:
    """Whether `policy`'s forward runs under gradient checkpointing (transformers checkpoints in training mode only)."""
    return policy.training and any(getattr(m, "gradient_checkpointing", False) for m in policy.modules())


def cache_kwarg(model) -> str:
    """Name of the KV-cache argument of `model.forward` (transformers 5.x renamed `past_key_values`)."""
    return "cache" if "cache" in _forward_parameters(type(model)) else "past_key_values"


def prefill_shared_prompts(policy, ids: Tensor, attn: Tensor, K: int) -> tuple[Any, Tensor]:
    """Run each distinct prompt once and share its KV cache across its K samples.

    `generate` on K-times-repeated prompts would prefill every prompt K times; the samples only differ after
    the prompt, so the prefill is done once and the cache (and the next-token logits) repeated K times.
    Positions count real tokens only (left padding), as in `generate`.

    Args:
        ids, attn: (N, P) left-padded distinct prompts and their attention mask.
        K: samples per prompt.

    Returns:
        (DynamicCache for N*K rows, row i*K + k holding prompt i; (N*K, V) fp32 logits at the last position).
    """
    from transformers import DynamicCache

    cache = DynamicCache(config=policy.config)
    positions = (attn.cumsum(dim=1) - 1).masked_fill(attn == 0, 0)
    out = policy(input_ids=ids, attention_mask=None if bool(attn.all()) else attn, position_ids=positions,
                 use_cache=True, logits_to_keep=1, **{cache_kwarg(policy): cache})
    cache.batch_repeat_interleave(K)
    return cache, out.logits[:, -1].float().repeat_interleave(K, dim=0)


@functools.cache
def _reserved_layer_class():
    from transformers.cache_utils import DynamicLayer

    class ReservedLayer(DynamicLayer):
        """A `DynamicLayer` whose keys/values live in a buffer reserved for the whole decode.

        `DynamicLayer.update` concatenates a new (B, H, S+1, D) tensor per token and layer (quadratic copying).
        Here the new token's key/value is written in place and `keys` / `values` are views of the filled part
        (1.04x per toy rollout on a 2-core CPU, benchmarks/decode_loop.py)."""

        @classmethod
        def reserving(cls, layer: DynamicLayer, extra: int) -> ReservedLayer:
            reserved = cls()
            reserved.__dict__.update(layer.__dict__)
            B, H, S, D = layer.keys.shape
            reserved.key_buffer = layer.keys.new_empty(B, H, S + extra, D)
            reserved.value_buffer = layer.values.new_empty(B, H, S + extra, layer.values.shape[-1])
            reserved.key_buffer[:, :, :S], reserved.value_buffer[:, :, :S] = layer.keys, layer.values
            return reserved

        def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
            start = self.keys.shape[-2]
            end = start + key_states.shape[-2]
            if end > self.key_buffer.shape[-2]:
                raise RuntimeError(f"KV cache reserved for {self.key_buffer.shape[-2]} positions, asked for {end}")
            self.key_buffer[:, :, start:end], self.value_buffer[:, :, start:end] = key_states, value_states
            self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
            return self.keys, self.values

    return ReservedLayer


def reserve_cache(cache, extra: int) -> None:
    """Give every plain dynamic layer of a prefilled `cache` room for `extra` more positions (in place)."""
    from transformers.cache_utils import DynamicLayer

    reserved = _reserved_layer_class()
    cache.layers = [reserved.reserving(layer, extra) if type(layer) is DynamicLayer and layer.is_initialized
                    else layer for layer in cache.layers]


@torch.no_grad()
def sample_with_cache(policy, ids: Tensor, attn: Tensor, K: int, max_new_tokens: int, eos_id: int, pad_id: int, *,
                      greedy: bool = False, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                      min_new_tokens: int = 0, generator: torch.Generator | None = None,
                      fast_decode: bool = True) -> tuple[Tensor, Tensor]:
    """A lean decode loop: shared-prompt prefill, then one forward per token over the KV cache.

    At a tiny model's size transformers `generate` spends most of its time in per-token Python machinery
    (logits processors, stopping criteria, input preparation); this loop does only what sampling needs and
    reproduces generate's choices exactly: EOS blocked before `min_new_tokens`, then temperature, top-k,
    top-p (`ops.sampling_logits`), one `multinomial` draw per row per step from `generator` (the same
    stream as `generate` under `torch.manual_seed` of the generator's seed), PAD after EOS, and a stop once
    every row has emitted EOS. Greedy decoding takes the argmax of the unwarped logits, like
    `generate(do_sample=False)`.

    Each token's forward is `fast_decode.Qwen2Decoder.step` where it reproduces the model's forward bitwise
    (`fast_decode.unsupported_reason`: a stock Qwen2 under `cpu_attention`), else the model's own forward.

    Args:
        ids, attn: (N, P) left-padded distinct prompts; row i*K + k of the outputs samples prompt i.
        K: samples per prompt.
        generator: the RNG of the draws (None: torch's global RNG).
        fast_decode: False keeps the model's forward for every token (the reference the fast step is tested on).

    Returns:
        completion ids (N*K, T) long and their log-probs (N*K, T) fp32 under the distribution each token was
        drawn from, T <= max_new_tokens (entries after a row's EOS are PAD, with meaningless log-probs).
    """
    cache, logits = prefill_shared_prompts(policy, ids, attn, K)  # (B, V)
    reserve_cache(cache, max_new_tokens)
    B, key = logits.shape[0], cache_kwarg(policy)
    prompt_len = ids.shape[1]
    mask = attn.repeat_interleave(K, dim=0)
    # no padding: let the model skip building an attention mask; else reserve its decode columns too
    full_mask = None if bool(mask.all()) else torch.cat([mask, mask.new_ones(B, max_new_tokens)], dim=1)
    position = attn.sum(dim=1, keepdim=True).repeat_interleave(K, dim=0) - 1  # (B, 1) last prompt position
    decoder = None
    if fast_decode and fast_decode_module.unsupported_reason(policy, cache.layers) is None:
        decoder = fast_decode_module.Qwen2Decoder(policy, cache.layers, full_mask)
    unfinished = torch.ones(B, dtype=torch.bool, device=ids.device)
    tokens, logps = [], []
    for t in range(max_new_tokens):
        if t < min_new_tokens:
            logits[:, eos_id] = float("-inf")
        scores = logits if greedy else ops.sampling_logits(logits, temperature, top_k, top_p)
        if greedy:
            token = scores.argmax(dim=-1)
        else:
            token = torch.multinomial(scores.softmax(dim=-1), 1, generator=generator).squeeze(1)
        token = torch.where(unfinished, token, pad_id)  # (B,)
        tokens.append(token)
        logps.append(torch.log_softmax(scores, dim=-1).gather(1, token[:, None]).squeeze(1))
        unfinished &= token != eos_id
        if t == max_new_tokens - 1 or not bool(unfinished.any()):
            break
        position = position + 1
        if decoder is not None:
            logits = decoder.step(token, position, prompt_len + t)
            continue
        mask = None if full_mask is None else full_mask[:, :prompt_len + t + 1]
        out = policy(input_ids=token[:, None], attention_mask=mask, position_ids=position, use_cache=True,
                     **{key: cache})
        logits = out.logits[:, -1].float()
    if decoder is not None:
        decoder.sync_cache(prompt_len + len(tokens) - 1)
    return torch.stack(tokens, dim=1), torch.stack(logps, dim=1)


@torch.no_grad()
def generate_hf(policy, processor, problems: list[dict], cfg, generator: torch.Generator | None = None,
                *, num_samples: int | None = None, greedy: bool = False) -> Rollouts:
    """Sample `num_samples` (default `cfg.group_size`) completions per problem.

    The sampler is the lean loop `sample_with_cache` or transformers `generate`, by `uses_lean_loop`; both
    draw the same tokens from the same seed. `greedy=True` decodes greedily (the evaluation
    protocol); behavior_logp then holds the temperature-1 log-probs of the chosen tokens. Otherwise behavior_logp
    holds mu, the log-probs under the distribution each token was drawn from (temperature, top-k, top-p applied).
    """
    tok = tokenizer_of(processor)
    device = next(policy.parameters()).device
    ids, attn, mm = encode_prompts(processor, problems, cfg.prompt_template, cfg.multimodal, cfg.max_prompt_len,
                                   pad_to_multiple_of=64 if device.type == "cuda" else None)
    K = num_samples or cfg.group_size
    # One draw from our generator seeds the sampler, so a run is reproducible from cfg.seed.
    seed = None if generator is None else int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    was_training = policy.training
    policy.eval()
    with cpu_decode_threads(policy, len(problems) * K):
        if uses_lean_loop(policy, mm is not None):
            with cpu_attention(policy):
                completion, logp = sample_with_cache(
                    policy, ids.to(device), attn.to(device), K, cfg.max_len, tok.eos_token_id, pad_id,
                    greedy=greedy, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                    min_new_tokens=policy.generation_config.min_new_tokens or 0,
                    generator=None if seed is None else torch.Generator(device).manual_seed(seed))
            completion, logp = completion.cpu(), logp.cpu()
        else:
            if seed is not None:  # transformers samples from the global RNG
                torch.manual_seed(seed)
            completion, logp = _sample_with_transformers(policy, tok, ids, attn, mm, K, cfg, greedy, pad_id)
    policy.train(was_training)
    ids, attn = ids.repeat_interleave(K, dim=0), attn.repeat_interleave(K, dim=0)
    is_eos = completion == tok.eos_token_id
    # valid = every token up to and including the first EOS
    mask = ((is_eos.cumsum(dim=1) - is_eos.long()) == 0).long()
    finished = is_eos.any(dim=1)
    # Decode without skip_special_tokens: <think>/<answer> may be special tokens and the reward needs them.
    # The text is the prefix before the first EOS.
    text_lengths = ((mask == 1) & ~is_eos).sum(dim=1).tolist()
    texts = tok.batch_decode([row[:n] for row, n in zip(completion.tolist(), text_lengths, strict=True)],
                             skip_special_tokens=False)
    return Rollouts(
        prompt_ids=ids, prompt_mask=attn, completion_ids=completion, completion_mask=mask,
        behavior_logp=torch.where(mask.bool(), logp, 0.0),
        texts=texts, finish_reasons=["stop" if f else "length" for f in finished.tolist()],
        problem_index=torch.arange(len(problems)).repeat_interleave(K), problems=list(problems),
        mm_inputs=None if mm is None else [m for m in mm for _ in range(K)],
        extras={"pad_id": tok.pad_token_id, "has_behavior_logp": True},
    )


class BehaviorLogpRecorder:
    """A logits processor that records, inside transformers `generate`, each drawn token's log-prob under the
    distribution it was drawn from (mu), without keeping per-step scores (B x T x V: 40 GB at B=256, T=256,
    V=151,936).

    `generate` runs user processors after its own (EOS blocking, suppressed tokens) and before its temperature,
    top-k and top-p warpers, so the recorder applies those warpers itself (`ops.sampling_logits`, which
    reproduces them) and keeps one step's (B, V) log-softmax; the next call sees the token drawn from it as the
    last input id. `finish(sequences)` gathers the last step's token and returns (B, T) fp32 on the CPU.
    """

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
        self.warp = dict(temperature=temperature, top_k=top_k, top_p=top_p)
        self.last: Tensor | None = None
        self.logps: list[Tensor] = []

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        self._gather(input_ids[:, -1])
        self.last = torch.log_softmax(ops.sampling_logits(scores.float(), **self.warp), dim=-1)
        return scores

    def _gather(self, tokens: Tensor) -> None:
        if self.last is not None:
            self.logps.append(self.last.gather(1, tokens[:, None]).squeeze(1))

    def finish(self, sequences: Tensor) -> Tensor:
        self._gather(sequences[:, -1])
        self.last = None
        return torch.stack(self.logps, dim=1).cpu()


def _sample_with_transformers(policy, tok, ids: Tensor, attn: Tensor, mm, K: int, cfg, greedy: bool, pad_id: int):
    """transformers `generate` on the K-times-repeated prompts; returns (completion ids [B, T], mu [B, T])."""
    from transformers import LogitsProcessorList

    device = next(policy.parameters()).device
    on_gpu = device.type == "cuda"
    # On CUDA a static KV cache lets transformers compile the decode step (10x over the dynamic cache at
    # B=256 on one H200); on CPU the dynamic cache is faster for tiny models.
    # No autocast here: the static cache is allocated in the weights' dtype and autocast's bf16 k/v would not
    # fit it (seen on an H200). Rollouts run in the model's dtype: load the model in bf16 for fast rollouts.
    speed: dict[str, Any] = dict(cache_implementation="static") if on_gpu else {}
    if not on_gpu and mm is None and ids.shape[1] > 1:
        # Shared-prompt prefill of all but the last prompt token; generate then runs that token and the decode.
        speed[cache_kwarg(policy)], _ = prefill_shared_prompts(policy, ids[:, :-1].to(device),
                                                               attn[:, :-1].to(device), K)
    mm_rows = None if mm is None else [m for m in mm for _ in range(K)]
    # In a vision-language model a sampled image placeholder would desynchronise image features and tokens in
    # the learner's forward, so they are suppressed. (The sampling distribution is then renormalised without
    # them, and mu records that: mismatch/abs_mean shows their mass, ~0 for a trained model.)
    banned = placeholder_token_ids(tok) if hasattr(policy.config, "vision_config") else []
    sampling = dict(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)
    recorder = BehaviorLogpRecorder() if greedy else BehaviorLogpRecorder(cfg.temperature, cfg.top_k, cfg.top_p)
    ids, attn = ids.repeat_interleave(K, dim=0), attn.repeat_interleave(K, dim=0)
    out = policy.generate(
        input_ids=ids.to(device), attention_mask=attn.to(device),
        **{k: v.to(device) for k, v in merge_mm(mm_rows).items()},
        **(dict(do_sample=False) if greedy else sampling), logits_processor=LogitsProcessorList([recorder]),
        max_new_tokens=cfg.max_len, pad_token_id=pad_id, eos_token_id=tok.eos_token_id,
        return_dict_in_generate=True, suppress_tokens=banned or None, **speed,
    )
    chosen = out.sequences[:, ids.shape[1]:]
    return chosen.cpu(), recorder.finish(out.sequences)


def generate_vllm(policy, processor, problems, cfg, generator=None, **kwargs) -> Rollouts:
    """The `vllm` backend (`rollout_vllm.generate_vllm`), imported on first use: vLLM is a separate install."""
    from eureka_kit.engine.rollout_vllm import generate_vllm as generate

    return generate(policy, processor, problems, cfg, generator, **kwargs)


BACKENDS = {"hf": generate_hf, "vllm": generate_vllm}


def generate(policy, processor, problems: list[dict], cfg, generator: torch.Generator | None = None,
             **kwargs) -> Rollouts:
    """Dispatch to `cfg.rollout_backend` (kwargs: num_samples, greedy)."""
    return BACKENDS[cfg.rollout_backend](policy, processor, problems, cfg, generator, **kwargs)


# ---------------------------------------------------------------------------------------------
# The learner's forward with shared prompts (logprobs.completion_logprobs).


def can_share_prompts(policy, prompt_ids: Tensor, completion_ids: Tensor, K: int, multimodal: bool) -> bool:
    """Whether `shared_prompt_hidden` applies: rows are whole groups of K > 1 consecutive responses to one
    prompt, text only (VL models build their own positions and image features), no gradient checkpointing
    (its recompute does not replay a cache), and more than one completion column."""
    if (K < 2 or prompt_ids.shape[0] % K or completion_ids.shape[1] < 2 or multimodal
            or hasattr(policy.config, "vision_config")
            or any(getattr(m, "gradient_checkpointing", False) for m in policy.modules())):
        return False
    grouped = prompt_ids.view(-1, K, prompt_ids.shape[1])
    return bool((grouped == grouped[:, :1]).all())


def shared_prompt_hidden(policy, input_ids: Tensor, attention: Tensor, position_ids: Tensor, P: int,
                         K: int) -> Tensor:
    """Final hidden states at the positions predicting the completion tokens (P-1 .. end-1), prompts run once.

    The learner's forward over K responses to one prompt recomputes that prompt K times. Here each prompt
    runs once with a KV cache that keeps its autograd history, the cache is repeated K times and only the
    completions run against it: the same values and gradients as the full forward up to float rounding
    (tests: 1e-5), with the prompt compute divided by K.

    Args:
        input_ids, attention, position_ids: (B, P + T) prompt + completion rows, whole groups of K rows.
        P: prompt width.

    Returns:
        (B, T, H) hidden states, row i predicting completion token i.
    """
    from transformers import DynamicCache

    backbone, cache = policy.model, DynamicCache(config=policy.config)
    h_prompt = backbone(input_ids=input_ids[::K, :P], attention_mask=attention[::K, :P],
                        position_ids=position_ids[::K, :P], use_cache=True,
                        **{cache_kwarg(backbone): cache}).last_hidden_state  # (B / K, P, H)
    cache.batch_repeat_interleave(K)
    h_completion = backbone(input_ids=input_ids[:, P:-1], attention_mask=attention[:, :-1],
                            position_ids=position_ids[:, P:-1], use_cache=True,
                            **{cache_kwarg(backbone): cache}).last_hidden_state  # (B, T - 1, H)
    return torch.cat([h_prompt[:, -1:].repeat_interleave(K, dim=0), h_completion], dim=1)
