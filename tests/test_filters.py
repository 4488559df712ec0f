"""Online accuracy filter, DAPO dynamic sampling and overlong shaping, take_until_full (docs/algorithms.md
§3.1, §2.5), checked on hand-made batches, boundaries included."""

from __future__ import annotations

import pytest
import torch

from eureka_kit.algos import filters


def _groups(correct_counts, k):
    return torch.tensor([1.0 if i < c else 0.0 for c in correct_counts for i in range(k)])


def test_online_filter_bounds_are_inclusive():
    # K = 10: accuracies 0, .1, .5, .9, 1 -> keep the three middle groups (0.1 and 0.9 exactly are kept).
    acc = _groups([0, 1, 5, 9, 10], 10)
    keep = filters.online_filter_mask(acc, 10, lower=0.1, upper=0.9)
    assert keep.view(5, 10).all(dim=1).tolist() == [False, True, True, True, False]
    assert (keep.view(5, 10) == keep.view(5, 10)[:, :1]).all()  # whole groups


def test_online_filter_default_k8_drops_only_all_wrong_and_all_right():
    acc = _groups([0, 1, 4, 7, 8], 8)
    keep = filters.online_filter_mask(acc, 8)
    assert keep.view(5, 8)[:, 0].tolist() == [False, True, True, True, False]


def test_online_filter_custom_bounds():
    acc = _groups([1, 2, 3, 4], 4)  # .25 .5 .75 1
    keep = filters.online_filter_mask(acc, 4, lower=0.5, upper=0.75)
    assert keep.view(4, 4)[:, 0].tolist() == [False, True, True, False]


def test_group_accuracy_and_errors():
    assert filters.group_accuracy(_groups([1, 3], 4), 4).tolist() == [0.25, 0.75]
    with pytest.raises(ValueError, match="group_size"):
        filters.group_accuracy(torch.zeros(6), 4)


def test_dynamic_sampling_keeps_mixed_groups():
    acc = _groups([0, 1, 3, 4], 4)
    keep = filters.dynamic_sampling_mask(acc, 4)
    assert keep.tolist() == [False] * 4 + [True] * 8 + [False] * 4


def test_overlong_penalty_piecewise():
    # L_max = 20, L_cache = 4 -> threshold 16. 0 up to 16; (16 - |y|)/4 in (16, 20]; -1 beyond 20.
    lengths = torch.tensor([0, 10, 16, 17, 18, 19, 20, 21, 100])
    pen = filters.overlong_penalty(lengths, max_len=20, buffer_len=4)
    assert pen.tolist() == [0.0, 0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0, -1.0]
    scaled = filters.overlong_penalty(lengths, max_len=20, buffer_len=4, penalty=0.5)
    assert scaled.tolist() == [0.0, 0.0, 0.0, -0.125, -0.25, -0.375, -0.5, -0.5, -0.5]
    assert filters.overlong_penalty(lengths, max_len=20, buffer_len=0).tolist() == [0.0] * 9


def test_truncation_mask_zeroes_truncated_rows():
    mask = torch.ones(3, 2)
    out = filters.truncation_mask(torch.tensor([False, True, False]), mask)
    assert out.tolist() == [[1, 1], [0, 0], [1, 1]]


def test_take_until_full():
    keep = torch.tensor([True, False, True, True, True, False, True])
    # 5 kept already, target 8 -> room 3 -> the first three kept indices of the new rollout.
    assert filters.take_until_full(5, keep, 8).tolist() == [0, 2, 3]
    assert filters.take_until_full(0, keep, 100).tolist() == [0, 2, 3, 4, 6]
    assert filters.take_until_full(8, keep, 8).tolist() == []
    assert filters.take_until_full(9, keep, 8).tolist() == []


def test_refill_prompts_sizes_the_refill_by_the_pass_rate():
    # nothing passed yet: no rate to go by, so a whole batch
    assert filters.refill_prompts(256, 0, 512, group_size=8, full=64) == 64
    # 40 rows missing at 472/1024 passed: 1.5 * 40 / (8 * 0.4609) = 16.27 -> 17 prompts
    assert filters.refill_prompts(40, 472, 1024, group_size=8, full=64) == 17
    assert filters.refill_prompts(40, 472, 1024, group_size=8, full=64, margin=1.0) == 11  # 10.85 -> 11
    # 256 missing at 230/512: 106.8 prompts, capped at the full batch; 8 missing at 0.5: 3, raised to the minimum
    assert filters.refill_prompts(256, 230, 512, group_size=8, full=64) == 64
    assert filters.refill_prompts(8, 256, 512, group_size=8, full=64) == 8
    assert filters.refill_prompts(8, 256, 512, group_size=8, full=64, minimum=2) == 3
