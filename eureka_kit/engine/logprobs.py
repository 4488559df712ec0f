"""Per-token log-probs of rollouts' completions under a policy: the learner's forward, shared by RL and SFT.

Only the completion positions are projected through the output head, chunked (`algos.ops`), so no [B, T, V]
fp32 tensor is ever built; groups that share a prompt run its prefix once (`rollout.shared_prompt_hidden`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from eureka_kit.algos import ops
from eureka_kit.config import RunConfig
from eureka_kit.engine import rollout
from eureka_kit.engine.batch import Rollouts, merge_mm


def completion_hidden(policy, ro: Rollouts, rows: Tensor, cfg: RunConfig):
    """The learner's final hidden states at the positions that predict `ro`'s completion tokens `rows`.

    Runs the backbone once over prompt + completion; when the rows are whole groups sharing a prompt, each prompt
    runs once (`rollout.shared_prompt_hidden`). Returns (hidden [b, T, H], head weight, head bias or None,
    targets [b, T]) on the policy's device, in bf16 when `cfg.bf16` on CUDA, ready for `ops`' chunked head.
    """
    device = next(policy.parameters()).device
    prompt_ids, prompt_mask = ro.prompt_ids[rows], ro.prompt_mask[rows]
    completion_ids, completion_mask = ro.completion_ids[rows], ro.completion_mask[rows]
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1).to(device)
    attention = torch.cat([prompt_mask, completion_mask], dim=1).to(device)
    kwargs: dict[str, Tensor] = {}
    if ro.mm_inputs is not None:
        kwargs = {k: v.to(device) for k, v in merge_mm([ro.mm_inputs[i] for i in rows.tolist()]).items()}
    if not hasattr(policy.config, "vision_config"):
        # Left-padded prompts: positions must count real tokens only (VL models derive their own M-RoPE ids).
        kwargs["position_ids"] = (attention.cumsum(dim=1) - 1).clamp(min=0)
    P = prompt_ids.shape[1]
    # on CPU, grouped key/value heads attend without transformers' repeat_kv copies (rollout.cpu_attention)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda"), \
            rollout.cpu_attention(policy):
        if rollout.can_share_prompts(policy, prompt_ids, completion_ids, cfg.group_size, ro.mm_inputs is not None):
            hidden = rollout.shared_prompt_hidden(policy, input_ids, attention, kwargs["position_ids"], P,
                                                  cfg.group_size)
        else:
            hidden = policy.model(input_ids=input_ids, attention_mask=attention, use_cache=False,
                                  **kwargs).last_hidden_state
            hidden = hidden[:, P - 1 : -1]  # position t predicts completion token t
    head = policy.get_output_embeddings()
    weight, bias = head.weight, getattr(head, "bias", None)
    if cfg.bf16 and device.type == "cuda":
        # Autocast leaves the final hidden state in fp32; run the head matmuls in bf16 (softmax stays fp32 in ops).
        hidden, weight = hidden.to(torch.bfloat16), weight.to(torch.bfloat16)
        bias = None if bias is None else bias.to(torch.bfloat16)
    return hidden, weight, bias, completion_ids.to(device)


def completion_logprobs(policy, ro: Rollouts, rows: Tensor, cfg: RunConfig, *, with_entropy: bool = False):
    """Per-token log-probs (at the sampling temperature, or `cfg.learner_temperature` when set: an injected
    mismatch) of `ro`'s completions `rows` under `policy`. Never top-k/top-p truncated: pi_old is the full
    distribution, as in every peer framework (truncated sampling is a mismatch the metrics show).

    Projects only the completion positions (`completion_hidden`), chunked: never a [B, T, V] fp32 tensor
    (under ZeRO-3 the head runs as a module call, so one micro-batch's logits exist in the model's dtype).
    Returns logp [b, T] fp32 (and entropy [b, T] when asked).
    """
    hidden, weight, bias, targets = completion_hidden(policy, ro, rows, cfg)
    temperature = cfg.learner_temperature or cfg.temperature
    if hasattr(weight, "ds_id"):  # DeepSpeed ZeRO-3: the head's weight is whole only inside its module's call
        logits = policy.get_output_embeddings()(hidden.to(weight.dtype))
        return ops.token_logprobs_from_logits(logits, targets, chunk_size=cfg.logprob_chunk_size,
                                              temperature=temperature, return_entropy=with_entropy)
    return ops.token_logprobs_from_hidden(hidden, weight, targets, chunk_size=cfg.logprob_chunk_size, bias=bias,
                                          temperature=temperature, return_entropy=with_entropy)


def takes_old_logp_from_learner(cfg: RunConfig, B: int, world_size: int = 1) -> bool:
    """True when this rank's step of B responses is exactly on-policy: one epoch and one optimizer step over
    the whole batch (a rank's minibatch is train_batch_size / world_size), so every micro-batch's learner
    forward runs the weights that sampled the rollouts. Its detached log-probs and entropy are then old_logp
    and the logged entropy (ratio = 1), and the separate no-grad pass (`batched_logprobs`, ~12% of a CPU
    step) is skipped -- as TRL does with num_iterations=1."""
    return cfg.update_epochs == 1 and cfg.train_batch_size // world_size >= B


@torch.no_grad()
def batched_logprobs(policy, ro: Rollouts, cfg: RunConfig, *, with_entropy: bool = False):
    """`completion_logprobs` over every row of `ro` in micro-batches, without gradient (on CPU)."""
    outs, ents = [], []
    for rows in torch.arange(len(ro.texts)).split(cfg.micro_batch_size):
        out = completion_logprobs(policy, ro, rows, cfg, with_entropy=with_entropy)
        logp, ent = out if with_entropy else (out, None)
        outs.append(logp.float().cpu())
        if with_entropy:
            ents.append(ent.float().cpu())
    logp = torch.cat(outs)
    return (logp, torch.cat(ents)) if with_entropy else logp

