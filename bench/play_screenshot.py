"""A screenshot of the `rlir play` page after a few key presses, from a real headless Chromium.

    python bench/play_screenshot.py --world-model CKPT [--data DIR] [--keys w,w,d,Left,w,Space]
                                    [--out bench/results/play_page.png]

Serves the page on a free local port (as `rlir play` does), picks the first start frame of --data (or
uploads a random PNG of the model's resolution without it), presses the keys one by one, waiting for
each frame, and saves the page: start frame, current frame, the action strip under it, the pad, the
frame rate and the frames so far. Uses rlir/utils/browser.py's Chromium (Debian's chromium, Selenium).
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world-model", required=True)
    ap.add_argument("--data", help="episode store whose test clips give the start frames")
    ap.add_argument("--keys", default="w,w,Left,w,d,Up,Space,w",
                    help="comma-separated: letters, or Selenium key names (Left, Right, Up, Down, Space, Shift)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "play_page.png"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=980)
    a = ap.parse_args()
    import numpy as np
    import torch
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    from werkzeug.serving import make_server

    from rlir.play.server import create_app, load_starts
    from rlir.play.session import PlayModel, png_bytes
    from rlir.utils.browser import headless_chromium
    torch.set_num_threads(a.threads)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    pm = PlayModel(a.world_model)
    pm.warmup()
    starts, null_groups = [], ()
    if a.data:
        from rlir.data.store import EpisodeStore
        starts, null_groups = load_starts(a.data, pm), tuple(EpisodeStore(a.data).metadata.get("null_groups", {}))
    srv = make_server("127.0.0.1", 0, create_app(pm, starts, null_groups=null_groups), threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    keys = [getattr(Keys, {"Left": "ARROW_LEFT", "Right": "ARROW_RIGHT", "Up": "ARROW_UP", "Down": "ARROW_DOWN"}
                    .get(k, k.upper())) if len(k) > 1 else k for k in a.keys.split(",")]
    try:
        with headless_chromium(a.width, a.height) as d:
            wait = WebDriverWait(d, 120)
            d.get(f"http://127.0.0.1:{srv.port}/")
            wait.until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
            if starts:
                d.find_elements(By.CSS_SELECTOR, "img.start")[0].click()
            else:
                f = Path(tempfile.mkdtemp()) / "start.png"
                f.write_bytes(png_bytes(np.random.default_rng(0).integers(0, 256, (*pm.resolution, 3), np.uint8)))
                d.find_element(By.ID, "upload").send_keys(str(f))
            wait.until(lambda d: (d.find_element(By.ID, "start-img").get_attribute("src") or "").startswith("data:"))
            body = d.find_element(By.TAG_NAME, "body")
            for n, k in enumerate(keys, 1):
                body.send_keys(k)
                wait.until(lambda d: d.find_element(By.ID, "counter").get_attribute("data-frames") == str(n))
            stats = d.find_element(By.ID, "stats").text
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            d.save_screenshot(a.out)
    finally:
        srv.shutdown()
    print(f"{len(keys)} frames played ({stats}); screenshot {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
