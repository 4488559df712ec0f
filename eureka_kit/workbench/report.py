"""Static HTML reports: one page per executed notebook, reports/index.html, and the pieces the findings page
(`findings_page`) shares: the offline page shell, plotly divs, and the sentinel warnings of run directories.
A view: it never trains. Conclusions in a page are computed from the results, never written in advance.

`write_report` turns an executed notebook into HTML (code hidden) and `build_index` lists every report and
notebook run under a folder. No page loads anything from the network: plotly.js is one local file, and
nbconvert's CDN scripts (require.js, MathJax, mermaid, the widget manager) are left out.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.io as pio

from eureka_kit.workbench.pages import html_page, table_html, write_plotly_js

# The folder of one notebook run under reports/<notebook>/<key>/ (written by `sweep`, listed by `build_index`).
STATUS = "status.json"
EXECUTED = "executed.ipynb"
REPORT = "report.html"


def read_status(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / STATUS
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def collect(out: str | Path) -> list[dict[str, Any]]:
    """Every run's status under `out` (`out/<notebook>/<key>/status.json`), with its paths."""
    out = Path(out)
    rows = []
    for path in sorted(out.glob(f"*/*/{STATUS}")):
        status = read_status(path.parent)
        rows.append({**status, "notebook_name": path.parent.parent.name, "key": path.parent.name,
                     "dir": str(path.parent.relative_to(out))})
    return rows



# ---------------------------------------------------------------------------------------------
# Notebook runs: one offline page per executed notebook, and reports/index.html over everything.

# nbconvert's lab template loads require.js, MathJax, mermaid and the widget manager from CDNs; these blocks
# drop them so a report opens offline. Without MathJax, equations stay readable as their LaTeX source.
OFFLINE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
"""
WIDGET_NOTE = ("<p><i>Interactive widget: it needs a live kernel, so open the notebook in Jupyter to use it; "
               "the static views below come from the same functions.</i></p>")


def write_report(executed: Path, out: Path, *, plotly_js: str = "plotly.min.js", exclude_input: bool = True) -> Path:
    """Offline nbconvert HTML: plotly mime bundles become <div>s that load `plotly_js`, widgets
    a note, and nothing is loaded from the network."""
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import Preprocessor

    class OfflineOutputs(Preprocessor):
        def preprocess(self, nb, resources):
            self.widgets = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
            return super().preprocess(nb, resources)

        def preprocess_cell(self, cell, resources, index):
            kept = []
            for output in cell.get("outputs", []):
                data = output.get("data", {})
                if "application/vnd.plotly.v1+json" in data and "text/html" not in data:
                    fig = pio.from_json(json.dumps(data["application/vnd.plotly.v1+json"]))
                    data["text/html"] = pio.to_html(fig, include_plotlyjs=False, full_html=False)
                view = data.pop("application/vnd.jupyter.widget-view+json", None)
                if view is not None:
                    if _is_progress_bar(self.widgets.get("state", {}), view.get("model_id")):
                        continue  # a tqdm bar (model loading, checkpoint writing) frozen at whatever it showed
                    data["text/html"] = WIDGET_NOTE
                kept.append(output)
            if "outputs" in cell:
                cell.outputs = kept
            return cell, resources

    book = nbformat.read(executed, as_version=4)
    exporter = HTMLExporter(template_name="lab", template_file="offline.html.j2", exclude_input=exclude_input,
                            extra_loaders=[DictLoader({"offline.html.j2": OFFLINE_TEMPLATE})])
    exporter.register_preprocessor(OfflineOutputs(), enabled=True)
    body, _ = exporter.from_notebook_node(book)
    body = body.replace("<head>", f'<head>\n<script src="{html.escape(plotly_js)}"></script>', 1)
    out.write_text(body)
    return out


def _is_progress_bar(widget_state: dict, model_id: str | None) -> bool:
    """Whether a widget, looked up in the notebook's saved widget state, is a box holding a progress bar (tqdm)."""
    children = widget_state.get(model_id, {}).get("state", {}).get("children", [])
    return any(widget_state.get(str(c).removeprefix("IPY_MODEL_"), {}).get("model_name", "").endswith("ProgressModel")
               for c in children)


def build_index(out: str | Path = "reports") -> Path:
    """Write `out/index.html`: the findings table (`_findings_sections`), every standalone report under `out` (a
    folder with its own index.html, such as findings/, with its summary.json as a table, if any), then one row per
    notebook run: parameters, status, seconds, the computed "what this shows" text, and a link to its report, or
    for a failed run its error and its executed notebook (kept with the error cell)."""
    import mistune


    markdown = mistune.create_markdown(escape=True)  # the notebooks' computed findings are markdown
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_plotly_js(out)
    sections = _findings_sections(out) + [_linked_report(page) for page in sorted(out.glob("*/index.html"))]
    rows = collect(out)
    by_nb: dict[str, list[dict]] = {}
    for r in rows:
        by_nb.setdefault(r["notebook_name"], []).append(r)
    if not sections and not rows:
        sections.append(("Nothing yet", "<p>Run <code>eureka-kit report</code> or "
                                        "<code>eureka-kit sweep NOTEBOOK --grid ...</code>.</p>"))
    for name, runs in by_nb.items():
        ok = sum(r.get("status") == "ok" for r in runs)
        trs = []
        for r in runs:
            state = r.get("status", "?")
            link = (f'<a href="{html.escape(r["dir"])}/{REPORT}">report</a>' if state == "ok"
                    else f'<a href="{html.escape(r["dir"])}/{EXECUTED}">executed notebook</a>')
            params = "<br>".join(f"<code>{html.escape(str(k))}={html.escape(str(v))}</code>"
                                 for k, v in (r.get("params") or {}).items()) or "defaults"
            note = (markdown(r.get("findings", "")) if state == "ok"
                    else f"<p>{html.escape('; '.join(r.get('errors', []))[:400])}</p>")
            cls = "" if state == "ok" else ' class="warn"'
            trs.append(f"<tr><td style='text-align:left'>{params}</td><td{cls}>{html.escape(state)}</td>"
                       f"<td>{r.get('duration_s', '')}</td><td style='text-align:left;max-width:560px'>"
                       f"{note}</td><td>{link}</td></tr>")
        table = ("<table><tr><th>parameters</th><th>status</th><th>seconds</th><th>what this shows / error</th>"
                 "<th>link</th></tr>" + "".join(trs) + "</table>")
        sections.append((f"{name} — {ok}/{len(runs)} ok", table))
    page = out / "index.html"
    page.write_text(html_page("eureka_kit reports", sections))
    return page


def _findings_sections(out: Path) -> list[tuple[str, str]]:
    """The findings table the index opens with: this folder's findings run (findings/findings.json) beside the
    committed reference run (reference/findings.json here, else the repository's)."""
    from eureka_kit.workbench.findings_page import REFERENCE, findings_table_html, load

    quick = load(out / "findings" / "findings.json")
    ref = load(out / "reference" / "findings.json") or load(REFERENCE)
    if quick is None and ref is None:
        return []
    main, link = (quick, "findings/index.html") if quick else (ref, "")
    body = findings_table_html(main["findings"], ref["findings"] if quick and ref else None, link=link)
    prof = main["profile"]
    note = (f"<p>{prof['name']} profile, seeds {prof['seeds']}; "
            + (f'<a href="{link}">the findings page</a> has the per-seed effects, the instrument checks and the '
               f"pressure dose-response." if link else "the committed reference run (no findings run here yet).")
            + "</p>")
    return [("Findings: the seed papers' claims, tested on the toy world", body + note)]


def _linked_report(page: Path) -> tuple[str, str]:
    """(heading, body) for a standalone report: its title, a link to it, and its summary.json as a table."""
    title = re.search(r"<title>(.*?)</title>", page.read_text(), re.S)
    body = f'<p><a href="{html.escape(page.parent.name)}/index.html">open the report</a></p>'
    summary = page.parent / "summary.json"
    if summary.exists():
        body += table_html(pd.DataFrame(json.loads(summary.read_text())))
    return (html.unescape(title.group(1)) if title else page.parent.name, body)
