"""Spark <-> Delta without a Delta JAR: Spark's executors write the Parquet files, this process
commits them with delta-rs; Spark reads a table from its snapshot's file list (pattern: a data
path that never holds a range in one process).

No Delta connector can be downloaded here (no JARs at run time), and delta-rs owns the log. So a
window write is: the executors write the window's rows, one folder per day, into a staging folder
of their own inside the table's folder (invisible to readers until committed); then
`delta_writes.commit_staged` checks those files and commits them as ONE transaction that replaces
the window. The rows never pass through the driver. A read is the Parquet files the snapshot
lists, never the table's folder (which also holds old versions' and uncommitted files).
The session needs `spark_settings()` (micro-second timestamps, which carry min/max statistics).
"""

import uuid
from collections.abc import Mapping, Sequence

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

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
    unless `clustered` says they already are (`frame.repartition(partition_column)` upstream)."""
    staging = stage_window(frame, uri, schema, partition_column=partition_column, clustered=clustered)
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
) -> str:
    """The executors write `frame`'s rows (columns as `schema`), one file per day, into a new
    staging folder inside the table's folder, invisible to readers until committed; returns the
    folder's name (relative to the table)."""
    typed = frame.select(
        [
            F.col(f.name).cast(spark_field.dataType)
            for f, spark_field in zip(schema, from_arrow_schema(schema), strict=True)
        ]
    )
    staging = f"{prefix}{uuid.uuid4().hex}"
    (
        (typed if clustered else typed.repartition(partition_column))
        .write.partitionBy(partition_column)
        .parquet(f"{uri.rstrip('/')}/{staging}", compression="snappy")
    )
    return staging


def read_files(
    spark: SparkSession, files: Sequence[str], schema: pa.Schema, partition_column: str = "day"
) -> DataFrame:
    """Exactly these Parquet files (of one table: `<...>/<partition_column>=<day>/<file>`) as a
    DataFrame with `schema`, the day taken from each file's folder."""
    if not files:
        return spark.createDataFrame([], from_arrow_schema(schema))
    data_schema = from_arrow_schema(pa.schema([f for f in schema if f.name != partition_column]))
    frame = (
        spark.read.schema(data_schema)
        .parquet(*files)
        .withColumn(
            partition_column, F.regexp_extract(F.col("_metadata.file_path"), f"/{partition_column}=([^/]+)/", 1)
        )
    )
    return frame.select(schema.names)


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
    return read_files(spark, files, schema, partition_column)
