"""The votes database of `rlir human-eval`: one SQLite file (stdlib sqlite3), one row per vote.

Why SQLite in WAL mode: several raters vote at once through a threaded server; WAL lets readers
(the next-trial query) run beside the one writer, busy_timeout makes a second writer wait instead of
failing, and UNIQUE(rater, trial) makes the database itself refuse a second vote on a trial, whatever
the timing of two tabs. Each request opens its own connection (sqlite3 connections are not shared
between threads) and each write is one transaction.

A database belongs to one pairs folder (its `pairs_id`, fixed by the first `serve`), so votes on
different trial sets, whose trial ids repeat, never mix.

A file that is not an rlir human-eval database is refused before anything writes to it: the header is
read as bytes, the schema through a read-only connection.
"""
from __future__ import annotations

import datetime
import json
import sqlite3
from pathlib import Path
from urllib.parse import quote

from rlir.errors import ConfigError, RlirError

SCHEMA_VERSION = "1"
ANSWERS = ("left", "right", "same")
TIE = "same"
QUESTIONS = {   # key -> the question as the page asks it
    "follows": "Which video follows the actions better?",
    "looks": "Which looks better?",
}
VOTE_COLUMNS = ("id", "rater", "trial", "left_model", "right_model", "follows", "follows_model", "looks",
                "looks_model", "time_utc", "user_agent")
SCHEMA = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE votes (
    id            INTEGER PRIMARY KEY,
    rater         TEXT NOT NULL,
    trial         TEXT NOT NULL,
    left_model    TEXT NOT NULL,      -- the order shown
    right_model   TEXT NOT NULL,
    follows       TEXT NOT NULL CHECK (follows IN {ANSWERS}),
    follows_model TEXT NOT NULL,      -- the answer as a model name, or 'same'
    looks         TEXT NOT NULL CHECK (looks IN {ANSWERS}),
    looks_model   TEXT NOT NULL,
    time_utc      TEXT NOT NULL,      -- ISO 8601, UTC
    user_agent    TEXT NOT NULL DEFAULT '',
    UNIQUE (rater, trial)
);
"""
BUSY_TIMEOUT_MS = 10_000


class Conflict(RlirError):
    """A second vote by a rater on a trial (HTTP 409); the first one stays."""


def _inspect(path: str | Path) -> sqlite3.Connection:
    """A connection that cannot write and leaves no -wal/-shm files behind (immutable: no locks, the main
    file only): for checking an unknown file's schema, which is fixed when the database is made."""
    conn = sqlite3.connect(f"file:{quote(str(Path(path).resolve()))}?mode=ro&immutable=1", uri=True)
    conn.row_factory = sqlite3.Row
    return conn


def connect(path: str | Path) -> sqlite3.Connection:
    """A read-write connection for one request (WAL is a property of the file, set at creation)."""
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000)
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.row_factory = sqlite3.Row
    return conn


def _problem(path: Path) -> str | None:
    """Why the existing file at path is not a usable votes database, or None (None also for an empty one)."""
    if not path.is_file():
        return "is not a file"
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return None                                     # a 0-byte file: SQLite takes it as an empty database
    if head != b"SQLite format 3\x00":
        return "is not an SQLite database"
    try:
        conn = _inspect(path)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not tables:
                return None
            if not {"meta", "votes"} <= tables:
                return f"is an SQLite database of other tables ({', '.join(sorted(tables)[:5])}), not rlir votes"
            cols = {r[1] for r in conn.execute("PRAGMA table_info(votes)")}
            if set(VOTE_COLUMNS) - cols:
                return f"has a votes table without the columns {', '.join(sorted(set(VOTE_COLUMNS) - cols))}"
            version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if not version or version[0] != SCHEMA_VERSION:
                return f"has schema version {version[0] if version else 'none'}, this rlir reads {SCHEMA_VERSION}"
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        return f"is a damaged SQLite database ({e})"
    return None


def open_db(path: str | Path, create: bool = True, option: str = "--db") -> Path:
    """Check the file at path (creating the database there when it is missing or empty and create is
    set); a file that is something else raises ConfigError and is left as it was."""
    p = Path(path)
    if p.exists():
        why = _problem(p)
        if why:
            raise ConfigError(f"{option} {path} {why}; give another {option} (the file was not changed)")
        if _has_schema(p):
            return p
    elif not create:
        raise ConfigError(f"{option} {path}: no such votes database (`rlir human-eval serve --db` makes it)")
    if not create:
        raise ConfigError(f"{option} {path} is an empty database: no votes yet")
    p.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(p), timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        conn.execute("PRAGMA journal_mode=WAL")         # persistent: every later connection uses WAL
        # one transaction: a kill leaves no half-made schema
        conn.executescript(f"BEGIN IMMEDIATE;{SCHEMA}INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}'),"
                           f" ('created', '{now_utc()}');COMMIT;")
    finally:
        conn.close()
    return p


def _has_schema(p: Path) -> bool:
    if p.stat().st_size == 0:
        return False
    conn = _inspect(p)
    try:
        return conn.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0] > 0
    finally:
        conn.close()


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def bind_pairs(path: str | Path, pairs_id: str, models: list[str], pairs_dir: str) -> None:
    """Tie the database to one pairs folder; a database already tied to another is refused."""
    conn = connect(path)
    try:
        with conn:
            conn.execute("BEGIN IMMEDIATE")                 # two servers starting at once: one binds, one reads
            meta = {r[0]: r[1] for r in conn.execute("SELECT key, value FROM meta")}
            if "pairs_id" not in meta:
                conn.executemany("INSERT INTO meta VALUES (?, ?)", [("pairs_id", pairs_id),
                                 ("models", json.dumps(models)), ("pairs_dir", str(pairs_dir))])
            elif meta["pairs_id"] != pairs_id:
                raise ConfigError(f"--db {path} holds votes on another set of trials ({meta.get('pairs_dir')}, "
                                  f"models {', '.join(json.loads(meta.get('models', '[]')))}); give another --db")
    finally:
        conn.close()


def read_meta(path: str | Path) -> dict:
    conn = connect(path)
    try:
        meta = {r[0]: r[1] for r in conn.execute("SELECT key, value FROM meta")}
    finally:
        conn.close()
    if "models" in meta:
        meta["models"] = json.loads(meta["models"])
    return meta


def insert_vote(path: str | Path, vote: dict) -> int:
    """One vote row (VOTE_COLUMNS but id); Conflict when this rater already voted on this trial."""
    cols = VOTE_COLUMNS[1:]
    conn = connect(path)
    try:
        with conn:
            cur = conn.execute(f"INSERT INTO votes ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                               [vote[c] for c in cols])
            return int(cur.lastrowid)
    except sqlite3.IntegrityError as e:
        if "UNIQUE" in str(e):
            raise Conflict(f"rater {vote['rater']!r} has already voted on trial {vote['trial']}; "
                           f"the first vote is kept") from None
        raise
    finally:
        conn.close()


def voted_trials(path: str | Path, rater: str) -> set[str]:
    conn = connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT trial FROM votes WHERE rater = ?", (rater,))}
    finally:
        conn.close()


def read_votes(path: str | Path) -> list[dict]:
    conn = connect(path)
    try:
        return [dict(r) for r in conn.execute(f"SELECT {', '.join(VOTE_COLUMNS)} FROM votes ORDER BY id")]
    finally:
        conn.close()
