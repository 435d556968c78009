"""`rlir human-eval`: the statistics, trials from two tiny world models, the votes database (damaged files,
second votes, concurrent writers), the page in two real browsers at once, the report and its hook in
`rlir report`."""
from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import threading
from collections import Counter

import pytest
import torch

from rlir.cli import main
from rlir.data.store import EpisodeStore
from rlir.errors import ConfigError
from rlir.human_eval import db
from rlir.human_eval.make import balanced_sides, load_trials, pick_clips
from rlir.human_eval.stats import design_effect, icc_anova, question_summary, wilson
from rlir.utils.checkpoint import save_checkpoint
from tests.conftest import make_episode
from tests.test_play import HW, make_world_model, serving

N = 12                   # trials: 6 test episodes of 8 frames, two clips of 4 frames each


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("he")
    s = EpisodeStore.create(root / "data", metadata={"resolution": list(HW)})
    for k in range(7):
        s.add(f"e{k}", make_episode(8, HW, seed=k), split="test" if k else "train")
    w = {"root": root, "data": str(root / "data"), "ar": make_world_model(root, "ar"),
         "dit": make_world_model(root, "diffusion")}
    w["pairs"] = str(root / "pairs")
    assert main(["-q", "human-eval", "make", "--data", w["data"], "--models", f"base={w['ar']}", f"rlir={w['dit']}",
                 "--clips", str(N), "--steps", "2", "--out", w["pairs"]]) == 0
    return w


def vote_row(rater="r1", trial="t000", follows="left", looks="same", left="base", right="rlir") -> dict:
    m = {"left": left, "right": right, "same": "same"}
    return {"rater": rater, "trial": trial, "left_model": left, "right_model": right, "follows": follows,
            "follows_model": m[follows], "looks": looks, "looks_model": m[looks], "time_utc": db.now_utc(),
            "user_agent": "pytest"}


# --- statistics ----------------------------------------------------------------------------------
def test_wilson_interval_known_values():
    assert [round(x, 3) for x in wilson(8, 10)] == [0.490, 0.943]
    assert [round(x, 3) for x in wilson(0, 10)] == [0.0, 0.278]
    assert [round(x, 4) for x in wilson(50, 100)] == [0.4038, 0.5962]
    lo, hi = wilson(2, 10)
    assert (round(1 - hi, 6), round(1 - lo, 6)) == tuple(round(x, 6) for x in wilson(8, 10))   # symmetric


def test_design_effect_from_rater_clustering():
    assert design_effect([[1.0], [0.0], [1.0], [1.0]]) == (1.0, None)         # one vote each: no clustering
    # each rater always gives the same answer, raters disagree: ICC 1, a rater's votes count as one
    deff, icc = design_effect([[1.0] * 5, [0.0] * 5, [1.0] * 5, [0.0] * 5])
    assert icc == pytest.approx(1.0) and deff == pytest.approx(5.0)
    # raters alike (same mix of answers): ANOVA's ICC is negative, floored at 0
    assert design_effect([[1, 0, 1, 0], [0, 1, 0, 1], [1, 1, 0, 0]]) == (1.0, 0.0)
    # the ANOVA estimate by hand: group means 1, 0, .75 -> MSB 1.0833, MSW .0833, ICC = 1 / 1.3333
    assert icc_anova([[1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 1, 0]]) == pytest.approx(0.75)
    assert design_effect([[1.0] * 6]) == (1.0, None)                          # one rater: not estimable


def test_ties_are_counted_apart_and_clustering_widens_intervals():
    votes = [("r1", "A")] * 3 + [("r1", "B")] + [("r2", "same")] * 4
    s = question_summary(votes, "A", "B")
    assert (s["wins"]["A"]["count"], s["wins"]["B"]["count"], s["ties"]["count"]) == (3, 1, 4)
    assert s["wins"]["A"]["rate"] + s["wins"]["B"]["rate"] + s["ties"]["rate"] == pytest.approx(1.0)
    assert s["decisive"]["n"] == 4 and s["decisive"]["share"] == pytest.approx(0.75)   # ties left out
    assert s["n_votes"] == 8 and s["n_raters"] == 2
    # 40 votes, 30 for A: from 40 raters vs from 4 raters who each always vote one way
    spread = question_summary([(f"r{i}", "A" if i < 30 else "B") for i in range(40)], "A", "B")
    clustered = question_summary([(f"r{i // 10}", "A" if i < 30 else "B") for i in range(40)], "A", "B")
    w = lambda s: s["decisive"]["ci95"][1] - s["decisive"]["ci95"][0]
    assert spread["decisive"]["design_effect"] == 1.0 and clustered["decisive"]["design_effect"] > 5
    assert w(clustered) > 2 * w(spread)
    assert question_summary([], "A", "B")["decisive"]["share"] is None
    with pytest.raises(ValueError):
        question_summary([("r", "C")], "A", "B")


# --- make ----------------------------------------------------------------------------------------
def test_make_writes_trials_with_recorded_random_sides(world):
    from PIL import Image
    m = load_trials(world["pairs"])
    trials = m["trials"]
    assert len(trials) == N and len({t["id"] for t in trials}) == N and len({t["clip"] for t in trials}) == N
    assert [x["name"] for x in m["models"]] == ["base", "rlir"] and m["seed"] == 0 and m["frames"] == 4
    assert m["models"][1]["sampler"] == {"steps": 2, "solver": "dpm++", "mode": "ode"}
    assert "human-eval make" in m["command"] and len(m["models"][0]["sha256"]) == 64
    orders = Counter(tuple(t["order"]) for t in trials)
    assert orders == {("base", "rlir"): N // 2, ("rlir", "base"): N // 2}      # both sides, balanced
    assert [t["order"][0] for t in trials] != ["base", "rlir"] * (N // 2)        # shuffled, not alternating
    assert Counter(t["episode"] for t in trials) == {f"e{k}": 2 for k in range(1, 7)}   # spread over episodes
    store = EpisodeStore(world["data"])
    for t in trials:
        assert t["episode"] in store.ids("test") and t["start"] in (0, 4)
        assert t["clip"] == f"{t['episode']}-{t['start']:05d}"
        gif = Image.open(f"{world['pairs']}/{t['video']}")
        assert gif.n_frames == 4 and gif.size[0] > 2 * gif.size[1] * 0.7           # two columns side by side
    # the choice is the seed's: the same seed picks the same clips and sides, another seed others
    windows = [(f"e{k}", s) for k in range(1, 7) for s in (0, 4)]
    assert pick_clips(windows, N, 0) == [(t["episode"], t["start"]) for t in trials]
    assert pick_clips(windows, N, 1) != pick_clips(windows, N, 0)
    assert balanced_sides(7, 3).sum() in (3, 4)
    assert list(balanced_sides(N, 0)) == [t["order"][0] == "base" for t in trials]


def test_make_refuses_bad_inputs(world, capsys):
    root = world["root"]
    save_checkpoint(root / "idm", {"kind": "idm"}, {"model": {"w": torch.zeros(1)}})
    before = {p.name: p.read_bytes() for p in (root / "pairs").rglob("*") if p.is_file()}
    base = ["-q", "human-eval", "make", "--data", world["data"], "--out"]
    cases = [([str(root / "new1"), "--models", f"a={root / 'idm'}", f"b={world['ar']}"],
              "is an 'idm' checkpoint, not 'world_model'"),
             ([str(root / "new2"), "--models", f"a={world['ar']}", f"b={root / 'none'}"], "checkpoint not found"),
             ([world["pairs"], "--models", f"a={world['ar']}", f"b={world['dit']}"], "is never overwritten"),
             ([str(root / "new3"), "--models", f"a={world['ar']}", f"a={world['dit']}"], "the two names must differ"),
             ([str(root / "new4"), "--models", world["ar"], f"b={world['dit']}"], "write NAME=CHECKPOINT"),
             ([str(root / "new5"), "--models", f"a={world['ar']}", f"b={world['dit']}", "--clips", "13"],
              "has only 12 test clips"),
             ([str(root / "new6"), "--models", f"a={world['ar']}", f"b={world['dit']}", "--frames", "5"],
              "longer than the world models' clip length 4"),
             ([str(root / "new7"), "--models", f"a={world['ar']}", f"b={world['dit']}", "--clips", "0"],
              "--clips must be at least 1")]
    for args, text in cases:
        assert main(base + args) == 2, args
        err = capsys.readouterr().err.strip()
        assert text in err and "Traceback" not in err and err.count("\n") == 0, err
    assert {p.name: p.read_bytes() for p in (root / "pairs").rglob("*") if p.is_file()} == before
    assert not any((root / f"new{k}").exists() for k in range(1, 8))             # a refusal leaves nothing


# --- the database --------------------------------------------------------------------------------
def test_damaged_database_is_refused_untouched(tmp_path):
    good = db.open_db(tmp_path / "good.sqlite")
    db.insert_vote(good, vote_row())
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as c:
        c.execute("CREATE TABLE votes (a)")
    truncated = tmp_path / "truncated.sqlite"
    truncated.write_bytes(good.read_bytes()[:100] + b"\0" * 50)
    files = {"text.sqlite": b"rater,trial\nr1,t000\n" * 20, "random.sqlite": bytes(range(256)) * 8}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    for f in [*(tmp_path / n for n in files), other, truncated]:
        before = f.read_bytes()
        with pytest.raises(ConfigError, match="give another --db"):
            db.open_db(f)
        assert f.read_bytes() == before
    with pytest.raises(ConfigError, match="no such votes database"):
        db.open_db(tmp_path / "missing.sqlite", create=False)
    assert db.open_db(good) == good and len(db.read_votes(good)) == 1          # a good one opens again as it was
    assert sqlite3.connect(good).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_second_vote_conflicts_and_concurrent_votes_all_land(tmp_path):
    p = db.open_db(tmp_path / "v.sqlite")
    db.insert_vote(p, vote_row(follows="left"))
    with pytest.raises(db.Conflict, match="already voted on trial t000"):
        db.insert_vote(p, vote_row(follows="right"))
    assert [r["follows"] for r in db.read_votes(p)] == ["left"]                  # nothing overwritten
    results, barrier = [], threading.Barrier(8)

    def rater(k):
        barrier.wait()
        for t in range(20):
            db.insert_vote(p, vote_row(rater=f"c{k}", trial=f"t{t:03d}"))
        try:                          # all eight race for the same (rater, trial): one wins
            db.insert_vote(p, vote_row(rater="same", trial="t999"))
            results.append("ok")
        except db.Conflict:
            results.append("conflict")

    threads = [threading.Thread(target=rater, args=(k,)) for k in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    rows = db.read_votes(p)
    assert len(rows) == 1 + 8 * 20 + 1 and sorted(results) == ["conflict"] * 7 + ["ok"]
    assert Counter(r["rater"] for r in rows)["c3"] == 20


# --- the server ----------------------------------------------------------------------------------
def make_app(world, tmp_path, pairs=None):
    from rlir.human_eval.server import create_app
    pairs = pairs or world["pairs"]
    m = load_trials(pairs)
    p = db.open_db(tmp_path / "votes.sqlite")
    db.bind_pairs(p, m["pairs_id"], [x["name"] for x in m["models"]], pairs)
    return create_app(pairs, m, p), m, p


def test_http_api_errors_and_missing_video(world, tmp_path):
    pairs = tmp_path / "pairs"
    shutil.copytree(world["pairs"], pairs)
    app, m, p = make_app(world, tmp_path, pairs)
    c = app.test_client()
    info = c.get("/api/info").get_json()
    assert info["n_trials"] == N and "base" not in json.dumps(info)                # the page never names a model
    nxt = c.get("/api/next?rater=ann").get_json()
    tid = nxt["trial"]["id"]
    assert nxt["progress"] == {"done": 0, "total": N} and c.get(nxt["trial"]["video"]).status_code == 200
    ok = {"rater": "ann", "trial": tid, "follows": "right", "looks": "left"}
    for bad, text in (({**ok, "follows": "up"}, '"follows" must be one of'), ({**ok, "trial": "t777"}, "unknown trial"),
                      ({k: v for k, v in ok.items() if k != "looks"}, '"looks" must be one of'),
                      ({**ok, "rater": ""}, "give a rater id"), ("[]", 'send JSON')):
        r = c.post("/api/votes", json=bad)
        assert r.status_code == 400 and text in r.get_json()["error"], (bad, r.get_json())
    r = c.post("/api/votes", json=ok)
    assert r.status_code == 201 and r.get_json()["progress"] == {"done": 1, "total": N}
    r = c.post("/api/votes", json={**ok, "follows": "left"})
    assert r.status_code == 409 and "already voted" in r.get_json()["error"]
    row, = db.read_votes(p)
    t = next(t for t in m["trials"] if t["id"] == tid)
    assert (row["left_model"], row["right_model"]) == tuple(t["order"]) and row["follows"] == "right"
    assert (row["follows_model"], row["looks_model"]) == (t["order"][1], t["order"][0])
    assert row["time_utc"].endswith("+00:00") and row["user_agent"]
    assert c.get("/api/next?rater=ann").get_json()["trial"]["id"] != tid
    # a video gone while serving: a JSON 404, and the server goes on
    (pairs / t["video"]).unlink()
    r = c.get(f"/api/trials/{tid}/video.gif")
    assert r.status_code == 404 and "is missing" in r.get_json()["error"]
    assert c.get("/api/trials/t999/video.gif").status_code == 404 and c.get("/api/info").status_code == 200


def test_serve_cli(world, tmp_path, capsys):
    """`rlir human-eval serve` itself on a free port, then its startup refusals (exit 2, one line)."""
    import subprocess
    import sys
    import urllib.request
    for verb in ("make", "serve", "report"):
        r = subprocess.run([sys.executable, "-m", "rlir", "human-eval", verb, "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "usage: rlir human-eval " + verb in r.stdout
    votes = tmp_path / "votes.sqlite"
    p = subprocess.Popen([sys.executable, "-m", "rlir", "-q", "human-eval", "serve", "--pairs", world["pairs"],
                          "--db", str(votes), "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert f"{N} trials" in line, line
        url = line.split(" on ")[1].split()[0]
        assert urllib.request.urlopen(url).read().startswith(b"<!doctype html>")
        assert json.loads(urllib.request.urlopen(url + "api/info").read())["n_trials"] == N
    finally:
        p.terminate()
        p.wait(10)
        p.stdout.close()
    root = tmp_path
    (root / "empty").mkdir()
    nogif = root / "nogif"
    shutil.copytree(world["pairs"], nogif)
    (nogif / "videos" / "t003.gif").unlink()
    (root / "junk.sqlite").write_bytes(b"not a database at all" * 10)
    other = root / "other"
    shutil.copytree(world["pairs"], other)
    man = json.loads((other / "trials.json").read_text())
    (other / "trials.json").write_text(json.dumps({**man, "pairs_id": "another"}))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for pairs, dbf, extra, text in ((root / "nope", votes, [], "no such folder"),
                                        (root / "empty", votes, [], "no trials.json"),
                                        (nogif, votes, [], "1 video file(s) missing, e.g. videos/t003.gif"),
                                        (world["pairs"], root / "junk.sqlite", [], "is not an SQLite database"),
                                        (other, votes, [], "holds votes on another set of trials"),
                                        (world["pairs"], votes, ["--port", port], "in use"),
                                        (world["pairs"], votes, ["--port", "70000"], "--port must be between")):
            junk = (root / "junk.sqlite").read_bytes()
            assert main(["-q", "human-eval", "serve", "--pairs", str(pairs), "--db", str(dbf), *extra]) == 2
            err = capsys.readouterr().err.strip()
            assert text in err and "Traceback" not in err and err.count("\n") == 0, err
            assert (root / "junk.sqlite").read_bytes() == junk


# --- two raters in two real browsers -------------------------------------------------------------
def page_state(d):
    return d.execute_script("return [document.body.dataset.state, document.body.dataset.trial, "
                            "document.getElementById('progress').dataset.done]")


def set_rater(d, wait, name):
    from selenium.webdriver.common.by import By
    wait.until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    if page_state(d)[0] != "rater":
        d.find_element(By.ID, "rater-change").click()
    box = d.find_element(By.ID, "rater-input")
    box.clear()
    box.send_keys(name)
    d.find_element(By.ID, "rater-save").click()
    wait.until(lambda d: page_state(d)[0] in ("trial", "done") and d.find_element(By.ID, "rater-name").text == name)


def answer(d, follows, looks):
    """Pick both answers on the page and submit; returns the trial id that was shown."""
    from selenium.webdriver.common.by import By
    tid = page_state(d)[1]
    for q, v in (("follows", follows), ("looks", looks)):
        d.find_element(By.XPATH, f"//fieldset[@data-q='{q}']//label[input[@value='{v}']]").click()
    d.find_element(By.ID, "submit").click()
    return tid


def test_two_raters_vote_in_two_browsers_at_once(world, tmp_path, capsys):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.browser import browser
    app, m, p = make_app(world, tmp_path)
    order = {t["id"]: t["order"] for t in m["trials"]}
    plan = {"alice": lambda i: (("left", "right", "same")[i % 3], "left"),      # (follows, looks) on turn i
            "bob": lambda i: ("right", ("same", "right")[i % 2])}
    cast = []                                            # (rater, trial, follows, looks) as the pages showed them
    with serving(app) as url, browser(1100, 900) as d1, browser(1100, 900) as d2:
        drivers = {"alice": d1, "bob": d2}
        waits = {k: WebDriverWait(d, 20) for k, d in drivers.items()}
        for d in drivers.values():
            d.get(url)
        for name, d in drivers.items():
            set_rater(d, waits[name], name)
            assert d.execute_script("return localStorage.getItem('rlir-human-eval-rater')") == name
        assert d1.find_element(By.ID, "video").get_attribute("src").endswith(".gif")
        for i in range(N):                               # turn by turn: both raters' requests interleave
            shown = {}
            for name, d in drivers.items():
                f, lk = plan[name](i)
                shown[name] = answer(d, f, lk)
                cast.append((name, shown[name], f, lk))
            for name, d in drivers.items():
                waits[name].until(lambda d: page_state(d)[2] == str(i + 1) and page_state(d)[1] != shown[name])
        for name, d in drivers.items():
            assert page_state(d)[0] == "done" and d.find_element(By.ID, "done").is_displayed()
            assert "All done" in d.find_element(By.ID, "done").text
        # a second vote on one trial: two tabs of one rater show the same trial; the second submit is refused
        for name, d in drivers.items():
            set_rater(d, waits[name], "carol")
        assert page_state(d1)[1] == page_state(d2)[1] != ""
        tid = answer(d2, "left", "left")
        waits["bob"].until(lambda d: page_state(d)[2] == "1")
        answer(d1, "right", "right")
        waits["alice"].until(lambda d: d.find_element(By.ID, "message").is_displayed())
        assert "already voted on trial " + tid in d1.find_element(By.ID, "message").text
        waits["alice"].until(lambda d: page_state(d)[1] not in ("", tid))    # and the page goes on
        cast.append(("carol", tid, "left", "left"))
    rows = db.read_votes(p)
    assert len(rows) == 2 * N + 1
    got = {(r["rater"], r["trial"]): r for r in rows}
    for rater, t, f, lk in cast:
        r = got[(rater, t)]
        left, right = order[t]
        assert (r["follows"], r["looks"], r["left_model"], r["right_model"]) == (f, lk, left, right)
        to_model = {"left": left, "right": right, "same": "same"}
        assert (r["follows_model"], r["looks_model"]) == (to_model[f], to_model[lk])
        assert "Chrome" in r["user_agent"]
    assert {t for (rt, t) in got if rt == "alice"} == set(order)
    # the report agrees with the rows, and the rates add up with the ties
    out = tmp_path / "r" / "summary.json"
    assert main(["human-eval", "report", "--db", str(p), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "base wins" in text and "rlir wins" in text and "3 raters" in text
    s = json.loads(out.read_text())
    assert s["interval_method"] == "wilson_design_effect" and s["n_votes"] == 2 * N + 1 and s["n_raters"] == 3
    for key, q in s["questions"].items():
        counts = Counter(r[f"{key}_model"] for r in rows)
        assert (q["wins"]["base"]["count"], q["wins"]["rlir"]["count"], q["ties"]["count"]) == \
            (counts["base"], counts["rlir"], counts["same"])
        assert q["wins"]["base"]["rate"] + q["wins"]["rlir"]["rate"] + q["ties"]["rate"] == pytest.approx(1.0)
        assert q["decisive"]["n"] == counts["base"] + counts["rlir"]
        for r in (q["wins"]["base"], q["wins"]["rlir"], q["ties"]):
            assert r["ci95"][0] <= r["rate"] <= r["ci95"][1]


# --- reports -------------------------------------------------------------------------------------
def test_report_refuses_empty_and_hooks_into_rlir_report(world, tmp_path, capsys):
    empty = db.open_db(tmp_path / "empty.sqlite")
    assert main(["-q", "human-eval", "report", "--db", str(empty)]) == 2
    assert "holds no votes yet" in capsys.readouterr().err
    assert main(["-q", "human-eval", "report", "--db", str(tmp_path / "none.sqlite")]) == 2
    assert not (tmp_path / "none.sqlite").exists()
    p = db.open_db(tmp_path / "v.sqlite")
    db.bind_pairs(p, "x", ["base", "rlir"], "pairs")
    for k, (f, lk) in enumerate([("left", "left"), ("right", "same"), ("left", "right"), ("same", "same")]):
        db.insert_vote(p, vote_row(rater=f"r{k % 2}", trial=f"t{k:03d}", follows=f, looks=lk))
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "reward": 0.5, "kl": 0.0}\n{"step": 2, "reward": 0.6, "kl": 0.1}\n')
    out = tmp_path / "rep"
    assert main(["-q", "report", str(run), "--out", str(out), "--videos", "0", "--human-eval", str(p)]) == 0
    page = (out / "report.html").read_text()
    assert "<h2>Human evaluation</h2>" in page and "table class='human-eval'" in page
    assert "Which video follows the actions better?</th><td>4</td><td>2</td><td>50.0%" in page
    assert json.loads((out / "report.json").read_text())["human_eval"]["n_votes"] == 4
    assert main(["-q", "report", str(run), "--out", str(tmp_path / "rep2"), "--human-eval", str(empty)]) == 2
    assert "--human-eval" in capsys.readouterr().err and not (tmp_path / "rep2").exists()
