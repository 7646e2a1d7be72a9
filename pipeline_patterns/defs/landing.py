"""The landing zone as Dagster resources: files exactly as the source delivered them (pattern: an
immutable raw layer; the layout itself is `lib/landing.py`'s)."""

import datetime as dt

import dagster as dg
import pyarrow as pa
import pyarrow.csv as pacsv
from dagster_deltalake import LocalConfig
from pydantic import Field

from pipeline_patterns.defs.lake import StorageConfig, storage_options
from pipeline_patterns.defs.partitions import region_key
from pipeline_patterns.lib import landing
from pipeline_patterns.lib.day_window import DayWindow
from pipeline_patterns.lib.simulated_feed import RECORD_FIELDS


class LandingZone(dg.ConfigurableIOManager):
    """Where extracted files land, exactly as received: <root>/<region>/<day>/<run id>/. As the raw
    assets' IO manager it loads a region-day's landed files as one Arrow table of text columns (so
    `defs.load_asset_value(raw_orders/<region>, partition_key=...)` works); the raw assets write
    their files themselves and return no value."""

    root: str = Field(description="Root of the landing zone: a local folder, or s3://bucket/prefix with `storage`.")
    storage: StorageConfig = Field(
        default_factory=LocalConfig,
        discriminator="provider",
        description="Object-store settings, as the lake's (dagster-deltalake's config classes).",
    )

    def options(self) -> dict[str, str]:
        return storage_options(self.storage)

    def land(self, region: str, day: dt.date, run_id: str, files: dict[str, bytes]) -> landing.Manifest:
        """Land one extraction; a delivery it cannot store fails the step at once, saying why and what to do."""
        try:
            return landing.land(self.root, region, day, run_id, files, self.options())
        except landing.LandingRefusedError as error:
            raise dg.Failure(description=f"raw_orders/{region_key(region)}: {error}", allow_retries=False) from None

    def landed_by(self, region: str, day: dt.date) -> str | None:
        """The run id of the region-day's current extraction, if any (none for a corrupt or linked
        manifest: landing the day again replaces it)."""
        try:
            manifest = landing.read_manifest(self.root, region, day, self.options())
        except landing.CorruptManifestError:
            return None
        return manifest.run_id if manifest else None

    def inspect(self, region: str, days: list[dt.date]) -> list[landing.LandedDay]:
        """Each day's landed files: read, drifted from the expected header, or refused."""
        return landing.inspect_days(self.root, region, days, list(RECORD_FIELDS), self.options())

    def handle_output(self, context: dg.OutputContext, obj: None) -> None:
        if obj is not None:
            raise TypeError(f"{context.asset_key.to_user_string()} lands files itself and returns no value")

    def load_input(self, context: dg.InputContext) -> pa.Table:
        if not context.has_asset_partitions:
            raise ValueError(f"{context.asset_key.to_user_string()} is daily-partitioned: pass a partition key")
        region = context.asset_key.path[-1].replace("_", "-")
        window = context.asset_partitions_time_window
        days = DayWindow.of(window).days
        store = self.options()
        options = pacsv.ConvertOptions(column_types={name: pa.string() for name in RECORD_FIELDS})
        tables = []
        for landed in landing.readable_days(self.root, region, days, store):
            for file in landed.files:  # each as inspected: a link swapped in meanwhile is never read
                with landing.open_read(file, landed.identities.get(file, ""), store) as handle:
                    tables.append(pacsv.read_csv(handle, convert_options=options))
        return pa.concat_tables(tables)
