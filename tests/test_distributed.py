"""torchrun with 2 processes (gloo, CPU) computes what 1 process computes on the same global batch.

Each case runs the real CLI under `python -m torch.distributed.run` and compares the final train
state (weights and AdamW moments) with a one-process run of the same config, within float
tolerance. Pretraining: the IDM and the AR world model under DDP, the diffusion world model under
FSDP (fully_shard). Post-training: AR under DDP, resumed from a one-process run killed after step 1
(a resume with a different number of processes), and diffusion under FSDP.
"""
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from rlir.cli import main
from rlir.config import load_config
from rlir.data.store import EpisodeStore
from rlir.models.tokenizer import VQTokenizer
from rlir.rl.trainer import GRPOConfig, posttrain
from rlir.utils.checkpoint import load_tensors, save_checkpoint
from tests.conftest import make_episode
from tests.test_grpo import AE, HW, TOK, _ar_parts, _checkpoints

ROOT = Path(__file__).resolve().parents[1]


def torchrun(n: int, args: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           "-m", "rlir", "-q", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]


def assert_same_state(a: Path, b: Path, atol: float = 2e-5, invariant: tuple[str, ...] = ()) -> None:
    """Weights and AdamW moments equal within float tolerance. `invariant`: parameters the loss does
    not depend on (a conv bias right before a one-channel-per-group GroupNorm): their gradient is
    float noise around 0, which Adam's first steps turn into +-lr, so they are left out."""
    bad = []
    for stem in ("model", "optim"):
        ta, tb = load_tensors(a, stem), load_tensors(b, stem)
        assert ta.keys() == tb.keys(), stem
        for k in ta:
            if stem == "model" and any(k == p for p in invariant):
                continue
            if stem == "optim" and invariant:
                continue             # optimizer keys are numbered; the model's weights already pin the state
            if not torch.allclose(ta[k].float(), tb[k].float(), atol=atol, rtol=1e-4):
                bad.append(f"{stem}.{k}: max diff {(ta[k].float() - tb[k].float()).abs().max():.2e}")
    assert not bad, bad
    assert json.loads((a / "config.json").read_text())["step"] == json.loads((b / "config.json").read_text())["step"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist") / "data"
    s = EpisodeStore.create(root, metadata={"resolution": list(HW)})
    for i in range(5):
        s.add(f"e{i}", make_episode(T=8, hw=HW, seed=i), split="train" if i < 4 else "val")
    return str(root)


def _codec(path: Path, cfg) -> str:
    torch.manual_seed(0)
    tok = VQTokenizer(cfg)
    if cfg.quantize:
        tok = _ar_parts()[1]
    save_checkpoint(path, {"kind": tok.kind, "model": asdict(tok.cfg)}, {"model": tok.state_dict()})
    return str(path)


LOOP = ["steps=3", "warmup=1", "lr=1e-3", "eval_every=3", "threads=1", "seed=3"]


@pytest.mark.parametrize("what", ["idm-ddp", "ar-ddp", "diffusion-fsdp"])
def test_pretraining_on_two_processes_matches_one(tmp_path, data, what):
    if what == "idm-ddp":
        verb = ["idm", "train", "--data", data]
        sets = ["subset=all", "batch_size=4", "val_clips=2", "model.resolution=[16,16]", "model.clip_len=4",
                "model.temporal_channels=4", "model.channels=[4,4]", "model.d_model=16", "model.n_layers=1",
                "model.n_heads=2", "model.dropout=0.0"]
    else:
        paradigm, parallel = what.split("-")
        codec = _codec(tmp_path / "codec", TOK if paradigm == "ar" else AE)
        verb = ["wm", "train", "--paradigm", paradigm, "--data", data,
                "--tokenizer" if paradigm == "ar" else "--autoencoder", codec]
        m = "model" if paradigm == "ar" else "dit"
        sets = ["batch_size=4", "val_clips=2", f"parallel={parallel}", f"{m}.d_model=32", f"{m}.mlp=64",
                f"{m}.n_heads=2", f"{m}.n_layers=2", f"{m}.clip_len=4"]
    args = verb + [x for s in LOOP + sets for x in ("--set", s)]
    assert main(["-q", *args, "--out", str(tmp_path / "one")]) == 0
    torchrun(2, args + ["--out", str(tmp_path / "two")])
    invariant = ("temporal.0.bias", "temporal.3.bias", "cnn.0.conv.bias", "cnn.1.conv.bias",
                 "transformer.layers.0.self_attn.in_proj_bias") if what == "idm-ddp" else ()   # (its key third)
    assert_same_state(tmp_path / "one" / "checkpoints" / "last", tmp_path / "two" / "checkpoints" / "last",
                      invariant=invariant)
    one, two = (json.loads((tmp_path / r / "metrics.jsonl").read_text().splitlines()[-1]) for r in ("one", "two"))
    assert one["loss"] == pytest.approx(two["loss"], rel=1e-4)     # the logged loss is the global batch's
    assert (one["world_size"], one["rows_per_rank"], two["world_size"], two["rows_per_rank"]) == (1, 4, 2, 2)
    assert not (tmp_path / "two" / "checkpoints" / "last.tmp").exists()


def test_vq_tokenizer_trains_under_fsdp(tmp_path, data):
    """The VQ tokenizer's EMA codebook and k-means init are not split-invariant (dead codes are revived
    from local batches), so this checks the run and its checkpoint, not equality with one process."""
    from rlir.training.tokenizer_trainer import load_tokenizer
    sets = ["model.resolution=[16,16]", "model.channels=[8,8,8]", "model.dim=8", "model.codebook_size=16",
            "model.res_blocks=0", "steps=4", "eval_every=2", "batch_size=4", "parallel=fsdp", "max_minutes=0"]
    torchrun(2, ["tokenizer", "train", "--data", data, "--out", str(tmp_path / "tok")] +
             [x for s in sets for x in ("--set", s)])
    rows = [json.loads(x) for x in (tmp_path / "tok" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["world_size"], r["rows_per_rank"]) for r in rows] == [(2, 2, 2), (4, 2, 2)]
    tok = load_tokenizer(tmp_path / "tok" / "checkpoints" / "best")      # full, unsharded weights
    assert tok.decode(tok.encode(torch.zeros(1, 16, 16, 3, dtype=torch.uint8))).shape == (1, 16, 16, 3)


def _posttrain_sets(parallel: str) -> list[str]:
    return ["frames=4", "steps=2", "batch_size=2", "num_generations=4", "gradient_accumulation_steps=2", "lr=1e-3",
            "beta=0.01", "eval_every=2", "probe_clips=2", "media_every=0", "save_every=1", "sde_steps=4",
            "eval_steps=3", "threads=1", "max_minutes=0", f"parallel={parallel}", "precision=fp32",
            "rollout_precision=fp32", f"reward_mode={'f1_gain_soft' if parallel == 'ddp' else 'per_group'}"]


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("paradigm, parallel", [("ar", "ddp"), ("diffusion", "fsdp")])
def test_posttraining_on_two_processes_matches_one(tmp_path, data, paradigm, parallel):
    wm, idm = _checkpoints(tmp_path, paradigm)
    sets = _posttrain_sets(parallel)
    args = ["posttrain", "--world-model", wm, "--idm", idm, "--judge", idm, "--data", data]
    args += [x for s in sets for x in ("--set", s)]
    assert main(["-q", *args, "--out", str(tmp_path / "one")]) == 0
    if paradigm == "ar":         # killed after step 1 on one process, resumed on two
        cfg = load_config(GRPOConfig, f"configs/posttrain/{paradigm}_tiny.yaml", sets, world_model=wm, idm=idm,
                          judge=idm, data=data, out=str(tmp_path / "two"), stop_after=1)
        posttrain(cfg, progress=False)
    torchrun(2, args + ["--out", str(tmp_path / "two")])
    assert_same_state(tmp_path / "one" / "checkpoints" / "last", tmp_path / "two" / "checkpoints" / "last")
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [0, 1, 2]
    # each rank rolled out its own half of the groups (step 1 of the AR run: the one-process run that was killed)
    assert [(r["world_size"], r["rollouts_per_rank"]) for r in two[1:]] == \
        ([(1, 8), (2, 4)] if paradigm == "ar" else [(2, 4), (2, 4)])
    start = load_tensors(wm)                         # and training moved the weights
    assert any(not torch.allclose(v, start[k]) for k, v in load_tensors(tmp_path / "one" / "checkpoints" / "policy").items()
               if k in start)
    for a, b in zip(one, two):
        for k in ("reward", "reward_std", "probe/reward", "judge/reward", "kl", "loss", "grad_norm"):
            if k in a:
                assert a[k] == pytest.approx(b[k], rel=1e-3, abs=1e-6), (a["step"], k)
    pol = load_tensors(tmp_path / "two" / "checkpoints" / "policy")
    assert all(torch.allclose(v, pol[k], atol=2e-5) for k, v in
               load_tensors(tmp_path / "one" / "checkpoints" / "policy").items())


def test_batch_that_does_not_split_evenly_is_a_clear_error(tmp_path, data):
    wm, idm = _checkpoints(tmp_path)
    args = ["posttrain", "--world-model", wm, "--idm", idm, "--data", data, "--out", str(tmp_path / "o"),
            "--set", "batch_size=3", "--set", "frames=4", "--set", "num_generations=2",
            "--set", "gradient_accumulation_steps=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "rlir", "-q", *args], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert r.returncode != 0
    assert "batch_size (prompts per step) (3) must be divisible by the number of processes (2)" in r.stderr


# --- one process: activation checkpointing, bf16 autocast, devices --------------------------------
@pytest.mark.parametrize("paradigm", ["ar", "diffusion"])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(paradigm):
    import copy

    from rlir.models.ar_world_model import build_llama
    from rlir.models.dit_world_model import DiTWorldModel
    from rlir.training.distributed import checkpoint_activations
    from rlir.training.wm_trainer import wm_loss
    from tests.test_grpo import AR, DIT
    torch.manual_seed(0)
    mcfg = AR if paradigm == "ar" else DIT
    plain = build_llama(AR) if paradigm == "ar" else DiTWorldModel(DIT)
    ckpt = copy.deepcopy(plain)
    checkpoint_activations(ckpt)
    assert "_checkpoint_wrapped_module" in str(ckpt) and ckpt.state_dict().keys() == plain.state_dict().keys()
    c = torch.randint(0, 16, (2, 4, 4)) if paradigm == "ar" else torch.randn(2, 4, 4, 4)
    a = torch.randint(0, 2, (2, 4, 9))
    losses = []
    for m in (plain, ckpt):
        m.train()
        g = torch.Generator().manual_seed(1)
        loss = wm_loss(m, mcfg, c, a, g)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    grads = {n.replace("_checkpoint_wrapped_module.", ""): p.grad for n, p in ckpt.named_parameters()}
    for n, p in plain.named_parameters():
        if p.grad is not None:
            assert torch.allclose(p.grad, grads[n], atol=1e-6), n


def test_bf16_autocast_trains_close_to_fp32_and_keeps_the_sde_step_in_float32():
    from rlir.models.dit_world_model import DiTWorldModel, flow_matching_loss
    from rlir.models.flow_samplers import flow_sigmas, sde_step
    from rlir.training.distributed import Dist
    from tests.test_grpo import DIT
    torch.manual_seed(0)
    m = DiTWorldModel(DIT)
    for p in m.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    x0, a = torch.randn(2, 4, 4, 4), torch.randint(0, 2, (2, 4, 9))
    sig, eps = torch.rand(2, 4), torch.randn(2, 4, 4, 4)
    fp32 = flow_matching_loss(m, x0, a, sigma=sig, eps=eps)
    with Dist(precision="bf16").autocast():
        v = m(x0, sig, a)
        bf16 = flow_matching_loss(m, x0, a, sigma=sig, eps=eps)
        s = flow_sigmas(4)
        x1, mean, std, lp = sde_step(x0[:, 1], v[:, 1], s[1], s[2], 0.75, float(s[1]), torch.randn(2, 4, 4))
    assert v.dtype == torch.bfloat16                          # the transformer ran in bf16 ...
    assert x1.dtype == mean.dtype == lp.dtype == torch.float32   # ... the Flow-GRPO step in float32
    assert bf16.dtype == torch.float32 and bf16.item() == pytest.approx(fp32.item(), rel=5e-2)


def test_bad_device_and_parallel_settings_are_clear_errors(tmp_path, data, capsys):
    wm, idm = _checkpoints(tmp_path)
    base = ["-q", "posttrain", "--world-model", wm, "--idm", idm, "--data", data, "--out", str(tmp_path / "o")]
    if not torch.cuda.is_available():
        assert main([*base, "--device", "cuda"]) == 2
        assert "torch sees no CUDA device" in capsys.readouterr().err
    assert main([*base, "--set", "parallel=zero3"]) == 2
    assert "parallel must be one of ('ddp', 'fsdp')" in capsys.readouterr().err
    assert main([*base, "--set", "precision=fp8"]) == 2
    assert "precision must be one of ('fp32', 'bf16')" in capsys.readouterr().err
