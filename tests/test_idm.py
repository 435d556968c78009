
import numpy as np
import pytest
import torch

from rlir.actions import N_CLASSES
from rlir.data.sampler import ClipSampler
from rlir.data.store import EpisodeStore, read_episode
from rlir.errors import RlirError
from rlir.models.idm import IDMConfig, build_idm
from rlir.rl.rewards import InverseReward, inverse_reward
from rlir.training.idm_trainer import (IDMTrainConfig, augment, load_idm, predict, subset_ids, train_idm)
from rlir.utils.checkpoint import save_checkpoint
from tests.conftest import make_episode

SMALL = dict(resolution=(12, 16), clip_len=6, channels=(8, 8), temporal_channels=4, d_model=16, n_heads=2, n_layers=1)


def one_hot_logits(pred: np.ndarray) -> list[torch.Tensor]:
    """[B, n, 9] class ids -> logits whose argmax is pred."""
    return [torch.nn.functional.one_hot(torch.as_tensor(pred[..., g]), k).float() * 5 for g, k in enumerate(N_CLASSES)]


def test_reward_modes_by_hand():
    true = np.zeros((1, 4, 9), np.int64)
    true[..., 7:] = 5
    pred = true[:, :3].copy()
    pred[0, 0, 4] = 1              # frame 0: attack wrong
    pred[0, 1, [0, 8]] = [1, 6]    # frame 1: two groups wrong; frame 2 right
    lg = one_hot_logits(pred)
    t = torch.as_tensor(true)
    assert inverse_reward(lg, t, "all").item() == pytest.approx(1 / 3)
    assert inverse_reward(lg, t, "per_group").item() == pytest.approx((8 / 9 + 7 / 9 + 1) / 3)
    ll = inverse_reward(lg, t, "loglik").item()
    assert ll < 0 and ll > inverse_reward([x * 0 for x in lg], t, "loglik").item() - 50
    with pytest.raises(ValueError):
        inverse_reward(lg, t, "l1")


@pytest.mark.parametrize("arch,extra", [("vpt", {}), ("vpt", dict(temporal_stride=1, temporal_layers=1)),
                                        ("cnn3d", {})])
def test_idm_shapes_and_noncausal(arch, extra):
    torch.manual_seed(0)
    m = build_idm(IDMConfig(arch=arch, **SMALL, **extra)).eval()
    x = torch.randint(0, 256, (2, 6, 12, 16, 3), dtype=torch.uint8)
    out = m(x)
    assert [o.shape for o in out] == [(2, 5, k) for k in N_CLASSES]
    y = x.clone()
    y[:, 5] = 255 - y[:, 5]                     # change only the last frame
    out2 = m(y)
    assert not torch.allclose(out[0][:, 0], out2[0][:, 0])   # the first action sees the future


def test_idm_temporal_options_checked():
    with pytest.raises(RlirError, match="temporal_stride"):
        IDMConfig(temporal_stride=3).validate()


def test_inverse_reward_batched_deterministic():
    torch.manual_seed(0)
    m = build_idm(IDMConfig(**SMALL))
    r = InverseReward(m, mode="per_group", batch_size=3)
    x = torch.randint(0, 256, (7, 6, 12, 16, 3), dtype=torch.uint8)
    a = torch.as_tensor(np.stack([make_episode(6, seed=i).actions for i in range(7)]))
    r1, r2 = r(x, a), InverseReward(m, mode="per_group", batch_size=7)(x, a)
    assert r1.shape == (7,) and torch.equal(r1, r2) and ((r1 >= 0) & (r1 <= 1)).all()
    with pytest.raises(ValueError, match="actions"):
        r(x, a[:, :4])


def test_windows_never_cross_episodes(tmp_path):
    store = EpisodeStore.create(tmp_path)
    for i in range(3):
        ep = make_episode(9, seed=i)
        ep.frames[:] = i * 50                     # every frame tells which episode it is from
        store.add(f"e{i}", ep, "train")
    b = ClipSampler(store, clip_len=6, batch_size=200, seed=0).sample()
    for clip, eid in zip(b["frames"], b["episode_id"]):
        assert (clip == int(eid[1:]) * 50).all()
    assert b["start"].max() <= 3


def test_augment_keeps_clip_consistent():
    rng = np.random.default_rng(0)
    x = torch.zeros(2, 4, 12, 16, 3, dtype=torch.uint8)
    x[:, :, 5:7, 5:7] = 200
    y = augment(x, rng, 0.2, 2)
    assert y.shape == x.shape and y.dtype == torch.uint8
    for b in range(2):   # one shift and one brightness for every frame of a clip
        assert all(torch.equal(y[b, 0], y[b, t]) for t in range(4))


def test_train_resume_and_checkpoint_kinds(tmp_path):
    store = EpisodeStore.create(tmp_path / "d", metadata={"resolution": [12, 16]})
    for i in range(12):
        store.add(f"r{i}", make_episode(20, seed=i), "val" if i < 2 else "train",
                  {"recording": i, "seed": 0})
    a, b = subset_ids(store, "a"), subset_ids(store, "b")
    assert a and b and not set(a) & set(b) and set(a) | set(b) == set(store.ids("train"))
    cfg = IDMTrainConfig(data=str(tmp_path / "d"), out=str(tmp_path / "run"), model=IDMConfig(**SMALL),
                         subset="all", steps=6, eval_every=3, batch_size=4, val_clips=8)
    full = train_idm(cfg, progress=False)
    # a run killed after its first checkpoint resumes to the same end state
    cfg2 = IDMTrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "run2")})
    assert train_idm(cfg2, progress=False, stop_at_step=3)["steps"] == 3
    resumed = train_idm(cfg2, progress=False)
    assert resumed["steps"] == full["steps"] == 6
    m1, _ = load_idm(tmp_path / "run" / "checkpoints" / "best")
    from rlir.utils.checkpoint import load_tensors
    w1 = load_tensors(tmp_path / "run" / "checkpoints" / "last")
    w2 = load_tensors(tmp_path / "run2" / "checkpoints" / "last")
    assert all(torch.allclose(w1[k], w2[k], atol=1e-5) for k in w1)
    assert predict(m1, np.zeros((2, 6, 12, 16, 3), np.uint8)).shape == (2, 5, 9)
    # the schedule: cosine ends at 0, constant holds the rate after the warmup
    import json
    last_lr = lambda run: json.loads((run / "checkpoints" / "last" / "config.json").read_text())["sched"]["_last_lr"][0]  # noqa: E731
    assert last_lr(tmp_path / "run") < 1e-9
    cfg3 = IDMTrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "run3"), "lr_schedule": "constant", "warmup": 2})
    train_idm(cfg3, progress=False)
    assert last_lr(tmp_path / "run3") == pytest.approx(cfg.lr)
    with pytest.raises(RlirError, match="lr_schedule"):
        IDMTrainConfig(lr_schedule="linear").validate()
    # wrong kinds and damaged files are clear errors
    save_checkpoint(tmp_path / "wm", {"kind": "world_model"}, {"model": {"w": torch.zeros(1)}})
    with pytest.raises(RlirError, match="world_model"):
        load_idm(tmp_path / "wm")
    with pytest.raises(RlirError, match="not a checkpoint"):
        load_idm(tmp_path / "d")
    best = tmp_path / "run" / "checkpoints" / "best"
    (best / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(RlirError, match="damaged"):
        load_idm(best)


def test_optical_flow_reads_a_shift():
    from rlir.models.idm import optical_flow
    rng = np.random.default_rng(0)
    img = np.kron(rng.integers(0, 256, (12, 16, 3)), np.ones((4, 4, 1))).astype(np.uint8)   # 48x64 blocks
    clip = np.stack([np.roll(img, 2 * t, axis=1) for t in range(3)])[None]                    # 2 px right a frame
    f = optical_flow(clip)
    assert f.shape == (1, 3, 48, 64, 2)
    inner = f[0, :2, 8:-8, 8:-8]
    assert abs(inner[..., 0].median().item() - 2.0) < 0.25 and abs(inner[..., 1].median().item()) < 0.25
    assert (f[0, 2] == 0).all()                                                              # no next frame


def test_flow_idm_trains_and_reads_flow_itself(tmp_path):
    from rlir.models.idm import optical_flow
    with pytest.raises(RlirError, match="judge"):
        IDMConfig(arch="cnn3d", flow=True).validate()
    store = EpisodeStore.create(tmp_path / "d", metadata={"resolution": [12, 16]})
    for i in range(6):
        store.add(f"r{i}", make_episode(20, seed=i), "val" if i < 1 else "train", {"recording": i, "seed": 0})
    cfg = IDMTrainConfig(data=str(tmp_path / "d"), out=str(tmp_path / "run"), model=IDMConfig(**SMALL, flow=True),
                         subset="all", steps=4, eval_every=2, batch_size=4, val_clips=4)
    assert train_idm(cfg, progress=False)["steps"] == 4
    m, c = load_idm(tmp_path / "run" / "checkpoints" / "best")
    assert c["model"]["flow"] is True and m.temporal[0].in_channels == 8
    x = torch.as_tensor(store.load("r0").frames[None, :6])
    own, given = m(x), m(x, flow=optical_flow(x))    # inference computes the flow the cache gave training
    assert all(torch.allclose(a, b) for a, b in zip(own, given))
    y = augment(x, np.random.default_rng(0), 0.2, 2, flow=optical_flow(x))
    assert isinstance(y, tuple) and y[1].shape == (1, 6, 12, 16, 2)


def test_reward_idm_ensemble(tmp_path):
    from rlir.training.idm_trainer import load_reward_idm
    paths = []
    for k, extra in enumerate([{}, {"flow": True}, {"resolution": (24, 32)}]):
        torch.manual_seed(k)
        cfg = IDMConfig(**{**SMALL, **extra})
        m = build_idm(cfg)
        p = tmp_path / f"idm{k}"
        save_checkpoint(p, {"kind": "idm", "model": {**cfg.__dict__, "resolution": list(cfg.resolution)}},
                        {"model": m.state_dict()})
        paths.append(str(p))
    single, _ = load_reward_idm(paths[0])
    ens, cfg = load_reward_idm(f"{paths[0]},{paths[1]}")
    assert cfg["model"]["flow"] is False and len(ens.members) == 2
    x = torch.randint(0, 256, (2, 6, 12, 16, 3), dtype=torch.uint8)
    out, a, b = ens(x), ens.members[0](x), ens.members[1](x)
    for g in range(9):   # log of the mean of the members' softmaxes: a distribution between theirs
        p = out[g].exp()
        assert torch.allclose(p.sum(-1), torch.ones(2, 5), atol=1e-5)
        assert torch.allclose(p, (a[g].softmax(-1) + b[g].softmax(-1)) / 2, atol=1e-5)
    same, _ = load_reward_idm(f"{paths[0]},{paths[0]}")
    assert all(torch.allclose(s.log_softmax(-1), o, atol=1e-5) for s, o in zip(single(x), same(x)))
    with pytest.raises(RlirError, match="ensemble"):
        load_reward_idm(f"{paths[0]},{paths[2]}")


def test_aux_motion_head_trains_on_recorded_motion(tmp_path):
    from rlir.training.idm_trainer import motion_loss
    store = EpisodeStore.create(tmp_path / "d", metadata={"resolution": [12, 16]})
    for i in range(6):
        ep = make_episode(20, seed=i)
        ep.motion = np.random.default_rng(i).normal(0, 5, (20, 3)).astype(np.float32)
        store.add(f"r{i}", ep, "val" if i < 1 else "train", {"recording": i, "seed": 0})
    assert EpisodeStore(tmp_path / "d").load("r2").motion.shape == (20, 3)      # written and read back
    cfg = IDMTrainConfig(data=str(tmp_path / "d"), out=str(tmp_path / "run"), model=IDMConfig(**SMALL, aux_motion=0.5),
                         subset="all", steps=4, eval_every=2, batch_size=4, val_clips=4)
    assert train_idm(cfg, progress=False)["steps"] == 4
    m, _ = load_idm(tmp_path / "run" / "checkpoints" / "best")
    x = torch.as_tensor(store.load("r0").frames[None, :6])
    logits, motion = m(x, with_motion=True)
    assert motion.shape == (1, 5, 5) and all(torch.equal(a, b) for a, b in zip(logits, m(x)))
    # the loss is on standardised targets: a perfect prediction costs nothing
    mo, cam, scale = torch.ones(1, 6, 3), torch.ones(1, 6, 2), torch.full((5,), 2.0)
    assert motion_loss(torch.full((1, 5, 5), 0.5), mo, cam, scale).item() == 0.0
    # a dataset recorded without motion is a clear error, not a crash
    plain = EpisodeStore.create(tmp_path / "p", metadata={"resolution": [12, 16]})
    for i in range(3):
        plain.add(f"r{i}", make_episode(20, seed=i), "train", {"recording": i, "seed": 0})
    cfg2 = IDMTrainConfig(**{**cfg.__dict__, "data": str(tmp_path / "p"), "out": str(tmp_path / "run2")})
    with pytest.raises(RlirError, match="no recorded motion"):
        train_idm(cfg2, progress=False)
    # a file written before the motion array existed (frames, actions, camera_deg only) still loads
    old = make_episode(20, seed=9)
    f = next((tmp_path / "p").glob("r0*.npz"))
    np.savez_compressed(f, frames=old.frames, actions=old.actions, camera_deg=old.camera_deg)
    assert set(np.load(f).files) == {"frames", "actions", "camera_deg"}
    back = read_episode(f)
    assert back.motion is None and np.array_equal(back.frames, old.frames)
    with pytest.raises(RlirError, match="aux_motion"):
        IDMConfig(arch="cnn3d", aux_motion=1.0).validate()
