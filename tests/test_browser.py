"""End to end in headless Chromium: `imgsim serve` (Voilà), pick a pair, move a slider, verdict flips.

Needs Debian's `chromium` (make test installs it) and Playwright for Python; skips loudly without them.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = os.path.join(REPO, "reports", "inspector", "screenshot.png")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "imgsim", "serve", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=dict(os.environ, PYTHONPATH=REPO))
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, open(tmp_path / "serve.log").read()[-2000:]
            time.sleep(0.3)
    yield f"http://127.0.0.1:{port}/"
    os.killpg(proc.pid, signal.SIGTERM)  # the server, stopped by its PID (and its kernel)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
def test_inspector_in_a_real_browser(server):
    if CHROMIUM is None:
        pytest.skip("\n\n*** BROWSER TEST SKIPPED: no chromium on this machine "
                    "(apt-get install chromium) ***\n")
    sync_api = pytest.importorskip("playwright.sync_api", reason="\n\n*** BROWSER TEST SKIPPED: "
                                   "playwright is not installed ***\n")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        start = time.time()
        page.goto(server, timeout=180_000)
        compare = page.locator("button", has_text="Compare")
        compare.wait_for(timeout=180_000)
        loaded = time.time()
        compare.click()  # the default pair: two photos of the first scene
        verdict = page.locator(".imgsim-verdict[data-method='dl']")
        verdict.wait_for(timeout=180_000)
        first_result = time.time()
        similarity = float(page.locator(".imgsim-similarity").inner_text().split()[0])
        text_before = verdict.inner_text()
        readout = page.locator(".widget-slider", has_text="similarity %").locator(".widget-readout")
        for value, expected in ((similarity - 1.0, "same scene"), (similarity + 1.0, "different scenes")):
            readout.click()
            page.keyboard.press("Control+A")
            page.keyboard.type(f"{value:.1f}")
            page.keyboard.press("Enter")
            page.wait_for_function(
                "([sel, want]) => document.querySelector(sel).innerText.includes(want)",
                arg=[".imgsim-verdict[data-method='dl']", expected], timeout=30_000)
        assert "different scenes" in verdict.inner_text() and "same scene" in text_before
        os.makedirs(os.path.dirname(SCREENSHOT), exist_ok=True)
        page.screenshot(path=SCREENSHOT, full_page=True)
        browser.close()
    print(f"\npage load {loaded - start:.1f} s, load to first result {first_result - loaded:.1f} s; "
          f"screenshot {SCREENSHOT}")
    assert os.path.getsize(SCREENSHOT) > 10_000
