"""Telethon's SQLite session schema (version 8), and the one reader and writer of ``.session`` files.

Everything that knows the layout of a Telethon ``.session`` file is here:

* the tables, exactly as ``telethon.sessions.SQLiteSession`` creates them, our lookup indexes
  and our side table of sealed entity fields (Telethon ignores both);
* :func:`upgrade`: Telethon's ``_upgrade_database``, step by step, for files of older versions;
* reading: :func:`inspect` and the row readers that the store uses on its own files, and
  :func:`read_session_file` / :func:`read_snapshot`, which read a file of any version into a
  :class:`~telethon_firestore_session.core.SessionSnapshot` without modifying it;
  :func:`read_auth_key` reads only the stored auth key (``doctor``);
* writing: :func:`write_session_file`, a complete schema-8 file from a snapshot;
* :class:`EntityCodec`: entity rows in and out of ``entities`` and the side table,
  sealing usernames, phones and names with a :class:`~telethon_firestore_session.sealing.Sealer`.

Layout of sealed entity fields (``encrypt_pii=True``)::

    entities(id, hash, username, phone, name, date)     username/phone/name hold "bi:" + blind index
    tfs_sealed_entities(id primary key, username, phone, name)   the sealed values (blobs)

A field counts as sealed when its column starts with ``bi:`` *and* the side table has a value
for it; the opened value must hash to that index, else the row was changed outside this library
and reading it raises. A row that plain Telethon rewrote in plaintext is read as plaintext (its
stale side row is ignored).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from telethon.tl import types

from telethon_firestore_session.errors import (
    SchemaVersionError,
    SessionCorruptError,
    SessionDecryptionError,
    SessionStoreError,
    store_error,
    wrap_store_errors,
)
from telethon_firestore_session.sealing import AUTH_KEY_SIZE, PII_FIELDS, Sealer
from telethon_firestore_session.store import EntityRow, SessionHeader, SessionSnapshot

__all__ = [
    "BLIND_INDEX_PREFIX",
    "SCHEMA_VERSION",
    "SEALED_ENTITIES",
    "SQLITE_MAGIC",
    "EntityCodec",
    "read_auth_key",
    "read_session_file",
    "read_snapshot",
    "write_session_file",
]

log = logging.getLogger(__name__)

#: Telethon's ``CURRENT_VERSION`` of its SQLite session schema (Telethon 1.45).
SCHEMA_VERSION = 8
#: The first 16 bytes of every SQLite 3 database file.
SQLITE_MAGIC = b"SQLite format 3\x00"
#: An SQLite database holds at least one page of at least 512 bytes (SQLite checks longer files itself).
MIN_DATABASE_SIZE = 512
#: Rows read per query when listing entities or sent files.
PAGE = 1000
#: Below every SQLite integer (ids are paged with ``where id > ?``).
FIRST = -(2**63)

# Telethon's schema, version 8, exactly as ``SQLiteSession`` creates it.
TABLES = (
    "version (version integer primary key)",
    """sessions (
        dc_id integer primary key,
        server_address text,
        port integer,
        auth_key blob,
        takeout_id integer,
        tmp_auth_key blob
    )""",
    """entities (
        id integer primary key,
        hash integer not null,
        username text,
        phone integer,
        name text,
        date integer
    )""",
    """sent_files (
        md5_digest blob,
        file_size integer,
        type integer,
        id integer,
        hash integer,
        primary key(md5_digest, file_size, type)
    )""",
    """update_state (
        id integer primary key,
        pts integer,
        qts integer,
        date integer,
        seq integer
    )""",
)
_SENT_FILES_V3 = TABLES[3]
_UPDATE_STATE_V4 = TABLES[4]

# Extra indexes for lazy lookups, by name; Telethon ignores them.
LOOKUP_FIELDS = ("username", "phone", "name")
INDEXES = {f"tfs_entities_{f}": f"create index if not exists tfs_entities_{f} on entities({f})" for f in LOOKUP_FIELDS}

#: Our side table of sealed entity fields; Telethon ignores it.
SEALED_ENTITIES = "tfs_sealed_entities"
SEALED_TABLE = f"{SEALED_ENTITIES} (id integer primary key, username blob, phone blob, name blob)"
#: A sealed field's column in ``entities`` holds this prefix and the field's blind index.
BLIND_INDEX_PREFIX = "bi:"

INSERT_SESSION = (
    "insert into sessions (dc_id, server_address, port, auth_key, takeout_id, tmp_auth_key) values (?, ?, ?, ?, ?, ?)"
)
INSERT_ENTITY = "insert or replace into entities (id, hash, username, phone, name, date) values (?, ?, ?, ?, ?, ?)"
INSERT_STATE = "insert or replace into update_state (id, pts, qts, date, seq) values (?, ?, ?, ?, ?)"
INSERT_FILE = "insert or replace into sent_files (md5_digest, file_size, type, id, hash) values (?, ?, ?, ?, ?)"
INSERT_SEALED = f"insert or replace into {SEALED_ENTITIES} (id, username, phone, name) values (?, ?, ?, ?)"  # noqa: S608
DELETE_SEALED = f"delete from {SEALED_ENTITIES} where id = ?"  # noqa: S608
UPDATE_PII = "update entities set username = ?, phone = ?, name = ? where id = ?"
SELECT_FILE = "select id, hash from sent_files where md5_digest = ? and file_size = ? and type = ?"
_FILE_PAGE = (
    "select rowid, md5_digest, file_size, type, id, hash from sent_files where rowid > ? order by rowid limit ?"
)
_ENTITY_COLUMNS = "e.id, e.hash, e.username, e.phone, e.name, e.date"
SELECT_PLAIN = f"select {_ENTITY_COLUMNS} from entities e"  # noqa: S608 - fixed names
SELECT_SEALED = (
    f"select {_ENTITY_COLUMNS}, s.username, s.phone, s.name "  # noqa: S608 - fixed names
    f"from entities e left join {SEALED_ENTITIES} s on s.id = e.id"
)

_UTC = datetime.timezone.utc
_NOT_MODIFIED = "the file was not modified"


# -- transactions ----------------------------------------------------------------------------


def rollback(conn: sqlite3.Connection) -> None:
    """Undo an open transaction while another exception propagates, without replacing it.

    A KeyboardInterrupt that lands just after ``commit`` finds no transaction to roll
    back; a failing rollback must not hide the error that caused it either.
    """
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("rollback")


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction (``begin immediate``), committed at the end, rolled back on any error."""
    conn.execute("begin immediate")
    try:
        yield
        conn.execute("commit")
    except BaseException:  # any failure, interrupts too: nothing half-written is committed
        rollback(conn)
        raise


@contextlib.contextmanager
def durable_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction committed with a full fsync (write-through); rolled back on any error."""
    conn.execute("pragma synchronous=full")
    try:
        with transaction(conn):
            yield
    finally:
        conn.execute("pragma synchronous=normal")


def checkpoint(conn: sqlite3.Connection, where: str) -> None:
    """Copy the write-ahead log into the file and truncate it (replaced values leave the disk)."""
    row = conn.execute("pragma wal_checkpoint(truncate)").fetchone()
    if row is not None and row[0]:
        log.debug("%s: the checkpoint could not finish (a reader); it completes on close", where)


# -- reading -------------------------------------------------------------------------------


def columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in conn.execute(f"pragma table_info({table})").fetchall()}


_NAMES = "select name from sqlite_master where type in ('table', 'index')"
_TABLES_8 = {"version", "sessions", "entities", "sent_files", "update_state"}
_NAMES_AND_VERSION = f"select name, (select version from version) from ({_NAMES})"  # noqa: S608 - fixed text


def inspect(conn: sqlite3.Connection, where: str) -> tuple[set[str], int | None]:
    """The names of the file's tables and indexes, and its Telethon schema version (``None`` for an
    empty database); reads only.

    :raises SchemaVersionError: for a version newer than :data:`SCHEMA_VERSION`.
    :raises SessionCorruptError: for a database that is not a Telethon session.
    """
    try:  # one statement for a Telethon file (the common case)
        rows = conn.execute(_NAMES_AND_VERSION).fetchall()
    except sqlite3.OperationalError:  # no version table
        rows = [(r[0], None) for r in conn.execute(_NAMES)]
    names = {r[0] for r in rows}
    if not names:
        return names, None
    if "version" not in names:
        missing = "no version table" if "sessions" in names else "no version table and no sessions table"
        raise SessionCorruptError(
            f"{where}: an SQLite database with {missing}, so not a Telethon session; {_NOT_MODIFIED}"
        )
    version = rows[0][1]
    if not isinstance(version, int):
        raise SessionCorruptError(f"{where}: Telethon's version table is empty; {_NOT_MODIFIED}")
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(where, version, SCHEMA_VERSION)
    if version < 1:
        raise SessionCorruptError(f"{where}: schema version {version} is invalid; {_NOT_MODIFIED}")
    absent = sorted(({"sessions", "entities"} | (_TABLES_8 if version == SCHEMA_VERSION else set())) - names)
    if absent:
        raise SessionCorruptError(f"{where}: no {', '.join(absent)} table, so not a Telethon session; {_NOT_MODIFIED}")
    return names, version


# -- damaged files ----------------------------------------------------------------------------


def is_damage(exc: sqlite3.Error) -> bool:
    """Whether an SQLite error says the file is damaged or not in Telethon's shape: retrying cannot help.

    ``SQLITE_CORRUPT`` ("database disk image is malformed"), ``SQLITE_NOTADB`` ("file is
    not a database"), a constraint or type mismatch, a value too big, and ``SQLITE_ERROR``
    (a table or column that is not there) are; busy, locked, I/O, read-only and full-disk
    errors are not, and neither are misuses of the API.
    """
    if type(exc) is sqlite3.DatabaseError or isinstance(exc, (sqlite3.IntegrityError, sqlite3.DataError)):
        return True
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    text = str(exc)
    if text.startswith("Could not decode to UTF-8"):  # raised by Python: a text value that is not UTF-8
        return True
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return bool(code & 0xFF == 1)  # SQLITE_ERROR
    return "no such" in text or "columns but" in text


def damaged(where: str, detail: str) -> SessionCorruptError:
    """The error for a damaged file: what is wrong, and what to do (the file is never modified)."""
    return SessionCorruptError(
        f"{where} is damaged or was changed outside this library ({detail}). It was not modified and nothing more is "
        "written to it: stop the bot and restore the file from a backup (or delete it and log in again); "
        "`telethon-firestore-session doctor` checks every session file"
    )


@contextlib.contextmanager
def file_errors(what: str, where: str) -> Iterator[None]:
    """SQLite's errors on a session file: damage (:func:`is_damage`) raises :func:`damaged`, anything
    else (busy, I/O) :func:`~telethon_firestore_session.errors.store_error`; our own errors pass through."""
    try:
        yield
    except BadValue as exc:
        raise damaged(where, str(exc)) from exc
    except UnicodeDecodeError as exc:  # sqlite3 decoding a damaged schema, or an error message quoting it
        raise damaged(where, f"text that is not UTF-8 ({exc.reason})") from exc
    except sqlite3.Error as exc:
        if is_damage(exc):
            raise damaged(where, f"{type(exc).__name__}: {exc}") from exc
        raise store_error(what, where, exc) from exc


def quick_check(conn: sqlite3.Connection) -> str | None:
    """``None`` if SQLite's ``pragma quick_check`` finds the file sound, else its first findings; reads only.

    It reads every page (O(file size): about 20 ms for 100,000 entities).

    :raises sqlite3.DatabaseError: for damage that stops the check itself.
    """
    found = [line for r in conn.execute("pragma quick_check(3)") for line in str(r[0]).splitlines()]
    if found == ["ok"]:
        return None
    return "; ".join(line for line in found if not line.startswith("***"))  # "*** in database main ***"


def check_file(path: str | os.PathLike[str], *, timeout: float = 1.0) -> str | None:
    """Run SQLite's ``pragma quick_check`` on a session file: ``None`` if it is sound, else what is wrong.

    Read-only and without the session's lock: a running bot is not disturbed (``doctor`` runs it).

    :param path: the session file.
    :param timeout: seconds to wait for a busy file.
    :raises SessionStoreError: if the file cannot be checked now (busy, unreadable).
    """
    p = Path(path)
    with p.open("rb") as f:
        head = f.read(len(SQLITE_MAGIC))
    if head and head != SQLITE_MAGIC:
        return "not an SQLite database (its first bytes are not SQLite's)"
    try:
        conn = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)
        try:
            return quick_check(conn)
        finally:
            conn.close()
    except UnicodeDecodeError as exc:
        return f"text that is not UTF-8 ({exc.reason})"
    except sqlite3.Error as exc:
        if is_damage(exc):
            return f"{type(exc).__name__}: {exc}"
        raise store_error("check", f"sqlite:{p}", exc) from exc


def sessions_row(conn: sqlite3.Connection) -> dict[str, Any] | None:
    """The first row of ``sessions`` by column name (any schema version), or ``None``."""
    cur = conn.execute("select * from sessions limit 1")
    try:
        names = [d[0] for d in cur.description]
        row = cur.fetchone()
    finally:
        cur.close()
    return dict(zip(names, row, strict=True)) if row is not None else None


class BadValue(ValueError):
    """A stored value of the wrong type or out of range (from the row readers below).

    :func:`file_errors` reports the file as damaged, naming the file and the value.
    """


INT: tuple[type, ...] = (int,)
OPT_INT: tuple[type, ...] = (int, type(None))
OPT_STR: tuple[type, ...] = (str, type(None))


def checked(value: Any, kinds: tuple[type, ...], what: str) -> Any:
    """``value`` if it is one of ``kinds`` (SQLite returns exactly int, float, str, bytes or None)."""
    if not isinstance(value, kinds):
        raise BadValue(f"{what} is {type(value).__name__}")
    return value


def header_from_row(values: dict[str, Any], auth_key: bytes | None) -> SessionHeader:
    return SessionHeader(
        checked(values.get("dc_id"), OPT_INT, "sessions.dc_id") or 0,
        checked(values.get("server_address"), OPT_STR, "sessions.server_address"),
        checked(values.get("port"), OPT_INT, "sessions.port"),
        auth_key,
        checked(values.get("takeout_id"), OPT_INT, "sessions.takeout_id"),
    )


def state_from_row(sid: Any, pts: Any, qts: Any, date: Any, seq: Any) -> tuple[int, types.updates.State]:
    what = f"update_state {sid!r}"
    sid, pts, qts, date, seq = (checked(v, OPT_INT, what) or 0 for v in (sid, pts, qts, date, seq))
    try:
        when = datetime.datetime.fromtimestamp(date, tz=_UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise BadValue(f"the date of {what} is out of range") from exc
    return sid, types.updates.State(pts, qts, when, seq, unread_count=0)


def read_states(conn: sqlite3.Connection) -> dict[int, types.updates.State]:
    return dict(state_from_row(*row) for row in conn.execute("select id, pts, qts, date, seq from update_state"))


def entity_from_row(row: Sequence[Any]) -> EntityRow:
    eid, ehash, username, phone, name, date = row
    what = f"entity {eid!r}"
    phone = checked(phone, (int, str, type(None)), what)  # the column has integer affinity
    return EntityRow(
        checked(eid, INT, "an entity id"),
        checked(ehash, INT, what),
        checked(username, OPT_STR, what) or None,
        str(phone) if phone is not None and phone != "" else None,
        checked(name, OPT_STR, what) or None,
        checked(date, OPT_INT, what) or 0,
    )


def paged(fetch: Callable[[int], list[Any]]) -> Iterator[Any]:
    """Rows of ``fetch(after)`` page by page; each row starts with its ordering key (id or rowid)."""
    last = FIRST
    while True:
        rows = fetch(last)
        yield from rows
        if len(rows) < PAGE:
            return
        last = rows[-1][0]


def entity_page(conn: sqlite3.Connection, select: str, after: int) -> list[Any]:
    return conn.execute(f"{select} where e.id > ? order by e.id limit ?", (after, PAGE)).fetchall()


def file_page(conn: sqlite3.Connection, after: int) -> list[Any]:
    return conn.execute(_FILE_PAGE, (after, PAGE)).fetchall()


def file_value(row: Sequence[Any]) -> tuple[int, int]:
    """``(id, hash)`` of a sent file."""
    return checked(row[0], INT, "a sent file's id"), checked(row[1], INT, "a sent file's hash")


def file_from_row(row: Sequence[Any]) -> tuple[tuple[bytes, int, int], tuple[int, int]]:
    """``(key, (id, hash))`` of a row of :func:`file_page`."""
    _, md5, size, kind, fid, fhash = row
    key = (
        checked(md5, (bytes,), "a sent file's md5"),
        checked(size, INT, "a sent file's size"),
        checked(kind, INT, "a sent file's type"),
    )
    return key, file_value((fid, fhash))


# -- the one reader of whole files ---------------------------------------------------------------


def plain_auth_key(value: object, where: str) -> bytes | None:
    """A plaintext auth key read from a file, or ``None``; anything else is refused (it may be sealed)."""
    if value is None or value == b"":
        return None
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise SessionCorruptError(f"{where}: the auth key is a {type(value).__name__}, not bytes")
    key = bytes(value)
    if len(key) != AUTH_KEY_SIZE:
        raise SessionCorruptError(
            f"{where}: the auth key has {len(key)} bytes, not {AUTH_KEY_SIZE}; it may be sealed by "
            "telethon-firestore-session encryption (open it with ScopedSQLiteSession and the key instead)"
        )
    return key


def read_snapshot(conn: sqlite3.Connection, where: str) -> SessionSnapshot:
    """Every record of a database in Telethon's schema (any version), as Telethon would read it; reads only.

    Versions up to 5 may hold wrong access hashes, which Telethon's upgrade drops:
    their entities are left out here too.

    :raises SessionCorruptError: if it is not a Telethon session, its auth key is not a
        plaintext one, or its entity fields are sealed (``encrypt_pii``).
    :raises SchemaVersionError: if it has a newer schema version than Telethon's.
    """
    tables, version = inspect(conn, where)
    if version is None:
        raise SessionCorruptError(f"{where}: an empty database with no sessions table, so not a Telethon session")
    snap = SessionSnapshot()
    values = sessions_row(conn)
    if values is not None:
        h = header_from_row(values, plain_auth_key(values.get("auth_key"), where))
        snap.dc_id, snap.server_address, snap.port, snap.auth_key, snap.takeout_id = h
    if "update_state" in tables:
        snap.update_states = read_states(conn)
    if SEALED_ENTITIES in tables:
        raise SessionCorruptError(
            f"{where}: its usernames, phones and names are sealed by telethon-firestore-session encryption "
            "(open it with ScopedSQLiteSession and the key instead)"
        )
    entity_columns = columns(conn, "entities")
    if entity_columns and version > 5:
        select = SELECT_PLAIN if "date" in entity_columns else SELECT_PLAIN.replace("e.date", "0")
        snap.entities = [entity_from_row(r) for r in paged(lambda after: entity_page(conn, select, after))]
    if {"md5_digest", "file_size", "type", "id", "hash"} <= columns(conn, "sent_files"):
        snap.files = dict(map(file_from_row, paged(lambda after: file_page(conn, after))))
    return snap


def read_session_file(path: str | os.PathLike[str], *, read_only: bool = True) -> SessionSnapshot:
    """Read a Telethon ``.session`` file (any schema version) without modifying it.

    Unlike ``SQLiteSession(path)`` this never creates a missing file and never upgrades an old
    one in place. It takes no lock: it sees the last committed state of a file being written.

    :param path: the file.
    :param read_only: ``False`` only for a private copy (e.g. one in WAL mode without its ``-shm``).
    :raises FileNotFoundError: if ``path`` does not exist.
    :raises SessionCorruptError: if it is not a Telethon session database, its auth key
        is not a plaintext one, or its entity fields are sealed (see :func:`read_snapshot`).
    :raises SchemaVersionError: if it has a newer schema version than Telethon's.
    :raises SessionStoreError: if SQLite cannot open or read it (busy, unreadable).
    """
    p = Path(path)
    with p.open("rb") as f:
        head = f.read(len(SQLITE_MAGIC))
    if head != SQLITE_MAGIC:
        raise SessionCorruptError(f"{p}: not an SQLite database, so not a Telethon .session file")
    where = str(p)
    uri = p.resolve().as_uri() + ("?mode=ro" if read_only else "")
    with file_errors("open", where):
        conn = sqlite3.connect(uri, uri=True)
        try:
            return read_snapshot(conn, where)
        finally:
            conn.close()


def read_auth_key(path: str | os.PathLike[str], *, timeout: float = 1.0) -> bytes | None:
    """The bytes stored in the file's ``sessions.auth_key`` as they are (plaintext or sealed), or ``None``.

    Read-only and without the session's lock, so a running bot is not disturbed.

    :param path: the session file.
    :param timeout: seconds to wait for a busy file.
    :raises SessionStoreError: if the file cannot be read as a Telethon session.
    """
    p = Path(path)
    with wrap_store_errors("read", f"sqlite:{p}", catch=sqlite3.Error):
        conn = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)
        try:
            row = conn.execute("select auth_key from sessions limit 1").fetchone()
        finally:
            conn.close()
    value = row[0] if row is not None else None
    return bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) and value else None


# -- writing -------------------------------------------------------------------------------


def create_tables(conn: sqlite3.Connection) -> None:
    """Telethon's tables and version row, in the caller's transaction."""
    for table in TABLES:
        conn.execute(f"create table {table}")
    conn.execute("insert into version values (?)", (SCHEMA_VERSION,))


def upgrade(conn: sqlite3.Connection, old: int) -> None:
    """Telethon's ``SQLiteSession._upgrade_database``, step by step, in the caller's transaction.

    Unlike Telethon's, each step tolerates a file that a crashed upgrade left half-done.
    """
    if old == 1:
        old += 1  # version 1 has no sent_files table yet
    if old == 2:
        old += 1  # the old sent_files cache expires within a day anyway: drop it
        conn.execute("drop table if exists sent_files")
        conn.execute(f"create table {_SENT_FILES_V3}")
    if old == 3:
        old += 1
        conn.execute(f"create table if not exists {_UPDATE_STATE_V4}")
    if old == 4:
        old += 1
        if "takeout_id" not in columns(conn, "sessions"):
            conn.execute("alter table sessions add column takeout_id integer")
    if old == 5:
        old += 1  # access hashes of users and channels may be wrong: drop them
        conn.execute("delete from entities")
    if old == 6:
        old += 1
        if "date" not in columns(conn, "entities"):
            conn.execute("alter table entities add column date integer")
    if old == 7:
        old += 1
        if "tmp_auth_key" not in columns(conn, "sessions"):
            conn.execute("alter table sessions add column tmp_auth_key blob")
    conn.execute("delete from version")
    conn.execute("insert into version values (?)", (SCHEMA_VERSION,))


def prepare(conn: sqlite3.Connection, names: set[str], version: int | None, where: str, *, sealed_table: bool) -> bool:
    """Make a checked file ready for the store: Telethon's current tables, our indexes.

    A file that is ready already (any file the store wrote) is not written at all. Before
    its first writes to any other file (upgrading it, adding the indexes) it runs
    :func:`quick_check`, so a damaged file is never modified; the writes are one
    transaction in the file's own journal mode (a failure leaves the file as it was),
    and only then is the file switched to WAL (:func:`use_wal`).

    :param names: its tables and indexes, and ``version`` its schema version (:func:`inspect`).
    :param sealed_table: also create the side table of sealed entity fields.
    :returns: whether the file was checked and switched to WAL here.
    :raises SessionCorruptError: if the check finds damage (the file is not modified).
    """
    due = version != SCHEMA_VERSION or not INDEXES.keys() <= names or (sealed_table and SEALED_ENTITIES not in names)
    if not due:
        return False
    if version is not None:
        problem = quick_check(conn)
        if problem is not None:
            raise damaged(where, problem)
    # In the file's own journal mode first: if this fails, it is rolled back and the
    # file is as it was (switching to WAL rewrites its header).
    with transaction(conn):
        if version is None:
            create_tables(conn)
        elif version < SCHEMA_VERSION:
            upgrade(conn, version)
            log.info("upgraded %s from Telethon schema version %d to %d", where, version, SCHEMA_VERSION)
        for stmt in INDEXES.values():
            conn.execute(stmt)
        if sealed_table:
            conn.execute(f"create table if not exists {SEALED_TABLE}")
    use_wal(conn, where)
    return True


def use_wal(conn: sqlite3.Connection, where: str) -> None:
    """Before the first write of an open file: WAL mode and ``synchronous=normal``.

    In WAL a commit appends to the ``-wal`` file (an auth key's commit is one fsync with
    ``synchronous=full``, see :func:`durable_transaction`) and readers never wait for the
    writer; with ``synchronous=normal`` a crash loses at most the last commits, never the file.
    """
    mode = conn.execute("pragma journal_mode=wal").fetchone()
    if mode is None or str(mode[0]).lower() != "wal":
        raise SessionStoreError(f"{where}: cannot switch the file to WAL mode (got {mode})")
    conn.execute("pragma synchronous=normal")


def rest(conn: sqlite3.Connection, where: str) -> None:
    """Before the store closes the file: back from WAL to Telethon's rollback journal, if no reader holds it.

    A file at rest is then one self-contained file, as Telethon writes it: opening it
    creates no ``-wal``/``-shm`` (that is most of what opening a WAL file costs), and
    read-only readers need no ``-shm``. If a reader holds the file now, it stays in WAL.
    """
    try:
        conn.execute("pragma busy_timeout = 100")
        row = conn.execute("pragma journal_mode").fetchone()
        if row is not None and str(row[0]).lower() == "wal":
            conn.execute("pragma journal_mode=delete")  # checkpoints and removes the -wal
    except sqlite3.Error as exc:
        log.debug("%s: left in WAL mode (%s)", where, exc)


def _write_records(conn: sqlite3.Connection, snap: SessionSnapshot) -> None:
    h = snap.header
    conn.execute(INSERT_SESSION, (h.dc_id, h.server_address, h.port, h.auth_key or b"", h.takeout_id, b""))
    now = int(time.time())
    conn.executemany(INSERT_ENTITY, [(r.id, r.hash, r.username, r.phone, r.name, r.date or now) for r in snap.entities])
    conn.executemany(
        INSERT_STATE, [(sid, s.pts, s.qts, int(s.date.timestamp()), s.seq) for sid, s in snap.update_states.items()]
    )
    conn.executemany(INSERT_FILE, [(*key, *value) for key, value in snap.files.items()])


def write_session_file(snapshot: SessionSnapshot, path: str | os.PathLike[str], *, replace: bool = False) -> Path:
    """Write ``snapshot`` as a complete Telethon schema-8 file that plain ``SQLiteSession(path)`` opens.

    The file holds the DC, the plaintext auth key, the takeout id, the entities (without a date:
    now), the update states and the sent files, in Telethon's own tables and journal mode, mode
    0600. Written beside ``path`` and renamed into place: ``path`` is untouched or complete.

    :param snapshot: the session to write.
    :param path: the file, used as given (Telethon appends ``.session`` to names without it).
    :param replace: replace an existing file (atomically); otherwise an existing file is kept.
    :returns: ``path``.
    :raises FileExistsError: if ``path`` exists and ``replace`` is false (nothing is written).
    :raises SessionStoreError: if the file cannot be written.
    """
    p = Path(path)
    where = f"sqlite:{p}"
    if not replace and p.exists():
        raise FileExistsError(f"{p} exists; pass replace=True to replace it")
    tmp = p.with_name(f".{p.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with wrap_store_errors("write", where, catch=(OSError, sqlite3.Error)):
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600))
            os.chmod(tmp, 0o600)  # whatever the umask
            conn = sqlite3.connect(tmp, isolation_level=None)
            try:
                conn.execute("pragma synchronous=full")
                with transaction(conn):
                    create_tables(conn)
                    _write_records(conn, snapshot)
            finally:
                conn.close()
            if replace:
                os.replace(tmp, p)
        if not replace:
            os.link(tmp, p)  # never replaces: FileExistsError if it appeared meanwhile
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    with wrap_store_errors("write", where, catch=OSError):
        fd = os.open(p.parent, os.O_RDONLY)
        try:
            os.fsync(fd)  # the new name is durable
        finally:
            os.close(fd)
    return p


# -- entity rows, sealed or not --------------------------------------------------------------


class EntityCodec:
    """Entity rows in and out of ``entities`` and the side table, sealing fields through a :class:`Sealer`.

    Rows come from :data:`SELECT_PLAIN` (6 columns) or :data:`SELECT_SEALED` (6 plus
    the 3 sealed values). Sealing and opening happen here, in the caller's thread:
    the background writer seals, lazy lookups open.
    """

    __slots__ = ("sealer",)

    def __init__(self, sealer: Sealer) -> None:
        self.sealer = sealer

    def seal_fields(self, row: EntityRow) -> tuple[list[str | None], list[bytes | None]]:
        """The ``entities`` columns (blind indexes) and side-table values (sealed) of a row."""
        cols: list[str | None] = []
        sealed: list[bytes | None] = []
        for f, value in zip(PII_FIELDS, (row.username, row.phone, row.name), strict=True):
            if not value:
                cols.append(None)
                sealed.append(None)
            else:
                index, value_sealed = self.sealer.seal_entity_field(row.id, f, value)
                cols.append(BLIND_INDEX_PREFIX + index)
                sealed.append(value_sealed)
        return cols, sealed

    def encode(self, rows: Iterable[EntityRow]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """``(entities rows, side-table rows)`` to insert; no side rows without ``encrypt_pii``."""
        if not self.sealer.seals_fields:
            return [(r.id, r.hash, r.username, r.phone, r.name, r.date) for r in rows], []
        entity_rows: list[tuple[Any, ...]] = []
        sealed_rows: list[tuple[Any, ...]] = []
        for r in rows:
            cols, sealed = self.seal_fields(r)
            entity_rows.append((r.id, r.hash, *cols, r.date))
            sealed_rows.append((r.id, *sealed))
        return entity_rows, sealed_rows

    def _field(self, eid: int, f: str, plain: str | None, column: Any, sealed: Any) -> str | None:
        """One entity field: the opened sealed value, or the column's plaintext (``plain``)."""
        if sealed is None or not (isinstance(column, str) and column.startswith(BLIND_INDEX_PREFIX)):
            return plain  # written without encrypt_pii, or rewritten by plain Telethon (a stale side value)
        value = self.sealer.open_entity_field(eid, f, checked(sealed, (bytes,), f"the sealed {f} of entity {eid}"))
        self.sealer.check_blind_index(eid, f, value, column[len(BLIND_INDEX_PREFIX) :])
        return value

    def decode(self, row: Sequence[Any]) -> EntityRow:
        """The entity of a row, opening its sealed fields."""
        plain = entity_from_row(row[:6])
        if len(row) == 6 or (row[6] is None and row[7] is None and row[8] is None):
            return plain
        plains = (plain.username, plain.phone, plain.name)
        username, phone, name = (
            self._field(plain.id, f, plains[i], row[2 + i], row[6 + i]) for i, f in enumerate(PII_FIELDS)
        )
        return plain._replace(username=username, phone=phone, name=name)

    def lookup_keys(self, field: str, value: str) -> tuple[str, ...]:
        """The column values to look ``value`` up by: itself, then its blind index under every accepted key."""
        return (value, *(BLIND_INDEX_PREFIX + bi for bi in self.sealer.blind_indexes(field, value)))

    def first_match(self, rows: Sequence[Sequence[Any]], field: str, value: str, where: str) -> EntityRow | None:
        """The first row of a lookup by ``field`` (newest first) that really holds ``value``.

        A blind index without its sealed value answers nothing; a row that does not
        open (copied from elsewhere, changed outside) never hides the real owner of the
        value, so it is skipped with a warning, and raised only if nothing else matches.
        """
        indexes = frozenset(self.lookup_keys(field, value)[1:])
        i = PII_FIELDS.index(field)
        failed: SessionDecryptionError | None = None
        for row in rows:
            if row[2 + i] in indexes and row[6 + i] is None:
                continue
            try:
                entity = self.decode(row)
            except SessionDecryptionError as exc:
                log.warning("%s: skipping entity %s in a lookup: %s", where, row[0], exc.reason)
                failed = failed or exc
                continue
            if row[2 + i] not in indexes or getattr(entity, field) == value:
                return entity  # found by the plaintext value, or by the blind index of the value
        if failed is not None:
            raise failed
        return None

    def needs_reseal(self, row: Sequence[Any]) -> bool:
        """A row sealed with an old key, or (with ``encrypt_pii``) holding plaintext fields."""
        plaintext = False
        for i in range(len(PII_FIELDS)):
            column = row[2 + i]
            side = row[6 + i] if len(row) > 6 else None
            if side is not None and isinstance(column, str) and column.startswith(BLIND_INDEX_PREFIX):
                if self.sealer.needs_reseal(bytes(side)):
                    return True
            elif column is not None and column != "":
                plaintext = True
        return self.sealer.seals_fields and plaintext
