"""PRM signal inside RL (our extension; MM-PRM has none, PRM.md §5): step-level advantages and shaped rewards.

Step advantage (PRIME / step-level style), per response i of group g, token t inside step k(t):

    A[i, t] = A_out[i] + w * (p[i, k(t)] - b[g]),    b[g] = mean of p over every scored step in group g

A_out is the outcome advantage of any estimator (GRPO z-score, RLOO, ...), p the PRM's P(Yes) per step (the
answer counts as the last step), w >= 0 the process weight. Tokens outside every step (k(t) = -1: tags
between steps, EOS) get A_out alone; padding (mask 0) gets 0. Centering on the group's mean step score keeps
the process term zero-mean over the group's scored steps, so it redistributes credit between steps and
responses without adding a bias. The result is a (B, T) advantage, which is what the clipped surrogates in
losses.py (CPGD's clipped log-ratio included) already consume: clipping and drift act per token as before.

Shaped reward (outcome + process at the sequence level): r'[i] = r[i] + w * agg(p[i]) with a bestofn
aggregation (default min, the best BoN aggregation in MM-PRM's K12 table after average), then any group
advantage; empty step lists aggregate to 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from eureka_kit.bestofn import aggregate
from eureka_kit.steps import STEP_RE


def step_advantages(outcome_adv: Tensor, step_scores: Tensor, step_mask: Tensor, token_step: Tensor, mask: Tensor,
                    group_size: int, w: float) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token advantages = outcome advantage + w * (step score - group mean step score).

    Args:
        outcome_adv: (B,) float, one advantage per response (B = groups x group_size, groups contiguous).
        step_scores: (B, S) float PRM P(Yes) per step, padded.
        step_mask: (B, S) bool, True where a step exists.
        token_step: (B, T) long, the step of each completion token, -1 outside every step.
        mask: (B, T) completion mask.
        group_size: G.
        w: process weight (0 gives back the broadcast outcome advantage).
    Returns:
        ((B, T) float advantages, {"process/baseline_mean", "process/term_abs_mean"}).
    Example: G=2, A_out=[1, -1], p=[[.9, .5], [.2, pad]], w=1: b = (.9+.5+.2)/3 = .5333;
        response 0 step tokens get 1 + .3667 and 1 - .0333, response 1's get -1 - .3333.
    """
    B, S = step_scores.shape
    m = step_mask.float()
    grouped = lambda x: x.view(B // group_size, group_size * S).sum(dim=1)  # noqa: E731  (B/G,)
    baseline = (grouped(step_scores * m) / grouped(m).clamp(min=1)).repeat_interleave(group_size)  # (B,)
    centered = (step_scores - baseline[:, None]) * m  # (B, S), 0 on padding
    idx = token_step.clamp(min=0)
    per_token_process = torch.gather(centered, 1, idx) * (token_step >= 0)  # (B, T)
    adv = (outcome_adv[:, None] + w * per_token_process) * mask
    in_step = (token_step >= 0) & mask.bool()
    stats = {"process/baseline_mean": baseline.mean(),
             "process/term_abs_mean": (w * per_token_process).abs()[in_step].mean() if in_step.any()
             else torch.tensor(0.0)}
    return adv, stats


def shaped_rewards(rewards: Tensor, step_scores: list[list[float]], w: float, how: str = "min") -> Tensor:
    """r' = r + w * aggregate(step scores, how); (B,) float."""
    process = torch.tensor([aggregate(s, how) for s in step_scores], dtype=torch.float32)
    return rewards.float() + w * process


def token_step_index(tok, completion_ids: Tensor, mask: Tensor) -> tuple[Tensor, list[int]]:
    """Step index of every completion token, from `<step>…</step>`/`<answer>…</answer>` char spans.

    Each token's char span comes from the lengths of its own decode (exact for char-level and for whole-char
    BPE tokens; a byte-fallback token splitting one character may shift a boundary by a token). The answer is
    the step after the last `<step>`. Returns ((B, T) long, steps per row incl. the answer).
    """
    B, T = completion_ids.shape
    out = torch.full((B, T), -1, dtype=torch.long)
    counts = []
    for b in range(B):
        ids = completion_ids[b][mask[b].bool()].tolist()
        pieces = [tok.decode([i], skip_special_tokens=False) for i in ids]
        text = "".join(pieces)
        spans = []
        for m in STEP_RE.finditer(text):
            spans.append(m.span())
            if m.group(2) is not None:
                break
        counts.append(len(spans))
        pos, k = 0, 0
        for t, piece in enumerate(pieces):
            start, pos = pos, pos + len(piece)
            while k < len(spans) and spans[k][1] <= start:
                k += 1
            if k < len(spans) and spans[k][0] < pos:  # the token overlaps step k
                out[b, t] = k
    return out, counts
