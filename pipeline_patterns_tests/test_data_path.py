"""Executors write, the driver commits: what a commit accepts and refuses, what a writer killed
before its commit leaves, how concurrent writers of overlapping windows end, and that Spark reads
exactly a table's snapshot."""

import datetime as dt
import json
import os
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from pipeline_patterns import cli
from pipeline_patterns.lib import delta_writes, spark_tables
from pipeline_patterns.lib.day_window import DayWindow
from pipeline_patterns.lib.delta_writes import (
    RefusedCommit,
    commit_staged,
    content_hash,
    read_table,
    vacuum_orphans,
)
from pipeline_patterns.lib.spark_tables import read_window, write_window
from pipeline_patterns_tests.helpers import Uncomputed

SCHEMA = pa.schema(
    [
        ("order_id", pa.string()),
        ("amount", pa.float64()),
        ("event_ts", pa.timestamp("us", tz="UTC")),
        ("day", pa.string()),
    ]
)
JAN = dt.date(2024, 1, 1)


def days(first: int, count: int) -> DayWindow:
    return DayWindow(JAN + dt.timedelta(days=first), JAN + dt.timedelta(days=first + count))


def rows(window: DayWindow, tag: str, per_day: int = 3) -> pa.Table:
    """Deterministic rows for every day of `window`: the same `tag` gives the same rows."""
    ids = [(d.isoformat(), f"{tag}-{d.isoformat()}-{i}", i) for d in window.days for i in range(per_day)]
    return pa.table(
        {
            "order_id": [i for _, i, _ in ids],
            "amount": [float(n) for _, _, n in ids],
            "event_ts": pa.array([dt.datetime(2024, 1, 1, tzinfo=dt.UTC)] * len(ids), pa.timestamp("us", tz="UTC")),
            "day": [d for d, _, _ in ids],
        },
        schema=SCHEMA,
    )


def stage(uri: str, name: str, table: pa.Table) -> None:
    """Write `table` as a writer would: one Parquet file per day under `<uri>/<name>/day=<day>/`."""
    for day in sorted(set(table["day"].to_pylist())):
        folder = f"{uri}/{name}/day={day}"
        os.makedirs(folder, exist_ok=True)
        part = table.filter(pa.compute.equal(table["day"], day)).drop_columns(["day"])
        pq.write_table(part, f"{folder}/part-0.parquet")


def committed(uri: str, name: str, table: pa.Table, window: DayWindow, **kwargs) -> None:
    stage(uri, name, table)
    commit_staged(uri, name, window, SCHEMA, **kwargs)


def commit_concurrently(uri: str, windows: dict[str, DayWindow], before=lambda: None) -> list[BaseException]:
    """Commit `staged-<name>` for each window from a thread of its own (each calling `before`
    first); the errors raised."""
    errors: list[BaseException] = []

    def commit(name: str) -> None:
        before()
        try:
            commit_staged(uri, f"staged-{name}", windows[name], SCHEMA)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=commit, args=(name,)) for name in windows]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_staged_files_become_one_version_that_replaces_exactly_the_window(tmp_path):
    uri = str(tmp_path / "t")
    committed(uri, "staged-a", rows(days(0, 3), "old"), days(0, 3))
    committed(uri, "staged-b", rows(days(1, 1), "new", 5), days(1, 1), commit_metadata={"dagster_run_id": "run-2"})
    table = DeltaTable(uri)
    assert table.version() == 1
    assert table.history(1)[0]["dagster_run_id"] == "run-2"
    expected = pa.concat_tables([rows(days(0, 1), "old"), rows(days(1, 1), "new", 5), rows(days(2, 1), "old")])
    assert content_hash(read_table(uri)) == content_hash(expected)
    # statistics from the Parquet footers: readers can count and prune without opening files
    actions = pa.table(table.get_add_actions(flatten=True))
    assert sum(actions["num_records"].to_pylist()) == expected.num_rows
    assert sorted(actions["max.amount"].to_pylist()) == [2.0, 2.0, 4.0]


@pytest.mark.parametrize(
    "fault, message",
    [
        ("outside", "outside 2024-01-02"),
        ("schema", "are not the table's"),
        ("nulls", r"nulls \(or no null count\) in the required columns"),
        ("rows", "staged rows differ"),
        ("corrupt", "not a readable Parquet file"),
    ],
)
def test_a_refused_commit_leaves_the_table_unchanged_and_removes_its_files(tmp_path, fault, message):
    uri = str(tmp_path / "t")
    committed(uri, "staged-a", rows(days(0, 3), "old"), days(0, 3))
    before = content_hash(read_table(uri))
    bad = rows(days(1, 1), "new")
    kwargs: dict = {"not_null": ["order_id"]}
    if fault == "outside":
        bad = rows(days(2, 1), "new")  # a day the window does not cover
    elif fault == "schema":
        bad = bad.set_column(1, "amount", pa.array(["1"] * bad.num_rows))
    elif fault == "nulls":
        bad = bad.set_column(0, "order_id", pa.array([None] * bad.num_rows, pa.string()))
    elif fault == "rows":
        kwargs["rows_per_day"] = {"2024-01-02": bad.num_rows + 1}
    stage(uri, "staged-b", bad)
    if fault == "corrupt":  # a writer died mid-file: no footer
        path = f"{uri}/staged-b/day=2024-01-02/part-0.parquet"
        with open(path, "r+b") as handle:
            handle.truncate(os.path.getsize(path) // 2)
    with pytest.raises(RefusedCommit, match=message):
        commit_staged(uri, "staged-b", days(1, 1), SCHEMA, **kwargs)
    assert content_hash(read_table(uri)) == before
    assert DeltaTable(uri).version() == 0
    assert not os.path.exists(f"{uri}/staged-b")


def test_a_writer_killed_between_its_files_and_its_commit_leaves_the_table_unchanged(spark, tmp_path, monkeypatch):
    uri = str(tmp_path / "t")
    write_window(spark.createDataFrame(rows(days(0, 3), "old")), uri, days(0, 3), SCHEMA)
    before = content_hash(read_table(uri))

    def killed(*args, **kwargs):
        raise SystemExit("killed after writing its files, before committing them")

    monkeypatch.setattr(spark_tables, "commit_staged", killed)
    with pytest.raises(SystemExit):
        write_window(spark.createDataFrame(rows(days(1, 2), "new")), uri, days(1, 2), SCHEMA)
    orphans = [name for name in os.listdir(uri) if name.startswith("staged-")]
    assert len(orphans) == 2  # the committed write's folder and the killed one's
    assert content_hash(read_table(uri)) == before
    assert content_hash(read_window(spark, uri, SCHEMA).toArrow().cast(SCHEMA)) == before
    monkeypatch.undo()
    write_window(spark.createDataFrame(rows(days(1, 2), "new")), uri, days(1, 2), SCHEMA)  # the re-run
    clean = content_hash(pa.concat_tables([rows(days(0, 1), "old"), rows(days(1, 2), "new")]))
    assert content_hash(read_table(uri)) == clean
    removed = vacuum_orphans(uri, retention_hours=0, dry_run=False)
    assert any("staged-" in path for path in removed)  # the killed writer's files, and the replaced ones
    assert content_hash(read_table(uri)) == clean


@pytest.mark.parametrize("attempt", range(6))  # a race: several tries
def test_concurrent_writers_of_overlapping_windows_end_as_one_clean_copy(tmp_path, attempt):
    uri = str(tmp_path / "t")
    committed(uri, "staged-0", rows(days(0, 4), "seed"), days(0, 4))
    windows = {"a": days(0, 3), "b": days(1, 3)}
    for name, window in windows.items():
        stage(uri, f"staged-{name}", rows(window, "same"))
    start = threading.Barrier(2)
    assert commit_concurrently(uri, windows, before=start.wait) == []
    assert content_hash(read_table(uri)) == content_hash(rows(days(0, 4), "same"))


def test_writers_that_both_saw_the_window_empty_still_end_as_one_copy(tmp_path, monkeypatch):
    """Both commit from the same snapshot, in which the overlap days have no file yet: delta-rs
    alone would accept both (two copies); the app transaction makes the second one conflict."""
    uri = str(tmp_path / "t")
    committed(uri, "staged-0", rows(days(0, 1), "seed"), days(0, 1))
    both_opened = threading.Barrier(2)
    raced: set[int] = set()

    class Racing(DeltaTable):
        def create_write_transaction(self, *args, **kwargs):
            if threading.get_ident() not in raced:  # the first attempt of each writer: in lockstep
                raced.add(threading.get_ident())
                both_opened.wait(timeout=10)
            return super().create_write_transaction(*args, **kwargs)

    monkeypatch.setattr(delta_writes, "DeltaTable", Racing)
    windows = {"a": days(1, 2), "b": days(2, 2)}
    for name, window in windows.items():
        stage(uri, f"staged-{name}", rows(window, "same"))
    assert commit_concurrently(uri, windows) == []
    expected = pa.concat_tables([rows(days(0, 1), "seed"), rows(days(1, 3), "same")])
    assert content_hash(read_table(uri)) == content_hash(expected)


def test_spark_reads_exactly_the_snapshot_not_the_folder(spark, tmp_path):
    uri = str(tmp_path / "t")
    write_window(spark.createDataFrame(rows(days(0, 3), "v0")), uri, days(0, 3), SCHEMA)
    write_window(spark.createDataFrame(rows(days(1, 1), "v1", 2)), uri, days(1, 1), SCHEMA)
    current = pa.concat_tables([rows(days(0, 1), "v0"), rows(days(1, 1), "v1", 2), rows(days(2, 1), "v0")])
    assert content_hash(read_window(spark, uri, SCHEMA).toArrow().cast(SCHEMA)) == content_hash(current)
    middle = read_window(spark, uri, SCHEMA, days(1, 1)).toArrow().cast(SCHEMA)
    assert content_hash(middle) == content_hash(rows(days(1, 1), "v1", 2))
    assert content_hash(read_window(spark, uri, SCHEMA, version=0).toArrow().cast(SCHEMA)) == content_hash(
        rows(days(0, 3), "v0")
    )
    assert read_window(spark, str(tmp_path / "none"), SCHEMA).count() == 0


def test_a_window_counted_empty_is_emptied_without_computing_its_frame(tmp_path):
    uri = str(tmp_path / "t")
    empty = {d.isoformat(): 0 for d in days(1, 2).days}
    write_window(Uncomputed(), uri, days(1, 2), SCHEMA, rows_per_day=empty)  # a new table: created empty
    assert read_table(uri).num_rows == 0 and DeltaTable(uri).schema().to_arrow().names == SCHEMA.names
    committed(uri, "staged-seed", rows(days(0, 4), "seed"), days(0, 4))
    for _ in range(2):  # the window's days emptied, the others kept; a replay changes no content
        write_window(Uncomputed(), uri, days(1, 2), SCHEMA, rows_per_day=empty)
        expected = pa.concat_tables([rows(days(0, 1), "seed"), rows(days(3, 1), "seed")])
        assert content_hash(read_table(uri)) == content_hash(expected)


def test_lake_vacuum_lists_then_removes_a_killed_writers_files(tmp_path, monkeypatch, capsys):
    uri = str(tmp_path / "lake" / "global_orders")
    committed(uri, "staged-a", rows(days(0, 2), "kept"), days(0, 2))
    stage(uri, "staged-killed", rows(days(0, 2), "never-committed"))  # its writer died before committing
    kept = content_hash(read_table(uri))
    monkeypatch.setenv("PIPELINE_PATTERNS_DATA_DIR", str(tmp_path))
    assert cli.main(["lake", "vacuum", "--retention-hours", "0"]) == 0
    assert json.loads(capsys.readouterr().out) == {"table": "global_orders", "files": 2, "removed": False}
    assert os.listdir(f"{uri}/staged-killed/day=2024-01-01")
    assert cli.main(["lake", "vacuum", "--retention-hours", "0", "--apply"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] is True
    assert not os.path.exists(f"{uri}/staged-killed/day=2024-01-01/part-0.parquet")
    assert content_hash(read_table(uri)) == kept


def test_lake_vacuum_removes_the_files_of_a_table_whose_first_writer_never_committed(tmp_path, monkeypatch, capsys):
    uri = str(tmp_path / "lake" / "daily_revenue")
    stage(uri, "staged-killed", rows(days(0, 1), "never-committed"))
    monkeypatch.setenv("PIPELINE_PATTERNS_DATA_DIR", str(tmp_path))
    assert cli.main(["lake", "vacuum", "--retention-hours", "0", "--apply"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "uncommitted": "daily_revenue/staged-killed",
        "files": 1,
        "removed": True,
    }
    assert not os.path.exists(f"{uri}/staged-killed")
