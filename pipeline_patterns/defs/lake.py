"""Storage: the landing zone for files as received, and the Delta lake IO manager (pattern:
idempotent writes, readable partitions).

`DeltaLakeIOManager` stores each asset as one Delta table under `lake_uri/<asset key path>` and
replaces exactly the day window a run materializes (one partition or a whole backfill range) in
one transaction whose commit metadata carries the Dagster run id. It replaces dagster-deltalake's
IO manager, which writes and reads only the first day of a window, can overwrite a whole table
after a swallowed error, and reads through the pyarrow-dataset bridge that aborts processes at
exit (FACTS.md). `lake_uri` may be object storage (s3://...), with delta-rs `storage_options`.
"""

import datetime as dt
import pathlib

import dagster as dg
import pyarrow as pa
import pyarrow.csv as pacsv

from pipeline_patterns.lib import landing
from pipeline_patterns.lib.delta_writes import DayWindow, WriteResult, overwrite_table, read_table, replace_window
from pipeline_patterns.lib.simulated_feed import RECORD_FIELDS


def _window(context: dg.InputContext | dg.OutputContext) -> DayWindow | None:
    if not context.has_asset_partitions:
        return None
    window = context.asset_partitions_time_window
    return DayWindow(window.start.date(), window.end.date())


class DeltaLakeIOManager(dg.ConfigurableIOManager):
    """Arrow tables <-> Delta tables, one per asset, partitioned by day. A materialization
    replaces exactly its day window in one Delta transaction; re-running it leaves the same rows."""

    lake_uri: str
    storage_options: dict[str, str] = {}

    def table_uri(self, asset_key: dg.AssetKey) -> str:
        return "/".join([self.lake_uri.rstrip("/"), *asset_key.path])

    def _partition_column(self, context: dg.OutputContext | dg.InputContext) -> str:
        metadata = context.definition_metadata if isinstance(context, dg.OutputContext) else (
            context.upstream_output.definition_metadata if context.upstream_output else {}
        )
        return (metadata or {}).get("partition_column", "day")

    def handle_output(self, context: dg.OutputContext, obj: pa.Table | None) -> None:
        if obj is None:
            return
        uri = self.table_uri(context.asset_key)
        window = _window(context)
        commit = {
            "dagster_run_id": context.run_id,
            "dagster_asset_key": context.asset_key.to_user_string(),
            "dagster_partitions": str(window) if window else "",
        }
        options = self.storage_options
        if window is None:
            result = overwrite_table(uri, obj, commit_metadata=commit, storage_options=options)
        else:
            result = replace_window(
                uri,
                obj,
                window,
                partition_column=self._partition_column(context),
                commit_metadata=commit,
                storage_options=options,
            )
        context.add_output_metadata(
            {
                "dagster/row_count": result.rows,
                "delta_version": result.version,
                "table_uri": dg.MetadataValue.path(uri),
            }
        )

    def load_input(self, context: dg.InputContext) -> pa.Table:
        return read_table(
            self.table_uri(context.asset_key),
            _window(context),
            partition_column=self._partition_column(context),
            storage_options=self.storage_options,
        )


class LandingZone(dg.ConfigurableResource):
    """Where extracted files land, exactly as received: <root>/<region>/<day>/<run id>/."""

    root: str

    def land(self, region: str, day: dt.date, run_id: str, files: dict[str, bytes]) -> landing.Manifest:
        return landing.land(pathlib.Path(self.root), region, day, run_id, files)

    def landed_by(self, region: str, day: dt.date) -> str | None:
        """The run id of the region-day's current extraction, if any."""
        manifest = landing.read_manifest(pathlib.Path(self.root), region, day)
        return manifest.run_id if manifest else None

    def files(self, region: str, days: list[dt.date]) -> list[str]:
        return landing.landed_files(pathlib.Path(self.root), region, days)


class LandingIOManager(dg.ConfigurableIOManager):
    """Loads a region-day's landed files as one Arrow table of text columns, as received (so
    `defs.load_asset_value(raw_orders/<region>, partition_key=...)` works). The raw assets write
    their files themselves and return no value."""

    root: str

    def handle_output(self, context: dg.OutputContext, obj: None) -> None:
        if obj is not None:
            raise TypeError(f"{context.asset_key.to_user_string()} lands files itself and returns no value")

    def load_input(self, context: dg.InputContext) -> pa.Table:
        region = context.asset_key.path[-1].replace("_", "-")
        window = _window(context)
        if window is None:
            raise ValueError(f"{context.asset_key.to_user_string()} is daily-partitioned: pass a partition key")
        files = landing.landed_files(pathlib.Path(self.root), region, window.days)
        options = pacsv.ConvertOptions(column_types={name: pa.string() for name in RECORD_FIELDS})
        return pa.concat_tables([pacsv.read_csv(f, convert_options=options) for f in files])


class QuarantineTable(dg.ConfigurableResource):
    """The Delta table `quarantined_orders`: the rows of region-days that failed a blocking gate,
    with the failed checks, the reason, the run and the time. Partitioned by day and region; a
    regional run replaces exactly its region's days, so a fixed day's quarantine rows go away."""

    table_uri: str
    storage_options: dict[str, str] = {}

    def replace(self, region: str, window: DayWindow, rows: pa.Table, run_id: str) -> WriteResult:
        return replace_window(
            self.table_uri,
            rows,
            window,
            match={"region": region},
            commit_metadata={"dagster_run_id": run_id, "dagster_partitions": str(window), "region": region},
            storage_options=self.storage_options,
        )

    def read(self, window: DayWindow | None = None) -> pa.Table:
        return read_table(self.table_uri, window, storage_options=self.storage_options)
