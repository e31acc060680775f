"""One SQLite connection to the device state, guarded by a re-entrant lock: short locked reads, one-transaction
writes with every SQLite failure as its typed error, checkpoints, and closing."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from edgetl_runtime.errors import StateError
from edgetl_runtime.state.errors import _FIX_CORRUPT, state_error
from edgetl_runtime.warn import warn

__all__ = ["StateConnection"]


class StateConnection:
    """One SQLite connection to a state file (or memory) and how every part of the state uses it.

    :class:`~edgetl_runtime.state.database.StateDatabase` opens the file and ``attach``-es the checked
    connection; the store and the kept images then read under :meth:`reading` and write one transaction
    at a time under :meth:`writing`. ``read_only`` says whether the file may be written.
    """

    def __init__(self, path: str | None, busy_timeout: float) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.read_only = False
        self._con: sqlite3.Connection | None = None
        self._lock = threading.RLock()

    def attach(self, con: sqlite3.Connection) -> None:
        """Use ``con`` (opened and checked by the database) from now on."""
        with self._lock:
            self._con = con

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Hold the lock for a read; damage SQLite only notices now (a malformed page) becomes a StateError."""
        with self._lock:
            try:
                yield
            except sqlite3.DatabaseError as exc:
                raise state_error(exc, self.path or ":memory:", "Reading", self.busy_timeout) from exc
            except UnicodeDecodeError as exc:
                raise StateError(
                    f"Reading state database {self.path or ':memory:'!r} failed ({exc}): it holds undecodable "
                    f"text. Fix: {_FIX_CORRUPT}."
                ) from exc

    @contextmanager
    def writing(self, action: str, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """Lock, one transaction, and each SQLite failure as its typed error (nothing is kept on any error)."""
        with self._lock:
            db = self.db
            if self.read_only:
                raise state_error(
                    sqlite3.OperationalError("attempt to write a readonly database"),
                    self.path or ":memory:",
                    action,
                    self.busy_timeout,
                )
            try:
                with self.transaction(db, durable=durable):
                    yield db
            except sqlite3.DatabaseError as exc:
                raise state_error(exc, self.path or ":memory:", action, self.busy_timeout) from exc

    @staticmethod
    @contextmanager
    def read_transaction(con: sqlite3.Connection) -> Iterator[None]:
        """A deferred transaction: one consistent snapshot to read, no write lock taken."""
        con.execute("BEGIN")
        try:
            yield
        finally:
            if con.in_transaction:
                con.execute("ROLLBACK")

    @property
    def db(self) -> sqlite3.Connection:
        if self._con is None:
            raise StateError("This FeatureStore is closed. Fix: open a new FeatureStore on the same path.")
        return self._con

    @staticmethod
    @contextmanager
    def transaction(con: sqlite3.Connection, *, durable: bool = True) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception so nothing half-done is kept.

        IMMEDIATE takes the write lock up front, so a second process waits (busy timeout) instead of
        failing mid-transaction on a lock upgrade.
        """
        if not durable:
            con.execute("PRAGMA synchronous=NORMAL")  # still atomic; may lose this commit on power loss only
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                if con.in_transaction:  # some errors (disk full, I/O) already rolled back inside SQLite
                    con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        finally:
            if not durable:
                con.execute("PRAGMA synchronous=FULL")

    def checkpoint(self) -> bool:
        """Fold the write-ahead log into the main file and truncate it (e.g. before copying the state
        elsewhere); returns False when a reader in another connection kept part of it (retry later)."""
        with self._lock:
            if self.path is None or self.read_only:
                return True
            try:
                busy, _, _ = self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.DatabaseError as exc:
                raise state_error(exc, self.path, "Checkpointing", self.busy_timeout) from exc
            return bool(busy == 0)

    def truncate_wal(self, what: str, wait: float = 0.5) -> bool:
        """After deleting private data: checkpoint so that it leaves the -wal file too (``secure_delete`` has
        overwritten it in the main file; the log still holds the pages it was written in). A connection of
        another process that is reading holds the log (SQLite waits up to the busy timeout): then warn."""
        with self._lock:  # a short wait: this process's own reads queue behind it
            if self.path is None or self.read_only:
                return True
            self.db.execute(f"PRAGMA busy_timeout={int(wait * 1000)}")
            try:
                if self.checkpoint():
                    return True
            finally:
                self.db.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        warn(
            f"{what} are deleted from the state, but their old pages stay in its write-ahead log {self.path}-wal "
            "while another connection is reading it. Fix: once that read is over, call learner.save() (it returns "
            "True when the log is truncated), or run `edgetl-device forget-images` again.",
            RuntimeWarning,
        )
        return False

    def close(self) -> None:
        """Close the connection; safe to call twice."""
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None
