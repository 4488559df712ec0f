"""PRM head/loss (MM-PRM's released code, numbers), marker alignment, a tiny training run and scoring."""

import math

import pytest
import torch

from eureka_kit.models import build_toy_model
from eureka_kit.prm.model import (
    PRMTrainConfig,
    calibration,
    encode_example,
    init_prm,
    prm_loss,
    process_for_scoring,
    reward_token_ids,
    score_processes,
    score_steps,
    soft_ce,
    train_prm,
)


def _logits_for(p_yes):
    return torch.tensor([[math.log(p_yes / (1 - p_yes)), 0.0]])


@pytest.mark.parametrize("y", [0.0, 0.3, 1.0])
def test_equal_logits_give_ln2(y):
    assert soft_ce(torch.zeros(1, 2), torch.tensor([y])).item() == pytest.approx(0.6931, abs=1e-4)


def test_soft_ce_hand_values():
    assert soft_ce(_logits_for(0.75), torch.tensor([0.75])).item() == pytest.approx(0.5623, abs=1e-4)
    assert soft_ce(_logits_for(0.9), torch.tensor([1.0])).item() == pytest.approx(0.1054, abs=1e-4)
    assert soft_ce(_logits_for(0.9), torch.tensor([0.0])).item() == pytest.approx(2.3026, abs=1e-4)


def test_soft_ce_gradient_and_bce_identity():
    # d/d l_yes = p_yes - y, d/d l_no = y - p_yes; p=.9, y=.25 -> +0.65 / -0.65
    logits = _logits_for(0.9).requires_grad_(True)
    soft_ce(logits, torch.tensor([0.25])).sum().backward()
    assert logits.grad.tolist()[0] == pytest.approx([0.65, -0.65], abs=1e-5)
    x = torch.randn(7, 2)
    y = torch.rand(7)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(x[:, 0] - x[:, 1], y, reduction="none")
    assert torch.allclose(soft_ce(x, y), bce, atol=1e-6)
    # minimum over p_yes at p_yes = y (the entropy of y)
    grid = torch.linspace(0.01, 0.99, 99)
    losses = soft_ce(torch.stack([torch.log(grid / (1 - grid)), torch.zeros(99)], 1), torch.full((99,), 0.75))
    assert grid[losses.argmin()].item() == pytest.approx(0.75, abs=0.011)


def test_prm_loss_only_markers_count():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 10, requires_grad=True)
    targets = torch.full((2, 5), -100.0)
    targets[0, 1], targets[1, 4] = 0.25, 1.0
    loss, stats = prm_loss(logits, targets, yes_id=3, no_id=7)
    expect = soft_ce(torch.stack([logits[0, 1, [3, 7]], logits[1, 4, [3, 7]]]), torch.tensor([0.25, 1.0])).mean()
    assert loss.item() == pytest.approx(expect.item()) and int(stats["num_markers"]) == 2
    loss.backward()
    g = logits.grad.clone()
    g[0, 1, [3, 7]] = 0
    g[1, 4, [3, 7]] = 0
    assert torch.count_nonzero(g) == 0  # no other logit gets gradient


@pytest.fixture(scope="module")
def toy():
    model, tok = build_toy_model()
    init_prm(model, tok)
    return model, tok


def test_tokens_and_marker(toy):
    model, tok = toy
    yes, no = reward_token_ids(tok)
    assert tok.convert_ids_to_tokens([yes, no]) == ["Y", "N"]
    marker = tok.convert_tokens_to_ids("<prm>")
    assert marker == len(tok) - 1 and model.get_input_embeddings().weight.shape[0] == len(tok)
    emb = model.get_input_embeddings().weight
    assert torch.allclose(emb[marker], emb[:marker].mean(0))  # mean init of the new row


def test_marker_alignment(toy):
    _, tok = toy
    ids, targets = encode_example(tok, "What is 1+2?", "1+2=3<prm>\n\n3<prm>", [0.5, 0.0])
    marker = tok.convert_tokens_to_ids("<prm>")
    assert [t for t, i in zip(targets, ids, strict=False) if i == marker] == [0.5, 0.0]
    assert sum(t != -100 for t in targets) == 2
    with pytest.raises(ValueError, match="labels"):
        encode_example(tok, "q", "a<prm>", [0.5, 1.0])


def test_process_for_scoring():
    assert process_for_scoring(["a", "b"]) == "a<prm>b<prm>"
    assert process_for_scoring(["a", "b"], sep="\n\n") == "a<prm>\n\nb<prm>"
    assert process_for_scoring([]) == ""


def test_train_and_score_tiny(toy):
    model, tok = build_toy_model(seed=1)
    examples = [dict(question="What is 2+3?", process="2+3=5<prm>\n\n5<prm>", labels=[1.0, 1.0]),
                dict(question="What is 2+3?", process="2+3=6<prm>", labels=[0.0])] * 2
    before = [p.detach().clone() for p in model.parameters()]
    losses = train_prm(model, tok, examples, PRMTrainConfig(epochs=4, lr=3e-3, batch_size=4, max_seq_len=256),
                       progress=False)
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=False))
    problem = dict(question="What is 2+3?")
    good, bad = score_steps(model, tok, problem, ["2+3=5", "5"]), score_steps(model, tok, problem, ["2+3=6"])
    assert len(good) == 2 and len(bad) == 1 and all(0 < s < 1 for s in good + bad)
    assert score_steps(model, tok, problem, []) == []
    batched = score_processes(model, tok, [("What is 2+3?", "2+3=5<prm>5<prm>"), ("What is 2+3?", "2+3=6<prm>")])
    assert batched[0] == pytest.approx(good, abs=1e-5) and batched[1] == pytest.approx(bad, abs=1e-5)
    cal = calibration(model, tok, examples[:2])
    assert [(c["position"], c["label"]) for c in cal] == [(0, 1.0), (1, 1.0), (0, 0.0)]
    assert all(0 < c["p_yes"] < 1 for c in cal)


def test_vision_tower_frozen():
    model, proc = build_toy_model(multimodal=True)
    init_prm(model, proc)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all("visual" in n for n in frozen)
    assert proc.tokenizer.convert_tokens_to_ids("<prm>") == len(proc.tokenizer) - 1
