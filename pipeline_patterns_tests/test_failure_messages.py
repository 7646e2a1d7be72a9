"""Every failure names its region, day, file (where there is one) and what to do, and fails before
it writes anything: a delivery the landing zone cannot store, a region-day whose orders all came
too late."""

import datetime as dt
import pathlib

import dagster as dg
import pytest

from pipeline_patterns.defs.checks import QualityGates
from pipeline_patterns.defs.lake import Lake
from pipeline_patterns.defs.sources import OrdersSource
from pipeline_patterns.lib import landing
from pipeline_patterns.lib.fan_in import held_days
from pipeline_patterns.lib.simulated_feed import region_day_files
from pipeline_patterns_tests.helpers import TEST_ORDERS_PER_DAY, materialize, resilient

DAY = dt.date(2024, 1, 2)
GOOD = b"a,b\n1,2\n"


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("x" * 300 + ".csv", "x" * 40 + "... (304 characters)"),
        ("b01\0.csv", "b01\\0.csv"),
        ("a" + "\u00e9" * 250, "a" + "\u00e9" * 39 + "... (251 characters)"),  # each stored as one '_'
    ],
)
def test_a_file_name_the_landing_zone_cannot_store_is_refused_before_anything_is_written(tmp_path, name, shown):
    with pytest.raises(landing.LandingRefusedError) as error:
        landing.land(tmp_path, "us-east", DAY, "run-1", {"b00.csv": GOOD, name: GOOD})
    assert str(error.value) == (
        f"region us-east on 2024-01-02: the landing zone cannot store 1 delivered file name(s) ({shown}): a name "
        "must have at most 250 characters and no NUL. Nothing was landed; have the source deliver the files under "
        "such names (or rename them in the source client's fetch), then re-materialize raw_orders/us_east for "
        "2024-01-02"
    )
    assert list(tmp_path.iterdir()) == []  # not even the run folder


def test_the_longest_storable_name_is_landed(tmp_path):
    name = "x" * 246 + ".csv"  # 250 characters: '0000-' + 250 = 255 bytes
    manifest = landing.land(tmp_path, "us-east", DAY, "run-1", {name: GOOD})
    assert [len(pathlib.Path(p).name.encode()) for p in manifest.paths(tmp_path)] == [landing.NAME_MAX]


def test_a_landing_through_a_linked_region_folder_is_refused_and_writes_nothing_outside(tmp_path):
    outside, root = tmp_path / "outside", tmp_path / "landing"
    outside.mkdir()
    root.mkdir()
    (root / "us-east").symlink_to(outside, target_is_directory=True)
    with pytest.raises(landing.LandingRefusedError, match="the landing zone writes through no link") as error:
        landing.land(root, "us-east", DAY, "run-1", {"b00.csv": GOOD})
    assert f"the landing folder {root}/us-east/2024-01-02 is a symbolic link" in str(error.value)
    assert str(error.value).endswith(
        "replace the link by a folder, then re-materialize raw_orders/us_east for 2024-01-02"
    )
    assert list(outside.iterdir()) == []


class LongNamedSource(OrdersSource):
    """A feed whose files carry names no disk stores."""

    def fetch(self, region: str, day: dt.date) -> dict[str, bytes]:
        return {"y" * 300 + ".csv": GOOD}


def test_the_raw_step_fails_at_once_naming_asset_region_day_and_remedy_for_an_unstorable_name(tmp_path):
    result = materialize(
        tmp_path,
        dg.DagsterInstance.ephemeral(),
        partition=DAY.isoformat(),
        selection=["raw_orders/us_east"],
        resources={"orders_source": LongNamedSource(orders_per_day=TEST_ORDERS_PER_DAY, **resilient(tmp_path))},
        raise_on_error=False,
    )
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.user_failure_data.description
    assert message.startswith("raw_orders/us_east: region us-east on 2024-01-02: the landing zone cannot store 1 ")
    assert message.endswith("then re-materialize raw_orders/us_east for 2024-01-02")
    assert len([e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_START]) == 1  # no retry
    assert not (tmp_path / "landing" / "us-east").exists()


def test_a_day_held_because_every_order_of_a_region_came_too_late_says_so():
    clean = {"eu-west": {"2024-01-09": 3}, "us-east": {}}
    held = held_days(["2024-01-09"], ["eu-west", "us-east"], clean, {}, {"us-east": {"2024-01-09": 7}})
    assert held == {
        "2024-01-09": [
            "us-east: no clean data: all 7 orders delivered for 2024-01-09 came later than the allowed lateness "
            "after their event day, so the day is empty (they are in late_orders/us_east); have the source deliver "
            "the day's own orders, or raise quality_gates.allowed_lateness_days and re-materialize "
            "regional_orders/us_east for 2024-01-09"
        ]
    }


class AllLateSource(OrdersSource):
    """A feed whose us-east delivery of 2024-01-09 carries only orders of five days before."""

    def fetch(self, region: str, day: dt.date) -> dict[str, bytes]:
        files = region_day_files(region, day, self.settings())
        if region != "us-east":
            return files
        return {name: data.replace(b'"2024-01-09T', b'"2024-01-04T') for name, data in files.items()}


def test_the_fan_in_says_a_held_day_is_empty_because_everything_came_too_late(spark, tmp_path):
    source = AllLateSource(
        orders_per_day=TEST_ORDERS_PER_DAY,
        late_rate=0.0,
        null_user_day_rate=0.0,
        collapsed_volume_day_rate=0.0,
        **resilient(tmp_path),
    )
    result = materialize(
        tmp_path,
        dg.DagsterInstance.ephemeral(),
        partition="2024-01-09",
        resources={"orders_source": source, "quality_gates": QualityGates(min_orders_per_day=1)},
        raise_on_error=False,
    )
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.user_failure_data.description
    assert message.startswith("held 1 of 1 days of ")
    assert (
        f"2024-01-09: us-east: no clean data: all {TEST_ORDERS_PER_DAY} orders delivered for 2024-01-09 came later "
        "than the allowed lateness after their event day, so the day is empty (they are in late_orders/us_east)"
    ) in message


def test_a_corrupt_or_linked_manifest_is_landed_again_by_the_raw_step(tmp_path):
    from pipeline_patterns.defs.landing import LandingZone

    zone = LandingZone(root=str(tmp_path))
    zone.land("us-east", DAY, "run-1", {"b00.csv": GOOD})
    manifest = landing.region_day_dir(tmp_path, "us-east", DAY) / landing.MANIFEST
    manifest.write_text("{")
    assert zone.landed_by("us-east", DAY) is None  # so the raw step lands the day again
    zone.land("us-east", DAY, "run-2", {"b00.csv": GOOD})
    assert zone.landed_by("us-east", DAY) == "run-2"


def test_a_table_that_cannot_be_written_fails_the_step_naming_table_region_days_and_remedy(
    spark, tmp_path, monkeypatch
):
    write = Lake.write

    def unwritable(self, key, *args, **kwargs):
        if key.path[0] == "quarantined_orders":
            raise PermissionError(13, "Permission denied", str(tmp_path / "lake" / "quarantined_orders"))
        return write(self, key, *args, **kwargs)

    monkeypatch.setattr(Lake, "write", unwritable)
    us_east = [f"{layer}/us_east" for layer in ("raw_orders", "regional_orders", "quarantined_orders", "late_orders")]
    result = materialize(
        tmp_path, dg.DagsterInstance.ephemeral(), partition="2024-01-02", selection=us_east, raise_on_error=False
    )
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.user_failure_data.description
    assert message.startswith(
        f"quarantined_orders/us_east: could not write 2024-01-02 of region us-east to {tmp_path / 'lake' / 'quarantined_orders' / 'us_east'} (PermissionError:"
    )
    assert message.endswith(
        "Make the lake writable (permissions, free space), then re-materialize regional_orders/us_east for 2024-01-02."
    )
