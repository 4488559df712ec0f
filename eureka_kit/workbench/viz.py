"""Plotly figures over run directories and evaluation tables (pure: data in, figure out).

Colours are fixed per preset name so the same algorithm looks the same in every report.
"""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#17becf"]

CURVE_KEYS = {
    "reward/accuracy": "accuracy (train samples)",
    "reward/mean": "reward (acc + format)",
    "policy/ratio_max": "max token ratio (log scale)",
    "policy/clipfrac": "clip fraction",
    "policy/entropy": "entropy (nats/token)",
    "rollout/len_mean": "response length (tokens)",
    "policy/approx_kl": "policy drift KL(old||new), k3",
    "optim/grad_norm": "grad norm",
}


def color_for(name: str, names: list[str]) -> str:
    return PALETTE[names.index(name) % len(PALETTE)]


def smooth(values: pd.Series, window: int = 5) -> pd.Series:
    return values.rolling(window, min_periods=1).mean()


def training_curves(histories: dict[str, pd.DataFrame], keys: dict[str, str] | None = None, *,
                    smooth_window: int = 3, cols: int = 2) -> go.Figure:
    """One panel per metric key, one line per run (name -> metrics DataFrame with a `step` column).

    Several seeds of one arm may be passed as names "arm/seed"; they are drawn as a mean line with a
    min-max band.
    """
    keys = {k: v for k, v in (keys or CURVE_KEYS).items() if any(k in h for h in histories.values())}
    rows = math.ceil(len(keys) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(keys.values()), vertical_spacing=0.08)
    arms: dict[str, list[pd.DataFrame]] = {}
    for name, h in histories.items():
        arms.setdefault(name.split("/")[0], []).append(h)
    names = list(arms)
    for i, key in enumerate(keys):
        r, c = i // cols + 1, i % cols + 1
        for arm, frames in arms.items():
            frames = [f for f in frames if key in f]
            if not frames:
                continue
            table = pd.concat([f.set_index("step")[key].rename(j) for j, f in enumerate(frames)], axis=1)
            mean = smooth(table.mean(axis=1), smooth_window)
            color = color_for(arm, names)
            if len(frames) > 1:
                lo, hi = smooth(table.min(axis=1), smooth_window), smooth(table.max(axis=1), smooth_window)
                fig.add_trace(go.Scatter(x=list(table.index) + list(table.index[::-1]), y=list(hi) + list(lo[::-1]),
                                         fill="toself", fillcolor=color, opacity=0.15, line=dict(width=0),
                                         showlegend=False, hoverinfo="skip"), row=r, col=c)
            fig.add_trace(go.Scatter(x=table.index, y=mean, name=arm, legendgroup=arm, showlegend=i == 0,
                                     line=dict(color=color)), row=r, col=c)
        if key == "policy/ratio_max":
            fig.update_yaxes(type="log", row=r, col=c)
        fig.update_xaxes(title_text="RL step", row=r, col=c)
        fig.update_yaxes(title_text=keys[key], row=r, col=c)
    fig.update_layout(height=280 * rows, margin=dict(t=40, b=30, l=40, r=20), legend=dict(orientation="h", y=1.04))
    return fig


def ratio_histogram(rollouts: pd.DataFrame, *, log: bool = True) -> go.Figure:
    """Distribution of per-token log-ratios new - old of one saved step, split by sign of the advantage."""
    fig = go.Figure()
    for sign, name, color in ((1, "A > 0", "#2ca02c"), (-1, "A < 0", "#d62728")):
        rows = rollouts[(rollouts.advantage * sign) > 0]
        values = [n - o for _, r in rows.iterrows() for n, o in zip(r.new_logp, r.old_logp, strict=True)]
        fig.add_histogram(x=values, name=name, marker_color=color, opacity=0.6, nbinsx=60)
    fig.update_layout(barmode="overlay", xaxis_title="log ratio (new - old)", yaxis_title="tokens",
                      yaxis_type="log" if log else None,
                      height=320, margin=dict(t=30, b=30))
    return fig
