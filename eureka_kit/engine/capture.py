"""Pre-collapse captures: the whole batch and the policy weights of a step where a collapse sentinel fired.

    <run>/captures/step_XXXXXX/
        start/             the policy at the start of the step (before its first optimizer step), with its config
                           and tokenizer: `models.load(path)` loads it
        end/               the policy after the step's last optimizer step (the next rollout's weights)
        batch.safetensors  prompt_ids, prompt_mask, completion_ids, completion_mask [B, P] / [B, T]; loss_mask,
                           old_logp (pi_old), new_logp, entropy, behavior_logp (mu, when the sampler recorded it),
                           ref_logp (when a reference KL is on) [B, T]; epoch_logp [E, B, T] (the learner's
                           log-probs in each update epoch); rewards, accuracy [B]; advantages [B] or [B, T]
        capture.json       step, the warnings that fired, the step's config and metrics, the rows' problems, texts
                           and finish reasons, and every micro-batch of the update in order with its loss stats

`train` makes two calls: `Capturer.before_update` copies the weights to CPU while captures are left (and the model
is within `capture_max_bytes`), `Capturer.after_step` checks the step's metrics against the sentinels
(`diagnostics.sentinels_at`, thresholds `cfg.sentinels` over SENTINEL_DEFAULTS) and writes the capture when one of
CAPTURE_KINDS fired, returning capture/* metrics for the step's line. Every micro-batch of the step's first
minibatch ran on the start weights, so `recompute_loss(capture, start_policy, micro=i)` reproduces its logged
loss; with one minibatch of one micro-batch and one epoch that is the step's `loss/total`.
Single-process runs with the plain torch learner only (the batch of one rank is not the step's batch).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from eureka_kit.algos import diagnostics, losses
from eureka_kit.config import RunConfig
from eureka_kit.engine.batch import Rollouts
from eureka_kit.engine.logprobs import completion_logprobs
from eureka_kit.engine.runs import RunDir

# The sentinels that keep a capture: a collapse of the update itself (format divergence is reward hacking).
CAPTURE_KINDS = ("ratio_tail", "entropy_slope", "length_collapse", "nonfinite_steps")


def weight_bytes(policy) -> int:
    """Bytes of the policy's parameters and buffers (tied tensors counted once)."""
    seen: dict[int, int] = {}
    for t in [*policy.parameters(), *policy.buffers()]:
        seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


def cpu_state_dict(policy) -> dict[str, Tensor]:
    """A CPU copy of the state dict; tensors shared in the model (tied embeddings) stay shared in the copy."""
    copies: dict[int, Tensor] = {}
    return {k: copies.setdefault(v.data_ptr(), v.detach().to("cpu", copy=True)) for k, v in policy.state_dict().items()}


class Capturer:
    """Keeps at most `cfg.max_captures` captures of a run in `<run>/captures` (a resumed run counts its own)."""

    def __init__(self, cfg: RunConfig, run_dir, world, processor=None):
        single = world.size == 1 and cfg.zero_stage == 0
        self.cfg, self.processor = cfg, processor
        self.limit = cfg.max_captures if single else 0
        self.count = len(RunDir(run_dir.path).captures()) if self.limit else 0
        self.root = Path(run_dir.path) / "captures"
        self._start: dict[str, Tensor] | None = None
        self._too_large = 0

    def before_update(self, policy) -> None:
        """Copy the weights to CPU, while captures are left and the model is within `capture_max_bytes`."""
        self._start, self._too_large = None, 0
        if self.count >= self.limit:
            return
        size = weight_bytes(policy)
        if size > self.cfg.capture_max_bytes:
            self._too_large = size
            return
        self._start = cpu_state_dict(policy)

    def after_step(self, step: int, history: list[dict[str, float]], ro: Rollouts, scored: dict[str, Tensor],
                   adv: Tensor, mask: Tensor, upd, policy) -> dict[str, float]:
        """Write the capture of `step` when a sentinel of CAPTURE_KINDS fires on `history` (whose last entry is this
        step's metrics); returns capture/saved = 1, or capture/skipped_bytes (the model's size) when it was too
        large, capture/skipped_multimodal = 1 for a multimodal batch; {} when nothing fired or no capture is left."""
        start, self._start = self._start, None
        if self.count >= self.limit:
            return {}
        fired = [w for w in diagnostics.sentinels_at(history, **self.cfg.sentinels) if w["kind"] in CAPTURE_KINDS]
        if not fired:
            return {}
        if self._too_large:
            return {"capture/skipped_bytes": float(self._too_large)}
        if ro.mm_inputs is not None:
            return {"capture/skipped_multimodal": 1.0}
        if start is None:  # no copy of the start weights was made for this step (before_update not called)
            return {}
        self._write(step, fired, history[-1], start, ro, scored, adv, mask, upd, policy)
        self.count += 1
        return {"capture/saved": 1.0}

    def _write(self, step, fired, metrics, start, ro: Rollouts, scored, adv, mask, upd, policy) -> Path:
        final = self.root / f"step_{step:06d}"
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, state in (("start", start), ("end", None)):
            policy.save_pretrained(tmp / name, state_dict=state, safe_serialization=True)
            if self.processor is not None:
                self.processor.save_pretrained(tmp / name)
        tensors = dict(prompt_ids=ro.prompt_ids, prompt_mask=ro.prompt_mask, completion_ids=ro.completion_ids,
                       completion_mask=ro.completion_mask, loss_mask=mask, old_logp=upd.old_logp,
                       new_logp=upd.new_logp, entropy=upd.entropy, rewards=scored["total"],
                       accuracy=scored["accuracy"], advantages=adv,
                       epoch_logp=torch.stack(upd.epoch_logps) if upd.epoch_logps else upd.new_logp[None].clone())
        if ro.extras.get("has_behavior_logp"):
            tensors["behavior_logp"] = ro.behavior_logp
        if upd.ref_logp is not None:
            tensors["ref_logp"] = upd.ref_logp
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp / "batch.safetensors")
        cfg = self.cfg.stage_config(self.cfg.stage_at(step))
        problems = [ro.problems[i] for i in ro.problem_index.tolist()]
        meta = dict(step=step, warnings=fired, config=cfg.to_dict(), metrics=metrics,
                    problems=[{"id": p.get("id"), "answer": str(p.get("answer")), "subject": p.get("subject", "math"),
                               "level": p.get("level")} for p in problems],
                    texts=list(ro.texts), finish_reasons=list(ro.finish_reasons),
                    micro_batches=[dict(epoch=e, minibatch=m, rows=rows, stats=stats)
                                   for (e, m, rows), stats in zip(upd.micro_batches, upd.stats, strict=True)])
        (tmp / "capture.json").write_text(json.dumps(meta, indent=1, default=float))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        return final


# ---------------------------------------------------------------------------------------------
# Reading a capture back.


@dataclass
class Capture:
    """One capture folder: `tensors` (batch.safetensors) and `meta` (capture.json)."""

    path: Path
    tensors: dict[str, Tensor]
    meta: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @cached_property
    def config(self) -> RunConfig:
        """The config the step trained with (its stage's)."""
        return RunConfig.from_dict(self.meta["config"])

    @property
    def behavior_logp(self) -> Tensor | None:
        return self.tensors.get("behavior_logp")

    def rollouts(self) -> Rollouts:
        """The step's batch as `Rollouts` (what `completion_logprobs` reads)."""
        t, B = self.tensors, len(self.meta["texts"])
        return Rollouts(prompt_ids=t["prompt_ids"], prompt_mask=t["prompt_mask"], completion_ids=t["completion_ids"],
                        completion_mask=t["completion_mask"],
                        behavior_logp=t.get("behavior_logp", torch.zeros(t["completion_ids"].shape)),
                        texts=list(self.meta["texts"]), finish_reasons=list(self.meta["finish_reasons"]),
                        problem_index=torch.arange(B), problems=list(self.meta["problems"]),
                        extras={"has_behavior_logp": "behavior_logp" in t})

    def policy(self, at: str = "start"):
        """(model, tokenizer) of the weights at the start or the end of the step."""
        from eureka_kit.models import load

        if at not in ("start", "end"):
            raise ValueError(f"at: 'start' or 'end', got {at!r}")
        return load(str(self.path / at))


def load_capture(path: str | os.PathLike) -> Capture:
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "capture.json").exists():
        raise FileNotFoundError(f"capture: {path} has no capture.json (captures sit in <run>/captures/step_XXXXXX)")
    return Capture(path, load_file(path / "batch.safetensors"), json.loads((path / "capture.json").read_text()))


def recompute_loss(capture: Capture, policy, *, micro: int | None = 0) -> tuple[Tensor, dict[str, float]]:
    """The step's policy loss recomputed with `policy` on micro-batch `micro` of the update (its rows, in training
    order), or on the whole batch (micro=None): `losses.policy_loss` with the captured pi_old, advantages, mask,
    mu and reference log-probs and the step's config. With the start weights, every micro-batch of the first
    minibatch gives its logged `stats["loss/total"]` (capture.meta["micro_batches"][i])."""
    t, cfg = capture.tensors, capture.config
    rows = torch.arange(len(capture.meta["texts"])) if micro is None else \
        torch.tensor(capture.meta["micro_batches"][micro]["rows"])
    logp = completion_logprobs(policy, capture.rollouts(), rows, cfg)
    device = logp.device

    def pick(name: str) -> Tensor | None:
        return t[name][rows].to(device) if name in t else None

    return losses.policy_loss(logp, pick("old_logp"), pick("advantages"), pick("loss_mask"), cfg=cfg,
                              ref_logp=pick("ref_logp"), behavior_logp=pick("behavior_logp"))
