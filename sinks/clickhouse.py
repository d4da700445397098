"""One ClickHouse interface over two back ends: embedded chdb and a real server.

``open_store(None, dir)`` gives the embedded store (worker and API share one process and one data dir);
``open_store("clickhouse://[user[:password]@]host[:port]/db", dir)`` talks to a server via clickhouse-driver.

Value rules, identical on both back ends so callers never care which one they got:

* Query parameters are ``{name}`` placeholders rendered as literals by :func:`render_sql` (the only place
  values enter SQL). ``None`` -> ``NULL``, bool -> ``1``/``0``, int/float -> number, str -> quoted and
  escaped, aware ``datetime`` -> epoch seconds, list/tuple -> ``[..]`` array. Test membership with
  ``has({ids}, col)``: the 18.16 server rejects ``IN [..]`` and ``has([], col)``, so skip empty lists.
* Results are ``list[dict]``. Integers are ``int``, floats ``float`` (``nan``/``inf`` included), strings
  ``str``, ``DateTime`` columns **int epoch seconds**, ``Date`` an ISO ``YYYY-MM-DD`` string, arrays and
  tuples lists.
* Inserts take int epoch seconds (preferred) or timezone-aware ``datetime`` for ``DateTime`` columns.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlencode, urlsplit
from uuid import UUID, uuid4

import orjson

__all__ = [
    "MAX_LITERAL_BYTES",
    "ChdbStore",
    "ClickHouseError",
    "ClickHouseStore",
    "ClickHouseUnavailable",
    "ServerStore",
    "literal_chunks",
    "open_store",
    "render_sql",
    "sql_literal",
]


class ClickHouseError(Exception):
    """A query or insert failed for a reason retrying will not fix (bad SQL, bad data, ...)."""


class ClickHouseUnavailable(Exception):
    """The server could not be reached (refused, timed out, dropped): safe to retry later.

    Deliberately not a ClickHouseError, so ``except ClickHouseError`` (give up) never swallows it.
    """


class ClickHouseStore(Protocol):
    backend: str  # "chdb" or "server"

    def migrate(self) -> int: ...
    def insert(self, table: str, rows: Sequence[Mapping[str, Any]]) -> int: ...
    def insert_arrow(self, table: str, data: Any, select: Mapping[str, str] | None = None) -> int: ...
    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]: ...
    def close(self) -> None: ...


# --- parameters -------------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")  # `{name:Type}` (ClickHouse's own) is left alone
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def sql_literal(value: Any) -> str:
    """Render one Python value as a ClickHouse literal that parses the same on 18.16 and 26.9."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # Inside '...' ClickHouse only gives meaning to backslash escapes and the quote itself.
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, datetime):
        return str(_epoch(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(sql_literal(v) for v in value) + "]"
    raise TypeError(f"cannot use {type(value).__name__} as a ClickHouse query parameter")


# Bytes of literals per query that renders a list of any length (a batch's serials, every case id):
# ClickHouse refuses a query text over its max_query_size (256 KiB by default, and 18.16 takes no
# per-query override) with an error that never changes, so a caller retrying it would stall for
# good. Bounded by bytes, not by count, because values vary in length (serials up to 128 characters).
MAX_LITERAL_BYTES = 100_000


def literal_chunks(values: Sequence[str], limit: int = MAX_LITERAL_BYTES) -> Iterator[list[str]]:
    """``values`` in runs whose rendered literals (escaped, quoted, with a separator) stay within
    ``limit`` bytes; a single longer value still gets a run of its own."""
    chunk: list[str] = []
    size = 0
    for value in values:
        cost = len(sql_literal(value).encode()) + 2
        if chunk and size + cost > limit:
            yield chunk
            chunk, size = [], 0
        chunk.append(value)
        size += cost
    if chunk:
        yield chunk


def render_sql(sql: str, params: Mapping[str, Any] | None) -> str:
    """Substitute ``{name}`` placeholders with escaped literals; unknown names raise KeyError.

    One pass only, so a value that itself contains ``{x}`` is never substituted again.

    >>> render_sql("SELECT {a}, {b} WHERE has({c}, x)", {"a": "it's", "b": None, "c": [1, 2]})
    "SELECT 'it\\\\'s', NULL WHERE has([1, 2], x)"
    """
    if params is None:
        return sql

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in params:
            raise KeyError(f"query parameter {name!r} is not in params")
        return sql_literal(params[name])

    return _PLACEHOLDER.sub(sub, sql)


def _epoch(value: datetime) -> int:
    if value.tzinfo is None:
        # A naive datetime would be read in whichever zone the back end runs in: refuse to guess.
        raise ValueError("naive datetime: pass int epoch seconds or a timezone-aware datetime")
    return int(value.timestamp())


def _ident(name: str) -> str:
    """Quote a table/column name after checking it is a plain identifier (``db.table`` allowed)."""
    parts = name.split(".")
    if not all(_IDENT.match(p) for p in parts) or len(parts) > 2:
        raise ValueError(f"not a valid ClickHouse identifier: {name!r}")
    return ".".join(f"`{p}`" for p in parts)


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Column list from the first row; every row must have exactly the same keys."""
    cols = list(rows[0])
    keys = set(cols)
    for i, row in enumerate(rows):
        if set(row) != keys:
            raise ValueError(f"row {i} has keys {sorted(row)}, expected {sorted(keys)}")
    return cols


def _insert_select(data: Any, select: Mapping[str, str] | None) -> tuple[str, str]:
    if select is None:
        cols = ", ".join(_ident(c) for c in data.schema.names)
        return cols, cols
    return ", ".join(_ident(c) for c in select), ", ".join(select.values())


def _arrow_to_ch(arrow_type: Any) -> str:
    import pyarrow as pa

    if pa.types.is_list(arrow_type):
        return f"Array({_arrow_to_ch(arrow_type.value_type)})"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "String"
    if pa.types.is_integer(arrow_type):
        return f"{'Int' if pa.types.is_signed_integer(arrow_type) else 'UInt'}{arrow_type.bit_width}"
    if pa.types.is_floating(arrow_type):
        return "Float64"
    if pa.types.is_boolean(arrow_type):
        return "UInt8"
    raise TypeError(f"no ClickHouse column type for Arrow {arrow_type}")


def _insert_value(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, datetime):
        return _epoch(value)
    return value


def _json_value(value: Any) -> Any:
    value = _insert_value(value)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # orjson writes nan/inf as null; ClickHouse parses "nan"/"inf"/"-inf"
    return value


# --- embedded chdb ----------------------------------------------------------------------------------

# Set once per session: unquoted 64-bit ints, DateTime as epoch seconds, nan/inf as strings (else null).
_CHDB_SETTINGS = {
    "output_format_json_quote_64bit_integers": "0",
    "output_format_json_quote_denormals": "1",
    "date_time_output_format": "'unix_timestamp'",
    # ReplacingMergeTree would dedup each insert block on arrival; readers use FINAL anyway, and
    # skipping it halves the cost of a registry import (measured 1.1 s -> 0.5 s per million units).
    "optimize_on_insert": "0",
    # One part per insert instead of one per thread: half the parts for background merges to fold
    # (a 1 M-unit import batch made a 280 k and a 720 k part); reading and checking the next batch
    # already keeps the second core busy.
    "max_insert_threads": "1",
    # Cut insert blocks by rows only (1,048,449): by bytes (256 MiB) a 1 M-unit import batch of ~300
    # bytes a unit still made two parts, so a 10 M import left 20 parts for FINAL reads to combine
    # and merges to fold; now it leaves 10. A block is still at most 1,048,449 rows, and only a
    # registry import batch (1,000,000 rows) comes near that.
    "min_insert_block_size_bytes": "0",
}
# Server settings, given at start-up (chdb passes a data dir's ``?k=v`` on as its command line).
# Background merges share the machine with queries and imports: at nice 19 they use idle CPU only, so
# a big merge (19 freshly imported parts of 10 M units take a core for 20-35 s) no longer turns
# 5 ms lookups into 40 ms ones. One merge thread, because the nice value reaches only the first:
# with two, half of every merge still ran at normal priority. The work done is the same either way.
_CHDB_STARTUP = {"os_threads_nice_value_merge_mutate": "19", "background_pool_size": "1"}
_WRAPPER = re.compile(r"^(?:Nullable|LowCardinality)\((.*)\)$")


def _from_json(value: Any, ch_type: str) -> Any:
    """Coerce a JSON value to the Python type the server back end returns for ``ch_type``."""
    if value is None:
        return None
    while m := _WRAPPER.match(ch_type):
        ch_type = m.group(1)
    if ch_type.startswith("Array("):
        return [_from_json(v, ch_type[6:-1]) for v in value]
    if ch_type.startswith("DateTime64"):
        return float(value)
    if ch_type.startswith("DateTime"):
        return int(value)
    if ch_type.startswith(("Float", "Decimal")):
        return float(value)  # JSON prints 1.0 as 1, and nan/inf as strings
    if ch_type.startswith(("Int", "UInt")):
        return int(value)
    return value


class ChdbStore:
    backend = "chdb"

    def __init__(self, data_dir: str | Path) -> None:
        import chdb  # imported here: the wheel is large and server users never need it

        path = Path(data_dir)
        path.mkdir(parents=True, exist_ok=True)
        # One connection per thread, so the API's lookups need not wait behind the worker's inserts
        # (they share this store in embedded mode). chdb runs queries of different connections
        # side by side, and settings are per connection, so each new one gets _CHDB_SETTINGS.
        self._connect = chdb.connect
        self._path = str(path)
        self._local = threading.local()
        self._guard = threading.Lock()  # guards the list below and closing
        self._connections: list[tuple[Any, threading.Lock]] = []
        self._closed = False
        try:
            # The first connection starts the engine with the server settings; one data dir per
            # process (and per machine): a second path in this process fails here.
            self._connection(f"{path}?{urlencode(_CHDB_STARTUP)}")
        except ClickHouseError:
            raise
        except Exception as exc:
            raise ClickHouseError(f"cannot open chdb data dir {path}: {exc}") from exc

    def _connection(self, uri: str | None = None) -> tuple[Any, threading.Lock]:
        """This thread's connection and the lock ``close`` takes to wait for its query."""
        mine: tuple[Any, threading.Lock] | None = getattr(self._local, "connection", None)
        if mine is None:
            with self._guard:
                if self._closed:
                    raise ClickHouseError("store is closed")
                conn = self._connect(uri or self._path)
                for name, value in _CHDB_SETTINGS.items():
                    conn.query(f"SET {name} = {value}", "CSV")
                mine = (conn, threading.Lock())
                self._connections.append(mine)
            self._local.connection = mine
        return mine

    def _run(self, sql: str, fmt: str = "CSV") -> bytes:
        conn, busy = self._connection()
        with busy:
            if self._closed:
                raise ClickHouseError("store is closed")
            try:
                result = conn.query(sql, fmt)
            except Exception as exc:  # chdb raises ChdbError(RuntimeError) for every failure
                _discard_partial_output(conn)
                raise ClickHouseError(str(exc)) from exc
        data: bytes = result.bytes()
        return data

    def migrate(self) -> int:
        from sinks.schema import migrate

        return migrate(self)

    def insert(self, table: str, rows: Sequence[Mapping[str, Any]]) -> int:
        if not rows:
            return 0
        cols = _columns(rows)
        lines = [orjson.dumps({c: _json_value(row[c]) for c in cols}) for row in rows]
        head = f"INSERT INTO {_ident(table)} ({', '.join(_ident(c) for c in cols)}) FORMAT JSONEachRow\n"
        self._run(head + b"\n".join(lines).decode())
        return len(rows)

    def insert_arrow(self, table: str, data: Any, select: Mapping[str, str] | None = None) -> int:
        """Insert a pyarrow Table column-wise (chdb reads it in place: no JSON, no row objects).

        ``select`` maps target columns to SQL expressions over the table's columns (trusted SQL:
        callers render any values with :func:`sql_literal`); by default columns go in by name.
        """
        if data.num_rows == 0:
            return 0
        targets, exprs = _insert_select(data, select)
        arrow_rows = data  # noqa: F841 -- chdb's Python() table function finds it by this name
        self._run(f"INSERT INTO {_ident(table)} ({targets}) SELECT {exprs} FROM Python(arrow_rows)")
        return int(data.num_rows)

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        data = self._run(render_sql(sql, params), "JSONCompactEachRowWithNamesAndTypes")
        if not data:  # DDL, INSERT, SET: nothing comes back
            return []
        lines = data.splitlines()
        names, types = orjson.loads(lines[0]), orjson.loads(lines[1])
        out = []
        for line in lines[2:]:
            values = orjson.loads(line)
            out.append({n: _from_json(v, t) for n, t, v in zip(names, types, values, strict=True)})
        return out

    def close(self) -> None:
        with self._guard:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn, busy in connections:
            with busy:  # a query in flight on another thread finishes first
                conn.close()


def _discard_partial_output(conn: Any) -> None:
    """A query that fails after its output began (``throwIf`` on row 300,000, say) leaves that
    output in its connection, and chdb puts it in front of the next query's answer, which then does
    not parse. One throwaway query takes it."""
    with contextlib.suppress(Exception):
        conn.query("SELECT 1", "CSV")


# --- clickhouse-server via clickhouse-driver --------------------------------------------------------


def _from_driver(value: Any, tz: Any) -> Any:
    if isinstance(value, datetime):
        # The driver turned epoch seconds into naive server-local time; undo that exactly. (In a
        # DST zone the repeated autumn hour is ambiguous, so run servers in UTC.)
        if value.tzinfo is None:
            value = tz.localize(value)
        return int(value.timestamp())
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)  # chdb's JSON gives Decimal as a number
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [_from_driver(v, tz) for v in value]
    return value


class ServerStore:
    backend = "server"

    def __init__(
        self,
        host: str,
        port: int = 9000,
        database: str = "default",
        user: str = "default",
        password: str = "",
        connect_timeout: float = 5,
        send_receive_timeout: float = 300,
    ) -> None:
        from clickhouse_driver import Client

        _ident(database)
        self.host, self.port, self.user, self.database = host, port, user, database
        self._lock = threading.Lock()  # a driver Client is one connection: not thread-safe
        self._db_ready = False
        opts = dict(
            host=host,
            port=port,
            user=user,
            password=password,
            connect_timeout=connect_timeout,
            send_receive_timeout=send_receive_timeout,
        )
        # The database may not exist yet and connecting to a missing one fails, so a "default"-database
        # client creates it on first use. Nothing connects here: open_store never fails on a down server.
        self._admin = Client(**opts)
        self._client = Client(database=database, **opts)

    def _execute(self, sql: str, data: Any = None, **kwargs: Any) -> Any:
        from clickhouse_driver import errors

        with self._lock:
            try:
                if not self._db_ready:
                    self._admin.execute(f"CREATE DATABASE IF NOT EXISTS {_ident(self.database)}")
                    self._admin.disconnect()
                    self._db_ready = True
                return self._client.execute(sql, data, **kwargs)
            except (errors.NetworkError, errors.SocketTimeoutError, OSError, EOFError) as exc:
                self._client.disconnect()  # reconnect cleanly on the next call
                raise ClickHouseUnavailable(str(exc)) from exc
            except (errors.Error, TypeError, ValueError) as exc:  # bad SQL, or data the types reject
                raise ClickHouseError(str(exc)) from exc

    def migrate(self) -> int:
        from sinks.schema import migrate

        return migrate(self)

    def insert(self, table: str, rows: Sequence[Mapping[str, Any]]) -> int:
        if not rows:
            return 0
        cols = _columns(rows)
        data = [tuple(_insert_value(row[c]) for c in cols) for row in rows]
        self._execute(f"INSERT INTO {_ident(table)} ({', '.join(_ident(c) for c in cols)}) VALUES", data)
        return len(rows)

    def insert_arrow(self, table: str, data: Any, select: Mapping[str, str] | None = None) -> int:
        """Insert a pyarrow Table; the driver sends it column-wise (through a scratch table when
        ``select`` computes columns, so the expressions run server-side exactly as on chdb)."""
        if data.num_rows == 0:
            return 0
        cols = ", ".join(_ident(c) for c in data.schema.names)
        columns = [data.column(c).to_pylist() for c in data.schema.names]
        if select is None:
            self._execute(f"INSERT INTO {_ident(table)} ({cols}) VALUES", columns, columnar=True)
            return int(data.num_rows)
        scratch = f"scratch_{uuid4().hex[:12]}"
        ddl = ", ".join(f"{_ident(f.name)} {_arrow_to_ch(f.type)}" for f in data.schema)
        self._execute(f"CREATE TABLE {scratch} ({ddl}) ENGINE = Memory")
        try:
            self._execute(f"INSERT INTO {scratch} ({cols}) VALUES", columns, columnar=True)
            targets, exprs = _insert_select(data, select)
            self._execute(f"INSERT INTO {_ident(table)} ({targets}) SELECT {exprs} FROM {scratch}")
        finally:
            self._execute(f"DROP TABLE IF EXISTS {scratch}")
        return int(data.num_rows)

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        import pytz

        # Our own rendering, not the driver's %(name)s: both back ends must see the same literal SQL.
        rows, columns = self._execute(render_sql(sql, params), with_column_types=True)
        tz = pytz.timezone(self._client.connection.server_info.get_timezone()) if rows else None
        names = [name for name, _type in columns]
        return [{n: _from_driver(v, tz) for n, v in zip(names, row, strict=True)} for row in rows]

    def close(self) -> None:
        with self._lock:
            self._admin.disconnect()
            self._client.disconnect()


# --- factory ----------------------------------------------------------------------------------------


def open_store(url: str | None, data_dir: str | Path) -> ClickHouseStore:
    """Embedded chdb on ``data_dir`` when ``url`` is empty, else a server given as ``clickhouse://...``."""
    if not url:
        return ChdbStore(data_dir)
    parts = urlsplit(url)
    if parts.scheme != "clickhouse":
        raise ValueError(
            f"unsupported ClickHouse URL scheme {parts.scheme!r} in {url!r}: "
            "expected clickhouse://[user[:password]@]host[:port]/database, or no URL for embedded chdb"
        )
    if not parts.hostname:
        raise ValueError(f"ClickHouse URL {url!r} has no host")
    try:
        port = parts.port or 9000
    except ValueError as exc:  # urlsplit raises on a non-numeric or out-of-range port
        raise ValueError(f"ClickHouse URL {url!r} has an invalid port") from exc
    database = unquote(parts.path.lstrip("/")) or "default"
    return ServerStore(
        host=parts.hostname,
        port=port,
        database=database,
        user=unquote(parts.username) if parts.username else "default",
        password=unquote(parts.password) if parts.password else "",
    )
