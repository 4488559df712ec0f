"""The report suite's index opens with the findings table and lists every run; generated pages load nothing
from the network."""

import json
import re
from pathlib import Path

import pytest
from nbfactory import write_notebook

from eureka_kit.workbench.report import html_page
from eureka_kit.workbench.sweep import notebook_errors, read_status


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
    """`build_suite` over TINY_SUITE, beside a findings page built from hand-made cells (no training)."""
    from synthetic_findings import PROFILE, cells

    from eureka_kit.workbench.findings_page import findings_page
    from eureka_kit.workbench.findings_run import summarize
    from eureka_kit.workbench.suite import build_suite

    nb_dir = root / "notebooks"
    nb_dir.mkdir(parents=True)
    for name in TINY_SUITE:
        tiny_notebook(nb_dir / f"{name}.ipynb")
    out = root / "reports"
    result = summarize(cells(tail={"grpo@8": [0.03, 0.04, 0.05]}), PROFILE)
    (out / "findings").mkdir(parents=True)
    (out / "findings" / "findings.json").write_text(json.dumps(result, default=float))
    findings_page(out / "findings", result, reference=root / "no-reference.json")
    results = build_suite(out, findings=False, suite=TINY_SUITE, notebooks_dir=nb_dir, progress=False)
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
    # the findings table comes first, each finding linked to its place on the findings page
    assert index.index("Findings: the seed papers") < index.index("tiny — 1/1 ok")
    assert '<a href="findings/index.html#stability">stability</a>' in index and "supports" in index


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
    assert {p.relative_to(out).as_posix() for p in pages} == {"index.html", "findings/index.html",
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
    first = build_suite(out, findings=False, suite={"tiny": {"x": 1}}, notebooks_dir=tmp_path, progress=False)
    again = build_suite(out, findings=False, suite={"tiny": {"x": 1}}, notebooks_dir=tmp_path, progress=False)
    changed = build_suite(out, findings=False, suite={"tiny": {"x": 3}}, notebooks_dir=tmp_path, progress=False)
    assert [r["status"] for r in first + again + changed] == ["ok"] * 3
    assert again[0].get("skipped") and not changed[0].get("skipped")
    assert "x = 3" in read_status(out / "tiny" / "report")["findings"]
    with pytest.raises(ValueError, match="not in the suite"):
        build_suite(out, findings=False, notebooks=["nope"], suite={"tiny": {}}, notebooks_dir=tmp_path)


def test_cli_report_only_findings_runs_the_profile_and_builds_the_index(tmp_path, monkeypatch):
    from synthetic_findings import PROFILE, cells

    from eureka_kit.cli import main
    from eureka_kit.workbench import findings_run

    calls = []

    def fake_run_profile(profile, out, **kw):
        calls.append((profile, Path(out), kw["workers"]))
        Path(out).mkdir(parents=True)
        result = findings_run.summarize(cells(), PROFILE)
        (Path(out) / "findings.json").write_text(json.dumps(result, default=float))
        return result

    monkeypatch.setattr(findings_run, "run_profile", fake_run_profile)
    assert main(["report", "--only-findings", "--out", str(tmp_path), "--profile", "full", "--workers", "1"]) == 0
    assert calls == [("full", (tmp_path / "findings").resolve(), 1)]
    index = (tmp_path / "index.html").read_text()
    assert '<a href="findings/index.html">' in index and "synthetic profile, seeds [0, 1, 2]" in index


def test_every_suite_notebook_is_found_where_the_suite_looks_for_it():
    from eureka_kit.workbench.suite import NOTEBOOKS_DIR, SUITE

    repo_notebooks = Path(__file__).resolve().parents[1] / "notebooks"
    assert NOTEBOOKS_DIR == repo_notebooks
    assert all((NOTEBOOKS_DIR / f"{name}.ipynb").is_file() for name in SUITE), sorted(SUITE)



def test_long_findings_are_cut_after_a_whole_sentence(tmp_path):
    import nbformat

    from eureka_kit.workbench.sweep import findings_text

    text = " ".join(f"Sentence {i} says something measured." for i in range(100))
    book = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "x", outputs=[nbformat.v4.new_output("display_data", data={"text/markdown": text})])])
    path = tmp_path / "nb.ipynb"
    nbformat.write(book, path)
    short = findings_text(path, max_chars=200)
    kept = short.split("\n\n(continued")[0]
    assert kept.endswith("measured.") and len(kept) <= 200 and "(continued in the report)" in short
    assert findings_text(path, max_chars=10_000) == text


def test_suite_hands_notebooks_the_findings_folder_and_a_runs_folder_outside_the_reports(tmp_path, monkeypatch):
    from eureka_kit.workbench import suite, sweep

    seen = []

    def fake_execute_point(notebook, params, run_dir, cwd, execution_timeout):
        assert execution_timeout == suite.CELL_TIMEOUT_S
        seen.append(params)
        return {"status": "ok", "duration_s": 0.0, "errors": [], "params": params}

    monkeypatch.setattr(sweep, "execute_point", fake_execute_point)
    out = tmp_path / "reports"
    suite.build_suite(out, findings=False, suite={"nb": {"run_root": suite.RUNS_DIR, "findings_dir": suite.FINDINGS_DIR,
                                                         "x": 1}}, notebooks_dir=tmp_path, progress=False)
    assert seen == [{"run_root": str(tmp_path / "runs" / "notebooks"), "findings_dir": str(out.resolve() / "findings"),
                     "x": 1}]
    assert not str(seen[0]["run_root"]).startswith(str(out))  # checkpoints and rollouts stay out of reports/
