"""Bad inputs across every verb: each must end with a one-line error (exit code != 0, no traceback)
and leave every file that was already there byte-identical, with no new folder left behind.

    python bench/bad_input_sweep.py [--json results.json]

Runs in-process (`rlir.cli.main`) on a tiny world built in a temporary folder: a dataset, an AR world
model, an IDM, a model and an IDM with a NaN weight, a generated store, a file where a folder
belongs, an output folder whose lock a second process holds, and a port another socket listens on
(`rlir play` serves forever once up, so each of its rows must be refused before it serves).
tests/test_bad_input_sweep.py runs it.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LOCK_FILE = ".rlir.lock"          # the empty marker an rlir command leaves in a folder it wrote


def snapshot(root: Path) -> dict:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_dir():
            out[str(p)] = "dir"
        elif p.name != LOCK_FILE:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def build_world(root: Path) -> dict:
    """Tiny inputs (16x16 frames, 4-frame clips) made as the tests make them."""
    import torch
    from safetensors.torch import load_file, save_file

    from tests.test_grpo import _checkpoints, _store
    torch.set_num_threads(1)
    wm, idm = _checkpoints(root)
    wm_b, _ = _checkpoints(root / "b", seed=1)
    data = _store(root / "data")
    w = {"root": root, "data": data, "wm": wm, "wm_b": wm_b, "idm": idm, "file": str(root / "a_file"),
         "gen": str(root / "gen")}
    Path(w["file"]).write_text("not a folder\n")
    for src, name in ((wm, "wm_nan"), (idm, "idm_nan")):
        shutil.copytree(src, root / name)
        t = load_file(str(root / name / "model.safetensors"))
        k = next(k for k, v in t.items() if v.is_floating_point())
        t[k] = t[k].clone()
        t[k].view(-1)[0] = float("nan")
        save_file(t, str(root / name / "model.safetensors"))
        w[name] = str(root / name)
    gan = root / "wm_gan"
    shutil.copytree(wm, gan)
    cfg = json.loads((gan / "config.json").read_text())
    (gan / "config.json").write_text(json.dumps({**cfg, "paradigm": "gan"}))
    w["wm_gan"] = str(gan)
    from rlir.cli import main
    from rlir.data.store import EpisodeStore
    from rlir.human_eval import db
    from tests.test_grpo import HW, make_episode
    he = EpisodeStore.create(root / "he_data", metadata={"resolution": list(HW)})   # human-eval make reads test clips
    for k in range(3):
        he.add(f"e{k}", make_episode(T=8, hw=HW, seed=k), split="test" if k else "train")
    w["he_data"], w["pairs"], w["votes"] = str(root / "he_data"), str(root / "pairs"), str(root / "votes.sqlite")
    (root / "empty").mkdir()
    db.open_db(w["votes"])                                                 # a votes database with no votes yet
    (root / "junk.sqlite").write_bytes(b"not a database at all" * 10)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["-q", "generate", "--world-model", wm, "--data", data, "--out", w["gen"], "--frames", "4",
                     "--split", "train"]) == 0
        assert main(["-q", "human-eval", "make", "--data", w["he_data"], "--models", f"a={wm}", f"b={wm_b}",
                     "--clips", "2", "--out", w["pairs"]]) == 0
    return w


def cases(w: dict) -> list[tuple[str, list[str]]]:
    """(name, argv): every one is a user's mistake."""
    d, wm, idm, f, gen, r = w["data"], w["wm"], w["idm"], w["file"], w["gen"], w["root"]
    new = str(r / "new")                       # a folder that does not exist yet: must not be left behind
    busy, port = w["busy"], w["port"]
    col = ["collect", "--out", new, "--episodes", "1", "--frames", "40", "--workers", "1"]
    ist = ["idm", "train", "--data", d, "--out", new]
    iev = ["idm", "eval", "--idm", idm, "--data", d, "--split", "train", "--clip-len", "4"]
    tok = ["tokenizer", "train", "--data", d, "--out", new]
    wmt = ["wm", "train", "--data", d, "--tokenizer", idm, "--out", new]
    gen_ = ["generate", "--world-model", wm, "--data", d, "--split", "train", "--frames", "4"]
    ev = ["evaluate", "--data", d, "--idm", idm, "--split", "train", "--frames", "4", "--n-boot", "10"]
    pl = ["play", "--world-model", wm]
    pairs, votes, junk = w["pairs"], w["votes"], str(r / "junk.sqlite")
    hem, hm = ["human-eval", "make", "--data", w["he_data"]], ["--models", f"a={wm}", f"b={w['wm_b']}"]
    hes = ["human-eval", "serve", "--db", votes]
    pt = ["posttrain", "--world-model", wm, "--idm", idm, "--data", d, "--set", "frames=4", "--set", "batch_size=2",
          "--set", "num_generations=2", "--set", "probe_clips=0", "--set", "steps=1"]
    out = [
        ("collect --episodes 0", [*col, "--episodes", "0"]),
        ("collect --episodes -3", [*col, "--episodes", "-3"]),
        ("collect --frames 1", [*col, "--frames", "1"]),
        ("collect --workers 0", [*col, "--workers", "0"]),
        ("collect --seed -1", [*col, "--seed", "-1"]),
        ("collect --map map99 (not in the wad)", [*col, "--map", "map99"]),
        ("collect --map nowad:map01", [*col, "--map", "nowad:map01"]),
        ("collect --map freedoom1:map01 (wrong wad)", [*col, "--map", "freedoom1:map01"]),
        ("collect --resolution 4x4", [*col, "--resolution", "4x4"]),
        ("collect --resolution abc", [*col, "--resolution", "abc"]),
        ("collect --out FILE", ["collect", "--out", f, "--episodes", "1"]),
        ("collect --out DATA (another dataset)", ["collect", "--out", d, "--episodes", "1", "--frames", "40"]),
        ("collect --set doom.tics_per_frame=0", [*col, "--set", "doom.tics_per_frame=0"]),
        ("collect --set max_restarts=-1", [*col, "--set", "max_restarts=-1"]),
        ("collect --set val_frac=2", [*col, "--set", "val_frac=2"]),
        ("collect --set nokey=1", [*col, "--set", "nokey=1"]),
        ("collect --config missing.yaml", [*col, "--config", str(r / "missing.yaml")]),
        ("collect --out LOCKED", ["collect", "--out", busy, "--episodes", "1", "--frames", "40"]),
        ("data stats MISSING", ["data", "stats", str(r / "missing")]),
        ("data stats FILE", ["data", "stats", f]),
        ("data stats --json into the dataset", ["data", "stats", d, "--json", str(Path(d) / "stats.json")]),
        ("data convert-vpt MISSING", ["data", "convert-vpt", str(r / "missing"), new]),
        ("data convert-vpt OUT=SRC", ["data", "convert-vpt", d, d]),
        ("data convert-vpt --resolution 2x2", ["data", "convert-vpt", d, new, "--resolution", "2x2"]),
        ("idm train --data MISSING", ["idm", "train", "--data", str(r / "missing"), "--out", new]),
        ("idm train --data FILE", ["idm", "train", "--data", f, "--out", new]),
        ("idm train --out FILE", ["idm", "train", "--data", d, "--out", f]),
        ("idm train --out DATA", ["idm", "train", "--data", d, "--out", d]),
        ("idm train --out DATA/run", ["idm", "train", "--data", d, "--out", str(Path(d) / "run")]),
        ("idm train --set lr=nan", [*ist, "--set", "lr=nan"]),
        ("idm train --set lr=-1", [*ist, "--set", "lr=-1"]),
        ("idm train --set steps=0", [*ist, "--set", "steps=0"]),
        ("idm train --set batch_size=0", [*ist, "--set", "batch_size=0"]),
        ("idm train --set model.aux_motion=1 (data without motion)", [*ist, "--set", "model.aux_motion=1.0", "--set", "model.resolution=[16,16]", "--set", "model.clip_len=4"]),
        ("idm train judge with model.flow=true", [*ist, "--set", "model.arch=cnn3d", "--set", "model.flow=true"]),
        ("idm train --set max_minutes=-1", [*ist, "--set", "max_minutes=-1"]),
        ("idm train --set warmup=-5", [*ist, "--set", "warmup=-5"]),
        ("idm train --set device=gpu", [*ist, "--set", "device=gpu"]),
        ("idm train --config missing.yaml", [*ist, "--config", str(r / "missing.yaml")]),
        ("idm train --out LOCKED", ["idm", "train", "--data", d, "--out", busy]),
        ("idm eval --clip-len 1", [*iev, "--clip-len", "1"]),
        ("idm eval --clip-len 32", [*iev, "--clip-len", "32"]),
        ("idm eval --idm WORLD_MODEL", ["idm", "eval", "--idm", wm, "--data", d]),
        ("idm eval --idm NaN weights", ["idm", "eval", "--idm", w["idm_nan"], "--data", d, "--clip-len", "4"]),
        ("idm eval --max-clips 0", [*iev, "--max-clips", "0"]),
        ("idm eval --out inside the dataset", [*iev, "--out", str(Path(d) / "m.json")]),
        ("idm eval --out a folder", [*iev, "--out", str(r)]),
        ("idm eval --device gpu", [*iev, "--device", "gpu"]),
        ("idm eval --data MISSING", ["idm", "eval", "--idm", idm, "--data", str(r / "missing")]),
        ("tokenizer train --out FILE", ["tokenizer", "train", "--data", d, "--out", f]),
        ("tokenizer train --set steps=-1", [*tok, "--set", "steps=-1"]),
        ("tokenizer train --data MISSING", ["tokenizer", "train", "--data", str(r / "missing"), "--out", new]),
        ("autoencoder train --out DATA", ["autoencoder", "train", "--data", d, "--out", d]),
        ("wm train without --tokenizer", ["wm", "train", "--data", d, "--out", new]),
        ("wm train --tokenizer IDM", wmt),
        ("wm train --out FILE", ["wm", "train", "--data", d, "--tokenizer", idm, "--out", f]),
        ("wm train --preset huge", [*wmt, "--preset", "huge"]),
        ("wm train --set lr=inf", [*wmt, "--set", "lr=inf"]),
        ("generate --out DATA", [*gen_, "--out", d]),
        ("generate --out DATA/gen", [*gen_, "--out", str(Path(d) / "gen")]),
        ("generate --out PARENT of DATA", [*gen_, "--out", str(Path(d).parent)]),
        ("generate --out the world model", [*gen_, "--out", wm]),
        ("generate --frames 0", [*gen_, "--out", new, "--frames", "0"]),
        ("generate --frames 1", [*gen_, "--out", new, "--frames", "1"]),
        ("generate --frames 5 (> clip length)", [*gen_, "--out", new, "--frames", "5"]),
        ("generate --batch-size 0", [*gen_, "--out", new, "--batch-size", "0"]),
        ("generate --temperature 0", [*gen_, "--out", new, "--temperature", "0"]),
        ("generate --temperature -1", [*gen_, "--out", new, "--temperature", "-1"]),
        ("generate --temperature nan", [*gen_, "--out", new, "--temperature", "nan"]),
        ("generate --top-p 0", [*gen_, "--out", new, "--top-p", "0"]),
        ("generate --top-p 1.5", [*gen_, "--out", new, "--top-p", "1.5"]),
        ("generate --steps 0", [*gen_, "--out", new, "--steps", "0"]),
        ("generate --max-clips 0", [*gen_, "--out", new, "--max-clips", "0"]),
        ("generate --seed -1", [*gen_, "--out", new, "--seed", "-1"]),
        ("generate --split nope", [*gen_, "--out", new, "--split", "nope"]),
        ("generate --device gpu", [*gen_, "--out", new, "--device", "gpu"]),
        ("generate --world-model IDM", ["generate", "--world-model", idm, "--data", d, "--out", new]),
        ("generate --world-model NaN weights", [*gen_, "--world-model", w["wm_nan"], "--out", new]),
        ("generate --world-model paradigm gan", [*gen_, "--world-model", w["wm_gan"], "--out", new]),
        ("generate --world-model MISSING", [*gen_, "--world-model", str(r / "missing"), "--out", new]),
        ("generate into clips of another model", [*gen_, "--world-model", w["wm_b"], "--out", gen]),
        ("generate --frames 3 into 4-frame clips", [*gen_, "--out", gen, "--frames", "3"]),
        ("generate --seed 1 into seed-0 clips", [*gen_, "--out", gen, "--seed", "1"]),
        ("generate --out FILE", [*gen_, "--out", f]),
        ("generate --out LOCKED", [*gen_, "--out", busy]),
        ("evaluate --n-boot 0", [*ev, "--generated", gen, "--out", new, "--n-boot", "0"]),
        ("evaluate --world-model WM --generated DATA", [*ev, "--world-model", wm, "--generated", d, "--out", new]),
        ("evaluate --generated MISSING", [*ev, "--generated", str(r / "missing"), "--out", new]),
        ("evaluate without --world-model or --generated", [*ev, "--out", new]),
        ("evaluate --frames 1", [*ev, "--generated", gen, "--out", new, "--frames", "1"]),
        ("evaluate --idm WORLD_MODEL", ["evaluate", "--data", d, "--idm", wm, "--generated", gen, "--out", new]),
        ("evaluate --idm NaN weights", [*ev, "--idm", w["idm_nan"], "--generated", gen, "--out", new]),
        ("evaluate --out FILE", [*ev, "--generated", gen, "--out", f]),
        ("evaluate --out DATA", [*ev, "--generated", gen, "--out", d]),
        ("evaluate --out GENERATED (input)", [*ev, "--generated", gen, "--out", gen]),
        ("evaluate reusing clips of another model", [*ev, "--world-model", w["wm_b"], "--generated", gen,
                                                     "--out", new]),
        ("evaluate --max-clips 0", [*ev, "--generated", gen, "--out", new, "--max-clips", "0"]),
        ("evaluate --out LOCKED", [*ev, "--generated", gen, "--out", busy]),
        ("posttrain --out DATA", [*pt, "--out", d]),
        ("posttrain --out the world model", [*pt, "--out", wm]),
        ("posttrain --set lr=nan", [*pt, "--out", new, "--set", "lr=nan"]),
        ("posttrain --set num_generations=1", [*pt, "--out", new, "--set", "num_generations=1"]),
        ("posttrain --set frames=9 (> clip length)", [*pt, "--out", new, "--set", "frames=9"]),
        ("posttrain --world-model IDM", [*pt, "--world-model", idm, "--out", new]),
        ("posttrain --world-model NaN weights", [*pt, "--world-model", w["wm_nan"], "--out", new]),
        ("posttrain --set rewards={bogus: 1}", [*pt, "--out", new, "--set", "rewards={bogus: 1}"]),
        ("posttrain --set steps=-1", [*pt, "--out", new, "--set", "steps=-1"]),
        ("posttrain --set device=gpu", [*pt, "--out", new, "--set", "device=gpu"]),
        ("posttrain --out LOCKED", [*pt, "--out", busy]),
        ("posttrain --idm IDM,MISSING (ensemble)", [*pt, "--idm", f"{idm},{r / 'missing'}", "--out", new]),
        ("posttrain --idm IDM,WORLD_MODEL (ensemble)", [*pt, "--idm", f"{idm},{wm}", "--out", new]),
        ("compare --base MISSING", ["compare", "--base", str(r / "missing"), "--treatment", d]),
        ("compare --base DATA (not an evaluation)", ["compare", "--base", d, "--treatment", d]),
        ("compare --n-boot 0", ["compare", "--base", d, "--treatment", d, "--n-boot", "0"]),
        ("compare --out inside --base", ["compare", "--base", d, "--treatment", d, "--out", str(Path(d) / "c.json")]),
        ("report MISSING", ["report", str(r / "missing"), "--out", new]),
        ("report --out FILE", ["report", gen, "--out", f]),
        ("report --videos -1", ["report", gen, "--out", new, "--videos", "-1"]),
        ("report --out LOCKED", ["report", gen, "--out", busy]),
        ("demo --episodes 2", ["demo", "--run", new, "--episodes", "2"]),
        ("demo --run FILE", ["demo", "--run", f]),
        ("demo --paradigm gan", ["demo", "--run", new, "--paradigm", "gan"]),
        ("demo --set wm_minutes=-1", ["demo", "--run", new, "--set", "wm_minutes=-1"]),
        ("demo --set precision=fp16", ["demo", "--run", new, "--set", "precision=fp16"]),
        ("demo --run LOCKED", ["demo", "--run", busy]),
        ("play --world-model MISSING", ["play", "--world-model", str(r / "missing")]),
        ("play --world-model IDM", ["play", "--world-model", idm]),
        ("play --world-model NaN weights", ["play", "--world-model", w["wm_nan"]]),
        ("play --world-model paradigm gan", ["play", "--world-model", w["wm_gan"]]),
        ("play --world-model DATA", ["play", "--world-model", d]),
        ("play --port 70000", [*pl, "--port", "70000"]),
        ("play --port -1", [*pl, "--port", "-1"]),
        ("play --port TAKEN", [*pl, "--port", port]),
        ("play --max-sessions 0", [*pl, "--max-sessions", "0"]),
        ("play --context 4 (= clip length)", [*pl, "--context", "4"]),
        ("play --top-p 0", [*pl, "--top-p", "0"]),
        ("play --data MISSING", [*pl, "--data", str(r / "missing")]),
        ("play --data FILE", [*pl, "--data", f]),
        ("play --device gpu", [*pl, "--device", "gpu"]),
        ("human-eval make --models a=IDM b=WM", [*hem, "--out", new, "--models", f"a={idm}", f"b={wm}"]),
        ("human-eval make --models a=MISSING b=WM", [*hem, "--out", new, "--models", f"a={r / 'missing'}", f"b={wm}"]),
        ("human-eval make --models WM WM (no names)", [*hem, "--out", new, "--models", wm, w["wm_b"]]),
        ("human-eval make --models a=WM a=WM", [*hem, "--out", new, "--models", f"a={wm}", f"a={w['wm_b']}"]),
        ("human-eval make --out PAIRS (not empty)", [*hem, *hm, "--out", pairs]),
        ("human-eval make --clips 0", [*hem, *hm, "--out", new, "--clips", "0"]),
        ("human-eval make --clips 99 (more than the test clips)", [*hem, *hm, "--out", new, "--clips", "99"]),
        ("human-eval make --frames 9 (> clip length)", [*hem, *hm, "--out", new, "--frames", "9"]),
        ("human-eval make --data DATA (no test split)", ["human-eval", "make", "--data", d, *hm, "--out", new]),
        ("human-eval serve --pairs MISSING", [*hes, "--pairs", str(r / "missing")]),
        ("human-eval serve --pairs EMPTY (no trials.json)", [*hes, "--pairs", str(r / "empty")]),
        ("human-eval serve --pairs DATA", [*hes, "--pairs", d]),
        ("human-eval serve --db DAMAGED", ["human-eval", "serve", "--pairs", pairs, "--db", junk]),
        ("human-eval serve --db FOLDER", ["human-eval", "serve", "--pairs", pairs, "--db", d]),
        ("human-eval serve --port TAKEN", [*hes, "--pairs", pairs, "--port", port]),
        ("human-eval serve --port 70000", [*hes, "--pairs", pairs, "--port", "70000"]),
        ("human-eval report --db MISSING", ["human-eval", "report", "--db", str(r / "missing.sqlite")]),
        ("human-eval report --db DAMAGED", ["human-eval", "report", "--db", junk]),
        ("human-eval report --db EMPTY (no votes)", ["human-eval", "report", "--db", votes]),
        ("human-eval report --json FILE/x.json", ["human-eval", "report", "--db", votes, "--json", f + "/x.json"]),
        ("unknown verb", ["train"]),
    ]
    import torch
    if not torch.cuda.is_available():
        out += [("generate --device cuda (no CUDA)", [*gen_, "--out", new, "--device", "cuda"]),
                ("idm train --device cuda (no CUDA)", [*ist, "--device", "cuda"]),
                ("play --device cuda (no CUDA)", [*pl, "--device", "cuda"])]
    return out


def run_one(argv: list[str]) -> tuple[int, bool, str]:
    """(exit code, traceback?, stderr's last line) of one in-process call."""
    from rlir.cli import main
    err = io.StringIO()
    tb = False
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            rc = main(["-q", *argv])
        except SystemExit as e:                # argparse's own usage errors
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:                  # anything else escaping main is what a user sees as a traceback
            rc, tb = 1, True
            traceback.print_exc(file=err)
    text = err.getvalue()
    tb = tb or "Traceback" in text
    return rc, tb, (text.strip().splitlines() or [""])[-1]


@contextlib.contextmanager
def lock_holder(folder: str):
    """A second process that holds the lock of `folder`, as a running command would."""
    code = ("import sys, time\nfrom rlir.utils.output_guard import OutputLock\n"
            "with OutputLock(sys.argv[1], 'rlir generate (a running command)'):\n"
            "    print('held', flush=True); time.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", code, folder], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert p.stdout.readline().strip() == "held"
        yield
    finally:
        p.kill()
        p.wait()


@contextlib.contextmanager
def port_holder():
    """A local port another socket listens on, as a second `rlir play` (or any server) would."""
    with socket.create_server(("127.0.0.1", 0)) as s:
        yield str(s.getsockname()[1])


def sweep(root: Path) -> dict:
    w = build_world(root)
    w["busy"] = str(root / "busy")
    rows = []
    with lock_holder(w["busy"]), port_holder() as w["port"]:
        for name, argv in cases(w):
            before = snapshot(root)
            rc, tb, last = run_one(argv)
            after = snapshot(root)
            changed = sorted(k for k in before if after.get(k) != before[k])
            left = sorted(k for k in after if k not in before)
            rows.append({"input": name, "exit_code": rc, "traceback": tb, "changed": changed, "left_behind": left,
                         "message": last})
    totals = {"inputs": len(rows), "tracebacks": sum(r["traceback"] for r in rows),
              "exit_0": sum(r["exit_code"] == 0 for r in rows),
              "changed_files": sum(len(r["changed"]) for r in rows),
              "left_behind": sum(len(r["left_behind"]) for r in rows)}
    return {"rows": rows, "totals": totals}


def format_table(res: dict) -> str:
    lines = [f"{'input':<48} {'exit':>4} {'tb':>3} {'chg':>3}  message"]
    for r in res["rows"]:
        lines.append(f"{r['input'][:48]:<48} {r['exit_code']:>4} {'yes' if r['traceback'] else 'no':>3} "
                     f"{len(r['changed']) + len(r['left_behind']):>3}  {r['message'][:110]}")
    t = res["totals"]
    lines.append(f"totals: {t['inputs']} bad inputs, {t['tracebacks']} tracebacks, {t['exit_0']} exit-0 runs, "
                 f"{t['changed_files']} changed files, {t['left_behind']} paths left behind")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the rows and totals here")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        res = sweep(Path(tmp))
    print(format_table(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    t = res["totals"]
    sys.exit(0 if t["tracebacks"] == t["exit_0"] == t["changed_files"] == t["left_behind"] == 0 else 1)
