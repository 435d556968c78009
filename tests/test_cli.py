import json
import subprocess
import sys


from rlir.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "rlir", *args], capture_output=True, text=True)


def test_help_for_every_verb():
    for verb in (["--help"], ["collect", "--help"], ["data", "stats", "--help"], ["demo", "--help"],
                 ["tokenizer", "train", "--help"], ["wm", "train", "--help"], ["generate", "--help"]):
        r = run(*verb)
        assert r.returncode == 0 and "usage" in r.stdout


def test_user_errors_are_one_line_without_traceback(tmp_path):
    r = run("data", "stats", str(tmp_path))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "no manifest.jsonl" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run("collect", "--out", str(tmp_path / "x"), "--episodes", "1", "--set", "doom.tics_per_frame=zero")
    assert r.returncode != 0 and "doom.tics_per_frame" in r.stderr and "Traceback" not in r.stderr
    r = run("collect", "--out", str(tmp_path / "x"), "--episodes", "1", "--map", "nowad:map01")
    assert r.returncode != 0 and "nowad" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.jsonl").write_text('{"id": "a", "path": "a.npz", "n_frames": 3, "split": "train"}\n')
    (tmp_path / "bad" / "a.npz").write_bytes(b"not a zip")
    r = run("data", "stats", str(tmp_path / "bad"))
    assert r.returncode != 0 and "a.npz" in r.stderr and "Traceback" not in r.stderr


def test_collect_then_stats_json(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["-q", "collect", "--out", str(out), "--episodes", "2", "--frames", "32", "--workers", "1",
                 "--set", "preprocess.min_segment=8", "--set", "burn_in=[2,4]"]) == 0
    capsys.readouterr()
    assert main(["-q", "data", "stats", str(out), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["dropped"]["recordings"] == 2 and set(s["class_frequency"]) >= {"fore_back", "camera_yaw"}
    assert abs(sum(s["class_frequency"]["fore_back"].values()) - 1.0) < 1e-6
