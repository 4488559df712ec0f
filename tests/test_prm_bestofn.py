"""Best-of-N aggregations (MM-PRM's released code, by hand) and the evaluation table."""

import math

import pytest

from eureka_kit.prm.bestofn import AGGREGATIONS, aggregate, bon_table, majority_pick, pick_best

SCORES = [[0.9, 0.8, 0.2], [0.6, 0.6, 0.6], [0.95, 0.3, 0.99]]
LABELS = [0, 1, 0]


def test_aggregation_values_by_hand():
    agg = lambda how: [aggregate(s, how) for s in SCORES]  # noqa: E731
    assert agg("min") == pytest.approx([0.2, 0.6, 0.3])
    assert agg("last") == pytest.approx([0.2, 0.6, 0.99])
    assert agg("max") == pytest.approx([0.9, 0.6, 0.99])
    assert agg("average") == pytest.approx([19 / 30, 0.6, 2.24 / 3])
    assert agg("product") == pytest.approx([0.144, 0.216, 0.2821], abs=1e-4)
    assert agg("sum_logprob") == pytest.approx([math.log(0.144), math.log(0.216), math.log(0.28215)], abs=1e-4)
    assert agg("sum_logit") == pytest.approx([2.1972, 1.2164, 6.6923], abs=1e-4)
    assert agg("mean_odd") == pytest.approx([4.4167, 1.5, 39.4762], abs=1e-4)


def test_picks_by_hand():
    picks = {how: pick_best([aggregate(s, how) for s in SCORES]) for how in AGGREGATIONS}
    assert picks.pop("min") == 1 and LABELS[1] == 1
    assert set(picks.values()) == {2}  # every other aggregation picks the wrong candidate
    assert pick_best([aggregate([0.5], "min"), aggregate([0.5], "min")]) == 0  # ties: first index


def test_edge_cases():
    assert all(aggregate([], how) == 0.0 for how in AGGREGATIONS)
    assert aggregate([0.0, 0.5], "sum_logprob") == pytest.approx(-9999 + math.log(0.5))
    assert aggregate([1.0, 0.5], "sum_logit") == pytest.approx(9999.0)
    assert aggregate([1.0, 0.5], "mean_odd") == pytest.approx((9999 + 1) / 2)
    with pytest.raises(ValueError):
        aggregate([0.0], "sum_logit")  # as released: p = 0 raises


def test_majority_pick():
    assert majority_pick(["3", "5", "5", None, "3"]) == 0  # tie 3 vs 5: the answer seen first
    assert majority_pick(["3", "5", "5"]) == 1
    assert majority_pick([None, None]) is None


def test_bon_table_hand():
    # 4 candidates; N=2 -> groups {0,1}, {2,3}
    rec = dict(subject="math", answers=["7", "7", "8", "9"], labels=[1, 1, 0, 0],
               step_scores=[[0.2], [0.3], [0.9], [0.1]], orm_scores=[0.5, 0.1, 0.2, 0.9])
    table = bon_table([rec], ns=(1, 2, 4))
    acc = {(r.N, r.method): r.accuracy for r in table.itertuples()}
    assert acc[(1, "random")] == 0.5 and acc[(1, "prm_min")] == 0.5 and acc[(1, "oracle")] == 0.5
    assert acc[(2, "random")] == 0.5 and acc[(2, "majority")] == 0.5 and acc[(2, "orm")] == 0.5
    assert acc[(4, "prm_min")] == 0.0 and acc[(4, "majority")] == 1.0 and acc[(4, "orm")] == 0.0
    assert acc[(4, "oracle")] == 1.0
    assert set(table.columns) == {"subject", "N", "method", "accuracy", "problems"}


def test_plot():
    from eureka_kit.prm.bestofn import plot_bon

    rec = dict(subject="math", answers=["1", "2"], labels=[1, 0], step_scores=[[0.6], [0.4]], orm_scores=[0.1, 0.2])
    fig = plot_bon(bon_table([rec], ns=(1, 2)), methods=["random", "prm_min"])
    assert len(fig.data) == 2
