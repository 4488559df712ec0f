"""pass@k and the per-subject summary against hand-computed values."""

import math

import pandas as pd
import pytest

from eureka_kit.engine.evaluate import pass_at_k, summarize


def test_pass_at_k_matches_the_combinatorial_definition():
    # n=4 samples, c=1 correct: pass@1 = 1/4; pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(4, 3, 2) == 1.0  # n - c < k: any 2 of 4 contain a correct one
    assert pass_at_k(16, 5, 4) == pytest.approx(1 - math.comb(11, 4) / math.comb(16, 4))
    with pytest.raises(ValueError, match="k"):
        pass_at_k(2, 1, 3)


def test_summarize_buckets_problems_by_success_rate():
    per_problem = pd.DataFrame({
        "problem_id": list("abcd"), "subject": ["math"] * 4, "level": [0, 1, 2, 3],
        "samples": [4] * 4, "successes": [0, 1, 2, 4],
    })
    row = summarize(per_problem, ks=(1, 4)).iloc[0]
    assert row.accuracy == pytest.approx((0 + 0.25 + 0.5 + 1) / 4)
    assert row.never_solved == 0.25 and row.sometimes_solved == 0.25 and row.mostly_solved == 0.5
    assert row["pass@4"] == pytest.approx(0.75)  # every problem with c > 0 is solved within 4 of 4


def test_summarize_reports_greedy_accuracy_when_measured():
    per_problem = pd.DataFrame({"problem_id": list("abc"), "subject": ["math", "math", "physics"], "level": [0, 1, 0],
                                "samples": [2] * 3, "successes": [2, 0, 1], "greedy_correct": [1, 0, 0]})
    summary = summarize(per_problem, ks=(1, 2)).set_index("subject")
    assert summary.loc["math", "greedy_accuracy"] == 0.5 and summary.loc["physics", "greedy_accuracy"] == 0.0
    assert summary.loc["physics", "pass@2"] == 1.0
    assert "greedy_accuracy" not in summarize(per_problem.drop(columns="greedy_correct"))
