"""Drives the playground page in headless Chromium (Debian's ``chromium`` + ``chromium-driver``,
installed by ``make browser``) through selenium: type, click, wait, read.

Also a script, to take the README's screenshot from a running server:
    python tests/playground_driver.py http://127.0.0.1:8000 docs/playground.png \
        --base "Write a short story about a journey." --steer "..." --factor 1.0
"""

from __future__ import annotations

import argparse
import shutil

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def browser_missing() -> str | None:
    """Why a browser test cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e .[test])"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            return f"{path} not found (run `make browser`: apt-get install chromium chromium-driver)"
    return None


def open_browser(width: int = 1200, height: int = 860):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def compare(driver, url: str, base: str, steer: str, factor: float, max_tokens: int,
            timeout: float = 120, screenshot: str | None = None) -> dict[str, str]:
    """Fill the form, press "Compare", wait for both streams to end; the panes' texts."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    find = lambda id_: driver.find_element(By.ID, id_)  # noqa: E731
    WebDriverWait(driver, timeout).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#examples button"))
    for id_, value in (("base", base), ("steer", steer), ("max_tokens", str(max_tokens))):
        find(id_).clear()
        find(id_).send_keys(value)
    driver.execute_script("arguments[0].value = arguments[1];"
                          "arguments[0].dispatchEvent(new Event('input'));", find("factor"), factor)
    find("compare").click()
    WebDriverWait(driver, timeout).until(
        lambda d: all(find(p).get_attribute("data-done") == "1" for p in ("plain", "steered")))
    if screenshot:
        driver.save_screenshot(screenshot)
    return {pane: find(pane).get_attribute("textContent")
            for pane in ("plain", "steered", "plain_status", "steered_status")}


def main() -> None:
    p = argparse.ArgumentParser(description="screenshot of the playground after a comparison")
    p.add_argument("url")
    p.add_argument("out")
    p.add_argument("--base", default="Write a short story about a journey.")
    p.add_argument("--steer", required=True)
    p.add_argument("--factor", type=float, default=1.0)
    p.add_argument("--max_tokens", type=int, default=64)
    args = p.parse_args()
    driver = open_browser()
    try:
        texts = compare(driver, args.url, args.base, args.steer, args.factor, args.max_tokens,
                        screenshot=args.out)
    finally:
        driver.quit()
    print(texts)


if __name__ == "__main__":
    main()
