"""`eureka-kit prm label | score` end to end on a random-init toy model (tiny budgets)."""

import json

import pytest

from eureka_kit.cli import main


@pytest.mark.slow
def test_prm_cli_label_and_score(tmp_path, capsys):
    from eureka_kit.models import build_toy_model
    from eureka_kit.prm.model import init_prm

    model, tok = build_toy_model()
    model.save_pretrained(tmp_path / "policy")
    tok.save_pretrained(tmp_path / "policy")
    assert main(["prm", "label", "--out", str(tmp_path / "run"), "--policy", str(tmp_path / "policy"),
                 "--n-per-level", "1", "--levels", "0", "--rollouts", "2", "--budget", "4", "--max-len", "8"]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["problems"] == 1 and stats["rollouts"] <= 4
    init_prm(model, tok)
    model.save_pretrained(tmp_path / "prm")
    tok.save_pretrained(tmp_path / "prm")
    assert main(["prm", "score", "--prm", str(tmp_path / "prm"), "--question", "What is 1+2?",
                 "--solution", "<step>1+2=3</step><answer>3</answer>"]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(scores) == 2 and all(0 < s < 1 for s in scores)
