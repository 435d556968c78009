"""Open an `rlir report` page in headless Chromium (Debian's `chromium`) and check what a person sees.

    python bench/report_browser_check.py --report runs/demo/report/report.html [--out bench/results]

Drives the browser through Selenium (rlir/utils/browser.py, as the web-page tests do): loads the page
from file://, reads the browser's log (console messages, uncaught exceptions, failed loads and bad data
URIs), then checks in the page that the results table has rows with numbers, every figure and every GIF
decoded (naturalWidth > 0) and the GIFs are animated-image data, and takes a full-page screenshot. Before
the report it loads a probe page with one console.error and one broken image, to prove that errors would
be caught. Writes OUT/report_browser_check.json and OUT/report_screenshot.png; exits non-zero when a check
fails (2 when there is no browser). Not part of the test suite.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlir.utils.browser import CHROMIUM_NAMES, BrowserUnavailable, find_binary, headless_chromium  # noqa: E402

LEVELS = {"SEVERE": "error", "WARNING": "warning"}        # what counts as a problem; INFO and DEBUG do not
WHERE = re.compile(r"^(\S+) (\d+(?::\d+)?|-) (.*)$", re.S)  # Chromium prefixes "URL LINE:COL " to the text


def problems(driver) -> list[dict]:
    """The browser log's errors and warnings since the last call (reading it empties it): console.error,
    console.warn and console.assert, uncaught exceptions, failed loads."""
    out = []
    for e in driver.get_log("browser"):
        level = LEVELS.get(e.get("level"))
        if level is None:
            continue
        msg, source = e.get("message", ""), e.get("source", "")
        m = WHERE.match(msg)
        url, text = (m.group(1), m.group(3)) if m else ("", msg)
        if source == "console-api":
            with_quotes = text.startswith('"') and text.endswith('"')
            out.append({"kind": f"console.{level}", "text": json.loads(text) if with_quotes else text})
        elif source == "javascript":
            out.append({"kind": "exception", "text": text})
        else:
            out.append({"kind": f"log.{level}", "text": text, "url": url[:120]})
    return out


def load(driver, url: str) -> None:
    driver.get(url)                  # returns once the load event has fired
    time.sleep(1.5)                  # late console messages and image decoding


PAGE_CHECKS = """(() => {
  const t = document.querySelector('table#results');
  const rows = t ? [...t.querySelectorAll('tbody tr')] : [];
  const imgs = [...document.images];
  const gifs = imgs.filter(i => i.src.startsWith('data:image/gif;base64,'));
  const pngs = imgs.filter(i => i.src.startsWith('data:image/png;base64,'));
  const external = [...document.querySelectorAll('[src],link[href]')]
      .map(e => e.getAttribute('src') || e.getAttribute('href')).filter(u => u && !u.startsWith('data:'));
  return {
    title: document.title,
    table_rows: rows.map(r => [...r.children].map(c => c.innerText.split('\\n')[0].trim())),
    table_headers: t ? [...t.querySelectorAll('thead th')].map(h => h.innerText.trim()) : [],
    gifs: gifs.map(i => ({w: i.naturalWidth, h: i.naturalHeight, complete: i.complete, bytes: i.src.length})),
    pngs: pngs.map(i => ({w: i.naturalWidth, h: i.naturalHeight, complete: i.complete})),
    external_refs: external,
    page_height: document.documentElement.scrollHeight,
    headings: [...document.querySelectorAll('h2')].map(h => h.innerText),
  };
})()"""

PROBE = ("<!DOCTYPE html><html><head><link rel='icon' href='data:,'></head><body>"
         "<img src='data:image/gif;base64,AAAA'><script>console.error('probe error')</script></body></html>")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", required=True, help="report.html written by `rlir report`")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--chromium", default=find_binary(*CHROMIUM_NAMES))
    a = ap.parse_args()
    if not a.chromium:
        print("no chromium found: apt-get install chromium chromium-driver", file=sys.stderr)
        return 2
    report = Path(a.report).resolve()
    if not report.is_file():
        print(f"{report}: no such report", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    version = subprocess.run([a.chromium, "--version"], capture_output=True, text=True).stdout.strip()
    t0 = time.time()
    with tempfile.NamedTemporaryFile("w", suffix=".html", delete=False) as f:
        f.write(PROBE)
    try:
        with headless_chromium(1400, 1000, binary=a.chromium, console_log=True) as d:
            d.set_page_load_timeout(120)
            load(d, Path(f.name).as_uri())
            probe = problems(d)
            load(d, report.as_uri())
            page = d.execute_script("return " + PAGE_CHECKS)
            # the whole page, not the window: Selenium's Chromium driver passes this one DevTools command on
            shot = d.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
            found = problems(d)
    except BrowserUnavailable as e:
        print(e, file=sys.stderr)
        return 2
    finally:
        os.unlink(f.name)
    shot_path = out / "report_screenshot.png"
    shot_path.write_bytes(base64.b64decode(shot["data"]))
    checks = {
        "probe_errors_are_caught": any(p["kind"] == "console.error" for p in probe),
        "table_present": len(page["table_rows"]) > 0,
        "table_has_numbers": all(any(c[:1].isdigit() or c[:2] in ("+0", "-0", "+1", "-1") for c in r[1:])
                                 for r in page["table_rows"]) if page["table_rows"] else False,
        "videos_present": len(page["gifs"]) > 0,
        "videos_decoded": bool(page["gifs"]) and all(g["complete"] and g["w"] > 0 for g in page["gifs"]),
        "figures_decoded": all(p["complete"] and p["w"] > 0 for p in page["pngs"]) and len(page["pngs"]) > 0,
        "self_contained": not page["external_refs"],
        "no_console_errors": not found,
    }
    result = {"ok": all(checks.values()), "checks": checks, "report": str(report), "chromium": version,
              "console_problems": found, "probe_problems": probe, "page": page,
              "screenshot": str(shot_path), "elapsed_s": round(time.time() - t0, 2),
              "command": " ".join([Path(sys.executable).name] + sys.argv)}
    (out / "report_browser_check.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("ok", "checks", "console_problems", "screenshot")}, indent=2))
    print(f"table: {len(page['table_rows'])} rows; GIFs: {len(page['gifs'])}; PNG figures: {len(page['pngs'])}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
