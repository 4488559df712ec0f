"""`train(cfg) -> Run`: the one RL loop. Notebooks, the CLI and the tests all call this function.

`train` reads as the algorithm's outline, one step at a time: rollout -> reward -> filter (`collect.collect_batch`)
-> advantages x CPGD weights, then the run's signal if any (`signals`: e.g. the PRM) -> `update` (old and
reference log-probs; per update epoch and minibatch of `train_batch_size` responses: new log-probs, chunked and
fused with the output projection, `losses.policy_loss`, backward with exact gradient accumulation, grad clip,
optimizer step) -> diagnostics (`step_metrics`) -> capture when a collapse sentinel fires (`capture.py`: the batch
and the weights at the start and end of the step) -> run directory -> checkpoint.

Departures from MM-EUREKA worth knowing: micro-batch losses are weighted so that gradient accumulation equals one
aggregate over the optimizer batch (the code's D2 per-micro-batch mean is the special case micro_batch_size = 1
with seq-mean-token-mean); the online filter's refill is capped (`collect.py`). Under torchrun the loop runs
data-parallel (`distributed.py`: sharded prompts, gradients summed over ranks, rank 0 writes), with the plain
torch learner or DeepSpeed ZeRO-2/3 (`learner.py`); start, resume, bad steps and the final checkpoint:
`session.py` and `checkpoints.py`, shared with `sft.py`.

Stages (`cfg.stages`, MM-Eureka-32B's recipe): one run, one directory, one step count and lr schedule; at a
stage's first step the loop switches to that stage's config (`cfg.stage_config`), its problems and its
reference model, logs `stage`, and checkpoints at every stage boundary.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from eureka_kit.algos import advantages, diagnostics, filters, losses, mismatch
from eureka_kit.config import RunConfig
from eureka_kit.data import rewards
from eureka_kit.data.problems import ProblemStream, load_problems
from eureka_kit.engine import signals
from eureka_kit.engine.batch import Rollouts
from eureka_kit.engine.capture import Capturer
from eureka_kit.engine.checkpoints import load_weights, open_run_dir, save_checkpoint
from eureka_kit.engine.collect import collect_batch
from eureka_kit.engine.distributed import World, init_world
from eureka_kit.engine.learner import make_learner
from eureka_kit.engine.logprobs import batched_logprobs, completion_logprobs, takes_old_logp_from_learner
from eureka_kit.engine.rollout_vllm import sync_weights as sync_vllm_weights
from eureka_kit.engine.runs import Run, RunDir
from eureka_kit.engine.sampler import Sampler
from eureka_kit.engine.session import BadSteps, finish, progress_bar, start_policy
from eureka_kit.models import tokenizer_of


class VerifierFailure(RuntimeError):
    """The verifier raised on more than `max_verifier_error_frac` of one step's answers: `train` stopped before
    training on them. The message names the step, the share, the first error and the checkpoints kept."""


def train(cfg: RunConfig, *, policy=None, processor=None, problems: list[dict] | None = None,
          progress: bool = True, signal: signals.Signal | None = None) -> Run:
    """Run RL for `cfg.num_steps` steps and return the `Run` (its directory holds everything).

    `signal` shapes advantages after the outcome ones (default: the one `cfg.process_mode` names, if any).
    Stops with rewards.VerifierUnavailable before step 0 when the verifier cannot run, with VerifierFailure at a
    step whose verifier errors exceed `max_verifier_error_frac`, with FloatingPointError after `max_bad_steps`.
    """
    world, device = init_world(cfg)  # one process unless launched by torchrun/deepspeed
    # A verifier that cannot run would score every answer 0: fail now, naming the cause, not after a model load.
    rewards.check_verifier(cfg.reward_timeout)
    gen, policy, processor = start_policy(cfg, world, device, policy, processor)
    if signal is None:  # e.g. the PRM, loaded once (None: outcome rewards only)
        signal = signals.from_config(cfg, device)
    ref_policy = _frozen_copy(policy) if cfg.stage_config(0).kl_coef > 0 else None  # only when a reference KL is on
    stream = ProblemStream(_stage_problems(cfg.stage_config(0), cfg, problems), cfg.seed, cfg.skip_zero_variance)
    opt_steps_per_rollout = cfg.update_epochs * math.ceil(cfg.rollout_batch_size * cfg.group_size / cfg.train_batch_size)
    learner = make_learner(policy, cfg, world, cfg.num_steps * opt_steps_per_rollout, device)  # torch or ZeRO

    t_start = time.perf_counter()
    run_dir, start, history = open_run_dir(cfg, world, learner, stream, gen)  # fresh, or resumed
    run = Run(cfg=cfg, path=cfg.run_path(), history=history, policy=policy, processor=processor)
    elapsed_before = float(history[-1].get("perf/elapsed_s", 0.0)) if history else 0.0  # a resumed run's clock
    bad_steps = BadSteps(cfg.max_bad_steps, lambda count, step: (
        f"{count} consecutive steps had only NaN/Inf losses or gradients (last: step {step}); the run stopped. The "
        f"last good checkpoint is kept in {run_dir.path / 'checkpoints'}; lower lr or inspect {run_dir.path / 'rollouts'}."))
    bar = progress_bar(cfg, start, world, progress)
    sampler = Sampler(cfg)
    capturer = Capturer(cfg, run_dir, world, processor)  # keeps the batch and weights of steps where a sentinel fires
    stage, cfg = 0, cfg.stage_config(0)  # from here on `cfg` is the current stage's config (run.cfg: the run's)
    for step in bar:
        if run.cfg.stage_at(step) != stage:  # a new stage begins, or a resumed run starts inside a later one
            stage = run.cfg.stage_at(step)
            cfg = run.cfg.stage_config(stage)
            ref_policy = _enter_stage(run, stage, step, policy, stream, problems)
        t0 = time.perf_counter()
        # rollout -> reward -> filter
        policy.eval()
        with learner.full_weights():  # the sampler: the policy, or a stale / low-precision copy (injected mismatch)
            ro, scored, metrics, verifier_error = collect_batch(sampler.for_rollout(policy), processor, stream, cfg,
                                                                gen, world)
        policy.train()
        t_rollout = time.perf_counter() - t0
        metrics["step"] = step
        metrics["stage"], metrics["kl/coef"] = stage, cfg.kl_coef
        answers = metrics["filter/prompts"] * cfg.group_size  # every answer the step scored, on all ranks
        if metrics["reward/errors"] > cfg.max_verifier_error_frac * answers:  # its rewards are not to be trusted
            _log(run, run_dir, metrics)
            raise _verifier_failure(step, metrics["reward/errors"], answers, cfg, verifier_error, run_dir)
        if ro is None:  # every group was filtered out MAX_ROLLOUTS_PER_STEP times: nothing to learn from
            _log(run, run_dir, {**metrics, "optim/skipped": 1.0})
            continue
        # advantages (outcome, then the run's signal: e.g. PRM step advantages or a PRM-shaped reward)
        mask = filters.truncation_mask(ro.truncated, ro.completion_mask.float()) if cfg.mask_truncated \
            else ro.completion_mask.float()
        adv = advantages.for_config(scored["total"], ro.lengths.float(), cfg)
        if signal is not None:
            adv, signal_metrics = signal.apply(ro, scored, adv, mask, tokenizer_of(processor))
            metrics.update(signal_metrics)
        # update
        capturer.before_update(policy)  # the weights at the start of the step, while captures are left
        upd = update(policy, learner, ro, adv, mask, cfg, world, gen, ref_policy)
        if cfg.rollout_backend == "vllm":  # the engine samples the next rollout: hand it the updated weights
            with learner.full_weights():
                sync_vllm_weights(policy)
        # diagnostics
        metrics.update(step_metrics(ro, scored, adv, mask, upd, learner, cfg, t0=t0, t_rollout=t_rollout,
                                    elapsed=elapsed_before + time.perf_counter() - t_start))
        metrics = world.reduce_metrics(metrics, num_responses=len(ro.texts))
        metrics.update(capturer.after_step(step, [*run.history, metrics], ro, scored, adv, mask, upd, policy))
        _log(run, run_dir, metrics)
        _write_step(run, run_dir, step, ro, scored, adv, mask, upd, processor, cfg.group_size)
        bar.set_postfix(reward=f"{metrics['reward/mean']:.2f}", acc=f"{metrics['reward/accuracy']:.2f}",
                        ratio_max=f"{metrics.get('policy/ratio_max', 1):.2f}",
                        clip=f"{metrics.get('policy/clipfrac', 0):.3f}",
                        verr=f"{metrics['reward/errors']:.0f}", vto=f"{metrics['reward/timeouts']:.0f}")
        bad_steps.record(bool(upd.skipped and not upd.grad_norms), step)  # no update at all: NaN/Inf only
        # checkpoint: on schedule, and at every stage boundary (a run resumed inside a later stage reloads its reference there)
        if (cfg.save_every and (step + 1) % cfg.save_every == 0) or step + 1 in run.cfg.stage_starts()[1:]:
            save_checkpoint(run_dir, step, policy, processor, learner, stream, gen)
    finish(run_dir, cfg, start, policy, processor, learner, stream, gen, world)
    return run


@dataclass
class Update:
    """What one step's policy update saw and did: (B, T) old/new log-probs and entropy, the reference's log-probs
    (when a reference KL is on), the learner's log-probs after each update epoch (with several epochs), every
    micro-batch's (epoch, minibatch, rows) and loss stats, grad norms, skipped optimizer steps."""

    old_logp: Tensor
    new_logp: Tensor
    entropy: Tensor
    ref_logp: Tensor | None = None
    epoch_logps: list[Tensor] = field(default_factory=list)
    micro_batches: list[tuple[int, int, list[int]]] = field(default_factory=list)
    stats: list[dict[str, float]] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    skipped: int = 0


def update(policy, learner, ro: Rollouts, adv: Tensor, mask: Tensor, cfg: RunConfig, world: World,
           gen: torch.Generator, ref_policy=None) -> Update:
    """`cfg.update_epochs` passes over the step's B responses in minibatches of `train_batch_size` (split over
    ranks) of whole groups, each a sum of micro-batch losses weighted so that accumulation is exact."""
    B = len(ro.texts)
    on_policy = takes_old_logp_from_learner(cfg, B, world.size)
    if on_policy:  # filled micro-batch by micro-batch from the learner forward below
        old_logp, entropy = torch.zeros(mask.shape), torch.zeros(mask.shape)
    else:
        old_logp, entropy = batched_logprobs(policy, ro, cfg, with_entropy=True)  # (B, T)
    ref_logp = batched_logprobs(ref_policy, ro, cfg) if ref_policy is not None else None
    behavior_logp = ro.behavior_logp if ro.extras.get("has_behavior_logp") else None
    out = Update(old_logp, old_logp.clone(), entropy, ref_logp)
    nonfinite = 0
    for epoch in range(cfg.update_epochs):
        # Shuffle whole groups, so every minibatch holds complete groups (group-token-mean needs them).
        K = cfg.group_size if B % cfg.group_size == 0 else 1
        groups = torch.randperm(B // K, generator=gen)
        order = (groups[:, None] * K + torch.arange(K)[None, :]).reshape(-1)
        for m, minibatch in enumerate(order.split(cfg.train_batch_size // world.size)):
            # Normalise by the units of the whole minibatch, summed over ranks: accumulation stays exact.
            units = world.sum(losses.aggregation_units(mask[minibatch], cfg.aggregation, group_size=cfg.group_size))
            micros = minibatch.split(cfg.micro_batch_size)
            for i, micro in enumerate(micros):
                if on_policy:
                    logp, ent = completion_logprobs(policy, ro, micro, cfg, with_entropy=True)
                    old_logp[micro], entropy[micro] = logp.detach().float().cpu(), ent.detach().float().cpu()
                else:
                    logp = completion_logprobs(policy, ro, micro, cfg)
                loss, stats = losses.policy_loss(
                    logp, old_logp[micro].to(logp.device), adv[micro].to(logp.device), mask[micro].to(logp.device),
                    cfg=cfg, ref_logp=None if ref_logp is None else ref_logp[micro].to(logp.device),
                    behavior_logp=None if behavior_logp is None else behavior_logp[micro].to(logp.device))
                weight = losses.aggregation_units(mask[micro], cfg.aggregation, group_size=cfg.group_size) / max(units, 1e-9)
                if not learner.backward(loss * weight, last=i == len(micros) - 1):
                    nonfinite += 1  # a NaN/Inf loss poisons the whole minibatch: the step is skipped
                out.new_logp[micro] = logp.detach().float().cpu()
                out.micro_batches.append((epoch, m, micro.tolist()))
                out.stats.append(stats)
            grad_norm = learner.step(nonfinite)  # over every rank's share of the minibatch; None = skipped
            nonfinite = 0
            if grad_norm is None:  # never step on NaN/Inf; count it instead
                out.skipped += 1
                continue
            out.grad_norms.append(grad_norm)
        if cfg.update_epochs > 1:
            out.epoch_logps.append(out.new_logp.clone())
    return out


def step_metrics(ro: Rollouts, scored: dict[str, Tensor], adv: Tensor, mask: Tensor, upd: Update, learner,
                 cfg: RunConfig, *, t0: float, t_rollout: float, elapsed: float) -> dict[str, float]:
    """This rank's metrics of one step after the update: loss stats, advantages, rewards, rollouts, optimizer, time."""
    B = len(ro.texts)
    zero_std = advantages.zero_std_groups(scored["total"], cfg.group_size).float().mean().item() if B % cfg.group_size == 0 else float("nan")
    valid_tokens = mask.sum().clamp(min=1)
    dt = time.perf_counter() - t0
    return {
        **_merge_stats(upd.stats),
        **diagnostics.advantage_stats(adv, mask),
        "reward/mean": scored["total"].mean().item(),
        "reward/std": scored["total"].std().item() if B > 1 else 0.0,
        "reward/accuracy": scored["accuracy"].mean().item(),
        "reward/format_frac": (scored["format"] > 0).float().mean().item(),
        "reward/frac_zero_std": zero_std,
        "rollout/len_mean": ro.lengths.float().mean().item(),
        "rollout/truncated_frac": ro.truncated.float().mean().item(),
        # raw train-inference mismatch of the sampler (mu) against the learner (pi_old), before any correction
        **(mismatch.mismatch_stats(upd.old_logp, ro.behavior_logp, mask) if ro.extras.get("has_behavior_logp")
           else {}),
        "policy/entropy": (upd.entropy * mask).sum().item() / valid_tokens.item(),
        "optim/grad_norm": float(np.mean(upd.grad_norms)) if upd.grad_norms else float("nan"),
        "optim/lr": learner.lr,
        "optim/skipped_steps": float(upd.skipped),
        "perf/step_s": dt, "perf/rollout_s": t_rollout,
        "perf/tokens_per_s": (ro.prompt_mask.sum() + ro.completion_mask.sum()).item() / dt,
        "perf/elapsed_s": elapsed,
    }


def _merge_stats(all_stats: list[dict[str, float]]) -> dict[str, float]:
    """Combine micro-batch stats: max of maxima, min of minima, token-weighted mean of the rest
    (`policy/num_tokens` is summed), so a step's clip fraction is the fraction of its tokens.
    Quantiles become token-weighted means of the micro-batch quantiles (an approximation)."""
    merged: dict[str, float] = {}
    keys = list(dict.fromkeys(k for s in all_stats for k in s))  # a micro-batch with no valid token has fewer
    for key in keys:
        pairs = [(s[key], s.get("policy/num_tokens", 1.0)) for s in all_stats if key in s]
        values, weights = [v for v, _ in pairs], [w for _, w in pairs]
        if key == "policy/num_tokens":
            merged[key] = float(sum(values))
        elif key.endswith("_max"):
            merged[key] = max(values)
        elif key.endswith("_min"):
            merged[key] = min(values)
        else:
            merged[key] = float(np.average(values, weights=weights)) if sum(weights) > 0 else float(np.mean(values))
    return merged


def _frozen_copy(policy):
    return copy.deepcopy(policy).eval().requires_grad_(False)


def _log(run: Run, run_dir: RunDir, metrics: dict[str, Any]) -> None:
    run_dir.log_metrics(metrics)
    run.history.append(metrics)


def _write_step(run: Run, run_dir: RunDir, step: int, ro: Rollouts, scored, adv, mask, upd: Update, processor,
                group_size: int) -> None:
    """The step's rollouts, its collapse-sentinel warnings and its per-problem attempts, into the run directory."""
    run_dir.write_rollouts(step, _rollout_rows(step, ro, scored, adv, upd.old_logp, upd.new_logp, upd.entropy, mask,
                                              processor, group_size, upd.epoch_logps))
    run_dir.log_warnings(diagnostics.step_warnings(run.history, run_dir.rollouts, **run.cfg.sentinels))  # sentinels
    problems = [ro.problems[i] for i in ro.problem_index.tolist()]
    run_dir.add_problem_attempts(step, [p["id"] for p in problems], [p.get("subject", "math") for p in problems],
                                 scored["accuracy"].tolist())


def _verifier_failure(step: int, errors: float, answers: int, cfg: RunConfig, first_error: str | None,
                      run_dir: RunDir) -> VerifierFailure:
    """The error `train` raises when too many of a step's answers had a verifier error (no checkpoint is written)."""
    kept = run_dir.checkpoints()
    last = f"the last good checkpoint is kept: {kept[-1]}" if kept else f"no checkpoint yet in {run_dir.path}"
    return VerifierFailure(
        f"step {step}: the verifier raised on {errors:.0f} of {answers} answers ({errors / answers:.0%}), more than "
        f"max_verifier_error_frac={cfg.max_verifier_error_frac}; the run stopped before training on them and "
        f"{last}. First error: {first_error or '(the reward function gave no message)'}")


def _data_source(cfg: RunConfig) -> tuple:
    return cfg.task, cfg.data_path, cfg.train_subject, cfg.train_levels, cfg.train_per_level


def _stage_problems(stage_cfg: RunConfig, run_cfg: RunConfig, problems: list[dict] | None) -> list[dict]:
    """A stage's training problems: the ones given to `train`, unless the stage names other data."""
    if problems is not None and _data_source(stage_cfg) == _data_source(run_cfg):
        return problems
    return load_problems(stage_cfg, subject=stage_cfg.train_subject)


def _enter_stage(run: Run, stage: int, step: int, policy, stream: ProblemStream, problems: list[dict] | None):
    """Point `stream` at stage `stage`'s problems and return its reference model (None when its KL is off).

    The reference is the policy at the start of the stage: MM-Eureka ran stage 2 as a new run from the
    stage-1 checkpoint, and its trainer (OpenRLHF) loads the reference from the actor's starting weights.
    A run resumed inside the stage reloads those weights from the checkpoint at the stage boundary.
    """
    cfg, first = run.cfg.stage_config(stage), run.cfg.stage_starts()[stage]
    data = _stage_problems(cfg, run.cfg, problems)
    if step == first and _data_source(cfg) != _data_source(run.cfg.stage_config(stage - 1)):
        stream.switch(data)
    else:  # same data as the stage before, or resumed inside this stage: keep the (restored) cursor
        stream.reload(data)
    if cfg.kl_coef == 0:
        return None
    ref_policy = _frozen_copy(policy)
    if step > first:
        load_weights(ref_policy, run.path / "checkpoints" / f"step_{first - 1:06d}")
    return ref_policy


def _rollout_rows(step, ro: Rollouts, scored, adv, old_logp, new_logp, entropy, mask, processor,
                  group_size: int, epoch_logps: list[Tensor] = ()) -> list[dict[str, Any]]:
    """One parquet row per response, per-token arrays trimmed to the response length. With several update
    epochs, `epoch_logp` holds the learner's log-probs in each epoch (its last entry equals `new_logp`)."""
    # one tolist per tensor, then plain list slices (a tolist per row and tensor cost ~1.5 ms of a toy step)
    lengths = ro.completion_mask.sum(dim=1).tolist()
    token_ids, behavior, old, new, ent, loss_mask = (t.tolist() for t in (
        ro.completion_ids, ro.behavior_logp, old_logp, new_logp, entropy, mask))
    epochs = [e.tolist() for e in epoch_logps]
    total, accuracy, fmt = (scored[k].tolist() for k in ("total", "accuracy", "format"))
    advantage = [float(adv[i, :n].mean()) for i, n in enumerate(lengths)] if adv.dim() == 2 else adv.tolist()
    convert = tokenizer_of(processor).convert_ids_to_tokens
    rows = []
    for i, n in enumerate(lengths):
        problem = ro.problems[int(ro.problem_index[i])]
        rows.append({
            "step": step, "sample": i, "group": i // group_size,
            "problem_id": problem["id"], "subject": problem.get("subject", "math"), "level": problem.get("level"),
            "answer": str(problem["answer"]), "completion": ro.texts[i], "finish_reason": ro.finish_reasons[i],
            "reward": total[i], "accuracy": accuracy[i], "format": fmt[i], "advantage": advantage[i],
            "token_ids": token_ids[i][:n], "tokens": convert(token_ids[i][:n]),
            "behavior_logp": behavior[i][:n], "old_logp": old[i][:n], "new_logp": new[i][:n], "entropy": ent[i][:n],
            "loss_mask": loss_mask[i][:n],
            **({"epoch_logp": [e[i][:n] for e in epochs]} if epochs else {}),
        })
    return rows
