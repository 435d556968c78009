"""Issue 19: nothing lost, nothing mislabelled. One test per defect (the collector's are in
test_collect_stops.py); data-loss cases check that every input file is byte-identical afterwards."""
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rlir.cli import main
from rlir.utils.output_guard import LOCK_FILE
from tests.test_grpo import T, _checkpoints, _store

ROOT = Path(__file__).resolve().parents[1]


def snapshot(*roots) -> dict:
    """Every file under roots -> sha256 of its bytes (hidden files included; not the empty lock file that
    marks a folder some rlir command wrote)."""
    out = {}
    for r in roots:
        r = Path(r)
        for p in sorted([r] if r.is_file() else r.rglob("*")):
            if p.is_file() and p.name != LOCK_FILE:
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("w")
    wm, idm = _checkpoints(root)
    wm_b, _ = _checkpoints(root / "b", seed=1)
    return {"root": root, "wm": wm, "wm_b": wm_b, "idm": idm, "data": _store(root / "data")}


def gen_args(w, out, *more, wm=None):
    return ["-q", "generate", "--world-model", wm or w["wm"], "--data", w["data"], "--out", str(out),
            "--frames", str(T), "--split", "train", "--batch-size", "2", *more]


def eval_args(w, out, *more, wm=None):
    return ["-q", "evaluate", "--world-model", wm or w["wm"], "--data", w["data"], "--idm", w["idm"], "--out", str(out),
            "--frames", str(T), "--split", "train", "--n-boot", "10", *more]


# 1 -------------------------------------------------------------------------------------------------
def test_1_generating_into_the_dataset_is_refused_and_changes_nothing(world, capsys):
    w = world
    before = snapshot(w["data"])
    data = Path(w["data"])
    for out in (data, data / "gen", data.parent):              # is, lies inside, holds the dataset
        assert main(gen_args(w, out)) == 2
        assert "--data" in capsys.readouterr().err
    assert main(eval_args(w, w["root"] / "ev1", "--generated", w["data"])) == 2
    assert "never writes into its inputs" in capsys.readouterr().err
    assert snapshot(w["data"]) == before and not (w["root"] / "ev1").exists()


# 2 -------------------------------------------------------------------------------------------------
def test_2_clips_of_another_model_or_settings_are_refused_not_relabelled(world, capsys):
    w = world
    ev = w["root"] / "ev2"
    assert main(eval_args(w, ev)) == 0                       # base-model clips in ev2/generated
    first = json.loads((ev / "metrics.json").read_text())
    before = snapshot(ev)
    assert main(eval_args(w, ev, wm=w["wm_b"])) == 2          # another model: refused, nothing rewritten
    err = capsys.readouterr().err
    assert "world_model_sha256" in err and "--overwrite" in err
    assert main(gen_args(w, ev / "generated", "--frames", "3")) == 2   # other clip length: refused
    assert "frames: 4 there, 3 now" in capsys.readouterr().err
    assert snapshot(ev) == before
    assert main(eval_args(w, ev)) == 0                        # the same model and settings: a resume
    assert main(eval_args(w, ev, "--overwrite", wm=w["wm_b"])) == 0   # asked for: replaced, named rightly
    meta = json.loads((ev / "generated" / "dataset.json").read_text())["generated"]
    second = json.loads((ev / "metrics.json").read_text())
    assert meta["world_model"] == w["wm_b"] and second["checkpoints"]["world_model"] == w["wm_b"]
    assert first["clips"] != second["clips"] or first["psnr"] != second["psnr"]


# 3 -------------------------------------------------------------------------------------------------
def test_3_posttrain_resume_with_another_world_model_is_refused(world, capsys):
    w = world
    base = ["-q", "posttrain", "--idm", w["idm"], "--data", w["data"], "--out", str(w["root"] / "pt"),
            "--set", "frames=4", "--set", "batch_size=2", "--set", "num_generations=2", "--set", "probe_clips=0",
            "--set", "media_every=0", "--set", "steps=1"]
    assert main([*base, "--world-model", w["wm"]]) == 0
    before = snapshot(w["root"] / "pt")
    assert main([*base, "--world-model", w["wm_b"]]) == 2
    assert "world_model" in capsys.readouterr().err
    assert snapshot(w["root"] / "pt") == before


# 4 -------------------------------------------------------------------------------------------------
def test_4_a_second_writer_is_refused_naming_the_holder(world, capsys, tmp_path):
    w = world
    out = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from rlir.utils.output_guard import OutputLock\n"
                               "with OutputLock(sys.argv[1], 'rlir generate (the first writer)'):\n"
                               "    print('held', flush=True); time.sleep(60)", str(out)],
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(out)
        for argv in (gen_args(w, out), eval_args(w, out),
                     ["-q", "idm", "train", "--data", w["data"], "--out", str(out)],
                     ["-q", "report", str(w["root"]), "--out", str(out)]):
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert f"pid {holder.pid}" in err and "the first writer" in err and "Traceback" not in err
        assert snapshot(out) == before
    finally:
        holder.kill()
        holder.wait()
    assert main(gen_args(w, out)) == 0                         # the lock dies with its holder


# 6 -------------------------------------------------------------------------------------------------
def _poison(src, dst, stem="model"):
    import shutil
    shutil.copytree(src, dst)
    t = load_file(str(Path(dst) / f"{stem}.safetensors"))
    name = next(k for k, v in t.items() if v.is_floating_point())
    t[name] = t[name].clone()
    t[name].view(-1)[0] = float("nan")
    save_file(t, str(Path(dst) / f"{stem}.safetensors"))
    return str(dst), name


def test_6_nonfinite_weights_are_refused_at_load(world, capsys):
    w = world
    wm, name = _poison(w["wm"], w["root"] / "wm_nan")
    assert main(gen_args(w, w["root"] / "g6", wm=wm)) == 2
    err = capsys.readouterr().err
    assert name in err and "non-finite" in err and "model.safetensors" in err
    idm, name = _poison(w["idm"], w["root"] / "idm_nan")
    assert main(["-q", "idm", "eval", "--idm", idm, "--data", w["data"], "--split", "train", "--clip-len", "4"]) == 2
    assert name in capsys.readouterr().err


# 7 -------------------------------------------------------------------------------------------------
def test_7_operating_system_errors_are_one_line_naming_the_path(world, capsys, monkeypatch):
    w = world
    a_file = w["root"] / "a_file"
    a_file.write_text("x")
    for argv in (gen_args(w, a_file), eval_args(w, a_file), ["-q", "report", str(w["root"]), "--out", str(a_file)],
                 ["-q", "idm", "train", "--data", w["data"], "--out", str(a_file / "run")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert str(a_file) in err and "not a folder" in err and len(err.strip().splitlines()) == 1
    assert a_file.read_text() == "x"

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied", str(w["root"] / "g7" / "manifest.jsonl"))
    monkeypatch.setattr("rlir.data.store.atomic_write_jsonl", refuse)
    assert main(gen_args(w, w["root"] / "g7")) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"rlir: error: {w['root'] / 'g7' / 'manifest.jsonl'}: Permission denied"
    assert not (w["root"] / "g7").exists()                    # a failed command leaves no empty folder


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_7_a_read_only_folder_is_refused_before_any_work(world, capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    assert main(gen_args(world, ro / "g")) == 2
    assert "no permission to write" in capsys.readouterr().err


# 8 -------------------------------------------------------------------------------------------------
def test_8_numeric_options_are_checked_before_any_work(world, capsys):
    w = world
    cases = [(gen_args(w, w["root"] / "g8", "--frames", "5"), "clip length 4"),
             (gen_args(w, w["root"] / "g8", "--temperature", "0"), "--temperature must be greater than 0"),
             (gen_args(w, w["root"] / "g8", "--batch-size", "0"), "--batch-size must be at least 1"),
             (eval_args(w, w["root"] / "e8", "--n-boot", "0"), "--n-boot must be at least 1"),
             (["-q", "idm", "eval", "--idm", w["idm"], "--data", w["data"], "--clip-len", "32"], "clip length 4"),
             (["-q", "idm", "eval", "--idm", w["idm"], "--data", w["data"], "--clip-len", "1"], "--clip-len"),
             (["-q", "idm", "train", "--data", w["data"], "--out", str(w["root"] / "i8"), "--set", "lr=nan"], "lr"),
             (["-q", "idm", "train", "--data", w["data"], "--out", str(w["root"] / "i8"), "--set", "max_minutes=-1"],
              "max_minutes must not be negative")]
    if not torch.cuda.is_available():
        cases.append((gen_args(w, w["root"] / "g8", "--device", "cuda"), "no CUDA device"))
    for argv, words in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, (argv, err)
    assert not any((w["root"] / d).exists() for d in ("g8", "e8", "i8"))


# 9 -------------------------------------------------------------------------------------------------
def test_9_messages_say_what_is_wrong(world, capsys):
    w = world
    import shutil
    gan = w["root"] / "wm_gan"
    shutil.copytree(w["wm"], gan)
    cfg = json.loads((gan / "config.json").read_text())
    (gan / "config.json").write_text(json.dumps({**cfg, "paradigm": "gan"}))
    assert main(gen_args(w, w["root"] / "g9", wm=str(gan))) == 2
    assert "paradigm 'gan'" in capsys.readouterr().err
    assert main(["-q", "data", "stats", str(w["root"] / "a_file9")]) == 2
    (w["root"] / "a_file9").write_text("x")
    assert main(["-q", "data", "stats", str(w["root"] / "a_file9")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(gen_args(w, w["root"] / "g9", wm=w["idm"])) == 2
    assert "is an 'idm' checkpoint" in capsys.readouterr().err
    from rlir.config import load_config
    from rlir.rl.trainer import GRPOConfig
    cfg = load_config(GRPOConfig, None, ["rewards={inverse: 1.0, pixel_l1_ssim: 0.5}"], world_model="w", idm="i",
                      data="d", out="o")
    assert cfg.rewards == {"inverse": 1.0, "pixel_l1_ssim": 0.5}
    from rlir.errors import RlirError
    from rlir.models.idm import IDMConfig, build_idm
    from rlir.utils.checkpoint import load_state
    with pytest.raises(RlirError, match=r"other shape: \S+"):
        load_state(build_idm(IDMConfig(resolution=(16, 16), clip_len=T, d_model=32, n_heads=2, n_layers=1,
                                       channels=(4, 4), temporal_channels=4)), w["idm"])


# 10 ------------------------------------------------------------------------------------------------
def test_10_written_files_follow_the_umask(tmp_path):
    from rlir.utils.io import atomic_write_json
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {})
        os.umask(0o027)
        atomic_write_json(tmp_path / "b.json", {})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o640


def test_10b_checkpoints_follow_the_umask(tmp_path):
    """safetensors' save_file creates its file 0600; a checkpoint is shared like any other file."""
    from rlir.utils.checkpoint import save_checkpoint
    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "ck", {"kind": "idm"}, {"model": {"w": torch.zeros(2)}})
    finally:
        os.umask(old)
    assert (tmp_path / "ck" / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "ck" / "config.json").stat().st_mode & 0o777 == 0o644


# also seen ---------------------------------------------------------------------------------------
def test_quiet_after_the_verb_and_version(world, capsys):
    w = world
    assert main([*gen_args(w, w["root"] / "gq")[1:], "-q"]) == 0
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and "rlir 0." in capsys.readouterr().out
    start = time.time()
    assert main(["-q", "wm", "train", "--data", w["data"], "--out", str(w["root"] / "wq")]) == 2
    assert "--tokenizer CKPT" in capsys.readouterr().err and time.time() - start < 5
