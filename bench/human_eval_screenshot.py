"""A screenshot of the `rlir human-eval` voting page, from a real headless Chromium.

    python bench/human_eval_screenshot.py --pairs DIR
    python bench/human_eval_screenshot.py --data DIR --models A=CKPT B=CKPT [--clips 4] --pairs /tmp/he_pairs
                                          [--vote 1] [--out bench/results/human_eval_page.png]

With --data and --models, builds the pairs folder first (`rlir human-eval make`, refused if --pairs is
not empty); without them, takes --pairs as it is. Serves the page on a free local port with a fresh
votes database in a temporary folder (as `rlir human-eval serve` does), enters a rater id, answers
--vote trials (default 1), picks answers on the next one without submitting, and saves the page.
Uses rlir/utils/browser.py's Chromium (Debian's chromium, Selenium).
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", required=True, help="pairs folder (made here when --data and --models are given)")
    ap.add_argument("--data")
    ap.add_argument("--models", nargs=2, metavar="NAME=CKPT")
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vote", type=int, default=1, help="trials to answer before the screenshot (default 1)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "human_eval_page.png"))
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=1000)
    a = ap.parse_args()
    if bool(a.data) != bool(a.models):
        ap.error("give --data and --models together (to build --pairs), or neither (to take --pairs as it is)")
    if a.data:
        from rlir.cli import main as rlir
        t0 = time.time()
        rc = rlir(["human-eval", "make", "--data", a.data, "--models", *a.models, "--clips", str(a.clips),
                   "--seed", str(a.seed), "--out", a.pairs])
        if rc:
            return rc
        print(f"made the pairs in {time.time() - t0:.1f} s")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from werkzeug.serving import make_server

    from rlir.human_eval import db
    from rlir.human_eval.make import load_trials
    from rlir.human_eval.server import create_app
    from rlir.utils.browser import headless_chromium
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    manifest = load_trials(a.pairs)
    votes = db.open_db(Path(tempfile.mkdtemp()) / "votes.sqlite")
    db.bind_pairs(votes, manifest["pairs_id"], [m["name"] for m in manifest["models"]], a.pairs)
    srv = make_server("127.0.0.1", 0, create_app(a.pairs, manifest, votes), threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()

    def pick(d, follows, looks):
        for q, v in (("follows", follows), ("looks", looks)):
            d.find_element(By.XPATH, f"//fieldset[@data-q='{q}']//label[input[@value='{v}']]").click()

    try:
        with headless_chromium(a.width, a.height, console_log=True) as d:
            wait = WebDriverWait(d, 60)
            d.get(f"http://127.0.0.1:{srv.port}/")
            wait.until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
            d.find_element(By.ID, "rater-input").send_keys("rater-1")
            d.find_element(By.ID, "rater-save").click()
            for n in range(1, min(a.vote, len(manifest["trials"])) + 1):
                wait.until(lambda d: d.execute_script("return document.body.dataset.state") == "trial")
                pick(d, "left", "same")
                d.find_element(By.ID, "submit").click()
                wait.until(lambda d: d.find_element(By.ID, "progress").get_attribute("data-done") == str(n))
            if d.execute_script("return document.body.dataset.state") == "trial":
                pick(d, "right", "left")          # answers picked, not submitted: shows the selected state
            wait.until(lambda d: d.execute_script("const v = document.getElementById('video'); "
                                                  "return v.hidden || (v.complete && v.naturalWidth > 0)"))
            time.sleep(0.6)                       # a few GIF frames in, past the given frame 0
            errors = [e for e in d.get_log("browser") if e.get("level") == "SEVERE"]
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            d.save_screenshot(a.out)
            progress = d.find_element(By.ID, "progress-text").text
    finally:
        srv.shutdown()
    print(f"{len(manifest['trials'])} trials, {progress}; console errors: {len(errors)}; screenshot {a.out}")
    for e in errors:
        print("  ", e.get("message"))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
