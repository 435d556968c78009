"""The `rlir` command line: one entry point, one verb per job (DESIGN.md Contract 4)."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

from rlir.cli_checks import add_sampler_args
from rlir.errors import RlirError

log = logging.getLogger("rlir")


def _resolution(text: str) -> tuple[int, int]:
    """'48x64' (HxW) -> (48, 64)."""
    try:
        h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution must be HxW, e.g. 48x64, got {text!r}") from None
    return h, w


def _add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=["cpu", "cuda"],
                   help="default: the config's (cpu); under torchrun each rank takes the GPU of its LOCAL_RANK")


def _add_config_args(p: argparse.ArgumentParser, default: str | None, example: str) -> None:
    p.add_argument("--config", default=default, help=f"YAML config file (default: {default})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config value, e.g. --set {example} (repeatable)")


def cmd_collect(a) -> int:
    from rlir.config import load_config
    from rlir.data.collect import CollectConfig, collect
    from rlir.data.stats import dataset_stats, format_stats
    maps = [m for m in a.map.split(",") if m] if a.map else None
    cfg = load_config(CollectConfig, a.config, a.overrides, out=a.out, episodes=a.episodes, frames=a.frames,
                      seed=a.seed, maps=maps, workers=a.workers, resolution=a.resolution)
    res = collect(cfg, progress=not a.quiet)
    print(f"collected {res['frames_written']} frames in {res['elapsed_s']:.1f}s "
          f"({res['fps']:.0f} frames/s) into {cfg.out}")
    if a.stats:
        print(format_stats(dataset_stats(cfg.out)))
    return 0


def cmd_data_stats(a) -> int:
    from rlir.data.stats import dataset_stats, format_stats
    s = dataset_stats(a.dir, progress=not a.quiet)
    if a.json == "-":
        print(json.dumps(s, indent=2))
    else:
        print(format_stats(s))
        if a.json:
            from rlir.utils.io import atomic_write_json
            atomic_write_json(a.json, s)
            print(f"wrote {a.json}")
    return 0


def cmd_data_convert_vpt(a) -> int:
    from rlir.data.vpt import convert_vpt
    res = convert_vpt(a.src, a.out, resolution=a.resolution, progress=not a.quiet)
    print(f"converted {res['recordings']} recordings: kept {res['kept']} of {res['raw_frames']} frames "
          f"(dropped static {res['static']}, GUI open {res['invalid']}, short {res['short']}) into {a.out}")
    return 0


def cmd_idm_train(a) -> int:
    from rlir.config import load_config
    from rlir.training.idm_trainer import IDMTrainConfig, train_idm
    cfg = load_config(IDMTrainConfig, a.config, a.overrides, data=a.data, out=a.out, device=a.device)
    res = train_idm(cfg, progress=not a.quiet)
    print(f"trained {res['steps']} steps in {res['train_minutes']:.1f} min; best checkpoint {res['best_checkpoint']}")
    return 0


def cmd_idm_eval(a) -> int:
    from rlir.data.store import EpisodeStore
    from rlir.eval.action_metrics import format_metrics
    from rlir.errors import ConfigError
    from rlir.training.idm_trainer import evaluate_idm, load_idm, load_reward_idm, subset_ids
    from rlir.utils.io import atomic_write_json
    if a.own_subset and a.split != "train":
        raise ConfigError("--own-subset scores an IDM on its own training episodes: use it with --split train")
    store = EpisodeStore(a.data, cache_size=1_000_000)
    report = {"data": a.data, "split": a.split, "clip_len": a.clip_len}
    for role, path in (("reward_idm", a.idm), ("judge_idm", a.judge)):
        if not path:
            continue
        # the reward IDM may be an ensemble "a,b", read as posttrain reads it
        model, cfg = (load_reward_idm if role == "reward_idm" else load_idm)(path, device=a.device)
        if model.cfg.arch == "vpt" and a.clip_len > model.cfg.clip_len:
            raise ConfigError(f"--clip-len {a.clip_len} is longer than the {role.replace('_', ' ')}'s clip length "
                              f"{model.cfg.clip_len} ({path})")
        episodes, train = None, cfg.get("train", {})
        if a.own_subset:      # the training episodes this IDM learned from: train ~ test means it underfits
            episodes = subset_ids(store, train.get("subset", "all"))
            if train.get("data") and Path(train["data"]).resolve() != Path(a.data).resolve():
                log.warning("%s was trained on %s, not %s: its subset's recordings here are not ones it saw",
                            path, train["data"], a.data)
        m = evaluate_idm(model, store, a.split, a.clip_len, max_clips=a.max_clips, device=a.device, episodes=episodes)
        m["checkpoint"] = str(path)
        if episodes is not None:
            m["subset"] = train.get("subset", "all")
        report[role] = m
        print(format_metrics(m, f"{role} ({cfg['arch']}) on real {a.split} clips of {a.data}"))
    if a.out:
        atomic_write_json(a.out, report)
        print(f"wrote {a.out}")
    return 0


def cmd_tokenizer_train(a) -> int:
    from rlir.config import load_config
    from rlir.training.tokenizer_trainer import TokenizerTrainConfig, train_tokenizer
    cfg = load_config(TokenizerTrainConfig, a.config, a.overrides, data=a.data, out=a.out, device=a.device)
    cfg.model.quantize = a.verb == "tokenizer"      # the verb decides: discrete codes or continuous latents
    res = train_tokenizer(cfg, progress=not a.quiet)
    print(f"trained {res['steps']} steps in {res['train_minutes']:.1f} min; validation PSNR "
          f"{res['best_val_psnr']:.2f} dB; best checkpoint {res['best_checkpoint']}")
    return 0


def cmd_wm_train(a) -> int:
    from rlir.config import load_config, merged_dict
    from rlir.training.wm_trainer import WMTrainConfig, train_world_model
    from rlir.errors import ConfigError
    default = f"configs/wm/{'diffusion' if a.paradigm == 'diffusion' else 'ar'}_tiny.yaml"
    config = a.config or default
    codec_option = "--autoencoder" if a.paradigm == "diffusion" else "--tokenizer"
    if not (a.tokenizer or a.autoencoder or merged_dict(config, a.overrides).get("codec")):
        raise ConfigError(f"give the frame codec's checkpoint: {codec_option} CKPT (made by `rlir "
                          f"{codec_option[2:]} train`, e.g. RUN/checkpoints/best)")
    cfg = load_config(WMTrainConfig, config, a.overrides, paradigm=a.paradigm, data=a.data, out=a.out, device=a.device,
                      codec=a.tokenizer or a.autoencoder, preset=a.preset)
    given = merged_dict(config, a.overrides)
    explicit = given.get("model" if cfg.paradigm == "ar" else "dit", {})   # sizes given by the user beat the preset
    res = train_world_model(cfg, progress=not a.quiet, explicit_model=explicit)
    print(f"trained {res['steps']} steps ({res['params'] / 1e6:.1f}M parameters) in {res['train_minutes']:.1f} min; "
          f"validation loss {res['best_val_loss']:.4f}; best checkpoint {res['best_checkpoint']}")
    return 0


def cmd_generate(a) -> int:
    from rlir.eval.generate import generate
    res = generate(a.world_model, a.data, a.out, frames=a.frames, seed=a.seed, split=a.split,
                   batch_size=a.batch_size, max_clips=a.max_clips, temperature=a.temperature, top_p=a.top_p,
                   steps=a.steps, solver=a.solver, device=a.device, progress=not a.quiet, overwrite=a.overwrite,
                   precision=a.precision)
    p = res.get("psnr_frames_1_to_T")
    extra = f"; PSNR of frames 1..{a.frames - 1} {p['mean']:.2f} dB [{p['ci95'][0]:.2f}, {p['ci95'][1]:.2f}]" if p else ""
    kept = f" ({res['kept']} already there, made with the same settings)" if res["kept"] else ""
    print(f"generated {res['new']} clips of {a.frames} frames into {a.out}{kept}{extra}")
    return 0


def cmd_posttrain(a) -> int:
    from rlir.config import load_config
    from rlir.rl.trainer import GRPOConfig, posttrain
    from rlir.utils.checkpoint import read_config
    paradigm = read_config(a.world_model, kind="world_model").get("paradigm", "ar")
    cfg = load_config(GRPOConfig, a.config or f"configs/posttrain/{paradigm}_tiny.yaml", a.overrides,
                      world_model=a.world_model, idm=a.idm, judge=a.judge, data=a.data, out=a.out, device=a.device)
    res = posttrain(cfg, progress=not a.quiet)
    probe = ", ".join(f"{k} {v:.3f}" for k, v in res["probe"].items())
    print(f"post-trained {res['steps']} steps ({res['paradigm']}) in {res['minutes']:.1f} min; training reward "
          f"{res['reward_first']:.3f} -> {res['reward_last']:.3f}{'; ' + probe if probe else ''}; "
          f"policy checkpoint {res['policy_checkpoint']}")
    return 0


def cmd_evaluate(a) -> int:
    from rlir.eval.evaluate import evaluate, format_evaluation
    command = {"argv": sys.argv[1:], **{k: v for k, v in vars(a).items() if k != "func"}}
    m = evaluate(a.data, a.out, a.idm, judge=a.judge, generated=a.generated, world_model=a.world_model,
                 frames=a.frames, seed=a.seed, split=a.split, batch_size=a.batch_size, max_clips=a.max_clips,
                 device=a.device, i3d=a.i3d, n_boot=a.n_boot, label=a.label, role=a.role, progress=not a.quiet,
                 command=command, overwrite=a.overwrite)
    print(format_evaluation(m))
    print(f"wrote {Path(a.out) / 'metrics.json'}")
    return 0


def cmd_compare(a) -> int:
    from rlir.eval.paired import compare_evaluations, format_comparison
    from rlir.utils.io import atomic_write_json
    c = compare_evaluations(a.base, a.treatment, n_boot=a.n_boot, seed=a.seed)
    print(format_comparison(c))
    if a.out:
        atomic_write_json(a.out, c)
        print(f"wrote {a.out}")
    return 0


def cmd_report(a) -> int:
    from rlir.eval.report import build_report
    res = build_report(a.run_dirs, a.out, labels=a.label, roles=a.role, n_videos=a.videos, progress=not a.quiet,
                       human_eval=a.human_eval)
    print(f"report of {res['rows']} evaluated runs and {res['curves']} training logs: {res['html']}")
    return 0


def cmd_demo(a) -> int:
    """The main job on the embedded default: data, IDMs, world model(s), RLIR, evaluation, report."""
    from rlir.config import load_config
    from rlir.demo import DemoConfig, run_demo
    from rlir.errors import ConfigError
    if a.smoke and a.config:
        raise ConfigError("--smoke and --config both name the demo's settings: give one")
    cfg = load_config(DemoConfig, "configs/demo/smoke.yaml" if a.smoke else a.config, a.overrides, run=a.run,
                      paradigm=a.paradigm, episodes=a.episodes)
    res = run_demo(cfg, collect_config=a.collect_config, progress=not a.quiet)
    from rlir.eval.evaluate import PSNR_CAP_DB
    for r in res["rows"]:
        cells = [f"{k} {r[k]['value']:.3f}" for k in ("IDM F1", "Judge F1", "PSNR")
                 if isinstance(r.get(k), dict) and r[k].get("value") is not None
                 and not (k == "PSNR" and r[k]["value"] >= PSNR_CAP_DB)]   # real clips against themselves
        print(f"  {r.get('label', '?'):<24} " + "  ".join(cells))
    from rlir.eval.paired import format_comparison
    for c in res.get("paired", []):
        print(format_comparison(c))
    print(f"\ndemo finished in {res['minutes']:.1f} min; report: {res['report']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from rlir import __version__
    p = argparse.ArgumentParser(prog="rlir", description="RL with inverse (IDM) rewards for video world models.")
    p.add_argument("--version", action="version", version=f"rlir {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    # the same flags after the verb (`rlir generate ... -q`); SUPPRESS keeps a flag given before the verb
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True

    c = sub.add_parser("collect", parents=[common], help="record ViZDoom gameplay into an episode store")
    c.add_argument("--out", required=True, help="dataset directory (resumes if it exists)")
    c.add_argument("--episodes", type=int, help="recordings to play (default 200)")
    c.add_argument("--frames", type=int, help="frames per recording before preprocessing (default 300)")
    c.add_argument("--seed", type=int, help="collection seed (default 0)")
    c.add_argument("--map", help="map(s), comma-separated: map01 or wad:map, e.g. freedoom1:e1m1")
    c.add_argument("--workers", type=int, help="parallel game processes (default 2)")
    c.add_argument("--resolution", type=_resolution, help="stored frame size HxW (default 48x64; paper 224x384)")
    c.add_argument("--stats", action="store_true", help="print the dataset summary afterwards")
    _add_config_args(c, None, "policy.jump_rate=0.1")
    c.set_defaults(func=cmd_collect)

    d = sub.add_parser("data", parents=[common], help="inspect and convert datasets")
    dsub = d.add_subparsers(dest="data_verb", metavar="VERB")
    dsub.required = True
    ds = dsub.add_parser("stats", parents=[common], help="episodes, frames, class frequencies, dropped frames")
    ds.add_argument("dir")
    ds.add_argument("--json", nargs="?", const="-", help="write the summary as JSON to a file, or stdout with no file")
    ds.set_defaults(func=cmd_data_stats)
    dv = dsub.add_parser("convert-vpt", parents=[common], help="convert VPT/MineWorld .mp4 + .jsonl recordings to an episode store")
    dv.add_argument("src")
    dv.add_argument("out")
    dv.add_argument("--resolution", type=_resolution, default=(48, 64), help="HxW (default 48x64)")
    dv.set_defaults(func=cmd_data_convert_vpt)

    i = sub.add_parser("idm", parents=[common], help="train and evaluate inverse dynamics models")
    isub = i.add_subparsers(dest="idm_verb", metavar="VERB")
    isub.required = True
    it = isub.add_parser("train", parents=[common], help="train a reward IDM (configs/idm/tiny.yaml) or a judge (judge_tiny.yaml)")
    it.add_argument("--data", required=True)
    it.add_argument("--out", required=True, help="run folder: checkpoints/{best,last}, metrics.jsonl, tb/")
    _add_device_arg(it)
    _add_config_args(it, "configs/idm/tiny.yaml", "steps=3000")
    it.set_defaults(func=cmd_idm_train)
    ie = isub.add_parser("eval", parents=[common], help="action metrics of IDMs on real clips (the post-training upper bound)")
    ie.add_argument("--idm", required=True, help="reward IDM checkpoint, or several separated by commas (an ensemble)")
    ie.add_argument("--judge", help="judge IDM checkpoint")
    ie.add_argument("--data", required=True)
    ie.add_argument("--split", default="test", choices=["train", "val", "test"])
    ie.add_argument("--clip-len", type=int, default=16, help="frames per scored clip (default 16, at most the IDM's)")
    ie.add_argument("--max-clips", type=int, help="score at most this many clips (default: all)")
    ie.add_argument("--own-subset", action="store_true",
                    help="with --split train: score each IDM on the training recordings of its own subset")
    ie.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    ie.add_argument("--out", help="write the metrics as JSON here")
    ie.set_defaults(func=cmd_idm_eval)

    for verb, what, config in (("tokenizer", "the AR world model's VQ frame tokenizer", "tokenizer"),
                               ("autoencoder", "the diffusion world model's continuous frame autoencoder", "autoencoder")):
        t = sub.add_parser(verb, parents=[common], help=what)
        tsub = t.add_subparsers(dest=f"{verb}_verb", metavar="VERB")
        tsub.required = True
        tt = tsub.add_parser("train", parents=[common], help=f"train {what} (configs/{config}/tiny.yaml)")
        tt.add_argument("--data", required=True)
        tt.add_argument("--out", required=True, help="run folder: checkpoints/{best,last}, metrics.jsonl, tb/")
        _add_device_arg(tt)
        _add_config_args(tt, f"configs/{config}/tiny.yaml", "max_minutes=10")
        tt.set_defaults(func=cmd_tokenizer_train)

    w = sub.add_parser("wm", parents=[common], help="world models")
    wsub = w.add_subparsers(dest="wm_verb", metavar="VERB")
    wsub.required = True
    wt = wsub.add_parser("train", parents=[common], help="pretrain a world model")
    wt.add_argument("--paradigm", choices=["ar", "diffusion"], help="default: ar")
    wt.add_argument("--data", required=True)
    wt.add_argument("--tokenizer", help="VQ tokenizer checkpoint (paradigm ar), e.g. RUN/checkpoints/best of "
                                        "`rlir tokenizer train`")
    wt.add_argument("--autoencoder", help="continuous autoencoder checkpoint (paradigm diffusion), e.g. "
                                          "RUN/checkpoints/best of `rlir autoencoder train`")
    wt.add_argument("--out", required=True, help="run folder: checkpoints/{best,last}, metrics.jsonl, tb/")
    wt.add_argument("--preset", help="model size: ar tiny/300M/700M/1.2B (Table 4), diffusion tiny/310M/774M (Table 5)")
    _add_device_arg(wt)
    _add_config_args(wt, None, "steps=3000")
    wt.set_defaults(func=cmd_wm_train)

    g = sub.add_parser("generate", parents=[common], help="roll a world model out on real clips (Contract 4)")
    g.add_argument("--world-model", required=True)
    g.add_argument("--data", required=True)
    g.add_argument("--out", required=True, help="episode store to write (resumes clips made with the same "
                                                "checkpoint, data, settings and seed; refuses others)")
    g.add_argument("--overwrite", action="store_true", help="replace clips in --out made with other settings")
    g.add_argument("--frames", type=int, default=16, help="frames per clip, frame 0 given (default 16)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    g.add_argument("--split", default="test", choices=["train", "val", "test"], help="default test")
    g.add_argument("--batch-size", type=int, default=8, help="clips per batch (default 8)")
    g.add_argument("--max-clips", type=int, help="at most this many clips (default: all)")
    add_sampler_args(g)
    g.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="bf16: AR from bfloat16 weights, DiT under bf16 autocast (faster on bf16 hardware; default fp32)")
    g.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    g.set_defaults(func=cmd_generate)

    pt = sub.add_parser("posttrain", parents=[common], help="RLIR: GRPO post-training of a world model with inverse (IDM) rewards")
    pt.add_argument("--world-model", required=True, help="pretrained world-model checkpoint (ar or diffusion)")
    pt.add_argument("--idm", required=True, help="reward IDM checkpoint, or several separated by commas (an ensemble)")
    pt.add_argument("--judge", help="judge IDM checkpoint: scored on a probe set to detect reward hacking")
    pt.add_argument("--data", required=True, help="episode store: prompts from its train split, probe from val")
    pt.add_argument("--out", required=True, help="run folder (resumes if it exists)")
    _add_device_arg(pt)
    _add_config_args(pt, None, "num_generations=8")
    pt.set_defaults(func=cmd_posttrain)

    e = sub.add_parser("evaluate", parents=[common], help="score generated clips against real ones (Contract 3), write metrics.json",
                       description="Score a world model's clips against the real ones (DESIGN.md Contract 3): action "
                       "metrics by the reward IDM and the judge, inverse reward, PSNR (identical frames capped at "
                       "100 dB), SSIM, a Frechet distance on the judge's (else the reward IDM's) video features "
                       "(not FVD), FVD only with --i3d, optical-flow dynamics and brightness, each with a 95 percent "
                       "bootstrap interval over clips. --generated DATA scores the real clips as if generated: "
                       "the IDM upper bound (the GT row).")
    e.add_argument("--world-model", help="generate with this checkpoint first (into --generated, default OUT/generated)")
    e.add_argument("--generated", help="episode store of generated clips to score (the --data dir itself: real clips)")
    e.add_argument("--data", required=True, help="the real dataset the clips come from")
    e.add_argument("--idm", required=True, help="reward IDM checkpoint")
    e.add_argument("--judge", help="judge IDM checkpoint (independent scorer; its features give the Frechet distance)")
    e.add_argument("--out", required=True, help="folder for metrics.json (and generated/ with --world-model)")
    e.add_argument("--overwrite", action="store_true",
                   help="with --world-model: replace generated clips made with other settings")
    e.add_argument("--frames", type=int, default=16, help="frames per clip (default 16)")
    e.add_argument("--seed", type=int, default=0, help="generation and bootstrap seed (default 0)")
    e.add_argument("--split", default="test", choices=["train", "val", "test"], help="default test")
    e.add_argument("--batch-size", type=int, default=8, help="clips per batch (default 8)")
    e.add_argument("--max-clips", type=int, help="at most this many clips (default: all)")
    e.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    e.add_argument("--i3d", help="local I3D weights (.safetensors, pytorch-i3d layout) for FVD proper")
    e.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the 95%% intervals (default 1000)")
    e.add_argument("--label", help="row name in reports (default: from the store: 'real clips (GT)' or the model)")
    e.add_argument("--role", choices=["real", "base", "posttrained"],
                   help="row role in reports (default: real for a plain dataset, posttrained when the world "
                        "model's config records post-training, else base)")
    e.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("compare", parents=[common], help="paired difference of two evaluations of the same clips",
                       description="TREATMENT minus BASE, clip by clip: both folders are `rlir evaluate` outputs on "
                       "the same clips (same data, split, --max-clips and seed). F1 and camera errors are pooled over "
                       "the resampled clips' frames for both models with the same bootstrap draw; PSNR, SSIM and "
                       "brightness are per-clip differences. 95%% intervals over clips.")
    c.add_argument("--base", required=True, metavar="EVAL_DIR", help="the base model's `rlir evaluate` folder")
    c.add_argument("--treatment", required=True, metavar="EVAL_DIR", help="e.g. the post-trained model's")
    c.add_argument("--n-boot", type=int, default=1000)
    c.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    c.add_argument("--out", help="write the comparison as JSON here")
    c.set_defaults(func=cmd_compare)

    r = sub.add_parser("report", parents=[common], help="one self-contained HTML page (and PNGs) from evaluate outputs and training logs",
                       description="Build OUT/report.html (self-contained: PNG figures and GIF videos embedded) and "
                       "the PNG/GIF files from RUN_DIRS. A RUN_DIR is a folder holding an `rlir evaluate` output "
                       "(metrics.json, here or in a direct subfolder) and/or a training log (metrics.jsonl with "
                       "step, reward, reward_std, kl, ... rows). A row's role (real / base / posttrained) and label "
                       "come from its metrics.json ('role', 'label', set by evaluate), overridden by --role and "
                       "--label; when evaluate could not tell (world-model checkpoint unreadable), a RUN_DIR with a "
                       "post-training log counts as posttrained.")
    r.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    r.add_argument("--out", required=True, help="report folder")
    r.add_argument("--label", action="append", default=[], metavar="RUN_DIR=LABEL", help="row name (repeatable)")
    r.add_argument("--role", action="append", default=[], metavar="RUN_DIR=ROLE",
                   help="real, base or posttrained (repeatable)")
    r.add_argument("--videos", type=int, default=4, help="clips shown side by side (default 4)")
    r.add_argument("--human-eval", metavar="VOTES.sqlite", help="add the win-rate table of a `rlir human-eval` "
                                                                "votes database")
    r.set_defaults(func=cmd_report)

    m = sub.add_parser("demo", parents=[common], help="the whole pipeline on the embedded default (ViZDoom, tiny presets, CPU)")
    m.add_argument("--run", help="run folder (default runs/demo; each stage cached; a killed run resumes)")
    m.add_argument("--paradigm", choices=["ar", "diffusion", "both"], help="world model(s) to build (default ar)")
    m.add_argument("--episodes", type=int, help="ViZDoom recordings to collect (default 200)")
    m.add_argument("--smoke", action="store_true", help="a fast, small version (minutes; checks the plumbing)")
    m.add_argument("--config", help="YAML of demo settings, e.g. configs/demo/gain_2h.yaml (the two-hour budget of "
                                    "the component runs where RLIR gained)")
    m.add_argument("--collect-config", help="YAML for the collector (default: its built-in tiny settings)")
    m.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a demo setting, e.g. --set wm_minutes=20 (see rlir/demo.py: DemoConfig)")
    m.set_defaults(func=cmd_demo)

    from rlir.human_eval.cli import add_human_eval_parser
    from rlir.play.cli import add_play_parser
    add_play_parser(sub, common)
    add_human_eval_parser(sub, common)
    return p


def _idm_inputs(spec: str | None) -> list:
    """--idm as an input: one checkpoint, or each member of an ensemble "a,b"."""
    from rlir.utils.output_guard import Input
    return [Input(p, "--idm", False) for p in (spec or "").split(",")]


def outputs_of(a) -> tuple[list, list, list[str]]:
    """What a command writes (Output), what it reads (Input) and the folders it locks while it runs."""
    from rlir.utils.output_guard import Input, Output
    f, out = a.func, getattr(a, "out", None)
    if f is cmd_collect:
        return [Output(out)], [], [out]
    if f is cmd_data_stats:
        return ([Output(a.json, "--json", "file")] if a.json and a.json != "-" else []), [Input(a.dir, "DIR")], []
    if f is cmd_data_convert_vpt:
        return [Output(out, "OUT_DIR")], [Input(a.src, "SRC_DIR")], [out]
    if f is cmd_idm_eval:
        ins = [Input(a.data, "--data"), *_idm_inputs(a.idm), Input(a.judge, "--judge", False)]
        return ([Output(out, "--out", "file")] if out else []), ins, []
    if f in (cmd_idm_train, cmd_tokenizer_train):
        return [Output(out)], [Input(a.data, "--data")], [out]
    if f is cmd_wm_train:
        return [Output(out)], [Input(a.data, "--data"), Input(a.tokenizer, "--tokenizer", False),
                               Input(a.autoencoder, "--autoencoder", False)], [out]
    if f is cmd_generate:
        return [Output(out)], [Input(a.data, "--data"), Input(a.world_model, "--world-model", False)], [out]
    if f is cmd_posttrain:
        return [Output(out)], [Input(a.data, "--data"), Input(a.world_model, "--world-model", False),
                               *_idm_inputs(a.idm),
                               Input(a.judge, "--judge", False)], [out]
    if f is cmd_evaluate:
        ins = [Input(a.data, "--data"), Input(a.idm, "--idm", False), Input(a.judge, "--judge", False),
               Input(a.world_model, "--world-model", False), Input(a.i3d, "--i3d", False)]
        outs, locks = [Output(out)], [out]
        if a.world_model and a.generated:          # generated clips are written there
            outs.append(Output(a.generated, "--generated"))
            if not Path(a.generated).resolve().is_relative_to(Path(out).resolve()):
                locks.append(a.generated)
        elif a.generated:
            ins.append(Input(a.generated, "--generated"))
        return outs, ins, locks
    if f is cmd_report:
        return [Output(out)], [], [out]
    if f is cmd_compare:
        return ([Output(out, "--out", "file")] if out else []), [Input(a.base, "--base", False), Input(a.treatment, "--treatment", False)], []
    if f is cmd_demo:
        from rlir.demo import DemoConfig
        run = a.run or DemoConfig.run
        return [Output(run, "--run")], [], [run]
    return [], [], []


def _run_guarded(args, argv: list[str]) -> int:
    """Check the numeric options and the output locations, lock the output folders, then run the verb."""
    from rlir.cli_checks import check_options
    from rlir.utils.output_guard import OutputLock, check_output
    check_options(args)
    outs, ins, locks = outputs_of(args)
    for o in outs:                              # before anything is written, so a refusal changes nothing
        check_output(o, ins)
    if int(os.environ.get("RANK", "0")) > 0:    # under torchrun rank 0 holds the lock for the whole job
        locks = []
    command = "rlir " + " ".join(argv)
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(OutputLock(folder, command)) for folder in dict.fromkeys(locks)]
        rc = args.func(args)
        for lock in held:
            lock.succeeded = rc == 0
        return rc


def _leave_together() -> None:
    """Under torchrun, ranks meet before the process group goes: a rank that tears gloo down while
    another still holds a connection aborts at exit ("terminate called without an active exception").
    The command's models go first: FSDP keeps collective handles that must not outlive the group."""
    import gc

    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.quiet, args.verbose = getattr(args, "quiet", False), getattr(args, "verbose", False)
    level = logging.DEBUG if args.verbose else logging.INFO
    rank = int(os.environ.get("RANK", "0"))      # under torchrun only rank 0 reports; the others warn
    if rank > 0:
        args.quiet, level = True, logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    where = "rlir: error" if rank == 0 else f"rlir: error (rank {rank})"
    try:
        with contextlib.redirect_stdout(open(os.devnull, "w")) if rank > 0 else contextlib.nullcontext():
            rc = _run_guarded(args, argv)
        _leave_together()
        return rc
    except RlirError as e:
        print(f"{where}: {e}", file=sys.stderr)
        return 2
    except OSError as e:                         # a full disk, a read-only folder, a file where a folder belongs
        what = f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e) or type(e).__name__
        print(f"{where}: {what}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rlir: interrupted", file=sys.stderr)
        return 130
    finally:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def entry() -> None:
    """The `rlir` command. Under torchrun a rank leaves with os._exit once its work is written and the
    group destroyed: gloo's worker threads can still be torn down during interpreter finalization,
    which aborts the process (SIGABRT; seen once in CI, on the FSDP post-training test) after a job that
    succeeded, and torchrun then reports the whole job failed."""
    rc = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)


if __name__ == "__main__":
    entry()
