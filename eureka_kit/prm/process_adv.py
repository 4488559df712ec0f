"""PRM signal inside RL (our extension; MM-PRM has none): step-level advantages and shaped rewards.

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

`ProcessSignal` is the PRM's signal for the loop's hook (`engine.signals`, registered below for both process
modes): the PRM, loaded once, and `apply(ro, scored, adv, mask)`, which scores every rollout's steps after the
rewards and returns the advantages the loss consumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from eureka_kit.algos import advantages
from eureka_kit.config import ConfigError, RunConfig
from eureka_kit.engine import signals
from eureka_kit.prm.bestofn import aggregate
from eureka_kit.prm.model import process_for_scoring, score_processes
from eureka_kit.prm.steps import STEP_RE, parse_steps


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
            if m.group(2) is not None:
                spans.append(m.span())
                break
            if m.group(1).strip():  # parse_steps drops empty steps: keep the indices aligned with its list
                spans.append(m.span())
        counts.append(len(spans))
        pos, k = 0, 0
        for t, piece in enumerate(pieces):
            start, pos = pos, pos + len(piece)
            while k < len(spans) and spans[k][1] <= start:
                k += 1
            if k < len(spans) and spans[k][0] < pos:  # the token overlaps step k
                out[b, t] = k
    return out, counts


def pad_scores(step_scores: list[list[float]]) -> tuple[Tensor, Tensor]:
    """Ragged step scores -> ((B, S) float, zero-padded; (B, S) bool step mask), S >= 1."""
    S = max([len(s) for s in step_scores] + [1])
    scores = torch.zeros(len(step_scores), S)
    step_mask = torch.zeros(len(step_scores), S, dtype=torch.bool)
    for b, s in enumerate(step_scores):
        scores[b, :len(s)], step_mask[b, :len(s)] = torch.tensor(s, dtype=torch.float32), True
    return scores, step_mask


@dataclass
class ProcessSignal:
    """The PRM of a run (loaded once) and the config's process knobs."""

    prm: Any
    prm_processor: Any
    cfg: RunConfig

    @classmethod
    def from_config(cls, cfg: RunConfig, device: torch.device) -> ProcessSignal | None:
        """None when `process_mode` is "none"; otherwise the PRM at `prm_path` on `device`, frozen."""
        if cfg.process_mode == "none":
            return None
        if not cfg.prm_path:
            raise ConfigError(f"prm_path: process_mode={cfg.process_mode!r} needs prm_path, a local PRM folder "
                              "(`eureka-kit prm train`); set prm_path or process_mode='none'")
        from eureka_kit.models import load

        prm, proc = load(cfg.prm_path, trust_remote_code=cfg.trust_remote_code)
        return cls(prm.to(device).eval().requires_grad_(False), proc, cfg)

    def score(self, ro) -> list[list[float]]:
        """P(Yes) per step of every response (answer = last step; [] when nothing parses)."""
        parsed = [parse_steps(t).rollout for t in ro.texts]
        questions = [ro.problems[i]["question"] for i in ro.problem_index.tolist()]
        # the training layout (markers followed by "\n\n"): the layout the PRM's labels were read in
        items = [(q, process_for_scoring(list(r), sep="\n\n")) for q, r in zip(questions, parsed, strict=True) if r]
        scored = iter(score_processes(self.prm, self.prm_processor, items))
        return [next(scored) if r else [] for r in parsed]

    def apply(self, ro, scored: dict[str, Tensor], adv: Tensor, mask: Tensor, tokenizer
              ) -> tuple[Tensor, dict[str, float]]:
        """Outcome + process advantages for one rollout batch.

        Args:
            ro: the step's Rollouts (B responses, groups contiguous).
            scored: the step's rewards; "total" (B,) is the outcome reward.
            adv: (B,) outcome advantages (`train()`'s, estimator and CPGD weight applied).
            mask: (B, T) loss mask.
            tokenizer: the policy's tokenizer (token -> step alignment).
        Returns:
            ((B, T) step advantages or (B,) advantages of the shaped reward, {"process/*": float}).
        """
        cfg = self.cfg
        step_scores = self.score(ro)
        flat = [p for s in step_scores for p in s]
        metrics = {"process/step_score_mean": sum(flat) / len(flat) if flat else float("nan"),
                   "process/parsed_frac": sum(bool(parse_steps(t).steps) for t in ro.texts) / len(ro.texts)}
        if cfg.process_mode == "shaped_reward":
            shaped = shaped_rewards(scored["total"], step_scores, cfg.process_weight, cfg.prm_aggregation)
            metrics["process/shaped_reward_mean"] = shaped.mean().item()
            return advantages.for_config(shaped, ro.lengths.float(), cfg), metrics
        token_step, counts = token_step_index(tokenizer, ro.completion_ids, ro.completion_mask)
        # A step the tokens do not show (a rare decode mismatch) is dropped rather than misaligned.
        step_scores = [s[:c] for s, c in zip(step_scores, counts, strict=True)]
        scores, step_mask = pad_scores(step_scores)
        token_step = torch.where(token_step < scores.shape[1], token_step, -1)
        G = cfg.group_size if len(ro.texts) % cfg.group_size == 0 else 1
        adv, stats = step_advantages(adv, scores, step_mask, token_step, mask, G, cfg.process_weight)
        metrics.update({k: float(v) for k, v in stats.items()})
        return adv, metrics


for _mode in ("step_advantage", "shaped_reward"):
    signals.register(_mode, ProcessSignal.from_config)
