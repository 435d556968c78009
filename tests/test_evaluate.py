"""`rlir evaluate`: the real clips scored as if generated give the IDM upper bound; worse clips score worse;
bad inputs are one-line errors."""
import json
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
import torch

from rlir.actions import N_CLASSES
from rlir.cli import main
from rlir.data.store import Episode, EpisodeStore
from rlir.errors import RlirError
from rlir.eval.evaluate import evaluate, frechet_distance
from rlir.models.idm import IDMConfig, build_idm
from rlir.utils.checkpoint import save_checkpoint

HW = (16, 24)
T = 8
TINY = dict(resolution=HW, clip_len=T, channels=(8, 8), temporal_channels=4, d_model=16, n_heads=2, n_layers=1)


def smooth_episode(n: int, seed: int) -> Episode:
    """A textured scene panning one pixel per frame (so flow, SSIM and brightness mean something)."""
    rng = np.random.default_rng(seed)
    tex = torch.from_numpy(rng.uniform(30, 220, (1, 3, 6, 10 + n // 3)).astype(np.float32))
    big = torch.nn.functional.interpolate(tex, size=(HW[0], HW[1] + n), mode="bilinear", align_corners=False)
    big = big[0].permute(1, 2, 0).numpy()
    frames = np.stack([big[:, t:t + HW[1]] for t in range(n)]).round().astype(np.uint8)
    actions = np.stack([rng.integers(0, k, n) for k in N_CLASSES], 1).astype(np.int16)
    actions[:, 3] = 0                                   # 'use' is never shown (as in ViZDoom)
    return Episode(frames, actions, rng.normal(0, 2, (n, 2)).astype(np.float32))


def make_data(root, n_test: int = 4, length: int = 3 * T) -> EpisodeStore:
    store = EpisodeStore.create(root, metadata={"resolution": list(HW), "fps": 8.0,
                                                "null_groups": {"use": "never shown"}})
    for i in range(n_test + 1):
        store.add(f"e{i}", smooth_episode(length, seed=i), "test" if i < n_test else "train")
    return store


def make_idm(path, arch: str = "vpt", seed: int = 0, **over):
    torch.manual_seed(seed)
    cfg = IDMConfig(arch=arch, **{**TINY, **over})
    save_checkpoint(path, {"kind": "idm", "arch": arch, "model": asdict(cfg)}, {"model": build_idm(cfg).state_dict()})
    return str(path)


def make_generated(root, data: EpisodeStore, fn, frames: int = T, world_model: str = "wm") -> str:
    """A generated-clip store (as `rlir generate` writes it) whose frames 1..T-1 are fn(real frames)."""
    from rlir.data.sampler import fixed_clips
    gen = EpisodeStore.create(root, metadata={"resolution": list(HW), "null_groups": data.metadata["null_groups"],
                                              "generated": {"world_model": world_model, "paradigm": "ar",
                                                            "frames": frames, "split": "test"}})
    for ep, s in fixed_clips(data, frames, split="test"):
        c = data.load(ep).slice(s, s + frames)
        f = c.frames.copy()
        f[1:] = fn(f[1:])
        gen.add(f"{ep}-{s:05d}", Episode(f, c.actions, c.camera_deg), "test", {"clip": [ep, s], "world_model": world_model})
    return str(root)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ev")
    data = make_data(root / "data")
    return {"root": root, "data": data, "idm": make_idm(root / "idm"), "judge": make_idm(root / "judge", "cnn3d", 1)}


@pytest.fixture(scope="module")
def real_eval(setup):
    s = setup
    return evaluate(str(s["root"] / "data"), str(s["root"] / "ev_real"), s["idm"], judge=s["judge"],
                    generated=str(s["root"] / "data"), frames=T, progress=False)


def test_real_clips_give_the_idm_upper_bound(setup, real_eval, capsys):
    s, m = setup, real_eval
    out = s["root"] / "idm_eval.json"
    assert main(["-q", "idm", "eval", "--idm", s["idm"], "--judge", s["judge"], "--data", str(s["root"] / "data"),
                 "--clip-len", str(T), "--out", str(out)]) == 0
    ref = json.loads(out.read_text())
    for role in ("reward_idm", "judge_idm"):      # exactly `rlir idm eval` on the same clips, CIs included
        for k in ("metrics", "ci95", "per_group", "confusion", "n_clips", "n_frames"):
            assert m[role][k] == ref[role][k], (role, k)
    assert m["n_clips"] == 12 and m["role"] == "real" and "GT" in m["label"]
    assert m["psnr"]["mean"] == 100.0 and m["psnr"]["n_capped"] == 12 and m["psnr"]["cap_db"] == 100.0
    assert m["ssim"]["mean"] == pytest.approx(1.0, abs=1e-5)
    f = m["frechet_idm_feature_distance"]
    assert f["model"] == "judge_idm" and f["value"] < 1e-3 * f["trace_cov_real"] and f["trace_cov_real"] > 0
    assert m["fvd"] is None and "i3d" in m["fvd_skipped"]
    assert m["brightness"]["delta"]["mean"] == 0.0
    assert m["dynamics"]["generated"] == m["dynamics"]["real"]
    assert m["dynamics"]["real"]["mean_flow_px"]["mean"] > 0.3          # the scene pans one pixel a frame
    ir = m["inverse_reward"]["reward_idm"]
    assert 0 <= ir["all"]["mean"] <= ir["per_group"]["mean"] <= 1
    saved = json.loads((s["root"] / "ev_real" / "metrics.json").read_text())
    assert saved["n_clips"] == 12 and saved["checkpoints"]["idm"] == s["idm"] and len(saved["clips"]) == 12


def test_degraded_clips_score_worse(setup, real_eval):
    s, real = setup, real_eval
    dark = make_generated(s["root"] / "dark", s["data"], lambda f: (f * 0.5).astype(np.uint8))
    shuffled = make_generated(s["root"] / "shuf", s["data"], lambda f: f[::-1].copy())
    for gen in (dark, shuffled):
        m = evaluate(str(s["root"] / "data"), str(s["root"] / "ev" / gen[-4:]), s["idm"], judge=s["judge"],
                     generated=gen, frames=T, n_boot=100, progress=False)
        assert m["role"] == "base" and m["n_clips"] == 12
        assert m["psnr"]["mean"] < 30 and m["psnr"]["n_capped"] == 0
        assert m["ssim"]["ci95"][1] < 0.9
        f = m["frechet_idm_feature_distance"]
        assert f["value"] > 0.01 * f["trace_cov_real"]
        assert m["reward_idm"]["confusion"] != real["reward_idm"]["confusion"]   # the IDM sees other videos
    assert m["brightness"]["delta"]["mean"] == pytest.approx(0, abs=1e-9)          # reversed: same pixels
    m = json.loads((s["root"] / "ev" / "dark" / "metrics.json").read_text())
    assert m["brightness"]["delta"]["ci95"][1] < -20                              # darkening shows


def test_world_model_path_generates_first(setup, monkeypatch):
    """--world-model calls generate() into OUT/generated, then scores it; a post-trained config is 'posttrained'."""
    s = setup
    save_checkpoint(s["root"] / "wm_post", {"kind": "world_model", "paradigm": "ar", "posttrain": {"steps": 3}},
                    {"model": {"w": torch.zeros(1)}})
    calls = []

    def fake_generate(world_model, data, out, frames, seed, split, batch_size, max_clips, device, progress, overwrite=False):
        calls.append((world_model, out, frames, max_clips))
        return {"clips": 5, "out": make_generated(out, EpisodeStore(data), lambda f: 255 - f, frames, world_model)}
    monkeypatch.setattr("rlir.eval.generate.generate", fake_generate)
    out = s["root"] / "ev_wm"
    m = evaluate(str(s["root"] / "data"), str(out), s["idm"], world_model=str(s["root"] / "wm_post"), frames=T,
                 max_clips=5, n_boot=50, progress=False)
    assert calls == [(str(s["root"] / "wm_post"), str(out / "generated"), T, 5)]
    assert m["role"] == "posttrained" and m["n_clips"] == 5 and m["judge_idm"] is None
    assert m["frechet_idm_feature_distance"]["model"] == "reward_idm" and m["generate_summary"]["clips"] == 5


def test_frechet_distance_by_hand():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    assert frechet_distance(x, x) < 1e-9
    # N(0, I) vs N(mu, 4I): |mu|^2 + 3 * (1 + 4 - 2 * 2)
    y = x * 2 + np.array([1.0, 0, 0])
    assert frechet_distance(x, y) == pytest.approx(1 + 3 * 1 * np.var(x, ddof=1), rel=0.15)


def _err(argv, capsys):
    rc = main(["-q", *argv])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and err.startswith("rlir: error:"), err
    return err


def test_bad_inputs_are_one_line_errors(setup, capsys, tmp_path):
    s = setup
    data = str(s["root"] / "data")
    base = ["evaluate", "--data", data, "--generated", data, "--out", str(tmp_path / "o"), "--frames", str(T)]
    save_checkpoint(tmp_path / "wm", {"kind": "world_model"}, {"model": {"w": torch.zeros(1)}})
    err = _err(["evaluate", "--data", data, "--generated", data, "--idm", str(tmp_path / "wm"), "--out", str(tmp_path / "o")], capsys)
    assert "'world_model' checkpoint, not 'idm'" in err
    (tmp_path / "empty").mkdir()
    err = _err(["evaluate", "--data", str(tmp_path / "empty"), "--generated", data, "--idm", s["idm"],
                "--out", str(tmp_path / "o")], capsys)
    assert "no manifest.jsonl" in err
    small = make_idm(tmp_path / "idm_small", resolution=(12, 16))
    err = _err([*base, "--idm", small], capsys)
    assert "16x24 frames" in err and "takes 12x16" in err
    err = _err([*base, "--idm", s["idm"], "--judge", str(tmp_path / "wm")], capsys)
    assert "not 'idm'" in err
    # generated clips from other episodes, or with other actions, do not match the real data
    other = EpisodeStore.create(tmp_path / "other", metadata={"resolution": list(HW)})
    for i in range(2):
        other.add(f"x{i}", smooth_episode(2 * T, 50 + i), "test")
    err = _err(["evaluate", "--data", data, "--generated", str(tmp_path / "other"), "--idm", s["idm"],
                "--out", str(tmp_path / "o"), "--frames", str(T)], capsys)
    assert "does not match" in err and "'x0'" in err
    gen = make_generated(tmp_path / "gen", s["data"], lambda f: f)
    e = EpisodeStore(gen).load("e1-00008")
    e.actions[2, 0] = (e.actions[2, 0] + 1) % 3
    from rlir.data.store import write_episode
    write_episode(tmp_path / "gen" / "e1-00008.npz", e)
    err = _err(["evaluate", "--data", data, "--generated", gen, "--idm", s["idm"], "--out", str(tmp_path / "o"),
                "--frames", str(T)], capsys)
    assert "does not match" in err and "other actions" in err and "e1-00008" in err
    err = _err([*base, "--idm", s["idm"], "--frames", str(T + 4)], capsys)
    assert "clip length" in err
    err = _err(["evaluate", "--data", data, "--idm", s["idm"], "--out", str(tmp_path / "o")], capsys)
    assert "--world-model" in err and "--generated" in err


def test_cli_end_to_end_and_help(setup, tmp_path):
    s = setup
    r = subprocess.run([sys.executable, "-m", "rlir", "evaluate", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "100 dB" in r.stdout and "--i3d" in r.stdout
    save_checkpoint(tmp_path / "wm", {"kind": "world_model"}, {"model": {"w": torch.zeros(1)}})
    data = str(s["root"] / "data")
    r = subprocess.run([sys.executable, "-m", "rlir", "-q", "evaluate", "--data", data, "--generated", data,
                        "--idm", str(tmp_path / "wm"), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_i3d_weights_are_safetensors_only(setup, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from rlir.eval.i3d import InceptionI3d, i3d_features, load_i3d
    (tmp_path / "i3d.pt").write_bytes(b"\x80\x04pickle")
    with pytest.raises(RlirError, match="never loads pickle"):
        load_i3d(tmp_path / "i3d.pt")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(RlirError, match="not pytorch-i3d"):
        load_i3d(tmp_path / "bad.safetensors")
    torch.manual_seed(0)
    save_file(InceptionI3d(num_classes=7).state_dict(), str(tmp_path / "i3d.safetensors"))
    model = load_i3d(tmp_path / "i3d.safetensors")
    assert i3d_features(model, torch.zeros(1, 8, 20, 28, 3, dtype=torch.uint8), size=32).shape == (1, 7)
    monkeypatch.setattr("rlir.eval.i3d.I3D_SIZE", 32)
    s = setup
    m = evaluate(str(s["root"] / "data"), str(tmp_path / "ev"), s["idm"], generated=str(s["root"] / "data"),
                 frames=T, max_clips=3, n_boot=20, i3d=str(tmp_path / "i3d.safetensors"), progress=False)
    assert m["fvd"]["value"] < 1e-6 and m["fvd"]["feature_dim"] == 7


def test_world_model_of_another_resolution_is_a_one_line_error(tmp_path, capsys):
    """The reward IDM fits the data (12x16) but the world model takes 16x16 frames."""
    from tests.conftest import make_episode
    from tests.test_grpo import _checkpoints
    wm, _ = _checkpoints(tmp_path)
    store = EpisodeStore.create(tmp_path / "data", metadata={"resolution": [12, 16]})
    for i, split in enumerate(["train", "test"]):
        store.add(f"e{i}", make_episode(T=20, hw=(12, 16), seed=i), split=split)
    icfg = IDMConfig(resolution=(12, 16), clip_len=4, temporal_channels=4, channels=(4, 4), d_model=16, n_layers=1,
                     n_heads=2)
    save_checkpoint(tmp_path / "idm12", {"kind": "idm", "arch": "vpt", "model": asdict(icfg)},
                    {"model": build_idm(icfg).state_dict()})
    code = main(["-q", "evaluate", "--world-model", wm, "--data", str(tmp_path / "data"), "--idm",
                 str(tmp_path / "idm12"), "--out", str(tmp_path / "ev"), "--frames", "4"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "12x16" in err and "world model takes 16x16" in err, err


def test_idm_eval_reads_a_reward_idm_ensemble(setup, tmp_path):
    """`idm eval --idm A,B` scores the ensemble posttrain would read: A with itself is A; a missing member
    is named."""
    s = setup
    base = ["-q", "idm", "eval", "--data", str(s["root"] / "data"), "--clip-len", str(T)]
    assert main([*base, "--idm", s["idm"], "--out", str(tmp_path / "one.json")]) == 0
    assert main([*base, "--idm", f"{s['idm']},{s['idm']}", "--out", str(tmp_path / "two.json")]) == 0
    one, two = (json.loads((tmp_path / f).read_text())["reward_idm"] for f in ("one.json", "two.json"))
    assert two["n_clips"] == one["n_clips"] == 12
    for k, v in one["metrics"].items():
        assert two["metrics"][k] == pytest.approx(v, abs=1e-6), k
    assert two["checkpoint"] == f"{s['idm']},{s['idm']}"
    assert main([*base, "--idm", f"{s['idm']},{tmp_path / 'nope'}"]) != 0


def test_idm_eval_on_its_own_training_subset(setup, tmp_path):
    """`--own-subset` scores each IDM on the training recordings it learned from (train ~ test: underfit)."""
    from rlir.training.idm_trainer import subset_ids
    s, data = setup, str(setup["root"] / "data")
    mine = "a" if subset_ids(s["data"], "a") else "b"          # the half holding the one training episode
    paths = {}
    for sub in ("a", "b"):
        cfg = IDMConfig(arch="vpt", **TINY)
        paths[sub] = tmp_path / sub
        save_checkpoint(paths[sub], {"kind": "idm", "arch": "vpt", "model": asdict(cfg), "train": {"subset": sub}},
                        {"model": build_idm(cfg).state_dict()})
    out = tmp_path / "own.json"
    assert main(["-q", "idm", "eval", "--idm", str(paths[mine]), "--data", data, "--split", "train", "--own-subset",
                 "--clip-len", str(T), "--out", str(out)]) == 0
    rep = json.loads(out.read_text())["reward_idm"]
    assert rep["subset"] == mine and rep["n_clips"] == 3                   # e4: 3T frames, 3 windows
    other = "b" if mine == "a" else "a"
    assert main(["-q", "idm", "eval", "--idm", str(paths[other]), "--data", data, "--split", "train",
                 "--own-subset", "--clip-len", str(T)]) == 2               # none of its recordings here
    assert main(["-q", "idm", "eval", "--idm", str(paths[mine]), "--data", data, "--own-subset"]) == 2   # test split
