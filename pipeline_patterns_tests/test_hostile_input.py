"""A battery of hostile inputs, one per day of ONE range run of a region, run twice: every landed
record ends up in exactly one place (clean, quarantined with its reason, or a true copy of a kept
row), each bad file quarantines its own region-day only, refusals name the file and never its
content, and the re-run is identical."""

import bz2
import dataclasses
import datetime as dt
import gzip
import io
import json
import os
import pathlib
import zipfile
from collections.abc import Callable

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline_patterns.defs.checks import QualityGates
from pipeline_patterns.lib import landing
from pipeline_patterns.lib.delta_writes import content_hash, read_table
from pipeline_patterns.lib.orders import landed_rows
from pipeline_patterns.lib.quarantine import AUDIT_COLUMNS
from pipeline_patterns.lib.rules import RULES
from pipeline_patterns_tests.helpers import gate_evaluation, materialize

FIRST = dt.date(2024, 1, 1)
HEADER = "order_id,user_id,region,amount,currency,event_ts,batch_id,delivered_at"
SECRET = "root:x:0:0:do-not-show"


def row(i: int | str, day: str, *, amount="12.50", region="us-east", event=None, batch="b00", delivered=None) -> str:
    return f"o{i},u{i},{region},{amount},USD,{event or day + 'T10:00:00Z'},{batch},{delivered or day + 'T12:00:00Z'}"


def good(day: str) -> bytes:
    return (HEADER + "\n" + "\n".join(row(i, day) for i in range(3)) + "\n").encode()


def text(*lines: str, header: str = HEADER, end: str = "\n") -> bytes:
    return (end.join([header, *lines]) + end).encode()


@dataclasses.dataclass(frozen=True)
class Case:
    second: Callable[[str], bytes | None]
    """The day's second file beside good.csv (three good orders), or None for none."""
    failed: set[str]
    """The blocking checks the day fails (none: the day is processed)."""
    counts: tuple[int, int, int] | None = None
    """(kept, duplicates, superseded) where the case is about them."""
    damage: Callable[[pathlib.Path, landing.Manifest], None] | None = None
    """What happens to the landed files afterwards (a link, a lost file, a corrupt manifest)."""
    names: dict[str, str] | None = None
    """Other file names: delivered name -> content kind ('good' or 'second')."""
    metadata: dict[str, object] | None = None
    """Values the day's regional_orders materialization must report."""
    amounts: dict[str, float] | None = None
    """Order id -> the amount the clean table must hold (the winning delivery's)."""


def order(order_id: str, day: str, **fields) -> str:
    """A record with exactly this order id (invisible characters included)."""
    return row(0, day, **fields).replace("o0,u0,", f"{order_id},u9,", 1)


def _zip(day: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("orders.csv", good(day))
    return buffer.getvalue()


def _secret(root: pathlib.Path) -> pathlib.Path:
    secret = root.parent / "secret.txt"
    secret.write_text(SECRET + "\n")
    return secret


def _symlink(root: pathlib.Path, manifest: landing.Manifest) -> None:
    target = pathlib.Path(manifest.paths(root)[-1])
    target.unlink()
    target.symlink_to(_secret(root))


def _hard_link(root: pathlib.Path, manifest: landing.Manifest) -> None:
    target = pathlib.Path(manifest.paths(root)[-1])
    target.unlink()
    os.link(_secret(root), target)


def _move_outside(root: pathlib.Path, path: pathlib.Path) -> None:
    """`path` moved out of the landing zone, a symlink to it left in its place."""
    moved = root.parent / f"outside-{path.parent.name}-{path.name}"
    path.rename(moved)
    path.symlink_to(moved, target_is_directory=moved.is_dir())


def _linked_manifest(root: pathlib.Path, manifest: landing.Manifest) -> None:
    day = dt.date.fromisoformat(manifest.day)
    _move_outside(root, landing.region_day_dir(root, manifest.region, day) / landing.MANIFEST)


def _linked_day_folder(root: pathlib.Path, manifest: landing.Manifest) -> None:
    _move_outside(root, landing.region_day_dir(root, manifest.region, dt.date.fromisoformat(manifest.day)))


def _lose_file(root: pathlib.Path, manifest: landing.Manifest) -> None:
    pathlib.Path(manifest.paths(root)[-1]).unlink()


def _manifest_of_another_day(root: pathlib.Path, manifest: landing.Manifest) -> None:
    day = dt.date.fromisoformat(manifest.day)
    other = landing.read_manifest(root, manifest.region, FIRST)
    (landing.region_day_dir(root, manifest.region, day) / landing.MANIFEST).write_text(
        json.dumps(dataclasses.asdict(other))
    )


def _corrupt_manifest(root: pathlib.Path, manifest: landing.Manifest) -> None:
    day = dt.date.fromisoformat(manifest.day)
    (landing.region_day_dir(root, manifest.region, day) / landing.MANIFEST).write_text('{"region": "' + SECRET)


PARSE = {"values_parse", "required_fields_present"}
CASES: dict[str, Case] = {
    # first, so that its day is the first partition's
    "an order of the day before the first partition": Case(
        lambda d: text(row(9, d, event=f"{FIRST - dt.timedelta(days=1)}T10:00:00Z")),
        set(),
        (4, 0, 0),
        metadata={"orders_before_first_partition": 1, "late_event_days": "2023-12-31: 1"},
    ),
    "a good day": Case(
        lambda d: None, set(), (3, 0, 0), metadata={"ids_normalised": 0, "orders_before_first_partition": 0}
    ),
    "an empty file": Case(lambda d: b"", set(), (3, 0, 0)),
    "a file of only a header": Case(lambda d: text(), set(), (3, 0, 0)),
    "Windows line ends": Case(lambda d: text(row(7, d), end="\r\n"), set(), (4, 0, 0)),
    "old Mac line ends": Case(lambda d: text(row(7, d), row(8, d), end="\r"), set(), (5, 0, 0)),
    "blank and whitespace lines": Case(lambda d: text(row(7, d), "   ", "\t", "", row(8, d)), set(), (5, 0, 0)),
    "no final line end": Case(lambda d: text(row(7, d))[:-1], set(), (4, 0, 0)),
    "a short line": Case(
        lambda d: text("o9,u9,us-east,1.00"), {"values_parse", "required_fields_present", "currency_known"}
    ),
    "a line with an extra field": Case(lambda d: text(row(9, d) + ",surplus"), {"values_parse"}),
    "a semicolon-delimited export": Case(
        lambda d: text(row(9, d).replace(",", ";"), header=HEADER.replace(",", ";")),
        {"schema_matches", "values_parse", "user_id_not_null", "required_fields_present", "currency_known"},
    ),
    "a line break inside a quoted field": Case(
        lambda d: text(row(9, d).replace("u9", '"u\n9"')),
        {"values_parse", "required_fields_present", "region_matches", "currency_known"},
    ),
    "a repeated header mid-file": Case(
        lambda d: text(row(7, d), HEADER, row(8, d)), PARSE | {"region_matches", "currency_known"}
    ),
    "a missing column": Case(
        lambda d: text(",".join(row(9, d).split(",")[:-1]), header=HEADER.rsplit(",", 1)[0]),
        {"schema_matches", "values_parse", "required_fields_present"},
    ),
    "blank order ids": Case(
        lambda d: text(row(8, d).replace("o8", "  "), row(9, d).replace("o9", " ")), {"order_id_not_null"}
    ),
    "a blank user id": Case(lambda d: text(row(9, d).replace("u9", "")), {"user_id_not_null"}),
    "an empty amount": Case(lambda d: text(row(9, d, amount="")), {"required_fields_present"}),
    "an unparseable amount": Case(lambda d: text(row(9, d, amount="twelve")), PARSE),
    "a thousands separator": Case(lambda d: text(row(9, d, amount='"1,234.50"')), PARSE),
    "a NaN amount": Case(lambda d: text(row(9, d, amount="NaN")), {"amount_plausible"}),
    "an infinite amount": Case(lambda d: text(row(9, d, amount="inf")), {"amount_plausible"}),
    "an absurd amount": Case(lambda d: text(row(9, d, amount="1e17")), {"amount_plausible"}),
    "a negative amount": Case(lambda d: text(row(9, d, amount="-1.00")), {"amount_non_negative"}),
    "an unknown currency": Case(lambda d: text(row(9, d).replace("USD", "XYZ")), {"currency_known"}),
    "a lower-case currency": Case(lambda d: text(row(9, d).replace("USD", " usd ")), set(), (4, 0, 0)),
    "an empty region": Case(lambda d: text(row(9, d, region="")), {"required_fields_present"}),
    "a row of another region": Case(lambda d: text(row(9, d, region="eu-west")), {"region_matches"}),
    "an unparseable timestamp": Case(lambda d: text(row(9, d, event="yesterday")), PARSE),
    "a cut-off timestamp": Case(lambda d: text(row(9, d, event=d + "T1")), PARSE),
    "a date without a time": Case(lambda d: text(row(9, d, event=d)), PARSE),
    "an event in the future": Case(
        lambda d: text(row(9, d, event="2030-01-02T10:00:00Z")), {"event_time_not_in_future"}
    ),
    "an event in year 1": Case(lambda d: text(row(9, d, event="0001-01-01T00:00:00Z")), {"times_in_range"}),
    "a delivery in year 9999": Case(lambda d: text(row(9, d, delivered="9999-12-31T00:00:00Z")), {"times_in_range"}),
    "a huge line": Case(lambda d: text(row(9, d).replace("u9", "u" * 2_000_000)), {"keys_plausible"}),
    "a huge order id": Case(lambda d: text(row(9, d).replace("o9", "o" * 100_000, 1)), {"keys_plausible"}),
    "a huge file": Case(lambda d: text(*(row(f"{i:06d}", d) for i in range(101_000))), {"volume_within_bounds"}),
    "a true copy redelivered": Case(
        lambda d: text(row(1, d, batch="b01", delivered=d + "T18:00:00Z")), set(), (3, 1, 0)
    ),
    "a correction redelivered": Case(
        lambda d: text(row(1, d, amount="13.00", batch="b01", delivered=d + "T18:00:00Z")), set(), (3, 0, 1)
    ),
    "a malformed newer delivery": Case(
        lambda d: text(row(1, d, amount='"1,234.50"', batch="b01", delivered=d + "T18:00:00Z")), PARSE, (3, 0, 1)
    ),
    "a delivery without a delivery time": Case(
        # it ranks last, but its parse error holds the order: quarantined, never dropped unseen
        lambda d: text(row(1, d, amount="13.00", batch="b01", delivered="soon")),
        {"values_parse"},
        (3, 0, 1),
    ),
    "a latin-1 file": Case(
        lambda d: text(row(9, d).replace("u9", "u\xe9")).decode().encode("latin-1"), {"schema_matches"}
    ),
    "a byte-order mark alone on the first line": Case(
        lambda d: "\ufeff\n".encode() + text(row(9, d)), {"schema_matches"}
    ),
    "a byte-order mark": Case(lambda d: "\ufeff".encode() + text(row(9, d)), {"schema_matches"}),
    "a gzip file": Case(lambda d: gzip.compress(good(d), mtime=0), {"files_readable"}, (3, 0, 0)),
    "a zip archive": Case(_zip, {"files_readable"}, (3, 0, 0)),
    "a bzip2 file": Case(lambda d: bz2.compress(good(d)), {"files_readable"}, (3, 0, 0)),
    "a symlink to a file outside": Case(lambda d: text(row(9, d)), {"files_readable"}, (3, 0, 0), _symlink),
    "a landed file lost": Case(lambda d: text(row(9, d)), {"files_readable"}, (3, 0, 0), _lose_file),
    "a manifest naming another day": Case(
        lambda d: None, {"files_readable", "volume_within_bounds"}, (0, 0, 0), _manifest_of_another_day
    ),
    "a leading blank line and a swapped header": Case(
        lambda d: b"\n"
        + text(row(9, d).replace("o9,u9", "u9,o9"), header=HEADER.replace("order_id,user_id", "user_id,order_id")),
        {"schema_matches"},
    ),
    "a file without a header line": Case(
        lambda d: (row(8, d).replace("u8", SECRET) + "\n" + row(9, d) + "\n").encode(), {"schema_matches"}
    ),
    "a DOS end-of-file mark": Case(lambda d: text(row(9, d), end="\r\n") + b"\x1a", set(), (4, 0, 0)),
    "a UTF-16 file": Case(lambda d: text(row(9, d)).decode().encode("utf-16"), {"files_readable"}, (3, 0, 0)),
    "an event past year 9999 in UTC": Case(
        lambda d: text(row(9, d, event="9999-12-31T23:59:59-01:00")), {"event_time_not_in_future"}
    ),
    "a delivery past year 9999 in UTC": Case(
        lambda d: text(row(9, d, delivered="9999-12-31T23:59:59-01:00")), {"times_in_range"}
    ),
    "a corrupt manifest": Case(
        lambda d: None, {"files_readable", "volume_within_bounds"}, (0, 0, 0), _corrupt_manifest
    ),
    "odd file names": Case(
        lambda d: text(row(9, d)),
        set(),
        (4, 9, 0),  # four files repeat o0..o2: nine true copies, so none was skipped nor read twice
        names={"_hidden.csv": "good", ".dot.csv": "second", "*.csv": "good", "[x].csv": "good", "a:b.csv": "good"},
    ),
    # an order's identity: invisible characters and Unicode forms are the same id
    "ids differing by invisible characters": Case(
        lambda d: text(
            order("o0\u00a0", d, amount="13.00", batch="b01", delivered=d + "T18:00:00Z"),
            row(1, d, batch="b01", delivered=d + "T18:00:00Z").replace("o1,", "\u200bo1\u2060,", 1),
            order("\to2 ", d, amount="14.00", batch="b01", delivered=d + "T18:00:00Z"),
        ),
        set(),
        (3, 1, 2),
        metadata={"ids_normalised": 3},
        amounts={"o0": 13.0, "o2": 14.0},
    ),
    "the NFC and NFD forms of one id": Case(
        lambda d: text(
            order("caf\u00e9", d, amount="10.00"), order("cafe\u0301", d, amount="11.00", delivered=d + "T18:00:00Z")
        ),
        set(),
        (4, 0, 1),
        metadata={"ids_normalised": 1},
        amounts={"caf\u00e9": 11.0},
    ),
    "an id of only invisible characters": Case(lambda d: text(order("\u200b\u00a0\ufeff", d)), {"order_id_not_null"}),
    # deterministic winners
    "batch numbers compared as numbers": Case(
        lambda d: text(order("o1", d, amount="13.00", batch="b10"), order("o1", d, amount="14.00", batch="b9")),
        set(),
        (3, 0, 2),
        amounts={"o1": 13.0},
    ),
    "two deliveries tied on time and batch": Case(
        lambda d: text(order("o1", d, amount="13.00")), {"deliveries_ordered"}, (3, 0, 1)
    ),
    "a huge batch id": Case(lambda d: text(row(9, d, batch="b" * 100_000)), {"keys_plausible"}),
    # the landing zone's boundary
    "a manifest that is a symlink": Case(
        lambda d: None, {"files_readable", "volume_within_bounds"}, (0, 0, 0), _linked_manifest
    ),
    "a day folder that is a symlink": Case(
        lambda d: None, {"files_readable", "volume_within_bounds"}, (0, 0, 0), _linked_day_folder
    ),
    "a hard link to a file outside": Case(lambda d: text(row(9, d)), {"files_readable"}, (3, 0, 0), _hard_link),
    # no silent loss, no crash
    "a zero-filled block where records were": Case(
        lambda d: text(row(7, d)) + b"\0" * 4096 + b"\n" + (row(8, d) + "\n").encode(),
        {"files_readable"},
        (3, 0, 0),
    ),
    "a line of more fields than Spark's parser takes": Case(
        lambda d: text(row(9, d) + ",x" * landing.MAX_FIELDS), {"files_readable"}, (3, 0, 0)
    ),
    "every order beyond the watermark": Case(
        lambda d: text(
            *(row(i, d, event=f"{dt.date.fromisoformat(d) - dt.timedelta(days=5)}T10:00:00Z") for i in (7, 8))
        ),
        set(),
        (0, 0, 0),
        names={"late.csv": "second"},
        metadata={"rows_too_late": 2},
    ),
}
DAYS = {name: (FIRST + dt.timedelta(days=i)).isoformat() for i, name in enumerate(CASES)}


def _land(root: pathlib.Path) -> None:
    for name, case in CASES.items():
        day = DAYS[name]
        if case.names:
            files = {n: good(day) if kind == "good" else case.second(day) for n, kind in case.names.items()}
        else:
            second = case.second(day)
            files = {"good.csv": good(day), **({"second.csv": second} if second is not None else {})}
        manifest = landing.land(root, "us-east", dt.date.fromisoformat(day), "hand-made", files)
        if case.damage:
            case.damage(root, manifest)


def _run(data_dir: pathlib.Path) -> dg.ExecuteInProcessResult:
    days = sorted(DAYS.values())
    return materialize(
        data_dir,
        dg.DagsterInstance.ephemeral(),
        first=days[0],
        last=days[-1],
        selection=["regional_orders/us_east", "quarantined_orders/us_east", "late_orders/us_east"],
        resources={"quality_gates": QualityGates(min_orders_per_day=1, freshness_lag_hours=24)},
        raise_on_error=False,
    )


def _tables(data_dir: pathlib.Path) -> dict[str, pa.Table]:
    lake = data_dir / "lake"
    return {
        "clean": read_table(str(lake / "regional_orders" / "us_east")),
        "quarantined": read_table(str(lake / "quarantined_orders" / "us_east")).drop_columns(list(AUDIT_COLUMNS)),
    }


@pytest.fixture(scope="module")
def battery(tmp_path_factory, spark):
    data_dir = tmp_path_factory.mktemp("hostile")
    _land(data_dir / "landing")
    first = _run(data_dir)
    after_first = _tables(data_dir)
    second = _run(data_dir)
    return data_dir, first, second, after_first, _tables(data_dir)


def _day(table: pa.Table, day: str) -> pa.Table:
    rows = table.filter(pc.equal(table["day"], day))
    return rows.sort_by([(c, "ascending") for c in ("order_id", "batch_id", "user_id") if c in rows.column_names])


def test_the_range_run_succeeds_and_a_rerun_is_identical(battery):
    _, first, second, after_first, after_second = battery
    assert first.success and second.success  # every bad file was quarantined or refused, none crashed the run
    for name, table in after_first.items():
        assert table.num_rows and content_hash(table) == content_hash(after_second[name]), name


def test_no_raw_file_content_appears_in_any_event(battery):
    _, first, _, _, _ = battery
    shown = " ".join(str(e.event_specific_data) + str(e.message) for e in first.all_events)
    assert SECRET not in shown and "u" * 100 not in shown and "o" * 100 not in shown


@pytest.mark.parametrize("name", list(CASES))
def test_every_landed_record_ends_in_exactly_one_place(battery, name):
    _, _, second, _, tables = battery
    case, day = CASES[name], DAYS[name]
    gate = gate_evaluation(second, day=day)
    failed = {r.name for r in RULES if r.blocking and not gate.metadata[r.name].value["passed"]}
    assert failed == case.failed, name
    assert (not gate.passed and gate.severity == dg.AssetCheckSeverity.ERROR) is bool(case.failed), name
    metadata = next(
        e.materialization.metadata
        for e in second.get_asset_materialization_events()
        if e.partition == day and e.asset_key.path[0] == "regional_orders"
    )
    landed, kept, quarantined = (metadata[k].value for k in ("rows_landed", "dagster/row_count", "rows_quarantined"))
    duplicates, superseded = metadata["duplicates_dropped"].value, metadata["superseded_dropped"].value
    too_late = metadata["rows_too_late"].value
    assert landed == kept + duplicates + superseded + quarantined + too_late, name  # nothing lost, nothing invented
    clean, held = _day(tables["clean"], day), _day(tables["quarantined"], day)
    if case.failed:
        assert clean.num_rows == 0 and held.num_rows == quarantined  # the whole day in quarantine
        ordered = sorted(case.failed, key=[r.name for r in RULES].index)
        assert set(held["failed_checks"].to_pylist()) <= {",".join(ordered)}
        assert all(check in reason for reason in held["reason"].to_pylist() for check in case.failed)
    else:
        assert held.num_rows == 0 and clean.num_rows == kept == landed - duplicates - superseded - too_late
    if case.counts:
        assert (kept + quarantined, duplicates, superseded) == case.counts, name
    for key, value in (case.metadata or {}).items():
        assert metadata[key].value == value, (name, key)
    for order_id, amount in (case.amounts or {}).items():
        assert clean.filter(pc.equal(clean["order_id"], order_id))["amount"].to_pylist() == [amount], name
    if "files_readable" in case.failed:  # the refusal names the file and says what to do
        refused = gate.metadata["files_readable"].value
        assert refused["failing_rows"] == 0 and "files_readable" in (gate.description or "")
        day_metadata = metadata["files_refused"].value
        remedies = ("re-materialize raw_orders/us_east for " + day, "have the source deliver")
        assert any(remedy in day_metadata for remedy in remedies), day_metadata
        assert SECRET not in day_metadata


def test_a_day_never_landed_fails_the_step_naming_asset_region_day_and_remedy(spark, tmp_path):
    landing.land(tmp_path / "landing", "us-east", FIRST, "hand-made", {"good.csv": good(FIRST.isoformat())})
    result = materialize(
        tmp_path,
        dg.DagsterInstance.ephemeral(),
        first="2024-01-01",
        last="2024-01-03",
        selection=["regional_orders/us_east", "quarantined_orders/us_east", "late_orders/us_east"],
        raise_on_error=False,
    )
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.user_failure_data.description
    assert message == (
        f"regional_orders/us_east: no landed data for region us-east on 2024-01-02, 2024-01-03 under "
        f"{tmp_path / 'landing'}: materialize raw_orders/us_east for those days first"
    )


def test_the_line_reader_reads_every_input_as_spark_does(battery, spark):
    """The executors split the landed files into lines themselves, on a disk opening each file as
    inspected (no link swapped in is followed), on S3 streaming it (the wheel has no S3
    connector): over the whole battery, both give the rows of Spark's own CSV reader."""
    data_dir = battery[0]
    landed = landing.inspect_days(
        data_dir / "landing", "us-east", [dt.date.fromisoformat(d) for d in sorted(DAYS.values())], []
    )
    files = [f for day in landed for f in day.files]
    by_spark = landed_rows(spark, files).drop("_path").toArrow()
    as_inspected = landed_rows(spark, files, identities=landing.identities(landed)).drop("_path").toArrow()
    streamed = landed_rows(spark, files, by_lines=True).drop("_path").toArrow()
    assert by_spark.num_rows > 100_000 and len(landing.identities(landed)) == len(files)
    assert content_hash(as_inspected) == content_hash(by_spark) == content_hash(streamed)
