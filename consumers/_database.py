"""The relational database of the consumers: PostgreSQL, or SQLite as the embedded default."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from schemas.errors import ConfigurationError, StorageError

__all__ = ["Database", "Migration", "async_url", "migrated_database"]


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


# serialization failure, deadlock, lock not available, query cancelled (statement timeout)
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57014"})


def _transient(exc: DBAPIError) -> bool:
    """Whether trying again may succeed: lost connections, lock conflicts, deadlocks, SQLite's busy file."""
    if exc.connection_invalidated or isinstance(exc, OperationalError):
        return True
    state = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return state in _TRANSIENT_SQLSTATES or "database is locked" in str(exc.orig)


def _check_sqlite_path(url: str) -> None:
    """Refuse a SQLite file in a folder that does not exist (the driver would fail late and noisily)."""
    path = url.split(":///", 1)[1].split("?", 1)[0] if ":///" in url else ""
    if path and path != ":memory:" and not Path(path).parent.exists():
        msg = f"the folder of the SQLite database {path!r} does not exist"
        raise ConfigurationError(msg)


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered schema change; applied once, in order, recorded in ``eventbus_migrations``."""

    version: int
    name: str
    statements: Sequence[str]


class Database:
    """An async engine plus versioned migrations. Example: ``db = Database("sqlite:///eventbus.sqlite")``"""

    def __init__(self, url: str) -> None:
        self.url = async_url(url)
        self.dialect = "postgresql" if self.url.startswith("postgresql") else "sqlite"
        if self.dialect == "sqlite":
            _check_sqlite_path(self.url)
        self._engine: AsyncEngine = create_async_engine(self.url, pool_pre_ping=self.dialect == "postgresql")

    def __repr__(self) -> str:
        return f"Database({self._engine.url.render_as_string(hide_password=True)!r})"

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A transaction: committed when the block ends, rolled back on error."""
        try:
            async with self._engine.begin() as conn:
                yield conn
        except DBAPIError as exc:
            raise StorageError(f"database error: {exc.orig!r}", retriable=_transient(exc)) from exc
        except (SQLAlchemyError, OSError) as exc:
            raise StorageError(f"database error: {exc!r}") from exc

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
                for statement in migration.statements:
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
