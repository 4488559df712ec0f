"""`Rollouts`, the record every rollout backend returns, and the prompt encoding the backends share.

Layout of a record: response `i` answers problem `i // K` (groups are contiguous, as `advantages`
expects); prompts are left-padded to a common length P, completions right-padded to T.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from eureka_kit.data.prompts import prompt_text
from eureka_kit.models import tokenizer_of

PLACEHOLDER_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<image>", "<IMG_CONTEXT>",
                      "<img>", "</img>")


@dataclass
class Rollouts:
    """One batch of sampled responses (B = prompts x K rows).

    prompt_ids [B, P] left-padded, prompt_mask [B, P]; completion_ids [B, T] right-padded,
    completion_mask [B, T] (1 up to and including EOS); behavior_logp [B, T] fp32 log-probs of the sampled
    tokens under the distribution the sampler actually drew from (mu: its weights and precision, after
    temperature, top-k, top-p; `extras["has_behavior_logp"]` False when a backend could not record them); texts: decoded completions;
    finish_reasons: "stop" | "length"; problem_index [B]: row of `problems` each response answers;
    mm_inputs: per-row multimodal tensors (e.g. pixel_values split by row) or None.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    behavior_logp: Tensor
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
            behavior_logp=self.behavior_logp[index], texts=[self.texts[i] for i in rows],
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
            behavior_logp=torch.cat([pad_right(p.behavior_logp, 0.0) for p in parts]),
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


def placeholder_token_ids(tok) -> list[int]:
    """Ids of multimodal placeholder tokens the tokenizer knows (never to be sampled)."""
    vocab = tok.get_vocab()
    return sorted(vocab[t] for t in PLACEHOLDER_TOKENS if t in vocab)

