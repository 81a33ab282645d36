"""The server's web page in a real headless browser (Debian's Chromium driven by Playwright).

Needs the ``chromium`` Debian package and the ``playwright`` Python package (its own browser
download is not used: ``playwright install`` needs the internet). Skipped, with the reason, when
either is missing; select it alone with ``pytest -m browser``.
"""

from __future__ import annotations

import shutil

import pytest
import requests
from test_serve import AUTH, KEY, start_server, tiny_run

pytestmark = pytest.mark.browser

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.fixture(scope="module")
def page_server(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install -y chromium)")
    pytest.importorskip("playwright", reason="playwright is not installed (pip install playwright)")
    run = tiny_run()
    log = tmp_path_factory.mktemp("browser_log") / "server.log"
    proc, url = start_server(run["run_dir"], "--api-key", KEY, log=log)
    yield run, url
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def browser(page_server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def test_page_uploads_a_picture_and_a_recording_and_draws_the_answer(page_server, browser, tmp_path):
    run, url = page_server
    row = run["rows"][5]
    picture, recording = run["root"] / row["image"], run["root"] / row["audio"]
    files = {"image": ("p.png", picture.read_bytes()), "audio": ("a.wav", recording.read_bytes())}
    want = requests.post(f"{url}/predict?explain=true", data={"text": row["text"]}, files=files, headers=AUTH,
                         timeout=60).json()

    page = browser.new_page()
    page.goto(url)
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")  # the page reads /info with the key
    page.wait_for_function("document.getElementById('model-id').textContent.includes('@')")
    assert page.text_content("#model-id") == want["model"]
    page.fill("#text", row["text"])
    page.set_input_files("#image", str(picture))
    page.set_input_files("#audio", str(recording))
    page.click("#submit")
    page.wait_for_selector("#result:not([hidden])")
    assert page.text_content("#label") == want["label"]
    names = page.eval_on_selector_all("#chart .bar", "rows => rows.map(r => r.dataset.name)")
    assert names == list(want["probabilities"])  # one bar per class, most probable first
    assert page.get_attribute("#chart .bar.top", "data-name") == want["label"]
    shown = page.eval_on_selector_all("#chart .bar .value", "cells => cells.map(c => c.textContent)")
    assert shown == [f"{p:.3f}" for p in want["probabilities"].values()]
    # the contributions slot: one bar per modality, the exact Shapley values of mm.explain
    assert page.is_visible("#contributions")
    contrib = page.eval_on_selector_all("#contrib-chart .bar", "rows => rows.map(r => r.dataset.name)")
    assert sorted(contrib) == ["audio", "image", "text"]
    assert "batch of 1" in page.text_content("#meta")

    # a corrupt picture: the server's message is shown, and the page still works afterwards
    bad = tmp_path / "bad.png"
    bad.write_bytes(picture.read_bytes()[:100])
    page.set_input_files("#image", str(bad))
    page.click("#submit")
    page.wait_for_selector("#error:not([hidden])")
    assert page.text_content("#error").startswith("422: image:") and "cannot be decoded as an image" in page.text_content("#error")
    page.set_input_files("#image", str(picture))
    page.click("#submit")
    page.wait_for_selector("#result:not([hidden])")
    assert page.text_content("#label") == want["label"]
    page.close()
