"""The report and an attention view render in a real browser (headless Chromium), offline.

Skipped, saying so, when no Chromium/Chrome is installed (Debian: ``apt-get install chromium``).
The page is loaded from a file with the network disabled for the browser; a script added before
everything else records JavaScript errors and ``console.error`` calls into the DOM, which
``--dump-dom`` then prints with the rendered document.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
ERROR_PROBE = """<script>
window.__errors = [];
function __record(text) {
  window.__errors.push(String(text));
  var el = document.getElementById('js-errors') || document.createElement('pre');
  el.id = 'js-errors'; el.textContent = window.__errors.join('\\n');
  if (!el.parentNode) { (document.body || document.documentElement).appendChild(el); }
}
window.addEventListener('error', function (e) { __record('error: ' + e.message); });
window.addEventListener('unhandledrejection', function (e) { __record('rejection: ' + e.reason); });
var __consoleError = console.error;
console.error = function () { __record('console.error: ' + Array.prototype.join.call(arguments, ' ')); __consoleError.apply(console, arguments); };
</script>"""


def browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(f"no headless browser found (looked for {', '.join(BROWSERS)}); install one, e.g. "
                "`apt-get install chromium`, to run the real-browser tests")


def render(page: Path, tmp_path: Path) -> str:
    """The DOM of ``page`` after its scripts ran, with the error probe's findings in ``#js-errors``."""
    probed = tmp_path / f"probed-{page.name}"
    text = page.read_text(encoding="utf-8")
    head = re.search(r"<head[^>]*>", text, flags=re.IGNORECASE)
    at = head.end() if head else 0
    probed.write_text(text[:at] + ERROR_PROBE + text[at:], encoding="utf-8")
    command = [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
               f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1300,900",
               "--virtual-time-budget=15000", "--run-all-compositor-stages-before-draw", "--dump-dom",
               probed.as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_report_renders_in_chromium(toy_results, tmp_path):
    from drope_lens.outputs.report import build_report

    page = build_report(toy_results, tmp_path / "report.html")
    dom = render(page, tmp_path)
    assert 'id="js-errors"' not in dom, re.search(r'<pre id="js-errors">(.*?)</pre>', dom, re.S).group(1)
    rendered = re.sub(r"<script.*?</script>", "", dom, flags=re.S)  # the DOM without the script sources
    divs = rendered.count('class="plotly-graph-div')
    assert divs == 3
    # every figure drew its SVG (plotly puts two svg.main-svg layers in each plot)
    assert rendered.count('class="main-svg"') >= 2 * divs
    assert "Exp 1: massive values per layer" in rendered and "Reproduction table" in rendered


def test_attention_view_renders_in_chromium(tmp_path):
    import drope_lens as dl
    from drope_lens.measurement.texts import toy_texts
    from drope_lens.outputs.views import attention_heads

    rope, drope = dl.load_pair("toy")
    text = " ".join(toy_texts(1)[0].text.split()[:30])
    page = attention_heads(rope, drope, text, layer=1, window=(0, 24)).save(tmp_path / "attention.html")
    dom = render(page, tmp_path)
    assert 'id="js-errors"' not in dom, re.search(r'<pre id="js-errors">(.*?)</pre>', dom, re.S).group(1)
    # circuitsvis rendered into both containers: its head selector and one zoomed pattern per model
    for variant in ("rope", "drope"):
        container = re.search(rf'<div id="circuits-vis-{variant}-[0-9a-f]+">(.*?)</div></div></div>', dom, re.S)
        assert container and "Head Selector" in container.group(1), f"{variant}: circuitsvis did not render"
    rendered = re.sub(r"<script.*?</script>", "", dom, flags=re.S)  # the DOM without the script sources
    assert rendered.count("Head Selector") == 2 and rendered.count("L1H7") >= 2
    assert rendered.count("<canvas") >= 2  # the zoomed attention patterns are drawn on canvases


def test_the_error_probe_sees_script_errors(tmp_path):
    """The checks above can fail: a page whose script throws is reported."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><head></head><body><p>x</p>"
                    "<script>console.error('bad thing'); undefinedFunction();</script></body></html>")
    dom = render(page, tmp_path)
    errors = re.search(r'<pre id="js-errors">(.*?)</pre>', dom, re.S).group(1)
    assert "console.error: bad thing" in errors and "undefinedFunction" in errors


def test_png_export_with_kaleido(tmp_path):
    """``figures.save`` also writes a PNG when the optional kaleido (``pip install -e .[png]``) is installed."""
    pytest.importorskip("kaleido", reason="kaleido (the optional png extra) is not installed: PNG export not tested")
    browser()  # kaleido >= 1 draws with a local Chrome/Chromium
    import synthetic_results as S
    from drope_lens.outputs import figures

    written = figures.save(figures.layer_balance(S.layer_balance()), tmp_path / "balance", png=True)
    assert [p.name for p in written] == ["balance.html", "balance.png"]
    assert written[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and written[1].stat().st_size > 20_000
