"""Evaluation: per-problem attempts/successes (pass@k) by subject, and greedy accuracy.

Uses the same rollout backend and reward as training, so numbers are comparable across the toy world
and real models. `pass_at_k` is the unbiased estimator of Chen et al. 2021 (arXiv 2107.03374).
`write_to_run_dir` keeps an evaluation next to the run it measures:

    <run>/eval/<name>/per_problem.parquet   one row per problem: samples, successes, greedy_correct, ...
    <run>/eval/<name>/summary.json          one record per subject: accuracy, greedy_accuracy, pass@k, ...
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from eureka_kit.config import RunConfig
from eureka_kit.data import rewards
from eureka_kit.data.problems import load_problems
from eureka_kit.engine import rollout


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"k: must be <= n={n}, got {k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@torch.no_grad()
def sample_problems(policy, processor, problems: list[dict], cfg: RunConfig, *, num_samples: int = 16,
                    greedy: bool = False, batch_problems: int = 16, seed: int = 0, progress: bool = False) -> pd.DataFrame:
    """One row per problem: id, subject, level, samples, successes, format_rate, mean_length.

    Raises rewards.VerifierUnavailable before sampling when the verifier cannot run (it would score every answer 0).
    """
    rewards.check_verifier(cfg.reward_timeout)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    chunks = [problems[i:i + batch_problems] for i in range(0, len(problems), batch_problems)]
    for chunk in tqdm(chunks, desc="eval", disable=not progress, ncols=100):
        ro = rollout.generate(policy, processor, chunk, cfg, gen, num_samples=1 if greedy else num_samples,
                              greedy=greedy)
        golds = [str(chunk[i]["answer"]) for i in ro.problem_index.tolist()]
        parts = rewards.score_batch(ro.texts, golds, compat=cfg.mmeureka_compat, timeout=cfg.reward_timeout)
        k = 1 if greedy else num_samples
        for j, problem in enumerate(chunk):
            mine = parts[j * k:(j + 1) * k]
            rows.append({
                "problem_id": problem["id"], "subject": problem.get("subject", "math"), "level": problem.get("level"),
                "samples": k, "successes": int(sum(p["accuracy"] for p in mine)),
                "format_rate": sum(p["format"] > 0 for p in mine) / k,
                "mean_length": float(ro.lengths[j * k:(j + 1) * k].float().mean()),
            })
    return pd.DataFrame(rows)


def summarize(per_problem: pd.DataFrame, ks: tuple[int, ...] = (1, 4, 16)) -> pd.DataFrame:
    """Per subject: accuracy per sample, pass@k, share of problems never / sometimes / mostly solved, and
    greedy accuracy when `per_problem` has a `greedy_correct` column."""
    out = []
    for subject, df in per_problem.groupby("subject", sort=False):
        n = int(df["samples"].iloc[0])
        rate = df["successes"] / df["samples"]
        row = {"subject": subject, "problems": len(df), "accuracy": float(rate.mean()),
               "never_solved": float((df["successes"] == 0).mean()),
               "sometimes_solved": float(((df["successes"] > 0) & (rate < 0.5)).mean()),
               "mostly_solved": float((rate >= 0.5).mean())}
        if "greedy_correct" in df:
            row["greedy_accuracy"] = float(df["greedy_correct"].mean())
        for k in ks:
            if k <= n:
                row[f"pass@{k}"] = float(sum(pass_at_k(int(s), int(c), k) for s, c in zip(df.samples, df.successes,
                                                                                         strict=True)) / len(df))
        out.append(row)
    return pd.DataFrame(out)


def evaluate(policy, processor, cfg: RunConfig, *, subjects: tuple[str, ...] = ("math", "physics", "chemistry", "biology"),
             num_samples: int = 16, problems_by_subject: dict[str, list[dict]] | None = None,
             greedy: bool = False, progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sampled evaluation on the test split of each subject (plus one greedy answer per problem when
    `greedy`: column `greedy_correct`, summary `greedy_accuracy`). Returns (per_problem, summary)."""

    frames = []
    for subject in subjects:
        problems = (problems_by_subject or {}).get(subject) or load_problems(cfg, split="test", subject=subject)
        df = sample_problems(policy, processor, problems, cfg, num_samples=num_samples, seed=cfg.seed,
                             progress=progress)
        if greedy:
            df["greedy_correct"] = sample_problems(policy, processor, problems, cfg, greedy=True)["successes"].values
        frames.append(df)
    per_problem = pd.concat(frames, ignore_index=True)
    return per_problem, summarize(per_problem)


def write_to_run_dir(run_path: str | os.PathLike, per_problem: pd.DataFrame, summary: pd.DataFrame, *,
                     name: str = "final") -> Path:
    """Save an evaluation under `<run>/eval/<name>/` (atomically per file); returns that folder."""
    out = Path(run_path) / "eval" / name
    out.mkdir(parents=True, exist_ok=True)
    per_problem.to_parquet(out / "per_problem.parquet.tmp", index=False)
    os.replace(out / "per_problem.parquet.tmp", out / "per_problem.parquet")
    (out / "summary.json.tmp").write_text(json.dumps(summary.to_dict("records"), indent=2))
    os.replace(out / "summary.json.tmp", out / "summary.json")
    return out


def read_from_run_dir(run_path: str | os.PathLike, name: str = "final") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per_problem, summary) written by `write_to_run_dir`."""
    out = Path(run_path) / "eval" / name
    if not (out / "summary.json").exists():
        raise FileNotFoundError(f"evaluation {name!r}: {out} has no summary.json (run `eureka-kit eval {run_path}`)")
    return pd.read_parquet(out / "per_problem.parquet"), pd.DataFrame(json.loads((out / "summary.json").read_text()))
