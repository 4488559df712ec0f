"""The report's findings are computed from the numbers, including when a seed finding does not reproduce; the
report suite's index lists every run; generated pages load nothing from the network."""

import json
import re
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import pytest
from nbfactory import write_notebook

from eureka_kit.workbench.report import _findings_html, figure_div, html_page, write_plotly_js
from eureka_kit.workbench.sweep import notebook_errors, read_status


def _headline(grpo_ratio, cpgd_ratio, cpgd_acc):
    return pd.DataFrame([
        {"model": "base", "math acc": 0.40, "OOD acc": 0.03, "peak ratio max": float("nan"), "warnings": "-"},
        {"model": "grpo", "math acc": 0.30, "OOD acc": 0.02, "peak ratio max": grpo_ratio, "warnings": "-"},
        {"model": "cpgd", "math acc": cpgd_acc, "OOD acc": 0.04, "peak ratio max": cpgd_ratio, "warnings": "-"},
    ])


def test_findings_say_what_reproduces_and_what_does_not():
    text = _findings_html(_headline(72.0, 16.0, 0.45), {})
    assert "reproduces here: peak token ratio GRPO 72 vs CPGD 16" in text
    assert "seen for cpgd" in text and "math accuracy 40.0% → 45.0% (+5.0%)" in text
    text = _findings_html(_headline(10.0, 30.0, 0.35), {})
    assert "does NOT reproduce here: peak token ratio GRPO 10 vs CPGD 30" in text
    assert "every preset ends below the base policy" in text


def test_page_loads_plotly_locally_and_escapes_titles():
    page = html_page("a <b> title", [("x & y", "<p>body</p>")])
    assert '<script src="plotly.min.js"></script>' in page and "cdn" not in page.lower()
    assert "a &lt;b&gt; title" in page and "x &amp; y" in page


# ---------------------------------------------------------------------------------------------
# The report suite on throwaway notebooks (seconds each, no model): the index, failures, offline pages.

# Tags that fetch what their src/href names; an <a href> to a paper is prose, not a load.
LOADING_TAGS = r"script|link|img|iframe|source|video|audio|embed|object"
REMOTE = re.compile(rf"<(?:{LOADING_TAGS})\b[^>]*?\b(?:src|href|data)\s*=\s*[\"']?\s*(?:https?:)?//[^\"'\s>]+"
                    r"|@import\s+(?:url\()?[\"']?\s*(?:https?:)?//[^\"')\s]+"
                    r"|\bimport\(\s*[\"'](?:https?:)?//[^\"']+", re.I)


def remote_loads(page: str) -> list[str]:
    """Every place in an HTML page that would load a script, style, image or module from the network."""
    return REMOTE.findall(page)


def tiny_notebook(path: Path) -> Path:
    """Parameters x, fail; an equation; two plotly figures; a progress bar and a widget; a computed 'What this
    shows'."""
    nbformat = pytest.importorskip("nbformat")
    return write_notebook(
        path, "x = 1\nfail = False",
        nbformat.v4.new_markdown_cell(r"The surrogate: $$\mathcal{L} = -\frac{1}{N}\sum_i A_i \rho_i$$"),
        "if fail:\n    raise RuntimeError('asked to fail')",
        "import plotly.graph_objects as go\ngo.Figure(go.Bar(x=[1, 2], y=[x, 2 * x]))",
        "go.Figure(go.Scatter(x=[1, 2, 3], y=[x, 0, x]))",
        "from tqdm.auto import tqdm\nfor _ in tqdm(range(2), desc='loading weights'):\n"
        "    pass\nimport ipywidgets\nipywidgets.IntSlider(value=x)",
        "from IPython.display import Markdown\nMarkdown(f'**What this shows**: x = {x}')")


TINY_SUITE = {"tiny": {"x": 2}, "tiny_fails": {"x": 1, "fail": True}}


def build_tiny_suite(root: Path) -> tuple[Path, list[dict]]:
    """`build_suite` over TINY_SUITE, with a stand-in toy-world page (html_page + summary.json) beside it."""
    from eureka_kit.workbench.suite import build_suite

    nb_dir = root / "notebooks"
    nb_dir.mkdir(parents=True)
    for name in TINY_SUITE:
        tiny_notebook(nb_dir / f"{name}.ipynb")
    out = root / "reports"
    toy = out / "toy_world"
    toy.mkdir(parents=True)
    fig = go.Figure(go.Bar(x=["grpo", "cpgd"], y=[72.1, 16.7]))
    (toy / "index.html").write_text(html_page("toy-world stand-in", [("ratios", figure_div(fig)),
                                                                     ("again", figure_div(fig))]))
    (toy / "summary.json").write_text(json.dumps([{"model": "grpo", "peak ratio max": 72.1}]))
    write_plotly_js(toy)
    results = build_suite(out, toy=False, suite=TINY_SUITE, notebooks_dir=nb_dir, progress=False)
    return out, results


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory):
    pytest.importorskip("papermill")
    return build_tiny_suite(tmp_path_factory.mktemp("suite"))


def test_index_lists_every_run_with_status_parameters_findings_and_link(tiny_suite):
    out, results = tiny_suite
    assert {r["notebook"].rsplit("/", 1)[-1]: r["status"] for r in results} == {"tiny.ipynb": "ok",
                                                                                   "tiny_fails.ipynb": "failed"}
    index = (out / "index.html").read_text()
    assert "tiny — 1/1 ok" in index and "tiny_fails — 0/1 ok" in index
    assert '<a href="tiny/report/report.html">report</a>' in index and "<code>x=2</code>" in index
    assert "<strong>What this shows</strong>: x = 2" in index  # the notebook's markdown, rendered
    # the toy-world report: linked, titled, with its headline numbers
    assert '<a href="toy_world/index.html">' in index and "toy-world stand-in" in index and "72.1" in index


def test_a_failed_notebook_shows_as_failed_with_its_executed_notebook(tiny_suite):
    out, _ = tiny_suite
    index = (out / "index.html").read_text()
    assert '<a href="tiny_fails/report/executed.ipynb">executed notebook</a>' in index
    assert "RuntimeError: asked to fail" in index
    run_dir = out / "tiny_fails" / "report"
    assert read_status(run_dir)["status"] == "failed" and not (run_dir / "report.html").exists()
    assert any("asked to fail" in p for p in notebook_errors(run_dir / "executed.ipynb"))  # the error cell is kept


def test_generated_pages_load_nothing_from_the_network(tiny_suite):
    out, _ = tiny_suite
    pages = sorted(out.rglob("*.html"))
    assert {p.relative_to(out).as_posix() for p in pages} == {"index.html", "toy_world/index.html",
                                                              "tiny/report/report.html"}
    for page in pages:
        assert remote_loads(page.read_text()) == [], page
    report = (out / "tiny" / "report" / "report.html").read_text()
    assert '<script src="../../plotly.min.js"></script>' in report and (out / "plotly.min.js").exists()
    assert report.count('class="plotly-graph-div"') == 2
    assert r"\mathcal{L} = -\frac{1}{N}\sum_i A_i \rho_i" in report  # no MathJax: the LaTeX stays readable
    assert report.count("needs a live kernel") == 1  # the slider's placeholder instead of the CDN widget manager
    assert "loading weights" not in report  # progress bars are dropped


@pytest.mark.filterwarnings("ignore:Your element with mimetype")  # the default template can't show plotly's JSON
def test_the_network_check_catches_nbconverts_default_template(tiny_suite):
    import nbformat
    from nbconvert import HTMLExporter

    executed = nbformat.read(tiny_suite[0] / "tiny" / "report" / "executed.ipynb", as_version=4)
    default, _ = HTMLExporter(template_name="lab").from_notebook_node(executed)
    found = " ".join(remote_loads(default))
    assert "require" in found and "mathjax" in found.lower()
    assert remote_loads('<a href="https://arxiv.org/abs/2505.12504">paper</a>') == []


def test_suite_skips_finished_notebooks_and_reruns_changed_parameters(tmp_path):
    pytest.importorskip("papermill")
    from eureka_kit.workbench.suite import build_suite

    tiny_notebook(tmp_path / "tiny.ipynb")
    out = tmp_path / "reports"
    first = build_suite(out, toy=False, suite={"tiny": {"x": 1}}, notebooks_dir=tmp_path, progress=False)
    again = build_suite(out, toy=False, suite={"tiny": {"x": 1}}, notebooks_dir=tmp_path, progress=False)
    changed = build_suite(out, toy=False, suite={"tiny": {"x": 3}}, notebooks_dir=tmp_path, progress=False)
    assert [r["status"] for r in first + again + changed] == ["ok"] * 3
    assert again[0].get("skipped") and not changed[0].get("skipped")
    assert "x = 3" in read_status(out / "tiny" / "report")["findings"]
    with pytest.raises(ValueError, match="not in the suite"):
        build_suite(out, toy=False, notebooks=["nope"], suite={"tiny": {}}, notebooks_dir=tmp_path)


def test_cli_report_only_toy_builds_the_toy_report_and_the_index(tmp_path, monkeypatch):
    from eureka_kit.cli import main
    from eureka_kit.workbench import toy_report

    calls = []

    def fake_toy_report(out_dir, presets, **kw):
        calls.append((Path(out_dir), presets, kw))
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "index.html").write_text(html_page("fake toy", []))

    monkeypatch.setattr(toy_report, "toy_report", fake_toy_report)
    assert main(["report", "--only-toy", "--out", str(tmp_path), "--presets", "grpo,cpgd", "--steps", "3"]) == 0
    assert calls == [(tmp_path / "toy_world", ("grpo", "cpgd"), dict(seed=0, eval_samples=8, num_steps=3,
                                                                      progress=True))]
    assert '<a href="toy_world/index.html">' in (tmp_path / "index.html").read_text()


def test_every_suite_notebook_is_found_where_the_suite_looks_for_it():
    from eureka_kit.workbench.suite import NOTEBOOKS_DIR, SUITE

    repo_notebooks = Path(__file__).resolve().parents[1] / "notebooks"
    assert NOTEBOOKS_DIR == repo_notebooks
    assert all((NOTEBOOKS_DIR / f"{name}.ipynb").is_file() for name in SUITE), sorted(SUITE)

