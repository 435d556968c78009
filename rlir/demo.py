"""`rlir demo`: the whole pipeline on the embedded default, one stage after another, each cached.

    collect ViZDoom data -> reward IDM + judge IDM -> codec (VQ tokenizer | autoencoder) -> world model
    -> RLIR post-training -> evaluate real clips, base and post-trained models -> report.html

Every stage writes into its own folder of the run and is skipped when its summary file is there;
a stage that was killed resumes from its last checkpoint. Stage budgets (minutes) are sized so that
one paradigm at the tiny preset fits in about 30 minutes on a 2-core CPU; `--smoke` shrinks all of
it to a few minutes (configs/demo/smoke.yaml: to check the plumbing, not to get numbers).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlir.errors import ConfigError

log = logging.getLogger("rlir.demo")


@dataclass
class DemoConfig:
    run: str = "runs/demo"
    paradigm: str = "ar"                 # ar | diffusion | both
    episodes: int = 200
    seed: int = 0
    idm_minutes: float = 6.0
    flow_idm_minutes: float = 0.0        # > 0: a second reward IDM (optical flow in, the engine's motion as
                                         # privileged targets); RLIR's reward reads the two as an ensemble
    judge_minutes: float = 3.0
    codec_minutes: float = 4.0
    ar_codec: str = "configs/tokenizer/tiny_3x4.yaml"   # the AR model's VQ tokenizer: 12 codes a frame, so the
                                         # world model trains 2.7x the steps and RLIR rolls out 4x the frames a
                                         # minute of the tiny tokenizer's 48 (configs/tokenizer/tiny.yaml)
    wm_minutes: float = 8.0
    posttrain_minutes: float = 6.0
    posttrain_steps: int = 300          # a cap: the RL stage runs until posttrain_minutes (constant lr)
    eval_clips: int = 96                 # 48 gave paired intervals that swung by 0.014 against 96 of the same policy
    precision: str = "bf16"              # training stages under bf16 autocast: 1.2-1.8x the steps a minute on
                                         # a CPU with bf16 units; fp32 on a CPU without them (bf16 is slow there)
    collect: list[str] = field(default_factory=list)     # collector overrides, e.g. ["frames=150"]

    def validate(self) -> None:
        if self.paradigm not in ("ar", "diffusion", "both"):
            raise ConfigError(f"paradigm must be ar, diffusion or both, got {self.paradigm!r}")
        if self.episodes < 4 or self.eval_clips < 2:
            raise ConfigError("episodes must be at least 4 and eval_clips at least 2")
        budgets = ("idm_minutes", "judge_minutes", "codec_minutes", "wm_minutes", "posttrain_minutes")
        for name in budgets:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not Path(self.ar_codec).is_file():
            raise ConfigError(f"ar_codec: no tokenizer config at {self.ar_codec!r}")
        if not self.flow_idm_minutes >= 0:
            raise ConfigError(f"flow_idm_minutes must be 0 (off) or positive, got {self.flow_idm_minutes}")
        from rlir.training.distributed import PRECISIONS
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if self.posttrain_steps < 1 or self.seed < 0:
            raise ConfigError("posttrain_steps must be at least 1 and seed not negative")


def _stage(name: str, done: Path, fn) -> None:
    if done.is_file():
        log.info("%s: cached (%s)", name, done)
        print(f"[demo] {name}: cached")
        return
    t = time.time()
    print(f"[demo] {name} ...", flush=True)
    fn()
    print(f"[demo] {name}: {(time.time() - t) / 60:.1f} min", flush=True)


def _steps(minutes: float, per_step_s: float, floor: int = 2) -> int:
    """A first guess of the steps that fill a time budget; each stage refits it to the rate it measures
    (`fit_budget`), so the cosine schedule ends where the wall clock does on a faster or slower CPU."""
    return max(floor, int(minutes * 60 / per_step_s))


# seconds a training step of each stage takes on a 2-core CPU (fresh-clone demos; bf16 from the third
# base's runs): the first guess of each schedule's length, and the evaluation cadence
STEP_S = {"fp32": {"idm": 0.40, "idm_flow": 0.46, "judge": 0.19, "codec": 0.92, "wm": 1.87},
          "bf16": {"idm": 0.29, "idm_flow": 0.33, "judge": 0.15, "codec": 0.52, "wm": 1.23}}


def run_demo(cfg: DemoConfig, collect_config: str | None = None, progress: bool = True) -> dict:
    from rlir.config import load_config
    from rlir.data.collect import CollectConfig, collect
    from rlir.data.stats import dataset_stats
    from rlir.eval.evaluate import evaluate
    from rlir.eval.report import build_report
    from rlir.rl.trainer import GRPOConfig, posttrain
    from rlir.training.idm_trainer import IDMTrainConfig, train_idm
    from rlir.training.tokenizer_trainer import TokenizerTrainConfig, train_tokenizer
    from rlir.training.wm_trainer import WMTrainConfig, train_world_model
    from rlir.utils.io import atomic_write_json
    cfg.validate()
    run, t0 = Path(cfg.run), time.time()
    data = run / "data"

    def do_collect():
        c = load_config(CollectConfig, collect_config, cfg.collect, out=str(data), episodes=cfg.episodes,
                        seed=cfg.seed)
        collect(c, progress=progress)
        atomic_write_json(run / "data_stats.json", dataset_stats(str(data)))
    _stage("collect", run / "data_stats.json", do_collect)

    step_s = STEP_S[cfg.precision]

    def do_idm(name, config, minutes, per_step, overrides=None):
        c = load_config(IDMTrainConfig, config, overrides, data=str(data), out=str(run / name), max_minutes=minutes,
                        steps=_steps(minutes, per_step), eval_every=_steps(minutes, per_step) // 3 or 1,
                        precision=cfg.precision, fit_budget=True)
        train_idm(c, progress=progress)
    _stage("reward IDM", run / "idm" / "train_summary.json",
           lambda: do_idm("idm", "configs/idm/tiny.yaml", cfg.idm_minutes, step_s["idm"]))
    _stage("judge IDM", run / "judge" / "train_summary.json",
           lambda: do_idm("judge", "configs/idm/judge_tiny.yaml", cfg.judge_minutes, step_s["judge"]))
    idm, judge = run / "idm" / "checkpoints" / "best", run / "judge" / "checkpoints" / "best"
    reward = str(idm)                # what RLIR climbs; the evaluation's rows read the RGB reward IDM
    if cfg.flow_idm_minutes > 0:     # two IDMs that read the video differently average out each other's mistakes
        _stage("reward IDM (flow + motion targets)", run / "idm_flow" / "train_summary.json",
               lambda: do_idm("idm_flow", "configs/idm/tiny_flow.yaml", cfg.flow_idm_minutes, step_s["idm_flow"],
                              ["model.aux_motion=1.0"]))
        reward = f"{idm},{run / 'idm_flow' / 'checkpoints' / 'best'}"

    rows = [run / "eval" / "real"]
    _stage("evaluate real clips", run / "eval" / "real" / "metrics.json",
           lambda: evaluate(str(data), str(run / "eval" / "real"), str(idm), str(judge), generated=str(data),
                            max_clips=cfg.eval_clips, seed=cfg.seed, label="real clips", role="real",
                            progress=progress))
    logs = []
    for paradigm in (("ar", "diffusion") if cfg.paradigm == "both" else (cfg.paradigm,)):
        p = run / paradigm
        codec_kind = "tokenizer" if paradigm == "ar" else "autoencoder"

        def do_codec(p=p, codec_kind=codec_kind):
            preset = cfg.ar_codec if paradigm == "ar" else "configs/autoencoder/tiny.yaml"
            c = load_config(TokenizerTrainConfig, preset, None, data=str(data),
                            out=str(p / "codec"), max_minutes=cfg.codec_minutes,
                            steps=_steps(cfg.codec_minutes, step_s["codec"]),
                            eval_every=max(1, _steps(cfg.codec_minutes, step_s["codec"]) // 3), precision=cfg.precision,
                            fit_budget=True)
            c.model.quantize = paradigm == "ar"
            train_tokenizer(c, progress=progress)
        _stage(f"{paradigm}: {codec_kind}", p / "codec" / "train_summary.json", do_codec)

        def do_wm(p=p, paradigm=paradigm):
            steps = _steps(cfg.wm_minutes, step_s["wm"])
            c = load_config(WMTrainConfig, f"configs/wm/{paradigm}_tiny.yaml", None, data=str(data),
                            out=str(p / "wm"), codec=str(p / "codec" / "checkpoints" / "best"),
                            max_minutes=cfg.wm_minutes, steps=steps, eval_every=max(1, steps // 3),
                            warmup=min(100, steps // 5), precision=cfg.precision, fit_budget=True)
            train_world_model(c, progress=progress)
        _stage(f"{paradigm}: world model", p / "wm" / "train_summary.json", do_wm)
        base = p / "wm" / "checkpoints" / "best"

        def do_posttrain(p=p, paradigm=paradigm, base=base):
            c = load_config(GRPOConfig, f"configs/posttrain/{paradigm}_tiny.yaml", None, world_model=str(base),
                            idm=reward, judge=str(judge), data=str(data), out=str(p / "rlir"), seed=cfg.seed,
                            steps=cfg.posttrain_steps, max_minutes=cfg.posttrain_minutes,
                            eval_every=max(1, min(10, cfg.posttrain_steps // 4)), probe_clips=min(8, cfg.eval_clips),
                            media_every=max(1, min(30, cfg.posttrain_steps // 2)))
            posttrain(c, progress=progress)
        _stage(f"{paradigm}: RLIR post-training", p / "rlir" / "posttrain_summary.json", do_posttrain)
        logs.append(p / "rlir")
        for name, ckpt, role in (("base", base, "base"), ("rlir", p / "rlir" / "checkpoints" / "policy", "posttrained")):
            out = p / "eval" / name
            label = f"{paradigm} {'base' if name == 'base' else '+ RLIR'}"
            _stage(f"{paradigm}: evaluate {label}", out / "metrics.json",
                   lambda out=out, ckpt=ckpt, label=label, role=role: evaluate(
                       str(data), str(out), str(idm), str(judge), world_model=str(ckpt), max_clips=cfg.eval_clips,
                       seed=cfg.seed, label=label, role=role, progress=progress))
            rows.append(out)
    build_report([str(r) for r in rows + logs], str(run / "report"), progress=progress)
    report = json.loads((run / "report" / "report.json").read_text())
    summary = {"report": str(run / "report" / "report.html"), "minutes": (time.time() - t0) / 60,
               "paradigm": cfg.paradigm, "rows": report.get("rows", []),
               "paired": report.get("paired", [])}      # each + RLIR row minus its base, clip by clip
    atomic_write_json(run / "demo_summary.json", summary)
    return summary
