"""The diffusion world model: block-causal attention, cached sampling, ODE/SDE samplers, scorer, training."""
import numpy as np
import pytest
import torch

from rlir.data.store import EpisodeStore
from rlir.models.dit_world_model import (PRESETS, DiTConfig, DiTWorldModel, append_cache, flow_matching_loss,
                                         split_cache)
from rlir.models.flow_samplers import flow_sigmas, ode_solve, rollout, score_steps, sde_step
from tests.conftest import make_episode

CFG = DiTConfig(latent_dim=4, tokens_per_frame=6, clip_len=5, d_model=32, mlp=64, n_heads=4, n_layers=2)


def _model(seed=0):
    torch.manual_seed(seed)
    m = DiTWorldModel(CFG)
    with torch.no_grad():             # leave AdaLN-Zero's identity start so every path carries signal
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


def _inputs(B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, CFG.clip_len, CFG.tokens_per_frame, CFG.latent_dim, generator=g),
            torch.rand(B, CFG.clip_len, generator=g), torch.randint(0, 2, (B, CFG.clip_len, 9), generator=g))


def test_causality_frame_k_plus_1_never_changes_frames_up_to_k():
    m = _model()
    x, s, a = _inputs()
    v = m(x, s, a)
    for k in range(CFG.clip_len - 1):
        x2, s2, a2 = x.clone(), s.clone(), a.clone()
        x2[:, k + 1] += 1.0
        s2[:, k + 1] = 0.5 * s2[:, k + 1]
        a2[:, k] = 1 - a2[:, k]              # a_k leads into frame k+1
        v2 = m(x2, s2, a2)
        assert torch.equal(v[:, : k + 1], v2[:, : k + 1])
        assert (v[:, k + 1] - v2[:, k + 1]).abs().max() > 1e-3


def test_cached_frame_by_frame_equals_the_full_pass():
    m = _model()
    x, s, a = _inputs()
    v, cache, outs = m(x, s, a), None, []
    for f in range(CFG.clip_len):
        vf, kv = m.step_frame(x[:, f], s[:, f], None if f == 0 else a[:, f - 1], f, cache)
        outs.append(vf)
        cache = append_cache(cache, kv)
    assert (torch.stack(outs, 1) - v).abs().max() < 1e-5


def test_a_finished_frame_cached_inside_the_next_frames_call_is_the_separate_pass():
    m = _model()
    x, s, a = _inputs()
    zero = torch.zeros(x.shape[0])
    cache = None
    for f in range(1, CFG.clip_len):
        prev_a = None if f == 1 else a[:, f - 2]
        sep = append_cache(cache, m.step_frame(x[:, f - 1], zero, prev_a, f - 1, cache)[1])
        v_sep = m.step_frame(x[:, f], s[:, f], a[:, f - 1], f, sep)[0]
        v, kvs = m.step_frame(x[:, f], s[:, f], a[:, f - 1], f, cache, finished=(x[:, f - 1], zero, prev_a))
        done, _ = split_cache(kvs, CFG.tokens_per_frame)
        assert (v - v_sep).abs().max() < 1e-5
        assert all((k1 - k2).abs().max() < 1e-5 and (v1 - v2).abs().max() < 1e-5
                   for (k1, v1), (k2, v2) in zip(append_cache(cache, done), sep))
        cache = sep


@pytest.mark.parametrize("kw", [dict(mode="ode", steps=4), dict(mode="ode", steps=4, solver="euler", context_sigma=0.1),
                                dict(mode="sde", steps=5, window=2, window_start=torch.tensor([0, 1, 3])),
                                dict(mode="sde", steps=6, window=2, window_start=torch.tensor([0, 2, 4]), outer_steps=1)])
def test_rollout_with_the_cache_folded_or_preallocated_is_the_rollout_with_its_own_pass(kw):
    m = _model()
    x, _, a = _inputs()
    r = [rollout(m, x[:, 0], a, CFG.clip_len, generator=torch.Generator().manual_seed(1), fold_cache=fold,
                 prealloc_cache=pre, **kw) for fold, pre in ((False, False), (True, False), (False, True), (True, True))]
    for other in r[1:]:
        if kw["mode"] == "ode":
            assert (other - r[0]).abs().max() < 1e-5
        else:
            assert (other.latents - r[0].latents).abs().max() < 1e-5 and (other.logps - r[0].logps).abs().max() < 1e-5


def test_clean_context_loss_is_the_samplers_situation_frame_by_frame():
    """The teacher-forced objective: frame f (noisy) sees frames 0..f-1 clean, exactly as the cached
    sampler conditions it; its loss is the MSE of that velocity against eps - x0 over frames 1..T-1."""
    m = _model()
    x0, s, a = _inputs()
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    loss = flow_matching_loss(m, x0, a, sigma=s, eps=eps, clean_context=True)
    xs = (1 - s[..., None, None]) * x0 + s[..., None, None] * eps
    cache, errs = None, []
    for f in range(CFG.clip_len):
        if f > 0:
            v, _ = m.step_frame(xs[:, f], s[:, f], a[:, f - 1], f, cache)
            errs.append(((v - (eps[:, f] - x0[:, f])) ** 2).mean())
        _, kv = m.step_frame(x0[:, f], torch.zeros(x0.shape[0]), None if f == 0 else a[:, f - 1], f, cache)
        cache = append_cache(cache, kv)
    assert abs(float(loss) - float(torch.stack(errs).mean())) < 1e-5
    # diffusion forcing sees a noisy past instead: a different number on the same draw
    assert abs(float(loss) - float(flow_matching_loss(m, x0, a, sigma=s, eps=eps))) > 1e-3


def test_sde_step_with_zero_noise_is_the_euler_step():
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(4, 6, 4, generator=g), torch.randn(4, 6, 4, generator=g)
    s = flow_sigmas(10)
    for i in range(10):
        x1, mean, _, _ = sde_step(x, v, s[i], s[i + 1], 0.0, float(s[1]), noise=torch.randn(x.shape, generator=g))
        assert torch.allclose(x1, x + (s[i + 1] - s[i]) * v, atol=1e-6) and torch.equal(x1, mean)


def test_sde_log_prob_is_the_gaussian_density():
    x, v, noise = torch.zeros(2, 3), torch.ones(2, 3), torch.randn(2, 3)
    x1, mean, std, lp = sde_step(x, v, 0.5, 0.4, 0.75, 0.9, noise=noise)
    ref = torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(x1).mean(1)
    assert torch.allclose(lp, ref, atol=1e-5)


@pytest.mark.parametrize("solver", ["euler", "dpm++"])
def test_ode_solvers_land_on_the_data_for_the_exact_velocity(solver):
    c = torch.randn(2, 6, 4)          # a point mass: v(x, sigma) = (x - c) / sigma exactly
    out = ode_solve(lambda x, s: (x - c) / s if s > 0 else torch.zeros_like(x), torch.randn(2, 6, 4), 18, solver)
    assert (out - c).abs().max() < 1e-5


def test_sde_sampler_and_scorer_agree_and_the_ratio_is_one():
    m = _model()
    x, _, a = _inputs()
    tr = rollout(m, x[:, 0], a, CFG.clip_len, steps=10, mode="sde", eta=0.75,
                 generator=torch.Generator().manual_seed(0))
    assert tr.steps.shape == (3, CFG.clip_len - 1, 11, 6, 4) and tr.logps.shape == (3, CFG.clip_len - 1, 10)
    assert torch.equal(tr.steps[:, :, -1], tr.latents[:, 1:])
    for idx in (torch.zeros(3), torch.full((3,), 9), torch.tensor([0, 4, 8])):
        m.train()
        lp, mean, std = score_steps(m, tr, a, idx)
        ref = tr.logps.gather(2, idx.long().view(3, 1, 1).expand(3, CFG.clip_len - 1, 1))[..., 0]
        assert (lp - ref).abs().max() < 1e-4
        assert torch.allclose(torch.exp(lp - ref), torch.ones_like(lp), atol=1e-4)
        lp.sum().backward()               # the scorer carries gradient into the model
        assert m.out.weight.grad.abs().sum() > 0
        m.zero_grad()



def test_mixgrpo_window_is_sde_inside_ode_outside_and_scores_its_own_steps():
    m = _model()
    x, _, a = _inputs()
    start = torch.tensor([0, 3, 7])
    tr = rollout(m, x[:, 0], a, CFG.clip_len, steps=10, mode="sde", eta=0.75,
                 generator=torch.Generator().manual_seed(0), window_start=start, window=2)
    inside = torch.zeros(3, 10, dtype=torch.bool)
    for b, s in enumerate(start.tolist()):
        inside[b, s:s + 2] = True
    # log-probs only where the sampler was stochastic; elsewhere the step is exactly Euler's
    assert (tr.logps[~inside[:, None, :].expand_as(tr.logps)] == 0).all()
    assert (tr.logps[inside[:, None, :].expand_as(tr.logps)] != 0).all()
    i, s = 5, flow_sigmas(10)                           # step 5: outside sample 0's window, inside none
    with torch.no_grad():
        v = m.velocity_teacher_forced(tr.latents, tr.steps[:, :, i], torch.full((3, CFG.clip_len - 1), float(s[i])), a)
    euler = tr.steps[:, :, i] + v * (s[i + 1] - s[i])
    assert torch.allclose(euler[0], tr.steps[0, :, i + 1], atol=1e-4)            # sample 0: the ODE step
    # the window's own steps score as sampled (the GRPO ratio starts at 1)
    lp, _, _ = score_steps(m.train(), tr, a, start + 1)
    ref = tr.logps.gather(2, (start + 1).view(3, 1, 1).expand(3, CFG.clip_len - 1, 1))[..., 0]
    assert (lp - ref).abs().max() < 1e-4
def test_window_schedule_takes_at_most_k_ode_steps_each_side_and_the_window_on_the_grid():
    from rlir.models.flow_samplers import window_schedule
    i_from, i_to, kind = window_schedule(torch.tensor([0, 1, 3, 7]), 2, 10, 2)
    assert i_from.shape == (4, 6)                        # K + W + K slots (every slot used by some sample)
    for b, w in enumerate([0, 1, 3, 7]):
        used = kind[b] > 0
        f, t, k = i_from[b, used].tolist(), i_to[b, used].tolist(), kind[b, used].tolist()
        assert f[0] == 0 and t[-1] == 10 and all(t[j] == f[j + 1] for j in range(len(f) - 1))   # 1 -> 0, no gap
        assert [(a, c) for a, c, q in zip(f, t, k) if q == 2] == [(w, w + 1), (w + 1, w + 2)]
        assert sum(q == 1 for q in k) == min(w, 2) + min(8 - w, 2)
    # one group alone: no padding, K + W + K calls at most
    assert window_schedule(torch.tensor([4, 4]), 2, 10, 2)[2].shape == (2, 6)
    assert window_schedule(torch.tensor([0, 0]), 2, 10, 2)[2].shape == (2, 4)


def test_flash_window_sampler_scores_its_own_steps_and_a_group_ignores_its_batch():
    """MixGRPO-Flash: DPM-Solver++ outside the window, few calls; the window's steps score as sampled (the
    ratio starts at 1), and a group's rollout does not depend on another group's window in its batch."""
    from rlir.utils.rand import GroupGenerators
    m = _model()
    x, _, a = _inputs(B=4)
    start = torch.tensor([0, 0, 5, 5])
    gen = lambda: GroupGenerators([11, 12], 2, "cpu")                   # noqa: E731
    tr = rollout(m, x[:, 0], a, CFG.clip_len, steps=10, mode="sde", eta=0.75, generator=gen(),
                 window_start=start, window=2, outer_steps=2)
    assert torch.isfinite(tr.latents).all()
    inside = torch.zeros(4, 10, dtype=torch.bool)
    for b, s_ in enumerate(start.tolist()):
        inside[b, s_:s_ + 2] = True
    assert (tr.logps[~inside[:, None, :].expand_as(tr.logps)] == 0).all()
    assert (tr.logps[inside[:, None, :].expand_as(tr.logps)] != 0).all()
    for k in range(2):
        lp, _, _ = score_steps(m.train(), tr, a, start + k)
        ref = tr.logps.gather(2, (start + k).view(4, 1, 1).expand(4, CFG.clip_len - 1, 1))[..., 0]
        assert (lp - ref).abs().max() < 1e-4
    m.eval()
    alone = rollout(m, x[2:, 0], a[2:], CFG.clip_len, steps=10, mode="sde", eta=0.75,
                    generator=GroupGenerators([12], 2, "cpu"), window_start=start[2:], window=2, outer_steps=2)
    assert torch.allclose(alone.latents, tr.latents[2:], atol=1e-5)
    # with as many ODE steps as the grid has, the frames are those of DPM-Solver++ on it: close to the
    # Euler-on-the-grid window sampler's, and fewer steps move them further (both from the same noise)
    euler = rollout(m, x[:, 0], a, CFG.clip_len, steps=10, mode="sde", eta=0.75, generator=gen(),
                    window_start=start, window=2)
    fine = rollout(m, x[:, 0], a, CFG.clip_len, steps=10, mode="sde", eta=0.75, generator=gen(),
                   window_start=start, window=2, outer_steps=10)
    assert (fine.latents - euler.latents).abs().mean() < (tr.latents - euler.latents).abs().mean() + 1e-6


def test_context_noise_conditions_on_a_renoised_cache_and_only_for_the_ode():
    m = _model()
    x, _, a = _inputs()
    g = lambda: torch.Generator().manual_seed(0)             # noqa: E731
    clean = rollout(m, x[:, 0], a, 3, steps=4, solver="euler", generator=g())
    assert torch.equal(rollout(m, x[:, 0], a, 3, steps=4, solver="euler", generator=g(), context_sigma=0.0), clean)
    noisy = rollout(m, x[:, 0], a, 3, steps=4, solver="euler", generator=g(), context_sigma=0.3)
    assert torch.equal(noisy[:, 0], x[:, 0])                  # the given frame is returned as is
    assert (noisy[:, 1] - clean[:, 1]).abs().max() > 1e-4     # frame 1 saw a re-noised frame 0
    # by hand: frame 1 is the Euler ODE under frame 0 cached at sigma 0.3 after re-noising
    gen = g()
    z0 = 0.7 * x[:, 0] + 0.3 * torch.randn(x[:, 0].shape, generator=gen)
    with torch.no_grad():
        _, cache = m.step_frame(z0, torch.full((3,), 0.3), None, 0, None)
        ref = ode_solve(lambda y, s: m.step_frame(y, torch.full((3,), s), a[:, 0], 1, cache)[0],
                        torch.randn(x[:, 0].shape, generator=gen), 4, "euler")
    assert (noisy[:, 1] - ref).abs().max() < 1e-5
    with pytest.raises(ValueError, match="ODE sampler only"):
        rollout(m, x[:, 0], a, 3, steps=4, mode="sde", generator=g(), context_sigma=0.3)


def test_paper_presets_within_ten_percent_of_table_5():
    for name, target in (("310M", 310e6), ("774M", 774e6)):
        with torch.device("meta"):
            m = DiTWorldModel(DiTConfig(latent_dim=16, tokens_per_frame=336, clip_len=16, **PRESETS[name]))
        n = sum(p.numel() for p in m.parameters())
        assert abs(n - target) / target < 0.10, (name, n)


def test_flow_matching_learns_a_static_scene():
    torch.manual_seed(0)
    m = DiTWorldModel(CFG)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    x0 = torch.randn(8, 1, 6, 4).repeat(1, CFG.clip_len, 1, 1)
    a = torch.zeros(8, CFG.clip_len, 9, dtype=torch.long)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        first = float(flow_matching_loss(m, x0, a, torch.Generator().manual_seed(99)))
    for _ in range(80):
        loss = flow_matching_loss(m, x0, a, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = float(flow_matching_loss(m, x0, a, torch.Generator().manual_seed(99)))
    assert last < 0.7 * first


def test_train_autoencoder_then_diffusion_model_and_generate(tmp_path):
    from rlir.cli import main
    s = EpisodeStore.create(tmp_path / "data", metadata={"resolution": [16, 16]})
    for k in range(5):
        s.add(f"e{k}", make_episode(12, (16, 16), seed=k), split="val" if k == 0 else ("test" if k == 1 else "train"))
    common = ["--set", "model.resolution=[16,16]", "--set", "model.channels=[16,16]", "--set", "model.dim=4",
              "--set", "batch_size=4", "--set", "eval_every=2", "--set", "val_frames=8"]
    assert main(["-q", "autoencoder", "train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "ae"),
                 "--set", "steps=4", "--set", "precision=bf16", *common]) == 0   # bf16: the latent scale stays float
    assert main(["-q", "wm", "train", "--paradigm", "diffusion", "--data", str(tmp_path / "data"),
                 "--autoencoder", str(tmp_path / "ae" / "checkpoints" / "best"), "--out", str(tmp_path / "wm"),
                 "--set", "steps=3", "--set", "eval_every=3", "--set", "batch_size=2", "--set", "val_clips=2",
                 "--set", "dit.clip_len=4", "--set", "dit.d_model=32", "--set", "dit.mlp=64",
                 "--set", "dit.n_layers=1", "--set", "clean_context=0.5"]) == 0
    import json
    rows = [json.loads(line) for line in (tmp_path / "wm" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val/loss" in r][-1]    # both objectives measured; the best is chosen on the sampler's
    assert np.isfinite(val["val/loss"]) and np.isfinite(val["val/loss_clean_context"])
    assert json.loads((tmp_path / "wm" / "train_summary.json").read_text())["best_key"] == "val/loss_clean_context"
    gen = tmp_path / "gen"
    assert main(["-q", "generate", "--world-model", str(tmp_path / "wm" / "checkpoints" / "best"), "--data",
                 str(tmp_path / "data"), "--out", str(gen), "--frames", "4", "--steps", "3"]) == 0
    ep, real = EpisodeStore(gen).load("e1-00004"), EpisodeStore(tmp_path / "data").load("e1").slice(4, 8)
    assert np.array_equal(ep.frames[0], real.frames[0]) and np.array_equal(ep.actions, real.actions)
    # the ODE under bf16 autocast: the same clips, frames close to float32's (same noise, same solver)
    assert main(["-q", "generate", "--world-model", str(tmp_path / "wm" / "checkpoints" / "best"), "--data",
                 str(tmp_path / "data"), "--out", str(tmp_path / "gen_bf16"), "--frames", "4", "--steps", "3",
                 "--precision", "bf16"]) == 0
    eb = EpisodeStore(tmp_path / "gen_bf16").load("e1-00004")
    assert eb.frames.dtype == np.uint8 and np.array_equal(eb.frames[0], ep.frames[0])
    assert np.abs(eb.frames.astype(int) - ep.frames.astype(int)).mean() < 8
    # an AR tokenizer is the wrong codec for a diffusion model: a clear error, exit 2
    assert main(["-q", "wm", "train", "--paradigm", "diffusion", "--data", str(tmp_path / "data"),
                 "--autoencoder", str(tmp_path / "wm" / "checkpoints" / "best"), "--out", str(tmp_path / "x")]) == 2
    # a share outside [0, 1] is refused before anything runs
    assert main(["-q", "wm", "train", "--paradigm", "diffusion", "--data", str(tmp_path / "data"),
                 "--autoencoder", str(tmp_path / "ae" / "checkpoints" / "best"), "--out", str(tmp_path / "y"),
                 "--set", "clean_context=1.5"]) == 2
    assert not (tmp_path / "y").exists()
