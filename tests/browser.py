"""Open an HTML file in the system's Chromium (headless) through Playwright, and report what rendered.

No browser is downloaded: Playwright drives ``/usr/bin/chromium`` (Debian's package; `.ci/run`
installs it). ``python -m tests.browser REPORT.html [SHOT.png]`` prints the findings and, with a
second argument, saves a screenshot of the whole page, or with a third (pixels) of its top only:
docs/report.png is ``python -m tests.browser lake/reports/demo/VERSION/report.html docs/report.png 1150``.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


def find_chromium() -> str | None:
    for c in CANDIDATES:
        if Path(c).exists():
            return c
    return shutil.which("chromium") or shutil.which("chromium-browser")


# Measured in the page: every plot's rendered box and how many marks (bars, lines, paths) it holds.
_MEASURE = """() => Array.from(document.querySelectorAll('svg.plot')).map(s => {
  const r = s.getBoundingClientRect();
  const marks = s.querySelectorAll('rect, polyline, line, path').length;
  let drawn = 0;
  for (const el of s.querySelectorAll('rect, polyline')) { const b = el.getBBox(); if (b.width > 0 || b.height > 0) drawn++; }
  return {label: s.getAttribute('aria-label'), width: r.width, height: r.height, marks, drawn};
})"""


def render(html: Path, screenshot: Path | None = None, width: int = 1400, height: int | None = None,
           visible: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load ``html`` from disk; return JavaScript errors, console errors, requests to anything but
    the file, the measured plots, the page title and its JSON data; with ``screenshot``, write a
    PNG of the whole page, or of its top ``height`` pixels. For each CSS selector in ``visible``,
    ``out["visible"][selector]`` is the rendered text of its first element if the browser shows it
    (in the first screen, not hidden), else None."""
    from playwright.sync_api import sync_playwright
    exe = find_chromium()
    if exe is None:
        raise RuntimeError("no chromium found (apt-get install -y chromium)")
    out: dict[str, Any] = {"page_errors": [], "console_errors": [], "requests": []}
    with tempfile.TemporaryDirectory(prefix="curate-chromium-") as profile, sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=exe, headless=True, args=FLAGS,
                                                   viewport={"width": width, "height": height or 900})
        try:
            page = ctx.new_page()
            page.on("pageerror", lambda e: out["page_errors"].append(str(e)))
            page.on("console", lambda m: out["console_errors"].append(m.text) if m.type == "error" else None)
            # Anything but the file itself is a request the page should not make (it must work offline).
            page.on("request", lambda r: out["requests"].append(r.url) if not r.url.startswith("file:") else None)
            page.goto(html.resolve().as_uri(), wait_until="load")
            out["title"] = page.title()
            out["plots"] = page.evaluate(_MEASURE)
            out["data"] = json.loads(page.locator("#curate-report-data").text_content() or "{}")
            out["visible"] = {sel: _shown_text(page, sel) for sel in visible}
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=height is None)
        finally:
            ctx.close()
    return out


def _shown_text(page: Any, selector: str) -> str | None:
    """The innerText of the first element matching ``selector`` if it is displayed and lies (at
    least partly) in the first screen of the page, else None."""
    el = page.locator(selector).first
    if el.count() == 0 or not el.is_visible():
        return None
    box = el.bounding_box()
    viewport = page.viewport_size or {"height": 900}
    if box is None or box["height"] <= 0 or box["y"] >= viewport["height"]:
        return None
    return str(el.inner_text())


if __name__ == "__main__":
    res = render(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None,
                 height=int(sys.argv[3]) if len(sys.argv) > 3 else None)
    res.pop("data", None)
    print(json.dumps({k: v for k, v in res.items() if k != "plots"}, indent=1))
    print(f"{len(res['plots'])} plots; smallest mark count {min((p['marks'] for p in res['plots']), default=0)}")
