"""The page shell every static report shares: a self-contained HTML page (plotly.js as one local file next to
it), plotly divs, tables, and the collapse-sentinel warnings of run directories with the samples that fired them.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import pandas as pd
import plotly.io as pio

from eureka_kit.engine.runs import RunDir


def write_plotly_js(out_dir: Path) -> None:
    from plotly.offline import get_plotlyjs

    target = out_dir / "plotly.min.js"
    if not target.exists():
        target.write_text(get_plotlyjs())


def figure_div(fig) -> str:
    return pio.to_html(fig, include_plotlyjs=False, full_html=False)


def html_page(title: str, sections: list[tuple[str, str]], *, plotly_js: str = "plotly.min.js") -> str:
    """A self-contained page (except plotly.js at the relative path `plotly_js`): sections are (heading, body)."""
    body = "\n".join(f"<section><h2>{html.escape(h)}</h2>\n{b}</section>" for h, b in sections)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<script src="{html.escape(plotly_js)}"></script>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;font-size:14px}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
th{{background:#f4f4f4}}section{{margin-bottom:2em}}.warn{{color:#a00}}code{{background:#f4f4f4}}</style>
</head><body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>"""


def table_html(df: pd.DataFrame, floatfmt: str = "{:.3g}") -> str:
    return df.to_html(index=False, float_format=lambda v: floatfmt.format(v), border=0)


def warnings_html(run_dirs: dict[str, RunDir], out_dir: Path, per_kind: int = 3) -> str:
    """Per run: the optimizer steps skipped for NaN/Inf, then a table of its sentinel warnings (warnings.jsonl),
    each with its step and the offending samples quoted and linked to that step's rollouts parquet. The first
    `per_kind` warnings of each kind are shown; the rest are counted with their steps."""
    parts = []
    for name, run_dir in run_dirs.items():
        metrics = run_dir.metrics()
        skipped = metrics[metrics["optim/skipped_steps"] > 0] if "optim/skipped_steps" in metrics else metrics.iloc[:0]
        total = int(skipped["optim/skipped_steps"].sum()) if len(skipped) else 0
        where = f" (at RL steps {', '.join(map(str, skipped.step.astype(int)))})" if total else ""
        parts.append(f"<h3>{html.escape(name)}</h3><p{' class=warn' if total else ''}>{total} optimizer step(s) "
                     f"skipped for a NaN/Inf loss or gradient{where}.</p>")
        warnings = run_dir.warnings()
        if warnings.empty:
            parts.append("<p>No collapse sentinel fired.</p>")
            continue
        rows = []
        for kind, group in warnings.groupby("kind", sort=False):
            for w in group.head(per_kind).itertuples():
                since = f"{w.since_step}–{w.step}" if w.since_step != w.step else str(w.step)
                rollouts = Path(os.path.relpath(run_dir.path / "rollouts" / f"step_{w.step:06d}.parquet", out_dir))
                rows.append(f"<tr><td>{html.escape(kind)}</td><td>{since}</td><td>{w.value:.3g}</td>"
                            f"<td style='text-align:left'>{html.escape(w.message)}</td>"
                            f"<td style='text-align:left'>{_samples_html(w.samples, rollouts)}</td></tr>")
            if len(group) > per_kind:
                later = ", ".join(map(str, group.step.iloc[per_kind:]))
                rows.append(f"<tr><td>{html.escape(kind)}</td><td colspan=4 style='text-align:left'>"
                            f"{len(group) - per_kind} more at steps {later}</td></tr>")
        parts.append("<table><tr><th>sentinel</th><th>step(s)</th><th>value</th><th>why</th>"
                     "<th>offending samples (row of the step's rollouts parquet)</th></tr>" + "".join(rows) + "</table>")
    return "".join(parts)


def _samples_html(samples: list[dict], rollouts: Path) -> str:
    """The offending samples as a small table (row of the step's rollouts, reward, the token with the largest
    |log ratio| and its value, length, the completion); the rollouts file is named, not linked."""
    if not samples:
        return "none in this step's rollouts"
    rows = "".join(f"<tr><td>{s['sample']}</td><td>{s['reward']:.3g}</td><td><code>{html.escape(repr(s['token']))}"
                   f"</code></td><td>{s['max_log_ratio']:+.3g}</td><td>{s['length']}</td>"
                   f"<td style='text-align:left'><q>{html.escape(s['completion'][:160])}</q></td></tr>"
                   for s in samples)
    return (f"<table><tr><th>row</th><th>reward</th><th>token</th><th>log-ratio</th><th>tokens</th><th>completion</th>"
            f"</tr>{rows}</table><small>rows of <code>{html.escape(rollouts.as_posix())}</code></small>")
