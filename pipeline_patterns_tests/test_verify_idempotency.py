"""verify-idempotency replays the live landing zone into a scratch lake: it confirms live tables
that hold what one clean run writes, catches a tampered one, and never calls the source nor
writes the landing zone. And the CLI ends quietly when its reader closes the pipe."""

import datetime as dt
import hashlib
import json
import pathlib
import subprocess
import sys

import pytest
from deltalake import DeltaTable

from pipeline_patterns import cli
from pipeline_patterns.defs.partitions import REGIONS, region_key
from pipeline_patterns.defs.sources import OrdersSource
from pipeline_patterns.lib.day_window import DayWindow
from pipeline_patterns.lib.delta_writes import read_table
from pipeline_patterns.replay import compare_window, verify_range
from pipeline_patterns_tests.helpers import PROJECT_ROOT, TABLES, TEST_ENV, pipeline_resources

QUARANTINED_DAY = dt.date(2024, 1, 1)  # eu-west delivers null user ids: a blocking gate fails
CLEAN_DAYS = (dt.date(2024, 1, 2), dt.date(2024, 1, 3))
REGIONAL = {f"regional_orders/{region_key(r)}" for r in REGIONS}
NOT_DAILY = {"monthly_revenue", "revenue_summary"}
CLI = str(pathlib.Path(sys.executable).parent / "pipeline-patterns")


def landing_fingerprint(data_dir: pathlib.Path) -> str:
    """Every path under the landing zone and every file's bytes."""
    digest = hashlib.sha256()
    root = data_dir / "landing"
    for path in sorted(root.rglob("*")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        if path.is_file():
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@pytest.fixture
def source_calls(monkeypatch) -> list[tuple]:
    """Every call of the order feed from now on; each one fails, as a feed that is down."""
    calls = []

    def fetch(self, region, day):
        calls.append((region, day))
        raise RuntimeError("verification must not call the source")

    monkeypatch.setattr(OrdersSource, "fetch", fetch)
    return calls


@pytest.fixture
def live(default_range, tmp_path) -> pathlib.Path:
    """A live data dir at test volume (a copy of the default range: 2024-01-01 quarantined, its
    fan-in held)."""
    return default_range.copy_to(tmp_path / "live")


def test_a_regional_table_missing_one_row_is_the_only_difference_found(default_range, tmp_path):
    """The comparison verify-idempotency makes after its replay: here between the live lake and a
    tampered copy of it (a replay identical to live is what the command test below proves)."""
    tampered = default_range.copy_to(tmp_path / "tampered")
    table = tampered / "lake" / "regional_orders" / "eu_west"
    day = CLEAN_DAYS[0]
    window = DayWindow(day, CLEAN_DAYS[-1] + dt.timedelta(days=1))
    victim = read_table(str(table), DayWindow(day, day + dt.timedelta(days=1)))["order_id"][0].as_py()
    DeltaTable(str(table)).delete(f"order_id = '{victim}'")

    comparisons = compare_window(tampered / "lake", default_range.data_dir / "lake", window, expected=TABLES)

    tables = {c.table: c for c in comparisons}
    assert set(TABLES) <= set(tables)
    eu_west = tables["regional_orders/eu_west"]
    assert not eu_west.identical and eu_west.rows_live == eu_west.rows_replay - 1
    assert {t for t, c in tables.items() if not c.identical} == {"regional_orders/eu_west"}


def test_verify_refuses_to_replay_into_live_storage(live):
    with pytest.raises(ValueError, match="do not override"):
        verify_range(live, *CLEAN_DAYS, resources=pipeline_resources(live))


def test_verify_confirms_live_tables_from_the_landing_zone_without_calling_the_source_or_writing_it(
    live, source_calls, monkeypatch, capsys
):
    """`pipeline-patterns verify-idempotency` with the command's default resources, sized by
    TEST_ENV as the live run's were; over the whole range, the quarantined day included. Called in
    process: the command's own code, without a second interpreter and JVM to start."""
    landing_before = landing_fingerprint(live)
    first, last = QUARANTINED_DAY.isoformat(), CLEAN_DAYS[-1].isoformat()
    for name, value in {**TEST_ENV, "PIPELINE_PATTERNS_DATA_DIR": str(live)}.items():
        monkeypatch.setenv(name, value)

    code = cli.main(["verify-idempotency", "--start", first, "--end", last])

    out = capsys.readouterr().out
    assert code == 0, out
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[-1] == {"range": f"{first}...{last}", "identical": True}
    tables = {line["table"]: line for line in lines[:-1]}
    assert REGIONAL | {"global_orders", "daily_revenue"} <= set(tables)
    assert all(
        line["identical"] and line["in_live"] and line["in_replay"] and line["rows_live"] == line["rows_replay"]
        for line in tables.values()
    ), tables
    assert all(tables[t]["rows_live"] > 0 for t in REGIONAL | {"global_orders", "daily_revenue"})
    # the quarantined day: its quarantine rows replayed identically, whatever run and time they
    # carry; the fan-in held it in live, so (identical) in the replay too
    assert tables["quarantined_orders/eu_west"]["rows_live"] > 0
    day = DayWindow(QUARANTINED_DAY, QUARANTINED_DAY + dt.timedelta(days=1))
    assert read_table(str(live / "lake" / "global_orders"), day).num_rows == 0
    assert not NOT_DAILY & set(tables), "the monthly and summary aggregates are not replayed by day"
    assert source_calls == []
    assert landing_fingerprint(live) == landing_before


@pytest.mark.integration
def test_the_cli_ends_quietly_when_its_reader_closes_the_pipe():
    piped = subprocess.run(
        [
            "bash",
            "-c",
            f'"{CLI}" source defects --start 2024-01-01 --end 2024-12-31 | head -1; exit "${{PIPESTATUS[0]}}"',
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )

    assert "Traceback" not in piped.stderr and "BrokenPipeError" not in piped.stderr, piped.stderr
    assert len(piped.stdout.splitlines()) == 1 and json.loads(piped.stdout)["day"] == "2024-01-01"
    assert piped.returncode == 141  # 128 + SIGPIPE: the writer stopped because the reader left


def test_with_the_lake_on_object_storage_the_replay_never_writes_there(tmp_path, monkeypatch):
    from pipeline_patterns.replay import replay_resources

    monkeypatch.setenv("PIPELINE_PATTERNS_OBJECT_STORE", "s3://live-bucket/prod")
    resources = replay_resources(tmp_path / "live", tmp_path / "scratch")
    assert resources["lake"].uri == str(tmp_path / "scratch" / "lake")  # the scratch lake, on this disk
    assert resources["landing"].root == "s3://live-bucket/prod/landing"  # read from the live landing zone
    with pytest.raises(ValueError, match="the live lake is on object storage: not supported yet"):
        verify_range(tmp_path / "live", dt.date(2024, 1, 2), dt.date(2024, 1, 2))
