"""Rollouts: sample K completions per prompt and return one `Rollouts` record.

Backends sit behind one function, `generate(backend, policy, processor, problems, cfg, generator)`:
`hf` (transformers `generate`, batched, sampling parameters from the config, multimodal inputs through
the processor) is implemented here. The `vllm` backend is not implemented yet and raises a clear error.

Layout of a record: response `i` answers problem `i // K` (groups are contiguous, as `advantages`
expects); prompts are left-padded to a common length P, completions right-padded to T.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from eureka_kit.models import tokenizer_of
from eureka_kit.tasks.prompts import prompt_text


@dataclass
class Rollouts:
    """One batch of sampled responses (B = prompts x K rows).

    prompt_ids [B, P] left-padded, prompt_mask [B, P]; completion_ids [B, T] right-padded,
    completion_mask [B, T] (1 up to and including EOS); rollout_logp [B, T] fp32 log-probs of the sampled
    tokens under the sampling distribution (temperature applied); texts: decoded completions;
    finish_reasons: "stop" | "length"; problem_index [B]: row of `problems` each response answers;
    mm_inputs: per-row multimodal tensors (e.g. pixel_values split by row) or None.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    rollout_logp: Tensor
    texts: list[str]
    finish_reasons: list[str]
    problem_index: Tensor
    problems: list[dict]
    mm_inputs: list[dict[str, Tensor]] | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def lengths(self) -> Tensor:
        return self.completion_mask.sum(dim=1)

    @property
    def truncated(self) -> Tensor:
        return torch.tensor([r == "length" for r in self.finish_reasons])

    def select(self, index: Tensor) -> Rollouts:
        """The rows `index` (a LongTensor), keeping everything aligned."""
        rows = index.tolist()
        return Rollouts(
            prompt_ids=self.prompt_ids[index], prompt_mask=self.prompt_mask[index],
            completion_ids=self.completion_ids[index], completion_mask=self.completion_mask[index],
            rollout_logp=self.rollout_logp[index], texts=[self.texts[i] for i in rows],
            finish_reasons=[self.finish_reasons[i] for i in rows], problem_index=self.problem_index[index],
            problems=self.problems, mm_inputs=None if self.mm_inputs is None else [self.mm_inputs[i] for i in rows],
            extras=dict(self.extras),
        )

    @staticmethod
    def concat(parts: list[Rollouts]) -> Rollouts:
        """Join rollouts (pads to the widest prompt/completion); problem indices are re-based."""
        problems, index, offset = [], [], 0
        for part in parts:
            problems.extend(part.problems)
            index.append(part.problem_index + offset)
            offset += len(part.problems)
        P = max(p.prompt_ids.shape[1] for p in parts)
        T = max(p.completion_ids.shape[1] for p in parts)
        pad_left = lambda x, v: torch.nn.functional.pad(x, (P - x.shape[1], 0), value=v)  # noqa: E731
        pad_right = lambda x, v: torch.nn.functional.pad(x, (0, T - x.shape[1]), value=v)  # noqa: E731
        pad_id = parts[0].extras.get("pad_id", 0)
        mm = None if parts[0].mm_inputs is None else [m for p in parts for m in p.mm_inputs]
        return Rollouts(
            prompt_ids=torch.cat([pad_left(p.prompt_ids, pad_id) for p in parts]),
            prompt_mask=torch.cat([pad_left(p.prompt_mask, 0) for p in parts]),
            completion_ids=torch.cat([pad_right(p.completion_ids, pad_id) for p in parts]),
            completion_mask=torch.cat([pad_right(p.completion_mask, 0) for p in parts]),
            rollout_logp=torch.cat([pad_right(p.rollout_logp, 0.0) for p in parts]),
            texts=[t for p in parts for t in p.texts],
            finish_reasons=[r for p in parts for r in p.finish_reasons],
            problem_index=torch.cat(index), problems=problems, mm_inputs=mm, extras=dict(parts[0].extras),
        )


def encode_prompts(processor, problems: list[dict], template: str, multimodal: bool, max_prompt_len: int,
                   pad_to_multiple_of: int | None = None):
    """Tokenize prompts (left-padded). Returns (input_ids [N, P], attention_mask [N, P], per-row mm dicts|None).

    `pad_to_multiple_of` keeps the padded width on a few values, so a compiled static-cache decode is
    not recompiled for every new prompt width.
    """
    tok = tokenizer_of(processor)
    texts = [prompt_text(processor, p, template, multimodal=multimodal) for p in problems]
    tok.padding_side = "left"
    if multimodal:
        images = [p["image"] for p in problems]
        enc = processor(text=texts, images=images, return_tensors="pt", padding=True,
                        pad_to_multiple_of=pad_to_multiple_of)
        mm = split_pixel_values(enc["pixel_values"], enc["image_grid_thw"])
    else:
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False,
                  pad_to_multiple_of=pad_to_multiple_of)
        mm = None
    too_long = (enc["attention_mask"].sum(dim=1) > max_prompt_len).nonzero()
    if len(too_long):
        i = int(too_long[0])
        raise ValueError(f"max_prompt_len: prompt of problem {problems[i].get('id', i)!r} has "
                         f"{int(enc['attention_mask'][i].sum())} tokens > {max_prompt_len}")
    return enc["input_ids"], enc["attention_mask"], mm


def split_pixel_values(pixel_values: Tensor, grid_thw: Tensor) -> list[dict[str, Tensor]]:
    """Qwen2-VL style processors concatenate patches of all images; split them back per row (1 image/row)."""
    counts = grid_thw.prod(dim=1).tolist()
    chunks = torch.split(pixel_values, counts)
    return [{"pixel_values": c, "image_grid_thw": g[None]} for c, g in zip(chunks, grid_thw, strict=True)]


def merge_mm(rows: list[dict[str, Tensor]] | None) -> dict[str, Tensor]:
    """Inverse of `split_pixel_values` for a micro-batch of rows."""
    if not rows:
        return {}
    return {key: torch.cat([r[key] for r in rows]) for key in rows[0]}


@torch.no_grad()
def generate_hf(policy, processor, problems: list[dict], cfg, generator: torch.Generator | None = None,
                *, num_samples: int | None = None, greedy: bool = False) -> Rollouts:
    """Sample `num_samples` (default `cfg.group_size`) completions per problem with transformers `generate`.

    `greedy=True` decodes greedily (evaluation protocol, ALGORITHMS.md §4.3); rollout_logp then holds the
    temperature-1 log-probs of the chosen tokens.
    """
    tok = tokenizer_of(processor)
    device = next(policy.parameters()).device
    on_gpu = device.type == "cuda"
    ids, attn, mm = encode_prompts(processor, problems, cfg.prompt_template, cfg.multimodal, cfg.max_prompt_len,
                                   pad_to_multiple_of=64 if on_gpu else None)
    K = num_samples or cfg.group_size
    ids, attn = ids.repeat_interleave(K, dim=0), attn.repeat_interleave(K, dim=0)
    mm_rows = None if mm is None else [m for m in mm for _ in range(K)]
    if generator is not None:  # transformers samples from the global RNG; seed it from ours
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    was_training = policy.training
    policy.eval()
    # On CUDA a static KV cache lets transformers compile the decode step (10x over the dynamic cache at
    # B=256 on one H200, ANCHORS.md); on CPU the dynamic cache is faster for tiny models.
    # No autocast here: the static cache is allocated in the weights' dtype and autocast's bf16 k/v would not
    # fit it (seen on an H200). Rollouts run in the model's dtype: load the model in bf16 for fast rollouts.
    speed = dict(cache_implementation="static") if on_gpu else {}
    # In a vision-language model a sampled image placeholder would desynchronise image features and tokens in
    # the learner's forward, so they are suppressed. (The sampling distribution is then renormalised without
    # them: rollout/logp_mismatch shows their mass, ~0 for a trained model.)
    banned = placeholder_token_ids(tok) if hasattr(policy.config, "vision_config") else []
    out = policy.generate(
        input_ids=ids.to(device), attention_mask=attn.to(device),
        **{k: v.to(device) for k, v in merge_mm(mm_rows).items()},
        **(dict(do_sample=False) if greedy else dict(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)),
        max_new_tokens=cfg.max_len, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        # Per-step scores cost B x T x V memory (40 GB at B=256, T=256, V=151,936): keep them on CPU only,
        # where they give the rollout-vs-learner log-prob check; on GPU the learner's old_logp is used.
        output_scores=not on_gpu, return_dict_in_generate=True, suppress_tokens=banned or None, **speed,
    )
    policy.train(was_training)
    completion = out.sequences[:, ids.shape[1]:].cpu()
    # Log-probs under the sampling distribution: scores are the processed (temperature, top-p) logits.
    # Gather step by step so a [B, T, V] tensor never exists (V = 151,936 for Qwen).
    chosen = out.sequences[:, ids.shape[1]:]
    if out.scores is not None:
        logp = torch.stack([torch.log_softmax(s.float(), dim=-1).gather(-1, chosen[:, t:t + 1]).squeeze(-1)
                            for t, s in enumerate(out.scores)], dim=1).cpu()  # (B, T)
    else:
        logp = torch.zeros(chosen.shape, dtype=torch.float32)
    is_eos = completion == tok.eos_token_id
    # valid = every token up to and including the first EOS
    mask = ((is_eos.cumsum(dim=1) - is_eos.long()) == 0).long()
    finished = is_eos.any(dim=1)
    # Decode without skip_special_tokens: <think>/<answer> may be special tokens and the reward needs them.
    texts = [tok.decode(row[(m == 1) & (row != tok.eos_token_id)].tolist(), skip_special_tokens=False)
             for row, m in zip(completion, mask, strict=True)]
    return Rollouts(
        prompt_ids=ids, prompt_mask=attn, completion_ids=completion, completion_mask=mask,
        rollout_logp=torch.where(mask.bool(), logp, torch.zeros_like(logp)), texts=texts,
        finish_reasons=["stop" if f else "length" for f in finished.tolist()],
        problem_index=torch.arange(len(problems)).repeat_interleave(K), problems=list(problems),
        mm_inputs=mm_rows, extras={"pad_id": tok.pad_token_id, "has_rollout_logp": out.scores is not None},
    )


PLACEHOLDER_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<image>", "<IMG_CONTEXT>",
                      "<img>", "</img>")


def placeholder_token_ids(tok) -> list[int]:
    """Ids of multimodal placeholder tokens the tokenizer knows (never to be sampled)."""
    vocab = tok.get_vocab()
    return sorted(vocab[t] for t in PLACEHOLDER_TOKENS if t in vocab)


def generate_vllm(policy, processor, problems, cfg, generator=None, **kwargs) -> Rollouts:
    raise NotImplementedError(
        "rollout_backend: 'vllm' is not available in this build yet; use rollout_backend='hf'"
    )


BACKENDS = {"hf": generate_hf, "vllm": generate_vllm}


def generate(policy, processor, problems: list[dict], cfg, generator: torch.Generator | None = None,
             **kwargs) -> Rollouts:
    """Dispatch to `cfg.rollout_backend` (kwargs: num_samples, greedy)."""
    return BACKENDS[cfg.rollout_backend](policy, processor, problems, cfg, generator, **kwargs)
