"""The web side of `rlir human-eval serve`: a Flask app that shows trials and records votes.

    GET  /                              the page (static/index.html, human_eval.css, human_eval.js; no CDN)
    GET  /api/info                      the questions, the answers, the number of trials (never the models)
    GET  /api/next?rater=ID             the next trial this rater has not voted on, and the progress
    GET  /api/trials/<id>/video.gif     a trial's side-by-side video
    POST /api/votes                     {"rater", "trial", "follows", "looks"}, answers left / right / same

Errors are JSON {"error": text}: 400 for a bad request, 404 for an unknown trial or a video file gone
missing, 409 for a second vote by a rater on a trial (the first stays). None of them stops the server.
Each rater sees the trials in an order of their own (a hash of rater and trial id), so that the first
trials, rated with the least practice, are not the same ones for everybody.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from flask import Flask, jsonify, request, send_from_directory
from werkzeug.exceptions import HTTPException

from rlir.errors import RlirError
from rlir.human_eval import db
from rlir.human_eval.db import ANSWERS, QUESTIONS, TIE, Conflict

STATIC = Path(__file__).with_name("static")
MAX_RATER = 64


class BadRequest(RlirError):
    """HTTP 400."""


class Missing(RlirError):
    """HTTP 404."""


def rater_id(value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRequest("give a rater id (any name or code, up to 64 characters)")
    value = value.strip()
    if len(value) > MAX_RATER or not value.isprintable():
        raise BadRequest(f"a rater id is up to {MAX_RATER} printable characters")
    return value


def rater_order(rater: str, trial_ids: list[str]) -> list[str]:
    return sorted(trial_ids, key=lambda t: hashlib.sha256(f"{rater}\0{t}".encode()).hexdigest())


def create_app(pairs: str | Path, manifest: dict, db_path: str | Path) -> Flask:
    """manifest: PAIRS/trials.json as make.load_trials read it; db_path: a database open_db checked."""
    pairs = Path(pairs)
    trials = {t["id"]: t for t in manifest["trials"]}
    ids = list(trials)
    app = Flask(__name__, static_folder=str(STATIC), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = 64 << 10

    @app.errorhandler(RlirError)
    def rlir_error(e):
        code = 409 if isinstance(e, Conflict) else 404 if isinstance(e, Missing) else 400
        return jsonify(error=str(e)), code

    @app.errorhandler(HTTPException)
    def http_error(e):
        return jsonify(error=e.description), e.code

    def progress(rater: str) -> tuple[dict, set]:
        voted = db.voted_trials(db_path, rater) & set(ids)
        return {"done": len(voted), "total": len(ids)}, voted

    @app.get("/")
    def index():
        return send_from_directory(STATIC, "index.html")

    @app.get("/api/info")
    def info():
        return jsonify(n_trials=len(ids), questions=[{"key": k, "text": v} for k, v in QUESTIONS.items()],
                       answers=list(ANSWERS), frames=manifest.get("frames"), fps=manifest.get("fps"))

    @app.get("/api/next")
    def next_trial():
        rater = rater_id(request.args.get("rater"))
        prog, voted = progress(rater)
        todo = [t for t in rater_order(rater, ids) if t not in voted]
        if not todo:
            return jsonify(done=True, trial=None, progress=prog)
        t = todo[0]
        return jsonify(done=False, trial={"id": t, "video": f"/api/trials/{t}/video.gif"}, progress=prog)

    @app.get("/api/trials/<tid>/video.gif")
    def video(tid: str):
        t = trials.get(tid)
        if t is None:
            raise Missing(f"no trial {tid!r}")
        f = pairs / t["video"]
        if not f.is_file():
            raise Missing(f"the video of trial {tid} ({t['video']}) is missing from {pairs}")
        return send_from_directory(pairs, t["video"], mimetype="image/gif", max_age=3600)

    @app.post("/api/votes")
    def vote():
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise BadRequest('send JSON {"rater", "trial", "follows", "looks"}')
        rater = rater_id(body.get("rater"))
        tid = body.get("trial")
        if not isinstance(tid, str) or tid not in trials:
            raise BadRequest(f"unknown trial {tid!r}")
        left, right = trials[tid]["order"]
        row = {"rater": rater, "trial": tid, "left_model": left, "right_model": right, "time_utc": db.now_utc(),
               "user_agent": request.headers.get("User-Agent", "")[:400]}
        for q in QUESTIONS:
            a = body.get(q)
            if a not in ANSWERS:
                raise BadRequest(f'"{q}" must be one of {", ".join(ANSWERS)}, got {a!r}')
            row[q] = a
            row[f"{q}_model"] = {"left": left, "right": right}.get(a, TIE)
        db.insert_vote(db_path, row)
        return jsonify(ok=True, progress=progress(rater)[0]), 201

    return app
