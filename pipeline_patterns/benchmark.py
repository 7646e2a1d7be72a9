"""The benchmark: N days x 4 regions from the landing zone to daily_revenue, three ways (project, idiomatic PySpark, pyarrow).

Writes docs/benchmarks.md; what each variant measures: docs/backfills.md (Benchmark)."""

import argparse
import dataclasses
import datetime as dt
import functools
import json
import multiprocessing
import os
import pathlib
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

FIRST_DAY = dt.date(2024, 1, 1)
VARIANTS = ("pyarrow", "idiomatic", "project")
BIG_DAY = dt.date(2024, 1, 2)
# The only home of measured figures: rewritten by every measuring run, never edited by hand.
REPORT = pathlib.Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def land_big_day(root: pathlib.Path, rows: int) -> None:
    """One us-east day of `rows` valid orders, generated in Arrow (the simulator would take
    minutes for millions)."""
    import io

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    from pipeline_patterns.lib import landing

    ids = pc.cast(pa.array(range(rows), pa.int64()), pa.string())
    day = BIG_DAY.isoformat()
    table = pa.table(
        {
            "order_id": pc.binary_join_element_wise("o", ids, ""),
            "user_id": pc.binary_join_element_wise("u", ids, ""),
            **{
                name: pa.repeat(pa.scalar(value), rows)
                for name, value in [
                    ("region", "us-east"),
                    ("amount", "12.50"),
                    ("currency", "USD"),
                    ("event_ts", f"{day}T10:00:00Z"),
                    ("batch_id", "b00"),
                    ("delivered_at", f"{day}T12:00:00Z"),
                ]
            },
        }
    )
    buffer = io.BytesIO()
    pacsv.write_csv(table, buffer, pacsv.WriteOptions(quoting_style="none"))
    landing.land(root, "us-east", BIG_DAY, "benchmark", {"b00.csv": buffer.getvalue()})


def run_regional_day(landing_root: pathlib.Path, data_dir: pathlib.Path, window) -> None:
    import dagster as dg

    from pipeline_patterns.definitions import assets_and_checks
    from pipeline_patterns.defs.landing import LandingZone
    from pipeline_patterns.defs.resources import build_resources

    result = dg.materialize(
        assets_and_checks(),
        selection=["regional_orders/us_east", "quarantined_orders/us_east", "late_orders/us_east"],
        partition_key=BIG_DAY.isoformat(),
        resources={
            **build_resources(data_dir),
            "landing": LandingZone(root=str(landing_root)),
        },
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success


def _land_region(args: tuple[str, str, int, int]) -> None:
    from pipeline_patterns.lib import landing
    from pipeline_patterns.lib.simulated_feed import FeedSettings, region_day_files

    root, region, days, orders_per_day = args
    settings = FeedSettings(orders_per_day=orders_per_day)
    for i in range(days):
        day = FIRST_DAY + dt.timedelta(days=i)
        if landing.read_manifest(pathlib.Path(root), region, day) is None:
            landing.land(pathlib.Path(root), region, day, "benchmark", region_day_files(region, day, settings))


def land_feed(root: pathlib.Path, days: int, orders_per_day: int) -> float:
    """Land the default feed (bad region-days ON) for every region, in parallel processes
    (spawned: delta-rs must not be forked). Returns the seconds it took."""
    from pipeline_patterns.defs.partitions import REGIONS

    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_land_region, [(str(root), r, days, orders_per_day) for r in REGIONS])
    return time.perf_counter() - start


def run_project(landing_root: pathlib.Path, data_dir: pathlib.Path, window) -> None:
    import dagster as dg

    from pipeline_patterns.definitions import assets_and_checks
    from pipeline_patterns.defs.assets.global_merge import holds_days
    from pipeline_patterns.defs.landing import LandingZone
    from pipeline_patterns.defs.resources import build_resources

    last = window.end - dt.timedelta(days=1)
    result = dg.materialize(
        assets_and_checks(),
        selection=dg.AssetSelection.assets("daily_revenue").upstream() - dg.AssetSelection.groups("landing"),
        tags={
            "dagster/asset_partition_range_start": window.start.isoformat(),
            "dagster/asset_partition_range_end": last.isoformat(),
        },
        resources={
            **build_resources(data_dir),
            "landing": LandingZone(root=str(landing_root)),
        },
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    crashes = [e for e in result.get_step_failure_events() if not holds_days(e)]
    if crashes:
        raise RuntimeError(f"the run failed, not only holding days: {crashes[0].step_failure_data.error}")


def floor_settings() -> dict:
    """What the idiomatic floor shares with the project, computed by the harness so that the floor
    imports none of it: the embedded session's Spark settings, the gate bounds, the watermark."""
    from pipeline_patterns.defs.checks import QualityGates
    from pipeline_patterns.defs.resources import spark_config

    gates = QualityGates()
    return {
        "spark": spark_config(),
        "min_orders": gates.min_orders_per_day,
        "max_orders": gates.max_orders_per_day,
        "lateness": gates.allowed_lateness_days,
    }


def run_idiomatic(landing_root: pathlib.Path, data_dir: pathlib.Path, window, settings: dict) -> None:
    """The pipeline as a data engineer would first write it in PySpark, without the project's library
    (the simulator's FX rates imported as data only): read, newest delivery, gate, convert, aggregate."""
    import json

    from pyspark.sql import SparkSession, Window
    from pyspark.sql import functions as F

    from pipeline_patterns.lib.simulated_feed import BASE_USD_RATES, usd_rate

    builder = SparkSession.builder
    for key, value in settings["spark"].items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    first, last, lateness = window.start.isoformat(), window.end.isoformat(), settings["lateness"]
    files = [
        str(manifest.parent / name)
        for manifest in sorted(landing_root.glob("*/*/_manifest.json"))
        if first <= manifest.parent.name < last
        for name in json.loads(manifest.read_text())["files"]
    ]
    fields = "order_id user_id region amount currency event_ts batch_id delivered_at".split()
    raw = spark.read.csv(files, header=True, schema=", ".join(f"{c} STRING" for c in fields))
    newest = Window.partitionBy("region", "day", "order_id").orderBy(F.desc("delivered_at"), F.desc("batch_id"))
    orders = (
        raw.selectExpr(
            "trim(order_id) AS order_id",
            "trim(user_id) AS user_id",
            "regexp_extract(_metadata.file_path, '/([^/]+)/[0-9-]{10}/[^/]+/[^/]+$', 1) AS region",
            "try_cast(amount AS DOUBLE) AS amount",
            "upper(trim(currency)) AS currency",
            "try_to_timestamp(event_ts) AS event_ts",
            "batch_id",
            "try_to_timestamp(delivered_at) AS delivered_at",
            "regexp_extract(_metadata.file_path, '/([0-9-]{10})/[^/]+/[^/]+$', 1) AS day",
        )
        .withColumn("newest", F.row_number().over(newest))
        .where("newest = 1")
        .drop("newest")
        .cache()
    )
    known = ", ".join(f"'{c}'" for c in BASE_USD_RATES)
    bad_row = (
        "order_id IS NULL OR user_id IS NULL OR amount IS NULL OR amount < 0 OR event_ts IS NULL "
        f"OR delivered_at IS NULL OR currency NOT IN ({known})"
    )
    failed = (
        orders.groupBy("region", "day")
        .agg(F.count("*").alias("orders"), F.expr(f"count_if({bad_row})").alias("bad"))
        .where(f"bad > 0 OR orders < {settings['min_orders']} OR orders > {settings['max_orders']}")
        .select("region", "day")
        .collect()
    )
    dropped = sorted({row["day"] for row in failed})
    fx_days = [window.start + dt.timedelta(days=i) for i in range(-lateness, (window.end - window.start).days)]
    rates = spark.createDataFrame(
        [(c, d.isoformat(), usd_rate(c, d)) for c in BASE_USD_RATES for d in fx_days],
        "currency string, fx_day string, usd_rate double",
    )
    event_day = "date_format(least(to_date(event_ts), to_date(day)), 'yyyy-MM-dd')"
    global_orders = (
        orders.join(
            F.broadcast(spark.createDataFrame(failed, "region string, day string")), ["region", "day"], "left_anti"
        )
        .withColumn("event_day", F.expr(event_day))
        .where(f"datediff(to_date(day), to_date(event_day)) <= {lateness} AND event_day >= '{first}'")
        .where(~F.col("event_day").isin(dropped))
        .withColumn("fx_day", F.expr("date_format(event_ts, 'yyyy-MM-dd')"))
        .join(F.broadcast(rates), ["currency", "fx_day"])
        .selectExpr(*fields, "usd_rate", "round(amount * usd_rate, 2) AS amount_usd", "event_day AS day")
    )
    lake = data_dir / "lake"
    global_orders.write.mode("overwrite").partitionBy("day").parquet(str(lake / "global_orders"))
    (
        spark.read.parquet(str(lake / "global_orders"))
        .groupBy("day", "region")
        .agg(
            F.count("*").alias("orders"),
            F.round(F.sum("amount_usd"), 2).alias("revenue_usd"),
            F.countDistinct("user_id").alias("distinct_users"),
        )
        .write.mode("overwrite")
        .partitionBy("day")
        .parquet(str(lake / "daily_revenue"))
    )


def run_pyarrow(landing_root: pathlib.Path, data_dir: pathlib.Path, window) -> None:
    """Parse, deduplicate, convert, aggregate and write, a day at a time, with pyarrow alone."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from pipeline_patterns.defs.partitions import REGIONS
    from pipeline_patterns.lib import landing
    from pipeline_patterns.lib.delta_writes import commit_staged
    from pipeline_patterns.lib.fan_in import GLOBAL_SCHEMA, fx_day, global_orders_table
    from pipeline_patterns.lib.orders import DAILY_REVENUE_SCHEMA, REGIONAL_SCHEMA, daily_revenue_table
    from pipeline_patterns.lib.simulated_feed import usd_rate

    text = pacsv.ConvertOptions(column_types={n: pa.string() for n in REGIONAL_SCHEMA.names})
    skip = pacsv.ParseOptions(invalid_row_handler=lambda row: "skip")
    number = r"^-?[0-9]+(\.[0-9]+)?$"

    def instant(values):
        return pc.strptime(values, format="%Y-%m-%dT%H:%M:%SZ", unit="us", error_is_null=True)

    lake = data_dir / "lake"
    staging = {"global_orders": "staged-pyarrow", "daily_revenue": "staged-pyarrow"}
    for day in window.days:
        parts = []
        for region in REGIONS:
            for file in landing.landed_files(landing_root, region, [day]):
                raw = pacsv.read_csv(file, convert_options=text, parse_options=skip)
                amount = pc.if_else(pc.match_substring_regex(raw["amount"], number), raw["amount"], None)
                parts.append(
                    pa.table(
                        {
                            "order_id": raw["order_id"],
                            "user_id": raw["user_id"],
                            "region": raw["region"],
                            "amount": pc.cast(amount, pa.float64()),
                            "currency": raw["currency"],
                            "event_ts": pc.assume_timezone(instant(raw["event_ts"]), "UTC"),
                            "batch_id": raw["batch_id"],
                            "delivered_at": pc.assume_timezone(instant(raw["delivered_at"]), "UTC"),
                            "day": pa.array([day.isoformat()] * raw.num_rows, pa.string()),
                        },
                        schema=REGIONAL_SCHEMA,
                    )
                )
        orders = pa.concat_tables(parts).sort_by([("order_id", "ascending"), ("delivered_at", "descending")])
        ids = orders["order_id"].combine_chunks()
        first = pc.fill_null(pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1)), True)
        orders = orders.filter(pa.concat_arrays([pa.array([True]), first]))  # newest delivery of each order
        orders = orders.filter(pc.and_(pc.is_valid(orders["amount"]), pc.is_valid(orders["event_ts"])))
        pairs = pa.table({"currency": orders["currency"], "fx_day": fx_day(orders["event_ts"])})
        pairs = pairs.group_by(["currency", "fx_day"]).aggregate([])
        rates = pairs.append_column(
            "usd_rate",
            pa.array([usd_rate(c, dt.date.fromisoformat(d)) for c, d in zip(*pairs.to_pydict().values(), strict=True)]),
        )
        global_orders = global_orders_table([orders], rates)
        for table_name, table in (
            ("global_orders", global_orders),
            ("daily_revenue", daily_revenue_table(global_orders)),
        ):
            folder = lake / table_name / staging[table_name] / f"day={day.isoformat()}"
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(table.drop_columns(["day"]), folder / "part-0.parquet")
    for table_name, schema in (("global_orders", GLOBAL_SCHEMA), ("daily_revenue", DAILY_REVENUE_SCHEMA)):
        commit_staged(str(lake / table_name), staging[table_name], window, schema)


GRAPH = "*daily_revenue"  # what `dagster asset materialize --select` takes: the daily graph with its landing


def run_graph_in_memory(landing_root: pathlib.Path, data_dir: pathlib.Path, window) -> None:
    """`dagster asset materialize --select GRAPH --partition-range` on an ephemeral (in-memory)
    instance: the CLI's own command function (internal), so the runs differ only in the instance."""
    import click
    import dagster as dg
    from dagster._cli.asset import execute_materialize_command
    from dagster_shared.cli import PythonPointerOpts

    from pipeline_patterns.defs.assets.global_merge import holds_days

    last = window.end - dt.timedelta(days=1)
    with dg.DagsterInstance.ephemeral() as instance:
        try:
            execute_materialize_command(
                instance=instance,
                select=GRAPH,
                partition=None,
                partition_range=f"{window.start}...{last}",
                config=(),
                config_json=None,
                python_pointer_opts=PythonPointerOpts(module_name="pipeline_patterns.definitions"),
            )
        except click.ClickException:  # the run failed: only by holding days, as a default-config range does
            run_id = instance.get_runs(limit=1)[0].run_id
            failures = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records
            events = [r.event_log_entry.dagster_event for r in failures]
            if not events or any(e is None or not holds_days(e) for e in events):
                raise


def instance_cost(days: int) -> dict:
    """The same CLI range run of GRAPH with a fresh SQLite DAGSTER_HOME holding the project's
    dagster.yaml, and on an in-memory instance: each twice, in the order A B B A (the machine may be
    shared), each in a fresh process and data dir; the faster of each pair is reported."""
    walls: dict[str, list[float]] = {"sqlite": [], "in_memory": []}
    with tempfile.TemporaryDirectory(prefix="bench-instance-") as scratch:
        for i, name in enumerate(("sqlite", "in_memory", "in_memory", "sqlite")):
            walls[name].append(_range_run(name, days, pathlib.Path(scratch) / f"{i}-{name}"))
            if i == 0:
                stored = _check_records(pathlib.Path(scratch) / f"{i}-{name}" / "dagster_home")
    sqlite, in_memory = min(walls["sqlite"]), min(walls["in_memory"])
    return {
        "instance_cost_days": days,
        "sqlite_s": round(sqlite, 1),
        "in_memory_s": round(in_memory, 1),
        "sqlite_over_in_memory": round(sqlite / in_memory, 2),
        "all_runs_s": " / ".join(f"{n} " + ", ".join(f"{w:.1f}" for w in ws) for n, ws in walls.items()),
        **stored,
    }


def _range_run(name: str, days: int, base: pathlib.Path) -> float:
    """Seconds of one range run of GRAPH over the first `days` days into `base`."""
    root = REPORT.parent.parent
    last = FIRST_DAY + dt.timedelta(days=days - 1)
    data_dir, home = base / "data", base / "dagster_home"
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"} | {"PIPELINE_PATTERNS_DATA_DIR": str(data_dir)}
    if name == "sqlite":
        home.mkdir(parents=True)
        (home / "dagster.yaml").write_text((root / "dagster.yaml").read_text())
        env["DAGSTER_HOME"] = str(home)
        command = [str(pathlib.Path(sys.executable).parent / "dagster"), "asset", "materialize"]
        command += ["-m", "pipeline_patterns.definitions", "--select", GRAPH]
        command += ["--partition-range", f"{FIRST_DAY}...{last}"]
    else:  # the same command on an in-memory instance (GRAPH lands the feed itself)
        command = [sys.executable, "-m", "pipeline_patterns.benchmark", "--run", "graph_in_memory"]
        command += ["--days", str(days), "--landing", str(data_dir / "landing"), "--data-dir", str(data_dir)]
    start = time.perf_counter()
    run = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    held = f"days of {FIRST_DAY}...{last}" in run.stdout + run.stderr  # a default-config range holds days
    if run.returncode != 0 and not (name == "sqlite" and held):
        raise RuntimeError(f"{name} failed ({run.returncode}):\n{run.stderr[-3000:]}")
    return wall


def _check_records(home: pathlib.Path) -> dict:
    """What the SQLite instance stored of the checks: evaluation events, the records Dagster planned
    (one per check and day of the range) and those never resolved, by check."""
    import collections

    import dagster as dg

    from pipeline_patterns.definitions import defs

    with dg.DagsterInstance.from_config(str(home)) as instance:
        stored = instance.get_records_for_run(
            run_id=instance.get_runs(limit=1)[0].run_id,
            of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION,
            limit=1_000_000,
        ).records
        records = [
            (key, r)
            for key in defs().resolve_asset_graph().asset_check_keys
            for r in instance.event_log_storage.get_asset_check_execution_history(key, limit=100_000)
        ]
    unresolved = collections.Counter(key.to_user_string() for key, r in records if r.status.value == "PLANNED")
    return {
        "check_evaluations_stored": len(stored),
        "check_records_planned": len(records),
        "left_unresolved": ", ".join(f"{k} ({n})" for k, n in sorted(unresolved.items())) or "none",
    }


@dataclasses.dataclass(frozen=True)
class Measured:
    variant: str
    days: int
    rows: int
    wall_s: float
    peak_pss_gib: float

    @property
    def rows_per_s(self) -> int:
        return round(self.rows / self.wall_s)


def measure(variant: str, landing_root: pathlib.Path, days: int, orders_per_day: int) -> Measured:
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
            "--landing",
            str(landing_root),
            "--data-dir",
            scratch,
        ]
        if variant == "idiomatic":
            command += ["--settings", json.dumps(floor_settings())]
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        peak = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            parent = psutil.Process(child.pid)
            while not done.is_set():
                try:
                    # a JVM caught mid-spawn of a Python worker shows as a second `java` sharing
                    # its memory: not a process of its own
                    tree = [
                        p
                        for p in [parent, *parent.children(recursive=True)]
                        if not (p.name() == "java" and p.parent() is not None and p.parent().name() == "java")
                    ]
                    # PSS, not RSS: a forked Python worker (and a JVM mid-fork) shares pages with
                    # its parent, which a sum of RSS would count twice
                    peak = max(peak, sum(p.memory_full_info().pss for p in tree if p.is_running()))
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
    return Measured(variant, days, days * 4 * orders_per_day, round(wall, 1), round(peak / 2**30, 2))


# --- One click in the UI under `dagster dev` (--ui-click): the warm Spark Connect server's case ---
UI_CLICK_DAY = "2024-01-02"
LOCATION = "pipeline_patterns"
REPOSITORIES = "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"
LAUNCH_RUN = """
mutation ($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""
RUN = """
query ($id: ID!) {
  runOrError(runId: $id) {
    ... on Run { status startTime endTime stepStats { stepKey startTime endTime } }
  }
}"""
RUN_DONE = {"SUCCESS", "FAILURE", "CANCELED"}


def graphql(url: str, query: str, **variables: object) -> dict:
    """One GraphQL request to the webserver, as the UI sends it; errors raise."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        url, json.dumps({"query": query, "variables": variables}).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.load(response)
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"GraphQL {error.code}: {error.read().decode(errors='replace')[:3000]}") from error
    if body.get("errors"):
        raise RuntimeError(f"GraphQL errors: {body['errors']}")
    return body["data"]


def repository(url: str) -> dict:
    """The code location's repository selector, once the webserver has loaded it."""
    deadline = time.time() + 180
    while True:
        nodes = graphql(url, REPOSITORIES)["repositoriesOrError"].get("nodes", [])
        names = [n["name"] for n in nodes if n["location"]["name"] == LOCATION]
        if names:
            return {"repositoryLocationName": LOCATION, "repositoryName": names[0]}
        if time.time() > deadline:
            raise TimeoutError(f"code location {LOCATION} not loaded in 180 s")
        time.sleep(1)


def launch_day(url: str, day: str, job: str = "daily_orders") -> str:
    """What the UI's Materialize of one partition of `job` sends; returns the run id."""
    selector = {**repository(url), "jobName": job}
    params = {"selector": selector, "executionMetadata": {"tags": [{"key": "dagster/partition", "value": day}]}}
    result = graphql(url, LAUNCH_RUN, params=params)["launchRun"]
    if result["__typename"] != "LaunchRunSuccess":
        raise RuntimeError(f"launching {job} {day}: {result}")
    return result["run"]["runId"]


def wait_for_run(url: str, run_id: str, timeout: float = 900) -> dict:
    """The run once it has ended: status, start and end times, its steps' times."""
    deadline = time.time() + timeout
    while (run := graphql(url, RUN, id=run_id)["runOrError"])["status"] not in RUN_DONE:
        if time.time() > deadline:
            raise TimeoutError(f"run {run_id} still {run['status']} after {timeout} s")
        time.sleep(0.2)
    return run


def ui_click(url: str, day: str) -> dict:
    """Seconds from the launch request to the run's success, and where they went."""
    clicked = time.time()
    run = wait_for_run(url, launch_day(url, day))
    if run["status"] != "SUCCESS":
        raise RuntimeError(f"the run of {day} ended {run['status']}")
    steps = sorted((s for s in run["stepStats"] if s["startTime"] and s["endTime"]), key=lambda s: s["startTime"])
    by_asset: dict[str, float] = {}  # raw_orders, regional_orders (four steps each), the fan-in step
    for step in steps:
        key = step["stepKey"].split("__")[0]
        by_asset[key] = by_asset.get(key, 0.0) + step["endTime"] - step["startTime"]
    return {
        "click_to_data_s": round(run["endTime"] - clicked, 1),
        "to_run_start_s": round(run["startTime"] - clicked, 1),  # queue, run worker, definitions
        "to_first_step_s": round(steps[0]["startTime"] - run["startTime"], 1),
        **{f"{key}_s": round(seconds, 1) for key, seconds in by_asset.items()},
    }


def measure_ui_clicks(orders_per_day: int, day: str = UI_CLICK_DAY) -> list[dict]:
    """`dagster dev` on a temporary instance (the project's dagster.yaml) and data dir; one day of
    the daily graph (landing included) launched twice through GraphQL: cold server, then warm."""
    import shutil
    import signal
    import socket
    import urllib.request

    root = pathlib.Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="bench-ui-click-") as scratch:
        home, data_dir = pathlib.Path(scratch, "home"), pathlib.Path(scratch, "data")
        home.mkdir()
        shutil.copy(root / "dagster.yaml", home / "dagster.yaml")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = {**os.environ, "DAGSTER_HOME": str(home), "PIPELINE_PATTERNS_DATA_DIR": str(data_dir)}
        env["PIPELINE_PATTERNS_FEED_VOLUME"] = str(orders_per_day)
        dagster = pathlib.Path(sys.executable).parent / "dagster"
        command = [str(dagster), "dev", "-w", str(root / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)]
        with (home / "dagster_dev.log").open("w") as log:
            server = subprocess.Popen(
                command, cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            deadline = time.time() + 180
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
                        break
                except OSError:
                    if server.poll() is not None or time.time() > deadline:
                        raise RuntimeError((home / "dagster_dev.log").read_text()[-3000:]) from None
                    time.sleep(1)
            url = f"http://127.0.0.1:{port}/graphql"
            return [{"click": click, "day": day, **ui_click(url, day)} for click in ("cold server", "warm server")]
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=120)


def write_report(records: list[dict], argv: list[str], path: pathlib.Path = REPORT) -> pathlib.Path:
    """Overwrite `path` with what the benchmark printed, one Markdown table per kind of record,
    headed with the UTC date, the commit, the command line and the machine's core count."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def git(*command: str) -> str:
        return subprocess.run(["git", *command], cwd=path.parent, capture_output=True, text=True, check=True).stdout

    try:
        commit = git("rev-parse", "--short", "HEAD").strip()
        if git("status", "--porcelain", "--untracked-files=no").strip():
            commit += " with uncommitted changes"
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown (not a git checkout)"
    lines = [
        "# Benchmarks",
        "",
        f"Written by `python -m pipeline_patterns.benchmark` on {dt.datetime.now(dt.UTC):%Y-%m-%d} (UTC), "
        f"commit {commit}, on a machine with {os.cpu_count()} cores. What each variant measures: "
        "[backfills.md](backfills.md#benchmark).",
        "",
        "```bash",
        shlex.join(["python", "-m", "pipeline_patterns.benchmark", *argv]),
        "```",
    ]
    tables: dict[tuple[str, ...], list[dict]] = {}
    for record in records:
        tables.setdefault(tuple(record), []).append(record)
    for columns, rows in tables.items():
        lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, nargs="+", help="days of each variant's range (default 30 90 alone)")
    parser.add_argument("--orders-per-day", type=int, default=5000, help="per region")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--landing", help="a landing zone to reuse (else a temporary one)")
    parser.add_argument("--big-day", type=int, nargs="+", help="orders of one region-day to measure instead")
    parser.add_argument("--instance-cost", type=int, nargs="+", help="days of a CLI range: SQLite vs in-memory")
    parser.add_argument("--ui-click", action="store_true", help="one day twice through dagster dev: cold, warm")
    parser.add_argument("--run", choices=[*VARIANTS, "regional_day", "graph_in_memory"], help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--settings", type=json.loads, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.days is None:  # the modes below combine into one report; the variants alone by default
        args.days = [] if (args.instance_cost or args.ui_click or args.big_day) else [30, 90]
    if args.run:
        from pipeline_patterns.lib.day_window import DayWindow

        window = DayWindow(FIRST_DAY, FIRST_DAY + dt.timedelta(days=args.days[0]))
        runners: dict[str, Callable[..., None]] = {
            "project": run_project,
            "idiomatic": functools.partial(run_idiomatic, settings=args.settings),
            "pyarrow": run_pyarrow,
            "regional_day": run_regional_day,
            "graph_in_memory": run_graph_in_memory,
        }
        runners[args.run](pathlib.Path(args.landing), pathlib.Path(args.data_dir), window)
        return 0
    records: list[dict] = []

    def emit(record: dict) -> None:
        print(json.dumps(record), flush=True)
        records.append(record)

    if args.instance_cost:
        for days in args.instance_cost:
            emit(instance_cost(days))
    if args.ui_click:
        for record in measure_ui_clicks(args.orders_per_day):
            emit(record)
    for rows in args.big_day or []:
        with tempfile.TemporaryDirectory(prefix="bench-big-day-") as scratch:
            land_big_day(pathlib.Path(scratch), rows)
            result = measure("regional_day", pathlib.Path(scratch), 1, rows // 4)
            emit({"region_day_rows": rows, "wall_s": result.wall_s, "peak_pss_gib": result.peak_pss_gib})
    with tempfile.TemporaryDirectory(prefix="bench-landing-") as scratch:
        landing_root = pathlib.Path(args.landing or scratch)
        if args.days:
            seconds = land_feed(landing_root, max(args.days), args.orders_per_day)
            emit({"landed_days": max(args.days), "landing_s": round(seconds, 1)})
        for days in sorted(args.days):
            results = {v: measure(v, landing_root, days, args.orders_per_day) for v in args.variants}
            for result in results.values():
                emit({**dataclasses.asdict(result), "rows_per_s": result.rows_per_s})
            if "project" in results and len(results) > 1:
                project = results["project"]
                emit(
                    {
                        "days": days,
                        **{
                            f"project_over_{v}": round(project.wall_s / r.wall_s, 2)
                            for v, r in results.items()
                            if v != "project"
                        },
                    }
                )
    write_report(records, sys.argv[1:] if argv is None else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
