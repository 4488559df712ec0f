"""Glue the ablation notebooks share, so each notebook stays parameters -> these calls -> figures.

Everything here is a thin composition of `train`, `evaluate` and the run directory; no algorithm lives here.
Figures and tables that only the notebooks draw (pooled log-ratio histograms, the ladder's config diff) are here
too, as pure data -> plotly functions. The findings notebooks (10-13) use `workbench.findings` instead.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from eureka_kit.config import ALGORITHM_FIELDS, RunConfig
from eureka_kit.engine import evaluate as evaluate_mod
from eureka_kit.engine.base_policy import load_policy
from eureka_kit.engine.loop import train
from eureka_kit.engine.runs import Run, RunDir
from eureka_kit.prm import process_adv  # noqa: F401 - registers the PRM signal: arms may train PRM presets

# ---------------------------------------------------------------------------------------------
# Models and data.


def load_base(model: str = "toy", seed: int = 0):
    """(policy, tokenizer/processor): the cached SFT'd toy base policy or a local model folder."""
    return load_policy(model, seed=seed)


def train_arm(cfg: RunConfig, base_policy, processor, *, problems: list[dict] | None = None,
              progress: bool = True) -> Run:
    """RL-train a deep copy of `base_policy` (the base stays untouched for the next arm)."""
    return train(cfg, policy=copy.deepcopy(base_policy), processor=processor, problems=problems, progress=progress)


def evaluate_on(policy, processor, cfg: RunConfig, problems: dict[str, list[dict]], *, num_samples: int,
                seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per_problem, summary) of sampled evaluation on the given problems per subject."""
    cfg = RunConfig.from_dict({**cfg.to_dict(), "seed": seed})
    return evaluate_mod.evaluate(policy, processor, cfg, subjects=tuple(problems), num_samples=num_samples,
                                 problems_by_subject=problems)


# ---------------------------------------------------------------------------------------------
# Tables computed from run directories.


def histories(runs: dict[str, Run]) -> dict[str, pd.DataFrame]:
    """name -> metrics DataFrame (read back from each run directory)."""
    return {name: run.dir.metrics() for name, run in runs.items()}


def arm_table(hist: dict[str, pd.DataFrame], keys: dict[str, str], *, last_frac: float = 0.5) -> pd.DataFrame:
    """Per arm ("arm/seed" names grouped): mean and seed std of each key, over the last `last_frac` of steps
    (keys ending in _max use the max over all steps instead)."""
    rows: dict[str, dict[str, list[float]]] = {}
    for name, h in hist.items():
        arm = name.split("/")[0]
        tail = h.iloc[max(0, int(len(h) * (1 - last_frac)) - (1 if len(h) else 0)):] if len(h) else h
        for key in keys:
            if key not in h:
                continue
            value = float(h[key].max()) if key.endswith("_max") else float(tail[key].mean())
            rows.setdefault(arm, {}).setdefault(key, []).append(value)
    out = []
    for arm, values in rows.items():
        row: dict[str, Any] = {"arm": arm, "seeds": max(len(v) for v in values.values())}
        for key, label in keys.items():
            v = values.get(key, [])
            row[label] = float(np.mean(v)) if v else float("nan")
            row[label + " sd"] = float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")
        out.append(row)
    return pd.DataFrame(out)


def token_log_ratios(run: RunDir, steps: list[int] | None = None, *, by_epoch: bool = False) -> pd.DataFrame:
    """Long table of every valid token's log-ratio (new - old) over saved steps: step, sample, log_ratio, adv.

    `by_epoch`: one row per token and update epoch (column `epoch`, 1-based), from the rollouts' `epoch_logp`
    (saved when a run has several update epochs; a one-epoch run gives epoch 1 = its last epoch)."""
    frames = []
    for step in steps if steps is not None else run.rollout_steps():
        df = run.rollouts(step)
        for r in df.itertuples():
            m = np.asarray(r.loss_mask) > 0
            old = np.asarray(r.old_logp)
            saved = getattr(r, "epoch_logp", None)  # an array of per-epoch arrays when present
            per_epoch = list(saved) if by_epoch and saved is not None else []
            for epoch, logp in enumerate(per_epoch or [r.new_logp], start=1):
                lr = (np.asarray(logp) - old)[m]
                frames.append(pd.DataFrame({"step": step, "sample": r.sample, "log_ratio": lr, "adv": r.advantage,
                                            **({"epoch": epoch} if by_epoch else {})}))
    columns = ["step", "sample", "log_ratio", "adv"] + (["epoch"] if by_epoch else [])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def config_diff(configs: dict[str, RunConfig]) -> pd.DataFrame:
    """Rows: consecutive arms; columns: the algorithm slots that changed (from -> to)."""
    names, rows = list(configs), []
    for prev, cur in zip(names, names[1:], strict=False):
        a, b = configs[prev].algorithm(), configs[cur].algorithm()
        changed = {k: f"{a[k]} -> {b[k]}" for k in ALGORITHM_FIELDS if a[k] != b[k]}
        rows.append({"step": f"{prev} -> {cur}", "changed slots": ", ".join(f"{k}: {v}" for k, v in changed.items())})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Figures only the notebooks draw.


def log_ratio_histograms(tables: dict[str, pd.DataFrame], *, ratio: bool = False, nbins: int = 60) -> go.Figure:
    """Overlaid histograms (log count) of pooled per-token log-ratios (or ratios) per arm."""
    from eureka_kit.workbench.viz import color_for

    fig, names = go.Figure(), list(tables)
    for name, t in tables.items():
        x = np.exp(t.log_ratio) if ratio else t.log_ratio
        fig.add_histogram(x=x, name=name, opacity=0.55, nbinsx=nbins, marker_color=color_for(name, names))
    fig.update_layout(barmode="overlay", yaxis_type="log", height=340, margin=dict(t=30, b=30),
                      xaxis_title="ratio new/old" if ratio else "log-ratio new - old",
                      legend=dict(orientation="h", y=1.12))
    return fig


# ---------------------------------------------------------------------------------------------
# "What this shows": sentences computed from numbers.


def compare(a_name: str, a: float, b_name: str, b: float, *, sd: float | None = None, what: str = "",
            higher_is: str = "higher") -> str:
    """'a (x) is higher than b (y)' when |a - b| > sd (the seeds' spread), 'within the seed spread' when
    |a - b| <= sd, and 'one seed: no verdict' when there is no spread to compare against (sd None or NaN,
    i.e. one seed per arm): a difference between two single runs is not tested, so no direction is claimed."""
    if any(isinstance(v, float) and math.isnan(v) for v in (a, b)):
        return f"{what}: not measured"
    diff = a - b
    if sd is None or math.isnan(sd):
        return (f"{what}: {a_name} {a:.3g} vs {b_name} {b:.3g} (difference {diff:+.3g}) — one seed: no verdict, "
                f"the difference is not tested (inconclusive)")
    if abs(diff) <= sd:
        return f"{what}: {a_name} {a:.3g} vs {b_name} {b:.3g} — within the seed spread ({sd:.2g}), no clear difference"
    word = higher_is if diff > 0 else ("lower" if higher_is == "higher" else "higher")
    return f"{what}: {a_name} {a:.3g} is {word} than {b_name} {b:.3g} (difference {diff:+.3g})"


def show_markdown(text: str) -> None:
    """Display markdown in a notebook (prints it elsewhere, e.g. under a plain interpreter)."""
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display

        if get_ipython() is not None:
            display(Markdown(text))
            return
    except ImportError:
        pass
    print(text)


def run_root(root: str | Path, notebook: str) -> Path:
    """Where a notebook's runs go: <root>/<notebook>."""
    path = Path(root) / notebook
    path.mkdir(parents=True, exist_ok=True)
    return path


def rl_settings(*, num_steps: int, rollout_batch_size: int, group_size: int, minibatches: int, update_epochs: int,
                lr: float, max_len: int, model: str = "toy", data_path: str | None = None) -> dict[str, Any]:
    """RunConfig overrides shared by a notebook's arms; `minibatches` optimizer steps per rollout per epoch
    (more minibatches and epochs = more off-policy pressure). Raises NotebookParameterError when the batch
    does not split into whole groups."""
    from eureka_kit.workbench.notebook_params import NotebookParameterError

    batch = rollout_batch_size * group_size
    if batch % minibatches or (batch // minibatches) % group_size:
        raise NotebookParameterError(
            f"parameter 'minibatches': rollout_batch_size * group_size = {batch} responses must split into "
            f"{minibatches} minibatches of whole groups of {group_size}, got minibatches={minibatches!r}")
    train_bs = batch // minibatches
    out = dict(num_steps=num_steps, rollout_batch_size=rollout_batch_size, group_size=group_size,
               train_batch_size=train_bs, micro_batch_size=train_bs, update_epochs=update_epochs, lr=lr,
               max_len=max_len, model=model)
    if data_path:
        out.update(task="mmk12", data_path=data_path)
    return out
