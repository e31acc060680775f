"""Every SQLite failure on the device state as a typed error with a truthful fix: what happened, what was
(not) written, and the least destructive thing that repairs it."""

from __future__ import annotations

import sqlite3

from edgetl_runtime.errors import StateError, StateFullError, StateLockedError, StateReadOnlyError, StateWriteError

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


def width_problem(con: sqlite3.Connection, where: str, key: str, digest: str, recorded: int, width: int) -> str:
    """The message for a model whose recorded feature width is not the bundle's, with the fix that fits:
    never one that loses an enrolment."""
    widths = {int(n) // 4 for (n,) in con.execute("SELECT DISTINCT length(vec) FROM features WHERE model = ?", (key,))}
    (only_here,) = con.execute(
        "SELECT count(*) FROM samples s JOIN images i ON i.hash = s.image JOIN features f "
        "ON f.image = s.image AND f.model = ? WHERE i.pixels IS NULL",
        (key,),
    ).fetchone()
    head = (
        f"State database {where!r} records the features of model {digest[:12]}… as {recorded} wide, "
        f"but the bundle says {width}"
    )
    if widths <= {width}:  # the stored vectors agree with the bundle: only the record is wrong
        return (
            f"{head}; the stored features are {width} wide, so the record is damaged. Fix: correct it "
            f"with the sqlite3 tool (UPDATE models SET feature_dim = {width} WHERE model_digest = "
            f"'{digest}';)."
        )
    fix = (
        f"if the bundle is right, drop that model's features ({_drop_model_sql(digest)}): the next "
        "load computes them again from the kept images"
        if only_here == 0
        else f"{only_here} enrolled sample(s) exist only as these features (no kept image): do not drop them; "
        "restore the state or the bundle from a backup"
    )
    return (
        f"{head}, and the stored features are {sorted(widths)} wide: the bundle's manifest or this state is "
        f"damaged. Nothing was changed. Fix: verify the bundle (edgetl inspect) or export it again; {fix}."
    )
