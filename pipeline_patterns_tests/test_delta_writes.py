"""Window writes replace exactly their days, in one transaction, whatever happens to the writer."""

import datetime as dt
import multiprocessing
import os
import signal
import time

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError

from pipeline_patterns.lib.day_window import DayWindow
from pipeline_patterns.lib.delta_writes import content_hash, read_table, replace_window

JAN = dt.date(2024, 1, 1)


def day_rows(day: dt.date, values: list[int]) -> pa.Table:
    return pa.table({"day": [day.isoformat()] * len(values), "v": values})


def window(first_day: int, days: int = 1) -> DayWindow:
    start = JAN + dt.timedelta(days=first_day)
    return DayWindow(start, start + dt.timedelta(days=days))


def test_day_window_days_and_predicate():
    w = DayWindow(dt.date(2024, 1, 30), dt.date(2024, 2, 3))
    assert [d.isoformat() for d in w.days] == ["2024-01-30", "2024-01-31", "2024-02-01", "2024-02-02"]
    assert w.predicate("day") == "day >= '2024-01-30' AND day < '2024-02-03'"
    assert str(w) == "2024-01-30...2024-02-02"
    with pytest.raises(ValueError, match="empty day window"):
        DayWindow(JAN, JAN)


def test_replacing_a_window_leaves_other_days_untouched(tmp_path):
    uri = str(tmp_path / "t")
    replace_window(uri, pa.concat_tables([day_rows(JAN + dt.timedelta(i), [i, i]) for i in range(3)]), window(0, 3))
    replace_window(uri, day_rows(JAN + dt.timedelta(1), [9]), window(1))
    got = read_table(uri).sort_by("day").to_pydict()
    assert got == {"day": ["2024-01-01", "2024-01-01", "2024-01-02", "2024-01-03", "2024-01-03"], "v": [0, 0, 9, 2, 2]}


def test_rewriting_a_window_any_number_of_times_leaves_identical_content(tmp_path):
    uri = str(tmp_path / "t")
    data = pa.concat_tables([day_rows(JAN + dt.timedelta(i), [i, 10 + i]) for i in range(3)])
    replace_window(uri, data, window(0, 3))
    first = content_hash(read_table(uri))
    for _ in range(3):
        replace_window(uri, data.slice(2, 2), window(1))  # the middle day again
        replace_window(uri, data, window(0, 3))
    assert content_hash(read_table(uri)) == first
    assert read_table(uri).num_rows == 6


def test_an_empty_write_clears_its_window(tmp_path):
    uri = str(tmp_path / "t")
    replace_window(uri, pa.concat_tables([day_rows(JAN, [1]), day_rows(JAN + dt.timedelta(1), [2])]), window(0, 2))
    replace_window(uri, day_rows(JAN, []), window(0))
    assert read_table(uri).to_pydict() == {"day": ["2024-01-02"], "v": [2]}


def test_rows_outside_the_window_are_refused_and_nothing_is_committed(tmp_path):
    uri = str(tmp_path / "t")
    replace_window(uri, day_rows(JAN, [1]), window(0))
    with pytest.raises(ValueError, match=r"fall outside the window 2024-01-01"):
        replace_window(uri, day_rows(JAN + dt.timedelta(1), [2]), window(0))
    assert DeltaTable(uri).version() == 0


def test_a_streamed_range_is_one_transaction_and_a_failure_mid_stream_commits_nothing(tmp_path):
    uri = str(tmp_path / "t")
    replace_window(uri, (day_rows(JAN + dt.timedelta(i), [i]) for i in range(5)), window(0, 5))
    assert DeltaTable(uri).version() == 0
    assert read_table(uri).num_rows == 5

    def broken():
        yield day_rows(JAN, [100])
        raise RuntimeError("the source died")

    with pytest.raises(Exception, match="the source died"):
        replace_window(uri, broken(), window(0, 5))
    assert DeltaTable(uri).version() == 0
    assert sorted(read_table(uri)["v"].to_pylist()) == [0, 1, 2, 3, 4]


def test_commit_metadata_lands_in_the_table_history(tmp_path):
    uri = str(tmp_path / "t")
    replace_window(uri, day_rows(JAN, [1]), window(0), commit_metadata={"dagster_run_id": "run-1"})
    assert DeltaTable(uri).history(1)[0]["dagster_run_id"] == "run-1"


def test_content_hash_ignores_row_order_and_sees_any_value_change():
    a = pa.table({"day": ["x", "y"], "v": [1, 2]})
    assert content_hash(a) == content_hash(a.take([1, 0]))
    assert content_hash(a) != content_hash(pa.table({"day": ["x", "y"], "v": [1, 3]}))
    assert content_hash(a) != content_hash(pa.concat_tables([a, a.slice(0, 1)]))


def _slow_writer(uri: str, started) -> None:
    def batches():
        for i in range(10_000):
            if i == 5:
                started.set()
            time.sleep(0.01)
            yield day_rows(JAN + dt.timedelta(days=i % 3), list(range(1000)))

    replace_window(uri, batches(), window(0, 3))


def _writer(uri: str, value: int) -> str:
    for attempt in range(20):
        try:
            replace_window(uri, day_rows(JAN + dt.timedelta(1), [value] * 3), window(1))
            return "ok"
        except CommitFailedError:
            time.sleep(0.05 * attempt)  # what the step's RetryPolicy does in the pipeline
    return "gave up"


def test_a_writer_killed_mid_write_leaves_the_table_as_it_was_and_a_rerun_is_clean(tmp_path):
    uri = str(tmp_path / "t")
    clean = pa.concat_tables([day_rows(JAN + dt.timedelta(i), [i]) for i in range(3)])
    replace_window(uri, clean, window(0, 3))
    before = content_hash(read_table(uri))
    context = multiprocessing.get_context("spawn")  # delta-rs panics after fork
    started = context.Event()
    writer = context.Process(target=_slow_writer, args=(uri, started))
    writer.start()
    assert started.wait(60)
    os.kill(writer.pid, signal.SIGKILL)
    writer.join()
    assert writer.exitcode == -signal.SIGKILL
    assert content_hash(read_table(uri)) == before and DeltaTable(uri).version() == 0
    replace_window(uri, clean, window(0, 3))
    assert content_hash(read_table(uri)) == before


def test_concurrent_writers_of_one_window_leave_exactly_one_copy(tmp_path):
    uri = str(tmp_path / "t")
    replace_window(uri, day_rows(JAN, [0]), window(0))
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        outcomes = pool.starmap(_writer, [(uri, v) for v in (1, 2, 3, 4)])
    assert outcomes == ["ok"] * 4
    rows = read_table(uri).to_pydict()
    day2 = [v for d, v in zip(rows["day"], rows["v"], strict=True) if d == "2024-01-02"]
    assert len(day2) == 3 and len(set(day2)) == 1, day2  # one writer's rows, never a mix
    assert rows["v"][rows["day"].index("2024-01-01")] == 0


def test_revenue_sums_do_not_depend_on_the_order_rows_arrive_in():
    from pipeline_patterns.lib.orders import daily_revenue_table

    rng = np.random.default_rng(3)
    groups, per_group = 300, 2000
    n = groups * per_group
    orders = pa.table(
        {
            "day": [f"2024-01-{1 + g % 28:02d}" for g in range(groups) for _ in range(per_group)],
            "region": [f"r{g // 28}" for g in range(groups) for _ in range(per_group)],
            "order_id": [str(i) for i in range(n)],
            "user_id": [str(i % 977) for i in range(n)],
            "amount_usd": np.round(rng.lognormal(3.6, 0.8, n), 2),
        }
    )
    hashes = {content_hash(daily_revenue_table(orders.take(rng.permutation(n)))) for _ in range(8)}
    assert len(hashes) == 1
