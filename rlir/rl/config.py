"""The typed settings of `rlir posttrain` (TRL's GRPOConfig names where the concept is shared), their
checks, and what a resumed run must keep of them."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rlir.errors import ConfigError
from rlir.rl.grpo import LOSS_TYPES, SCALE_REWARDS
from rlir.training.loop import LR_SCHEDULES, LoopConfig

REWARDS = ("inverse", "pixel_l1_ssim", "brightness_match", "preference", "random")
ADVANTAGES = ("sequence", "frame")


@dataclass
class GRPOConfig(LoopConfig):
    """Post-training settings; names and defaults follow TRL's GRPOConfig where the concept is shared.

    `batch_size` counts prompts per step: each gives `num_generations` rollouts."""
    world_model: str = ""
    idm: str = ""
    judge: str | None = None
    data: str = ""
    out: str = ""
    frames: int = 16
    batch_size: int = 2
    num_generations: int = 8
    num_iterations: int = 1
    gradient_accumulation_steps: int = 1
    lr: float = 1e-6
    warmup: int = 0
    lr_schedule: str = "cosine"              # cosine (to 0 over the run) | constant (after the warmup)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    beta: float = 0.0
    epsilon: float = 0.2
    epsilon_high: float | None = None
    loss_type: str = "dapo"
    scale_rewards: str = "group"
    temperature: float = 1.0
    top_p: float = 1.0
    rewards: dict[str, float] = field(default_factory=lambda: {"inverse": 1.0})
    reward_mode: str = "all"                 # inverse reward: all | per_group | loglik | balanced
    advantage: str = "sequence"              # sequence: one advantage per rollout | frame: per generated frame
    rollout_mode: str = "full"               # full: G whole rollouts per prompt | branch: G alternatives of one
                                             # frame after a shared rollout's prefix (AR; frame credit)
    gamma: float = 0.0                       # frame advantages: reward-to-go discount (0: the frame's own reward)
    reward_groups: str = "shown"             # balanced / f1_gain modes: shown (camera direction included) |
                                             # discrete (the 7-group F1's groups only, camera left out)
    rollout_precision: str = "fp32"          # fp32 | bf16: training rollouts (a bf16 copy of the weights); loss fp32
    preference_fn: str | None = None         # "module:function" scoring a video, for the preference reward
    prompt_clips: int = 0                    # 0: any training window; N: a fixed set of N training clips
    dynamic_sampling: str = "none"           # none | drop (zero-std groups out of the loss) | resample
    max_resample_rounds: int = 2
    # diffusion (Flow-GRPO)
    sde_steps: int = 10
    noise_level: float = 0.75
    timestep_fraction: float = 0.6
    sde_window: int = 0                      # 0: SDE at every step, train timestep_fraction of them | W: MixGRPO,
                                             # SDE (and training) on W consecutive steps, ODE elsewhere
    sde_outer_steps: int = 0                 # with sde_window: 0 Euler on every grid step outside the window | K:
                                             # at most K DPM-Solver++ steps before and K after (MixGRPO-Flash)
    clip_range: float = 1e-4
    adv_clip_max: float = 5.0
    eval_steps: int = 18
    eval_top_p: float = 0.8
    # bookkeeping
    stop_after: int = 0                      # end after this many steps, the lr schedule still over `steps` (0: at
                                             # `steps`); a control matched to another run's step count
    eval_every: int = 10
    probe_clips: int = 8
    save_every: int = 5
    media_every: int = 25

    def validate(self) -> None:
        super().validate()
        if self.stop_after < 0:
            raise ConfigError(f"stop_after must not be negative, got {self.stop_after}")
        if self.num_generations < 2:
            raise ConfigError("num_generations must be at least 2 (advantages are relative to the group)")
        if (self.batch_size * self.num_generations) % self.gradient_accumulation_steps:
            raise ConfigError(f"gradient_accumulation_steps ({self.gradient_accumulation_steps}) must divide the "
                              f"rollouts per step ({self.batch_size} x {self.num_generations})")
        if self.loss_type not in LOSS_TYPES:
            raise ConfigError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.scale_rewards not in SCALE_REWARDS:
            raise ConfigError(f"scale_rewards must be one of {SCALE_REWARDS}, got {self.scale_rewards!r}")
        if self.dynamic_sampling not in ("none", "drop", "resample"):
            raise ConfigError(f"dynamic_sampling must be none, drop or resample, got {self.dynamic_sampling!r}")
        try:
            self.rewards = {str(k): float(v) for k, v in dict(self.rewards).items()}
        except (TypeError, ValueError):
            raise ConfigError(f"rewards must map reward names to numeric weights, got {self.rewards!r}") from None
        unknown = set(self.rewards) - set(REWARDS)
        if unknown or not self.rewards:
            raise ConfigError(f"rewards must name some of {REWARDS} with weights, got {self.rewards}")
        if "preference" in self.rewards and not self.preference_fn:
            raise ConfigError("the preference reward needs preference_fn: 'module:function'")
        if not 0 < self.timestep_fraction <= 1 or self.sde_steps < 2:
            raise ConfigError("timestep_fraction must be in (0, 1] and sde_steps at least 2")
        if not 0 <= self.sde_window < self.sde_steps:
            raise ConfigError(f"sde_window must be in [0, sde_steps - 1] (the last step is never trained), got "
                              f"{self.sde_window} with sde_steps {self.sde_steps}")
        if self.sde_outer_steps < 0 or (self.sde_outer_steps and not self.sde_window):
            raise ConfigError(f"sde_outer_steps must be 0, or positive with an sde_window, got {self.sde_outer_steps} "
                              f"with sde_window {self.sde_window}")
        if not 0 < self.top_p <= 1 or self.temperature <= 0:
            raise ConfigError("top_p must be in (0, 1] and temperature positive")
        from rlir.rl.rewards import MODES
        if self.reward_mode not in MODES:
            raise ConfigError(f"reward_mode must be one of {MODES}, got {self.reward_mode!r}")
        if self.advantage not in ADVANTAGES:
            raise ConfigError(f"advantage must be one of {ADVANTAGES}, got {self.advantage!r}")
        if not 0 <= self.gamma <= 1:
            raise ConfigError(f"gamma must be in [0, 1], got {self.gamma}")
        if self.reward_groups not in ("shown", "discrete"):
            raise ConfigError(f"reward_groups must be shown or discrete, got {self.reward_groups!r}")
        if self.rollout_precision not in ("fp32", "bf16"):
            raise ConfigError(f"rollout_precision must be fp32 or bf16, got {self.rollout_precision!r}")
        if self.rollout_mode not in ("full", "branch"):
            raise ConfigError(f"rollout_mode must be full or branch, got {self.rollout_mode!r}")
        if self.rollout_mode == "branch" and (self.advantage != "frame" or self.dynamic_sampling == "resample"):
            raise ConfigError("rollout_mode: branch needs advantage: frame (the branch frame's own reward) and "
                              "no dynamic_sampling: resample")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.num_iterations < 1 or self.frames < 2:
            raise ConfigError("num_iterations must be >= 1 and frames >= 2")


# What a resumed run must share with the run it continues: its model, data, reward and optimisation.
# Budget and bookkeeping (steps, max_minutes, stop_after, eval/save/media cadence, threads, device) may change.
RESUME_KEEPS = ("world_model", "idm", "judge", "data", "frames", "seed", "batch_size", "num_generations",
                "num_iterations", "gradient_accumulation_steps", "lr", "lr_schedule", "warmup", "weight_decay",
                "max_grad_norm", "beta", "epsilon", "epsilon_high", "loss_type", "scale_rewards", "temperature",
                "top_p", "rewards", "reward_mode", "reward_groups", "advantage", "gamma", "rollout_mode", "rollout_precision",
                "preference_fn",
                "prompt_clips",
                "dynamic_sampling", "max_resample_rounds", "sde_steps", "noise_level", "timestep_fraction",
                "sde_window", "sde_outer_steps", "clip_range", "adv_clip_max", "parallel", "precision")


def check_resume(out: Path, saved: dict | None, cfg: GRPOConfig) -> None:
    """Refuse to resume a run folder with other settings than it was started with (naming them)."""
    if not saved:
        return
    now = json.loads(json.dumps(asdict(cfg)))
    changed = [k for k in RESUME_KEEPS if k in saved and saved[k] != now.get(k)]
    if changed:
        diff = "; ".join(f"{k}: {saved[k]!r} in the run, {now.get(k)!r} now" for k in changed)
        raise ConfigError(f"{out} holds a post-training run with other settings ({diff}); a resume keeps the "
                          f"run's model, data, reward and optimiser settings: give a new --out, or remove "
                          f"{out / 'checkpoints' / 'last'} to start over")
