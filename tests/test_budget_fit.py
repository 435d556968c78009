"""fit_budget: a stage's schedule is sized to its wall-clock budget at the rate it measures, so a
faster CPU does not end it early and a slower one does not cut its cosine off."""
import json

import pytest
import torch

import rlir.training.loop as loop
from rlir.models.idm import IDMConfig
from rlir.training.idm_trainer import IDMTrainConfig, train_idm
from rlir.training.loop import BudgetFit, LoopConfig, warmup_cosine
from tests.test_idm import SMALL
from tests.conftest import make_episode


class _One:                      # one process: the all-reduce is the identity
    def mean(self, d):
        return d


class _Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.mark.parametrize("per_step", [0.25, 2.0])
def test_fit_sets_steps_from_the_measured_rate(monkeypatch, per_step):
    clock = _Clock()
    monkeypatch.setattr(loop.time, "time", clock)
    cfg = LoopConfig(steps=40, eval_every=10, max_minutes=1.0, fit_budget=True)
    fit = BudgetFit(cfg, _One(), None, skip=3, probe=12)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, 0, lambda: cfg.steps)
    step = 0
    while fit.fitted is None:
        clock.t += per_step * (3 if step == 0 else 1)     # the first step is slower (allocations)
        step += 1
        fit.after_step(step)
    assert step == 3 + 12
    left = 60 - (clock.t - 1000.0)
    assert cfg.steps == step + int(0.95 * left / per_step)           # the budget's steps at the probe's rate
    assert cfg.eval_every == max(1, round(10 * cfg.steps / 40))      # the same number of evaluations
    assert fit.state() == {"fitted_steps": cfg.steps}
    assert sched.lr_lambdas[0](cfg.steps) == pytest.approx(0.0)       # the cosine ends at the fitted length
    assert sched.lr_lambdas[0](cfg.steps / 2) == pytest.approx(0.5)
    # run on at the same rate: the refits hold the length, and the run ends inside its budget
    while step < cfg.steps:
        clock.t += per_step
        step += 1
        fit.after_step(step)
    assert 0.9 * 60 <= clock.t - 1000.0 <= 60
    # a resumed run keeps the fitted length and does not fit again
    cfg2 = LoopConfig(steps=40, eval_every=10, max_minutes=1.0, fit_budget=True)
    fit2 = BudgetFit(cfg2, _One(), {"fitted_steps": cfg.steps, "history": []})
    assert cfg2.steps == cfg.steps and cfg2.eval_every == cfg.eval_every
    for s in range(1, 40):
        clock.t += 100
        fit2.after_step(s)
    assert cfg2.steps == cfg.steps
    # off (or no budget): steps is what was asked
    for c in (LoopConfig(steps=40, max_minutes=1.0), LoopConfig(steps=40, fit_budget=True)):
        f = BudgetFit(c, _One(), None)
        for s in range(1, 30):
            clock.t += per_step
            f.after_step(s)
        assert c.steps == 40 and f.state() == {}


def test_a_slow_probe_is_corrected_by_the_refits(monkeypatch):
    """The probe's steps run 4x slower (another job on the CPU); the run still fills its budget."""
    clock = _Clock()
    monkeypatch.setattr(loop.time, "time", clock)
    cfg = LoopConfig(steps=100, eval_every=30, max_minutes=1.0, fit_budget=True)
    fit = BudgetFit(cfg, _One(), None)
    step = 0
    while step < cfg.steps:
        clock.t += 0.4 if step < 15 else 0.1
        step += 1
        fit.after_step(step)
    assert fit.fitted is not None
    assert clock.t - 1000.0 > 0.85 * 60                  # the probe alone would have stopped at about 0.3 of it
    assert clock.t - 1000.0 <= 60


def test_idm_stage_fills_its_budget_and_its_cosine_ends_there(tmp_path):
    from rlir.data.store import EpisodeStore
    store = EpisodeStore.create(tmp_path / "d", metadata={"resolution": [12, 16]})
    for i in range(6):
        store.add(f"r{i}", make_episode(20, seed=i), "val" if i < 1 else "train", {"recording": i, "seed": 0})
    cfg = IDMTrainConfig(data=str(tmp_path / "d"), out=str(tmp_path / "run"), model=IDMConfig(**SMALL),
                         steps=4, eval_every=2, batch_size=4, val_clips=4, warmup=1, max_minutes=0.04,
                         fit_budget=True)
    out = train_idm(cfg, progress=False)
    state = json.loads((tmp_path / "run" / "checkpoints" / "last" / "config.json").read_text())
    assert out["steps"] > 16                                  # the guess of 4 steps was far too few
    assert state["fitted_steps"] == out["steps"] == cfg.steps  # ended at the fitted length, not cut off
    assert state["sched"]["_last_lr"][0] < 1e-9
    assert out["train_minutes"] < 0.04 * 1.5
