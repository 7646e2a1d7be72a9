"""Blue-green publication of the published tables: green built beside blue, audited, promoted and rolled
back with one commit per table. See docs/blue_green.md."""

import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import TypedDict, Unpack

import pyarrow as pa
import pyarrow.fs as pafs
from deltalake import CommitProperties, DeltaTable

from pipeline_patterns.lib.day_window import DayWindow
from pipeline_patterns.lib.delta_writes import (
    STAGING_PREFIX,
    check_staged,
    commit_staged,
    committed_version,
    table_files,
    table_version,
)

GREEN_PREFIX = f"{STAGING_PREFIX}green-"
BUILT, AUDITED, REFUSED, PROMOTED, ROLLED_BACK = "built", "audited", "refused", "promoted", "rolled_back"


class PublishRefused(RuntimeError):
    """A promotion or rollback that must not happen (unaudited, failed audit, blue moved)."""


@dataclasses.dataclass
class GreenTable:
    name: str  # the table's path under the lake, e.g. "daily_revenue"
    staging: str  # the staged folder inside the table's folder
    rows_per_day: dict[str, int]
    blue_version: int | None  # the live version when green was built
    blue_files: list[str]  # the window's live files then: promotion requires them unchanged
    promoted_version: int | None = None
    rolled_back_version: int | None = None


@dataclasses.dataclass
class Release:
    release_id: str
    start: str
    end: str  # the window [start, end)
    built_at: str
    built_by: str  # the run (or command) that built it
    tables: list[GreenTable]
    state: str = BUILT
    audit: dict[str, dict] = dataclasses.field(default_factory=dict)  # check -> {"passed": bool, "detail": str}

    @property
    def window(self) -> DayWindow:
        return DayWindow(dt.date.fromisoformat(self.start), dt.date.fromisoformat(self.end))

    @property
    def days(self) -> str:
        """The window's days, inclusive: '2024-01-04..2024-01-06'."""
        return f"{self.start}..{self.window.days[-1].isoformat()}"

    @property
    def audit_passed(self) -> bool:
        return bool(self.audit) and all(v["passed"] for v in self.audit.values())

    def table(self, name: str) -> GreenTable:
        return next(t for t in self.tables if t.name == name)


def new_release_id() -> str:
    return f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def table_uri(lake_uri: str, name: str) -> str:
    return f"{lake_uri.rstrip('/')}/{name}"


def _state_path(lake_uri: str) -> tuple[pafs.FileSystem, str]:
    filesystem, root = pafs.FileSystem.from_uri(lake_uri.rstrip("/"))
    return filesystem, f"{root}/_blue_green/release.json"


def save(lake_uri: str, release: Release) -> None:
    """Write the release atomically (a temporary file renamed over the old one)."""
    filesystem, path = _state_path(lake_uri)
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    temporary = f"{path}.{uuid.uuid4().hex}.tmp"
    with filesystem.open_output_stream(temporary) as handle:
        handle.write(json.dumps(dataclasses.asdict(release), indent=2, sort_keys=True).encode())
    filesystem.move(temporary, path)


def load(lake_uri: str) -> Release | None:
    """The current release (the green being built or audited, or the last one published)."""
    filesystem, path = _state_path(lake_uri)
    if filesystem.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with filesystem.open_input_stream(path) as handle:
        try:
            data = json.loads(handle.read())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error}): build a new green release") from error
    return Release(**{**data, "tables": [GreenTable(**t) for t in data["tables"]]})


def staged_table(
    lake_uri: str, name: str, staging: str, window: DayWindow, rows_per_day: Mapping[str, int]
) -> GreenTable:
    """Record a green table staged at `staging`, with blue's version and window files now."""
    uri = table_uri(lake_uri, name)
    return GreenTable(
        name=name,
        staging=staging,
        rows_per_day=dict(rows_per_day),
        blue_version=table_version(uri),
        blue_files=sorted(table_files(uri, window)),
    )


def compare_to_blue(
    green: Mapping[str, tuple[int, float]], blue: Mapping[str, tuple[int, float]], tolerance: float
) -> tuple[bool, str]:
    """Green against blue, per day, as (orders, revenue): every day blue has is in green, with
    orders and revenue within `tolerance` (relative). Days only green has are new (e.g. held days
    since corrected) and pass. Returns (passed, what differs or what was compared)."""
    problems, new = [], sorted(set(green) - set(blue))
    for day in sorted(blue):
        if day not in green:
            problems.append(f"{day}: in blue, missing from green")
            continue
        for what, b, g in (("orders", blue[day][0], green[day][0]), ("revenue", blue[day][1], green[day][1])):
            if abs(g - b) > tolerance * abs(b):
                change = f"{(g - b) / b:+.2%}" if b else "from zero"
                problems.append(f"{day}: {what} {g:,.2f} vs blue {b:,.2f} ({change}, beyond ±{tolerance:.2%})")
    if problems:
        return False, "; ".join(problems[:10]) + (f"; ... ({len(problems)} in all)" if len(problems) > 10 else "")
    return True, f"{len(blue)} days within ±{tolerance:.2%} of blue" + (
        f"; {len(new)} new days: {', '.join(new[:5])}" if new else ""
    )


class StagedChecks(TypedDict, total=False):
    """The `check_staged` keywords `green_files` passes on (`rows_per_day` is the green table's)."""

    partition_column: str
    not_null: Sequence[str]
    storage_options: Mapping[str, str] | None


def green_files(
    lake_uri: str, green: GreenTable, window: DayWindow, schema: pa.Schema, **checks: Unpack[StagedChecks]
) -> list[str]:
    """The staged files of a green table, after the checks every commit gets (`check_staged`:
    schema, days inside the window, readable Parquet of the table's types, `not_null`, rows per
    day equal the recorded ones); raises RefusedCommit otherwise."""
    uri = table_uri(lake_uri, green.name)
    adds, _ = check_staged(uri, green.staging, window, schema, rows_per_day=green.rows_per_day, **checks)
    return [f"{uri}/{a.path}" for a in adds]


def promote(
    lake_uri: str,
    release: Release,
    schemas: Mapping[str, pa.Schema],
    not_null: Mapping[str, Sequence[str]],
) -> Release:
    """Publish an audited green: one commit per table replacing the window's blue files by green's."""
    if release.state in (BUILT, REFUSED) or not release.audit_passed:
        failed = [f"{name}: {v['detail']}" for name, v in release.audit.items() if not v["passed"]]
        raise PublishRefused(
            f"green {release.release_id} ({release.days}) is "
            + (f"not published: its audit failed ({'; '.join(failed)})" if failed else "not audited yet")
            + "; fix the cause and build a new green"
        )
    if release.state == ROLLED_BACK:
        raise PublishRefused(f"green {release.release_id} was rolled back; build a new green to publish again")
    for green in release.tables:
        uri = table_uri(lake_uri, green.name)
        done = committed_version(uri, green.staging)
        if done is not None:  # promoted by an earlier attempt that died before saving
            green.promoted_version = done
            continue
        live = sorted(table_files(uri, release.window))
        if live != green.blue_files:
            raise PublishRefused(
                f"{green.name} changed in {release.days} after green {release.release_id} was "
                f"built (now version {table_version(uri)}, built against {green.blue_version}): green was audited "
                "against a blue that is no longer live; build a new green"
            )
    for green in release.tables:
        if green.promoted_version is not None:
            continue
        result = commit_staged(
            table_uri(lake_uri, green.name),
            green.staging,
            release.window,
            schemas[green.name],
            rows_per_day=green.rows_per_day,
            not_null=not_null.get(green.name, ()),
            commit_metadata={"blue_green": "promote", "release_id": release.release_id},
        )
        green.promoted_version = result.version
        save(lake_uri, release)
    release.state = PROMOTED
    save(lake_uri, release)
    return release


def rollback(lake_uri: str, release: Release) -> Release:
    """Switch every table back to blue: `restore` to the version before the promotion, one commit
    per table, no data rewritten."""
    if release.state != PROMOTED:
        raise PublishRefused(f"green {release.release_id} is {release.state}, not promoted: nothing to roll back")
    for green in release.tables:
        if green.rolled_back_version is not None or green.promoted_version is None:
            continue
        table = DeltaTable(table_uri(lake_uri, green.name))
        if table.version() != green.promoted_version:
            raise PublishRefused(
                f"{green.name} has commits after the promotion of {release.release_id} (version "
                f"{table.version()}, promoted at {green.promoted_version}): rolling back would undo them too; "
                "re-materialize the window instead"
            )
        table.restore(
            green.promoted_version - 1,
            commit_properties=CommitProperties(
                custom_metadata={"blue_green": "rollback", "release_id": release.release_id}
            ),
        )
        green.rolled_back_version = DeltaTable(table_uri(lake_uri, green.name)).version()
        save(lake_uri, release)
    release.state = ROLLED_BACK
    save(lake_uri, release)
    return release


def status(lake_uri: str, names: Sequence[str]) -> dict:
    """The live version of each table and its last publication commit, and what green holds."""
    release = load(lake_uri)
    tables = {}
    for name in names:
        uri = table_uri(lake_uri, name)
        version = table_version(uri)
        last = None
        if version is not None:
            last = next((h for h in DeltaTable(uri).history(100) if "blue_green" in h), None)
        tables[name] = {
            "live_version": version,
            "last_publication": {k: last.get(k) for k in ("version", "blue_green", "release_id")} if last else None,
        }
    green = None
    if release is not None:
        green = {
            "release_id": release.release_id,
            "days": release.days,
            "state": release.state,
            "built_at": release.built_at,
            "built_by": release.built_by,
            "audit": release.audit,
            "tables": {
                t.name: {
                    "days": len([d for d, n in t.rows_per_day.items() if n]),
                    "rows": sum(t.rows_per_day.values()),
                    "blue_version": t.blue_version,
                    "promoted_version": t.promoted_version,
                    "rolled_back_version": t.rolled_back_version,
                }
                for t in release.tables
            },
        }
    return {"tables": tables, "green": green}
