"""The balanced inverse reward, frame-level credit, the random control and the trainer's signal checks."""
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from rlir.actions import GROUPS, N_CLASSES
from rlir.rl.grpo import frame_advantages, group_advantages, rewards_to_go, token_advantages
from rlir.rl.rewards import (PixelReward, RandomReward, combine_rewards, inverse_reward, per_frame_inverse_reward,
                             shown_groups)
from rlir.rl.rollouts import ARPolicy
from rlir.rl.trainer import GRPOConfig, posttrain
from tests.test_grpo import AR, T, _ar_parts, _checkpoints, _prompt, _store


def one_hot_logits(pred):
    return [torch.nn.functional.one_hot(torch.as_tensor(pred[..., g]), k).float() * 5 for g, k in enumerate(N_CLASSES)]


def _actions(n=15, seed=0):
    rng = np.random.default_rng(seed)
    a = np.zeros((1, n, 9), np.int64)
    a[0, :, 0] = rng.choice(3, n, p=[0.5, 0.3, 0.2])          # fore_back mostly null
    a[0, :, 1] = rng.choice(3, n, p=[0.7, 0.2, 0.1])
    a[0, :, 4] = (rng.random(n) < 0.15)                        # attack rare
    a[0, :, 7] = 5
    a[0, :, 8] = rng.choice([3, 5, 7], n)
    return a


def test_balanced_reward_pays_following_not_freezing():
    true = _actions()
    groups = shown_groups(["use"])
    assert GROUPS.index("use") not in groups and len(groups) == 8
    perfect = inverse_reward(one_hot_logits(true), torch.as_tensor(true), "balanced", groups).item()
    frozen_pred = np.zeros_like(true)
    frozen_pred[..., 7:] = 5                                    # "no action" on every frame: what a frozen video gets
    frozen = inverse_reward(one_hot_logits(frozen_pred), torch.as_tensor(true), "balanced", groups).item()
    assert perfect == pytest.approx(1.0)
    assert frozen < 0.7 < perfect
    # the mean over frames is each group's balanced accuracy (sklearn's), averaged over groups
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 11, true.shape) % np.array(N_CLASSES)
    noisy = np.where(rng.random(true.shape) < 0.3, noise, true)
    got = inverse_reward(one_hot_logits(noisy), torch.as_tensor(true), "balanced", groups).item()
    direction = lambda b: np.sign(b - 5)  # noqa: E731
    want = np.mean([balanced_accuracy_score(direction(true[0, :, g]) if g >= 7 else true[0, :, g],
                                            direction(noisy[0, :, g]) if g >= 7 else noisy[0, :, g])
                    for g in groups])
    assert got == pytest.approx(want, abs=1e-6)
    # per_group pays the frozen video almost as well as the right one: why balanced exists
    pg_frozen = inverse_reward(one_hot_logits(frozen_pred), torch.as_tensor(true), "per_group").item()
    assert pg_frozen > 0.7 and frozen < pg_frozen


def test_per_frame_rewards_average_to_the_clip_reward_in_every_mode():
    true = _actions(seed=3)
    lg = [torch.randn(1, 15, k, generator=torch.Generator().manual_seed(g)) for g, k in enumerate(N_CLASSES)]
    for mode in ("all", "per_group", "loglik", "balanced"):
        pf = per_frame_inverse_reward(lg, torch.as_tensor(true), mode)
        assert pf.shape == (1, 15)
        assert pf.mean(-1).item() == pytest.approx(inverse_reward(lg, torch.as_tensor(true), mode).item(), abs=1e-6)


def test_frame_advantages_sum_to_zero_per_frame_and_sequence_mode_unchanged():
    torch.manual_seed(0)
    r = torch.rand(3 * 4, 5)
    adv = frame_advantages(r, 4, "group", gamma=0.5)
    assert adv.shape == (12, 5)
    assert torch.allclose(adv.view(3, 4, 5).sum(1), torch.zeros(3, 5), atol=1e-5)
    # one std per group, pooled over rollouts and frames
    R = rewards_to_go(r, 0.5).view(3, 4, 5)
    assert adv.view(3, 4, 5).flatten(1).std(1) == pytest.approx(
        (R - R.mean(1, keepdim=True)).flatten(1).std(1) / (R.flatten(1).std(1) + 1e-4), rel=1e-4)
    # reward-to-go by hand
    assert torch.allclose(rewards_to_go(torch.tensor([[1.0, 0.0, 2.0]]), 0.5), torch.tensor([[1.5, 1.0, 2.0]]))
    assert torch.equal(rewards_to_go(r, 0.0), r)
    # the same rollout's advantage differs from frame to frame
    assert adv[0].std() > 0
    # sequence mode is what it was
    seq = r.mean(1)
    assert torch.equal(group_advantages(seq, 4), group_advantages(seq.clone(), 4))
    assert torch.allclose(group_advantages(seq, 4).view(3, 4).sum(1), torch.zeros(3), atol=1e-5)
    with pytest.raises(ValueError):
        frame_advantages(r[:10], 4)


def test_a_frames_tokens_get_its_own_advantage():
    S = AR.seq_len(T)
    adv = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.0, -0.5]])
    tok = token_advantages(adv, S, AR.tokens_per_frame, AR.block)
    assert tok.shape == (2, S)
    N, blk = AR.tokens_per_frame, AR.block
    assert (tok[:, :N] == 0).all()                          # frame 0: not generated
    for t in range(T - 1):
        assert torch.equal(tok[:, (t + 1) * blk:(t + 1) * blk + N], adv[:, t:t + 1].expand(-1, N))
        assert (tok[:, t * blk + N:(t + 1) * blk] == 0).all()  # action tokens
    seq = torch.tensor([1.0, 2.0])
    assert token_advantages(seq, S, N, blk) is seq


def test_frame_credit_reaches_only_its_frames_tokens():
    """With an advantage on frame 2 alone, the loss's gradient flows only through frame 2's log-probs."""
    model, codec = _ar_parts()
    pol = ARPolicy(model, AR, codec, T)
    frame0, actions = _prompt(2)
    ro = pol.rollout(frame0, actions, torch.Generator().manual_seed(0))
    from rlir.models.ar_world_model import score
    logp = score(model, AR, ro.data["tokens"], ro.data["mask"], 1.0, 1.0)
    tok = token_advantages(torch.tensor([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]]), logp.shape[1], AR.tokens_per_frame,
                           AR.block)
    nz = torch.nonzero(tok[0]).flatten()
    assert nz.min() == 2 * AR.block and nz.max() == 2 * AR.block + AR.tokens_per_frame - 1


def test_num_iterations_ratio_is_exactly_one_on_the_first_pass():
    model, codec = _ar_parts()
    pol = ARPolicy(model, AR, codec, T, top_p=0.8)
    frame0, actions = _prompt(4)
    ro = pol.rollout(frame0, actions, torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    adv = torch.tensor([[1.0, -1.0, 0.5], [-1.0, 1.0, 0.0], [0.5, 0.5, -1.0], [-0.5, -0.5, 0.5]])
    first = pol.accumulate(ro, adv, 1.0)
    assert first["ratio_mean"] == 1.0 and first["logp_mismatch"] < 1e-4
    opt.step()
    opt.zero_grad()
    second = pol.accumulate(ro, adv, 1.0)                   # the same batch again: "old" is the first pass's
    assert second["ratio_mean"] != 1.0


def test_random_reward_is_seeded_by_content_and_uniform():
    g = torch.randint(0, 256, (6, 5, 8, 8, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    a = RandomReward(3).per_frame(g, g, None)
    assert a.shape == (6, 4) and (a >= 0).all() and (a < 1).all()
    assert torch.equal(a, RandomReward(3).per_frame(g.clone(), None, None))      # same video, same numbers
    assert not torch.equal(a, RandomReward(4).per_frame(g, None, None))           # another seed
    assert not torch.equal(a[0], a[1])


def test_combine_rewards_per_frame_broadcasts_per_video_functions():
    g = torch.randint(0, 256, (4, 5, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    def video_level(gen, real, actions):
        return torch.arange(4.0)
    total, parts = combine_rewards([PixelReward(), video_level], [0.5, 1.0], g, g, None, per_frame=True)
    assert total.shape == (4, 4)
    assert torch.allclose(total - 0.5 * PixelReward().per_frame(g, g, None), torch.arange(4.0)[:, None].expand(4, 4))
    assert torch.allclose(parts["pixel_l1_ssim"], PixelReward()(g, g, None))
    seq, _ = combine_rewards([PixelReward()], [1.0], g, g, None)
    assert seq.shape == (4,)


def test_frame_credit_run_logs_the_signal_checks_and_resumes(tmp_path):
    wm, idm = _checkpoints(tmp_path)
    data = _store(tmp_path / "data")
    kw = dict(world_model=wm, idm=idm, data=data, frames=4, steps=3, batch_size=2, num_generations=4, lr=1e-3,
              eval_every=3, probe_clips=2, media_every=0, save_every=1, max_minutes=0, reward_mode="balanced",
              advantage="frame", gamma=0.5, num_iterations=2, gradient_accumulation_steps=2, lr_schedule="constant",
              warmup=1, top_p=0.8, rewards={"inverse": 1.0, "pixel_l1_ssim": 0.1})
    posttrain(GRPOConfig(out=str(tmp_path / "full"), **kw), progress=False)
    posttrain(GRPOConfig(out=str(tmp_path / "killed"), stop_after=1, **kw), progress=False)
    posttrain(GRPOConfig(out=str(tmp_path / "killed"), **kw), progress=False)
    rows = lambda d: [json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]  # noqa
    full, resumed = rows("full"), rows("killed")
    for k in ("grad_cosine_halves", "entropy", "rollout_brightness", "prompt_brightness", "reward_std_frame"):
        assert np.isfinite(full[1][k]), k
    assert -1 <= full[1]["grad_cosine_halves"] <= 1 and full[1]["entropy"] > 0
    assert full[1]["learning_rate"] == full[3]["learning_rate"] == pytest.approx(1e-3)   # constant after warmup
    for a, b in zip(full, resumed):
        for k in ("reward", "loss", "probe/reward"):
            if k in a:
                assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k


def test_random_control_run(tmp_path):
    wm, idm = _checkpoints(tmp_path)
    data = _store(tmp_path / "data")
    s = posttrain(GRPOConfig(world_model=wm, idm=idm, data=data, out=str(tmp_path / "ctl"), frames=4, steps=2,
                             batch_size=2, num_generations=4, lr=1e-3, probe_clips=0, media_every=0,
                             rewards={"random": 1.0}, advantage="frame"), progress=False)
    assert s["steps"] == 2 and 0 <= s["reward_first"] < 1


@pytest.mark.parametrize("bad", [{"advantage": "token"}, {"gamma": 1.5}, {"lr_schedule": "linear"},
                                 {"reward_mode": "balance"}])
def test_new_settings_are_checked(bad, tmp_path):
    from rlir.errors import ConfigError
    with pytest.raises(ConfigError):
        GRPOConfig(world_model="x", idm="y", data="z", out="o", **bad).validate()


def test_resume_with_other_settings_is_refused(tmp_path, capsys):
    from rlir.cli import main
    wm, idm = _checkpoints(tmp_path)
    data = _store(tmp_path / "data")
    base = ["-q", "posttrain", "--world-model", wm, "--idm", idm, "--data", data, "--out", str(tmp_path / "run"),
            "--set", "frames=4", "--set", "batch_size=2", "--set", "num_generations=4", "--set", "probe_clips=0",
            "--set", "media_every=0", "--set", "save_every=1"]
    assert main([*base, "--set", "steps=1"]) == 0
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert main([*base, "--set", "steps=2", "--set", "lr=1e-2"]) == 2
    err = capsys.readouterr().err
    assert "lr" in err and "new --out" in err and "Traceback" not in err
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before          # nothing written
    assert main([*base, "--set", "steps=2"]) == 0                               # a longer budget is a resume


def test_f1_gain_is_the_derivative_of_pooled_macro_f1():
    from rlir.eval.action_metrics import prf_from_confusion
    from rlir.rl.rewards import f1_gain_weights
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 3, (300,), generator=g)
    p = torch.where(torch.rand(300, generator=g) < 0.6, t, torch.randint(0, 3, (300,), generator=g))
    W = f1_gain_weights(p, t, 3, prior=0.0).double().numpy()
    C = np.bincount((t * 3 + p).numpy(), minlength=9).reshape(3, 3).astype(float)
    for a in range(3):
        for b in range(3):
            C2 = C.copy()
            C2[a, b] += 1e-5
            fd = (prf_from_confusion(C2)["f1_macro"] - prf_from_confusion(C)["f1_macro"]) / 1e-5
            assert W[a, b] == pytest.approx(fd, rel=1e-3, abs=1e-7)


def test_f1_gain_pays_reading_the_actions_over_a_constant_reading():
    """Within a batch, the rollout read correctly gains F1; one read as "no action" throughout does not."""
    true = np.concatenate([_actions(seed=s) for s in range(4)])            # 4 clips
    groups = shown_groups(["use"])
    frozen = np.zeros_like(true)
    frozen[..., 7:] = 5
    pred = np.concatenate([true[:2], frozen[2:]])                           # 2 read right, 2 frozen
    r = per_frame_inverse_reward(one_hot_logits(pred), torch.as_tensor(true), "f1_gain", groups).mean(-1)
    assert r[:2].min() > r[2:].max()


def test_branching_rollouts_share_everything_but_the_branch_frame():
    from rlir.utils.rand import GroupGenerators
    model, codec = _ar_parts()
    pol = ARPolicy(model, AR, codec, T, top_p=0.9)
    frame0, actions = _prompt(2)
    G = 4
    f0, act = frame0.repeat_interleave(G, 0), actions.repeat_interleave(G, 0)
    ro = pol.rollout_branch(f0, act, GroupGenerators([1, 2], G), G)
    k = int(ro.data["branch_frame"][0])
    N, blk = AR.tokens_per_frame, AR.block
    assert 1 <= k < T and ro.data["tokens"].shape[1] == k * blk + N
    assert (ro.data["mask"][:, :k * blk] == 0).all() and (ro.data["mask"][:, k * blk:] == 1).all()
    for p in range(2):
        grp = ro.video[p * G:(p + 1) * G]
        others = [t for t in range(T) if t != k]
        assert (grp[:, others] == grp[:1, others]).all()              # shared frames
        toks = ro.data["tokens"][p * G:(p + 1) * G, k * blk:]
        assert len({tuple(x.tolist()) for x in toks}) > 1              # the branch frame differs
    adv = torch.randn(2 * G, T - 1)
    m = pol.accumulate(ro, adv, 1.0)
    assert m["ratio_mean"] == 1.0 and m["logp_mismatch"] < 1e-4


def test_f1_gain_soft_pays_a_confident_right_reading_not_a_frozen_or_unsure_one():
    """Hand-made logits: read right > read as "no action" throughout (a frozen video) and > unsure (flat);
    with near one-hot logits it is the argmax f1_gain."""
    true = np.concatenate([_actions(seed=s) for s in range(6)])            # 6 clips
    groups = shown_groups(["use"])
    frozen = np.zeros_like(true)
    frozen[..., 7:] = 5
    right, still = one_hot_logits(true[:2]), one_hot_logits(frozen[2:4])
    flat = [torch.zeros(2, 15, k) for k in N_CLASSES]                      # the IDM has no idea
    lg = [torch.cat(x) for x in zip(right, still, flat)]
    r = per_frame_inverse_reward(lg, torch.as_tensor(true), "f1_gain_soft", groups).mean(-1)
    assert r[:2].min() > r[2:].max()                                       # neither freezing nor doubt pays
    sharp = [x[:4] * 20 for x in lg]                                       # near one-hot: soft == argmax
    pred = np.concatenate([true[:2], frozen[2:4]])
    soft = per_frame_inverse_reward(sharp, torch.as_tensor(true[:4]), "f1_gain_soft", groups)
    hard = per_frame_inverse_reward(one_hot_logits(pred), torch.as_tensor(true[:4]), "f1_gain", groups)
    assert torch.allclose(soft, hard, atol=1e-3)


def test_discrete_reward_groups_leave_the_camera_out():
    from rlir.rl.trainer import build_reward_fns
    idm = torch.nn.Linear(1, 1)
    for setting, camera_in in (("shown", True), ("discrete", False)):
        fns, _ = build_reward_fns(GRPOConfig(reward_groups=setting, reward_mode="f1_gain_soft"), idm, ["use"])
        g = fns[0].scorer.groups
        assert (GROUPS.index("camera_yaw") in g) == camera_in and (GROUPS.index("camera_pitch") in g) == camera_in
        assert GROUPS.index("use") not in g and GROUPS.index("attack") in g
