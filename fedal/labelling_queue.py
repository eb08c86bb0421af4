"""A node's durable labelling queue: one SQLite file, ``NODE_DIR/.fedal/labelling.sqlite3``.

Tables:

- ``settings``: the class names, in label order (written by the client, read by the page);
- ``images``: every image the node has seen, numbered once and for good (``id`` is the
  node's sample index in its pool and in the run's ledger), and whether it is protected;
- ``queue``: the images a client picked (``image``, ``queued_round``) and, once a person
  answered, ``label`` and ``answered_at``.

An entry is *pending* until answered. Whether an answer is already in the client's pool
is the pool's to say (its labelled set), so nothing is lost when a process dies between
reading an answer and saving the pool: the next round simply takes it again. A trigger
refuses to queue a protected image, and protected images are never answered or served.

The file is in WAL mode with ``synchronous=FULL``: every write is committed to disk
before the call returns, so an answer the page acknowledged survives any crash, and the
page and the client may use the file at the same time.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

STATE_DIR = ".fedal"
QUEUE_FILE = "labelling.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    protected INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS queue (
    image INTEGER PRIMARY KEY REFERENCES images (id),
    queued_round INTEGER NOT NULL,
    label INTEGER,
    answered_at TEXT
);
CREATE TRIGGER IF NOT EXISTS protected_never_queued BEFORE INSERT ON queue
WHEN (SELECT protected FROM images WHERE id = NEW.image) != 0
BEGIN SELECT RAISE(ABORT, 'a protected image cannot be queued'); END;
"""


class QueueError(RuntimeError):
    """The labelling queue cannot do what was asked; one line says why."""


@dataclass(frozen=True)
class QueuedImage:
    """A pending entry: the image's node index, its path (relative) and its round."""

    image: int
    path: str
    queued_round: int


def queue_file(node_dir: Path) -> Path:
    """Where a node folder keeps its labelling queue."""
    return node_dir / STATE_DIR / QUEUE_FILE


class LabellingQueue:
    """The labelling queue of one node folder (a connection per call: usable from any
    thread or process)."""

    def __init__(self, node_dir: Path) -> None:
        if not node_dir.is_dir():
            raise QueueError(f"node folder {str(node_dir)!r} does not exist")
        self.node_dir = node_dir
        self.path = queue_file(node_dir)
        self.path.parent.mkdir(exist_ok=True)
        with self._transaction() as connection:
            connection.executescript(_SCHEMA)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A connection whose work is committed (durably) on success, rolled back on error."""
        with closing(sqlite3.connect(self.path, timeout=30)) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            with connection:
                yield connection

    # -------------------------------------------------------------------- client side

    def use_classes(self, classes: Sequence[str]) -> None:
        """Record the run's classes; a queue answered under other classes is refused."""
        wanted = json.dumps(list(classes))
        with self._transaction() as connection:
            row = connection.execute("SELECT value FROM settings WHERE key = 'classes'").fetchone()
            if row is None:
                connection.execute("INSERT INTO settings VALUES ('classes', ?)", (wanted,))
            elif row[0] != wanted and connection.execute("SELECT 1 FROM queue").fetchone():
                raise QueueError(
                    f"{self.path} holds answers for classes {json.loads(row[0])}, not "
                    f"{list(classes)}; label with the same classes or start a new node folder"
                )
            else:
                connection.execute("UPDATE settings SET value = ? WHERE key = 'classes'", (wanted,))

    def register(self, paths: Sequence[str]) -> list[str]:
        """Number the new ``paths`` after the known ones; every known path in index order."""
        with self._transaction() as connection:
            known = {path for (path,) in connection.execute("SELECT path FROM images")}
            start = connection.execute("SELECT COALESCE(MAX(id) + 1, 0) FROM images").fetchone()[0]
            fresh = [path for path in paths if path not in known]
            connection.executemany(
                "INSERT INTO images (id, path) VALUES (?, ?)",
                [(start + offset, path) for offset, path in enumerate(fresh)],
            )
            return [path for (path,) in connection.execute("SELECT path FROM images ORDER BY id")]

    def protect(self, images: np.ndarray) -> None:
        """Mark node indices ``images`` protected (never queued, answered or served)."""
        with self._transaction() as connection:
            connection.executemany(
                "UPDATE images SET protected = 1 WHERE id = ?", [(int(i),) for i in images]
            )

    def enqueue(self, images: np.ndarray, round_number: int) -> None:
        """Queue node indices ``images`` in ``round_number`` (already queued ones stay)."""
        try:
            with self._transaction() as connection:
                connection.executemany(
                    "INSERT OR IGNORE INTO queue (image, queued_round) VALUES (?, ?)",
                    [(int(image), round_number) for image in images],
                )
        except sqlite3.IntegrityError as error:
            raise QueueError(f"refused to queue: {error}") from None

    def queued(self) -> np.ndarray:
        """Node indices of every queue entry, answered or not (sorted)."""
        with self._transaction() as connection:
            rows = connection.execute("SELECT image FROM queue ORDER BY image").fetchall()
        return np.asarray([image for (image,) in rows], dtype=np.int64)

    def answered(self) -> tuple[np.ndarray, np.ndarray]:
        """(node indices, labels) of every answer, in the order they were given."""
        with self._transaction() as connection:
            rows = connection.execute(
                "SELECT queue.image, queue.label FROM queue JOIN images ON images.id = queue.image "
                "WHERE queue.label IS NOT NULL AND images.protected = 0 "
                "ORDER BY queue.answered_at, queue.image"
            ).fetchall()
        table = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
        return table[:, 0], table[:, 1]

    # -------------------------------------------------------------------- page side

    def classes(self) -> tuple[str, ...]:
        """The class names the client recorded (none before a client started here)."""
        with self._transaction() as connection:
            row = connection.execute("SELECT value FROM settings WHERE key = 'classes'").fetchone()
        return tuple(json.loads(row[0])) if row else ()

    def next_pending(self) -> QueuedImage | None:
        """The oldest unanswered, unprotected entry (by round, then index), if any."""
        with self._transaction() as connection:
            row = connection.execute(
                "SELECT queue.image, images.path, queue.queued_round FROM queue "
                "JOIN images ON images.id = queue.image "
                "WHERE queue.label IS NULL AND images.protected = 0 "
                "ORDER BY queue.queued_round, queue.image LIMIT 1"
            ).fetchone()
        return QueuedImage(*row) if row else None

    def queued_path(self, image: int) -> str | None:
        """The path of a queued, unprotected image; None for anything else."""
        with self._transaction() as connection:
            row = connection.execute(
                "SELECT images.path FROM queue JOIN images ON images.id = queue.image "
                "WHERE queue.image = ? AND images.protected = 0",
                (image,),
            ).fetchone()
        return row[0] if row else None

    def answer(self, image: int, label: int) -> bool:
        """Record (and commit) a person's answer for a pending image; False when the image
        is not pending (unknown, protected or answered already: the first answer stays)."""
        if not 0 <= label < len(self.classes()):
            raise QueueError(f"label {label} is not a class index")
        stamp = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        with self._transaction() as connection:
            changed = connection.execute(
                "UPDATE queue SET label = ?, answered_at = ? WHERE image = ? AND label IS NULL "
                "AND image IN (SELECT id FROM images WHERE protected = 0)",
                (label, stamp, image),
            ).rowcount
        return changed == 1

    def waiting(self) -> int:
        """How many queued images wait for an answer."""
        with self._transaction() as connection:
            return int(
                connection.execute(
                    "SELECT COUNT(*) FROM queue JOIN images ON images.id = queue.image "
                    "WHERE queue.label IS NULL AND images.protected = 0"
                ).fetchone()[0]
            )

    def labelled_per_round(self) -> dict[int, int]:
        """Answers given, by the round their image was queued in."""
        with self._transaction() as connection:
            rows = connection.execute(
                "SELECT queued_round, COUNT(*) FROM queue WHERE label IS NOT NULL "
                "GROUP BY queued_round ORDER BY queued_round"
            ).fetchall()
        return {int(round_number): int(count) for round_number, count in rows}
