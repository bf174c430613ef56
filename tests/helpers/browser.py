"""A headless Chromium page of the Gradio app (Debian's chromium, driven by Playwright)."""
import contextlib
import os

from tests.helpers import REPO

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = os.path.join(REPO, "tests", "artifacts")


@contextlib.contextmanager
def captioned_page(url: str, image_path, screenshot: str, beam: bool = False):
    """A Chromium page of the Gradio app at `url` after uploading `image_path` (and choosing beam
    search) and pressing Caption; tests wait there for what they read. On leaving, the full page
    goes to tests/artifacts/<screenshot> and the browser closes."""
    from playwright.sync_api import sync_playwright
    os.makedirs(ARTIFACTS, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url, wait_until="networkidle")
            page.locator("#image input[type=file]").set_input_files(str(image_path))
            page.locator("#image img").first.wait_for(timeout=30000)  # upload done, preview shown
            if beam:
                page.get_by_label("beam search").check()
            page.click("#caption-button")
            yield page
            page.screenshot(path=os.path.join(ARTIFACTS, screenshot), full_page=True)
        finally:
            browser.close()


def wait_for_captions(page, timeout_ms: int = 60000) -> str:
    """The captions box's text once it has any."""
    page.wait_for_function("() => document.querySelector('#captions textarea').value.length > 0",
                           timeout=timeout_ms)
    return page.input_value("#captions textarea")
