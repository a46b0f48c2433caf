"""Drive the app in a real browser (Playwright on the system Chromium): paint, generate, screenshot.

Used by the app's browser test and by ``scripts/app_screenshot.py`` (the README's picture and the
click-to-image time). Playwright's own browser download needs the network; Debian's ``chromium``
package is used instead (``executable_path``).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path


def system_chromium() -> str | None:
    """The path of the system Chromium, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def paint_and_generate(url: str, screenshot: str | Path, *, chromium: str | None = None,
                       prompt: str = "This person is smiling.", timeout_s: float = 300) -> dict:
    """Open the page, paint one stroke in the brush's class colour across the mask, write
    ``prompt``, click Generate and wait for the gallery's image; save a full-page screenshot.
    Returns ``{"click_to_image_s", "seed_used"}``."""
    from playwright.sync_api import sync_playwright

    chromium = chromium or system_chromium()
    if chromium is None:
        raise RuntimeError("no chromium browser (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.goto(url)
            canvas = page.locator("#mask-editor canvas").first
            canvas.wait_for(timeout=60_000)
            box = canvas.bounding_box()
            brush = page.get_by_role("button", name="Brush")
            if brush.count():
                brush.first.click()
            # a stroke across the chin, in the brush's default colour (hair): a beard
            page.mouse.move(box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.66)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] * 0.55, box["y"] + box["height"] * 0.66, steps=12)
            page.mouse.up()
            page.locator("#prompt textarea").fill(prompt)
            started = time.perf_counter()
            page.locator("#generate").click()
            page.locator("#gallery img").first.wait_for(timeout=timeout_s * 1000)
            seconds = time.perf_counter() - started
            seed_used = page.locator("#seed-used textarea").input_value()
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"click_to_image_s": round(seconds, 2), "seed_used": seed_used}
