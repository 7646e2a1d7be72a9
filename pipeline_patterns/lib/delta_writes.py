"""Idempotent Delta Lake writes and abort-free reads over delta-rs (pattern: idempotent writes).

`replace_window` replaces exactly the rows of a day window [start, end) in ONE Delta transaction
(a predicate overwrite), so a write that dies half-way commits nothing and a re-run of the same
window leaves the same rows. dagster-deltalake's IO manager cannot do this for ranges: it builds
its predicate from the first day of a window only (see FACTS.md), hence this small helper.

Reads go through delta-rs's own query engine (`QueryBuilder`), never the pyarrow-dataset bridge
(`to_pyarrow_table`, `to_pandas`), which makes the process abort at exit.
"""

import dataclasses
import hashlib
import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, QueryBuilder, write_deltalake
from deltalake.exceptions import TableNotFoundError

from pipeline_patterns.lib.day_window import DayWindow


@dataclasses.dataclass(frozen=True)
class WriteResult:
    table_uri: str
    version: int
    rows: int


def _check_inside(
    batch: pa.RecordBatch | pa.Table, column: str, window: DayWindow, match: Mapping[str, str], uri: str
) -> None:
    for name, value in match.items():
        if not pc.all(pc.equal(batch[name], value)).as_py() and batch.num_rows:
            raise ValueError(f"refusing to write {uri}: rows with {name} other than {value!r} in a write of {value!r}")
    days = batch[column]
    outside = pc.or_(pc.less(days, window.start.isoformat()), pc.greater_equal(days, window.end.isoformat()))
    if pc.any(pc.fill_null(outside, True)).as_py():
        bad = sorted({d for d in pc.filter(days, pc.fill_null(outside, True)).to_pylist()}, key=str)[:5]
        raise ValueError(
            f"refusing to write {uri}: rows with {column} {bad} fall outside the window {window}; "
            "a window write may only hold rows of its own days"
        )


def replace_window(
    uri: str,
    data: pa.Table | Iterable[pa.Table],
    window: DayWindow,
    *,
    partition_column: str = "day",
    match: Mapping[str, str] | None = None,
    commit_metadata: Mapping[str, str] | None = None,
    storage_options: Mapping[str, str] | None = None,
) -> WriteResult:
    """Replace the rows of `window` (narrowed to rows whose columns equal `match`, which are then
    partition columns too) in the table at `uri` with `data`, in one transaction.

    `data` is a table or an iterable of tables (streamed: a long range is written in bounded
    memory, still as one commit). The table is created, partitioned by `partition_column`, on first
    write. Concurrent writers of the same window serialise through Delta's optimistic concurrency:
    a loser raises CommitFailedError and its retry replaces the winner's rows, never adds to them.
    """
    chunks = iter([data] if isinstance(data, pa.Table) else data)
    first = next(chunks, None)
    if first is None:
        raise ValueError(f"no data (not even an empty table with a schema) to write to {uri}")
    schema = first.schema
    rows = 0

    producer_error: list[BaseException] = []

    def batches() -> Iterable[pa.RecordBatch]:
        nonlocal rows
        try:
            for table in itertools.chain([first], chunks):
                table = table.cast(schema) if table.schema != schema else table
                _check_inside(table, partition_column, window, match or {}, uri)
                rows += table.num_rows
                yield from table.to_batches()
        except BaseException as error:
            producer_error.append(error)
            raise

    try:
        write_deltalake(
            uri,
            pa.RecordBatchReader.from_batches(schema, batches()),
            mode="overwrite",
            partition_by=[partition_column, *(match or {})],
            predicate=window.predicate(partition_column, match),
            commit_properties=CommitProperties(custom_metadata=dict(commit_metadata or {})),
            storage_options=dict(storage_options or {}),
        )
    except Exception as error:
        # delta-rs wraps an error raised while producing the data in a generic DeltaError:
        # surface the original one, which says what went wrong.
        if producer_error:
            raise producer_error[0] from error
        raise
    version = DeltaTable(uri, storage_options=dict(storage_options or {})).version()
    return WriteResult(table_uri=uri, version=version, rows=rows)


def overwrite_table(
    uri: str,
    data: pa.Table,
    *,
    commit_metadata: Mapping[str, str] | None = None,
    storage_options: Mapping[str, str] | None = None,
) -> WriteResult:
    """Replace a whole (unpartitioned) table in one transaction."""
    write_deltalake(
        uri,
        data,
        mode="overwrite",
        schema_mode="overwrite",
        commit_properties=CommitProperties(custom_metadata=dict(commit_metadata or {})),
        storage_options=dict(storage_options or {}),
    )
    version = DeltaTable(uri, storage_options=dict(storage_options or {})).version()
    return WriteResult(table_uri=uri, version=version, rows=data.num_rows)


def read_table(
    uri: str,
    window: DayWindow | None = None,
    *,
    partition_column: str = "day",
    version: int | None = None,
    storage_options: Mapping[str, str] | None = None,
) -> pa.Table:
    """Read a table (or the rows of one window) with delta-rs's own engine, in the table's schema."""
    try:
        table = DeltaTable(uri, version=version, storage_options=dict(storage_options or {}))
    except TableNotFoundError as error:
        raise FileNotFoundError(f"no Delta table at {uri}: materialize its asset first") from error
    sql = "SELECT * FROM t"
    if window is not None:
        sql += f" WHERE {window.predicate(partition_column)}"
    result = pa.table(QueryBuilder().register("t", table).execute(sql))
    # The engine returns string_view and may reorder columns; give back the table's own schema.
    schema = pa.schema(table.schema().to_arrow())
    return result.select(schema.names).cast(schema)


def per_day(
    uri: str, window: DayWindow, aggregate: str = "COUNT(*)", *, storage_options: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """One SQL `aggregate` per day of `window` in the table at `uri` (rows per day by default;
    days without rows are absent); {} when the table does not exist yet. Computed inside
    delta-rs: no row reaches Python."""
    try:
        table = DeltaTable(uri, storage_options=dict(storage_options or {}))
    except TableNotFoundError:
        return {}
    sql = f"SELECT CAST(day AS VARCHAR) AS day, {aggregate} AS v FROM t WHERE {window.predicate('day')} GROUP BY day"
    values = pa.table(QueryBuilder().register("t", table).execute(sql))
    return dict(zip(values["day"].to_pylist(), values["v"].to_pylist(), strict=True))


def content_hash(table: pa.Table, exclude: Iterable[str] = ()) -> str:
    """A hash of a table's logical content: the same multiset of rows and values gives the same
    hash, whatever the row order, chunking or file layout."""
    columns = sorted(c for c in table.column_names if c not in set(exclude))
    frame = table.select(columns).to_pandas()
    row_hashes = np.sort(pd.util.hash_pandas_object(frame, index=False).to_numpy())
    digest = hashlib.sha256(str(table.select(columns).schema).encode())
    digest.update(row_hashes.tobytes())
    return digest.hexdigest()
