"""Spark <-> Delta without a Delta JAR: Spark's executors write the Parquet files, the driver commits
them with delta-rs; Spark reads a table from its snapshot's file list. See docs/idempotent_writes.md."""

import uuid
from collections.abc import Iterator, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from pipeline_patterns.lib import object_store
from pipeline_patterns.lib.day_window import DayWindow
from pipeline_patterns.lib.delta_writes import STAGING_PREFIX, WriteResult, commit_staged, table_files


def spark_settings() -> dict[str, str]:
    """What a session needs for the write and read paths below."""
    return {
        # INT96, Spark's default, carries no min/max statistics and is not Delta's timestamp type
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    }


def write_window(
    frame: DataFrame,
    uri: str,
    window: DayWindow,
    schema: pa.Schema,
    *,
    partition_column: str = "day",
    rows_per_day: Mapping[str, int] | None = None,
    not_null: Sequence[str] = (),
    commit_metadata: Mapping[str, str] | None = None,
    storage_options: Mapping[str, str] | None = None,
    clustered: bool = False,
) -> WriteResult:
    """Replace exactly `window` of the Delta table at `uri` with `frame`'s rows (columns as
    `schema`), in one transaction: the executors write, this process commits (`commit_staged`,
    which checks the files first). One file per day: the rows of a day are brought to one task,
    unless `clustered` says they already are (`frame.repartition(partition_column)` upstream).
    `rows_per_day` all zero: the window is emptied without computing `frame` (no Spark job)."""
    if rows_per_day is not None and not any(rows_per_day.values()):
        staging = f"{STAGING_PREFIX}{uuid.uuid4().hex}"  # no file: the commit removes the window's files
    else:
        staging = stage_window(
            frame, uri, schema, partition_column=partition_column, clustered=clustered, storage_options=storage_options
        )
    return commit_staged(
        uri,
        staging,
        window,
        schema,
        partition_column=partition_column,
        rows_per_day=rows_per_day,
        not_null=not_null,
        commit_metadata=commit_metadata,
        storage_options=storage_options,
    )


def stage_window(
    frame: DataFrame,
    uri: str,
    schema: pa.Schema,
    *,
    partition_column: str = "day",
    clustered: bool = False,
    prefix: str = STAGING_PREFIX,
    storage_options: Mapping[str, str] | None = None,
) -> str:
    """The executors write `frame`'s rows (columns as `schema`), one file per day, into a new
    staging folder inside the table's folder, invisible to readers until committed; returns the
    folder's name (relative to the table)."""
    typed = cast_to(frame, schema)
    staging = f"{prefix}{uuid.uuid4().hex}"
    rows = typed if clustered else typed.repartition(partition_column)
    if object_store.is_local(uri):
        rows.write.partitionBy(partition_column).parquet(f"{uri.rstrip('/')}/{staging}", compression="snappy")
    else:  # no S3 connector in the wheel: the executors write the same files with pyarrow
        folder = f"{uri.rstrip('/')}/{staging}"
        options = dict(storage_options or {})
        data_schema = pa.schema([f for f in schema if f.name != partition_column])
        written = rows.mapInArrow(
            lambda batches: _write_parquet(batches, folder, partition_column, data_schema, options), "file string"
        ).collect()
        # a task attempt that failed may have left files behind: only the successful attempts' count
        kept = {row["file"] for row in written}
        filesystem, root = object_store.filesystem(folder, options)
        for info in filesystem.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
            if info.type == pafs.FileType.File and info.path not in kept:
                filesystem.delete_file(info.path)
    return staging


def cast_to(frame: DataFrame, schema: pa.Schema) -> DataFrame:
    """`frame`'s columns of `schema`, in its order, cast where their type differs. Built as SQL
    text where nothing changes: each Column built through py4j costs round trips to the JVM, and
    a run builds thousands."""
    current = {f.name: f.dataType for f in frame.schema.fields}
    wanted = from_arrow_schema(schema).fields
    differing = {f.name: F.col(f.name).cast(f.dataType) for f in wanted if current.get(f.name) != f.dataType}
    return (frame.withColumns(differing) if differing else frame).selectExpr(*[f"`{f.name}`" for f in wanted])


def _write_parquet(
    batches: Iterator[pa.RecordBatch], folder: str, partition_column: str, schema: pa.Schema, options: dict
) -> Iterator:
    """On an executor: this task's rows into one Parquet file per day under `folder`
    (`<partition_column>=<day>/part-<uuid>.snappy.parquet`), streaming batch by batch."""
    filesystem, root = object_store.filesystem(folder, options)
    writers: dict[str, pq.ParquetWriter] = {}
    try:
        for batch in batches:
            for day in pc.unique(batch[partition_column]).to_pylist():
                day_rows = pa.Table.from_batches([batch]).filter(pc.equal(batch[partition_column], day))
                rows = day_rows.drop_columns([partition_column]).cast(schema)
                if day not in writers:
                    path = f"{root}/{partition_column}={day}/part-{uuid.uuid4().hex}.snappy.parquet"
                    writers[day] = pq.ParquetWriter(path, schema, filesystem=filesystem, compression="snappy")
                writers[day].write_table(rows)
    finally:
        for writer in writers.values():
            writer.close()
    yield pa.RecordBatch.from_pydict({"file": [writer.where for writer in writers.values()]})


def read_files(
    spark: SparkSession,
    files: Sequence[str],
    schema: pa.Schema,
    partition_column: str = "day",
    storage_options: Mapping[str, str] | None = None,
) -> DataFrame:
    """Exactly these Parquet files (of one table: `<...>/<partition_column>=<day>/<file>`) as a
    DataFrame with `schema`, the day taken from each file's folder."""
    if not files:
        return spark.createDataFrame([], from_arrow_schema(schema))
    data_schema = pa.schema([f for f in schema if f.name != partition_column])
    if not all(object_store.is_local(f) for f in files):  # the executors read them with pyarrow
        options = dict(storage_options or {})
        listed = spark.createDataFrame([(f,) for f in files], "file string").repartition(min(len(files), 64))
        frame = listed.mapInArrow(
            lambda batches: _read_parquet(batches, data_schema, partition_column, options),
            from_arrow_schema(pa.schema([*data_schema, pa.field(partition_column, pa.string())])),
        )
        return frame.select(schema.names)
    frame = (
        spark.read.schema(from_arrow_schema(data_schema))
        .parquet(*files)
        .withColumn(
            partition_column, F.regexp_extract(F.col("_metadata.file_path"), f"/{partition_column}=([^/]+)/", 1)
        )
    )
    return frame.select(schema.names)


def _read_parquet(
    batches: Iterator[pa.RecordBatch], schema: pa.Schema, partition_column: str, options: dict
) -> Iterator:
    """On an executor: the rows of the listed Parquet files, batch by batch, with their day."""
    for listing in batches:
        for file in listing["file"].to_pylist():
            filesystem, path = object_store.filesystem(file, options)
            day = file.split(f"/{partition_column}=", 1)[1].split("/", 1)[0]
            with filesystem.open_input_file(path) as handle:
                for batch in pq.ParquetFile(handle).iter_batches(columns=schema.names):
                    typed = pa.Table.from_batches([batch]).cast(schema)
                    yield from typed.append_column(
                        partition_column, pa.repeat(pa.scalar(day), typed.num_rows)
                    ).to_batches()


def read_window(
    spark: SparkSession,
    uri: str,
    schema: pa.Schema,
    window: DayWindow | None = None,
    *,
    partition_column: str = "day",
    version: int | None = None,
    storage_options: Mapping[str, str] | None = None,
) -> DataFrame:
    """The table's rows (of `window`; at `version`) as a DataFrame, read by Spark from exactly
    the files of the snapshot. Empty, with `schema`, while the table or the window has none."""
    files = table_files(
        uri, window, partition_column=partition_column, version=version, storage_options=storage_options
    )
    return read_files(spark, files, schema, partition_column, storage_options)
