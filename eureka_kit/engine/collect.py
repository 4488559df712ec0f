"""One RL step's batch: roll out, score, filter (online accuracy filter or dynamic sampling) and refill.

The online filter keeps whole groups and stops refilling after MAX_ROLLOUTS_PER_STEP rollouts (training on what it
has, logged as filter/short_batch) instead of looping forever when every group is solved (MM-EUREKA's code loops).
"""

from __future__ import annotations

import torch
from torch import Tensor

from eureka_kit.algos import advantages, filters
from eureka_kit.config import RunConfig
from eureka_kit.data import rewards
from eureka_kit.data.problems import ProblemStream
from eureka_kit.engine import rollout
from eureka_kit.engine.batch import Rollouts
from eureka_kit.engine.distributed import SINGLE_PROCESS, World

MAX_ROLLOUTS_PER_STEP = 8
REFILL_MARGIN = 1.5  # a refill draws 1.5x the prompts the step's pass rate says are missing (fewer extra refills)


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
