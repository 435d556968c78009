"""What the pixels' optical flow reveals of each motion group, read without a deep network.

`bench/idm_ceiling.py` bounds an IDM by the engine's own motion (F1 0.93 / 0.85 / 0.93 on fore_back /
left_right / sprint_sneak); the reward IDM reads 0.66 / 0.49 / 0.49 from the same recording. This bench
splits that gap: it fits the same per-group gradient-boosted classifier (frames t-3 .. t+4 around the
transition t -> t+1) on three inputs read from a stored recording's train episodes, and scores it on
its test episodes as the IDM evaluation does (16-frame clips, macro F1, bootstrap over clips):

    engine   the episode's `motion` array (forward, right, up displacement per frame) and the camera
    flow     DIS optical flow of the 48x64 frames (the reward IDM's `model.flow` input), pooled over a
             3x4 grid of cells (mean x, y flow per cell) plus its global divergence and curl
    both     the two side by side

If `flow` reads close to `engine`, the pixels carry the motion and the IDM's gap is in learning to
read it; if it reads close to the IDM, the gap is in the pixels (48x64, low texture) themselves.

    python bench/flow_ceiling.py --data runs/base/data --out bench/results/flow_ceiling_base3.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlir.actions import GROUPS  # noqa: E402
from rlir.data.store import EpisodeStore  # noqa: E402
from rlir.eval.action_metrics import action_metrics  # noqa: E402
from rlir.models.idm import optical_flow  # noqa: E402

from idm_ceiling import MOTION_GROUPS, windowed  # noqa: E402  (the same groups and t-3..t+4 window)


def flow_features(frames: np.ndarray, cells=(3, 4)) -> np.ndarray:
    """[T, H, W, 3] uint8 -> [T, 2 * cells + 2]: per transition t -> t+1 (zero for the last frame), the
    mean flow of each grid cell and the field's divergence and curl (forward motion expands the view,
    a turn shifts it, a strafe shifts near things more than far ones)."""
    f = optical_flow(frames[None]).numpy()[0]                    # [T, H, W, 2]
    T, H, W, _ = f.shape
    gh, gw = cells
    pooled = f.reshape(T, gh, H // gh, gw, W // gw, 2).mean((2, 4)).reshape(T, -1)
    du_dx = np.gradient(f[..., 0], axis=2).mean((1, 2))
    dv_dy = np.gradient(f[..., 1], axis=1).mean((1, 2))
    dv_dx = np.gradient(f[..., 1], axis=2).mean((1, 2))
    du_dy = np.gradient(f[..., 0], axis=1).mean((1, 2))
    return np.concatenate([pooled, (du_dx + dv_dy)[:, None], (dv_dx - du_dy)[:, None]], axis=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--max-train", type=int, default=120, help="train episodes read (the fit's cost)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    from sklearn.ensemble import HistGradientBoostingClassifier

    store = EpisodeStore(a.data)
    t0 = time.time()
    feats = {s: {"engine": [], "flow": []} for s in ("train", "test")}
    Y = {"train": [], "test": []}
    for split, ids in (("train", store.ids("train")[:a.max_train]), ("test", store.ids("test"))):
        for i in ids:
            ep = store.load(i)
            if ep.motion is None:
                raise SystemExit(f"{a.data}: episode {i} has no motion array (re-collect it with today's collector)")
            engine = np.concatenate([ep.motion, ep.camera_deg], axis=1).astype(np.float64)
            feats[split]["engine"].append(windowed(engine))
            feats[split]["flow"].append(windowed(flow_features(ep.frames)))
            Y[split].append(ep.actions.astype(np.int64))
    read_s = time.time() - t0
    inputs = {"engine": lambda s, k: feats[s]["engine"][k], "flow": lambda s, k: feats[s]["flow"][k],
              "both": lambda s, k: np.concatenate([feats[s]["engine"][k], feats[s]["flow"][k]], axis=1)}
    Ytr = np.concatenate(Y["train"])
    res = {}
    L = 15
    true = np.stack([yc[i:i + L] for yc in Y["test"] for i in range(0, len(yc) - L + 1, L)])
    for name, get in inputs.items():
        Xtr = np.concatenate([get("train", k) for k in range(len(Y["train"]))])
        pred_eps = [y.copy() for y in Y["test"]]
        for g_name in MOTION_GROUPS:
            g = GROUPS.index(g_name)
            clf = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.1, random_state=a.seed)
            clf.fit(Xtr, Ytr[:, g])
            for k, pe in enumerate(pred_eps):
                pe[:, g] = clf.predict(get("test", k))
        pred = np.stack([pe[i:i + L] for pe in pred_eps for i in range(0, len(pe) - L + 1, L)])
        m = action_metrics(pred, true, seed=a.seed)
        res[name] = {g: round(m["per_group"][g]["f1_macro"], 4) for g in MOTION_GROUPS}
        print(name, json.dumps(res[name]), flush=True)
    out = {"bench": "flow_ceiling", "command": " ".join([sys.executable] + sys.argv), "seed": a.seed,
           "data": a.data, "train_episodes": len(Y["train"]), "test_episodes": len(Y["test"]),
           "test_clips": int(len(true)), "read_s": round(read_s, 1),
           "f1_macro_per_group": res,
           "note": "engine: the recording's motion array and camera degrees; flow: DIS flow of the 48x64 "
                   "frames pooled to 3x4 cells + divergence and curl; per-group HistGradientBoosting on "
                   "frames t-3..t+4; 16-frame test clips scored as the IDM evaluation does"}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
