"""Headless Chromium (Debian's) through Playwright: open a page, read it, screenshot it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.sync_api import ConsoleMessage, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps dialling Google's hosts, which this network refuses.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class RenderedPage:
    errors: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)


def render(page_path: Path, profile: Path, screenshot: Path, scripts: dict[str, str]) -> RenderedPage:
    """Load `page_path` in a fresh profile, evaluate each script, take a full-page screenshot."""
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: `make test` installs Debian's chromium"
    rendered = RenderedPage()

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            rendered.errors.append(message.text)

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),  # a fresh --user-data-dir
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = context.new_page()
            page.on("console", on_console)
            page.on("pageerror", lambda exc: rendered.errors.append(str(exc)))
            page.goto(page_path.as_uri(), wait_until="load")
            rendered.values = {name: page.evaluate(script) for name, script in scripts.items()}
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            context.close()
    return rendered
