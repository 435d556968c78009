#!/usr/bin/env python
"""IDM learning curves against CPU minutes: validation F1 of each run at every evaluation, where it
flattens, and (optionally) each run's held-out test figures, in one JSON and one plot.

    python bench/idm_learning_curve.py --run rgb=runs/curve/rgb --run flow=runs/curve/flow \
        --test rgb=runs/curve/rgb/test_eval ... --out bench/results/idm_learning_curve.json

A run is an `rlir idm train` folder (its metrics.jsonl rows carry the minutes since the run began,
resumed runs included); a test file is the JSON that `rlir idm eval --out` writes.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def curve(run: Path) -> list[dict]:
    rows = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "val/f1_macro" in r:
            rows.append({"step": r["step"], "minutes": round(r["elapsed_s"] / 60, 2),
                         "val_f1_macro": r["val/f1_macro"], "val_f1_macro_shown": r.get("val/f1_macro_shown"),
                         "pitch_bin_error": r.get("val/camera_pitch_bin_error"),
                         "yaw_bin_error": r.get("val/camera_yaw_bin_error")})
    if not rows:
        raise SystemExit(f"{run}/metrics.jsonl has no validation rows")
    return rows


def flattening(rows: list[dict], window: float) -> dict:
    """The validation F1 gained over the last `window` minutes of the run, and per 10 minutes there."""
    end = rows[-1]
    earlier = [r for r in rows if r["minutes"] <= end["minutes"] - window]
    if not earlier:
        return {}
    a = earlier[-1]
    gain = end["val_f1_macro"] - a["val_f1_macro"]
    return {"from_minutes": a["minutes"], "to_minutes": end["minutes"], "val_f1_gain": round(gain, 4),
            "per_10_minutes": round(gain / (end["minutes"] - a["minutes"]) * 10, 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, metavar="NAME=DIR")
    p.add_argument("--test", action="append", default=[], metavar="NAME=JSON", help="`rlir idm eval --out` file")
    p.add_argument("--window", type=float, default=6.0, help="minutes over which the late slope is read")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    res = {"bench": "idm_learning_curve", "command": " ".join(sys.argv), "runs": {}}
    for spec in a.run:
        name, d = spec.split("=", 1)
        rows = curve(Path(d))
        res["runs"][name] = {"dir": d, "curve": rows, "late_slope": flattening(rows, a.window)}
    for spec in a.test:
        name, f = spec.split("=", 1)
        t = json.loads(Path(f).read_text())["reward_idm"]
        m, ci = t["metrics"], t["ci95"]
        res["runs"][name]["test"] = {"n_clips": t["n_clips"], "f1_macro": m["f1_macro"], "f1_macro_ci95": ci["f1_macro"],
                                     "f1_macro_shown": m["f1_macro_shown"],
                                     "pitch_bin_error": m["camera_pitch_bin_error"],
                                     "yaw_bin_error": m["camera_yaw_bin_error"]}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for name, r in res["runs"].items():
        ax.plot([x["minutes"] for x in r["curve"]], [x["val_f1_macro"] for x in r["curve"]], marker="o", ms=3, label=name)
    ax.set_xlabel("CPU minutes (2 cores)")
    ax.set_ylabel("validation macro F1 (7 groups)")
    ax.grid(alpha=0.3)
    ax.legend()
    FigureCanvasAgg(fig).print_png(str(out.with_suffix(".png")))
    for name, r in res["runs"].items():
        last, s = r["curve"][-1], r["late_slope"]
        t = r.get("test", {})
        print(f"{name:10s} {last['minutes']:5.1f} min  step {last['step']:5d}  val F1 {last['val_f1_macro']:.3f}  "
              f"last {a.window:g} min {s.get('val_f1_gain', float('nan')):+.3f}"
              + (f"  test F1 {t['f1_macro']:.3f} [{t['f1_macro_ci95'][0]:.3f}, {t['f1_macro_ci95'][1]:.3f}]" if t else ""))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
