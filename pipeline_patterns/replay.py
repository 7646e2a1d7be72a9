"""Proof of idempotency: `verify_range` replays a day range from the live landing zone into a scratch
lake and compares every table with the live ones by content hash. See docs/idempotent_writes.md."""

import dataclasses
import datetime as dt
import os
import pathlib
import tempfile
from collections.abc import Mapping, Sequence

import dagster as dg

from pipeline_patterns import environment
from pipeline_patterns.defs.assets.global_merge import holds_days
from pipeline_patterns.defs.checks import QualityGates
from pipeline_patterns.defs.landing import LandingZone
from pipeline_patterns.defs.partitions import REGIONS, daily_partitions
from pipeline_patterns.defs.resources import build_resources
from pipeline_patterns.defs.sources import OrdersSource
from pipeline_patterns.lib.day_window import DayWindow
from pipeline_patterns.lib.delta_writes import content_hash, read_table
from pipeline_patterns.lib.quarantine import AUDIT_COLUMNS

# The extraction step: the assets that call the source and write the landing zone.
LANDING_PREFIX = "raw_orders"
DELTA_LOG = "_delta_log"


@dataclasses.dataclass(frozen=True)
class TableComparison:
    table: str
    """The table's path under the lake, e.g. regional_orders/us_east."""
    rows_live: int
    rows_replay: int
    identical: bool
    in_live: bool = True
    in_replay: bool = True


def replay_selection(asset_graph) -> dg.AssetSelection:
    """Every daily asset downstream of the landing assets, read from the graph (names change):
    the non-daily aggregates are left out, since a day range is not their partition."""
    landing = [k for k in asset_graph.get_all_asset_keys() if k.path[0] == LANDING_PREFIX]
    if not landing:
        raise ValueError(f"no {LANDING_PREFIX}/* assets in the code location: nothing to replay from")
    downstream = (dg.AssetSelection.assets(*landing).downstream() - dg.AssetSelection.assets(*landing)).resolve(
        asset_graph
    )
    daily = [
        k
        for k in downstream
        if asset_graph.get(k).is_materializable and asset_graph.get(k).partitions_def == daily_partitions
    ]
    return dg.AssetSelection.assets(*sorted(daily, key=lambda k: k.to_user_string()))


def _config(resource: object) -> object:
    return resource.model_dump() if hasattr(resource, "model_dump") else repr(resource)


def _storage_keys() -> set[str]:
    """The resources whose configuration depends on the data dir (landing, lake, notifier, ...)."""
    a, b = build_resources(pathlib.Path("/a"), local=True), build_resources(pathlib.Path("/b"), local=True)
    return {key for key in a if key not in b or _config(a[key]) != _config(b[key])}


def replay_resources(
    live_dir: pathlib.Path,
    scratch: pathlib.Path,
    overrides: Mapping[str, object] | None = None,
    used: set[str] | None = None,
) -> dict[str, object]:
    """The scratch data dir's resources, except the landing zone, which is the live one (read
    only: the raw assets, its only writers, are not replayed). `overrides` may not replace a
    resource bound to a data dir that the replay `used`: it could point the replay at live data."""
    bound = _storage_keys() & set(overrides or {})
    storage = sorted(bound & used if used is not None else bound)
    if storage:
        raise ValueError(f"verify_range writes into a scratch dir of its own; do not override {', '.join(storage)}")
    live = build_resources(live_dir)
    return {
        **build_resources(scratch, local=True),
        **(overrides or {}),
        "landing": live["landing"],
    }


def delta_tables(lake: pathlib.Path) -> list[str]:
    """The paths, relative to `lake`, of every Delta table under it."""
    tables = []
    for folder, subfolders, _ in os.walk(lake):
        if DELTA_LOG in subfolders:
            tables.append(pathlib.Path(folder).relative_to(lake).as_posix())
            subfolders.clear()  # a table's partition folders hold no tables
    return sorted(tables)


def _partition_column(asset_graph, table: str) -> str:
    key = dg.AssetKey(table.split("/"))
    if asset_graph is not None and asset_graph.has(key):
        return (asset_graph.get(key).metadata or {}).get("partition_column", "day")
    return "day"  # a table without an asset (e.g. one an older version wrote) is partitioned by day


def compare_window(
    live_lake: pathlib.Path,
    replay_lake: pathlib.Path,
    window: DayWindow,
    *,
    expected: Sequence[str] = (),
    asset_graph=None,
) -> list[TableComparison]:
    """Compare every table the replay wrote (and every `expected` one the live lake holds) on the
    window's rows, audit columns excluded.

    A table the replay wrote but the live lake lacks is a mismatch. A live table the replay did
    not write (its step failed or was skipped in the replay, e.g. the fan-in of a range with a
    quarantined day) is a mismatch only if it holds rows in the window: otherwise both hold
    nothing there."""
    replayed = delta_tables(replay_lake)
    live_only = [t for t in expected if t not in replayed and (live_lake / t / DELTA_LOG).is_dir()]
    comparisons = []
    for table in sorted({*replayed, *live_only}):
        column = _partition_column(asset_graph, table)
        live, replay = (
            read_table(str(lake / table), window, partition_column=column)
            if (lake / table / DELTA_LOG).is_dir()
            else None
            for lake in (live_lake, replay_lake)
        )
        if live is not None and replay is not None:
            same = content_hash(live, exclude=AUDIT_COLUMNS) == content_hash(replay, exclude=AUDIT_COLUMNS)
        else:
            same = replay is None and live is not None and live.num_rows == 0
        comparisons.append(
            TableComparison(
                table=table,
                rows_live=live.num_rows if live is not None else 0,
                rows_replay=replay.num_rows if replay is not None else 0,
                identical=same,
                in_live=live is not None,
                in_replay=replay is not None,
            )
        )
    return comparisons


def verify_range(
    live_dir: pathlib.Path, first: dt.date, last: dt.date, *, resources: Mapping[str, object] | None = None
) -> list[TableComparison]:
    """Replay [first, last] from `live_dir`'s landing zone into a scratch lake with the code
    location's assets, and compare with the live tables under `live_dir`.

    The replay uses the default resource configuration (`build_resources`); `resources` overrides
    resources the replay does not store with, e.g. the quality gates, which must match the live
    run's for the same region-days to be quarantined. Nothing calls the source: the landing assets
    are not replayed."""
    from pipeline_patterns.definitions import assets_and_checks, defs  # loaded only when asked

    if environment.object_store():
        raise ValueError(
            f"verify-idempotency compares the live lake under {live_dir} with a scratch lake on this disk; "
            f"with {environment.OBJECT_STORE_VAR} set the live lake is on object storage: not supported yet"
        )

    asset_graph = defs().resolve_asset_graph()
    selection = replay_selection(asset_graph)
    selected = selection.resolve(asset_graph)
    code_location = assets_and_checks()
    replayed = [a for a in code_location if ({*a.keys, *(c.asset_key for c in a.check_keys)} & selected)]
    used = set().union(*(a.required_resource_keys for a in replayed))
    with tempfile.TemporaryDirectory(prefix="replay-") as scratch:
        run_resources = replay_resources(live_dir, pathlib.Path(scratch), resources, used)
        # A day's global orders include the late orders of the feed days after it (up to the
        # allowed lateness): the replay processes those feed days too, as far as all regions
        # landed them, and compares [first, last].
        landing_zone, gates = run_resources["landing"], run_resources["quality_gates"]
        assert isinstance(landing_zone, LandingZone) and isinstance(gates, QualityGates)
        lateness = gates.allowed_lateness_days
        through = last
        for offset in range(1, lateness + 1):
            day = last + dt.timedelta(days=offset)
            if not all(landing_zone.landed_by(region, day) for region in REGIONS):
                break
            through = day
        source_keys = {k for k, r in run_resources.items() if isinstance(r, OrdersSource)}
        callers = [a for a in replayed if a.required_resource_keys & source_keys]
        if callers:  # the replay proves nothing if it re-extracts, and the landing is not its to write
            names = ", ".join(k.to_user_string() for a in callers for k in a.keys)
            raise ValueError(f"the replay selection would call the source: {names}")
        result = dg.materialize(
            code_location,
            selection=selection,
            tags={
                "dagster/asset_partition_range_start": first.isoformat(),
                "dagster/asset_partition_range_end": through.isoformat(),
            },
            resources=run_resources,
            instance=dg.DagsterInstance.ephemeral(),
            raise_on_error=False,  # held days fail the run by design; their tables are still compared
        )
        unexpected = [
            f"{e.step_key}: {e.step_failure_data.error.message.strip()[:300] if e.step_failure_data.error else ''}"
            for e in result.get_step_failure_events()
            if not holds_days(e)
        ]
        if unexpected:  # a replay that crashed proves nothing either way
            raise RuntimeError(f"the replay of {first}...{through} failed: {'; '.join(unexpected)}")
        return compare_window(
            live_dir / "lake",
            pathlib.Path(scratch) / "lake",
            DayWindow(first, last + dt.timedelta(days=1)),
            expected=["/".join(k.path) for k in selected],
            asset_graph=asset_graph,
        )
