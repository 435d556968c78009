"""`rlir data stats`: episodes, frames, per-group class frequencies, dropped frames."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rlir.actions import CLASS_NAMES, GROUPS, N_CLASSES
from rlir.data.store import EpisodeStore


def dataset_stats(root: str | Path, progress: bool = False) -> dict:
    store = EpisodeStore(root)
    counts = [np.zeros(n, dtype=np.int64) for n in N_CLASSES]
    n_frames = {s: 0 for s in ("train", "val", "test")}
    n_eps = {s: 0 for s in ("train", "val", "test")}
    maps: dict[str, int] = {}
    from tqdm import tqdm
    for i in tqdm(store.ids(), desc="stats", unit="ep", disable=not progress):
        e = store.entry(i)
        ep = store.load(i)
        for g in range(len(GROUPS)):
            counts[g] += np.bincount(ep.actions[:, g], minlength=N_CLASSES[g])
        n_frames[e["split"]] = n_frames.get(e["split"], 0) + len(ep)
        n_eps[e["split"]] = n_eps.get(e["split"], 0) + 1
        m = str(e.get("source", {}).get("map", "?"))
        maps[m] = maps.get(m, 0) + 1
    total = max(sum(n_frames.values()), 1)
    freq = {g: {CLASS_NAMES[g][c]: float(counts[k][c] / total) for c in range(N_CLASSES[k])}
            for k, g in enumerate(GROUPS)}
    null_groups = store.metadata.get("null_groups", {})
    # every non-null class of a group the source can show should be common enough to learn
    rare = {g: [c for c, f in freq[g].items() if c not in ("null", "5") and f < 0.02]
            for g in GROUPS[:7] if g not in null_groups}
    return {
        "root": str(store.root),
        "episodes": len(store), "episodes_by_split": n_eps,
        "frames": sum(n_frames.values()), "frames_by_split": n_frames,
        "resolution": store.metadata.get("resolution"),
        "fps": store.metadata.get("fps"),
        "maps": dict(sorted(maps.items())),
        "class_frequency": freq,
        "class_counts": {g: counts[k].tolist() for k, g in enumerate(GROUPS)},
        "null_groups": null_groups,
        "rare_classes_below_2pct": {g: v for g, v in rare.items() if v},
        "dropped": store.metadata.get("preprocess", {}),
    }


def format_stats(s: dict) -> str:
    lines = [f"dataset {s['root']}",
             f"  episodes {s['episodes']} ({', '.join(f'{k} {v}' for k, v in s['episodes_by_split'].items())})",
             f"  frames   {s['frames']} ({', '.join(f'{k} {v}' for k, v in s['frames_by_split'].items())})",
             f"  resolution {s['resolution']} (HxW), fps {s['fps']}",
             f"  maps     {', '.join(f'{k}:{v}' for k, v in s['maps'].items())}"]
    d = s["dropped"]
    if d:
        lines.append(f"  preprocessing: {d.get('raw_frames', 0)} raw frames from {d.get('recordings', 0)} recordings, "
                     f"kept {d.get('kept', 0)}, dropped static {d.get('static', 0)}, invalid (menu/death) "
                     f"{d.get('invalid', 0)}, short segments {d.get('short', 0)}")
    lines.append("  class frequency (share of frames):")
    for g, f in s["class_frequency"].items():
        note = "   [left null by design]" if g in s["null_groups"] else ""
        lines.append(f"    {g:<13}" + " ".join(f"{c}={v:.3f}" for c, v in f.items()) + note)
    if s["rare_classes_below_2pct"]:
        lines.append(f"  WARNING classes below 2% of frames: {json.dumps(s['rare_classes_below_2pct'])}")
    return "\n".join(lines)
