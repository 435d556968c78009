"""The web side of `rlir play`: a Flask app, one JSON request per generated frame.

    GET  /                          the page (static/index.html, play.css, play.js: no CDN, no build step)
    GET  /api/info                  model, resolution, sampler, controls, start frames
    GET  /api/starts/<i>.png        start frame i (a dataset's test clips, with --data)
    POST /api/sessions              a new session id (the page makes one per load)
    POST /api/sessions/<id>/start   {"start": i} or a multipart PNG upload ("png") -> frame 0
    POST /api/sessions/<id>/step    {"controls": [...]} or {"action": [9 ints]} -> the next frame, its action strip
    POST /api/sessions/<id>/reset   back to the start frame
    GET  /api/sessions/<id>/clip.gif the frames so far, each over its action (the report's drawing)

Errors are JSON {"error": text} with 400 (bad input), 404 (unknown session or path) or 413 (upload too
large), so the page can show the text; a bad request never stops the server.
"""
from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
from flask import Flask, jsonify, request, send_from_directory
from werkzeug.exceptions import HTTPException

from rlir.errors import RlirError
from rlir.play.session import CONTROLS, BadInput, NotFound, PlayModel, Sessions, parse_action, png_bytes, read_png

STATIC = Path(__file__).with_name("static")
STRIP_W = 192          # wide enough for action_strip's camera arrow; the page scales it to the frame's width


def data_url(frame: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(frame)).decode()


def strip_url(action: np.ndarray) -> str:
    from rlir.eval.media import action_strip      # the report's drawing of an action
    return data_url(np.asarray(action_strip(action, STRIP_W)))


def load_starts(data: str, pm: PlayModel, max_clips: int = 48) -> list[dict]:
    """Frame 0 of the dataset's test clips (the clips `rlir evaluate` starts from), at most max_clips."""
    from rlir.data.sampler import fixed_clips
    from rlir.data.store import EpisodeStore
    from rlir.errors import DataError
    store = EpisodeStore(data)
    store.require_resolution(pm.resolution, "world model")
    windows = fixed_clips(store, pm.clip_len, split="test", max_clips=max_clips)
    if not windows:
        raise DataError(f"{data}: no test episode has {pm.clip_len} frames (the model's clip length)")
    return [{"label": f"{i} @{s}", "frame": store.load(i).frames[s]} for i, s in windows]


def create_app(pm: PlayModel, starts: list[dict] | None = None, sessions: Sessions | None = None,
               null_groups=()) -> Flask:
    """starts: [{"label", "frame" uint8 [H, W, 3]}]; null_groups: action groups the data never shows (their
    controls are left off the page, e.g. ViZDoom's `use`)."""
    app = Flask(__name__, static_folder=str(STATIC), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = 8 << 20
    starts = starts or []
    sessions = sessions or Sessions(pm)
    app.extensions["rlir_sessions"] = sessions
    from rlir.actions import GROUPS
    controls = [{"name": n, "group": GROUPS[g], "key": k} for n, (g, _, k) in CONTROLS.items()
                if GROUPS[g] not in set(null_groups)]

    @app.errorhandler(RlirError)
    def rlir_error(e):
        return jsonify(error=str(e)), 404 if isinstance(e, NotFound) else 400

    @app.errorhandler(HTTPException)
    def http_error(e):
        text = "the upload is larger than 8 MB" if e.code == 413 else e.description
        return jsonify(error=text), e.code

    def frame_reply(s, extra: dict | None = None):
        return jsonify(t=s.t, frame=data_url(s.frame), context=len(s.window) - 1, **(extra or {}))

    @app.get("/")
    def index():
        return send_from_directory(STATIC, "index.html")

    @app.get("/api/info")
    def info():
        return jsonify(paradigm=pm.paradigm, checkpoint=pm.path, resolution=list(pm.resolution),
                       clip_len=pm.clip_len, context=pm.context, sampler=pm.sampler(), device=pm.device,
                       controls=controls, starts=[s["label"] for s in starts])

    @app.get("/api/starts/<int:i>.png")
    def start_png(i: int):
        if not 0 <= i < len(starts):
            raise NotFound(f"no start frame {i} (there are {len(starts)})")
        return png_bytes(starts[i]["frame"]), 200, {"Content-Type": "image/png", "Cache-Control": "max-age=3600"}

    @app.post("/api/sessions")
    def new_session():
        return jsonify(session=sessions.new())

    @app.post("/api/sessions/<sid>/start")
    def start(sid: str):
        if "png" in request.files:
            frame = read_png(request.files["png"].read(), pm.resolution)
        else:
            body = request.get_json(silent=True)
            i = body.get("start") if isinstance(body, dict) else None
            if type(i) is not int or not 0 <= i < len(starts):
                raise BadInput(f'send {{"start": i}} with i in 0..{len(starts) - 1}, or upload a PNG as "png"'
                               if starts else 'upload a PNG as "png" (no --data: no start frames to pick from)')
            frame = starts[i]["frame"]
        return frame_reply(sessions.start(sid, frame))

    @app.post("/api/sessions/<sid>/step")
    def step(sid: str):
        action = parse_action(request.get_json(silent=True))
        s, r = sessions.step(sid, action)
        return frame_reply(s, {"action": action.tolist(), "strip": strip_url(action), "ms": r["ms"],
                               "slid": r["slid"]})

    @app.post("/api/sessions/<sid>/reset")
    def reset(sid: str):
        return frame_reply(sessions.reset(sid))

    @app.get("/api/sessions/<sid>/clip.gif")
    def clip_gif(sid: str):
        return sessions.gif(sid), 200, {"Content-Type": "image/gif",
                                        "Content-Disposition": 'attachment; filename="rlir-play.gif"'}

    return app
