"""`rlir posttrain`: GRPO with inverse rewards (RLIR, paper Sections 3.2 and 4) for both paradigms.

Each step: draw prompts (frame 0 and the 15 real actions of training clips), roll out
`num_generations` videos per prompt, score them with the reward functions (the inverse reward of
Eq. 3 by default), turn rewards into group-relative advantages, and take `num_iterations` AdamW
steps on the clipped objective (Eq. 2), the batch split into `gradient_accumulation_steps` chunks.
Every `eval_every` steps a fixed probe set of validation clips is generated with the evaluation
sampler and scored by the reward IDM and by the judge IDM: reward hacking shows as the two diverging.

Run folder: checkpoints/last (train state, resumable), checkpoints/policy (a world-model checkpoint
that `rlir generate`/`evaluate` read), metrics.jsonl + tb/ (TRL's metric names), media/ (GIFs).
"""
from __future__ import annotations

import copy
import json
import logging
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from rlir.errors import ConfigError
from rlir.rl.config import GRPOConfig, check_resume
from rlir.rl.grpo import frame_advantages, group_advantages, zero_std_groups
from rlir.training.distributed import all_reduce_grads
from rlir.training.loop import RunLog, load_train_state, lr_schedule, save_model_checkpoint, save_train_state

log = logging.getLogger("rlir.posttrain")

def build_reward_fns(cfg: GRPOConfig, idm, null_groups=()) -> tuple[list, list[float]]:
    from rlir.rl.rewards import BrightnessMatch, InverseRewardFn, PixelReward, PreferenceReward, RandomReward
    fns, weights = [], []
    if cfg.reward_groups == "discrete":        # the F1's groups only: camera motion does not enter the reward
        null_groups = tuple(null_groups) + ("camera_pitch", "camera_yaw")
    for name, w in cfg.rewards.items():
        fns.append(InverseRewardFn(idm, cfg.reward_mode, device=cfg.device, null_groups=null_groups)
                   if name == "inverse" else PixelReward() if name == "pixel_l1_ssim" else
                   BrightnessMatch() if name == "brightness_match" else
                   RandomReward(cfg.seed) if name == "random" else PreferenceReward(cfg.preference_fn))
        weights.append(float(w))
    return fns, weights


class FixedPrompts:
    """Prompts drawn from a fixed set of training clips (the paper: about 1,000 samples suffice)."""

    def __init__(self, store, frames: int, batch_size: int, n: int, seed: int):
        from rlir.data.sampler import fixed_clips, load_clips
        self.windows = fixed_clips(store, frames, "train", max_clips=n)
        if not self.windows:
            raise ConfigError(f"{store.root}: no training clip of {frames} frames for prompts")
        self.clips = load_clips(store, self.windows, frames)
        self.batch_size, self.rng = batch_size, np.random.default_rng(seed)

    def sample(self, rows: slice | None = None) -> dict:
        k = self.rng.choice(len(self.windows), size=self.batch_size, replace=len(self.windows) < self.batch_size)
        k = k[rows] if rows is not None else k        # the global draw, then this process's rows
        return {key: self.clips[key][k] for key in ("frames", "actions", "camera_deg")}


def _per_video(rewards: torch.Tensor) -> torch.Tensor:
    """Per-frame rewards [B, n] -> per video [B] (the mean over frames); [B] unchanged."""
    return rewards.mean(-1) if rewards.dim() == 2 else rewards


def _grads(model: torch.nn.Module) -> torch.Tensor:
    """The model's accumulated gradient as one flat float32 vector (zeros where none yet)."""
    return torch.cat([(p.grad.detach().float().flatten() if p.grad is not None else
                       torch.zeros(p.numel(), device=p.device)) for p in model.parameters() if p.requires_grad])


def _cosine_halves(first: torch.Tensor, total: torch.Tensor) -> float:
    """Signal check: cosine between the gradients of the two halves of a batch. Near 0: the step is
    mostly noise (two halves disagree); clearly positive: the halves agree on a direction."""
    second = total - first
    return float(torch.nn.functional.cosine_similarity(first, second, dim=0, eps=1e-12))


def _truncate_log(path: Path, step: int) -> None:
    """A resumed run rewrites metrics.jsonl up to its checkpoint, so no step is logged twice."""
    if not path.is_file():
        return
    from rlir.utils.io import atomic_write_text
    rows = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    atomic_write_text(path, "".join(r + "\n" for r in rows))


class Posttrainer:
    def __init__(self, cfg: GRPOConfig, reward_fns: tuple[list, list[float]] | None = None):
        from rlir.data.sampler import ClipSampler, fixed_clips, load_clips
        from rlir.data.store import EpisodeStore
        from rlir.rl.rollouts import make_policy
        from rlir.rl.rewards import InverseReward
        from rlir.training.idm_trainer import load_idm, load_reward_idm
        from rlir.training.wm_trainer import load_world_model_checkpoint
        from rlir.utils.checkpoint import read_config
        from rlir.training.distributed import checkpoint_activations, wrap
        from rlir.training.loop import setup_run
        cfg.validate()
        self.d = setup_run(cfg)
        self.rows = self.d.rows(cfg.batch_size, "batch_size (prompts per step)")   # this rank's prompts
        local = (self.rows.stop - self.rows.start) * cfg.num_generations
        if local % cfg.gradient_accumulation_steps:
            raise ConfigError(f"gradient_accumulation_steps ({cfg.gradient_accumulation_steps}) must divide each "
                              f"process's rollouts ({local})")
        if self.d.world > 1 and 0 < cfg.probe_clips < self.d.world:
            raise ConfigError(f"probe_clips ({cfg.probe_clips}) must be 0 or at least the number of processes "
                              f"({self.d.world})")
        self.cfg, dev = cfg, cfg.device
        self.wm_config = read_config(cfg.world_model, kind="world_model")
        self.paradigm = self.wm_config["paradigm"]
        if cfg.rollout_mode == "branch" and self.paradigm != "ar":
            raise ConfigError("rollout_mode: branch is implemented for the AR world model only")
        self.model, self.mcfg, self.codec = load_world_model_checkpoint(cfg.world_model, dev)
        for p in self.codec.parameters():
            p.requires_grad_(False)
        self.store = EpisodeStore(cfg.data, cache_size=100_000)
        self.store.require_resolution(tuple(self.codec.cfg.resolution), "world model")
        self.idm, idm_cfg = load_reward_idm(cfg.idm, dev)   # "a,b": an ensemble
        self.store.require_resolution(tuple(idm_cfg["model"]["resolution"]), "reward IDM")
        self.judge = None
        if cfg.judge:
            self.judge, judge_cfg = load_idm(cfg.judge, dev)
            self.store.require_resolution(tuple(judge_cfg["model"]["resolution"]), "judge IDM")
        null_groups = tuple(self.store.metadata.get("null_groups", {}))
        self.reward_fns, self.reward_weights = reward_fns or build_reward_fns(cfg, self.idm, null_groups)
        # the probe scores in the training reward's mode (the inverse reward's), so probe and judge
        # compare with `reward`
        # (a pooled mode's value means little on a few probe clips: those log the balanced reward), and
        # the probe's pooled shown-group F1, the evaluation's metric
        from rlir.rl.rewards import POOLED
        probe_mode = "balanced" if cfg.reward_mode in POOLED else cfg.reward_mode
        self.null_groups = null_groups
        self.probe_reward = InverseReward(self.idm, probe_mode, device=dev, null_groups=null_groups)
        self.judge_reward = (InverseReward(self.judge, probe_mode, device=dev, null_groups=null_groups)
                             if self.judge is not None else None)
        clip_len = getattr(self.mcfg, "clip_len", cfg.frames)
        if cfg.frames > clip_len:
            raise ConfigError(f"frames ({cfg.frames}) exceeds the world model's clip_len ({clip_len})")
        self.prompts = (FixedPrompts(self.store, cfg.frames, cfg.batch_size, cfg.prompt_clips, cfg.seed)
                        if cfg.prompt_clips else ClipSampler(self.store, cfg.frames, cfg.batch_size, "train", cfg.seed))
        probe = fixed_clips(self.store, cfg.frames, "val", max_clips=cfg.probe_clips) if cfg.probe_clips else []
        self.probe = load_clips(self.store, probe, cfg.frames) if probe else None
        self.policy = make_policy(self.paradigm, self.model, self.mcfg, self.codec, cfg.frames,
                                  temperature=cfg.temperature, top_p=cfg.top_p, loss_type=cfg.loss_type,
                                  epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high, beta=cfg.beta,
                                  sde_steps=cfg.sde_steps, noise_level=cfg.noise_level,
                                  timestep_fraction=cfg.timestep_fraction, sde_window=cfg.sde_window,
                                  sde_outer_steps=cfg.sde_outer_steps,
                                  clip_range=cfg.clip_range,
                                  adv_clip_max=cfg.adv_clip_max, eval_steps=cfg.eval_steps,
                                  rollout_precision=cfg.rollout_precision)
        self.ref = None
        if cfg.beta > 0:              # the frozen reference policy of the KL term (replicated on every rank)
            self.ref = copy.deepcopy(self.model).eval()
            for p in self.ref.parameters():
                p.requires_grad_(False)
        if cfg.activation_checkpointing:
            checkpoint_activations(self.model)
        # Under torchrun: fsdp shards the policy (fully_shard); ddp keeps a replica per rank and averages
        # gradients after each accumulation (all_reduce_grads), since the RL step runs the model
        # through sampler methods and a varying number of backward passes that DDP's hooks cannot follow.
        self.sharded = cfg.parallel == "fsdp" and self.d.world > 1
        if self.sharded:
            wrap(self.model, self.d, "fsdp", ("step_frame", "velocity_teacher_forced")
                 if self.paradigm == "diffusion" else ())
        elif self.d.world > 1:
            import torch.distributed as dist
            for p in self.model.state_dict().values():       # replicas start equal, as DDP ensures
                dist.broadcast(p, 0)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = lr_schedule(self.opt, cfg.lr_schedule, cfg.warmup * cfg.num_iterations,
                                 cfg.steps * cfg.num_iterations)
        self.out = Path(cfg.out)

    # --- one step ---------------------------------------------------------------------------------
    def _generate(self, step: int, round_: int):
        """This rank's groups of one draw: each group from its own generator, seeded by its global index."""
        from rlir.utils.rand import GroupGenerators, group_seeds
        cfg = self.cfg
        g = GroupGenerators(group_seeds(cfg.seed, step, round_, range(self.rows.start, self.rows.stop)),
                            cfg.num_generations, cfg.device)
        clips = self.prompts.sample(self.rows)
        real = torch.from_numpy(clips["frames"]).repeat_interleave(cfg.num_generations, 0)
        actions = torch.from_numpy(clips["actions"].astype(np.int64)).repeat_interleave(cfg.num_generations, 0)
        self.model.eval()
        with self.d.autocast():
            ro = (self.policy.rollout_branch(real[:, 0], actions, g, cfg.num_generations)
                  if cfg.rollout_mode == "branch" else self.policy.rollout(real[:, 0], actions, g))
        from rlir.rl.rewards import combine_rewards
        rewards, parts = combine_rewards(self.reward_fns, self.reward_weights, ro.video, real, actions,
                                         per_frame=cfg.advantage == "frame")
        return ro, real, rewards, parts

    def rollouts(self, step: int):
        """This rank's rollouts, rewards and per-function rewards of one step, dynamic sampling applied.

        resample: a group without signal is swapped for the group drawn in its slot in a fresh round
        (if that one has signal), so the result does not depend on how groups are spread over ranks;
        every rank runs the same rounds (decided on the gathered rewards)."""
        cfg, G = self.cfg, self.cfg.num_generations
        ro, real, rewards, parts = self._generate(step, 0)
        if cfg.dynamic_sampling == "resample":
            for r in range(1, cfg.max_resample_rounds + 1):
                if not zero_std_groups(_per_video(self.d.gather(rewards)), G).any():
                    break
                ro2, real2, rewards2, parts2 = self._generate(step, r)
                swap = (zero_std_groups(_per_video(rewards), G) &
                        ~zero_std_groups(_per_video(rewards2), G)).repeat_interleave(G)
                idx = torch.arange(len(rewards)) + len(rewards) * swap.long()     # row i of [first | fresh]
                ro = type(ro).cat([ro, ro2]).select(idx)
                real = torch.cat([real, real2])[idx]
                rewards = torch.cat([rewards, rewards2])[idx]
                parts = {k: torch.cat([parts[k], parts2[k]])[idx] for k in parts}
        return ro, real, rewards, parts

    def step(self, step: int) -> dict:
        cfg, G = self.cfg, self.cfg.num_generations
        t0 = time.time()
        ro, real, rewards, parts = self.rollouts(step)
        t_gen = time.time() - t0
        d = self.d
        all_frame_rewards = d.gather(rewards)                  # advantages need whole groups (or the batch)
        all_rewards = _per_video(all_frame_rewards)            # [P*G]: a video's reward (mean over frames)
        adv = (frame_advantages(all_frame_rewards, G, cfg.scale_rewards, cfg.gamma) if cfg.advantage == "frame"
               else group_advantages(all_rewards, G, cfg.scale_rewards))[self.rows.start * G:self.rows.stop * G]
        flat_all = zero_std_groups(all_rewards, G)
        flat = flat_all[self.rows]
        r = all_rewards.view(-1, G)
        row = {"step": step + 1, "world_size": d.world, "rollouts_per_rank": len(rewards),
               "reward": float(all_rewards.mean()), "reward_std": float(r.std(1).mean()),
               "frac_reward_zero_std": float(flat_all.float().mean()),
               # drift watch: a shortcut (darkening, freezing) shows here while it happens
               "rollout_brightness": float(d.mean({"b": float(ro.video[:, 1:].float().mean())})["b"]),
               "prompt_brightness": float(d.mean({"b": float(real[:, 1:].float().mean())})["b"])}
        row.update(d.mean(self.policy.rollout_stats(ro)))
        if cfg.advantage == "frame":
            row["reward_std_frame"] = float(all_frame_rewards.view(-1, G, all_frame_rewards.shape[1]).std(1).mean())
        for name, v in parts.items():
            v = d.gather(v)
            row[f"rewards/{name}/mean"], row[f"rewards/{name}/std"] = float(v.mean()), float(v.std())
        use, n_use = torch.arange(len(rewards)), len(all_rewards)
        if cfg.dynamic_sampling != "none":       # groups with equal rewards carry no signal
            n_use = int((~flat_all).sum()) * G
            if not self.sharded:                 # (FSDP keeps their rows: every rank runs equal passes;
                use = torch.nonzero(~flat.repeat_interleave(G)).flatten()   # their advantage is 0)
        w = d.world / max(n_use, 1)              # each row's weight: the loss is a mean over n_use rows
        sums: dict[str, float] = {}
        skipped = 0
        if n_use:
            n_chunks = min(cfg.gradient_accumulation_steps, len(use))
            chunks = [(ro.select(i), adv[i]) for i in torch.tensor_split(use, n_chunks)] if len(use) else []
            self.model.train()
            for it in range(cfg.num_iterations):
                self.opt.zero_grad(set_to_none=True)
                bad = False
                half = None
                for c, (chunk, a) in enumerate(chunks):
                    if it == 0 and len(chunks) >= 2 and c == len(chunks) // 2 and not self.sharded:
                        half = _grads(self.model)            # the first half of the batch's gradient
                    with d.autocast():
                        m = self.policy.accumulate(chunk, a, len(a) * w, self.ref)
                    bad = bad or bool(m.pop("nonfinite", False))
                    for k, v in m.items():
                        sums[k] = max(sums.get(k, 0.0), v) if k == "logp_mismatch" else \
                            sums.get(k, 0.0) + v * len(a) * w / d.world / cfg.num_iterations
                if half is not None and not self.sharded:
                    sums["grad_cosine_halves"] = _cosine_halves(half, _grads(self.model))
                if not self.sharded:
                    all_reduce_grads(self.model.parameters(), d)
                bad = d.any(bad)
                norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
                if bad or not torch.isfinite(norm):
                    warnings.warn(f"step {step + 1}: non-finite loss or gradient, update skipped")
                    self.opt.zero_grad(set_to_none=True)
                    skipped += 1
                    with warnings.catch_warnings():     # the schedule keeps counting steps, skipped or not
                        warnings.simplefilter("ignore", UserWarning)
                        self.sched.step()
                    continue
                sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(norm) / cfg.num_iterations
                self.opt.step()
                self.sched.step()
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(cfg.num_iterations):
                    self.sched.step()
        cos = sums.pop("grad_cosine_halves", None)
        mismatch = sums.pop("logp_mismatch", None)
        grad_norm = sums.pop("grad_norm", None)
        sums = {k: v * d.world for k, v in d.mean(sums).items()}         # weighted sums over ranks
        if mismatch is not None:
            sums["logp_mismatch"] = d.max({"m": mismatch})["m"]
        if grad_norm is not None:
            sums["grad_norm"] = grad_norm                                  # already the global norm
        if cos is not None:
            sums["grad_cosine_halves"] = d.mean({"c": cos})["c"]
        row.update(sums)
        row.update({"skipped_updates": skipped, "learning_rate": self.sched.get_last_lr()[0],
                    "step_time": time.time() - t0, "generation_time": t_gen,
                    "rollout_frames_per_s": len(all_rewards) * (cfg.frames - 1) / max(t_gen, 1e-9)})
        self._last = (ro, real)
        return row

    # --- probe, media, checkpoints ------------------------------------------------------------------
    @torch.no_grad()
    def probe_rewards(self) -> dict:
        """Reward IDM and judge IDM on the fixed probe clips, generated with the evaluation sampler."""
        if self.probe is None:
            return {}
        from rlir.utils.rand import GroupGenerators
        d = self.d
        idx = np.arange(len(self.probe["frames"]))[d.rank::d.world]     # ranks split the probe clips
        g = GroupGenerators([self.cfg.seed * 7919 + 7 + int(i) for i in idx], 1, self.cfg.device)
        self.model.eval()
        frames = torch.from_numpy(self.probe["frames"][idx])
        actions = torch.from_numpy(self.probe["actions"][idx].astype(np.int64))
        with d.autocast():
            ro = self.policy.rollout(frames[:, 0], actions, g, evaluation=True, eval_top_p=self.cfg.eval_top_p)
        scores = {"probe/reward": self.probe_reward(ro.video, actions)}
        if self.judge_reward is not None:
            scores["judge/reward"] = self.judge_reward(ro.video, actions)
        n = len(self.probe["frames"])
        out = {k: d.mean({k: float(v.sum()) * d.world / n})[k] for k, v in scores.items()}
        if d.world == 1:              # pooled F1 needs every probe clip's reading in one place
            from rlir.eval.action_metrics import action_metrics
            from rlir.training.idm_trainer import predict
            true = actions[:, :self.cfg.frames - 1].numpy()
            for key, idm in (("probe", self.idm), ("judge", self.judge)):
                if idm is not None:
                    m = action_metrics(predict(idm, ro.video.numpy()), true, n_boot=0,
                                       exclude_groups=self.null_groups)["metrics"]
                    out[f"{key}/f1_shown"] = m.get("f1_macro_shown", m["f1_macro"])
        return out

    def media(self, step: int, runlog: RunLog) -> None:
        if not self.d.main:
            return
        ro, real = self._last
        G = self.cfg.num_generations
        rows = [ro.video[i].numpy() for i in range(min(G, 3))]
        (self.out / "media").mkdir(exist_ok=True)
        from rlir.eval.media import clip_gif          # the report's side-by-side GIF, actions drawn under frames
        from rlir.utils.io import atomic_write_bytes
        gif = clip_gif([("real", real[0].numpy())] + [(f"rollout {i + 1}", r) for i, r in enumerate(rows)],
                       ro.actions[0].numpy())
        atomic_write_bytes(self.out / "media" / f"step{step:06d}.gif", gif)
        strip = np.concatenate([np.concatenate(list(v), axis=1) for v in [real[0].numpy()] + rows], axis=0)
        runlog.tb.add_image("media/real_and_rollouts", strip, step, dataformats="HWC")

    def save(self, step: int, history: list[dict]) -> None:
        from rlir.training.wm_trainer import wm_checkpoint_config
        extra = {"step": step, "posttrained_from": str(self.cfg.world_model), "posttrain": asdict(self.cfg)}
        save_model_checkpoint(self.out / "checkpoints" / "policy", wm_checkpoint_config(self.mcfg, self.codec.cfg, extra),
                              self.model, codec=self.codec.state_dict())
        save_train_state(self.out / "checkpoints" / "last", "posttrain_state", self.model, self.opt, self.sched,
                         {"step": step, "history": history[-200:], "config": asdict(self.cfg)},
                         {"prompts": self.prompts.rng})


def posttrain(cfg: GRPOConfig, progress: bool = True, reward_fns: tuple[list, list[float]] | None = None) -> dict:
    """Post-train (or resume) a world model; `max_minutes` and `stop_after` end it early, at a checkpoint."""
    from tqdm import tqdm
    from rlir.utils.io import atomic_write_json
    tr = Posttrainer(cfg, reward_fns)
    out = tr.out
    out.mkdir(parents=True, exist_ok=True)
    if (out / "checkpoints" / "last" / "config.json").is_file():     # before any weight is loaded or written
        from rlir.utils.checkpoint import read_config
        check_resume(out, read_config(out / "checkpoints" / "last", kind="posttrain_state").get("config"), cfg)
    meta = load_train_state(out / "checkpoints" / "last", "posttrain_state", tr.model, tr.opt, tr.sched,
                            {"prompts": tr.prompts.rng})
    step = meta["step"] if meta else 0
    if meta and meta.get("config", {}).get("steps") not in (None, cfg.steps) and cfg.lr_schedule == "cosine":
        log.warning("resuming with steps %s instead of %s: the cosine schedule is recomputed over the new length",
                    cfg.steps, meta["config"]["steps"])
    if tr.d.main:
        _truncate_log(out / "metrics.jsonl", step if meta else -1)   # no checkpoint yet: start the log afresh
    history = list(meta["history"]) if meta else []
    runlog = RunLog(out)
    t_start = time.time()
    if step == 0 and cfg.eval_every:
        base = tr.probe_rewards()
        if base:
            runlog.row({"step": 0, **base})
            runlog.scalars(0, base)
    bar = tqdm(total=cfg.steps, initial=step, desc=f"posttrain {tr.paradigm}", disable=not progress or not tr.d.main)
    while step < cfg.steps:
        row = tr.step(step)
        step += 1
        out_of_time = tr.d.any(cfg.max_minutes > 0 and (time.time() - t_start) / 60 > cfg.max_minutes)
        out_of_time = out_of_time or step == cfg.stop_after
        if step % cfg.eval_every == 0 or step == cfg.steps or out_of_time:
            row.update(tr.probe_rewards())
        if cfg.media_every and (step % cfg.media_every == 0 or step == cfg.steps):
            tr.media(step, runlog)
        runlog.row(row)
        runlog.scalars(step, {k: v for k, v in row.items() if k != "step"})
        history.append(row)
        bar.update(1)
        bar.set_postfix(reward=f"{row['reward']:.3f}")
        if step % cfg.save_every == 0 or step == cfg.steps or out_of_time:
            tr.save(step, history)
        if out_of_time:
            break
    bar.close()
    runlog.close()
    rewards = [h["reward"] for h in history if "reward" in h]
    k = max(1, min(5, len(rewards) // 2))
    summary = {"steps": step, "paradigm": tr.paradigm, "policy_checkpoint": str(out / "checkpoints" / "policy"),
               "reward_first": float(np.mean(rewards[:k])) if rewards else None,
               "reward_last": float(np.mean(rewards[-k:])) if rewards else None,
               "probe": {k_: v for k_, v in (history[-1] if history else {}).items() if "/" in k_ and
                         k_.split("/")[0] in ("probe", "judge")},
               "minutes": (time.time() - t_start) / 60}
    if tr.d.main:
        atomic_write_json(out / "posttrain_summary.json", summary)
    return summary
