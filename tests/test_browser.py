"""The report pages in a real headless browser: Debian's chromium driven by playwright, offline.

Opens a small suite's index, one notebook run's report and the findings page from file:// URLs and checks
that there are no console errors or page errors, that nothing was requested from the network, and that every
plotly figure rendered (its <div> holds plotly's SVG). Skips when /usr/bin/chromium (apt-get install chromium)
or playwright (the dev extra) is missing; never downloads a browser.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_report import build_tiny_suite

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} missing (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright missing (pip install playwright)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory):
    pytest.importorskip("papermill")
    out, _ = build_tiny_suite(tmp_path_factory.mktemp("browser"))
    return out


# plotly figures that drew: their <div> holds plotly's SVG
RENDERED = "Array.from(document.querySelectorAll('.js-plotly-plot')).filter(e => e.querySelector('.main-svg')).length"


def open_page(browser, path: Path, num_figures: int) -> dict:
    """Load `path` and wait for `num_figures` plotly figures to draw; return what went wrong, how many figures
    drew and the page's links."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page = browser.new_page()
    problems: dict[str, list[str]] = {"console errors": [], "page errors": [], "network requests": []}

    def on_console(message):
        if message.type == "error":
            problems["console errors"].append(message.text)

    def on_request(request):
        if request.url.split(":", 1)[0] not in ("file", "data", "blob", "about"):
            problems["network requests"].append(request.url)

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems["page errors"].append(str(error)))
    page.on("request", on_request)
    page.goto(path.as_uri(), wait_until="load")
    try:
        page.wait_for_function(f"{RENDERED} >= {num_figures}", timeout=20_000)
    except PlaywrightTimeout:
        pass  # the caller's assertion on "rendered" says how many drew
    seen = {**problems, "rendered": page.evaluate(RENDERED),
            "links": page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")}
    page.close()
    return seen


def test_index_opens_cleanly_and_links_every_page(browser, suite_dir):
    seen = open_page(browser, suite_dir / "index.html", num_figures=0)
    assert seen["console errors"] == seen["page errors"] == seen["network requests"] == []
    assert {"findings/index.html", "tiny/report/report.html", "tiny_fails/report/executed.ipynb"} <= set(seen["links"])
    assert all((suite_dir / link.split("#")[0]).exists() for link in seen["links"])


def test_notebook_report_renders_every_figure_offline(browser, suite_dir):
    report = suite_dir / "tiny" / "report" / "report.html"
    figures = report.read_text().count('class="plotly-graph-div"')
    seen = open_page(browser, report, num_figures=figures)
    assert seen["console errors"] == seen["page errors"] == seen["network requests"] == []
    assert figures == 2 and seen["rendered"] == figures


def test_findings_page_renders_every_figure_offline(browser, suite_dir):
    page = suite_dir / "findings" / "index.html"
    figures = page.read_text().count('class="plotly-graph-div"')
    seen = open_page(browser, page, num_figures=figures)
    assert seen["console errors"] == seen["page errors"] == seen["network requests"] == []
    assert figures == 3 and seen["rendered"] == figures  # per-seed effects, two dose-response charts


@pytest.fixture(scope="module")
def explorer_run(tmp_path_factory):
    """A 3-step toy run with a bf16 sampler, so mu differs from pi_old on every step."""
    import copy

    from eureka_kit.config import RunConfig
    from eureka_kit.data import toyworld
    from eureka_kit.engine.loop import train
    from eureka_kit.models.loading import build_toy_model

    model, tok = build_toy_model(seed=1)
    root = tmp_path_factory.mktemp("explorer") / "runs"
    cfg = RunConfig.from_preset("grpo", run_dir=str(root / "bf16"), num_steps=3, rollout_batch_size=2, group_size=4,
                                train_batch_size=8, micro_batch_size=8, max_len=12, sampler_dtype="bfloat16")
    train(cfg, policy=copy.deepcopy(model), processor=tok, problems=toyworld.load("train", "math", seed=0,
                                                                                  n_per_level=2), progress=False)
    return root


def test_marimo_explorer_shows_mu_in_a_browser(browser, explorer_run):
    """`marimo run notebooks/ratio_explorer.py` served locally and opened as a user would: the per-token table with
    pi_theta, pi_old and mu, the chart with log mu, the worst-token picker; no page errors, nothing off-machine."""
    import shutil
    import socket
    import subprocess
    import sys
    import time

    marimo = shutil.which("marimo") or str(Path(sys.executable).parent / "marimo")
    if not Path(marimo).exists():
        pytest.skip("marimo not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = Path(__file__).resolve().parents[1] / "notebooks" / "ratio_explorer.py"
    server = subprocess.Popen([marimo, "run", str(app), "--headless", "--host", "127.0.0.1", "--port", str(port),
                               "--no-token", "--", "--root", str(explorer_run)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        page = browser.new_page()
        errors, remote = [], []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("request", lambda r: remote.append(r.url) if not r.url.startswith(
            (f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", "data:", "blob:", "about:")) else None)
        page.goto(f"http://127.0.0.1:{port}/", wait_until="load")
        # playwright's locators pierce marimo's shadow DOM: the per-token chart drew, the table lists mu
        page.locator(".main-svg").first.wait_for(timeout=90_000)
        page.locator("text=log μ (sampler)").first.wait_for(timeout=30_000)
        page.locator("text=pi_theta").first.wait_for(timeout=30_000)
        mu_column = page.locator("text=mu").count()
        worst_picker = page.locator("text=open a worst token").count()
        text = page.inner_text("body")
        page.close()
    finally:
        server.terminate()
        server.wait(timeout=20)
    assert mu_column >= 1 and "Per token: π_θ, π_old, μ and flags" in text
    assert worst_picker >= 1 and "Raw tails of the step" in text and "log ρ (sampler mismatch)" in text
    assert not errors, errors
    # marimo's own plotly component asks a CDN for MathJax (offline it fails and the chart still draws); nothing else
    assert all("mathjax" in url for url in remote), remote
