"""Idempotent Delta Lake writes (a day window replaced in one transaction: `commit_staged`,
`replace_window`) and abort-free reads over delta-rs. See docs/idempotent_writes.md."""

import dataclasses
import hashlib
import itertools
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, QueryBuilder, Schema, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from deltalake.transaction import AddAction, RemoveAction, create_table_with_add_actions

from pipeline_patterns.lib import object_store
from pipeline_patterns.lib.day_window import DayWindow


@dataclasses.dataclass(frozen=True)
class WriteResult:
    table_uri: str
    version: int
    rows: int


def _check_inside(batch: pa.RecordBatch | pa.Table, column: str, window: DayWindow, uri: str) -> None:
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
    commit_metadata: Mapping[str, str] | None = None,
    storage_options: Mapping[str, str] | None = None,
) -> WriteResult:
    """Replace the rows of `window` in the table at `uri` with `data`, in one transaction.

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
                _check_inside(table, partition_column, window, uri)
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
            partition_by=[partition_column],
            predicate=window.predicate(partition_column),
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


STAGING_PREFIX = "staged-"
"""Folders a writer stages its files in, inside the table's folder: `staged-<write id>/day=.../`."""


class RefusedCommit(ValueError):
    """Staged files that must not be committed (outside the window, wrong schema, rows missing)."""


WRITE_ID_KEY = "pipeline_patterns_write_id"
"""Commit metadata naming the staging folder a commit published: how a writer finds its own
version, and knows after an ambiguous error whether its commit happened."""
_WRITERS_APP_ID = "pipeline_patterns.window_writes"


def commit_staged(
    uri: str,
    staging: str,
    window: DayWindow,
    schema: pa.Schema,
    *,
    partition_column: str = "day",
    rows_per_day: Mapping[str, int] | None = None,
    not_null: Sequence[str] = (),
    commit_metadata: Mapping[str, str] | None = None,
    storage_options: Mapping[str, str] | None = None,
    attempts: int = 5,
) -> WriteResult:
    """Commit the Parquet files under `<uri>/<staging>/<partition_column>=<day>/` (written by
    Spark or anyone) as ONE transaction that replaces exactly `window` of the table, creating the
    table (partitioned by `partition_column`) on first write.

    Checked before committing, since delta-rs checks none of it: the table's schema is `schema`;
    each file sits at `<staging>/<partition_column>=<a day of the window>/`, is a readable
    Parquet file of the listed size whose columns are `schema`'s (the partition column aside)
    with the same types; `not_null` columns hold no null; and the rows per day equal
    `rows_per_day` when given (days absent there must have no file). A refusal deletes the
    staged files and raises `RefusedCommit`.

    Concurrent writers: every commit also records an app transaction under one app id, so a
    commit built on a snapshot that another commit has since superseded fails (delta-rs would
    otherwise accept two writers adding to the same empty days: duplicates) and is rebuilt on the
    new snapshot, which it then replaces: overlapping windows end as one copy.
    """
    options = dict(storage_options or {})
    delta_schema = Schema.from_arrow(schema)
    try:
        adds, rows = check_staged(
            uri,
            staging,
            window,
            schema,
            partition_column=partition_column,
            rows_per_day=rows_per_day,
            not_null=not_null,
            storage_options=options,
        )
    except RefusedCommit:
        filesystem, root = object_store.filesystem(uri, options)
        filesystem.delete_dir_contents(f"{root}/{staging}", missing_dir_ok=True)
        filesystem.delete_dir(f"{root}/{staging}")
        raise
    metadata = {**(commit_metadata or {}), WRITE_ID_KEY: staging}
    for attempt in range(attempts):
        try:
            table = DeltaTable(uri, storage_options=options)
        except TableNotFoundError:
            table = None
        properties = CommitProperties(
            custom_metadata=metadata,
            app_transactions=[Transaction(app_id=_WRITERS_APP_ID, version=(table.version() if table else -1) + 1)],
        )
        try:
            if table is None:
                create_table_with_add_actions(
                    uri,
                    delta_schema,
                    adds,
                    mode="error",
                    partition_by=[partition_column],
                    storage_options=options,
                    commit_properties=properties,
                )
            else:
                actions: list[AddAction | RemoveAction] = list(adds)
                table.create_write_transaction(
                    actions,
                    mode="overwrite",
                    schema=delta_schema,
                    partition_by=[partition_column],
                    partition_filters=[
                        (partition_column, ">=", window.start.isoformat()),
                        (partition_column, "<", window.end.isoformat()),
                    ],
                    commit_properties=properties,
                )
        except Exception as error:
            # a lost race (a concurrent commit, or another writer created the table first) is
            # retried on the new snapshot; an error after which our commit exists is success
            if _version_of(uri, options, staging) is not None:
                break
            lost_race = isinstance(error, CommitFailedError) or (table is None and _exists(uri, options))
            if not lost_race or attempt == attempts - 1:
                raise
            continue
        break
    version = _version_of(uri, options, staging)
    if version is None:
        raise RuntimeError(f"committed {staging} to {uri} but no version records it: inspect DeltaTable.history()")
    return WriteResult(table_uri=uri, version=version, rows=sum(rows.values()))


def check_staged(
    uri: str,
    staging: str,
    window: DayWindow,
    schema: pa.Schema,
    *,
    partition_column: str = "day",
    rows_per_day: Mapping[str, int] | None = None,
    not_null: Sequence[str] = (),
    storage_options: Mapping[str, str] | None = None,
) -> tuple[list[AddAction], dict[str, int]]:
    """What `commit_staged` checks before it commits, without committing or deleting anything:
    the add actions of the staged files and their rows per day, or `RefusedCommit` saying why not."""
    filesystem, root = object_store.filesystem(uri, storage_options)
    _check_table_schema(uri, dict(storage_options or {}), Schema.from_arrow(schema), partition_column)
    adds, rows = _staged_actions(filesystem, root, staging, window, schema, partition_column, not_null)
    if rows_per_day is not None:
        expected = {d: n for d, n in rows_per_day.items() if n}
        if rows != expected:
            wrong = sorted(d for d in set(rows) | set(expected) if rows.get(d, 0) != expected.get(d, 0))
            raise RefusedCommit(
                f"refusing to commit {uri} {window}: staged rows differ from the rows computed on "
                + ", ".join(f"{d} ({rows.get(d, 0)} staged, {expected.get(d, 0)} expected)" for d in wrong[:5])
            )
    return adds, rows


def committed_version(uri: str, staging: str, *, storage_options: Mapping[str, str] | None = None) -> int | None:
    """The version whose commit published the staged folder `staging`, if any."""
    return _version_of(uri, dict(storage_options or {}), staging)


def _exists(uri: str, options: dict[str, str]) -> bool:
    return table_version(uri, storage_options=options) is not None


def _version_of(uri: str, options: dict[str, str], staging: str) -> int | None:
    """The version whose commit published `staging`, if any (searched among the latest commits)."""
    try:
        history = DeltaTable(uri, storage_options=options).history(50)
    except TableNotFoundError:
        return None
    return next((int(h["version"]) for h in history if h.get(WRITE_ID_KEY) == staging), None)


def _check_table_schema(uri: str, options: dict[str, str], schema: Schema, partition_column: str) -> None:
    """An existing table must already have `schema`: an overwrite commit with another schema
    would silently rewrite the whole table's schema while its other days keep the old files."""
    try:
        table = DeltaTable(uri, storage_options=options)
    except TableNotFoundError:
        return
    if table.schema().to_json() != schema.to_json() or table.metadata().partition_columns != [partition_column]:
        raise RefusedCommit(
            f"refusing to commit to {uri}: the table's schema {table.schema().to_json()} (partitioned by "
            f"{table.metadata().partition_columns}) is not the writer's {schema.to_json()} (by {partition_column}); "
            "rebuild the table (delete its folder and backfill) or migrate it before writing with the new schema"
        )


def _staged_actions(
    filesystem: pafs.FileSystem,
    root: str,
    staging: str,
    window: DayWindow,
    schema: pa.Schema,
    partition_column: str,
    not_null: Sequence[str],
) -> tuple[list[AddAction], dict[str, int]]:
    data_fields = [f for f in schema if f.name != partition_column]
    expected_types = [(f.name, f.type) for f in data_fields]
    window_days = {d.isoformat() for d in window.days}
    listed = filesystem.get_file_info(pafs.FileSelector(f"{root}/{staging}", recursive=True, allow_not_found=True))
    adds: list[AddAction] = []
    rows: dict[str, int] = {}
    for info in sorted(listed, key=lambda i: i.path):
        relative = info.path[len(root) + 1 :]
        parts = relative.split("/")
        if info.type != pafs.FileType.File or any(p.startswith(("_", ".")) for p in parts):
            continue  # folders; Spark's _SUCCESS and _temporary (unfinished task attempts), hidden files
        if len(parts) != 3 or not parts[1].startswith(f"{partition_column}=") or not parts[2].endswith(".parquet"):
            raise RefusedCommit(
                f"refusing to commit {relative}: not a {staging}/{partition_column}=<day>/*.parquet file"
            )
        day = parts[1].split("=", 1)[1]
        if day not in window_days:
            raise RefusedCommit(f"refusing to commit {relative}: its {partition_column} {day!r} is outside {window}")
        with filesystem.open_input_file(info.path) as handle:  # a truncated file has no footer: refused
            try:
                metadata = pq.ParquetFile(handle).metadata
            except (OSError, pa.ArrowInvalid) as error:
                raise RefusedCommit(f"refusing to commit {relative}: not a readable Parquet file ({error})") from error
            found = [(f.name, f.type) for f in metadata.schema.to_arrow_schema()]
        if found != expected_types:
            raise RefusedCommit(
                f"refusing to commit {relative}: its columns {found} are not the table's {expected_types}"
            )
        stats = _stats(metadata, data_fields)
        nulls = [c for c in not_null if stats["nullCount"].get(c, 1)]  # an unknown count is not a zero
        if nulls:
            raise RefusedCommit(
                f"refusing to commit {relative}: nulls (or no null count) in the required columns {nulls}"
            )
        rows[day] = rows.get(day, 0) + metadata.num_rows
        adds.append(
            AddAction(
                relative,
                info.size,
                {partition_column: day},
                int(info.mtime_ns // 1_000_000) if info.mtime_ns else int(time.time() * 1000),
                True,
                json.dumps(stats),
            )
        )
    return adds, rows


def _stats(metadata: pq.FileMetaData, fields: list[pa.Field]) -> dict[str, Any]:
    """Delta file statistics from a Parquet footer: row count, null counts, and min/max of the
    numeric and short string columns (what readers use to skip files; delta-rs accepts a commit
    without stats, but then loses file pruning and `DeltaTable.count()`)."""
    nulls: dict[str, int] = {}
    minimum: dict[str, Any] = {}
    maximum: dict[str, Any] = {}
    for index, field in enumerate(fields):
        column_stats = [metadata.row_group(g).column(index).statistics for g in range(metadata.num_row_groups)]
        # no statistics, or none for nulls (Parquet writers drop them for huge values): unknown,
        # which a required column's check then refuses rather than reads as zero
        if any(s is None or not s.has_null_count for s in column_stats):
            continue
        nulls[field.name] = sum(s.null_count for s in column_stats)
        bounded = [s for s in column_stats if s.has_min_max]
        if not bounded or not (
            pa.types.is_integer(field.type) or pa.types.is_floating(field.type) or pa.types.is_string(field.type)
        ):
            continue
        low, high = min(s.min for s in bounded), max(s.max for s in bounded)
        if isinstance(low, float) and not (math.isfinite(low) and math.isfinite(high)):
            continue
        if isinstance(low, str) and max(len(low), len(high)) > 32:
            continue  # Delta truncates long strings; rather no bound than a wrong one
        minimum[field.name], maximum[field.name] = low, high
    return {"numRecords": metadata.num_rows, "minValues": minimum, "maxValues": maximum, "nullCount": nulls}


def table_files(
    uri: str,
    window: DayWindow | None = None,
    *,
    partition_column: str = "day",
    version: int | None = None,
    storage_options: Mapping[str, str] | None = None,
) -> list[str]:
    """The Parquet files of the table's snapshot (at `version`, else the latest), narrowed to
    `window`: exactly the table's rows, for an engine that reads Parquet (Spark). [] while the
    table does not exist."""
    try:
        table = DeltaTable(uri, version=version, storage_options=dict(storage_options or {}))
    except TableNotFoundError:
        return []
    if window is None:
        return table.file_uris()
    return table.file_uris(file_pruning_predicate=window.predicate(partition_column))


def vacuum_orphans(
    uri: str, retention_hours: int = 168, *, dry_run: bool = True, storage_options: Mapping[str, str] | None = None
) -> list[str]:
    """Files in the table's folder older than `retention_hours` that no kept version references:
    old versions' files AND the staged files of writers killed before their commit (a default
    vacuum keeps those forever). Deleted unless `dry_run`. Keep the retention above the longest
    run, so a running writer's staged files are never taken."""
    table = DeltaTable(uri, storage_options=dict(storage_options or {}))
    return table.vacuum(retention_hours=retention_hours, dry_run=dry_run, enforce_retention_duration=False, full=True)


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


def table_version(uri: str, *, storage_options: Mapping[str, str] | None = None) -> int | None:
    try:
        return DeltaTable(uri, storage_options=dict(storage_options or {})).version()
    except TableNotFoundError:
        return None


def per_day(
    uri: str,
    window: DayWindow,
    aggregate: str = "COUNT(*)",
    *,
    version: int | None = None,
    storage_options: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One SQL `aggregate` per day of `window` in the table at `uri` (at `version`; rows per day
    by default; days without rows are absent); {} when the table does not exist yet. Computed
    inside delta-rs: no row reaches Python."""
    try:
        table = DeltaTable(uri, version=version, storage_options=dict(storage_options or {}))
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
