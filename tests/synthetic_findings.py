"""Hand-made findings cells (no training): every key `findings.effect_of` and the page read, with values chosen
so each finding's per-seed effect is known by hand."""

from __future__ import annotations

from eureka_kit.workbench.findings import ARMS, Profile

SEEDS = (0, 1, 2)
PROFILE = Profile("synthetic", seeds=SEEDS, num_steps=4, doses=(1, 8), eval_per_level=2, eval_samples=4,
                  bucket_samples=4)
# 8 problems: levels 0..3 twice; the base's bucket sample solves 4/4, 2/4, 0/4, 0/4, 4/4, 1/4, 0/4, 0/4 of them
LEVELS = [0, 1, 2, 3, 0, 1, 2, 5]
BUCKET = [4, 2, 0, 0, 4, 1, 0, 0]
BUCKETS = ["always", "sometimes", "never", "never", "always", "sometimes", "never", "untaught"]


def cells(tail: dict[str, list[float]] | None = None, auc: dict[str, list[float]] | None = None,
          ood: dict[str, list[float]] | None = None, math: dict[str, list[float]] | None = None,
          after: list[int] | None = None, resample: list[int] | None = None) -> dict[tuple[str, int], dict]:
    """{(arm, seed): cell} for every arm of PROFILE; per-arm lists give one value per seed (defaults: 0.1)."""
    out = {}
    for arm, seed in PROFILE.cells():
        i = SEEDS.index(seed)

        def pick(table, default, arm=arm, i=i):
            return (table or {}).get(arm, [default] * len(SEEDS))[i]

        cell = dict(arm=arm, seed=seed, eval_samples=4, levels=LEVELS,
                    math_accuracy=pick(math, 0.4), ood_accuracy=pick(ood, 0.2), math_auc=pick(auc, 0.4),
                    per_problem_successes=list(after or [4, 3, 1, 0, 4, 2, 0, 0]))
        if ARMS[arm].kind == "base":
            cell.update(buckets=BUCKETS, bucket_successes=BUCKET, bucket_samples=4,
                        per_problem_successes=list(resample or [4, 2, 1, 1, 3, 1, 0, 0]))
        if ARMS[arm].kind == "rl":
            cell.update(ratio_tail_share=pick(tail, 0.01), ratio_max_median=3.0, train_s=1.0,
                        curve=[(0, 0.4), (4, pick(math, 0.4))])
        out[(arm, seed)] = cell
    return out
