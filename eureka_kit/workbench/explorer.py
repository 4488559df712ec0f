"""Ratio explorer over run directories: pick a run, a step, a sample; see its tokens coloured by
log-ratio / train-inference mismatch / advantage / clip event / entropy, a per-token chart of pi_theta, pi_old and
the sampler's mu under the text, the run's worst tokens (by |log r| and by |log rho|, each opening its sample), the
step's raw tail quantiles, its group's rewards, the step's loss replayed under another preset, and the step's
same-batch comparison of several objectives (`same_batch`: parameter-gradient cosines when the run captured it).

Everything that computes is a pure function of (run path, step, sample, choices) returning HTML strings
or tables, so it is tested without a browser; `ExplorerWidget` (ipywidgets, JupyterLab) and
notebooks/ratio_explorer.py (marimo) are thin wrappers that call `view(...)`.

Entropy: training saves the per-token policy entropy (old policy, sampling temperature) in the rollouts
parquet; for run directories written before that column existed the explorer shows the sampled token's
surprisal -log p_old instead (its expectation is the entropy) and says so in the legend.
"""

from __future__ import annotations

import html
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from eureka_kit.config import RunConfig
from eureka_kit.engine.runs import open_run
from eureka_kit.workbench import same_batch
from eureka_kit.workbench.replay import pad_column, replay_step, step_tensors

COLOR_BY = ("log-ratio", "mismatch", "advantage", "clip", "entropy")
WORST_BY = {"log_ratio": "|log r| = |log pi_theta - log pi_old|", "log_rho": "|log rho| = |log pi_old - log mu|"}
MAX_COMPLETION_CHARS = 60


# ---------------------------------------------------------------------------------------------
# Finding runs and loading steps.


def find_runs(root: str | Path, max_depth: int = 4) -> list[str]:
    """Run directories (holding config.json and saved rollouts) under `root`, sorted; `root` itself included."""
    root = Path(root)
    if not root.exists():
        return []
    found = []
    for cfg in root.glob("config.json"):
        found.append(cfg.parent)
    for depth in range(1, max_depth + 1):
        found += [p.parent for p in root.glob("/".join(["*"] * depth) + "/config.json")]
    return sorted(str(p) for p in set(found) if (p / "rollouts").is_dir() and any((p / "rollouts").glob("step_*.parquet")))


def steps_of(run: str) -> list[int]:
    return open_run(run).rollout_steps()


@lru_cache(maxsize=32)
def load_step(run: str, step: int) -> pd.DataFrame:
    """The saved rollouts of one step, sorted by sample (cached: the parquet is immutable once written)."""
    return open_run(run).rollouts(step).sort_values("sample").reset_index(drop=True)


def run_preset(run: str) -> str:
    return open_run(run).config().get("config", {}).get("preset", "cpgd")


def sample_options(df: pd.DataFrame) -> list[tuple[str, int]]:
    """(label, sample) pairs for a picker: '#3 g0 reward 1.50 acc 1 A +0.71'."""
    return [(f"#{r.sample} g{r.group} reward {r.reward:.2f} acc {r.accuracy:.0f} A {r.advantage:+.2f}", int(r.sample))
            for r in df.itertuples()]


# ---------------------------------------------------------------------------------------------
# Per-token values and their colouring.


@lru_cache(maxsize=64)
def _replayed(run: str, step: int, preset: str):
    return replay_step(run, step, preset)


def _sample_index(run: str, step: int, sample: int) -> int:
    """Row of `sample` in step `step`'s saved rollouts; ValueError naming the samples there when it is missing."""
    df = load_step(run, step)
    rows = df.index[df["sample"] == sample]
    if not len(rows):
        raise ValueError(f"sample: {sample} is not in step {step} (samples 0..{len(df) - 1})")
    return int(rows[0])


def token_values(run: str, step: int, sample: int, color_by: str) -> tuple[list[str], np.ndarray, str]:
    """(tokens, values, legend) of one sample. clip: -1 clipped low side, +1 high side, 0 not clipped
    (under the run's own preset)."""
    if color_by not in COLOR_BY:
        raise ValueError(f"color_by: must be one of {COLOR_BY}, got {color_by!r}")
    df, i = load_step(run, step), _sample_index(run, step, sample)
    row = df.iloc[i]
    tokens = list(row["tokens"]) if "tokens" in df else [str(t) for t in row["token_ids"]]
    n = len(tokens)
    if color_by == "log-ratio":
        values = np.asarray(row["new_logp"]) - np.asarray(row["old_logp"])
        legend = "log-ratio new - old (green: more likely after the update, red: less)"
    elif color_by == "mismatch":
        if "behavior_logp" not in df:
            raise ValueError(f"color_by: 'mismatch' needs the sampler's log-probs (behavior_logp), which run {run} "
                             "did not save (written before they were recorded)")
        values = np.asarray(row["old_logp"]) - np.asarray(row["behavior_logp"])
        legend = "log rho = log pi_old - log mu: the sampler's mismatch (green: the learner likes the token more)"
    elif color_by == "advantage":
        values = np.full(n, float(row["advantage"])) * np.asarray(row["loss_mask"])
        legend = f"advantage A = {row['advantage']:+.3f} (same on every token of a response)"
    elif color_by == "clip":
        r = _replayed(run, step, run_preset(run))
        values = r.clipped_high[i, :n].astype(float) - r.clipped_low[i, :n].astype(float)
        legend = f"clip events under the run's preset ({run_preset(run)}): blue = high side (A>0), red = low side (A<0)"
    else:
        if "entropy" in df and row["entropy"] is not None:
            values, legend = np.asarray(row["entropy"]), "entropy of the policy at each position (nats)"
        else:
            values = -np.asarray(row["old_logp"])
            legend = "surprisal -log p_old of the sampled token (entropy not saved in this run; its mean is the entropy)"
    return tokens, np.asarray(values, dtype=float)[:n], legend


def _rgb(value: float, scale: float, kind: str) -> str:
    """Background colour: diverging red-white-green (signed values) or white-purple (entropy/surprisal)."""
    if kind == "clip":
        return {1: "#9ecae1", -1: "#fc9272"}.get(int(np.sign(value)), "transparent")
    x = 0.0 if scale <= 0 else float(np.clip(value / scale, -1, 1))
    if kind == "entropy":
        x = abs(x)
        return f"rgb({int(255 - 120 * x)},{int(255 - 160 * x)},{255})"
    if x >= 0:
        return f"rgb({int(255 - 155 * x)},{255},{int(255 - 155 * x)})"
    x = -x
    return f"rgb({255},{int(255 - 155 * x)},{int(255 - 155 * x)})"


def tokens_html(tokens: list[str], values: np.ndarray, color_by: str, *, scale: float | None = None,
                legend: str = "") -> str:
    """Tokens as <span>s with a background colour for their value and a tooltip with the number."""
    if len(tokens) != len(values):
        raise ValueError(f"tokens and values differ in length: {len(tokens)} vs {len(values)}")
    if scale is None:
        finite = np.abs(values[np.isfinite(values)])
        scale = 1.0 if color_by in ("log-ratio", "mismatch") else float(finite.max()) if finite.size else 1.0
    spans = []
    for tok, v in zip(tokens, values, strict=True):
        shown = html.escape(tok).replace("\n", "⏎")
        spans.append(f'<span class="tok" title="{html.escape(color_by)} = {v:+.4f}" '
                     f'style="background:{_rgb(v, scale, color_by)};padding:1px 0;font-family:monospace">{shown}</span>')
    legend_html = f'<div style="font-size:12px;color:#555">{html.escape(legend)}</div>' if legend else ""
    return f'<div class="tokens" style="line-height:1.9;white-space:pre-wrap">{"".join(spans)}</div>{legend_html}'


# ---------------------------------------------------------------------------------------------
# Per-token table and chart, the run's worst tokens, the step's raw tails (before any correction).


def _run_correction(run: str) -> dict:
    """The run's correction settings (RunConfig fields; 'none' for runs written before corrections existed)."""
    settings = open_run(run).config().get("config", {})
    return {k: settings.get(k, getattr(RunConfig, k)) for k in
            ("correction", "correction_level", "correction_cap", "correction_low", "correction_high", "opsm_delta",
             "m2po_tau")}


@lru_cache(maxsize=32)
def _step_correction(run: str, step: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(weight, keep) [B, T] of the run's correction on the saved step (new_logp as pi_theta), or None."""
    import torch

    from eureka_kit.algos import mismatch

    settings = _run_correction(run)
    df = load_step(run, step)
    if settings["correction"] == "none" or "behavior_logp" not in df:
        return None
    t = step_tensors(df)
    mu = pad_column(df["behavior_logp"])
    fmask = t["mask"]
    adv = t["adv"][:, None].expand_as(fmask) * fmask
    cfg = RunConfig(**settings)
    weight, keep = mismatch.CORRECTIONS[settings["correction"]](
        (t["old_logp"] - mu) * fmask, fmask, cfg, logp=t["new_logp"], old_logp=t["old_logp"], behavior_logp=mu,
        adv=adv)
    return torch.as_tensor(weight).numpy(), torch.as_tensor(keep).numpy()


def token_table(run: str, step: int, sample: int) -> pd.DataFrame:
    """One row per token of one sample: probabilities under pi_theta (the learner after the update), pi_old and mu
    (the sampler), log r, log rho, advantage, entropy, and flags clipped (under the run's preset), masked (out of
    the loss), truncated (the response hit max_len; its last token), corrected (the run's correction weighted or
    dropped it)."""
    df, i = load_step(run, step), _sample_index(run, step, sample)
    row = df.iloc[i]
    new, old = np.asarray(row["new_logp"], float), np.asarray(row["old_logp"], float)
    n = len(new)
    mu = np.asarray(row["behavior_logp"], float) if "behavior_logp" in df else np.full(n, np.nan)
    tokens = list(row["tokens"]) if "tokens" in df else [str(t) for t in row["token_ids"]]
    replayed = _replayed(run, step, run_preset(run))
    clip = np.where(replayed.clipped_high[i, :n], "high", np.where(replayed.clipped_low[i, :n], "low", ""))
    corrected = np.zeros(n, dtype=bool)
    correction = _step_correction(run, step)
    if correction is not None:
        weight, keep = correction
        corrected = (keep[i, :n] == 0) | ~np.isclose(weight[i, :n], 1.0)
    truncated = np.zeros(n, dtype=bool)
    if str(row.get("finish_reason", "")) == "length" and n:
        truncated[-1] = True
    return pd.DataFrame({
        "position": np.arange(n), "token": tokens[:n], "pi_theta": np.exp(new), "pi_old": np.exp(old),
        "mu": np.exp(mu), "log_r": new - old, "log_rho": old - mu,
        "advantage": float(row["advantage"]) * np.asarray(row["loss_mask"], float),
        "entropy": np.asarray(row["entropy"], float) if "entropy" in df and row["entropy"] is not None
        else np.full(n, np.nan),
        "clipped": clip, "masked": np.asarray(row["loss_mask"], float) == 0, "truncated": truncated,
        "corrected": corrected,
    })


def token_chart(run: str, step: int, sample: int):
    """A plotly figure under the coloured text: log pi_theta, log pi_old and log mu per token (lines, left axis) and
    log r, log rho (bars, right axis), so small log-ratios that colour the text uniformly are still visible."""
    import plotly.graph_objects as go

    t = token_table(run, step, sample)
    x = [f"{p}:{tok}" for p, tok in zip(t.position, t.token, strict=True)]
    fig = go.Figure()
    for column, name in (("pi_theta", "log π_θ (after update)"), ("pi_old", "log π_old"), ("mu", "log μ (sampler)")):
        fig.add_trace(go.Scatter(x=x, y=np.log(t[column]), mode="lines+markers", name=name))
    for column, name in (("log_r", "log r = log π_θ − log π_old"), ("log_rho", "log ρ = log π_old − log μ")):
        fig.add_trace(go.Bar(x=x, y=t[column], name=name, yaxis="y2", opacity=0.6))
    fig.update_layout(title=f"step {step}, sample {sample}: per-token log-probs and log-ratios", height=380,
                      xaxis_title="position:token", yaxis_title="log-prob",
                      yaxis2=dict(title="log-ratio", overlaying="y", side="right", zeroline=True),
                      barmode="group", legend=dict(orientation="h", y=-0.35), margin=dict(t=40, b=10))
    return fig


@lru_cache(maxsize=16)
def _all_tokens(run: str) -> pd.DataFrame:
    """Every saved token of the run with its step, sample, position, log r and log rho (loss tokens only)."""
    frames = []
    for step in steps_of(run):
        df = load_step(run, step)
        for row in df.itertuples():
            new, old = np.asarray(row.new_logp, float), np.asarray(row.old_logp, float)
            mu = np.asarray(row.behavior_logp, float) if hasattr(row, "behavior_logp") else np.full(len(new), np.nan)
            keep = np.asarray(row.loss_mask, float) > 0
            tokens = list(row.tokens) if hasattr(row, "tokens") else [str(t) for t in row.token_ids]
            frames.append(pd.DataFrame({"step": step, "sample": int(row.sample), "position": np.arange(len(new)),
                                        "token": tokens[:len(new)], "log_ratio": new - old,
                                        "log_rho": old - mu})[keep])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["step", "sample", "position", "token", "log_ratio", "log_rho"])


def worst_tokens(run: str, by: str = "log_ratio", k: int = 20) -> pd.DataFrame:
    """The run's top-`k` tokens by |log r| (`by="log_ratio"`) or by |log rho| (`by="log_rho"`) over all saved steps:
    step, sample (to open), position, token, and both log-ratios. Empty when the run saved no mu (log_rho)."""
    if by not in WORST_BY:
        raise ValueError(f"by: must be one of {list(WORST_BY)}, got {by!r}")
    tokens = _all_tokens(run)
    tokens = tokens[np.isfinite(tokens[by])]
    order = tokens[by].abs().sort_values(ascending=False).index[:k]
    return tokens.loc[order].reset_index(drop=True)


def worst_options(run: str, by: str = "log_ratio", k: int = 20) -> list[tuple[str, tuple[int, int]]]:
    """(label, (step, sample)) pairs for a picker that opens each worst token's sample."""
    return [(f"step {r.step} #{r.sample} pos {r.position} {r.token!r}: log r {r.log_ratio:+.3f}, "
             f"log ρ {r.log_rho:+.3f}", (int(r.step), int(r.sample)))
            for r in worst_tokens(run, by, k).itertuples()]


TAIL_QUANTILES = (0.001, 0.01, 0.5, 0.99, 0.999)


def tail_table(run: str, step: int) -> pd.DataFrame:
    """Raw tails of one step before any correction: quantiles, max |.| and the share outside [log ½, log 2] of
    log r and of log rho over the loss tokens."""
    tokens = _all_tokens(run)
    tokens = tokens[tokens.step == step]
    rows = []
    for column, label in (("log_ratio", "log r (learner update)"), ("log_rho", "log ρ (sampler mismatch)")):
        v = tokens[column].to_numpy()
        v = v[np.isfinite(v)]
        if not len(v):
            continue
        rows.append({"quantity": label, **{f"q{q:g}": float(np.quantile(v, q)) for q in TAIL_QUANTILES},
                     "max |.|": float(np.abs(v).max()),
                     "outside [½, 2]": float((np.abs(v) > np.log(2) + 1e-9).mean()),  # the band's edge is inside
                     "tokens": len(v)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# The group and the replay panel.


def group_table(df: pd.DataFrame, sample: int) -> pd.DataFrame:
    """The responses of `sample`'s group: sample, reward, accuracy, advantage, length, completion (shortened)."""
    group = int(df.loc[df["sample"] == sample, "group"].iloc[0])
    g = df[df["group"] == group]
    return pd.DataFrame({
        "sample": g["sample"].astype(int), "reward": g["reward"], "accuracy": g["accuracy"],
        "advantage": g["advantage"], "tokens": g["loss_mask"].map(lambda m: int(np.sum(m))),
        "completion": g["completion"].map(lambda c: c if len(c) <= MAX_COMPLETION_CHARS else c[:MAX_COMPLETION_CHARS] + "…"),
    }).reset_index(drop=True)


def group_html(df: pd.DataFrame, sample: int) -> str:
    t = group_table(df, sample)
    problem = df.loc[df["sample"] == sample].iloc[0]
    rows = []
    for r in t.itertuples():
        style = ' style="background:#fff3bf;font-weight:bold"' if r.sample == sample else ""
        rows.append(f"<tr{style}><td>{r.sample}</td><td>{r.reward:.2f}</td><td>{r.accuracy:.0f}</td>"
                    f"<td>{r.advantage:+.3f}</td><td>{r.tokens}</td><td style='text-align:left;font-family:monospace'>"
                    f"{html.escape(r.completion)}</td></tr>")
    head = (f"<div>problem <code>{html.escape(str(problem['problem_id']))}</code> (answer "
            f"<code>{html.escape(str(problem['answer']))}</code>); group mean reward {t.reward.mean():.2f}, "
            f"{int((t.accuracy > 0).sum())}/{len(t)} correct</div>")
    return (head + "<table><tr><th>sample</th><th>reward</th><th>acc</th><th>advantage</th><th>tokens</th>"
            "<th>completion</th></tr>" + "".join(rows) + "</table>")


REPLAY_KEYS = (("loss/total", "loss"), ("policy/clipfrac_low", "clip low"), ("policy/clipfrac_high", "clip high"),
               ("policy/ratio_max", "ratio max"), ("policy/approx_kl", "drift KL k3"))


def replay_table(run: str, step: int, presets: list[str], sample: int | None = None) -> pd.DataFrame:
    """One row per preset: the step's replayed loss and clip stats; with `sample`, that response's own
    token-mean loss, clip fractions and mean |gradient coefficient|."""
    df = load_step(run, step)
    rows = []
    for preset in presets:
        r = _replayed(run, step, preset)
        row = {"preset": preset, **{label: r.stats.get(key, float("nan")) for key, label in REPLAY_KEYS}}
        if sample is not None:
            i = int(df.index[df["sample"] == sample][0])
            per = r.per_sample().iloc[i]
            n = max(r.mask[i].sum(), 1)
            row.update({"sample loss": per.loss_token_mean, "sample clip low": per.clipfrac_low,
                        "sample clip high": per.clipfrac_high,
                        "sample |grad|": float(np.abs(r.grad_coef[i]).sum() / n)})
        if r.stats.get("replay/kl_dropped"):
            row["note"] = "reference KL not replayable (not saved)"
        rows.append(row)
    return pd.DataFrame(rows)


def replay_html(run: str, step: int, preset: str, sample: int | None = None) -> str:
    own = run_preset(run)
    presets = [own] if preset == own else [own, preset]
    t = replay_table(run, step, presets, sample)
    return (f"<div>step {step} replayed: the saved batch (old/new log-probs, advantages, mask) under "
            f"<b>{html.escape(own)}</b> (trained) and <b>{html.escape(preset)}</b></div>"
            + t.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0))


SAME_BATCH_PRESETS = ("cpgd", "grpo", "sapo", "gmpo", "cispo", "gspo")


def step_capture(run: str, step: int) -> Path | None:
    """The run's capture of `step` (a collapse sentinel fired there: engine/capture.py), or None."""
    return next((p for p in open_run(run).captures() if int(p.name.split("_")[1]) == step), None)


@lru_cache(maxsize=16)
def _same_batch(run: str, step: int, presets: tuple[str, ...], at: str):
    capture = step_capture(run, step)
    if capture is not None:  # the step's weights were kept: parameter gradients and their cosines
        return same_batch.compare_capture(capture, presets, at=at)
    return same_batch.compare_step(run, step, presets)


def same_batch_pane(run: str, step: int, presets: list[str] | tuple[str, ...] = SAME_BATCH_PRESETS,
                    at: str = "end") -> str:
    """The step's same-batch comparison of `presets` as HTML (same_batch.same_batch_html): with the captured weights
    (at the start or end of the step) when the run captured that step, else from the saved log-probs alone."""
    if not presets:
        return "<div>same batch: pick at least one preset</div>"
    return same_batch.same_batch_html(_same_batch(run, step, tuple(presets), at))


def same_batch_chart(run: str, step: int, presets: list[str] | tuple[str, ...] = SAME_BATCH_PRESETS, at: str = "end"):
    """The step's same-batch figure (same_batch.same_batch_figure)."""
    return same_batch.same_batch_figure(_same_batch(run, step, tuple(presets), at))


def view(run: str, step: int, sample: int, color_by: str = "log-ratio", replay_preset: str = "cpgd") -> dict[str, str]:
    """Everything the explorer shows for one selection, as HTML strings: header, tokens, group, replay."""
    df = load_step(run, step)
    row = df.loc[df["sample"] == sample].iloc[0]
    tokens, values, legend = token_values(run, step, sample, color_by)
    header = (f"<b>{html.escape(Path(run).name)}</b> step {step}, sample {sample}: reward {row['reward']:.2f}, "
              f"accuracy {row['accuracy']:.0f}, advantage {row['advantage']:+.3f}, {len(tokens)} tokens, "
              f"finish: {html.escape(str(row.get('finish_reason', '')))}")
    flags = token_table(run, step, sample)
    counts = {f: int(flags[f].astype(bool).sum()) for f in ("clipped", "masked", "truncated", "corrected")}
    flags_html = "<div>" + ", ".join(f"{n} {f}" for f, n in counts.items()) + " tokens</div>"
    return {"header": header, "tokens": tokens_html(tokens, values, color_by, legend=legend) + flags_html,
            "tails": tail_table(run, step).to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0),
            "group": group_html(df, sample), "replay": replay_html(run, step, replay_preset, sample)}


# ---------------------------------------------------------------------------------------------
# ipywidgets wrapper (thin: every callback calls `view`).


class ExplorerWidget:
    """Run / step / sample pickers, colour choice and replay preset; HTML panes updated on every change."""

    def __init__(self, root: str | Path, *, replay_preset: str = "cpgd"):
        import ipywidgets as w

        from eureka_kit.config import PRESETS

        self.root = str(root)
        runs = find_runs(root)
        if not runs:
            raise FileNotFoundError(f"run directory: no runs with saved rollouts under {root}")
        self.run = w.Dropdown(options=[(Path(r).name, r) for r in runs], description="run")
        self.step = w.Dropdown(description="step")
        self.sample = w.Dropdown(description="sample", layout=w.Layout(width="460px"))
        self.color_by = w.ToggleButtons(options=list(COLOR_BY), value="log-ratio", description="colour")
        self.replay_preset = w.Dropdown(options=list(PRESETS), value=replay_preset, description="replay as")
        self.worst_by = w.ToggleButtons(options=[(v, k) for k, v in WORST_BY.items()], description="worst by")
        self.worst = w.Select(description="worst", rows=6, layout=w.Layout(width="760px"))
        self.header, self.tokens, self.tails, self.group, self.replay = (w.HTML() for _ in range(5))
        self.chart = w.Output()
        # the step's same-batch comparison (per step, not per sample): presets, weights at the start / end of a capture
        self.compare = w.SelectMultiple(options=list(PRESETS), value=SAME_BATCH_PRESETS, rows=6,
                                        description="same batch")
        self.compare_at = w.ToggleButtons(options=["end", "start"], value="end", description="weights at")
        self.same, self.same_chart = w.HTML(), w.Output()
        self.widget = w.VBox([w.HBox([self.run, self.step, self.sample]), w.HBox([self.color_by, self.replay_preset]),
                              self.worst_by, self.worst, self.header, self.tokens, self.chart, self.tails, self.group,
                              self.replay, w.HBox([self.compare, self.compare_at]), self.same, self.same_chart])
        self._busy = False
        self.run.observe(self._on_run, names="value")
        self.step.observe(self._on_step, names="value")
        self.worst_by.observe(self._on_worst_by, names="value")
        self.worst.observe(self._open_worst, names="value")
        for control in (self.sample, self.color_by, self.replay_preset):
            control.observe(self._render, names="value")
        for control in (self.compare, self.compare_at):
            control.observe(self._render_same, names="value")
        self._on_run()

    def _on_run(self, change=None) -> None:
        self._busy = True
        steps = steps_of(self.run.value)
        self.step.options = steps
        self.step.value = steps[-1]
        self.worst.options = worst_options(self.run.value, self.worst_by.value)
        self.worst.value = None
        self._busy = False
        self._on_step()

    def _on_worst_by(self, change=None) -> None:
        self.worst.options = worst_options(self.run.value, self.worst_by.value)

    def _open_worst(self, change=None) -> None:
        """Open the chosen worst token's sample: its step, then the sample."""
        if self._busy or self.worst.value is None:
            return
        step, sample = self.worst.value
        self.step.value = step  # re-lists the step's samples
        self.sample.value = sample

    def _on_step(self, change=None) -> None:
        if self._busy:
            return
        self._busy = True
        self.sample.options = sample_options(load_step(self.run.value, self.step.value))
        self.sample.value = self.sample.options[0][1]
        self._busy = False
        self._render()
        self._render_same()

    def _render_same(self, change=None) -> None:
        if self._busy or self.step.value is None:
            return
        presets = list(self.compare.value)
        self.same.value = same_batch_pane(self.run.value, self.step.value, presets, self.compare_at.value)
        self.same_figure = same_batch_chart(self.run.value, self.step.value, presets,
                                            self.compare_at.value) if presets else None
        self.same_chart.clear_output(wait=True)
        if self.same_figure is not None:
            with self.same_chart:
                from IPython.display import display

                display(self.same_figure)

    def _render(self, change=None) -> None:
        if self._busy or self.sample.value is None:
            return
        out = view(self.run.value, self.step.value, self.sample.value, self.color_by.value, self.replay_preset.value)
        self.header.value, self.tokens.value, self.tails.value, self.group.value, self.replay.value = (
            out["header"], out["tokens"], out["tails"], out["group"], out["replay"])
        self.figure = token_chart(self.run.value, self.step.value, self.sample.value)
        # Set the Output widget's outputs directly: no `with output:` capture, whose message routing a headless
        # executor (papermill's nbclient) was seen to wait on forever once in a `make report`.
        self.chart.outputs = ({"output_type": "display_data", "metadata": {},
                               "data": {"application/vnd.plotly.v1+json": json.loads(self.figure.to_json()),
                                        "text/plain": self.figure.layout.title.text or "figure"}},)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
