"""The relational database of the consumers: PostgreSQL, or SQLite as the embedded default.

SQLite is set up the way it wants concurrent use: WAL journal (readers never block the
writer), a busy timeout, ``BEGIN IMMEDIATE`` (a transaction takes the write lock when it
starts, so it waits for it there instead of failing when a read turns into a write), and
one transaction at a time per file in this process (an asyncio lock around each
transaction: SQLite has one writer anyway, and tasks then queue in Python rather than
spin in the driver's busy handler). Transactions are short: hold ``begin()`` only around
SQL.

Lock conflicts, serialization failures, deadlocks and lost connections are transient
(``StorageError(retriable=True)``; ``is_transient_database_error`` tells for a raw driver
or SQLAlchemy error); constraint violations, syntax errors and missing tables are not.
"""

from __future__ import annotations

import asyncio
import sqlite3
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from schemas.errors import ConfigurationError, StorageError

__all__ = [
    "SQLITE_BUSY_TIMEOUT_S",
    "Database",
    "Migration",
    "async_url",
    "is_transient_database_error",
    "migrated_database",
]

SQLITE_BUSY_TIMEOUT_S = 15.0
"""How long a SQLite transaction waits for the write lock (``?timeout=`` in the URL overrides it)."""


def async_url(url: str) -> str:
    """The SQLAlchemy async URL for a plain one (``postgresql://``, ``sqlite:///file``).

    Example: ``async_url("postgresql://127.0.0.1/test") == "postgresql+asyncpg://127.0.0.1/test"``
    """
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    if url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
        return url
    msg = f"unsupported database URL {url.split('://', maxsplit=1)[0]}://…: use postgresql:// or sqlite:///"
    raise ConfigurationError(msg)


# PostgreSQL: serialization failure, deadlock, lock not available, query cancelled (statement timeout),
# too many connections, and the server shutting down or starting up (a restart).
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57014", "53300", "57P01", "57P02", "57P03"})
_CONNECTION_SQLSTATE_CLASS = "08"
# SQLite: SQLITE_BUSY and SQLITE_LOCKED, with their extended codes (the low byte is the primary code).
_SQLITE_TRANSIENT_CODES = frozenset({5, 6})
_SQLITE_TRANSIENT_TEXT = ("database is locked", "database table is locked", "database schema is locked")


def _transient_driver_error(error: BaseException) -> bool:
    """Whether a driver's own exception (sqlite3, asyncpg or SQLAlchemy's adaptor of it) is transient."""
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF in _SQLITE_TRANSIENT_CODES:
            return True
        return any(phrase in str(error).lower() for phrase in _SQLITE_TRANSIENT_TEXT)
    for candidate in (error, error.__cause__):
        state = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(state, str):
            return state in _TRANSIENT_SQLSTATES or state.startswith(_CONNECTION_SQLSTATE_CLASS)
    # asyncpg's "connection was closed in the middle of operation" and the like carry no SQLSTATE
    return type(error).__name__ in {"ConnectionDoesNotExistError", "ConnectionFailureError"}


def is_transient_database_error(exc: BaseException) -> bool:
    """Whether a database error may go away by trying again: lock conflicts, deadlocks, lost connections.

    Takes SQLAlchemy's wrappers (``DBAPIError`` and its subclasses, a pool timeout) and the
    drivers' own exceptions (``sqlite3.OperationalError``, asyncpg's ``PostgresError``), so a
    handler that talks to a driver directly is classified alike. Example:
    ``is_transient_database_error(sqlite3.OperationalError("database is locked"))``
    """
    if isinstance(exc, DBAPIError):
        return bool(exc.connection_invalidated) or (exc.orig is not None and _transient_driver_error(exc.orig))
    if isinstance(exc, (PoolTimeoutError, DisconnectionError)):
        return True
    if isinstance(exc, SQLAlchemyError):
        return False
    return _transient_driver_error(exc)


def _check_sqlite_path(url: str) -> None:
    """Refuse a SQLite file in a folder that does not exist (the driver would fail late and noisily)."""
    path = _sqlite_path(url)
    if path and path != ":memory:" and not Path(path).parent.exists():
        msg = f"the folder of the SQLite database {path!r} does not exist"
        raise ConfigurationError(msg)


def _sqlite_path(url: str) -> str:
    return url.split(":///", 1)[1].split("?", 1)[0] if ":///" in url else ""


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # The driver's own transaction handling off: ``_on_sqlite_begin`` opens every transaction itself.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")  # a :memory: database answers "memory": fine
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; commits stay cheap in WAL
    finally:
        cursor.close()


def _on_sqlite_begin(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


# One transaction at a time per SQLite file and event loop, shared by every Database of the process.
_WRITE_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered schema change; applied once, in order, recorded in ``eventbus_migrations``."""

    version: int
    name: str
    statements: Sequence[str]
    postgresql: Sequence[str] = ()
    """Statements run after ``statements`` on PostgreSQL only (types and triggers SQLite spells otherwise)."""
    sqlite: Sequence[str] = ()
    """Statements run after ``statements`` on SQLite only."""


class Database:
    """An async engine plus versioned migrations. Example: ``db = Database("sqlite:///eventbus.sqlite")``"""

    def __init__(self, url: str) -> None:
        self.url = async_url(url)
        self.dialect = "postgresql" if self.url.startswith("postgresql") else "sqlite"
        self._lock_key = ""
        self._lock_wait_s = SQLITE_BUSY_TIMEOUT_S
        options: dict[str, Any] = {}
        if self.dialect == "sqlite":
            _check_sqlite_path(self.url)
            path = _sqlite_path(self.url)
            in_memory = not path or path == ":memory:"
            # a file is shared by every Database on it; each in-memory database is its own
            self._lock_key = f"memory:{id(self)}" if in_memory else str(Path(path).resolve())
            timeout = make_url(self.url).query.get("timeout")
            if timeout is None:
                options["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
            else:
                self._lock_wait_s = float(timeout if isinstance(timeout, str) else timeout[0])
        self._engine: AsyncEngine = create_async_engine(self.url, pool_pre_ping=self.dialect == "postgresql", **options)
        if self.dialect == "sqlite":
            event.listen(self._engine.sync_engine, "connect", _on_sqlite_connect)
            event.listen(self._engine.sync_engine, "begin", _on_sqlite_begin)

    def __repr__(self) -> str:
        return f"Database({self._engine.url.render_as_string(hide_password=True)!r})"

    def _write_lock(self) -> asyncio.Lock:
        locks = _WRITE_LOCKS.setdefault(asyncio.get_running_loop(), {})
        lock = locks.get(self._lock_key)
        if lock is None:
            lock = locks[self._lock_key] = asyncio.Lock()
        return lock

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A transaction: committed when the block ends, rolled back on error.

        Database failures become ``StorageError``, retriable when transient.
        Example: ``async with database.begin() as conn: await conn.execute(text("SELECT 1"))``
        """
        if self.dialect != "sqlite":
            async with self._transaction() as conn:
                yield conn
            return
        lock = self._write_lock()
        try:
            await asyncio.wait_for(lock.acquire(), timeout=self._lock_wait_s)
        except TimeoutError:
            msg = (
                f"database is locked: another transaction of this process held the SQLite file for over"
                f" {self._lock_wait_s:g} s (is a transaction opened inside another one?)"
            )
            raise StorageError(msg, retriable=True) from None
        try:
            async with self._transaction() as conn:
                yield conn
        finally:
            lock.release()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self._engine.begin() as conn:
                yield conn
        except DBAPIError as exc:
            raise StorageError(f"database error: {exc.orig!r}", retriable=is_transient_database_error(exc)) from exc
        except SQLAlchemyError as exc:
            raise StorageError(f"database error: {exc!r}", retriable=is_transient_database_error(exc)) from exc
        except OSError as exc:  # connecting: refused, reset, unreachable (TimeoutError is one too)
            raise StorageError(f"database unreachable: {exc!r}", retriable=True) from exc

    async def migrate(self, migrations: Sequence[Migration]) -> list[int]:
        """Apply the migrations not applied yet; returns the versions applied now."""
        applied: list[int] = []
        async with self.begin() as conn:
            await conn.execute(
                text(
                    "CREATE TABLE IF NOT EXISTS eventbus_migrations ("
                    " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                    " applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)"
                )
            )
            if self.dialect == "postgresql":  # several processes may start at once
                await conn.execute(text("LOCK TABLE eventbus_migrations IN EXCLUSIVE MODE"))
            done = {row[0] for row in await conn.execute(text("SELECT version FROM eventbus_migrations"))}
            for migration in sorted(migrations, key=lambda m: m.version):
                if migration.version in done:
                    continue
                dialect_only = migration.postgresql if self.dialect == "postgresql" else migration.sqlite
                for statement in (*migration.statements, *dialect_only):
                    await conn.execute(text(statement))
                await conn.execute(
                    text("INSERT INTO eventbus_migrations (version, name) VALUES (:v, :n)"),
                    {"v": migration.version, "n": migration.name},
                )
                applied.append(migration.version)
        return applied

    async def close(self) -> None:
        """Close every pooled connection."""
        await self._engine.dispose()


@asynccontextmanager
async def migrated_database(url: str, migrations: Sequence[Migration]) -> AsyncIterator[Database]:
    """A database with ``migrations`` applied, closed when the block ends.

    Example: ``async with migrated_database(url, MIGRATIONS) as database: ...``
    """
    database = Database(url)
    try:
        await database.migrate(migrations)
        yield database
    finally:
        await database.close()
