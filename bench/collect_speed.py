"""Collection throughput: frames per second written, 2 workers vs the 1-worker baseline, one run.

    python bench/collect_speed.py [--episodes 40] [--frames 300] [--seed 0]

Writes bench/results/collect_speed.json with the command, seed and machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlir.data.collect import CollectConfig, collect  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--episodes", type=int, default=40)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/collect_speed.json")
    a = p.parse_args()
    runs = []
    for workers in (1, 2):
        d = tempfile.mkdtemp(prefix="rlir-bench-")
        try:
            cfg = CollectConfig(out=d, episodes=a.episodes, frames=a.frames, seed=a.seed, workers=workers)
            t0 = time.time()
            res = collect(cfg, progress=False)
            wall = time.time() - t0
            size = sum(f.stat().st_size for f in Path(d).glob("*.npz"))
        finally:
            shutil.rmtree(d, ignore_errors=True)
        runs.append({"workers": workers, "wall_s": round(wall, 2), "frames_written": res["frames_written"],
                     "raw_frames": res["raw_frames"], "frames_per_s": round(res["frames_written"] / wall, 1),
                     "bytes_per_frame": round(size / max(res["frames_written"], 1), 1)})
        print(json.dumps(runs[-1]))
    out = {"bench": "collect_speed", "command": " ".join([sys.executable] + sys.argv), "seed": a.seed,
           "episodes": a.episodes, "frames_per_episode": a.frames, "resolution": list(CollectConfig().resolution),
           "tics_per_frame": CollectConfig().doom.tics_per_frame, "cpus": os.cpu_count(),
           "machine": platform.platform(), "runs": runs,
           "speedup_2_vs_1": round(runs[1]["frames_per_s"] / runs[0]["frames_per_s"], 2)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
