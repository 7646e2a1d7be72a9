"""A circuit breaker (closed, open, half-open with one trial) whose state every process calling a
dependency shares, in SQLite or PostgreSQL. See docs/retries_and_breaker.md."""

import contextlib
import dataclasses
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
# Transactions here last microseconds: waiting this long for the lock means a stuck process.
LOCK_TIMEOUT = 30.0

T = TypeVar("T")


class CircuitOpenError(RuntimeError):
    """The breaker refused a call and the dependency was not called; try again in `retry_after` s."""

    def __init__(self, name: str, retry_after: float, reason: str) -> None:
        super().__init__(
            f"circuit breaker {name!r} is {reason}: not calling the dependency; retry in {retry_after:.1f} s"
        )
        self.name = name
        self.retry_after = retry_after
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, float, str]]:
        # Rebuild from the fields, so the error survives pickling between processes.
        return type(self), (self.name, self.retry_after, self.reason)


class BreakerStoreError(RuntimeError):
    """The SQLite file holding the breakers' state could not be read or written."""


@dataclasses.dataclass(frozen=True)
class BreakerStatus:
    name: str
    state: str
    consecutive_failures: int
    opened_at: float | None
    retry_after: float  # seconds until a call may go through; 0 when one may go now
    trial_in_flight: bool
    updated_at: float


@dataclasses.dataclass(frozen=True)
class Permit:
    """Permission for one call, from `acquire`; hand it to `record_success`, `record_failure` or `release`."""

    name: str
    trial_id: str | None = None  # set when this call is the half-open trial

    @property
    def is_trial(self) -> bool:
        return self.trial_id is not None


@dataclasses.dataclass(frozen=True)
class _Row:
    """One breaker's row; the fields are the table's columns, in order."""

    name: str
    state: str
    consecutive_failures: int
    opened_at: float | None
    # The recovery timeout of the breaker that last wrote the row, so every process (and a CLI
    # listing, which knows no configuration) computes the same retry_after.
    recovery_timeout: float
    trial_id: str | None
    trial_expires_at: float | None
    updated_at: float

    def trial_in_flight(self, now: float) -> bool:
        return self.trial_id is not None and self.trial_expires_at is not None and now < self.trial_expires_at

    def retry_after(self, now: float) -> float:
        if self.state == OPEN and self.opened_at is not None:
            return max(0.0, self.opened_at + self.recovery_timeout - now)
        if self.state == HALF_OPEN and self.trial_in_flight(now) and self.trial_expires_at is not None:
            # The trial decides by the end of its lease; waiting longer than a recovery timeout
            # would only delay callers after a quick successful trial.
            return min(self.recovery_timeout, self.trial_expires_at - now)
        return 0.0

    def reason(self) -> str:
        if self.state == OPEN:
            return f"open after {self.consecutive_failures} consecutive failures"
        return "half-open and a trial call is already testing the dependency"

    def status(self, now: float) -> BreakerStatus:
        return BreakerStatus(
            name=self.name,
            state=self.state,
            consecutive_failures=self.consecutive_failures,
            opened_at=self.opened_at,
            retry_after=self.retry_after(now),
            trial_in_flight=self.trial_in_flight(now),
            updated_at=self.updated_at,
        )


_FIELDS = [field.name for field in dataclasses.fields(_Row)]
_COLUMNS = ", ".join(_FIELDS)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS circuit_breakers (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    consecutive_failures INTEGER NOT NULL,
    opened_at REAL,
    recovery_timeout REAL NOT NULL,
    trial_id TEXT,
    trial_expires_at REAL,
    updated_at REAL NOT NULL
)
"""


def _use_wal(connection: sqlite3.Connection) -> None:
    """WAL journal mode, so someone reading the file never blocks a breaker.

    Switching a new file to WAL needs an exclusive lock that SQLite does not wait for (it fails at
    once with SQLITE_BUSY when processes open a new store together), hence the retries.
    """
    deadline = time.monotonic() + LOCK_TIMEOUT
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if error.sqlite_errorname != "SQLITE_BUSY" or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class _Rows:
    """The breakers' table inside one open transaction: read one row or all, write one."""

    def __init__(self, cursor: Any, placeholder: str, upsert: str) -> None:
        self._cursor, self._placeholder, self._upsert = cursor, placeholder, upsert

    def get(self, name: str) -> "_Row | None":
        self._cursor.execute(f"SELECT {_COLUMNS} FROM circuit_breakers WHERE name = {self._placeholder}", (name,))
        found = self._cursor.fetchone()
        return _Row(*found) if found else None

    def all(self) -> "list[_Row]":
        self._cursor.execute(f"SELECT {_COLUMNS} FROM circuit_breakers ORDER BY name")
        return [_Row(*r) for r in self._cursor.fetchall()]

    def put(self, row: "_Row") -> None:
        self._cursor.execute(self._upsert, dataclasses.astuple(row))


def is_postgres(store: str) -> bool:
    return store.startswith(("postgresql://", "postgres://", "postgresql+psycopg2://"))


@contextlib.contextmanager
def _transaction(store: str) -> Iterator[_Rows]:
    """One transaction over the breakers' table that no other process interleaves with,
    committed when the block ends; on a fresh connection, which is safe whatever the process
    model (fork, spawn, threads). `store` is a SQLite file, or a PostgreSQL URL
    (`postgresql+psycopg2://user@host:port/db`, the instance's) for a breaker shared by every machine."""
    if is_postgres(store):
        with _postgres_transaction(store) as rows:
            yield rows
        return
    try:
        connection = sqlite3.connect(store, timeout=LOCK_TIMEOUT, isolation_level=None)
        try:
            _use_wal(connection)
            # IMMEDIATE takes the write lock before the first read: no other process acts on
            # the same state in between
            connection.execute("BEGIN IMMEDIATE")
            connection.execute(_SCHEMA)
            upsert = f"REPLACE INTO circuit_breakers ({_COLUMNS}) VALUES ({', '.join('?' for _ in _FIELDS)})"
            yield _Rows(connection.cursor(), "?", upsert)
            connection.execute("COMMIT")
        finally:
            connection.close()  # rolls back a transaction left open by an error
    except sqlite3.Error as error:
        raise BreakerStoreError(
            f"circuit breaker store {store} failed: {error}; check that its directory exists and is "
            "writable by every process that uses the breaker, on a local disk, and that no process "
            f"holds it locked for more than {LOCK_TIMEOUT:.0f} s"
        ) from error


# Every breaker transaction on PostgreSQL first takes this transaction-level advisory lock: one
# at a time, as SQLite's BEGIN IMMEDIATE gives (creating the table included).
_PG_LOCK = 4_711_001


@contextlib.contextmanager
def _postgres_transaction(url: str) -> Iterator[_Rows]:
    import psycopg2  # installed with dagster-postgres; only needed for a PostgreSQL store

    scheme, _, rest = url.partition("://")
    try:  # the instance's URL may name SQLAlchemy's driver (postgresql+psycopg2://); libpq does not
        connection = psycopg2.connect(f"{scheme.split('+')[0]}://{rest}", connect_timeout=int(LOCK_TIMEOUT))
    except psycopg2.Error as error:
        raise BreakerStoreError(
            f"circuit breaker store {_redacted(url)}: cannot connect ({error}); check the URL, that the "
            "server is up and that this machine may reach it"
        ) from error
    try:
        with connection, connection.cursor() as cursor:  # commits at the end, rolls back on error
            cursor.execute(f"SET LOCAL lock_timeout = '{int(LOCK_TIMEOUT)}s'")
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_LOCK,))
            cursor.execute(_SCHEMA.replace("REAL", "DOUBLE PRECISION"))
            updates = ", ".join(f"{f} = EXCLUDED.{f}" for f in _FIELDS if f != "name")
            upsert = (
                f"INSERT INTO circuit_breakers ({_COLUMNS}) VALUES ({', '.join('%s' for _ in _FIELDS)}) "
                f"ON CONFLICT (name) DO UPDATE SET {updates}"
            )
            yield _Rows(cursor, "%s", upsert)
    except psycopg2.Error as error:
        raise BreakerStoreError(f"circuit breaker store {_redacted(url)} failed: {error}") from error
    finally:
        connection.close()


def _redacted(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    return f"{scheme}://{credentials.split(':')[0]}@{host}" if at else url


def _closed(row: _Row) -> _Row:
    return dataclasses.replace(
        row, state=CLOSED, consecutive_failures=0, opened_at=None, trial_id=None, trial_expires_at=None
    )


def _holds_trial(row: _Row, permit: Permit) -> bool:
    # A slow trial whose lease expired still decides, as long as no other trial has taken over.
    return row.state == HALF_OPEN and permit.is_trial and row.trial_id == permit.trial_id


def _counts_every_exception(error: BaseException) -> bool:
    return isinstance(error, Exception)  # an interrupt or exit says nothing about the dependency


class CircuitBreaker:
    """A named breaker over the SQLite file `store`; every instance with the same name and store
    (in any process) shares one state. `clock` gives all times; `on_change(old, new)` is called
    after each committed change of state or trial, and after every `reset`."""

    def __init__(
        self,
        name: str,
        store: str | os.PathLike,
        failure_threshold: int = 5,
        recovery_timeout: float = 30.0,
        trial_timeout: float = 300.0,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[BreakerStatus, BreakerStatus], None] | None = None,
        should_count: Callable[[BaseException], bool] | None = None,
    ) -> None:
        if not name:
            raise ValueError("a circuit breaker needs a non-empty name (the dependency it protects)")
        if failure_threshold < 1:
            raise ValueError(f"circuit breaker {name!r}: failure_threshold must be >= 1, got {failure_threshold!r}")
        if recovery_timeout < 0:
            raise ValueError(f"circuit breaker {name!r}: recovery_timeout must be >= 0 s, got {recovery_timeout!r}")
        if trial_timeout <= 0:
            raise ValueError(
                f"circuit breaker {name!r}: trial_timeout must be > 0 s (longer than a trial call "
                f"takes), got {trial_timeout!r}"
            )
        self.name = name
        self.store = os.fspath(store)
        self.failure_threshold = failure_threshold
        self.recovery_timeout = recovery_timeout
        self.trial_timeout = trial_timeout
        self._clock = clock
        self._on_change = on_change
        self._should_count = should_count or _counts_every_exception

    def acquire(self) -> Permit:
        """Permission for one call, or CircuitOpenError when the dependency must not be called."""

        def admit(row: _Row, now: float) -> _Row:
            if row.state == CLOSED:
                return row
            if row.state == OPEN and row.opened_at is not None and now < row.opened_at + row.recovery_timeout:
                return row
            if row.state == HALF_OPEN and row.trial_in_flight(now):
                return row
            # Open past its recovery timeout, or half-open without a live trial (its process died
            # or gave it back): this call is the trial.
            return dataclasses.replace(
                row, state=HALF_OPEN, trial_id=uuid.uuid4().hex, trial_expires_at=now + self.trial_timeout
            )

        old, new, now = self._transition(admit)
        if new.state == CLOSED:
            return Permit(self.name)
        if new.trial_id != old.trial_id:
            return Permit(self.name, trial_id=new.trial_id)
        raise CircuitOpenError(self.name, new.retry_after(now), new.reason())

    def record_success(self, permit: Permit) -> None:
        self._check(permit)

        def succeed(row: _Row, now: float) -> _Row:
            if row.state == CLOSED or _holds_trial(row, permit):
                return _closed(row)
            return row  # a late result from before the breaker opened, or of a superseded trial

        self._transition(succeed)

    def record_failure(self, permit: Permit) -> None:
        self._check(permit)

        def fail(row: _Row, now: float) -> _Row:
            if row.state == CLOSED or _holds_trial(row, permit):
                failures = row.consecutive_failures + 1
                if row.state == HALF_OPEN or failures >= self.failure_threshold:
                    # A failed trial re-opens at once, with a fresh recovery timeout from now.
                    return dataclasses.replace(
                        row,
                        state=OPEN,
                        consecutive_failures=failures,
                        opened_at=now,
                        trial_id=None,
                        trial_expires_at=None,
                    )
                return dataclasses.replace(row, consecutive_failures=failures)
            return row  # already open, or another trial decides

        self._transition(fail)

    def release(self, permit: Permit) -> None:
        """Give a permit back without a verdict; a released trial lets the next caller try at once."""
        self._check(permit)

        def give_back(row: _Row, now: float) -> _Row:
            if _holds_trial(row, permit):
                return dataclasses.replace(row, trial_id=None, trial_expires_at=None)
            return row

        self._transition(give_back)

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """fn(*args, **kwargs) through the breaker; the dependency's errors propagate unchanged.

        Errors `should_count` rejects (by default: interrupts and exits) neither trip nor close the
        breaker: they are not the dependency's fault.
        """
        permit = self.acquire()
        try:
            result = fn(*args, **kwargs)
        except BaseException as error:
            if self._should_count(error):
                self.record_failure(permit)
            else:
                self.release(permit)
            raise
        self.record_success(permit)
        return result

    def status(self) -> BreakerStatus:
        _, row, now = self._transition(lambda row, now: row)
        return row.status(now)

    def reset(self) -> BreakerStatus:
        """Close the breaker by hand (e.g. once the dependency is known to be back)."""
        _, row, now = self._transition(lambda row, now: _closed(row), always_notify=True)
        return row.status(now)

    def _check(self, permit: Permit) -> None:
        if permit.name != self.name:
            raise ValueError(
                f"a permit of circuit breaker {permit.name!r} was handed to breaker {self.name!r}: "
                "record a call's result on the breaker that admitted it"
            )

    def _transition(
        self, decide: Callable[[_Row, float], _Row], always_notify: bool = False
    ) -> tuple[_Row, _Row, float]:
        """Apply `decide(row, now)` to this breaker's row in one transaction, then notify."""
        with _transaction(self.store) as rows:
            stored = rows.get(self.name)
            now = self._clock()  # read under the lock, so times never go backwards between writers
            old = stored or _Row(self.name, CLOSED, 0, None, self.recovery_timeout, None, None, now)
            new = decide(old, now)
            if new != old or stored is None:  # a breaker's row appears on first use, for all_statuses
                new = dataclasses.replace(new, recovery_timeout=self.recovery_timeout, updated_at=now)
                rows.put(new)
        changed = (old.state, old.trial_in_flight(now)) != (new.state, new.trial_in_flight(now))
        if self._on_change is not None and (changed or always_notify):
            self._on_change(old.status(now), new.status(now))
        return old, new, now


def all_statuses(store: str | os.PathLike, clock: Callable[[], float] = time.time) -> list[BreakerStatus]:
    """Every breaker in `store`, by name, e.g. for a CLI listing; none when the file does not exist."""
    store = os.fspath(store)
    if not is_postgres(store) and not os.path.exists(store):
        return []
    with _transaction(store) as rows:
        now = clock()
        found = rows.all()
    return [row.status(now) for row in found]
