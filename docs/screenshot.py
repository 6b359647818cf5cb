"""Screenshot of `retrieve serve` over a real index for the README (needs Debian's chromium + chromedriver).

Usage: python docs/screenshot.py INDEX_DIR QUERY OUT.png [--policy audit] [--model M] [--queue]
--queue (audit only): press "Review queue" instead of searching (QUERY is ignored).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("index")
    ap.add_argument("query")
    ap.add_argument("out")
    ap.add_argument("--policy", default="strict")
    ap.add_argument("--model", default=None)
    ap.add_argument("--queue", action="store_true")
    args = ap.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from retrieval.server import background_server
    from retrieval.server.run import load_app

    app = load_app(args.index, args.model, args.policy)
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,760", f"--user-data-dir={tempfile.mkdtemp()}"):
        opts.add_argument(arg)
    with background_server(app) as url:
        drv = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=opts)
        try:
            drv.get(url + "/")
            if args.queue:
                WebDriverWait(drv, 30).until(lambda d: d.find_element(By.ID, "queue").is_displayed())
                drv.find_element(By.ID, "queue").click()
                WebDriverWait(drv, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .card"))
            else:
                drv.find_element(By.ID, "q").send_keys(args.query, Keys.ENTER)
                WebDriverWait(drv, 60).until(lambda d: d.execute_script("return document.body.dataset.state") == "done")
            WebDriverWait(drv, 30).until(lambda d: d.execute_script(
                "return [...document.querySelectorAll('#results img')].every(i => i.complete)"))
            drv.save_screenshot(str(Path(args.out)))
        finally:
            drv.quit()


if __name__ == "__main__":
    main()
