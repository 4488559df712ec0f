"""Best-of-N reranking with a PRM (MM-PRM's released code, github.com/ModalMinds/MM-PRM): step scores -> one solution score -> argmax of N candidates.

Aggregations follow MM-PRM `eval/prm/extract_calculate.py`; an empty step list scores 0. Baselines:
random pick (its *exact* expectation, the mean label, where MM-PRM draws 5000 picks), majority vote over
the parsed final answers (ties: the answer seen first; answer-less candidates do not vote) and an outcome
reward model, which here is the same PRM reading one marker after the whole solution (the steps joined
by "\\n\\n"). For N < 16 the 16 sampled candidates are cut into 16/N disjoint groups and the accuracies
averaged (less variance than one group, no candidate reused).
"""

from __future__ import annotations

import math
from collections import Counter

import pandas as pd
import torch

from eureka_kit.data import rewards
from eureka_kit.engine import rollout
from eureka_kit.prm.data import PRM_TAG
from eureka_kit.prm.model import process_for_scoring, score_processes
from eureka_kit.prm.steps import parse_steps


def _sum_logprob(p: list[float]) -> float:
    return sum(math.log(x) if x > 0 else -9999.0 for x in p)


def _sum_logit(p: list[float]) -> float:
    # p = 0 raises (math domain error), as the released code does
    return sum(9999.0 if x >= 1 else math.log(x / (1 - x)) for x in p)


def _mean_odd(p: list[float]) -> float:
    return sum(9999.0 if x >= 1 else x / (1 - x) for x in p) / len(p)


AGGREGATIONS = {
    "min": min,
    "last": lambda p: p[-1],
    "product": math.prod,
    "average": lambda p: sum(p) / len(p),
    "max": max,
    "sum_logprob": _sum_logprob,
    "sum_logit": _sum_logit,
    "mean_odd": _mean_odd,
}


def aggregate(step_scores: list[float], how: str) -> float:
    """One solution score from its step scores (MM-PRM's released code, github.com/ModalMinds/MM-PRM); 0.0 for an empty list.

    Example: aggregate([.9, .8, .2], "sum_logit") = ln 9 + ln 4 + ln .25 = 2.1972.
    """
    return AGGREGATIONS[how](list(step_scores)) if len(step_scores) else 0.0


def pick_best(scores: list[float]) -> int:
    """argmax, first index on ties (`list.index(max)`)."""
    return scores.index(max(scores))


def majority_pick(answers: list[str | None]) -> int | None:
    """Index of the first candidate carrying the most frequent answer (None answers do not vote)."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return None
    top = max(votes.values())
    return next(i for i, a in enumerate(answers) if a is not None and votes[a] == top)


def group_accuracy(c: dict, idx: list[int]) -> dict[str, float]:
    """Accuracy of every selection method on the candidates `idx` of one problem record."""
    labels = [c["labels"][i] for i in idx]
    out = {"random": sum(labels) / len(labels)}
    maj = majority_pick([c["answers"][i] for i in idx])
    out["majority"] = 0.0 if maj is None else float(labels[maj])
    out["orm"] = float(labels[pick_best([c["orm_scores"][i] for i in idx])])
    for how in AGGREGATIONS:
        out[f"prm_{how}"] = float(labels[pick_best([aggregate(c["step_scores"][i], how) for i in idx])])
    out["oracle"] = float(max(labels))  # pass@N of the group
    return out


def bon_table(records: list[dict], ns: tuple[int, ...] = (1, 2, 4, 8, 16)) -> pd.DataFrame:
    """Best-of-N accuracy per subject, N and method.

    Args:
        records: one per problem, {"subject", "answers": [N_max], "labels": [N_max] 0/1,
            "step_scores": [N_max lists of P(Yes)], "orm_scores": [N_max]}.
    Returns:
        DataFrame with columns subject, N, method, accuracy, problems.
    """
    rows = []
    for n in ns:
        per_problem = []
        for c in records:
            total = len(c["labels"])
            groups = [list(range(g, g + n)) for g in range(0, total - n + 1, n)]
            accs = [group_accuracy(c, idx) for idx in groups]
            per_problem.append({"subject": c["subject"], **{k: sum(a[k] for a in accs) / len(accs) for k in accs[0]}})
        df = pd.DataFrame(per_problem)
        for subject, part in df.groupby("subject", sort=False):
            for method in df.columns.drop("subject"):
                rows.append(dict(subject=subject, N=n, method=method, accuracy=float(part[method].mean()),
                                 problems=len(part)))
    return pd.DataFrame(rows)


@torch.no_grad()
def collect_candidates(policy, processor, prm, prm_processor, problems: list[dict], cfg, *, n: int = 16,
                       seed: int = 0, batch_problems: int = 16, sep: str = "") -> list[dict]:
    """Sample n step-form candidates per problem, judge them and score them with the PRM (and as an ORM).

    The answer is scored as the last step (MM-PRM splits it as one). `cfg` is a RunConfig (rollouts).
    """
    gen = torch.Generator().manual_seed(seed)
    records = []
    for i in range(0, len(problems), batch_problems):
        chunk = problems[i:i + batch_problems]
        ro = rollout.generate(policy, processor, chunk, cfg, gen, num_samples=n)
        golds = [str(chunk[j]["answer"]) for j in ro.problem_index.tolist()]
        acc = [p["accuracy"] for p in rewards.score_batch(ro.texts, golds, timeout=cfg.reward_timeout)]
        parsed = [parse_steps(t) for t in ro.texts]
        questions = [chunk[j]["question"] for j in ro.problem_index.tolist()]
        step_items = [(q, process_for_scoring(list(p.rollout), sep)) for q, p in zip(questions, parsed, strict=True)]
        orm_items = [(q, "\n\n".join(p.rollout) + PRM_TAG) for q, p in zip(questions, parsed, strict=True)]
        # an empty candidate has no marker: PRM scores [] (-> 0), ORM score 0
        step_scores = score_processes(prm, prm_processor, step_items)
        orm_scores = [s[-1] if p.rollout else 0.0
                      for s, p in zip(score_processes(prm, prm_processor, orm_items), parsed, strict=True)]
        for j, problem in enumerate(chunk):
            rows = range(j * n, (j + 1) * n)
            records.append(dict(id=problem["id"], subject=problem.get("subject", "math"), level=problem.get("level"),
                                answers=[parsed[r].answer for r in rows], labels=[int(acc[r]) for r in rows],
                                step_scores=[step_scores[r] for r in rows], orm_scores=[orm_scores[r] for r in rows]))
    return records


def plot_bon(table: pd.DataFrame, methods: list[str] | None = None):
    """Plotly figure: accuracy vs N (log2 axis), one line per method, one panel per subject."""
    import plotly.express as px

    df = table if methods is None else table[table["method"].isin(methods)]
    fig = px.line(df, x="N", y="accuracy", color="method", facet_col="subject", markers=True, log_x=True,
                  title="Best-of-N: PRM aggregations vs random, majority vote and ORM")
    fig.update_xaxes(tickvals=sorted(df["N"].unique()))
    return fig
