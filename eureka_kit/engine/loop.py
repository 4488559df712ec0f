"""`train(cfg) -> Run`: the one RL loop. Notebooks, the CLI and the tests all call this function.

One step: sample prompts -> rollout (K per prompt) -> rewards -> online filter / dynamic sampling with
refill -> advantages x CPGD weights -> old (and reference) log-probs -> for each update epoch and
minibatch of `train_batch_size` responses: new log-probs (chunked, fused with the output projection),
`losses.policy_loss`, backward with exact gradient accumulation, grad clip, optimizer step ->
diagnostics -> run directory.

Departures from MM-EUREKA worth knowing: the online filter keeps whole groups and stops refilling
after MAX_ROLLOUTS_PER_STEP rollouts (training on what it has, logged as filter/short_batch) instead
of looping forever when every group is solved; micro-batch losses are weighted so that gradient
accumulation equals one aggregate over the optimizer batch (the code's D2 per-micro-batch mean is the
special case micro_batch_size = 1 with seq-mean-token-mean). Under torchrun the loop runs data-parallel
(`distributed.py`: sharded prompts, gradients summed over ranks, rank 0 writes), with the plain torch learner
or DeepSpeed ZeRO-2/3 (`learner.py`); checkpoints and resume: `checkpoints.py`, shared with `sft.py`.

Stages (`cfg.stages`, MM-Eureka-32B's recipe): one run, one directory, one step count and lr schedule; at a
stage's first step the loop switches to that stage's config (`cfg.stage_config`), its problems and its
reference model, logs `stage`, and checkpoints at every stage boundary.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from eureka_kit import models
from eureka_kit.algos import advantages, diagnostics, filters, losses
from eureka_kit.config import RunConfig
from eureka_kit.data import rewards
from eureka_kit.data.problems import ProblemStream, load_problems
from eureka_kit.engine import rollout, signals
from eureka_kit.engine.base_policy import load_policy
from eureka_kit.engine.batch import Rollouts
from eureka_kit.engine.checkpoints import load_weights, open_run_dir, save_checkpoint, seed_everything
from eureka_kit.engine.distributed import SINGLE_PROCESS, World, init_world
from eureka_kit.engine.learner import make_learner
from eureka_kit.engine.logprobs import batched_logprobs, completion_logprobs, takes_old_logp_from_learner
from eureka_kit.engine.rollout_vllm import sync_weights as sync_vllm_weights
from eureka_kit.engine.runs import Run, RunDir
from eureka_kit.models import tokenizer_of

MAX_ROLLOUTS_PER_STEP = 8
REFILL_MARGIN = 1.5  # a refill draws 1.5x the prompts the step's pass rate says are missing (fewer extra refills)


class VerifierFailure(RuntimeError):
    """The verifier raised on more than `max_verifier_error_frac` of one step's answers: `train` stopped before
    training on them. The message names the step, the share, the first error and the checkpoints kept."""


# ---------------------------------------------------------------------------------------------
# One step's batch: rollouts, rewards, filter with refill.


def _score(ro: Rollouts, cfg: RunConfig) -> tuple[dict[str, Tensor], list[str]]:
    """Reward parts of `ro`'s responses as [B] tensors (accuracy, format, total with the overlong penalty, and the
    verifier's 0/1 error and timeout), and the messages of the verifier's errors."""
    golds = [str(ro.problems[i]["answer"]) for i in ro.problem_index.tolist()]
    parts = rewards.score_batch(ro.texts, golds, compat=cfg.mmeureka_compat, timeout=cfg.reward_timeout,
                                use_format=cfg.format_reward)
    scored = {k: torch.tensor([p[k] for p in parts], dtype=torch.float32) for k in ("accuracy", "format", "total")}
    for k in ("error", "timeout"):  # a reward function standing in for score_batch need not report them
        scored[k] = torch.tensor([p.get(k, 0.0) for p in parts], dtype=torch.float32)
    scored["total"] = scored["total"] + filters.overlong_penalty(ro.lengths, cfg.max_len, cfg.overlong_buffer,
                                                                 cfg.overlong_penalty)
    return scored, [p["error_message"] for p in parts if "error_message" in p]


def _zero_variance_problems(ro: Rollouts, accuracy: Tensor, stream: ProblemStream, group_size: int) -> list[int]:
    """Pool indices of the problems whose group (K contiguous responses) scored one accuracy on every response."""
    firsts = ro.problem_index[::group_size][advantages.zero_std_groups(accuracy, group_size)]
    return [stream.index_of(ro.problems[i]) for i in firsts.tolist()]


def collect_batch(policy, processor, stream: ProblemStream, cfg: RunConfig, gen: torch.Generator,
                  world: World = SINGLE_PROCESS):
    """Roll out until `rollout_batch_size` prompts pass the active filter (whole groups, first come).

    The first rollout draws `rollout_batch_size` prompts; a refill draws what the pass rate so far says is
    missing (`filters.refill_prompts`). Under several processes each rank fills its share from its slice of the
    shared stream (draw sizes come from counts summed over ranks, so every rank takes the same prompts); a full
    rank keeps rolling out (and discarding) while another refills, so the streams and collectives stay in step.

    Returns (rollouts, their scores, stats, the first verifier error message or None); rollouts and scores are
    None when nothing was kept. The stats' `reward/errors` and `reward/timeouts` count every answer this step
    scored, on all ranks, filtered out or kept: a filter would drop the all-0 groups a failing verifier makes."""
    target = cfg.rollout_batch_size * cfg.group_size // world.size
    parts, scores, kept, passed, num_rollouts, num_seen, num_prompts = [], [], 0, 0, 0, 0, 0
    errors, timeouts, first_error = 0, 0, None
    skipped_before = stream.skipped
    while world.any(kept < target) and num_rollouts < MAX_ROLLOUTS_PER_STEP:
        draw = cfg.rollout_batch_size
        if num_rollouts:
            draw = filters.refill_prompts(world.sum(float(target - kept)), world.sum(float(passed)),
                                          world.sum(float(num_seen)), cfg.group_size, cfg.rollout_batch_size,
                                          margin=REFILL_MARGIN)
            draw = min(cfg.rollout_batch_size, -(-draw // world.size) * world.size)  # shard() splits it evenly
        ro = rollout.generate(policy, processor, world.shard(stream.take(draw)), cfg, gen)
        sc, error_messages = _score(ro, cfg)
        num_rollouts, num_seen, num_prompts = num_rollouts + 1, num_seen + len(ro.texts), num_prompts + draw
        errors, timeouts = errors + int(sc["error"].sum()), timeouts + int(sc["timeout"].sum())
        first_error = first_error or next(iter(error_messages), None)
        if cfg.skip_zero_variance:
            stream.skip(world.all_gather(_zero_variance_problems(ro, sc["accuracy"], stream, cfg.group_size)))
        if cfg.online_filter:
            keep = filters.online_filter_mask(sc["accuracy"], cfg.group_size, cfg.filter_lower, cfg.filter_upper)
        elif cfg.dynamic_sampling:
            keep = filters.dynamic_sampling_mask(sc["accuracy"], cfg.group_size)
        else:
            keep = torch.ones(len(ro.texts), dtype=torch.bool)
        passed += int(keep.sum())
        index = filters.take_until_full(kept, keep, target)
        if len(index):
            parts.append(ro.select(index))
            scores.append({k: v[index] for k, v in sc.items()})
            kept += len(index)
    errors, timeouts = world.sum(float(errors)), world.sum(float(timeouts))
    if errors:  # the same on every rank, so all of them join the gather
        first_error = next((m for m in world.all_gather([first_error]) if m is not None), None)
    stats = {"filter/rollouts": num_rollouts, "filter/prompts": num_prompts, "filter/kept_frac": kept / max(num_seen, 1),
             "filter/short_batch": float(kept < target), "filter/skipped_draws": stream.skipped - skipped_before,
             "reward/errors": errors, "reward/timeouts": timeouts}
    common = world.min(kept)  # ranks step in lockstep, so each trains on the shortest rank's number of responses
    if not common:
        return None, None, stats, first_error
    ro, scored = Rollouts.concat(parts), {k: torch.cat([s[k] for s in scores]) for k in scores[0]}
    if common < kept:
        ro, scored = ro.select(torch.arange(common)), {k: v[:common] for k, v in scored.items()}
    return ro, scored, stats, first_error


# ---------------------------------------------------------------------------------------------


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


def train(cfg: RunConfig, *, policy=None, processor=None, problems: list[dict] | None = None,
          progress: bool = True, signal: signals.Signal | None = None) -> Run:
    """Run RL for `cfg.num_steps` steps and return the `Run` (its directory holds everything).

    Stops with rewards.VerifierUnavailable before step 0 when the verifier cannot run, with VerifierFailure at a
    step whose verifier errors exceed `max_verifier_error_frac`, with FloatingPointError after `max_bad_steps`.
    """
    world, device = init_world(cfg)  # one process unless launched by torchrun/deepspeed
    # A verifier that cannot run would score every answer 0: fail now, naming the cause, not after a model load.
    rewards.check_verifier(cfg.reward_timeout)
    gen = seed_everything(cfg.seed + world.rank)  # each rank samples its own responses; the stream uses cfg.seed
    if policy is None:
        policy, processor = load_policy(cfg.model, trust_remote_code=cfg.trust_remote_code, seed=cfg.seed)
    policy.to(device).train()
    world.broadcast_parameters(policy)
    if cfg.freeze_vision:
        models.freeze_vision(policy)
    if cfg.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    if signal is None:  # e.g. the PRM, loaded once (None: outcome rewards only)
        signal = signals.from_config(cfg, device)
    ref_policy = None
    if cfg.stage_config(0).kl_coef > 0:  # a reference model only when a reference KL is on
        ref_policy = copy.deepcopy(policy).eval().requires_grad_(False)
    stream = ProblemStream(_stage_problems(cfg.stage_config(0), cfg, problems), cfg.seed, cfg.skip_zero_variance)

    batch = cfg.rollout_batch_size * cfg.group_size
    opt_steps_per_rollout = cfg.update_epochs * math.ceil(batch / cfg.train_batch_size)
    learner = make_learner(policy, cfg, world, cfg.num_steps * opt_steps_per_rollout, device)  # torch or ZeRO

    t_start = time.perf_counter()
    run_dir, start, history = open_run_dir(cfg, world, learner, stream, gen)  # fresh, or resumed
    run = Run(cfg=cfg, path=cfg.run_path(), history=history, policy=policy, processor=processor)
    elapsed_before = float(history[-1].get("perf/elapsed_s", 0.0)) if history else 0.0  # a resumed run's clock

    bad_steps = 0
    bar = tqdm(range(start, cfg.num_steps), desc=f"{cfg.preset}", disable=not (progress and world.is_main),
               dynamic_ncols=False, ncols=120, initial=start, total=cfg.num_steps)
    stage, cfg = 0, cfg.stage_config(0)  # from here on `cfg` is the current stage's config (run.cfg: the run's)
    for step in bar:
        if run.cfg.stage_at(step) != stage:  # a new stage begins, or a resumed run starts inside a later one
            stage = run.cfg.stage_at(step)
            cfg = run.cfg.stage_config(stage)
            ref_policy = _enter_stage(run, stage, step, policy, stream, problems)
        t0 = time.perf_counter()
        policy.eval()
        with learner.full_weights():
            ro, scored, metrics, verifier_error = collect_batch(policy, processor, stream, cfg, gen, world)
        policy.train()
        t_rollout = time.perf_counter() - t0
        metrics["step"] = step
        metrics["stage"], metrics["kl/coef"] = stage, cfg.kl_coef
        answers = metrics["filter/prompts"] * cfg.group_size  # every answer the step scored, on all ranks
        if metrics["reward/errors"] > cfg.max_verifier_error_frac * answers:  # its rewards are not to be trusted
            run_dir.log_metrics(metrics)
            run.history.append(metrics)
            raise _verifier_failure(step, metrics["reward/errors"], answers, cfg, verifier_error, run_dir)
        if ro is None:  # every group was filtered out MAX_ROLLOUTS_PER_STEP times: nothing to learn from
            metrics["optim/skipped"] = 1.0
            run_dir.log_metrics(metrics)
            run.history.append(metrics)
            continue
        B = len(ro.texts)
        mask = ro.completion_mask.float()
        if cfg.mask_truncated:
            mask = filters.truncation_mask(ro.truncated, mask)
        lengths = ro.lengths.float()
        adv = advantages.for_config(scored["total"], lengths, cfg)
        if signal is not None:  # outcome + process: (B, T) step advantages, or those of a PRM-shaped reward
            adv, signal_metrics = signal.apply(ro, scored, adv, mask, tokenizer_of(processor))
            metrics.update(signal_metrics)

        on_policy = takes_old_logp_from_learner(cfg, B, world.size)
        if on_policy:  # filled micro-batch by micro-batch from the learner forward below
            old_logp, entropy = torch.zeros(mask.shape), torch.zeros(mask.shape)
        else:
            old_logp, entropy = batched_logprobs(policy, ro, cfg, with_entropy=True)  # (B, T)
        ref_logp = batched_logprobs(ref_policy, ro, cfg) if ref_policy is not None else None
        new_logp = old_logp.clone()
        step_stats, grad_norms, skipped, nonfinite = [], [], 0, 0
        epoch_logps = []  # the learner's log-probs as each update epoch saw them (ratio drift per epoch)
        for _epoch in range(cfg.update_epochs):
            # Shuffle whole groups, so every minibatch holds complete groups (group-token-mean needs them).
            K = cfg.group_size if B % cfg.group_size == 0 else 1
            groups = torch.randperm(B // K, generator=gen)
            order = (groups[:, None] * K + torch.arange(K)[None, :]).reshape(-1)
            for minibatch in order.split(cfg.train_batch_size // world.size):
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
                        cfg=cfg, ref_logp=None if ref_logp is None else ref_logp[micro].to(logp.device))
                    weight = losses.aggregation_units(mask[micro], cfg.aggregation, group_size=cfg.group_size) / max(units, 1e-9)
                    if not learner.backward(loss * weight, last=i == len(micros) - 1):
                        nonfinite += 1  # a NaN/Inf loss poisons the whole minibatch: the step is skipped
                    new_logp[micro] = logp.detach().float().cpu()
                    step_stats.append(stats)
                grad_norm = learner.step(nonfinite)  # over every rank's share of the minibatch; None = skipped
                nonfinite = 0
                if grad_norm is None:  # never step on NaN/Inf; count it instead
                    skipped += 1
                    continue
                grad_norms.append(grad_norm)
            if cfg.update_epochs > 1:
                epoch_logps.append(new_logp.clone())
        if cfg.rollout_backend == "vllm":  # the engine samples the next rollout: hand it the updated weights
            with learner.full_weights():
                sync_vllm_weights(policy)

        zero_std = advantages.zero_std_groups(scored["total"], cfg.group_size).float().mean().item() if B % cfg.group_size == 0 else float("nan")
        valid_tokens = mask.sum().clamp(min=1)
        dt = time.perf_counter() - t0
        metrics.update(_merge_stats(step_stats))
        metrics.update(diagnostics.advantage_stats(adv, mask))
        metrics.update({
            "reward/mean": scored["total"].mean().item(),
            "reward/std": scored["total"].std().item() if B > 1 else 0.0,
            "reward/accuracy": scored["accuracy"].mean().item(),
            "reward/format_frac": (scored["format"] > 0).float().mean().item(),
            "reward/frac_zero_std": zero_std,
            "rollout/len_mean": lengths.mean().item(),
            "rollout/truncated_frac": ro.truncated.float().mean().item(),
            "rollout/logp_mismatch": ((ro.rollout_logp - old_logp).abs() * mask).sum().item() / valid_tokens.item()
            if ro.extras.get("has_rollout_logp", True) else float("nan"),
            "policy/entropy": (entropy * mask).sum().item() / valid_tokens.item(),
            "optim/grad_norm": float(np.mean(grad_norms)) if grad_norms else float("nan"),
            "optim/lr": learner.lr,
            "optim/skipped_steps": float(skipped),
            "perf/step_s": dt, "perf/rollout_s": t_rollout,
            "perf/tokens_per_s": (ro.prompt_mask.sum() + ro.completion_mask.sum()).item() / dt,
            "perf/elapsed_s": elapsed_before + time.perf_counter() - t_start,
        })
        metrics = world.reduce_metrics(metrics, num_responses=B)
        run_dir.log_metrics(metrics)
        run.history.append(metrics)
        run_dir.write_rollouts(step, _rollout_rows(step, ro, scored, adv, old_logp, new_logp, entropy, mask,
                                                  processor, cfg.group_size, epoch_logps))
        run_dir.log_warnings(diagnostics.step_warnings(run.history, run_dir.rollouts))  # collapse sentinels
        run_dir.add_problem_attempts(step, [ro.problems[i]["id"] for i in ro.problem_index.tolist()],
                                     [ro.problems[i].get("subject", "math") for i in ro.problem_index.tolist()],
                                     scored["accuracy"].tolist())
        bar.set_postfix(reward=f"{metrics['reward/mean']:.2f}", acc=f"{metrics['reward/accuracy']:.2f}",
                        ratio_max=f"{metrics.get('policy/ratio_max', 1):.2f}",
                        clip=f"{metrics.get('policy/clipfrac', 0):.3f}",
                        verr=f"{metrics['reward/errors']:.0f}", vto=f"{metrics['reward/timeouts']:.0f}")
        bad_steps = bad_steps + 1 if skipped and not grad_norms else 0
        if bad_steps >= cfg.max_bad_steps:
            raise FloatingPointError(
                f"{bad_steps} consecutive steps had only NaN/Inf losses or gradients (last: step {step}); the run "
                f"stopped. The last good checkpoint is kept in {run_dir.path / 'checkpoints'}; lower lr or inspect "
                f"{run_dir.path / 'rollouts'}.")
        # Every stage boundary is checkpointed: a run resumed inside a later stage reloads its reference there.
        if (cfg.save_every and (step + 1) % cfg.save_every == 0) or step + 1 in run.cfg.stage_starts()[1:]:
            save_checkpoint(run_dir, step, policy, processor, learner, stream, gen)
    if start < cfg.num_steps:
        save_checkpoint(run_dir, cfg.num_steps - 1, policy, processor, learner, stream, gen)
    world.barrier()  # no rank exits (tearing down its gloo/nccl threads) while rank 0 still writes
    return run


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
    ref_policy = copy.deepcopy(policy).eval().requires_grad_(False)
    if step > first:
        load_weights(ref_policy, run.path / "checkpoints" / f"step_{first - 1:06d}")
    return ref_policy


def _rollout_rows(step, ro: Rollouts, scored, adv, old_logp, new_logp, entropy, mask, processor,
                  group_size: int, epoch_logps: list[Tensor] = ()) -> list[dict[str, Any]]:
    """One parquet row per response, per-token arrays trimmed to the response length. With several update
    epochs, `epoch_logp` holds the learner's log-probs in each epoch (its last entry equals `new_logp`)."""
    rows = []
    for i in range(len(ro.texts)):
        n = int(ro.completion_mask[i].sum())
        problem = ro.problems[int(ro.problem_index[i])]
        rows.append({
            "step": step, "sample": i, "group": i // group_size,
            "problem_id": problem["id"], "subject": problem.get("subject", "math"), "level": problem.get("level"),
            "answer": str(problem["answer"]), "completion": ro.texts[i], "finish_reason": ro.finish_reasons[i],
            "reward": float(scored["total"][i]), "accuracy": float(scored["accuracy"][i]),
            "format": float(scored["format"][i]), "advantage": float(adv[i, :n].mean() if adv.dim() == 2 else adv[i]),
            "token_ids": ro.completion_ids[i, :n].tolist(),
            "tokens": tokenizer_of(processor).convert_ids_to_tokens(ro.completion_ids[i, :n].tolist()),
            "rollout_logp": ro.rollout_logp[i, :n].tolist(), "old_logp": old_logp[i, :n].tolist(),
            "new_logp": new_logp[i, :n].tolist(), "entropy": entropy[i, :n].tolist(), "loss_mask": mask[i, :n].tolist(),
            **({"epoch_logp": [e[i, :n].tolist() for e in epoch_logps]} if epoch_logps else {}),
        })
    return rows
