"""Batch filters and reward shaping: MM-EUREKA's online accuracy filter, DAPO's dynamic sampling and
overlong handling (docs/algorithms.md §4.6). Pure functions over per-response tensors; groups are
contiguous runs of `group_size` rows. Refilling the batch until it is full is the train loop's job
(`take_until_full` gives the exact MM-EUREKA rule: train on the first N kept items, drop the rest).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def group_accuracy(accuracy: Tensor, group_size: int) -> Tensor:
    """Mean accuracy per prompt. accuracy: [B] in [0, 1]. Returns [B // K]."""
    if accuracy.numel() % group_size:
        raise ValueError(f"group_size: {group_size} does not divide the batch of {accuracy.numel()} responses")
    return accuracy.float().view(-1, group_size).mean(dim=1)


def online_filter_mask(accuracy: Tensor, group_size: int, lower: float = 0.1, upper: float = 0.9) -> Tensor:
    """MM-EUREKA online filter: keep the whole group iff lower <= mean accuracy <= upper (inclusive).

    Uses the accuracy reward only (not format), as the released code. With K = 8 and the default
    bounds only all-wrong and all-right groups are dropped. Returns [B] bool keep-mask.
    """
    acc = group_accuracy(accuracy, group_size)
    keep = (acc >= lower) & (acc <= upper)
    return keep.repeat_interleave(group_size)


def dynamic_sampling_mask(accuracy: Tensor, group_size: int) -> Tensor:
    """DAPO dynamic sampling: keep groups with 0 < #correct < K. Returns [B] bool keep-mask."""
    acc = group_accuracy(accuracy, group_size)
    return ((acc > 0) & (acc < 1)).repeat_interleave(group_size)


def overlong_penalty(lengths: Tensor, max_len: int, buffer_len: int, penalty: float = 1.0) -> Tensor:
    """DAPO soft overlong punishment added to the reward (Yu et al. 2025, Eq. 13).

    0 if |y| <= L_max - L_cache; ((L_max - L_cache) - |y|) / L_cache in the buffer; -1 beyond L_max;
    all scaled by `penalty`. lengths: [B] token counts. Returns [B] float <= 0.
    """
    if buffer_len <= 0:
        return torch.zeros_like(lengths, dtype=torch.float32)
    expected = max_len - buffer_len
    lengths = lengths.float()
    in_buffer = (expected - lengths) / buffer_len
    value = torch.where(lengths <= expected, torch.zeros_like(lengths), in_buffer)
    value = torch.where(lengths > max_len, torch.full_like(lengths, -1.0), value)
    return penalty * value


def truncation_mask(truncated: Tensor, mask: Tensor) -> Tensor:
    """DAPO overlong filtering: zero the loss mask of truncated responses. truncated: [B] bool; mask [B, T]."""
    return mask * (~truncated.bool()).unsqueeze(1).to(mask.dtype)


def take_until_full(kept_so_far: int, keep: Tensor, target: int) -> Tensor:
    """Indices of the kept rows of a new rollout that still fit into a batch of `target` rows.

    MM-EUREKA trains on exactly the first `target` kept items and discards the rest (Alg. 1: update on
    B[0:N_B]); groups can be cut at the boundary, exactly as there. Returns a LongTensor of indices.
    """
    room = max(target - kept_so_far, 0)
    return keep.nonzero(as_tuple=True)[0][:room]


def refill_prompts(missing_rows: float, passed_rows: float, seen_rows: float, group_size: int, full: int, *,
                   margin: float = 1.5, minimum: int = 8) -> int:
    """How many prompts a refill rollout draws: enough to fill `missing_rows` at this step's pass rate so far
    (`passed_rows / seen_rows`), times `margin`, within [`minimum`, `full`]; `full` while nothing has passed.

    Which rows are trained does not depend on it (the first kept rows in stream order, `take_until_full`): a
    right-sized refill only stops the last rollout of a step from sampling a whole batch for a few groups.
    """
    if passed_rows <= 0 or seen_rows <= 0:
        return full
    needed = margin * missing_rows / (group_size * passed_rows / seen_rows)
    return int(min(full, max(minimum, math.ceil(needed))))
