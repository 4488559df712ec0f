"""The report's findings are computed from the numbers, including when a seed finding does not reproduce."""

import pandas as pd

from eureka_kit.report import _findings_html, html_page


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
