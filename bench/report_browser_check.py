"""Open an `rlir report` page in headless Chromium (Debian's `chromium`) and check what a person sees.

    python bench/report_browser_check.py --report runs/demo/report/report.html [--out bench/results]

Talks to the browser over the DevTools protocol on a pipe (`--remote-debugging-pipe`, no extra
package): loads the page from file://, records console messages, uncaught exceptions and browser log
entries (failed loads, bad data URIs), then checks in the page that the results table has rows with
numbers, every figure and every GIF decoded (naturalWidth > 0) and the GIFs are animated-image data,
and takes a full-page screenshot. Before the report it loads a probe page with one console.error and
one broken image, to prove that errors would be caught. Writes OUT/report_browser_check.json and
OUT/report_screenshot.png; exits non-zero when a check fails. Not part of the test suite.
"""
from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


class Chromium:
    """A headless Chromium driven over --remote-debugging-pipe (fd 3: commands in, fd 4: events out)."""

    def __init__(self, binary: str, width: int = 1400, height: int = 1000):
        self.tmp = tempfile.mkdtemp(prefix="rlir-chromium-")
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()
        hi_r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 100)     # out of the way of 3 and 4
        hi_w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 100)

        def child():
            os.dup2(hi_r, 3)
            os.dup2(hi_w, 4)

        args = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-extensions", "--remote-debugging-pipe", f"--user-data-dir={self.tmp}",
                f"--window-size={width},{height}", "about:blank"]
        self.proc = subprocess.Popen(args, preexec_fn=child, pass_fds=(3, 4), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        for fd in (to_chrome_r, from_chrome_w, hi_r, hi_w):
            os.close(fd)
        self.buf, self.next_id, self.events = b"", 0, []
        self.width, self.height = width, height

    def _read(self, timeout: float) -> dict | None:
        while b"\0" not in self.buf:
            r, _, _ = select.select([self.from_chrome], [], [], timeout)
            if not r:
                return None
            chunk = os.read(self.from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe: "
                                   + self.proc.stderr.read().decode(errors="replace")[-500:])
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.to_chrome, json.dumps(msg).encode() + b"\0")
        end = time.time() + timeout
        while time.time() < end:
            m = self._read(max(0.0, end - time.time()))
            if m is None:
                break
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)
        raise TimeoutError(f"no answer to {method} in {timeout}s")

    def wait_event(self, method: str, timeout: float = 60) -> dict | None:
        for i, m in enumerate(self.events):
            if m.get("method") == method:
                return self.events.pop(i)
        end = time.time() + timeout
        while time.time() < end:
            m = self._read(max(0.0, end - time.time()))
            if m is None:
                return None
            if m.get("method") == method:
                return m
            self.events.append(m)
        return None

    def drain(self, seconds: float) -> None:
        end = time.time() + seconds
        while time.time() < end:
            m = self._read(max(0.0, end - time.time()))
            if m is None:
                return
            self.events.append(m)

    def open(self, url: str) -> str:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.send(f"{domain}.enable", session=s)
        self.send("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": self.height,
                                                         "deviceScaleFactor": 1, "mobile": False}, session=s)
        self.events.clear()
        self.send("Page.navigate", {"url": url}, session=s)
        if self.wait_event("Page.loadEventFired", 120) is None:
            raise TimeoutError(f"{url} did not finish loading in 120 s")
        self.drain(1.5)                  # late console messages and image decoding
        return s

    def evaluate(self, session: str, expr: str):
        r = self.send("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True},
                      session=session)
        if "exceptionDetails" in r:
            raise RuntimeError(f"page script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def problems(self, session: str) -> list[dict]:
        out = []
        for m in self.events:
            if m.get("sessionId") not in (None, session):
                continue
            p, meth = m.get("params", {}), m.get("method")
            if meth == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
                out.append({"kind": f"console.{p['type']}",
                            "text": " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))})
            elif meth == "Runtime.exceptionThrown":
                out.append({"kind": "exception", "text": p.get("exceptionDetails", {}).get("text", "")})
            elif meth == "Log.entryAdded" and p.get("entry", {}).get("level") in ("error", "warning"):
                e = p["entry"]
                out.append({"kind": f"log.{e['level']}", "text": e.get("text", ""), "url": e.get("url", "")[:120]})
        return out

    def close(self):
        try:
            self.send("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for fd in (self.to_chrome, self.from_chrome):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)


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
    ap.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser")
                    or shutil.which("google-chrome"))
    a = ap.parse_args()
    if not a.chromium:
        print("no chromium found: apt-get install chromium", file=sys.stderr)
        return 2
    report = Path(a.report).resolve()
    if not report.is_file():
        print(f"{report}: no such report", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    version = subprocess.run([a.chromium, "--version"], capture_output=True, text=True).stdout.strip()
    t0 = time.time()
    br = Chromium(a.chromium)
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".html", delete=False) as f:
            f.write(PROBE)
        s = br.open(Path(f.name).as_uri())
        probe = br.problems(s)
        os.unlink(f.name)
        br.events.clear()
        s = br.open(report.as_uri())
        page = br.evaluate(s, PAGE_CHECKS)
        shot = br.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=s,
                       timeout=120)
        problems = br.problems(s)
    finally:
        br.close()
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
        "no_console_errors": not problems,
    }
    result = {"ok": all(checks.values()), "checks": checks, "report": str(report), "chromium": version,
              "console_problems": problems, "probe_problems": probe, "page": page,
              "screenshot": str(shot_path), "elapsed_s": round(time.time() - t0, 2),
              "command": " ".join([Path(sys.executable).name] + sys.argv)}
    (out / "report_browser_check.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("ok", "checks", "console_problems", "screenshot")}, indent=2))
    print(f"table: {len(page['table_rows'])} rows; GIFs: {len(page['gifs'])}; PNG figures: {len(page['pngs'])}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
