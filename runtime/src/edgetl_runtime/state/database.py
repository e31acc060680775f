"""Opening the device state: the exact schema, its upgrade, the model registered and the image policy settled;
every SQLite failure becomes a typed error with a truthful fix (:mod:`edgetl_runtime.state.errors`).

:class:`StateDatabase` opens the file on a :class:`~edgetl_runtime.state.connection.StateConnection`
(checking it before anything in it runs); :class:`~edgetl_runtime.state.store.FeatureStore` is built from
the two and :class:`~edgetl_runtime.state.images.KeptImages`.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from edgetl_runtime.errors import StateError, StateLockedError
from edgetl_runtime.state.checks import check_schema, quick_check
from edgetl_runtime.state.connection import StateConnection
from edgetl_runtime.state.errors import (
    _BUSY,
    _CANTOPEN,
    _CORRUPT,
    _FIX_CORRUPT,
    _LOCKED,
    _NOTADB,
    _READONLY,
    _primary_code,
    state_error,
    width_problem,
)
from edgetl_runtime.state.image_policy import ImageKeeping
from edgetl_runtime.state.peek import feature_counts
from edgetl_runtime.state.schema import (
    SCHEMA,
    SCHEMA_V1,
    SCHEMA_VERSION,
    migrate_v1,
    model_key,
    now,
    schema_objects,
    statements,
)
from edgetl_runtime.warn import warn

__all__ = ["ModelSpace", "StateDatabase"]


@dataclass(frozen=True)
class ModelSpace:
    """The feature space a store reads and writes: one backbone member with one preprocessing."""

    digest: str  # SHA-256 of the backbone member (one precision of one export)
    preprocess_key: str
    feature_dim: int
    precision: str = "unknown"  # recorded for people and tools reading the state
    backbone: str = "unknown"

    @property
    def key(self) -> str:
        """``model_key(digest, preprocess_key)``: how the state's tables name this model."""
        return model_key(self.digest, self.preprocess_key)


class StateDatabase:
    """Opens the state file on a :class:`StateConnection`: checks it before anything in it runs, creates,
    verifies or upgrades the schema; then :meth:`adopt` registers the model a store computes features with
    and settles the image policy (``space`` adopts at once). Between the two, :meth:`feature_counts` tells
    which models the state has features for: a load chooses its precision by it on the same connection.

    ``requested_policy`` is the image policy asked for (None keeps the state's); ``known_models`` names the
    bundle's models (digest -> (precision, backbone)), to name a schema-1 file's model when it is upgraded.
    """

    def __init__(
        self,
        connection: StateConnection,
        requested_policy: ImageKeeping | None,
        known_models: Mapping[str, tuple[str, str]],
        space: ModelSpace | None = None,
    ) -> None:
        self.connection = connection
        self.requested_policy = requested_policy
        self.known_models = dict(known_models)
        self.image_policy = ImageKeeping()  # the state's, once adopted
        self.model_registered = False  # whether this model's features can be stored (False: read-only, new model)
        self._space: ModelSpace | None = None
        self._connect()
        if space is not None:
            try:
                self.adopt(space)
            except BaseException:
                connection.close()
                raise

    @property
    def space(self) -> ModelSpace:
        """The model this state's store reads and writes features of (set by :meth:`adopt`)."""
        if self._space is None:
            raise StateError("No model adopted yet: call adopt(space) before reading or writing features.")
        return self._space

    def feature_counts(self) -> list[tuple[str, int]]:
        """(model digest, enrolled samples it has features for), in the order models were first used."""
        with self.connection.reading():
            return feature_counts(self.connection.db)

    def _connect(self) -> None:
        """Open the connection and check or create the schema; every failure a typed StateError."""
        where = self.connection.path or ":memory:"
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is exactly one call.
            con = sqlite3.connect(
                where, isolation_level=None, check_same_thread=False, timeout=self.connection.busy_timeout
            )
        except sqlite3.Error as exc:
            raise StateError(f"Cannot open state database {where!r}: {exc}. Fix: check the directory exists.") from exc
        try:
            con = self._open(con, where)
        except sqlite3.DatabaseError as exc:
            con.close()
            code = _primary_code(exc)
            if code in (_READONLY, _CANTOPEN) and self._immutable_uri() is not None:
                self._connect_immutable(where)  # a read-only folder: SQLite cannot create the -shm file
                return
            if code in (_NOTADB, _CORRUPT, None):
                raise StateError(
                    f"State database {where!r} is not a readable SQLite database ({exc}). Fix: {_FIX_CORRUPT}."
                ) from exc
            raise state_error(exc, where, "Opening", self.connection.busy_timeout) from exc
        except UnicodeDecodeError as exc:  # damaged TEXT fails to decode as UTF-8
            con.close()
            raise StateError(f"State database {where!r} holds undecodable text ({exc}). Fix: {_FIX_CORRUPT}.") from exc
        except BaseException:
            con.close()
            raise
        self.connection.attach(con)

    def _immutable_uri(self) -> str | None:
        """``mode=ro&immutable=1`` for a state file with no -wal file: a WAL state in a read-only folder
        cannot be opened otherwise (no -shm can be made), and with no -wal nothing is lost by ignoring it."""
        if (
            self.connection.path is None
            or not os.path.isfile(self.connection.path)
            or os.path.exists(f"{self.connection.path}-wal")
        ):
            return None
        return f"{Path(self.connection.path).resolve().as_uri()}?mode=ro&immutable=1"

    def _connect_immutable(self, where: str) -> None:
        uri = self._immutable_uri()
        assert uri is not None
        con = sqlite3.connect(
            uri, uri=True, isolation_level=None, check_same_thread=False, timeout=self.connection.busy_timeout
        )
        try:
            self.connection.read_only = True
            self.connection.attach(self._open(con, where))
        except sqlite3.DatabaseError as exc:
            con.close()
            raise state_error(exc, where, "Opening", self.connection.busy_timeout) from exc
        except BaseException:
            con.close()
            raise

    def _open(self, con: sqlite3.Connection, where: str) -> sqlite3.Connection:
        """Check the file, set durability pragmas, create, verify or upgrade the schema, then switch to WAL;
        returns the connection to use (an in-memory upgrade of a read-only schema-1 file, see below).

        Verification only reads (a deferred transaction), so a read-only or busy file is checked without
        waiting for the write lock; only an empty or schema-1 database is written.
        """
        # Functions with side effects never run from schema objects (defence in depth: the schema check
        # below refuses any trigger or view anyway).
        con.execute("PRAGMA trusted_schema=OFF")
        quick_check(con, where)
        # FULL: in WAL mode NORMAL survives a process crash but may drop the last commits on power loss.
        # A device can lose power any time, and add_samples promises the enrolment is durable once it
        # returns, so commits sync by default; cache-only writes relax this (see put_features).
        con.execute("PRAGMA synchronous=FULL")
        con.execute("PRAGMA foreign_keys=ON")
        # A removed class's kept photos are overwritten with zeros, not left readable in free pages.
        con.execute("PRAGMA secure_delete=ON")
        with self.connection.read_transaction(con):
            objects = schema_objects(con)
            version = check_schema(con, where, objects) if objects else None
        if version == 1:
            con = self._upgrade_v1(con, where)
        elif version is None:
            with self.connection.transaction(con):  # re-read under the write lock: another process may have done it
                objects = schema_objects(con)
                version = check_schema(con, where, objects) if objects else None
                if version is None:
                    for statement in statements(SCHEMA):
                        con.execute(statement)
                    policy = (self.requested_policy or ImageKeeping()).to_text()
                    con.executemany(
                        "INSERT INTO meta VALUES (?, ?)",
                        [("schema_version", str(SCHEMA_VERSION)), ("image_policy", policy)],
                    )
            if version == 1:
                con = self._upgrade_v1(con, where)
        self.connection.read_only = self.connection.read_only or not self._writable(con)
        # WAL only once the file is known to be ours: switching rewrites the header of a foreign database.
        if not self.connection.read_only and self.connection.path is not None:
            con.execute("PRAGMA journal_mode=WAL")
        return con

    def _v1_in_memory(self, con: sqlite3.Connection) -> sqlite3.Connection:
        """A schema-1 file's samples and their features (not its cached predictions) copied into memory."""
        source = self._immutable_uri() or f"{Path(str(self.connection.path)).resolve().as_uri()}?mode=ro"
        con.close()
        memory = sqlite3.connect("file::memory:", uri=True, isolation_level=None, check_same_thread=False)
        memory.execute("ATTACH DATABASE ? AS old", (source,))
        for statement in statements(SCHEMA_V1):
            memory.execute(statement)
        memory.execute("INSERT INTO meta SELECT * FROM old.meta")
        memory.execute(
            "INSERT INTO features SELECT * FROM old.features WHERE key IN (SELECT feature_key FROM old.samples)"
        )
        memory.execute("INSERT INTO samples SELECT * FROM old.samples")
        memory.execute("INSERT INTO sqlite_sequence SELECT * FROM old.sqlite_sequence")
        memory.execute("DETACH DATABASE old")
        memory.execute("PRAGMA foreign_keys=ON")
        return memory

    def _leave_wal(self, con: sqlite3.Connection, where: str) -> bool:
        """Switch a schema-1 file out of WAL mode, which SQLite refuses (at once, without its busy handler)
        while another connection has the file open: retry up to the busy timeout. False when the file
        became schema 2 meanwhile (another new runtime upgraded it): nothing to do."""
        deadline = time.monotonic() + self.connection.busy_timeout
        while True:
            try:
                con.execute("PRAGMA journal_mode=DELETE")
                return True
            except sqlite3.OperationalError as exc:
                if _primary_code(exc) not in (_BUSY, _LOCKED):
                    raise
            with self.connection.read_transaction(con):
                if check_schema(con, where, schema_objects(con)) == SCHEMA_VERSION:
                    return False
            if time.monotonic() >= deadline:
                raise StateLockedError(
                    f"State database {where!r} has schema 1, which this edgetl_runtime upgrades once in place, "
                    f"but another process kept it open for {self.connection.busy_timeout:g} s (an older edgetl_runtime "
                    "would then read it as damaged). Nothing was changed. Fix: stop the other processes that use "
                    "this state (update them to this edgetl-runtime), then load again."
                )
            time.sleep(0.05)

    def _upgrade_v1(self, con: sqlite3.Connection, where: str) -> sqlite3.Connection:
        """Upgrade a schema-1 file in place, alone (an older runtime still reading it would see a damaged
        file); a read-only one is upgraded in memory, for this process only."""
        policy = (self.requested_policy or ImageKeeping()).to_text()
        if not self._writable(con):
            memory = self._v1_in_memory(con)
            with self.connection.transaction(memory):
                migrate_v1(memory, self.known_models, policy)
            warn(
                f"State database {where!r} has schema 1 and is read-only: it was upgraded in memory for this "
                "process (predictions work; enrolling does not). Fix: make the file and its folder writable "
                "for one load, which upgrades it in place.",
                RuntimeWarning,
            )
            self.connection.read_only = True
            return memory
        if not self._leave_wal(con, where):
            return con  # another process upgraded it meanwhile
        con.execute("BEGIN EXCLUSIVE")  # no reader sees the upgrade half done
        try:
            objects = schema_objects(con)  # another process may have upgraded it since our first look
            if check_schema(con, where, objects) == 1:
                migrate_v1(con, self.known_models, policy)
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        return con

    def adopt(self, space: ModelSpace) -> None:
        """Register ``space`` as the model this state reads and writes, and settle the image policy (writes
        only what changed)."""
        self._space = space
        con, where = self.connection.db, self.connection.path or ":memory:"
        key = self.space.key
        with self.connection.read_transaction(con):
            row = con.execute("SELECT feature_dim FROM models WHERE key = ?", (key,)).fetchone()
            stored = self.read_policy(con)
        if row is not None and row[0] != self.space.feature_dim:
            raise StateError(width_problem(con, where, key, self.space.digest, int(row[0]), self.space.feature_dim))
        self.image_policy = self.requested_policy or stored
        if self.connection.read_only:
            self.model_registered = row is not None
            return
        if row is None or self.image_policy != stored:
            with self.connection.transaction(con, durable=False):
                self.register_model(con)
                self.write_policy(con, self.image_policy)
        self.model_registered = True

    def register_model(self, con: sqlite3.Connection) -> None:
        """Record this model's feature space (inside the caller's write transaction); a no-op when known."""
        row = (
            self.space.key,
            self.space.digest,
            self.space.preprocess_key,
            self.space.precision,
            self.space.backbone,
            self.space.feature_dim,
        )
        con.execute("INSERT OR IGNORE INTO models VALUES (?, ?, ?, ?, ?, ?, ?)", (*row, now()))
        self.model_registered = True

    @staticmethod
    def _writable(con: sqlite3.Connection) -> bool:
        """Whether this connection may write; SQLite opens an unwritable file read-only without an error.

        A write statement that changes nothing fails at once with SQLITE_READONLY on such a file; the
        busy timeout is set to 0 for the probe, so a lock held elsewhere (a writable file) never blocks it.
        """
        timeout = con.execute("PRAGMA busy_timeout").fetchone()[0]
        con.execute("PRAGMA busy_timeout=0")
        try:
            con.execute("BEGIN")
            con.execute("UPDATE meta SET value = value WHERE 0")
            return True
        except sqlite3.OperationalError as exc:
            if _primary_code(exc) == _READONLY:
                return False
            if _primary_code(exc) in (_BUSY, _LOCKED):
                return True
            raise
        finally:
            if con.in_transaction:
                con.execute("ROLLBACK")
            con.execute(f"PRAGMA busy_timeout={int(timeout)}")

    @staticmethod
    def read_policy(con: sqlite3.Connection) -> ImageKeeping:
        """The image policy the file says now (another process may have changed it since this one opened)."""
        row = con.execute("SELECT value FROM meta WHERE key = 'image_policy'").fetchone()
        return ImageKeeping.from_text(str(row[0]) if row else "")

    @staticmethod
    def write_policy(con: sqlite3.Connection, policy: ImageKeeping) -> None:
        con.execute("UPDATE meta SET value = ? WHERE key = 'image_policy'", (policy.to_text(),))
