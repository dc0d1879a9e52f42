"""SQLite job store at `{home}/cadence.db`.

One short-lived connection per call: the UI serves requests from a thread pool and runs a scheduler thread,
and SQLite connections must not be shared across threads. WAL mode lets readers and the writer overlap.
The store only records state; `runner.py` decides transitions from the real process state.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

# created: saved, not queued; queued: waits for its device slot; running/stopping: a live process;
# finished/stopped/failed: terminal.
ACTIVE = ("running", "stopping")
TERMINAL = ("finished", "stopped", "failed")
STATUSES = ("created", "queued", *ACTIVE, *TERMINAL)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    device TEXT NOT NULL,
    config_yaml TEXT NOT NULL,
    config_path TEXT NOT NULL,
    run_dir TEXT NOT NULL,
    total_steps INTEGER NOT NULL DEFAULT 0,
    pid INTEGER,
    pid_create_time REAL,
    exit_code INTEGER,
    error TEXT,
    created_at REAL NOT NULL,
    queued_at REAL,
    started_at REAL,
    stop_requested_at REAL,
    stop_stage INTEGER NOT NULL DEFAULT 0,
    finished_at REAL,
    kind TEXT NOT NULL DEFAULT 'train'
)
"""
# columns added after the first release, with their definitions: an older database gains them at start
_ADDED_COLUMNS = {"kind": "TEXT NOT NULL DEFAULT 'train'"}
KINDS = ("train", "caption")  # what the job runs: `cadence train CONFIG` or `cadence caption @ARGS`


@dataclass
class Job:
    id: str
    name: str
    status: str
    device: str  # "cpu" or a GPU index ("0", "1", ...)
    config_yaml: str
    config_path: str
    run_dir: str
    total_steps: int = 0
    pid: int | None = None
    pid_create_time: float | None = None
    exit_code: int | None = None
    error: str | None = None
    created_at: float = 0.0
    queued_at: float | None = None
    started_at: float | None = None
    stop_requested_at: float | None = None
    stop_stage: int = 0  # 0 none, 1 SIGINT sent, 2 SIGTERM sent, 3 SIGKILL sent
    finished_at: float | None = None
    kind: str = "train"  # "train": config_path is a job config; "caption": an argument file (runner.py)

    def to_dict(self) -> dict:
        return asdict(self)


_COLUMNS = [f.name for f in fields(Job)]


class JobStore:
    """CRUD over the `jobs` table; every method opens its own connection (thread-safe by construction)."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(_SCHEMA)
            present = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
            for column, definition in _ADDED_COLUMNS.items():
                if column not in present:
                    try:
                        conn.execute(f"ALTER TABLE jobs ADD COLUMN {column} {definition}")
                    except sqlite3.OperationalError as exc:  # a second UI on this home added it meanwhile
                        if "duplicate column" not in str(exc):
                            raise

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.db_path, timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            with conn:  # commits on success, rolls back on error
                yield conn
        finally:
            conn.close()

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex[:12]

    def add(self, job: Job) -> Job:
        if not job.created_at:
            job.created_at = time.time()
        cols = ", ".join(_COLUMNS)
        marks = ", ".join("?" for _ in _COLUMNS)
        with self._connect() as conn:
            conn.execute(f"INSERT INTO jobs ({cols}) VALUES ({marks})", [getattr(job, c) for c in _COLUMNS])
        return job

    def add_if_name_free(self, job: Job) -> bool:
        """Insert `job` unless a job with its name exists, in one write transaction: two requests racing
        with one name cannot both get in (they would share, and resume, one run folder)."""
        if not job.created_at:
            job.created_at = time.time()
        cols = ", ".join(_COLUMNS)
        marks = ", ".join("?" for _ in _COLUMNS)
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            if conn.execute("SELECT 1 FROM jobs WHERE name = ?", (job.name,)).fetchone():
                return False
            conn.execute(f"INSERT INTO jobs ({cols}) VALUES ({marks})", [getattr(job, c) for c in _COLUMNS])
        return True

    def get(self, job_id: str) -> Job | None:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job(**dict(row)) if row else None

    def list(self, statuses: tuple[str, ...] | None = None) -> list[Job]:
        query, params = "SELECT * FROM jobs", ()
        if statuses:
            query += f" WHERE status IN ({', '.join('?' for _ in statuses)})"
            params = tuple(statuses)
        with self._connect() as conn:
            rows = conn.execute(query + " ORDER BY created_at, rowid", params).fetchall()
        return [Job(**dict(r)) for r in rows]

    def update(self, job_id: str, **changes: object) -> None:
        unknown = set(changes) - set(_COLUMNS)
        if unknown:
            raise KeyError(f"unknown job columns: {sorted(unknown)}")
        sets = ", ".join(f"{k} = ?" for k in changes)
        with self._connect() as conn:
            conn.execute(f"UPDATE jobs SET {sets} WHERE id = ?", [*changes.values(), job_id])

    def transition(self, job_id: str, expected: tuple[str, ...], **changes: object) -> bool:
        """Compare-and-set on status, so the scheduler thread and a request never both act on one job."""
        sets = ", ".join(f"{k} = ?" for k in changes)
        marks = ", ".join("?" for _ in expected)
        with self._connect() as conn:
            cur = conn.execute(
                f"UPDATE jobs SET {sets} WHERE id = ? AND status IN ({marks})",
                [*changes.values(), job_id, *expected],
            )
        return cur.rowcount == 1

    def delete(self, job_id: str) -> None:
        with self._connect() as conn:
            conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def names(self) -> set[str]:
        with self._connect() as conn:
            return {r[0] for r in conn.execute("SELECT name FROM jobs")}
