"""Paired base-vs-treatment differences (rlir/eval/paired.py): zero against itself, signed otherwise,
refused when the clips differ; `rlir compare` and the report's "minus base" table."""
import json

import numpy as np
import pytest

from rlir.cli import main
from rlir.errors import RlirError
from rlir.eval.evaluate import evaluate
from rlir.eval.paired import PER_CLIP_FILE, action_table, compare_evaluations, scalar
from rlir.eval.report import build_report
from tests.test_evaluate import T, make_data, make_generated, make_idm


def test_paired_difference_is_zero_against_itself_and_signed_otherwise():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 2, (20, 15, 9))
    true[..., 7:] = rng.integers(3, 8, (20, 15, 2))
    boots = rng.integers(0, 20, (200, 20))
    shown = (0, 1, 2, 4, 5, 6)
    same = action_table(true, true, shown, boots, base_pred=true)
    assert same["f1_macro_shown"]["mean"] == 1.0 and same["f1_macro_shown"]["minus_base"]["mean"] == 0.0
    worse = true.copy()
    worse[:, ::2, :7] = 0
    t = action_table(worse, true, shown, boots, base_pred=true)
    d = t["f1_macro_shown"]["minus_base"]
    assert d["mean"] < 0 and d["ci95"][1] < 0
    assert all(v <= 0 for v in t["per_group_f1_minus_base"].values())
    x = scalar(np.arange(10.0), np.arange(10.0) - 1, 0)
    assert x["minus_base"]["mean"] == 1.0 and x["minus_base"]["clips_higher"] == 10
    with pytest.raises(ValueError, match="must match"):
        action_table(worse[:10], true[:10], shown, boots[:, :10] % 10, base_pred=true)


def test_the_pairing_cancels_what_the_clips_share():
    """Clips vary a lot, the models little: the paired interval sees a shift the two rows' intervals hide."""
    rng = np.random.default_rng(1)
    clip = rng.normal(20, 5, 200)                      # per-clip PSNR of the base
    treat = clip + 0.3 + rng.normal(0, 0.2, 200)       # +0.3 dB on almost every clip
    a, b = scalar(treat, clip), scalar(clip)
    assert a["ci95"][0] < b["ci95"][1]                 # the rows' own intervals overlap
    assert a["minus_base"]["ci95"][0] > 0.2 and a["minus_base"]["clips_higher"] > 180


@pytest.fixture(scope="module")
def evals(tmp_path_factory):
    root = tmp_path_factory.mktemp("paired")
    data = make_data(root / "data")
    idm, judge = make_idm(root / "idm"), make_idm(root / "judge", "cnn3d", 1)
    out = {}
    for name, fn in (("base", lambda f: f), ("dark", lambda f: (f * 0.5).astype(np.uint8))):
        gen = make_generated(root / f"gen_{name}", data, fn)
        out[name] = root / f"ev_{name}"
        evaluate(str(root / "data"), str(out[name]), idm, judge=judge, generated=gen, frames=T, n_boot=100,
                 progress=False)
    gen = make_generated(root / "gen_few", data, lambda f: f)
    out["few"] = root / "ev_few"
    evaluate(str(root / "data"), str(out["few"]), idm, judge=judge, generated=gen, frames=T, max_clips=6,
             n_boot=100, progress=False)
    out["root"] = root
    return out


def test_evaluate_keeps_what_a_paired_comparison_needs(evals):
    m = json.loads((evals["base"] / "metrics.json").read_text())
    with np.load(evals["base"] / PER_CLIP_FILE, allow_pickle=False) as z:
        assert z["pred_reward_idm"].shape == z["pred_judge_idm"].shape == z["actions"].shape == (12, T - 1, 9)
        assert z["psnr"].shape == z["ssim"].shape == z["brightness"].shape == (12,)
        assert np.allclose(z["psnr"].mean(), m["psnr"]["mean"]) and np.allclose(z["ssim"].mean(), m["ssim"]["mean"])
        assert np.allclose(z["brightness"].mean(), m["brightness"]["generated"]["mean"])


def test_compare_evaluations_of_the_same_clips(evals):
    same = compare_evaluations(evals["base"], evals["base"], n_boot=100)
    for role in ("reward_idm", "judge_idm"):
        assert same[role]["f1_macro_shown"]["minus_base"] == {"mean": 0.0, "ci95": [0.0, 0.0]}
    c = compare_evaluations(evals["base"], evals["dark"], n_boot=100)
    assert c["n_clips"] == 12 and c["excluded_groups"] == ["use"]
    assert c["brightness"]["minus_base"]["ci95"][1] < -20 and c["brightness"]["minus_base"]["clips_lower"] == 12
    assert c["psnr"]["minus_base"]["ci95"][1] < 0 and c["ssim"]["minus_base"]["ci95"][1] < 0
    d = c["reward_idm"]["f1_macro_shown"]
    assert d["minus_base"]["mean"] == pytest.approx(d["mean"] - same["reward_idm"]["f1_macro_shown"]["mean"])
    with pytest.raises(RlirError, match="different clips"):
        compare_evaluations(evals["base"], evals["few"])


def test_compare_cli_and_its_errors(evals, tmp_path, capsys):
    out = tmp_path / "cmp.json"
    assert main(["-q", "compare", "--base", str(evals["base"]), "--treatment", str(evals["dark"]),
                 "--n-boot", "50", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "paired over 12 clips" in text and "brightness -" in text and "12 down" in text
    assert json.loads(out.read_text())["n_boot"] == 50
    bare = tmp_path / "old_eval"
    bare.mkdir()
    (bare / "metrics.json").write_text((evals["base"] / "metrics.json").read_text())    # from before per_clip.npz
    assert main(["-q", "compare", "--base", str(bare), "--treatment", str(evals["dark"])]) == 2
    assert "per_clip.npz: missing" in capsys.readouterr().err
    assert main(["-q", "compare", "--base", str(tmp_path / "nope"), "--treatment", str(evals["dark"])]) == 2
    assert "no evaluation here" in capsys.readouterr().err


def _copy_eval(src, dst):
    import shutil
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("generated"))
    return dst


def test_mismatched_or_damaged_evaluations_are_one_line_errors(evals, tmp_path):
    stale = _copy_eval(evals["base"], tmp_path / "stale")               # an npz of other clips next to it
    (stale / PER_CLIP_FILE).write_bytes((evals["few"] / PER_CLIP_FILE).read_bytes())
    with pytest.raises(RlirError, match="does not belong to"):
        compare_evaluations(stale, evals["dark"])
    bad = _copy_eval(evals["base"], tmp_path / "bad")
    blob = (bad / PER_CLIP_FILE).read_bytes()
    (bad / PER_CLIP_FILE).write_bytes(blob[: len(blob) // 2])          # truncated
    with pytest.raises(RlirError, match="damaged"):
        compare_evaluations(bad, evals["dark"])
    (bad / PER_CLIP_FILE).write_bytes(b"")
    with pytest.raises(RlirError, match="damaged"):
        compare_evaluations(bad, evals["dark"])
    (bad / "metrics.json").write_text("[1, 2]")
    with pytest.raises(RlirError, match="not an `rlir evaluate` output"):
        compare_evaluations(bad, evals["dark"])
    (bad / "metrics.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(RlirError, match="not valid JSON"):
        compare_evaluations(bad, evals["dark"])
    other = _copy_eval(evals["base"], tmp_path / "other_idm")          # the judge: other weights, same path
    m = json.loads((other / "metrics.json").read_text())
    m["judge_idm"]["checkpoint_sha256"] = "0" * 64
    (other / "metrics.json").write_text(json.dumps(m))
    c = compare_evaluations(other, evals["dark"], n_boot=20)
    assert "judge_idm" not in c and "different checkpoints" in c["skipped"]["judge_idm"] and "reward_idm" in c
    m["frames"] = T + 1                                                  # metrics.json edited: npz no longer fits
    (other / "metrics.json").write_text(json.dumps(m))
    with pytest.raises(RlirError, match="do not match its 12 clips of 9 frames"):
        compare_evaluations(other, evals["dark"])


def test_report_shows_each_posttrained_row_minus_its_base(evals, tmp_path):
    res = build_report([str(evals["base"]), str(evals["dark"]), str(evals["few"])], tmp_path / "rep", n_videos=0,
                       roles=[f"{evals['dark']}=posttrained", f"{evals['few']}=posttrained"], progress=False)
    summary = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert res["rows"] == 3 and len(summary["paired"]) == 1                 # the 6-clip row is not comparable
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "Post-trained minus base, clip by clip" in html and "id='paired'" in html
    assert "class='worse'" in html                                           # PSNR fell on every clip
    assert "Not compared" in html and "different clips" in html
    dit = _copy_eval(evals["dark"], tmp_path / "dit_rlir")                # another paradigm: never its base
    m = json.loads((dit / "metrics.json").read_text())
    m["generated_meta"]["paradigm"] = "diffusion"
    (dit / "metrics.json").write_text(json.dumps(m))
    build_report([str(evals["base"]), str(dit)], tmp_path / "rep2", n_videos=0, roles=[f"{dit}=posttrained"],
                 progress=False)
    assert json.loads((tmp_path / "rep2" / "report.json").read_text())["paired"] == []
    assert "no base row of its paradigm (diffusion)" in (tmp_path / "rep2" / "report.html").read_text()
