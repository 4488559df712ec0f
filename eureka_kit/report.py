"""Static HTML reports. `toy_report` is the README's main job: an ablation on the CPU toy world.

It evaluates the toy base policy, trains each preset (same seed, same prompts, same off-policy pressure:
several optimizer steps per rollout at a high learning rate), evaluates again in-domain (`math`) and
out-of-domain (`physics`, `chemistry`, `biology`), and writes one HTML page with plotly charts that
renders offline (plotly.js is written once next to the page). Conclusions in the page are computed
from the results, never written in advance.
"""

from __future__ import annotations

import copy
import html
import json
import time
from pathlib import Path

import pandas as pd
import plotly.io as pio
import torch

from eureka_kit import diagnostics, evaluate, viz
from eureka_kit.config import RunConfig
from eureka_kit.train import train

# Off-policy pressure (ALGORITHMS.md D8): 64 responses per rollout, 4 minibatches x 2 epochs = 8 optimizer
# steps per rollout. Calibrated on the 700-step toy base: at lr 1e-4 GRPO's max token ratio reached 72 where
# CPGD's stayed near 17; at lr 3e-4 and above every preset collapsed to ~0 accuracy within 20 steps.
TOY_PRESSURE = dict(rollout_batch_size=8, group_size=8, train_batch_size=16, micro_batch_size=16,
                    update_epochs=2, max_len=48, lr=1e-4, num_steps=40, reward_timeout=2.0)


def write_plotly_js(out_dir: Path) -> None:
    from plotly.offline import get_plotlyjs

    target = out_dir / "plotly.min.js"
    if not target.exists():
        target.write_text(get_plotlyjs())


def figure_div(fig) -> str:
    return pio.to_html(fig, include_plotlyjs=False, full_html=False)


def html_page(title: str, sections: list[tuple[str, str]]) -> str:
    """A self-contained page (except ./plotly.min.js): sections are (heading, html body)."""
    body = "\n".join(f"<section><h2>{html.escape(h)}</h2>\n{b}</section>" for h, b in sections)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<script src="plotly.min.js"></script>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;font-size:14px}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
th{{background:#f4f4f4}}section{{margin-bottom:2em}}.warn{{color:#a00}}code{{background:#f4f4f4}}</style>
</head><body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>"""


def _table(df: pd.DataFrame, floatfmt: str = "{:.3g}") -> str:
    return df.to_html(index=False, float_format=lambda v: floatfmt.format(v), border=0)


def toy_report(out_dir: str | Path = "reports/toy_world", presets: tuple[str, ...] = ("grpo", "grpo_kl", "cpgd"),
               *, seed: int = 0, eval_samples: int = 8, progress: bool = True, **overrides) -> Path:
    """Run the toy-world ablation and write `out_dir/index.html`. Returns the page's path."""
    from eureka_kit import models

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    settings = {**TOY_PRESSURE, **overrides}
    base_policy, tok = models.load("toy", seed=seed)
    eval_cfg = RunConfig.from_preset(presets[0], seed=seed, **settings)

    print("evaluating the base policy ...", flush=True)
    base_problems, base_summary = evaluate.evaluate(base_policy, tok, eval_cfg, num_samples=eval_samples, progress=progress)
    runs, after_problems, after_summary = {}, {}, {}
    for preset in presets:
        cfg = RunConfig.from_preset(preset, seed=seed, run_dir=str(out_dir / "runs" / preset), **settings)
        run = train(cfg, policy=copy.deepcopy(base_policy), processor=tok, progress=progress)
        runs[preset] = run
        after_problems[preset], after_summary[preset] = evaluate.evaluate(run.policy, tok, cfg, num_samples=eval_samples,
                                                                          progress=progress)
    elapsed = time.perf_counter() - started

    histories = {name: run.dir.metrics() for name, run in runs.items()}
    headline = _headline(base_summary, after_summary, histories)
    sections = [
        ("Setup", _setup_html(settings, presets, seed, eval_samples, elapsed)),
        ("Results", _table(headline) + _findings_html(headline, histories)),
        ("Training curves", figure_div(viz.training_curves(histories))),
        ("Accuracy by subject (in-domain math, out-of-domain physics/chemistry/biology)",
         figure_div(viz.subject_accuracy({"base": base_summary, **after_summary}))),
        ("Which problems RL lifts (bucketed by the base policy's success rate on math)",
         figure_div(viz.solved_vs_never(base_problems[base_problems.subject == "math"],
                                        {k: v[v.subject == "math"] for k, v in after_problems.items()}))),
    ]
    for name, run in runs.items():
        steps = run.dir.rollout_steps()
        if steps:
            sections.append((f"{name}: per-token log-ratio at the last step",
                             figure_div(viz.ratio_histogram(run.dir.rollouts(steps[-1])))))
        sections.append((f"{name}: per-problem learning matrix", figure_div(viz.problem_matrix(run.dir.problems()))))
    write_plotly_js(out_dir)
    page = out_dir / "index.html"
    page.write_text(html_page(f"eureka_kit toy-world report: {', '.join(presets)} under off-policy pressure", sections))
    (out_dir / "summary.json").write_text(json.dumps(headline.to_dict(orient="records"), indent=2))
    print(headline.to_string(index=False))
    print(f"report: {page} ({elapsed:.0f} s)")
    return page


def _headline(base: pd.DataFrame, after: dict[str, pd.DataFrame], histories: dict[str, pd.DataFrame]) -> pd.DataFrame:
    rows = []
    for name, summary in {"base": base, **after}.items():
        acc = summary.set_index("subject")["accuracy"]
        h = histories.get(name, pd.DataFrame())
        rows.append({
            "model": name,
            "math acc": acc.get("math", float("nan")),
            "OOD acc": acc.drop("math", errors="ignore").mean(),
            "math never solved": float(summary.set_index("subject").loc["math", "never_solved"]) if "math" in acc else float("nan"),
            "peak ratio max": h["policy/ratio_max"].max() if "policy/ratio_max" in h else float("nan"),
            "mean clip frac": h["policy/clipfrac"].mean() if "policy/clipfrac" in h else float("nan"),
            "final entropy": h["policy/entropy"].iloc[-1] if "policy/entropy" in h else float("nan"),
            "warnings": _warning_summary(h),
        })
    return pd.DataFrame(rows)


def _warning_summary(history: pd.DataFrame) -> str:
    """'ratio_tail x4 (first at step 3)' per sentinel kind, '-' when none fired."""
    if history.empty:
        return "-"
    found: dict[str, list[int]] = {}
    for w in diagnostics.collapse_warnings(history.to_dict("records")):
        found.setdefault(str(w["kind"]), []).append(int(w["step"]))
    return "; ".join(f"{k} x{len(v)} (first at step {v[0]})" for k, v in found.items()) or "-"


def _setup_html(settings: dict, presets, seed: int, eval_samples: int, elapsed: float) -> str:
    items = "".join(f"<li><code>{html.escape(k)}={html.escape(str(v))}</code></li>" for k, v in settings.items())
    return (f"<p>Presets {', '.join(presets)}; seed {seed}; evaluation: {eval_samples} samples per test problem at "
            f"temperature 1. Torch threads: {torch.get_num_threads()}. Wall time {elapsed:.0f} s.</p><ul>{items}</ul>")


def _findings_html(headline: pd.DataFrame, histories: dict[str, pd.DataFrame]) -> str:
    """Plain-language findings computed from the numbers."""
    base = headline.iloc[0]
    lines = []
    for _, row in headline.iloc[1:].iterrows():
        delta, ood = row["math acc"] - base["math acc"], row["OOD acc"] - base["OOD acc"]
        lines.append(f"<li><b>{row.model}</b>: math accuracy {base['math acc']:.1%} → {row['math acc']:.1%} "
                     f"({delta:+.1%}), out-of-domain {base['OOD acc']:.1%} → {row['OOD acc']:.1%} ({ood:+.1%}); "
                     f"largest token ratio seen {row['peak ratio max']:.3g}; collapse sentinels: {row.warnings}.</li>")
    arms = headline.set_index("model")
    if {"grpo", "cpgd"} <= set(arms.index):
        g, c = arms.loc["grpo", "peak ratio max"], arms.loc["cpgd", "peak ratio max"]
        verdict = "reproduces" if c < g else "does NOT reproduce"
        lines.append(f"<li>Stability (CPGD paper §4.2: GRPO without KL grows ratio tails, CPGD keeps them bounded) "
                     f"{verdict} here: peak token ratio GRPO {g:.3g} vs CPGD {c:.3g} ({g / c:.2g}x).</li>")
    lifted = [m for m in arms.index[1:] if arms.loc[m, "math acc"] > base["math acc"]]
    lines.append("<li>RL improving in-domain accuracy over the base policy: "
                 + (f"seen for {', '.join(lifted)}." if lifted else
                    "does NOT reproduce here: every preset ends below the base policy (see reports/LOG.md).")
                 + "</li>")
    if len(headline) > 2:
        best = headline.iloc[1:].sort_values("math acc", ascending=False).iloc[0]
        calm = headline.iloc[1:].sort_values("peak ratio max").iloc[0]
        lines.append(f"<li>Highest final math accuracy: <b>{best.model}</b>; smallest ratio tail: <b>{calm.model}</b>.</li>")
    return "<ul>" + "".join(lines) + "</ul>"
