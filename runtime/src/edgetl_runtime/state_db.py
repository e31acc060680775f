"""The SQLite side of device state: one connection, its transactions, the exact schema, and every SQLite
failure as a typed error with a truthful fix.

:class:`StateDatabase` opens the file (checking it before anything in it runs), and gives its subclass
short locked reads (``_reading``) and one-transaction writes (``_writing``); :class:`edgetl_runtime.cache.FeatureStore`
holds the samples and features on top of it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TypeVar

from edgetl_runtime.errors import (
    StateError,
    StateFullError,
    StateLockedError,
    StateReadOnlyError,
    StateWriteError,
)
from edgetl_runtime.kept_images import ImageKeeping
from edgetl_runtime.state_schema import (
    SCHEMA,
    SCHEMA_V1,
    SCHEMA_VERSION,
    TABLES,
    TABLES_V1,
    SchemaObjects,
    migrate_v1,
    model_key,
    now,
    schema_objects,
    schema_problems,
    statements,
)

S = TypeVar("S", bound="StateDatabase")
_FIX_CORRUPT = "delete the state file (enrolments are lost) or restore it from a backup"
_FIX_SCHEMA = (
    "if you added these objects yourself, drop them with the sqlite3 tool (the enrolments are kept); "
    "otherwise the file was tampered with or damaged: restore it from a backup or use a new state path"
)
# SQLite primary result codes (sqlite3.h); Python >= 3.11 exposes them as ``sqlite_errorcode``.
_BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 5, 6, 8, 10, 11, 13, 14, 26
_MESSAGES = {  # Python 3.10 has no sqlite_errorcode: the same codes by SQLite's fixed English messages
    "database is locked": _BUSY,
    "database table is locked": _LOCKED,
    "attempt to write a readonly database": _READONLY,
    "database or disk is full": _FULL,
    "disk I/O error": _IOERR,
    "unable to open database file": _CANTOPEN,
    "database disk image is malformed": _CORRUPT,
    "file is not a database": _NOTADB,
}


def _drop_model_sql(digest: str) -> str:
    """Statements that forget one model's features (the sqlite3 tool runs without foreign keys: no cascade)."""
    return (
        f"DELETE FROM features WHERE model IN (SELECT key FROM models WHERE model_digest = '{digest}'); "
        f"DELETE FROM models WHERE model_digest = '{digest}';"
    )


def _primary_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF  # extended codes carry the primary code in their low byte
    return next((c for text, c in _MESSAGES.items() if text in str(exc)), None)


def state_error(exc: BaseException, where: str, action: str, timeout: float) -> StateError:
    """The typed error, with a truthful fix, for an SQLite failure while ``action`` (e.g. "enrolling")."""
    code = _primary_code(exc)
    head = f"{action} state database {where!r} failed ({exc})"
    if code in (_BUSY, _LOCKED):
        return StateLockedError(
            f"{head}: another connection or process held its write lock for more than {timeout:g} s. Nothing was "
            "written and the file is not damaged: do not delete it. Fix: retry once the other writer is done, or "
            "stop the other process that has this state open."
        )
    if code == _READONLY:
        return StateReadOnlyError(
            f"{head}: the file, its folder (SQLite writes -wal/-shm files beside it) or the file system is "
            "read-only. Nothing was written; the enrolments already there are intact and predict still works. "
            "Fix: make the file and its folder writable (chmod u+w, or remount read-write), or use a writable copy."
        )
    if code == _FULL:
        return StateFullError(
            f"{head}: the disk is full. Nothing was written; the state is intact. Fix: free space on the device "
            "(cached features of predicted images can go: they are evicted beyond max_unenrolled) and retry."
        )
    if code in (_IOERR, _CANTOPEN):
        return StateWriteError(
            f"{head}: SQLite could not read or write the state or its -wal/-shm/-journal files beside it (storage "
            "removed or failing, folder missing or read-only). Nothing was committed; the file is not known to be "
            "damaged. Fix: check the storage and the folder's permissions, then retry; copy the file elsewhere "
            "before deleting anything."
        )
    return StateError(f"{head}: it is damaged. Fix: {_FIX_CORRUPT}.")


class StateDatabase:
    """One SQLite connection guarded by a re-entrant lock, with the schema checked (or upgraded) on open.

    A subclass sets ``path``, ``busy_timeout``, the model it computes features with (``model_digest``,
    ``preprocess_key``, ``feature_dim``, ``precision``, ``backbone``) and the image policy it was asked for
    (``requested_policy``; None keeps the state's) and ``known_models`` (the bundle's models, to name a
    schema-1 file's model when it is upgraded), then calls :meth:`_connect`.
    """

    path: str | None
    busy_timeout: float
    model_digest: str
    feature_dim: int
    preprocess_key: str
    precision: str
    backbone: str
    requested_policy: ImageKeeping | None
    known_models: dict[str, tuple[str, str]]  # model digest -> (precision, backbone) of the bundle being loaded
    image_policy: ImageKeeping = ImageKeeping()
    model_registered: bool = False  # whether this model's features can be stored (False: read-only, new model)
    read_only: bool = False
    _con: sqlite3.Connection | None = None

    def __init__(self) -> None:
        self._lock = threading.RLock()

    def _connect(self) -> None:
        """Open the connection and check or create the schema; every failure a typed StateError."""
        where = self.path or ":memory:"
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is exactly one call.
            con = sqlite3.connect(where, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout)
        except sqlite3.Error as exc:
            raise StateError(f"Cannot open state database {where!r}: {exc}. Fix: check the directory exists.") from exc
        try:
            con = self._open(con, where)
        except sqlite3.DatabaseError as exc:
            con.close()
            code = _primary_code(exc)
            if code in (_NOTADB, _CORRUPT, None):
                raise StateError(
                    f"State database {where!r} is not a readable SQLite database ({exc}). Fix: {_FIX_CORRUPT}."
                ) from exc
            raise state_error(exc, where, "Opening", self.busy_timeout) from exc
        except UnicodeDecodeError as exc:  # damaged TEXT fails to decode as UTF-8
            con.close()
            raise StateError(f"State database {where!r} holds undecodable text ({exc}). Fix: {_FIX_CORRUPT}.") from exc
        except BaseException:
            con.close()
            raise
        self._con = con

    def _open(self, con: sqlite3.Connection, where: str) -> sqlite3.Connection:
        """Check the file, set durability pragmas, create, verify or upgrade the schema, then switch to WAL;
        returns the connection to use (an in-memory upgrade of a read-only schema-1 file, see below).

        Verification only reads (a deferred transaction), so a read-only or busy file is checked without
        waiting for the write lock; only an empty or schema-1 database is written.
        """
        # Functions with side effects never run from schema objects (defence in depth: the schema check
        # below refuses any trigger or view anyway).
        con.execute("PRAGMA trusted_schema=OFF")
        self._quick_check(con, where)
        # FULL: in WAL mode NORMAL survives a process crash but may drop the last commits on power loss.
        # A device can lose power any time, and add_samples promises the enrolment is durable once it
        # returns, so commits sync by default; cache-only writes relax this (see put_features).
        con.execute("PRAGMA synchronous=FULL")
        con.execute("PRAGMA foreign_keys=ON")
        # A removed class's kept photos are overwritten with zeros, not left readable in free pages.
        con.execute("PRAGMA secure_delete=ON")
        with self._read_transaction(con):
            objects = schema_objects(con)
            version = self._check_schema(con, where, objects) if objects else None
        if version == 1:
            con = self._upgrade_v1(con, where)
        elif version is None:
            with self._transaction(con):  # re-read under the write lock: another process may have done it
                objects = schema_objects(con)
                version = self._check_schema(con, where, objects) if objects else None
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
        self.read_only = self.read_only or not self._writable(con)
        # WAL only once the file is known to be ours: switching rewrites the header of a foreign database.
        if not self.read_only and self.path is not None:
            con.execute("PRAGMA journal_mode=WAL")
        self._adopt(con, where)
        return con

    @staticmethod
    def _quick_check(con: sqlite3.Connection, where: str) -> None:
        """SQLite's quick_check of every page, except the kept images' (the bulk of the file: hundreds of
        milliseconds per load on a device's flash); their blobs are checked as they are decoded, and by
        ``integrity_check``. SQLite before 3.33 cannot check one table: it checks the whole file."""
        tables = [str(r[0]) for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        if "images" in tables and sqlite3.sqlite_version_info >= (3, 33, 0):
            quoted = ['"' + name.replace('"', '""') + '"' for name in tables if name != "images"]
            checks = [f"PRAGMA quick_check({name})" for name in quoted]
        else:
            checks = ["PRAGMA quick_check"]
        problems = [row[0] for check in checks for row in con.execute(check) if row[0] != "ok"]
        if problems:
            raise StateError(f"State database {where!r} failed quick_check: {problems[:5]}. Fix: {_FIX_CORRUPT}.")

    def _leave_wal(self, con: sqlite3.Connection, where: str) -> bool:
        """Switch a schema-1 file out of WAL mode, which SQLite refuses (at once, without its busy handler)
        while another connection has the file open: retry up to the busy timeout. False when the file
        became schema 2 meanwhile (another new runtime upgraded it): nothing to do."""
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                con.execute("PRAGMA journal_mode=DELETE")
                return True
            except sqlite3.OperationalError as exc:
                if _primary_code(exc) not in (_BUSY, _LOCKED):
                    raise
            with self._read_transaction(con):
                if self._check_schema(con, where, schema_objects(con)) == SCHEMA_VERSION:
                    return False
            if time.monotonic() >= deadline:
                raise StateLockedError(
                    f"State database {where!r} has schema 1, which this edgetl_runtime upgrades once in place, "
                    f"but another process kept it open for {self.busy_timeout:g} s (an older edgetl_runtime "
                    "would then read it as damaged). Nothing was changed. Fix: stop the other processes that use "
                    "this state (update them to this edgetl-runtime), then load again."
                )
            time.sleep(0.05)

    def _upgrade_v1(self, con: sqlite3.Connection, where: str) -> sqlite3.Connection:
        """Upgrade a schema-1 file in place, alone (an older runtime still reading it would see a damaged
        file); a read-only one is upgraded in memory, for this process only."""
        policy = (self.requested_policy or ImageKeeping()).to_text()
        if not self._writable(con):
            memory = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            con.backup(memory)
            con.close()
            memory.execute("PRAGMA foreign_keys=ON")
            with self._transaction(memory):
                migrate_v1(memory, self.known_models, policy)
            warnings.warn(
                f"State database {where!r} has schema 1 and is read-only: it was upgraded in memory for this "
                "process (predictions work; enrolling does not). Fix: make the file and its folder writable "
                "for one load, which upgrades it in place.",
                RuntimeWarning,
                stacklevel=4,
            )
            self.read_only = True
            return memory
        if not self._leave_wal(con, where):
            return con  # another process upgraded it meanwhile
        con.execute("BEGIN EXCLUSIVE")  # no reader sees the upgrade half done
        try:
            objects = schema_objects(con)  # another process may have upgraded it since our first look
            if self._check_schema(con, where, objects) == 1:
                migrate_v1(con, self.known_models, policy)
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        return con

    def _adopt(self, con: sqlite3.Connection, where: str) -> None:
        """Register this model's feature space and settle the image policy (writes only what changed)."""
        key = model_key(self.model_digest, self.preprocess_key)
        with self._read_transaction(con):
            row = con.execute("SELECT feature_dim FROM models WHERE key = ?", (key,)).fetchone()
            stored = ImageKeeping.from_text(str(self._meta(con)["image_policy"]))
        if row is not None and row[0] != self.feature_dim:
            raise StateError(self._width_problem(con, where, key, int(row[0])))
        self.image_policy = self.requested_policy or stored
        if self.read_only:
            self.model_registered = row is not None
            return
        if row is None or self.image_policy != stored:
            with self._transaction(con, durable=False):
                con.execute(
                    "INSERT OR IGNORE INTO models VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        key,
                        self.model_digest,
                        self.preprocess_key,
                        self.precision,
                        self.backbone,
                        self.feature_dim,
                        now(),
                    ),
                )
                con.execute("UPDATE meta SET value = ? WHERE key = 'image_policy'", (self.image_policy.to_text(),))
        self.model_registered = True

    def _width_problem(self, con: sqlite3.Connection, where: str, key: str, recorded: int) -> str:
        """The message for a model whose recorded feature width is not the bundle's, with the fix that fits:
        never one that loses an enrolment."""
        with self._read_transaction(con):
            widths = {
                int(n) // 4 for (n,) in con.execute("SELECT DISTINCT length(vec) FROM features WHERE model = ?", (key,))
            }
            (only_here,) = con.execute(
                "SELECT count(*) FROM samples s JOIN images i ON i.hash = s.image JOIN features f "
                "ON f.image = s.image AND f.model = ? WHERE i.pixels IS NULL",
                (key,),
            ).fetchone()
        head = (
            f"State database {where!r} records the features of model {self.model_digest[:12]}… as {recorded} wide, "
            f"but the bundle says {self.feature_dim}"
        )
        if widths <= {self.feature_dim}:  # the stored vectors agree with the bundle: only the record is wrong
            return (
                f"{head}; the stored features are {self.feature_dim} wide, so the record is damaged. Fix: correct it "
                f"with the sqlite3 tool (UPDATE models SET feature_dim = {self.feature_dim} WHERE model_digest = "
                f"'{self.model_digest}';)."
            )
        fix = (
            f"if the bundle is right, drop that model's features ({_drop_model_sql(self.model_digest)}): the next "
            "load computes them again from the kept images"
            if only_here == 0
            else f"{only_here} enrolled sample(s) exist only as these features (no kept image): do not drop them; "
            "restore the state or the bundle from a backup"
        )
        return (
            f"{head}, and the stored features are {sorted(widths)} wide: the bundle's manifest or this state is "
            f"damaged. Nothing was changed. Fix: verify the bundle (edgetl inspect) or export it again; {fix}."
        )

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

    def _check_schema(self, con: sqlite3.Connection, where: str, objects: SchemaObjects) -> int:
        """Refuse anything but the exact edgetl schema (SQL text of every table, index, trigger, view), then
        check meta; returns the schema version (1: to upgrade)."""
        tables = {name for kind, name in objects if kind == "table"}
        if not (TABLES <= tables or TABLES_V1 <= tables):
            raise StateError(
                f"{where!r} is a SQLite database but not edgetl state (tables: {sorted(tables)}). "
                "Fix: pass a new state path; do not point the store at another application's database."
            )
        meta = self._meta(con)
        version = 1 if meta.get("schema_version") == "1" else SCHEMA_VERSION
        if meta.get("schema_version") not in ("1", str(SCHEMA_VERSION)):
            raise StateError(
                f"State database {where!r} has schema_version {meta.get('schema_version')!r}, but this "
                f"edgetl_runtime reads versions 1 and {SCHEMA_VERSION}. Fix: upgrade edgetl-runtime, or use a new "
                "state path."
            )
        # quick_check does not read the schema text, and a trigger or a missing constraint only acts at the
        # first write: compare every object's SQL with the schema this version creates before anything runs.
        problems = schema_problems(objects, SCHEMA_V1 if version == 1 else SCHEMA)
        if problems:
            raise StateError(
                f"State database {where!r} does not hold the edgetl schema (schema_version {version}); "
                f"nothing in it was run: {'; '.join(problems[:5])}. Fix: {_FIX_SCHEMA}."
            )
        needed = ("bundle_digest", "feature_dim", "preprocess_key") if version == 1 else ("image_policy",)
        missing = [k for k in needed if k not in meta]
        if missing or (version == 1 and not str(meta["feature_dim"]).isdigit()):
            raise StateError(f"State database {where!r} has damaged meta (missing {missing}). Fix: {_FIX_CORRUPT}.")
        if version == SCHEMA_VERSION:
            try:
                ImageKeeping.from_text(str(meta["image_policy"]))
            except StateError as exc:
                raise StateError(
                    f"State database {where!r}: {exc} The enrolments are intact. Fix: set it with the sqlite3 tool "
                    "(UPDATE meta SET value = 'thumbnail:384' WHERE key = 'image_policy'), or restore a backup."
                ) from None
        return version

    @staticmethod
    def _meta(con: sqlite3.Connection) -> dict[str, object]:
        return dict(con.execute("SELECT key, value FROM meta").fetchall())

    @contextmanager
    def _reading(self) -> Iterator[None]:
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
    def _writing(self, action: str, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """Lock, one transaction, and each SQLite failure as its typed error (nothing is kept on any error)."""
        with self._lock:
            db = self._db
            if self.read_only:
                raise state_error(
                    sqlite3.OperationalError("attempt to write a readonly database"),
                    self.path or ":memory:",
                    action,
                    self.busy_timeout,
                )
            try:
                with self._transaction(db, durable=durable):
                    yield db
            except sqlite3.DatabaseError as exc:
                raise state_error(exc, self.path or ":memory:", action, self.busy_timeout) from exc

    @staticmethod
    @contextmanager
    def _read_transaction(con: sqlite3.Connection) -> Iterator[None]:
        """A deferred transaction: one consistent snapshot to read, no write lock taken."""
        con.execute("BEGIN")
        try:
            yield
        finally:
            if con.in_transaction:
                con.execute("ROLLBACK")

    @property
    def _db(self) -> sqlite3.Connection:
        if self._con is None:
            raise StateError("This FeatureStore is closed. Fix: open a new FeatureStore on the same path.")
        return self._con

    @staticmethod
    @contextmanager
    def _transaction(con: sqlite3.Connection, *, durable: bool = True) -> Iterator[None]:
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
                busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
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
            self._db.execute(f"PRAGMA busy_timeout={int(wait * 1000)}")
            try:
                if self.checkpoint():
                    return True
            finally:
                self._db.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        warnings.warn(
            f"{what} are deleted from the state, but their old pages stay in its write-ahead log {self.path}-wal "
            "while another connection is reading it. Fix: once that read is over, call learner.save() (it returns "
            "True when the log is truncated), or run `edgetl-device forget-images` again.",
            RuntimeWarning,
            stacklevel=3,
        )
        return False

    def close(self) -> None:
        """Close the connection; safe to call twice."""
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    def __enter__(self: S) -> S:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
