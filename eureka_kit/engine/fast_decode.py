"""A functional Qwen2 decode step for the lean CPU sampling loop (`rollout.sample_with_cache`).

At the toy model's size (0.46M parameters, 32 rows) one transformers forward of one new token costs ~2.5 ms on a
2-core EPYC, about half of it per-module Python: kwargs plumbing, output dataclasses, mask construction, the cache
and attention interfaces. `Qwen2Decoder.step` (~1.3 ms, mostly the matmuls themselves) runs the same arithmetic as plain torch calls on the model's own weight tensors (no
copies: an optimizer step is seen by the next rollout) and on the reserved KV buffers the prefill filled
(`rollout.reserve_cache`), in the order and dtypes of transformers' `Qwen2ForCausalLM` forward with the decode
attention the loop swaps in (`rollout.cpu_attention_forward`):

    embed -> per layer [RMSNorm (fp32) -> q/k/v -> rotary at the row's position -> append k/v to the buffers
    -> grouped attention over the cache (padding masked) -> o_proj -> + residual -> RMSNorm -> down(silu(gate) * up)
    -> + residual] -> RMSNorm -> lm_head

so its logits are bitwise those of the module forward (tests/test_fast_decode.py: same tokens and log-probs from
the same seed, fp32 and bf16). Only where that holds (`unsupported_reason` is None): a plain `Qwen2ForCausalLM`
(model type `qwen2`) on CPU running the decode attention, no CPU autocast, default rotary embedding, full attention
on every layer (no sliding window), SiLU MLP, stock modules without hooks (DeepSpeed, accelerate, PEFT wrappers
are not) and no training-mode attention dropout. Anything else keeps the module forward. torch.compile of the step
does not pay here: a first rollout of ~200 s (a recompile per cache length), slower after, and not bitwise.

Rewrites that change no bit: each projection is the one `mm`/`addmm` that `F.linear` reduces to; the attention is
the `bmm` pair that `torch.matmul` reduces to, on the same strides; `rotate_half(x) * sin` is
`x[..., perm] * cat(-s, s)` (sin = cat(s, s): a gather and a negation, both exact); the rotary cos/sin are computed
once per token for all layers, as the model does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

SUPPORTED_MODEL_TYPES = frozenset({"qwen2"})
# The attention implementation `rollout.cpu_attention` registers (`rollout.cpu_attention_forward`): the one
# the step reproduces. Defined here, below rollout, which imports this module.
CPU_ATTENTION = "eureka_kit_cpu"


def unsupported_reason(policy, layers=None) -> str | None:
    """Why `Qwen2Decoder` would not reproduce `policy`'s decode forward bitwise (None: it would).

    `layers`: the cache layers the decode would write (all must be reserved ones, `rollout.reserve_cache`)."""
    from transformers import Qwen2ForCausalLM
    from transformers.models.qwen2 import modeling_qwen2 as qwen2

    if type(policy) is not Qwen2ForCausalLM:
        return f"class {type(policy).__name__} is not Qwen2ForCausalLM"
    config = policy.config
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        return f"model_type {config.model_type!r}"
    if config._attn_implementation != CPU_ATTENTION:
        return f"attention {config._attn_implementation!r} is not the CPU decode attention"
    if next(policy.parameters()).device.type != "cpu":
        return "not on CPU"
    if torch.is_autocast_enabled("cpu"):
        return "CPU autocast is on"
    if config.hidden_act != "silu":
        return f"hidden_act {config.hidden_act!r}"
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        return f"rope_type {rope.get('rope_type')!r}"
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or []) or \
            getattr(config, "use_sliding_window", False):
        return "sliding-window attention"
    if policy.training and config.attention_dropout:
        return "attention dropout in training mode"
    model = policy.model
    if len(model.layers) != config.num_hidden_layers or model.rotary_emb.rope_type != "default" or \
            model.rotary_emb.attention_scaling != 1.0:
        return "unexpected module layout"
    exact = [(model.embed_tokens, torch.nn.Embedding), (model.norm, qwen2.Qwen2RMSNorm),
             (model.rotary_emb, qwen2.Qwen2RotaryEmbedding), (policy.lm_head, torch.nn.Linear)]
    for layer in model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        exact += [(layer, qwen2.Qwen2DecoderLayer), (attn, qwen2.Qwen2Attention), (mlp, qwen2.Qwen2MLP),
                  (layer.input_layernorm, qwen2.Qwen2RMSNorm), (layer.post_attention_layernorm, qwen2.Qwen2RMSNorm),
                  *[(m, torch.nn.Linear) for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj,
                                                   mlp.gate_proj, mlp.up_proj, mlp.down_proj)]]
        if attn.sliding_window is not None:
            return "sliding-window attention"
        if type(mlp.act_fn).__name__ not in ("SiLUActivation", "SiLU"):
            return f"activation {type(mlp.act_fn).__name__}"
    if any(type(module) is not cls for module, cls in exact):
        return "a module is not the stock Qwen2 one (wrapped or replaced)"
    if any(m._forward_hooks or m._forward_pre_hooks for m in policy.modules()) or _global_hooks():
        return "module hooks"
    if layers is not None and (len(layers) != config.num_hidden_layers or any(
            getattr(layer, "key_buffer", None) is None or getattr(layer, "value_buffer", None) is None
            for layer in layers)):
        return "cache layers are not reserved buffers (rollout.reserve_cache)"
    return None


def _global_hooks() -> bool:
    from torch.nn.modules import module

    return bool(module._global_forward_hooks or module._global_forward_pre_hooks)


@dataclass(frozen=True)
class _Layer:
    """One decoder layer's parameters; projection weights as transposed views (no copies), for `mm`/`addmm`."""

    ln1: Tensor
    eps1: float
    q: tuple[Tensor, Tensor | None]  # (weight.t(), bias)
    k: tuple[Tensor, Tensor | None]
    v: tuple[Tensor, Tensor | None]
    o: tuple[Tensor, Tensor | None]
    ln2: Tensor
    eps2: float
    gate: Tensor  # weight.t()
    up: Tensor
    down: Tensor


def _linear(x: Tensor, weight_t: Tensor, bias: Tensor | None) -> Tensor:
    """`F.linear(x, weight, bias)` for 2-D `x`, as `F.linear` runs it on the (B, 1, in) decode input it flattens."""
    return torch.mm(x, weight_t) if bias is None else torch.addmm(bias, x, weight_t)


def _projection(module) -> tuple[Tensor, Tensor | None]:
    return module.weight.t(), module.bias


class Qwen2Decoder:
    """One-token decode steps of a supported `Qwen2ForCausalLM` (`unsupported_reason` is None) over a reserved cache.

    Holds views of the model's parameters (never copies: an in-place optimizer step is seen) and of the cache
    layers' key/value buffers, for one rollout. `padding_mask`: None (no padding) or the (B, prompt + new tokens)
    0/1 mask over every cache column. `step(tokens, positions, length)` writes the new keys/values at column
    `length` and returns the (B, V) fp32 next-token logits, as `policy(input_ids=tokens[:, None],
    position_ids=positions, attention_mask=padding_mask[:, :length + 1], cache=cache).logits[:, -1].float()` does
    under `rollout.cpu_attention`.

    The hidden state stays (B, hidden) and every projection is one `mm`/`addmm`: `F.linear` flattens the model's
    (B, 1, hidden) input to the same call. Query heads stay (B, H, D), the layout the model's (B, H, 1, D) transposed
    view has in memory, so the attention matmuls see identical operands.
    """

    def __init__(self, policy, layers, padding_mask: Tensor | None = None):
        model, config = policy.model, policy.config
        self.embed = model.embed_tokens.weight
        self.dtype = self.embed.dtype
        self.norm, self.norm_eps = model.norm.weight, model.norm.variance_epsilon
        self.head = _projection(policy.lm_head)
        self.inv_freq = model.rotary_emb.inv_freq.to(dtype=torch.float)
        first = model.layers[0].self_attn
        self.head_dim, self.scaling = first.head_dim, first.scaling
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.layers = [_Layer(
            ln1=m.input_layernorm.weight, eps1=m.input_layernorm.variance_epsilon,
            q=_projection(m.self_attn.q_proj), k=_projection(m.self_attn.k_proj), v=_projection(m.self_attn.v_proj),
            o=_projection(m.self_attn.o_proj),
            ln2=m.post_attention_layernorm.weight, eps2=m.post_attention_layernorm.variance_epsilon,
            gate=m.mlp.gate_proj.weight.t(), up=m.mlp.up_proj.weight.t(), down=m.mlp.down_proj.weight.t())
            for m in model.layers]
        self.cache_layers = list(layers)
        # The attention's batched-matmul operands as views of the whole buffers, (B * KV, D, S) keys^T and
        # (B * KV, S, D) values: torch.matmul flattens the (B, KV, ...) views of the cache to these same strides.
        self.keys_t = [c.key_buffer.flatten(0, 1).transpose(1, 2) for c in self.cache_layers]
        self.values = [c.value_buffer.flatten(0, 1) for c in self.cache_layers]
        # masked_fill's condition, (B, 1, 1, S): True = a padded key, never attended
        self.padded = None if padding_mask is None else ~padding_mask.bool()[:, None, None, :]
        half = self.head_dim // 2
        self.perm = torch.cat([torch.arange(half, self.head_dim), torch.arange(half)])  # rotate_half as a gather

    def _rms_norm(self, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        """Qwen2RMSNorm: in fp32, back to the input dtype, times the weight."""
        if x.dtype == torch.float32:
            return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        return weight * h.to(x.dtype)

    def _rotate(self, x: Tensor, cos: Tensor, sin_signed: Tensor) -> Tensor:
        """apply_rotary_pos_emb: x * cos + rotate_half(x) * sin, rotate_half(x) * sin = x[..., perm] * sin_signed."""
        return x * cos + x.index_select(-1, self.perm) * sin_signed

    def step(self, tokens: Tensor, positions: Tensor, length: int) -> Tensor:
        """tokens (B,) long; positions (B, 1) long; length: cache columns filled so far (the new token's column).
        Returns (B, V) fp32 logits."""
        B = tokens.shape[0]
        D, H, KV = self.head_dim, self.heads, self.kv_heads
        fp32 = self.dtype == torch.float32
        x = self.embed.index_select(0, tokens)  # (B, hidden)
        # rotary embedding, as Qwen2RotaryEmbedding.forward computes it for (B, 1) positions (attention_scaling 1)
        freqs = positions[..., None].float() * self.inv_freq  # (B, 1, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        sin_signed = torch.cat((-sin[..., :D // 2], sin[..., D // 2:]), dim=-1)  # rotate_half's signs
        if not fp32:
            cos, sin_signed = cos.to(self.dtype), sin_signed.to(self.dtype)
        end, G = length + 1, H // KV
        padded = None if self.padded is None else self.padded[..., :end]  # (B, 1, 1, S)
        for w, cache, keys_t, values in zip(self.layers, self.cache_layers, self.keys_t, self.values, strict=True):
            h = self._rms_norm(x, w.ln1, w.eps1)
            q = self._rotate(_linear(h, *w.q).view(B, H, D), cos, sin_signed)  # cos (B, 1, D): over heads
            cache.key_buffer.select(2, length).copy_(self._rotate(_linear(h, *w.k).view(B, KV, D), cos, sin_signed))
            cache.value_buffer.select(2, length).copy_(_linear(h, *w.v).view(B, KV, D))
            # rollout.cpu_attention_forward: query heads grouped by their key/value head (head = kv * G + j)
            scores = torch.bmm(q.view(B * KV, G, D), keys_t.narrow(2, 0, end)) * self.scaling  # (B * KV, G, S)
            if padded is not None:
                scores = scores.view(B, KV, G, end).masked_fill(padded, float("-inf"))
            probs = torch.softmax(scores if fp32 else scores.float(), dim=-1)
            if not fp32:
                probs = probs.to(values.dtype)
            attn = torch.bmm(probs.view(B * KV, G, end), values.narrow(1, 0, end))  # (B * KV, G, D)
            x = x + _linear(attn.view(B, H * D), *w.o)
            h = self._rms_norm(x, w.ln2, w.eps2)
            x = x + torch.mm(F.silu(torch.mm(h, w.gate)) * torch.mm(h, w.up), w.down)
        logits = _linear(self._rms_norm(x, self.norm, self.norm_eps), *self.head)
        return logits if fp32 else logits.float()

    def sync_cache(self, length: int) -> None:
        """Point the cache layers' `keys` / `values` at the first `length` columns (what `update` would have left)."""
        for cache in self.cache_layers:
            cache.keys, cache.values = cache.key_buffer[:, :, :length], cache.value_buffer[:, :, :length]
