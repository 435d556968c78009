"""`rlir demo`: every stage end to end on a few ViZDoom episodes, then cached on the second run."""
import json

from rlir.cli import main

FAST = ["--set", "episodes=8", "--set", "idm_minutes=0.05", "--set", "judge_minutes=0.05",
        "--set", "codec_minutes=0.05", "--set", "wm_minutes=0.05", "--set", "posttrain_minutes=0.05",
        "--set", "posttrain_steps=1", "--set", "eval_clips=2", "--set", "flow_idm_minutes=0.05",
        "--set", "collect=[frames=80,val_frac=0.3,test_frac=0.3,workers=1]"]


def test_demo_runs_every_stage_then_reuses_them(tmp_path, capsys):
    run = tmp_path / "demo"
    assert main(["-q", "demo", "--smoke", "--run", str(run), *FAST]) == 0
    out = capsys.readouterr().out
    for stage in ("collect", "reward IDM", "reward IDM (flow + motion targets)", "judge IDM", "ar: tokenizer", "ar: world model", "ar: RLIR post-training",
                  "evaluate real clips", "ar: evaluate ar base", "ar: evaluate ar + RLIR"):
        assert f"[demo] {stage}" in out, stage
    real_line = next(line for line in out.splitlines() if line.strip().startswith("real clips"))
    assert "IDM F1" in real_line and "PSNR" not in real_line      # no capped PSNR of real against itself
    # RLIR's reward read the two reward IDMs as an ensemble; the evaluation rows the RGB one
    assert json.loads((run / "ar" / "rlir" / "checkpoints" / "last" / "config.json").read_text())["config"]["idm"] == \
        f"{run / 'idm' / 'checkpoints' / 'best'},{run / 'idm_flow' / 'checkpoints' / 'best'}"
    summary = json.loads((run / "demo_summary.json").read_text())
    assert [r["role"] for r in summary["rows"]] == ["real", "base", "posttrained"]
    (c,) = summary["paired"]                                        # + RLIR minus base, clip by clip
    assert c["n_clips"] == 2 and "minus_base" in c["judge_idm"]["f1_macro_shown"]
    assert "ar + RLIR minus ar base, paired over 2 clips" in out
    codec = json.loads((run / "ar" / "codec" / "checkpoints" / "best" / "config.json").read_text())
    assert codec["model"]["channels"] == [64, 128, 128, 128]       # the demo's 3x4 grid: 12 codes a frame
    html = (run / "report" / "report.html").read_text()
    assert "<table" in html and "data:image/gif;base64," in html
    assert main(["-q", "demo", "--smoke", "--run", str(run), *FAST]) == 0     # second run: all cached
    out = capsys.readouterr().out
    assert out.count(": cached") == 10 and "..." not in out


def test_demo_presets_load_and_smoke_excludes_config(capsys):
    from rlir.config import load_config
    from rlir.demo import DemoConfig
    gain = load_config(DemoConfig, "configs/demo/gain_2h.yaml", [])
    gain.validate()
    assert gain.wm_minutes > DemoConfig().wm_minutes and gain.posttrain_minutes >= 60 and gain.eval_clips >= 96
    smoke = load_config(DemoConfig, "configs/demo/smoke.yaml", [])
    smoke.validate()
    assert main(["demo", "--smoke", "--config", "configs/demo/gain_2h.yaml"]) == 2
    assert "give one" in capsys.readouterr().err
    assert main(["demo", "--set", "ar_codec=configs/tokenizer/nope.yaml"]) == 2
    assert "ar_codec: no tokenizer config at 'configs/tokenizer/nope.yaml'" in capsys.readouterr().err
