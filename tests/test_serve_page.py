"""The page at `/` in a real headless Chromium (the system's, driven by Playwright; never a downloaded
browser): suggestions follow the typing, a click or Tab takes one, Generate appends a continuation.

The test saves a screenshot to its tmp folder; `WORDLM_SCREENSHOT=docs/serve-page.png` saves the
one docs/serving.md shows instead (`WORDLM_SCREENSHOT=docs/serve-page.png pytest tests/test_serve_page.py`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pytest
from serve_util import live_server

from wordlm.checkpoint import load_checkpoint
from wordlm.engines import load_engine
from wordlm.serve import create_app

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="no system Chromium (make test installs Debian's)")
sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect


def labels(url: str, text: str, partial: str = "") -> list[re.Pattern]:
    """What the page should show after `text` + `partial`: the model's top words, filtered as the page
    does, each followed by its percentage."""
    words = httpx.post(f"{url}/v1/next-words", json={"text": text, "k": 100 if partial else 16}).json()["words"]
    words = [w["word"] for w in words if w["word"] != "<unk>"]
    if partial:
        words = [w for w in words if w != "<eos>" and w.lower().startswith(partial)]
    return [re.compile("^" + re.escape("↵" if w == "<eos>" else w) + r"\d+\.\d%$") for w in words[:8]]


def test_page_suggests_and_generates(trained_ckpt, tmp_path):
    ckpt = load_checkpoint(trained_ckpt)
    screenshot = Path(os.environ.get("WORDLM_SCREENSHOT") or tmp_path / "serve-page.png")
    with live_server(create_app(ckpt, load_engine("torch", ckpt))) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 860, "height": 560})
            problems = []
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.goto(url)
            expect(page.locator("#model")).to_have_text("model best · engine torch")
            text, suggestions = page.locator("#text"), page.locator(".suggestion")

            text.press_sequentially("my sister ran to ", delay=30)
            expect(suggestions).to_have_text(labels(url, "my sister ran to "))
            choice = suggestions.filter(has_not_text="↵").first
            word = choice.text_content().rstrip("0123456789.%")
            choice.click()
            typed = f"my sister ran to {word} "
            expect(text).to_have_value(typed)

            # a word being typed: the suggestions start with it, and Tab takes the first
            expect(suggestions).to_have_text(labels(url, typed))
            text.press_sequentially("h", delay=30)
            expected = labels(url, typed, "h")
            assert expected, "the tiny model should know a word starting with h here"
            expect(suggestions).to_have_text(expected)
            text.press("Tab")
            expect(text).to_have_value(re.compile(rf"^{typed}h\S+ $"))
            before = text.input_value()

            page.fill("#words", "6")
            page.click("button[type=submit]")
            expect(page.locator("#status")).to_have_text("6 words generated (finish: length)")
            assert text.input_value().startswith(before) and len(text.input_value().split()) > len(before.split())
            expect(suggestions.first).to_be_visible()
            page.screenshot(path=str(screenshot))
        finally:
            browser.close()
    assert not problems, problems
    assert screenshot.stat().st_size > 10_000
