"""Is there a learning signal in the inverse reward? Within-group agreement of the reward IDM and the judge.

GRPO only sees how the G rollouts of one prompt differ. A reward is worth optimising when those
within-group differences are about action following, not about the reward IDM's noise on blurry
frames. An independent judge IDM (other architecture, other recordings) can tell the two apart: where
the reward IDM prefers rollout i over rollout j of the same prompt for a reason the judge shares,
climbing the reward should lift the judge too. This bench rolls out the training sampler G times on P
training prompts and reports, per reward mode:

  - the mean reward and its within-group spread (per video and per frame), by each IDM;
  - `corr_video`: Pearson correlation, within each group, of the reward IDM's and the judge's per-video
    rewards, averaged over groups (bootstrap 95% interval over groups);
  - `corr_frame`: the same on per-frame rewards centred within (prompt, frame) over the G rollouts
    (what frame-level advantages see), pooled;
  - per action group: the within-(prompt, frame) correlation of "the IDM reads this group right" between
    the two IDMs: which groups carry a signal the judge shares.

With `--rollout branch` the G rollouts of a prompt share every frame but one (the trainer's branching
rollouts: a shared rollout, G alternatives of frame k), and every figure is taken on frame k's reward
alone: the only difference GRPO sees there.

    python bench/reward_signal.py --world-model WM --idm IDM --judge JUDGE --data DATA \
        [--prompts 32] [--generations 8] [--top-p 0.8] [--rollout full|branch] --out bench/results/reward_signal.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlir.actions import GROUPS  # noqa: E402
from rlir.data.sampler import fixed_clips, load_clips  # noqa: E402
from rlir.data.store import EpisodeStore  # noqa: E402
from rlir.rl.rewards import CAMERA, _direction, per_frame_inverse_reward, shown_groups  # noqa: E402
from rlir.rl.rollouts import make_policy  # noqa: E402
from rlir.training.idm_trainer import load_idm, load_reward_idm  # noqa: E402
from rlir.training.wm_trainer import load_world_model_checkpoint  # noqa: E402
from rlir.utils.checkpoint import read_config  # noqa: E402
from rlir.utils.rand import GroupGenerators  # noqa: E402

MODES = ("balanced", "per_group", "f1_gain", "f1_gain_soft", "loglik")


def centred(x: np.ndarray, G: int) -> np.ndarray:
    """[P*G, ...] -> the same, minus each group's mean over its G rollouts."""
    r = x.reshape(-1, G, *x.shape[1:])
    return (r - r.mean(1, keepdims=True)).reshape(x.shape)


def group_corr(a: np.ndarray, b: np.ndarray, G: int) -> np.ndarray:
    """Per-group Pearson correlation of a and b [P*G] over the G rollouts (nan where either is flat)."""
    a, b = centred(a, G).reshape(-1, G), centred(b, G).reshape(-1, G)
    den = np.sqrt((a ** 2).sum(1) * (b ** 2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-12, (a * b).sum(1) / den, np.nan)


def pooled_corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel(), b.ravel()
    den = np.sqrt((a ** 2).sum() * (b ** 2).sum())
    return float((a * b).sum() / den) if den > 1e-12 else float("nan")


def boot_mean(x: np.ndarray, seed: int, n: int = 1000) -> list[float]:
    x = x[np.isfinite(x)]
    if not len(x):
        return [float("nan")] * 2
    rng = np.random.default_rng(seed)
    m = x[rng.integers(0, len(x), size=(n, len(x)))].mean(1)
    return [float(np.percentile(m, 2.5)), float(np.percentile(m, 97.5))]


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world-model", required=True)
    p.add_argument("--idm", required=True)
    p.add_argument("--judge", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=0.8)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32, help="rollouts per sampler call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rollout", choices=("full", "branch"), default="full",
                   help="branch: G alternatives of one frame after a shared rollout, scored on that frame")
    p.add_argument("--reuse-videos", action="store_true", help="keep the rollouts next to --out and reuse them")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    t0 = time.time()
    store = EpisodeStore(a.data)
    G = a.generations
    windows = fixed_clips(store, a.frames, "train")
    rng = np.random.default_rng(a.seed)
    windows = [windows[i] for i in rng.choice(len(windows), size=min(a.prompts, len(windows)), replace=False)]
    clips = load_clips(store, windows, a.frames)
    model, mcfg, codec = load_world_model_checkpoint(a.world_model, "cpu")
    model.eval()
    paradigm = read_config(a.world_model, kind="world_model")["paradigm"]
    policy = make_policy(paradigm, model, mcfg, codec, a.frames, temperature=a.temperature, top_p=a.top_p)
    frames = torch.from_numpy(clips["frames"]).repeat_interleave(G, 0)
    actions = torch.from_numpy(clips["actions"].astype(np.int64)).repeat_interleave(G, 0)
    cache = Path(a.out).with_suffix(".videos.npy")
    kcache = cache.with_suffix(".branch.npy")
    reuse = a.reuse_videos and cache.is_file() and (a.rollout == "full" or kcache.is_file())
    videos = [torch.from_numpy(np.load(cache))] if reuse else []
    ks = [np.load(kcache)] if reuse and a.rollout == "branch" else []
    per_call = G if a.rollout == "branch" else max(G, a.batch_size // G * G)   # branch: a frame k per prompt
    for s in range(0, len(frames) if not videos else 0, per_call):
        sl = slice(s, s + per_call)
        gen = GroupGenerators([a.seed * 7919 + s // G + k for k in range(len(frames[sl]) // G)], G, "cpu")
        if a.rollout == "branch":
            ro = policy.rollout_branch(frames[sl, 0], actions[sl], gen, G)
            ks.append(ro.data["branch_frame"].numpy())
        else:
            ro = policy.rollout(frames[sl, 0], actions[sl], gen)
        videos.append(ro.video)
        print(f"rolled out {s + len(frames[sl])}/{len(frames)}", flush=True)
    video = torch.cat(videos)
    if a.reuse_videos:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, video.numpy())
        if ks:
            np.save(kcache, np.concatenate(ks))
    # what GRPO compares within a group: every frame (full), or the branch frame's reward (branch)
    branch_col = np.concatenate(ks) - 1 if ks else None
    view = ((lambda x: x) if branch_col is None else
            (lambda x: np.take_along_axis(x, branch_col[:, None], 1)))
    null = tuple(store.metadata.get("null_groups", {}))
    shown = shown_groups(null)
    idms = {"reward_idm": load_reward_idm(a.idm, "cpu")[0].eval(), "judge": load_idm(a.judge, "cpu")[0].eval()}
    logits = {k: [torch.cat(x) for x in zip(*[m(video[s:s + 64]) for s in range(0, len(video), 64)])]
              for k, m in idms.items()}
    n = logits["reward_idm"][0].shape[1]
    true = actions[:, :n]
    report = {"bench": "reward_signal", "command": " ".join(sys.argv), "seed": a.seed, "world_model": a.world_model,
              "idm": a.idm, "judge": a.judge, "data": a.data, "prompts": len(windows), "generations": G,
              "sampler": {"temperature": a.temperature, "top_p": a.top_p}, "rollout": a.rollout,
              "rollout_brightness": float(video[:, 1:].float().mean()),
              "prompt_brightness": float(torch.from_numpy(clips["frames"][:, 1:]).float().mean()), "modes": {}}
    per = {(k, mode): view(per_frame_inverse_reward(lg, actions, mode, shown).numpy())
           for k, lg in logits.items() for mode in MODES}
    n = next(iter(per.values())).shape[1]
    # which training reward predicts the judge's argmax readings (what its F1 counts)?
    report["cross_corr_frame"] = {f"{x} -> judge {y}": pooled_corr(centred(per["reward_idm", x], G),
                                                                 centred(per["judge", y], G))
                                  for x in MODES for y in ("balanced", "f1_gain")}
    report["cross_corr_video"] = {f"{x} -> judge {y}": float(np.nanmean(group_corr(
        per["reward_idm", x].mean(-1), per["judge", y].mean(-1), G))) for x in MODES for y in ("balanced", "f1_gain")}
    for mode in MODES:
        r = {k: per[k, mode] for k in logits}
        rv = {k: v.mean(-1) for k, v in r.items()}
        cv = group_corr(rv["reward_idm"], rv["judge"], G)
        cf = pooled_corr(centred(r["reward_idm"], G), centred(r["judge"], G))
        report["modes"][mode] = {
            **{f"{k}_mean": float(v.mean()) for k, v in rv.items()},
            **{f"{k}_std_video": float(v.reshape(-1, G).std(1, ddof=1).mean()) for k, v in rv.items()},
            **{f"{k}_std_frame": float(r[k].reshape(-1, G, n).std(1, ddof=1).mean()) for k in r},
            "corr_video": float(np.nanmean(cv)), "corr_video_ci95": boot_mean(cv, a.seed),
            "corr_frame": cf}
    # per action group: does the reward IDM read it right where the judge does (within prompt and frame)?
    groups = {}
    for g in shown:
        right = {}
        for k, lg in logits.items():
            pred, t = lg[g].argmax(-1), true[..., g]
            if g in CAMERA:
                pred, t = _direction(pred), _direction(t)
            right[k] = view((pred == t).float().numpy())
        groups[GROUPS[g]] = {"reward_idm_right": float(right["reward_idm"].mean()),
                             "judge_right": float(right["judge"].mean()),
                             "corr_frame": pooled_corr(centred(right["reward_idm"], G), centred(right["judge"], G)),
                             "reward_idm_std_frame": float(right["reward_idm"].reshape(-1, G, n).std(1).mean())}
    report["groups"] = groups
    report["minutes"] = (time.time() - t0) / 60
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{len(windows)} prompts x {G} {a.rollout} rollouts (top-p {a.top_p}); brightness {report['rollout_brightness']:.1f} "
          f"(real {report['prompt_brightness']:.1f})")
    print(f"{'mode':10s} {'reward':>7s} {'judge':>7s} {'std vid':>8s} {'std frm':>8s} {'corr vid':>22s} {'corr frm':>9s}")
    for mode, m in report["modes"].items():
        ci = m["corr_video_ci95"]
        print(f"{mode:10s} {m['reward_idm_mean']:7.3f} {m['judge_mean']:7.3f} {m['reward_idm_std_video']:8.3f} "
              f"{m['reward_idm_std_frame']:8.3f} {m['corr_video']:6.3f} [{ci[0]:6.3f},{ci[1]:6.3f}] {m['corr_frame']:9.3f}")
    for k, v in report["cross_corr_frame"].items():
        print(f"  reward IDM {k:28s} within-group corr: frame {v:.3f}, video {report['cross_corr_video'][k]:.3f}")
    for g, m in groups.items():
        print(f"  {g:13s} right {m['reward_idm_right']:.3f} / judge {m['judge_right']:.3f}   "
              f"within-group corr {m['corr_frame']:.3f}   spread {m['reward_idm_std_frame']:.3f}")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
