"""`rlir play`: sessions (both paradigms, window slides, independence), the HTTP API, a real headless
browser playing 10 frames, and the command line's bad inputs."""
from __future__ import annotations

import base64
import contextlib
import io
import socket
import threading
import time
from dataclasses import asdict

import numpy as np
import pytest
import torch

from rlir.data.store import EpisodeStore
from rlir.models.ar_world_model import ARConfig, build_llama
from rlir.models.dit_world_model import DiTConfig, DiTWorldModel
from rlir.models.tokenizer import TokenizerConfig, VQTokenizer
from rlir.play.session import (BadInput, PlayModel, Sessions, UnknownSession, controls_to_action, parse_action,
                               prime_dit_cache, read_png)
from rlir.training.wm_trainer import wm_checkpoint_config
from rlir.utils.checkpoint import save_checkpoint
from tests.conftest import make_episode

HW, CLIP = (16, 16), 4


def make_world_model(root, paradigm: str, seed: int = 0) -> str:
    """A tiny random world-model checkpoint (16x16 frames, 16 tokens a frame, clip of 4), as training saves it."""
    torch.manual_seed(seed)
    if paradigm == "ar":
        codec = VQTokenizer(TokenizerConfig(resolution=HW, channels=(8, 8), dim=8, codebook_size=16, res_blocks=0))
        cfg = ARConfig(n_codes=16, tokens_per_frame=16, clip_len=CLIP, d_model=32, mlp=64, n_heads=2, n_layers=2)
        model = build_llama(cfg)
        with torch.no_grad():         # spread the codebook so that codes decode to clearly different frames
            codec.vq._codebook.embed.copy_(torch.randn_like(codec.vq._codebook.embed) * 5)
            codec.vq._codebook.initted.fill_(True)
    else:
        codec = VQTokenizer(TokenizerConfig(resolution=HW, channels=(8, 8), dim=4, res_blocks=0, quantize=False))
        cfg = DiTConfig(latent_dim=4, tokens_per_frame=16, clip_len=CLIP, d_model=32, mlp=64, n_heads=2, n_layers=2)
        model = DiTWorldModel(cfg)
        with torch.no_grad():         # off AdaLN-Zero's identity start, so that every path carries signal
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    path = root / f"wm_{paradigm}"
    save_checkpoint(path, wm_checkpoint_config(cfg, codec.cfg, {}), {"model": model.state_dict(),
                                                                      "codec": codec.state_dict()})
    return str(path)


def make_data(root) -> str:
    s = EpisodeStore.create(root / "data", metadata={"resolution": list(HW), "null_groups": {"use": "not shown"}})
    for k in range(3):
        s.add(f"e{k}", make_episode(8, HW, seed=k), split="test" if k else "train")
    return str(root / "data")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("play")
    return {"ar": make_world_model(root, "ar"), "diffusion": make_world_model(root, "diffusion"),
            "data": make_data(root), "root": root}


def start_frame(seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*HW, 3), dtype=np.uint8)


ACTIONS = [controls_to_action(c) for c in (["forward"], ["turn_left"], ["forward", "sprint"], ["jump"], [],
                                           ["back", "look_up"], ["attack"], ["right"], ["drop"], ["sneak"])]


# --- sessions ------------------------------------------------------------------------------------
def test_ar_session_reproduces_the_evaluation_sampler(world):
    """Within one clip a session's tokens are exactly `sample`'s (the sampler `rlir generate` uses) for the
    same seed: the same KV cache, nucleus and draws, one request at a time. Its frames are those tokens
    decoded one frame at a time, so they may differ from a whole-clip decode by a rounding level."""
    from rlir.models.ar_world_model import sample, split_frames
    pm = PlayModel(world["ar"])
    s = pm.session(start_frame(), seed=7)
    ours = [s.step(a)["frame"] for a in ACTIONS[:CLIP - 1]]
    codes0 = pm.codec.encode(torch.from_numpy(start_frame())[None])
    acts = torch.from_numpy(np.stack(ACTIONS[:CLIP - 1]).astype(np.int64))[None]
    r = sample(pm.model, pm.cfg, codes0, acts, frames=CLIP, top_p=0.8, generator=torch.Generator().manual_seed(7))
    codes = split_frames(r.tokens, pm.cfg)
    assert torch.equal(torch.cat(s.window)[1:], codes[0, 1:])
    ref = pm.codec.decode(codes)[0, 1:].numpy()
    assert np.abs(np.stack(ours).astype(int) - ref.astype(int)).max() <= 1


def test_dit_session_reproduces_the_evaluation_rollout(world):
    from rlir.models.flow_samplers import rollout
    pm = PlayModel(world["diffusion"], steps=4)
    s = pm.session(start_frame(), seed=3)
    ours = np.stack([s.step(a)["frame"] for a in ACTIONS[:CLIP - 1]]).astype(int)
    z0 = pm.codec.encode(torch.from_numpy(start_frame())[None])
    acts = torch.from_numpy(np.stack(ACTIONS[:CLIP - 1]).astype(np.int64))[None]
    lat = rollout(pm.model, z0, acts, CLIP, steps=4, solver="dpm++", generator=torch.Generator().manual_seed(3))
    ref = pm.codec.decode(lat)[0, 1:].numpy().astype(int)
    assert np.abs(ours - ref).max() <= 1          # one pass vs frame by frame: float rounding only


def test_dit_cache_primed_in_one_pass_equals_frame_by_frame(world):
    from rlir.models.dit_world_model import append_cache
    pm = PlayModel(world["diffusion"])
    z = torch.randn(2, 3, 16, 4)
    a = torch.randint(0, 2, (2, 2, 9))
    cache = None
    for f in range(3):
        kv = pm.model.step_frame(z[:, f], torch.zeros(2), None if f == 0 else a[:, f - 1], f, cache)[1]
        cache = append_cache(cache, kv)
    for (k1, v1), (k2, v2) in zip(cache, prime_dit_cache(pm.model, z, a)):
        assert torch.allclose(k1, k2, atol=1e-5) and torch.allclose(v1, v2, atol=1e-5)


@pytest.mark.parametrize("paradigm", ["ar", "diffusion"])
def test_window_slides_past_the_clip_length(world, paradigm):
    pm = PlayModel(world[paradigm], context=2, steps=3)
    s = pm.session(start_frame(), seed=0)
    rs = [s.step(a) for a in ACTIONS]
    # clip of 4: frames 1-3 see 1, 2, 3 frames; then the window keeps 2 and grows to 4 again
    assert [r["context"] for r in rs] == [1, 2, 3, 2, 3, 2, 3, 2, 3, 2]
    assert [r["slid"] for r in rs] == [False, False, False, True, False, True, False, True, False, True]
    assert s.t == 10 and s.slides == 4 and len(s.window) == 3 and len(s.actions) == 2
    assert len(s.history) == 11 and len(s.history_actions) == 10       # what the page's GIF shows
    assert all(r["frame"].shape == (*HW, 3) and r["frame"].dtype == np.uint8 for r in rs)
    if paradigm == "ar":      # the KV cache holds exactly the window: 3 frames, the 2 actions between them
        assert s.dec.pos == 3 * 16 + 2 * 11 - 1      # the last sampled token waits to be fed with the next action
    else:
        # the window's first 2 frames cached; the last one waits, uncached, to ride along with the next call
        assert s.cache[0][0].shape[2] == 2 * 16 and s.pending[0] is s.window[-1]
    s.reset()
    assert s.t == 0 and len(s.window) == 1 and s.step(ACTIONS[0])["context"] == 1
    with pytest.raises(Exception, match="--context must be between 1 and 3"):
        PlayModel(world[paradigm], context=4)


def test_sessions_are_independent_and_evicted(world):
    pm = PlayModel(world["ar"])
    store = Sessions(pm, max_sessions=3, seed=5)
    a, b, c = store.new(), store.new(), store.new()
    for sid in (a, b, c):
        store.start(sid, start_frame())
    mine, alone = [], []
    for i in range(6):                  # a and b interleaved, b with other actions; c does a's actions alone
        mine.append(store.step(a, ACTIONS[i])[1]["frame"])
        store.step(b, ACTIONS[-1 - i])
    alone = [store.step(c, ACTIONS[i])[1]["frame"] for i in range(6)]
    assert all(np.array_equal(x, y) for x, y in zip(mine, alone))
    assert store.slots[a]["session"].t == 6 and store.slots[b]["session"].t == 6
    d = store.new()                     # a fourth: the least recently used (a) goes
    assert len(store) == 3 and a not in store.slots and d in store.slots
    with pytest.raises(UnknownSession, match="reload the page"):
        store.step(a, ACTIONS[0])
    with pytest.raises(BadInput, match="pick a start frame first"):
        store.step(d, ACTIONS[0])
    store.idle_s = 0.0                  # idle ones go when the next page loads
    time.sleep(0.01)
    store.new()
    assert len(store) == 1


def test_actions_from_controls_and_bad_actions():
    a = controls_to_action(["forward", "back", "turn_right", "sprint"])     # W+S: no move (MineWorld's rule)
    assert a.tolist() == [0, 0, 1, 0, 0, 0, 0, 5, 9]
    assert controls_to_action(["look_up", "look_down"]).tolist() == [0, 0, 0, 0, 0, 0, 0, 5, 5]
    assert parse_action({"action": [1, 2, 0, 0, 1, 0, 0, 5, 10]}).tolist() == [1, 2, 0, 0, 1, 0, 0, 5, 10]
    for bad, text in (({"controls": ["fly"]}, "unknown control 'fly'"), ({"action": [0] * 8}, "list of 9"),
                      ({"action": [3, 0, 0, 0, 0, 0, 0, 5, 5]}, "fore_back"), ({"action": [0.5] * 9}, "list of 9"),
                      ({}, "send JSON"), (None, "send JSON"), ({"controls": "forward"}, "list of control names")):
        with pytest.raises(BadInput, match=text):
            parse_action(bad)


def png(shape=HW, mode="RGB") -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new(mode, (shape[1], shape[0]), (10, 200, 30) if mode == "RGB" else (10, 200, 30, 255)).save(buf, "PNG")
    return buf.getvalue()


def test_png_uploads():
    assert read_png(png(), HW)[0, 0].tolist() == [10, 200, 30]
    assert read_png(png(mode="RGBA"), HW).shape == (*HW, 3)            # an alpha channel is dropped
    with pytest.raises(BadInput, match="is 20x12 pixels; this model takes 16x16"):
        read_png(png((12, 20)), HW)
    with pytest.raises(BadInput, match="not a PNG"):
        read_png(b"GIF89a...", HW)
    with pytest.raises(BadInput, match="could not be read"):
        read_png(png()[:40], HW)


# --- the HTTP API (Flask's test client) ----------------------------------------------------------
def decode(url: str) -> np.ndarray:
    from PIL import Image
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def test_http_api_and_its_errors(world):
    from rlir.play.server import create_app, load_starts
    pm = PlayModel(world["diffusion"], steps=3)
    app = create_app(pm, load_starts(world["data"], pm), null_groups=("use",))
    c = app.test_client()
    info = c.get("/api/info").get_json()
    assert info["paradigm"] == "diffusion" and info["resolution"] == [16, 16] and info["sampler"]["steps"] == 3
    assert len(info["starts"]) == 4 and "use" not in {x["name"] for x in info["controls"]}   # 2 test episodes x 2
    assert c.get("/").status_code == 200 and c.get("/static/play.js").status_code == 200
    assert c.get("/api/starts/0.png").data.startswith(b"\x89PNG")
    assert c.get("/api/starts/9.png").status_code == 404
    sid = c.post("/api/sessions").get_json()["session"]
    u = f"/api/sessions/{sid}"
    r = c.post(f"{u}/step", json={"controls": ["forward"]})
    assert r.status_code == 400 and "pick a start frame" in r.get_json()["error"]
    r = c.post(f"{u}/start", json={"start": 1}).get_json()
    from rlir.data.sampler import fixed_clips
    ep, at = fixed_clips(EpisodeStore(world["data"]), pm.clip_len, "test", max_clips=48)[1]
    assert at == 0                           # start 1: the evaluation set's second clip, round-robin the second episode's first
    real = EpisodeStore(world["data"]).load(ep).frames[at]
    assert r["t"] == 0 and np.array_equal(decode(r["frame"]), real)
    r = c.post(f"{u}/step", json={"controls": ["forward", "turn_left"]}).get_json()
    assert r["t"] == 1 and r["action"] == [1, 0, 0, 0, 0, 0, 0, 5, 1] and r["ms"] > 0
    assert decode(r["frame"]).shape == (16, 16, 3) and decode(r["strip"]).shape[1] == 192
    assert c.post(f"{u}/step", json={"action": [0, 0, 0, 0, 0, 0, 0, 5, 11]}).status_code == 400
    assert c.post(f"{u}/step", data="not json").status_code == 400
    for body, text in ((png((12, 20)), "is 20x12 pixels"), (b"hello", "not a PNG")):
        r = c.post(f"{u}/start", data={"png": (io.BytesIO(body), "x.png")})
        assert r.status_code == 400 and text in r.get_json()["error"]
    assert c.post(f"{u}/start", json={"start": 99}).status_code == 400
    r = c.post(f"{u}/step", json={"controls": []}).get_json()                # the session survived the bad input
    assert r["t"] == 2 and r["action"] == [0, 0, 0, 0, 0, 0, 0, 5, 5]
    from PIL import Image
    gif = Image.open(io.BytesIO(c.get(f"{u}/clip.gif").data))                 # frame 0 and the 2 made so far
    assert gif.format == "GIF" and gif.n_frames == 3
    r = c.post(f"{u}/reset").get_json()
    assert r["t"] == 0 and np.array_equal(decode(r["frame"]), real)
    r = c.post(f"{u}/start", data={"png": (io.BytesIO(png()), "green.png")}).get_json()
    assert decode(r["frame"])[0, 0].tolist() == [10, 200, 30]
    r = c.post("/api/sessions/nope/step", json={"controls": []})
    assert r.status_code == 404 and "unknown session" in r.get_json()["error"]
    assert c.get("/api/nothing").status_code == 404 and "error" in c.get("/api/nothing").get_json()


# --- a real browser ------------------------------------------------------------------------------
@contextlib.contextmanager
def serving(app):
    from werkzeug.serving import make_server
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        yield f"http://127.0.0.1:{srv.port}"
    finally:
        srv.shutdown()
        th.join(5)


def test_browser_plays_ten_frames_from_key_presses(world):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from rlir.play.server import create_app, load_starts
    from tests.browser import browser
    pm = PlayModel(world["ar"])
    app = create_app(pm, load_starts(world["data"], pm), null_groups=("use",))
    with serving(app) as url, browser() as d:
        wait = WebDriverWait(d, 20)
        d.get(url)
        wait.until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
        assert not d.find_elements(By.ID, "btn-use") and d.find_elements(By.ID, "btn-sneak")
        d.find_elements(By.CSS_SELECTOR, "img.start")[0].click()
        wait.until(lambda d: (d.find_element(By.ID, "start-img").get_attribute("src") or "").startswith("data:"))
        start = decode(d.find_element(By.ID, "start-img").get_attribute("src"))
        body = d.find_element(By.TAG_NAME, "body")
        keys = ["w", "a", "s", "d", Keys.ARROW_LEFT, Keys.ARROW_RIGHT, Keys.ARROW_UP, Keys.SPACE, "f", "q"]
        for n, key in enumerate(keys, 1):             # one frame per press; 10 frames slide a clip of 4 thrice
            body.send_keys(key)
            wait.until(lambda d: d.find_element(By.ID, "counter").get_attribute("data-frames") == str(n))
        film = d.find_elements(By.CSS_SELECTOR, "#film img.gen")
        assert [int(i.get_attribute("data-t")) for i in film] == list(range(1, 11))
        frames = [decode(i.get_attribute("src")) for i in film]
        assert all(f.shape == (16, 16, 3) for f in frames)
        # every frame is new: none repeats another or the start frame (a stuck page or model would)
        shown = [start, *frames]
        diffs = [np.abs(x.astype(int) - y.astype(int)).mean() for i, x in enumerate(shown) for y in shown[i + 1:]]
        assert min(diffs) > 1.0, min(diffs)
        assert decode(d.find_element(By.ID, "frame").get_attribute("src")).tolist() == frames[-1].tolist()
        assert d.find_element(By.ID, "strip").get_attribute("src").startswith("data:image/png")
        assert "fps" in d.find_element(By.ID, "fps").text and "ms/frame" in d.find_element(By.ID, "ms").text
        # a PNG of the wrong size: a message on the page, and the server and session go on
        bad = world["root"] / "wrong.png"
        bad.write_bytes(png((12, 20)))
        d.find_element(By.ID, "upload").send_keys(str(bad))
        wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
        assert "20x12 pixels" in d.find_element(By.ID, "error").text
        body.send_keys("w")
        wait.until(lambda d: d.find_element(By.ID, "counter").get_attribute("data-frames") == "11")
        d.find_element(By.ID, "reset").click()
        wait.until(lambda d: d.find_element(By.ID, "counter").get_attribute("data-frames") == "0")
        assert not d.find_elements(By.CSS_SELECTOR, "#film img.gen")


# --- the command line ----------------------------------------------------------------------------
def test_cli_serves_the_page(world):
    """`rlir play` itself: a free port (0), the address printed, the page and the API answering."""
    import json
    import subprocess
    import sys
    import urllib.request
    assert subprocess.run([sys.executable, "-m", "rlir", "play", "--help"], capture_output=True,
                          text=True).stdout.count("--world-model") >= 1
    p = subprocess.Popen([sys.executable, "-m", "rlir", "-q", "play", "--world-model", world["diffusion"], "--data",
                          world["data"], "--port", "0", "--steps", "2"], stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert "diffusion world model" in line and "4 start frames" in line, line
        url = line.split(" on ")[1].split()[0]
        assert urllib.request.urlopen(url).read().startswith(b"<!doctype html>")
        info = json.loads(urllib.request.urlopen(url + "api/info").read())
        assert info["sampler"] == {"steps": 2, "solver": "dpm++"} and len(info["starts"]) == 4
    finally:
        p.terminate()
        p.wait(10)
        p.stdout.close()


def test_cli_refuses_bad_inputs(world, capsys):
    from rlir.cli import main
    root = world["root"]
    save_checkpoint(root / "idm", {"kind": "idm"}, {"model": {"w": torch.zeros(1)}})
    codec = TokenizerConfig(resolution=HW, channels=(8, 8), dim=8, codebook_size=16, res_blocks=0)
    save_checkpoint(root / "tok", {"kind": "tokenizer", "model": asdict(codec)},
                    {"model": VQTokenizer(codec).state_dict()})
    big = EpisodeStore.create(root / "big", metadata={"resolution": [8, 8]})
    big.add("e0", make_episode(8, (8, 8)), split="test")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for args, text in (([root / "idm"], "is an 'idm' checkpoint, not 'world_model'"),
                           ([root / "tok"], "is a 'tokenizer' checkpoint, not 'world_model'"),
                           ([root / "missing"], "checkpoint not found"),
                           ([world["ar"], "--context", "4"], "--context must be between 1 and 3"),
                           ([world["ar"], "--data", root / "big"], "holds 8x8 frames but the world model takes 16x16"),
                           ([world["ar"], "--data", root / "nodata"], "dataset directory does not exist"),
                           ([world["ar"], "--port", "70000"], "--port must be between 0 and 65535"),
                           ([world["ar"], "--top-p", "0"], "--top-p must be greater than 0"),
                           ([world["ar"], "--port", port], "in use")):
            assert main(["-q", "play", "--world-model", *map(str, args)]) == 2, args
            err = capsys.readouterr().err.strip()
            assert text in err and "Traceback" not in err and err.count("\n") == 0, err
