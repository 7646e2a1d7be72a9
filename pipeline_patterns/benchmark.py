"""Benchmark: a backfill of N days x 4 regions through the whole daily graph, beside the floor,
a plain PySpark script doing the same transformation without Dagster.

    python -m pipeline_patterns.benchmark --days 90
    python -m pipeline_patterns.benchmark --days 365

Each variant runs in a fresh process of its own (a cold Spark JVM, as a real run has) into a
scratch data dir; this process samples the resident memory of that process and its children
(the JVM) and prints wall time, rows/s and peak memory. The orchestrated run is ONE Dagster run
(the assets' single-run backfill policy, in-process executor) and does more than the floor: the
quality gates, the quarantine table, the check results and the run's event log.
"""

import argparse
import datetime as dt
import json
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

REGIONS_FIRST_DAY = dt.date(2024, 1, 1)


def run_dagster(data_dir: pathlib.Path, first: dt.date, last: dt.date, orders_per_day: int) -> None:
    import dagster as dg

    from pipeline_patterns.definitions import defs
    from pipeline_patterns.defs.checks import QualityGates
    from pipeline_patterns.defs.resources import build_resources
    from pipeline_patterns.defs.sources import OrdersSource

    result = dg.materialize(
        [a for a in defs.assets or [] if isinstance(a, dg.AssetsDefinition)] + list(defs.asset_checks or []),
        selection="*daily_revenue",
        tags={
            "dagster/asset_partition_range_start": first.isoformat(),
            "dagster/asset_partition_range_end": last.isoformat(),
        },
        resources={
            **build_resources(data_dir),
            # every region-day passes the gates, as in the floor, so both write the same rows
            "orders_source": OrdersSource(
                orders_per_day=orders_per_day, null_user_day_rate=0.0, collapsed_volume_day_rate=0.0
            ),
            "quality_gates": QualityGates(min_orders_per_day=1),
        },
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success


def run_floor(data_dir: pathlib.Path, first: dt.date, last: dt.date, orders_per_day: int) -> None:
    """The same transformation with PySpark, delta-rs and Arrow only."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyspark.sql import SparkSession

    from pipeline_patterns.defs.partitions import REGIONS, region_key
    from pipeline_patterns.defs.resources import spark_config
    from pipeline_patterns.lib import landing
    from pipeline_patterns.lib.day_window import DayWindow
    from pipeline_patterns.lib.delta_writes import replace_window
    from pipeline_patterns.lib.fan_in import fx_day, global_orders_table
    from pipeline_patterns.lib.orders import daily_revenue_table, regional_orders_table
    from pipeline_patterns.lib.simulated_feed import FeedSettings, region_day_files, usd_rate

    builder = SparkSession.builder
    for key, value in spark_config().items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    window = DayWindow(first, last + dt.timedelta(days=1))
    settings = FeedSettings(orders_per_day=orders_per_day, null_user_day_rate=0.0, collapsed_volume_day_rate=0.0)
    root, lake = data_dir / "landing", data_dir / "lake"
    regional = []
    for region in REGIONS:
        for day in window.days:
            landing.land(root, region, day, "floor", region_day_files(region, day, settings))
        orders = regional_orders_table(spark, landing.landed_files(root, region, window.days))
        orders = orders.drop_columns(["parse_errors", "duplicates", "superseded"])
        replace_window(str(lake / "regional_orders" / region_key(region)), orders, window)
        regional.append(orders)
    orders = pa.concat_tables(regional)
    days = [dt.date.fromisoformat(d) for d in pc.unique(fx_day(orders["event_ts"])).to_pylist()]
    currencies = pc.unique(orders["currency"]).to_pylist()
    pairs = [(c, d) for c in currencies for d in days]
    rates = pa.table(
        {
            "currency": [c for c, _ in pairs],
            "fx_day": [d.isoformat() for _, d in pairs],
            "usd_rate": [usd_rate(c, d) for c, d in pairs],
        }
    )
    global_orders = global_orders_table(regional, rates)
    replace_window(str(lake / "global_orders"), global_orders, window)
    replace_window(str(lake / "daily_revenue"), daily_revenue_table(global_orders), window)


def measure(variant: str, days: int, orders_per_day: int) -> dict:
    import psutil

    with tempfile.TemporaryDirectory(prefix=f"bench-{variant}-") as scratch:
        command = [
            sys.executable,
            "-m",
            "pipeline_patterns.benchmark",
            "--run",
            variant,
            "--days",
            str(days),
            "--orders-per-day",
            str(orders_per_day),
            "--data-dir",
            scratch,
        ]
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        peak = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            parent = psutil.Process(child.pid)
            while not done.is_set():
                try:
                    tree = [parent, *parent.children(recursive=True)]
                    peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
                except psutil.Error:
                    pass  # a process of the tree ended between listing and reading it
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, stderr = child.communicate()
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
        if child.returncode != 0:
            raise RuntimeError(f"{variant} failed ({child.returncode}):\n{stderr[-3000:]}")
    rows = days * 4 * orders_per_day
    return {
        "variant": variant,
        "days": days,
        "rows": rows,
        "wall_s": round(wall, 1),
        "rows_per_s": round(rows / wall),
        "peak_rss_gib": round(peak / 2**30, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--orders-per-day", type=int, default=5000, help="per region")
    parser.add_argument("--run", choices=["dagster", "floor"], help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    first, last = REGIONS_FIRST_DAY, REGIONS_FIRST_DAY + dt.timedelta(days=args.days - 1)
    if args.run:
        runner = run_dagster if args.run == "dagster" else run_floor
        runner(pathlib.Path(args.data_dir), first, last, args.orders_per_day)
        return 0
    results = [measure(variant, args.days, args.orders_per_day) for variant in ("floor", "dagster")]
    for result in results:
        print(json.dumps(result))
    print(json.dumps({"days": args.days, "dagster_over_floor": round(results[1]["wall_s"] / results[0]["wall_s"], 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
