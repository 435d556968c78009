"""RLIR post-training: advantages, the GRPO/Flow-GRPO objectives, and short runs of the trainer."""
import json

import numpy as np
import pytest
import torch

from rlir.cli import main
from rlir.data.store import EpisodeStore
from rlir.errors import ConfigError
from rlir.models.ar_world_model import ARConfig, build_llama
from rlir.models.dit_world_model import DiTConfig, DiTWorldModel
from rlir.models.idm import IDMConfig, build_idm
from rlir.models.tokenizer import TokenizerConfig, VQTokenizer
from rlir.rl.grpo import aggregate, flow_grpo_loss, group_advantages, k3_kl, token_grpo_loss, zero_std_groups
from rlir.rl.rollouts import ARPolicy, DiffusionPolicy
from rlir.rl.trainer import GRPOConfig, posttrain
from rlir.training.wm_trainer import wm_checkpoint_config
from rlir.utils.checkpoint import save_checkpoint
from tests.conftest import make_episode

HW, T = (16, 16), 4
TOK = TokenizerConfig(resolution=HW, channels=(8, 8, 8), dim=8, codebook_size=16, res_blocks=0)
AR = ARConfig(n_codes=16, tokens_per_frame=4, clip_len=T, d_model=32, mlp=64, n_heads=2, n_layers=2)
AE = TokenizerConfig(resolution=HW, channels=(8, 8, 8), dim=4, res_blocks=0, quantize=False)
DIT = DiTConfig(latent_dim=4, tokens_per_frame=4, clip_len=T, d_model=32, mlp=64, n_heads=2, n_layers=2)


# --- pure functions ------------------------------------------------------------------------------
def test_group_advantages_sum_to_zero_and_scale():
    r = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.2, 0.2, 0.2, 0.2, 3.0, 1.0, 2.0, 2.0])
    for scale in ("group", "batch", "none"):
        a = group_advantages(r, 4, scale).view(3, 4)
        assert torch.allclose(a.sum(1), torch.zeros(3), atol=1e-5)
    a = group_advantages(r, 4, "group").view(3, 4)
    assert torch.allclose(a[1], torch.zeros(4))                                     # equal rewards: no signal
    g0 = r[:4]
    assert torch.allclose(a[0], (g0 - g0.mean()) / (g0.std() + 1e-4))
    assert torch.allclose(group_advantages(r, 4, "none").view(3, 4)[2], r[8:] - 2.0)
    assert zero_std_groups(r, 4).tolist() == [False, True, False]
    with pytest.raises(ValueError):
        group_advantages(r, 5)


def test_k3_kl_is_zero_at_the_reference_and_positive_elsewhere():
    lp = torch.log_softmax(torch.randn(3, 7), -1)
    assert torch.equal(k3_kl(lp, lp), torch.zeros_like(lp))
    assert (k3_kl(lp, lp + 0.3 * torch.randn_like(lp)) >= 0).all()
    assert k3_kl(lp, lp + 0.5).min() > 0


def test_loss_aggregations_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert aggregate(x, m, "grpo").item() == pytest.approx((2.0 + 4.0) / 2)
    assert aggregate(x, m, "bnpo").item() == pytest.approx(10.0 / 4)
    assert aggregate(x, m, "dapo").item() == pytest.approx(10.0 / 4)
    assert aggregate(x, m, "dr_grpo", max_tokens=5).item() == pytest.approx(10.0 / (2 * 5))


def test_token_loss_masks_forced_tokens_and_clips():
    torch.manual_seed(0)
    logp = (torch.randn(4, 10) - 2).requires_grad_(True)
    mask = torch.ones(4, 10)
    mask[:, 3:5] = 0                                          # e.g. action tokens
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    loss, m = token_grpo_loss(logp, logp.detach(), adv, mask, beta=0.1, ref_logp=logp.detach())
    loss.backward()
    assert m["ratio_mean"] == 1.0 and m["clip_ratio/region_mean"] == 0.0 and m["kl"] == 0.0
    assert torch.equal(logp.grad[:, 3:5], torch.zeros(4, 2))  # masked tokens: exactly no gradient
    assert (logp.grad[:, :3] != 0).all()
    # a ratio far above 1 + eps with a positive advantage is clipped: no gradient through it
    lp2 = (logp.detach() + 1.0).requires_grad_(True)
    loss2, m2 = token_grpo_loss(lp2, logp.detach(), torch.ones(4), mask, epsilon=0.2)
    loss2.backward()
    assert m2["clip_ratio/high_mean"] == 1.0 and torch.equal(lp2.grad, torch.zeros_like(lp2))


def test_flow_grpo_loss_kl_zero_at_reference_and_advantage_clamp():
    lp = torch.randn(2, 3, requires_grad=True)
    mean = torch.randn(2, 3, 4, 5)
    std = torch.full((2, 3, 1, 1), 0.1)
    loss, m = flow_grpo_loss(lp, lp.detach(), torch.tensor([100.0, -100.0]), 1e-3, 5.0, 0.5, mean, mean, std)
    assert m["kl"] == 0.0 and m["ratio_mean"] == 1.0
    loss.backward()
    assert torch.allclose(lp.grad.abs(), torch.full((2, 3), 5.0 / 6))  # advantage clamped to +-5, mean over 6
    _, m2 = flow_grpo_loss(lp.detach(), lp.detach(), torch.ones(2), 1e-3, 5.0, 0.5, mean + 0.1, mean, std)
    assert m2["kl"] == pytest.approx(0.01 / (2 * 0.01), rel=1e-4)


# --- policies on tiny models ---------------------------------------------------------------------
def _ar_parts(seed=0):
    torch.manual_seed(seed)
    model, tok = build_llama(AR).eval(), VQTokenizer(TOK).eval()
    with torch.no_grad():       # spread the codebook so that codes decode to clearly different frames
        tok.vq._codebook.embed.copy_(torch.randn_like(tok.vq._codebook.embed) * 5)
        tok.vq._codebook.initted.fill_(True)
    return model, tok


def _dit_parts(seed=0):
    torch.manual_seed(seed)
    m = DiTWorldModel(DIT)
    with torch.no_grad():                 # leave AdaLN-Zero's identity start so every path carries signal
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval(), VQTokenizer(AE).eval()


def _prompt(B, seed=0):
    g = torch.Generator().manual_seed(seed)
    frame0 = torch.randint(0, 256, (B, *HW, 3), generator=g, dtype=torch.uint8)
    actions = torch.randint(0, 2, (B, T, 9), generator=g)
    return frame0, actions


def test_ar_policy_ratio_is_one_before_the_first_update():
    model, codec = _ar_parts()
    pol = ARPolicy(model, AR, codec, T, temperature=1.0, top_p=0.9, beta=0.1)
    frame0, actions = _prompt(4)
    ro = pol.rollout(frame0, actions, torch.Generator().manual_seed(0))
    assert ro.video.shape == (4, T, *HW, 3) and torch.equal(ro.video[:, 0], frame0)
    m = pol.accumulate(ro, torch.tensor([1.0, -1.0, 0.5, -0.5]), 1.0, ref_model=model)
    assert m["ratio_mean"] == 1.0 and m["kl"] == 0.0 and m["logp_mismatch"] < 1e-4
    head = model.lm_head.weight.grad
    assert torch.equal(head[AR.n_codes:], torch.zeros_like(head[AR.n_codes:]))   # action tokens: no gradient
    assert head[:AR.n_codes].abs().sum() > 0


def test_bf16_rollouts_keep_the_ratio_at_one_and_the_log_probs_close():
    """bf16 rollouts: sampled from a bfloat16 copy of the current weights; the first pass's "old"
    log-probs are the float32 model's, so the ratio is exactly 1; the sampler's own log-probs differ
    from the float32 scorer's by bf16 rounding only (stated tolerance: 0.05 nats per token on average)."""
    model, codec = _ar_parts()
    pol = ARPolicy(model, AR, codec, T, temperature=1.0, top_p=0.9, rollout_precision="bf16")
    frame0, actions = _prompt(4)
    ro = pol.rollout(frame0, actions, torch.Generator().manual_seed(0))
    assert pol._shadow is not None and next(pol._shadow.parameters()).dtype == torch.bfloat16
    m = pol.accumulate(ro, torch.tensor([1.0, -1.0, 0.5, -0.5]), 1.0)
    assert m["ratio_mean"] == 1.0 and next(model.parameters()).dtype == torch.float32
    mask = ro.data["mask"] > 0
    gap = (ro.old["logp"] - ro.data["logps"]).abs()[mask]
    assert gap.mean() < 0.05
    with torch.no_grad():                       # the copy follows the weights after an update
        next(model.parameters()).add_(1.0)
    pol.sampler_model()
    assert torch.allclose(next(pol._shadow.parameters()).float(), next(model.parameters()), atol=0.05)


def test_diffusion_policy_ratio_is_one_at_rollout_parameters_for_every_selected_step():
    model, codec = _dit_parts()
    pol = DiffusionPolicy(model, DIT, codec, T, sde_steps=6, noise_level=0.75, timestep_fraction=1.0, beta=0.1)
    assert pol.n_train_steps == 5                                    # the last step is left out
    frame0, actions = _prompt(3)
    ro = pol.rollout(frame0, actions, torch.Generator().manual_seed(0))
    assert ro.data["chosen"].shape == (3, 5) and (ro.data["chosen"] < 5).all()
    from rlir.models.flow_samplers import score_steps
    for k in range(5):                                               # every selected step, before any update
        idx = ro.data["chosen"][:, k]
        with torch.no_grad():
            lp, _, _ = score_steps(model, pol._traj(ro.data), actions, idx)
        sampled = ro.data["logps"].gather(2, idx.view(-1, 1, 1).expand(-1, T - 1, 1))[..., 0]
        assert (torch.exp(lp - sampled) - 1).abs().max() < 1e-4
    m = pol.accumulate(ro, torch.tensor([1.0, 0.0, -1.0]), 1.0, ref_model=model)
    assert m["ratio_mean"] == pytest.approx(1.0) and m["kl"] == 0.0 and m["logp_mismatch"] < 1e-4
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_diffusion_bf16_rollouts_keep_float32_latents_and_the_ratio_at_one():
    """rollout_precision bf16 (DiT): a bfloat16 copy of the transformer, the SDE step in float32; the first
    pass's "old" log-probs are the float32 scorer's, so the ratio is exactly 1, and the sampler's own
    log-probs differ from them by bf16 rounding of the velocity only (stated tolerance: 0.5 per
    dimension-averaged log-prob, against the float32 sampler's 1e-4)."""
    model, codec = _dit_parts()
    kw = dict(sde_steps=6, noise_level=0.75, timestep_fraction=1.0)
    frame0, actions = _prompt(3)
    fp32 = DiffusionPolicy(model, DIT, codec, T, **kw).rollout(frame0, actions, torch.Generator().manual_seed(0))
    pol = DiffusionPolicy(model, DIT, codec, T, rollout_precision="bf16", **kw)
    ro = pol.rollout(frame0, actions, torch.Generator().manual_seed(0))
    assert ro.data["latents"].dtype == ro.data["steps"].dtype == ro.data["logps"].dtype == torch.float32
    gap = (ro.data["latents"] - fp32.data["latents"]).abs().max()
    assert 0 < gap < 0.5                                             # the same draws, bf16-rounded velocities
    m = pol.accumulate(ro, torch.tensor([1.0, 0.0, -1.0]), 1.0)
    assert m["ratio_mean"] == pytest.approx(1.0) and 1e-4 < m["logp_mismatch"] < 0.5
    assert next(model.parameters()).dtype == torch.float32 and next(pol._shadow.parameters()).dtype == torch.bfloat16
    with torch.no_grad():                       # the copy follows the trained weights at the next rollout
        next(model.parameters()).add_(0.5)
    pol.rollout(frame0, actions, torch.Generator().manual_seed(0))
    assert torch.allclose(next(pol._shadow.parameters()).float(), next(model.parameters()), atol=0.05)


# --- the trainer end to end ----------------------------------------------------------------------
def _store(root, n_train=3, n_val=1):
    s = EpisodeStore.create(root, metadata={"resolution": list(HW)})
    for i in range(n_train + n_val):
        s.add(f"e{i}", make_episode(T=8, hw=HW, seed=i), split="train" if i < n_train else "val")
    return str(root)


def _checkpoints(tmp_path, paradigm="ar", seed=0):
    model, codec = _ar_parts(seed) if paradigm == "ar" else _dit_parts(seed)
    mcfg = AR if paradigm == "ar" else DIT
    wm = tmp_path / f"wm_{paradigm}"
    save_checkpoint(wm, wm_checkpoint_config(mcfg, codec.cfg, {}),
                    {"model": model.state_dict(), "codec": codec.state_dict()})
    icfg = IDMConfig(resolution=HW, clip_len=T, temporal_channels=4, channels=(4, 4), d_model=16, n_layers=1,
                     n_heads=2)
    torch.manual_seed(seed)
    from dataclasses import asdict
    save_checkpoint(tmp_path / "idm", {"kind": "idm", "arch": "vpt", "model": asdict(icfg)},
                    {"model": build_idm(icfg).state_dict()})
    return str(wm), str(tmp_path / "idm")


class LooksLike:
    """A reward with a known optimum: closeness of frames 1..T-1 to one target frame (a code's decoding)."""
    name = "looks_like"

    def __init__(self, target):
        self.target = target.float()

    def __call__(self, generated, real, actions):
        return 1 - (generated[:, 1:].float() - self.target).abs().mean(dim=(1, 2, 3, 4)) / 255


def _mean_reward(reward, tr, n=32):
    from rlir.data.sampler import load_clips
    clips = load_clips(tr.store, [("e0", 0)] * n, T)
    frames, actions = torch.from_numpy(clips["frames"]), torch.from_numpy(clips["actions"].astype(np.int64))
    ro = tr.policy.rollout(frames[:, 0], actions, torch.Generator().manual_seed(123))
    return float(reward(ro.video, None, None).mean())


def test_a_short_run_raises_the_reward_on_its_training_prompts(tmp_path):
    from rlir.rl.trainer import Posttrainer
    wm, idm = _checkpoints(tmp_path)
    data = _store(tmp_path / "data", n_train=1, n_val=0)
    cfg = GRPOConfig(world_model=wm, idm=idm, data=data, out=str(tmp_path / "run"), frames=T, batch_size=2,
                     num_generations=8, steps=15, lr=1e-2, seed=0, probe_clips=0, media_every=0, save_every=100,
                     rewards={"inverse": 1.0})
    tr = Posttrainer(cfg)
    reward = LooksLike(tr.codec.decode(torch.full((1, AR.tokens_per_frame), 3))[0])
    tr.reward_fns, tr.reward_weights = [reward], [1.0]
    before = _mean_reward(reward, tr)
    rewards = [tr.step(s)["reward"] for s in range(cfg.steps)]
    after = _mean_reward(reward, tr)
    assert after > before + 0.02, (before, after, rewards)
    assert np.mean(rewards[-3:]) > np.mean(rewards[:3])


@pytest.mark.parametrize("paradigm", ["ar", "diffusion"])
def test_posttrain_cli_resume_reproduces_the_uninterrupted_run(tmp_path, paradigm):
    wm, idm = _checkpoints(tmp_path, paradigm)
    data = _store(tmp_path / "data")
    base = ["posttrain", "--world-model", wm, "--idm", idm, "--judge", idm, "--data", data, "--set", "frames=4",
            "--set", "steps=3", "--set", "batch_size=2", "--set", "num_generations=4", "--set", "lr=1e-3",
            "--set", "eval_every=3", "--set", "probe_clips=2", "--set", "media_every=3", "--set", "save_every=1",
            "--set", "sde_steps=4", "--set", "eval_steps=3", "--set", "beta=0.01", "--set", "max_minutes=0"]
    assert main(["-q", *base, "--out", str(tmp_path / "full")]) == 0
    # ended after step 1 (a budget: the schedule stays over 3 steps), then resumed without it
    assert main(["-q", *base, "--set", "stop_after=1", "--out", str(tmp_path / "killed")]) == 0
    with open(tmp_path / "killed" / "metrics.jsonl", "a") as f:    # a row written after the last checkpoint
        f.write(json.dumps({"step": 2, "reward": -1.0}) + "\n")
    assert main(["-q", *base, "--out", str(tmp_path / "killed")]) == 0
    rows = lambda d: [json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]  # noqa
    full, resumed = rows("full"), rows("killed")
    assert [r["step"] for r in full] == [r["step"] for r in resumed] == [0, 1, 2, 3]
    for a, b in zip(full, resumed):
        for k in ("reward", "kl", "probe/reward", "judge/reward", "loss"):
            if k in a:
                assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k
    for key in ("reward", "reward_std", "frac_reward_zero_std", "kl", "clip_ratio/region_mean", "step_time"):
        assert key in full[1]
    assert "judge/reward" in full[3] and list((tmp_path / "full" / "media").glob("*.gif"))
    # the policy checkpoint is a world model that generate reads
    assert main(["-q", "generate", "--world-model", str(tmp_path / "full" / "checkpoints" / "policy"), "--data", data,
                 "--out", str(tmp_path / "gen"), "--frames", "4", "--split", "train", "--steps", "3"]) == 0


def test_posttrain_bad_inputs_are_one_line_errors(tmp_path, capsys):
    wm, idm = _checkpoints(tmp_path)
    data = _store(tmp_path / "data")
    assert main(["-q", "posttrain", "--world-model", idm, "--idm", idm, "--data", data, "--out", str(tmp_path / "o")]) == 2
    assert "not 'world_model'" in capsys.readouterr().err
    assert main(["-q", "posttrain", "--world-model", wm, "--idm", wm, "--data", data, "--out", str(tmp_path / "o")]) == 2
    assert "not 'idm'" in capsys.readouterr().err
    assert main(["-q", "posttrain", "--world-model", wm, "--idm", idm, "--data", data, "--out", str(tmp_path / "o"),
                 "--set", "num_generations=3", "--set", "gradient_accumulation_steps=5"]) == 2
    assert "gradient_accumulation_steps" in capsys.readouterr().err
    assert main(["-q", "posttrain", "--world-model", wm, "--idm", idm, "--data", data, "--out", str(tmp_path / "o"),
                 "--set", "rewards.lpips=1"]) == 2
    assert "rewards must name" in capsys.readouterr().err


def test_reward_of_the_wrong_shape_is_a_clear_error(tmp_path):
    from rlir.errors import RlirError
    from rlir.rl.trainer import Posttrainer
    wm, idm = _checkpoints(tmp_path)
    cfg = GRPOConfig(world_model=wm, idm=idm, data=_store(tmp_path / "data"), out=str(tmp_path / "o"), frames=T,
                     num_generations=2, probe_clips=0)
    tr = Posttrainer(cfg, reward_fns=([lambda g, r, a: torch.zeros(len(g), 2)], [1.0]))
    with pytest.raises(RlirError, match=r"returned shape \[4, 2\], expected \[4\]"):
        tr.step(0)


def test_nonfinite_loss_skips_the_update(tmp_path):
    from rlir.rl.trainer import Posttrainer
    wm, idm = _checkpoints(tmp_path)
    cfg = GRPOConfig(world_model=wm, idm=idm, data=_store(tmp_path / "data"), out=str(tmp_path / "o"), frames=T,
                     num_generations=4, probe_clips=0, lr=1e-2)
    tr = Posttrainer(cfg, reward_fns=([lambda g, r, a: torch.arange(len(g)).float()], [1.0]))
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    orig = tr.policy.accumulate
    tr.policy.accumulate = lambda ro, adv, scale, ref=None: orig(ro, adv * float("nan"), scale, ref)
    with pytest.warns(UserWarning, match="update skipped"):
        row = tr.step(0)
    assert row["skipped_updates"] == 1
    assert all(torch.equal(before[k], v) for k, v in tr.model.state_dict().items())


@pytest.mark.parametrize("mode", ["drop", "resample"])
def test_dynamic_sampling_leaves_out_or_replaces_groups_without_signal(tmp_path, mode):
    from rlir.rl.trainer import Posttrainer
    wm, idm = _checkpoints(tmp_path)
    cfg = GRPOConfig(world_model=wm, idm=idm, data=_store(tmp_path / "data"), out=str(tmp_path / "o"), frames=T,
                     batch_size=2, num_generations=4, probe_clips=0, lr=1e-2, dynamic_sampling=mode,
                     max_resample_rounds=2)
    calls = []

    def first_group_flat(g, r, a):        # group 0 of the first draw is flat; every other group has signal
        calls.append(len(g))
        out = torch.arange(len(g)).float()
        if len(calls) == 1:
            out[:4] = 1.0
        return out
    tr = Posttrainer(cfg, reward_fns=([first_group_flat], [1.0]))
    row = tr.step(0)
    if mode == "drop":
        assert len(calls) == 1 and row["frac_reward_zero_std"] == 0.5
    else:                                  # one fresh draw replaces the flat group
        assert len(calls) == 2 and row["frac_reward_zero_std"] == 0.0
    assert row["grad_norm"] > 0

    tr2 = Posttrainer(cfg, reward_fns=([lambda g, r, a: torch.ones(len(g))], [1.0]))
    before = {k: v.clone() for k, v in tr2.model.state_dict().items()}
    row2 = tr2.step(0)                     # every group flat: nothing to learn from, no update
    assert row2["frac_reward_zero_std"] == 1.0 and "grad_norm" not in row2
    assert all(torch.equal(before[k], v) for k, v in tr2.model.state_dict().items())


@pytest.mark.parametrize("outer", [0, 1])        # 1: MixGRPO-Flash, one DPM-Solver++ step each side of the window
def test_mixgrpo_window_trains_one_window_per_group_with_frame_credit(tmp_path, outer):
    from rlir.rl.trainer import Posttrainer
    wm, idm = _checkpoints(tmp_path, "diffusion")
    cfg = GRPOConfig(world_model=wm, idm=idm, data=_store(tmp_path / "data"), out=str(tmp_path / "o"), frames=T,
                     batch_size=2, num_generations=4, probe_clips=0, sde_steps=6, sde_window=2, advantage="frame",
                     reward_mode="f1_gain_soft", gamma=0.5, lr=1e-3, media_every=0, sde_outer_steps=outer)
    tr = Posttrainer(cfg)
    row = tr.step(0)
    ro = tr._last[0]
    chosen = ro.data["chosen"]
    assert tr.policy.n_train_steps == 2 and chosen.shape == (8, 2)
    assert torch.equal(chosen[:, 1], chosen[:, 0] + 1) and int(chosen.max()) <= cfg.sde_steps - 2
    assert all(len(set(chosen[g * 4:(g + 1) * 4, 0].tolist())) == 1 for g in range(2))   # a group shares it
    steps = torch.arange(cfg.sde_steps)
    outside = (steps[None] < chosen[:, :1]) | (steps[None] > chosen[:, 1:])             # [8, S]
    assert (ro.data["logps"].permute(0, 2, 1)[outside] == 0).all()                       # ODE there
    assert row["logp_mismatch"] < 1e-3 and row["ratio_mean"] == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ConfigError, match="sde_window"):
        GRPOConfig(world_model=wm, idm=idm, data="d", out="o", sde_steps=6, sde_window=6).validate()
    with pytest.raises(ConfigError, match="sde_outer_steps"):
        GRPOConfig(world_model=wm, idm=idm, data="d", out="o", sde_steps=6, sde_outer_steps=2).validate()
