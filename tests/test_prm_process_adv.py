"""Process advantages and shaped rewards: hand-worked numbers."""

import pytest
import torch

from eureka_kit.models import build_char_tokenizer
from eureka_kit.prm.process_adv import shaped_rewards, step_advantages, token_step_index


def test_step_advantages_hand():
    adv_out = torch.tensor([1.0, -1.0])
    scores = torch.tensor([[0.9, 0.5], [0.2, 0.0]])
    smask = torch.tensor([[True, True], [True, False]])
    token_step = torch.tensor([[0, 0, -1, 1, -1], [0, -1, -1, -1, -1]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    adv, stats = step_advantages(adv_out, scores, smask, token_step, mask, group_size=2, w=1.0)
    b = (0.9 + 0.5 + 0.2) / 3
    expect = torch.tensor([[1 + 0.9 - b, 1 + 0.9 - b, 1, 1 + 0.5 - b, 1],
                           [-1 + 0.2 - b, -1, -1, 0, 0]])
    assert torch.allclose(adv, expect, atol=1e-6)
    assert stats["process/baseline_mean"].item() == pytest.approx(b)


def test_w_zero_is_outcome_and_groups_independent():
    torch.manual_seed(0)
    adv_out = torch.randn(4)
    scores, smask = torch.rand(4, 3), torch.rand(4, 3) > 0.3
    token_step = torch.randint(-1, 3, (4, 6))
    mask = torch.ones(4, 6, dtype=torch.long)
    adv, _ = step_advantages(adv_out, scores, smask, token_step, mask, group_size=2, w=0.0)
    assert torch.allclose(adv, adv_out[:, None].expand(4, 6))
    # the process term sums to zero over each group's scored steps (one token per step)
    full = torch.ones(4, 3, dtype=torch.bool)
    ts = torch.arange(3).repeat(4, 1)
    adv, _ = step_advantages(torch.zeros(4), scores, full, ts, torch.ones(4, 3), group_size=2, w=1.0)
    assert torch.allclose(adv.view(2, -1).sum(1), torch.zeros(2), atol=1e-6)
    # changing group 2's scores leaves group 1 unchanged
    scores2 = scores.clone()
    scores2[2:] = 0.0
    adv2, _ = step_advantages(torch.zeros(4), scores2, full, ts, torch.ones(4, 3), group_size=2, w=1.0)
    assert torch.allclose(adv[:2], adv2[:2])


def test_shaped_rewards():
    r = shaped_rewards(torch.tensor([1.0, 0.0, 0.0]), [[0.9, 0.4], [0.7], []], w=0.5)
    assert r.tolist() == pytest.approx([1.2, 0.35, 0.0])
    assert shaped_rewards(torch.tensor([0.0]), [[0.5, 0.5]], w=1.0, how="product").item() == pytest.approx(0.25)


def test_token_step_index_char_tokenizer():
    tok = build_char_tokenizer()
    text = "<step>1+2=3</step><step>3*2=6</step><answer>6</answer>"
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    t = torch.tensor([ids + [tok.pad_token_id] * 2])
    mask = torch.tensor([[1] * len(ids) + [0, 0]])
    idx, counts = token_step_index(tok, t, mask)
    assert counts == [3]
    pieces = [tok.decode([i]) for i in ids]
    by_step = {k: "".join(p for p, s in zip(pieces, idx[0].tolist(), strict=False) if s == k) for k in (-1, 0, 1, 2)}
    assert by_step == {-1: "<|im_end|>", 0: "<step>1+2=3</step>", 1: "<step>3*2=6</step>",
                       2: "<answer>6</answer>"}
    assert idx[0, -2:].tolist() == [-1, -1]
