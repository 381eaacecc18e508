"""The study's results store: an embedded SQLite database, ``results.sqlite`` in the study folder.

Crash safety comes from SQLite's transactions: a run's row is written with one ``INSERT`` inside one
transaction only after the run has finished, so a process killed at any moment leaves either the
whole row or nothing. The run key is the primary key, so a rerun can never duplicate a result.
WAL journaling lets a report read while a study is still writing.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

DB_NAME = "results.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    label TEXT NOT NULL,
    seed INTEGER NOT NULL,
    dataset TEXT NOT NULL,
    run TEXT NOT NULL,      -- the Run as JSON (variant settings, recipe)
    result TEXT NOT NULL,   -- metrics as JSON (top1, params, macs, img_per_s, curve ...)
    finished REAL NOT NULL, -- unix time
    checkpoint TEXT         -- the run's final weights, relative to the study folder (NULL: none kept)
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def connect(folder: str | Path) -> sqlite3.Connection:
    """Open (creating if needed) the results database of the study in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(folder / DB_NAME, timeout=60, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")  # a committed run survives a power cut, not just a kill
    con.executescript(_SCHEMA)
    # Databases written before the checkpoint column existed get it added (NULL for their rows).
    if "checkpoint" not in {row[1] for row in con.execute("PRAGMA table_info(runs)")}:
        con.execute("ALTER TABLE runs ADD COLUMN checkpoint TEXT")
    return con


def finished_keys(con: sqlite3.Connection) -> set[str]:
    """Keys of the runs already stored."""
    return {k for (k,) in con.execute("SELECT key FROM runs")}


def is_finished(con: sqlite3.Connection, key: str) -> bool:
    """Whether the run ``key`` is already stored."""
    return con.execute("SELECT 1 FROM runs WHERE key = ?", (key,)).fetchone() is not None


def write_result(con: sqlite3.Connection, run, result: dict, *, checkpoint: str | None = None) -> bool:
    """Store one finished run (and the path of its kept weights, relative to the study folder) in
    one transaction; return False if it was already stored."""
    with_tx = "BEGIN IMMEDIATE"
    con.execute(with_tx)
    try:
        cur = con.execute(
            "INSERT OR IGNORE INTO runs (key, model, label, seed, dataset, run, result, finished, checkpoint) "
            "VALUES (?,?,?,?,?,?,?,?,?)",
            (run.key, run.model, run.variant.label, run.seed, run.dataset, json.dumps(run.to_dict()),
             json.dumps(result), time.time(), checkpoint),
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return cur.rowcount == 1


def set_meta(con: sqlite3.Connection, name: str, value) -> None:
    """Store a JSON value under ``name`` (the study definition, the machine)."""
    con.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, json.dumps(value)))


def add_machine(con: sqlite3.Connection, info: dict) -> None:
    """Record the machine of this run: ``machine`` is the latest, ``machines`` every distinct one
    (a study resumed elsewhere ran on several; the report names them all)."""
    set_meta(con, "machine", info)
    seen = get_meta(con, "machines", [])
    if info not in seen:
        set_meta(con, "machines", seen + [info])


def get_meta(con: sqlite3.Connection, name: str, default=None):
    row = con.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    return json.loads(row[0]) if row else default


def load_results(folder: str | Path) -> list[dict]:
    """All stored runs of the study in ``folder``: dicts with model, label, seed, dataset, run, result
    and checkpoint (path of the kept weights relative to ``folder``, or None)."""
    path = Path(folder) / DB_NAME
    if not path.is_file():
        raise FileNotFoundError(2, "No study results here (missing results.sqlite)", str(folder))
    con = connect(folder)
    try:
        rows = con.execute("SELECT key, model, label, seed, dataset, run, result, checkpoint FROM runs "
                           "ORDER BY rowid").fetchall()
    finally:
        con.close()
    return [dict(key=k, model=m, label=lab, seed=s, dataset=d, run=json.loads(r), result=json.loads(res), checkpoint=c)
            for k, m, lab, s, d, r, res, c in rows]
