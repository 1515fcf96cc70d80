"""The playground page in a real headless browser: the streamed steered answer differs from the
plain one and equals the API's greedy answer to the same request.

Needs Debian's chromium and chromium-driver (`make browser`). Skipped with the reason where they
are missing, except in CI (CI=true), where a missing browser fails the test.
"""

from __future__ import annotations

import os

import httpx
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e .[serve])")

from axbench_hypersteer.serve.cli import build_server  # noqa: E402
from playground_driver import browser_missing, compare, open_browser  # noqa: E402
from serve_helpers import CONCEPTS, RunningServer, write_hypernet  # noqa: E402

BASE = "Tell me about the history of the Roman empire."
FACTOR = 8.0
MAX_TOKENS = 20


@pytest.fixture(scope="module")
def browser():
    missing = browser_missing()
    if missing:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"browser test required in CI: {missing}")
        pytest.skip(missing)
    driver = open_browser()
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tokenizer):
    hypernet = write_hypernet(tmp_path_factory.mktemp("browser"), tokenizer, "xattn")
    app, scheduler = build_server(hypernet, device="cpu")
    running = RunningServer(app, scheduler)
    yield running
    running.stop()


def api_answer(url: str, steering: dict | None) -> str:
    body = {"model": "HyperSteerTest", "max_tokens": MAX_TOKENS, "temperature": 0,
            "messages": [{"role": "user", "content": BASE}]}
    if steering:
        body["steering"] = steering
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"]


def test_compare_streams_plain_and_steered_side_by_side(browser, server, tmp_path):
    shot = os.environ.get("HYPERSTEER_SCREENSHOT") or str(tmp_path / "playground.png")
    texts = compare(browser, server.url + "/", BASE, CONCEPTS[1], FACTOR, MAX_TOKENS,
                    screenshot=shot)
    assert texts["steered"] != texts["plain"]
    assert texts["plain"] == api_answer(server.url, None)
    assert texts["steered"] == api_answer(server.url, {"prompt": CONCEPTS[1], "factor": FACTOR})
    assert "finished: length" in texts["steered_status"] and "vector norm" in \
        texts["steered_status"]
    assert os.path.getsize(shot) > 1000


def test_examples_come_from_the_trained_concepts(browser, server):
    from selenium.webdriver.common.by import By

    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/")
    buttons = WebDriverWait(browser, 30).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#examples button"))
    assert [b.text for b in buttons] == CONCEPTS
    buttons[2].click()
    assert browser.find_element(By.ID, "steer").get_attribute("value") == CONCEPTS[2]
