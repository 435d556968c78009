"""Frame latency of `rlir play`: the session's step alone, and the same through HTTP on a real server.

    python bench/play_latency.py --world-model dit=RUN/checkpoints/best [--world-model ar=CKPT ...]
                                 [--frames 48] [--threads N] [--device cpu] [--out bench/results]

For each labelled checkpoint: `--frames` steps of one session (a fixed cycle of key combinations, seed
0, the evaluation's sampler settings, the default --context), timed per frame, then the same through
the Flask app served by werkzeug on a free local port, requested with urllib the way the page does
(JSON in, PNG data URLs out), so the HTTP figure includes the PNG encoding, the action strip and the
request. Frames that slid the window are reported apart (they re-prime the cache). Writes
OUT/play_latency_<label>.json with the thread count, the load average and the machine, since a busy
CPU changes every number.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KEYS = [["forward"], ["forward"], ["forward", "turn_left"], ["turn_left"], ["forward", "sprint"], ["right"],
        ["turn_right"], ["back"], ["jump"], ["attack"], ["look_up"], []]


def summary(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"frames": len(a), "mean_ms": float(a.mean()), "median_ms": float(np.median(a)),
            "p90_ms": float(np.percentile(a, 90)), "max_ms": float(a.max()), "fps": float(1000 / a.mean())}


def start_frame(pm, data: str | None) -> np.ndarray:
    if data:
        from rlir.play.server import load_starts
        return load_starts(data, pm, 1)[0]["frame"]
    return np.random.default_rng(0).integers(0, 256, (*pm.resolution, 3), dtype=np.uint8)


def bench_session(pm, frame0, frames: int) -> dict:
    from rlir.play.session import controls_to_action
    s = pm.session(frame0, seed=0)
    rows = [s.step(controls_to_action(KEYS[i % len(KEYS)])) for i in range(frames)]
    ms = [r["ms"] for r in rows]
    slid = [r["ms"] for r in rows if r["slid"]]
    return {"all": summary(ms), "slid": summary(slid) if slid else None,
            "not_slid": summary([r["ms"] for r in rows if not r["slid"]]), "per_frame_ms": ms}


def bench_http(pm, frame0, frames: int) -> dict:
    from werkzeug.serving import make_server

    from rlir.play.server import create_app
    app = create_app(pm, [{"label": "bench", "frame": frame0}])
    logging.getLogger("werkzeug").setLevel(logging.WARNING)       # no log line per request
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    url = f"http://127.0.0.1:{srv.port}/api"

    def post(path, body):
        req = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req) as r:
            return json.loads(r.read())
    try:
        sid = post("/sessions", {})["session"]
        post(f"/sessions/{sid}/start", {"start": 0})
        rtt, model = [], []
        for i in range(frames):
            t0 = time.perf_counter()
            r = post(f"/sessions/{sid}/step", {"controls": KEYS[i % len(KEYS)]})
            rtt.append((time.perf_counter() - t0) * 1000)
            model.append(r["ms"])
    finally:
        srv.shutdown()
        th.join(5)
    return {"round_trip": summary(rtt), "model_ms_on_server": summary(model),
            "overhead_mean_ms": float(np.mean(rtt) - np.mean(model)), "per_frame_round_trip_ms": rtt}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world-model", action="append", required=True, metavar="LABEL=CKPT",
                    help="checkpoint to time, labelled (repeatable); a bare CKPT is labelled by its run folder")
    ap.add_argument("--data", help="take the start frame from this store's first test clip (default: random pixels)")
    ap.add_argument("--frames", type=int, default=48, help="frames timed per measurement (default 48)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed frames first (default 2)")
    ap.add_argument("--context", type=int, help="frames kept when the window slides (default: play's)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = ap.parse_args()
    import torch

    from rlir.play.session import PlayModel
    if a.threads:
        torch.set_num_threads(a.threads)
    for spec in a.world_model:
        label, _, path = spec.rpartition("=")
        label = label or Path(path).resolve().parents[1].name
        pm = PlayModel(path, a.device, a.context)
        frame0 = start_frame(pm, a.data)
        for _ in range(a.warmup):
            pm.warmup()
        res = {"label": label, "checkpoint": path, "paradigm": pm.paradigm, "resolution": list(pm.resolution),
               "clip_len": pm.clip_len, "context": pm.context, "sampler": pm.sampler(), "device": a.device,
               "params_m": sum(p.numel() for p in pm.model.parameters()) / 1e6,
               "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.processor()
               or platform.machine(), "torch": torch.__version__, "load_average_before": list(os.getloadavg()),
               "session": bench_session(pm, frame0, a.frames), "http": bench_http(pm, frame0, a.frames),
               "load_average_after": list(os.getloadavg())}
        out = Path(a.out) / f"play_latency_{label}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2) + "\n")
        s, h = res["session"]["all"], res["http"]["round_trip"]
        print(f"{label}: {pm.paradigm} {pm.resolution[0]}x{pm.resolution[1]}, {res['params_m']:.1f}M params, "
              f"{res['torch_threads']} threads: session {s['mean_ms']:.1f} ms/frame ({s['fps']:.1f} fps), "
              f"HTTP {h['mean_ms']:.1f} ms ({h['fps']:.1f} fps) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
