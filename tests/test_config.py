from pathlib import Path

import pytest
import torch

from rlir.config import load_config
from rlir.data.collect import CollectConfig
from rlir.errors import ConfigError
from rlir.models.idm import build_idm
from rlir.training.idm_trainer import IDMTrainConfig


def test_yaml_then_overrides_then_explicit(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("episodes: 7\nresolution: [224, 384]\ndoom:\n  tics_per_frame: 3\n")
    cfg = load_config(CollectConfig, p, ["frames=64", "policy.jump_rate=0.2", "maps=map01,map02"], workers=1)
    assert cfg.episodes == 7 and cfg.resolution == (224, 384) and cfg.doom.tics_per_frame == 3
    assert cfg.frames == 64 and cfg.policy.jump_rate == 0.2 and cfg.maps == ["map01", "map02"]
    assert cfg.workers == 1


def test_shipped_presets_load():
    assert load_config(CollectConfig, "configs/collect/tiny.yaml").resolution == (48, 64)
    assert load_config(CollectConfig, "configs/collect/paper.yaml").resolution == (224, 384)


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs" / "idm").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_idm_presets_build(path):
    cfg = load_config(IDMTrainConfig, path)
    cfg.validate()
    cfg.model.validate()
    with torch.device("meta"):
        model = build_idm(cfg.model)
    assert sum(p.numel() for p in model.parameters()) > 100_000


@pytest.mark.parametrize("override,match", [
    (["episodes=lots"], "episodes"),
    (["nonsense=1"], "unknown config key"),
    (["doom.colour=red"], "doom.colour"),
    (["episodes=0"], "at least 1"),
    (["frames"], "key=value"),
])
def test_bad_values_are_config_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(CollectConfig, None, override)


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(CollectConfig, tmp_path / "nope.yaml")
    (tmp_path / "b.yaml").write_text("a: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(CollectConfig, tmp_path / "b.yaml")
