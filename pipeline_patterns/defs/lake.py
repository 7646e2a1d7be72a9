"""The Delta lake: the `lake` resource and IO manager (one table per asset; a day window replaced in
one transaction carrying the run id). See docs/idempotent_writes.md."""

from typing import Any

import dagster as dg
import pyarrow as pa
from dagster_deltalake import AzureConfig, GcsConfig, LocalConfig, S3Config
from pydantic import Field
from pyspark.sql import DataFrame, SparkSession

from pipeline_patterns.lib.day_window import DayWindow
from pipeline_patterns.lib.delta_writes import (
    WriteResult,
    overwrite_table,
    per_day,
    read_table,
    replace_window,
    table_version,
)
from pipeline_patterns.lib.spark_tables import read_window, write_window

StorageConfig = LocalConfig | S3Config | AzureConfig | GcsConfig


def storage_options(storage: StorageConfig) -> dict[str, str]:
    """delta-rs storage options of a storage config (as dagster-deltalake's str_dict(), without
    its pydantic-v1 call), also used for the landing zone's pyarrow filesystem. On S3, concurrent
    writers are made safe by conditional put (`If-None-Match`; S3, MinIO and moto honour it)
    unless a locking or rename setting is given, and a plain-http endpoint (a local
    S3-compatible server) is allowed."""
    options = {k: str(v) for k, v in storage.model_dump().items() if v is not None and k != "provider"}
    if isinstance(storage, S3Config):
        if not {"copy_if_not_exists", "allow_unsafe_rename"} & set(options):
            options.setdefault("conditional_put", "etag")
        if options.get("endpoint", "").startswith("http://"):
            options.setdefault("allow_http", "true")
    return options


class Lake(dg.ConfigurableIOManager):
    """Where the Delta tables live: `<uri>/<asset key path>`, one table per asset. The assets write
    ranges through its methods; as an IO manager it moves Arrow tables: a partitioned output
    replaces exactly its window, an unpartitioned one its table, an input reads exactly its window."""

    uri: str = Field(description="Root of the lake: a local path, or s3://, az://, gs:// with `storage`.")
    storage: StorageConfig = Field(
        default_factory=LocalConfig,
        discriminator="provider",
        description="Object-store settings (dagster-deltalake's config classes), passed to delta-rs.",
    )

    def table_uri(self, key: dg.AssetKey) -> str:
        return "/".join([self.uri.rstrip("/"), *key.path])

    def options(self) -> dict[str, str]:
        return storage_options(self.storage)

    def read(self, key: dg.AssetKey, window: DayWindow | None = None, partition_column: str = "day") -> pa.Table:
        return read_table(
            self.table_uri(key), window, partition_column=partition_column, storage_options=self.options()
        )

    def per_day(
        self, key: dg.AssetKey, window: DayWindow, aggregate: str = "COUNT(*)", version: int | None = None
    ) -> dict[str, Any]:
        """An SQL aggregate per day of the window (rows per day by default; days without rows
        absent); {} while the table does not exist."""
        return per_day(self.table_uri(key), window, aggregate, version=version, storage_options=self.options())

    def version(self, key: dg.AssetKey) -> int | None:
        """The table's current version (None while it does not exist): pin it to read one snapshot."""
        return table_version(self.table_uri(key), storage_options=self.options())

    def frame(
        self, spark: SparkSession, key: dg.AssetKey, schema: pa.Schema, window: DayWindow, version: int | None = None
    ) -> DataFrame:
        """The rows of `window` (at `version`) as a Spark DataFrame, read from the snapshot's files."""
        return read_window(spark, self.table_uri(key), schema, window, version=version, storage_options=self.options())

    def write(
        self,
        key: dg.AssetKey,
        frame: DataFrame,
        window: DayWindow,
        run_id: str,
        schema: pa.Schema,
        *,
        rows_per_day: dict[str, int] | None = None,
        not_null: tuple[str, ...] = (),
        clustered: bool = False,
    ) -> WriteResult:
        """Replace exactly `window` of the asset's table with `frame`'s rows in one transaction
        carrying the run id: Spark's executors write the files, this process checks and commits
        them (lib/spark_tables.py)."""
        return write_window(
            frame,
            self.table_uri(key),
            window,
            schema,
            rows_per_day=rows_per_day,
            not_null=not_null,
            clustered=clustered,
            commit_metadata=commit_metadata(key, run_id, str(window)),
            storage_options=self.options(),
        )

    def replace(
        self, key: dg.AssetKey, data, window: DayWindow, run_id: str, partition_column: str = "day"
    ) -> WriteResult:
        """Replace exactly `window` of the asset's table with `data` (a table or an iterable of
        tables), in one transaction carrying the run id."""
        return replace_window(
            self.table_uri(key),
            data,
            window,
            partition_column=partition_column,
            commit_metadata=commit_metadata(key, run_id, str(window)),
            storage_options=self.options(),
        )

    def _partition_column(self, context: dg.OutputContext | dg.InputContext) -> str:
        metadata = (
            context.definition_metadata
            if isinstance(context, dg.OutputContext)
            else (context.upstream_output.definition_metadata if context.upstream_output else {})
        )
        return (metadata or {}).get("partition_column", "day")

    def handle_output(self, context: dg.OutputContext, obj: pa.Table | None) -> None:
        if obj is None:
            return
        window = _window(context)
        if window is None:
            uri = self.table_uri(context.asset_key)
            commit = commit_metadata(context.asset_key, context.run_id, "")
            result = overwrite_table(uri, obj, commit_metadata=commit, storage_options=self.options())
        else:
            result = self.replace(
                context.asset_key, obj, window, context.run_id, partition_column=self._partition_column(context)
            )
        context.add_output_metadata(
            {
                "dagster/row_count": result.rows,
                "delta_version": result.version,
                "table_uri": dg.MetadataValue.path(result.table_uri),
            }
        )

    def load_input(self, context: dg.InputContext) -> pa.Table:
        return self.read(context.asset_key, _window(context), partition_column=self._partition_column(context))


def commit_metadata(key: dg.AssetKey, run_id: str, partitions: str) -> dict[str, str]:
    return {"dagster_run_id": run_id, "dagster_asset_key": key.to_user_string(), "dagster_partitions": partitions}


def _window(context: dg.InputContext | dg.OutputContext) -> DayWindow | None:
    if not context.has_asset_partitions:
        return None
    window = context.asset_partitions_time_window
    return DayWindow.of(window)
