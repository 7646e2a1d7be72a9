"""Test helpers: small, isolated pipelines over a data dir of the test's own, with test volumes
and fast retry and breaker timings (production timings would make the suite sleep)."""

import contextlib
import dataclasses
import functools
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping

import dagster as dg
import pyarrow as pa
from dagster_pyspark import PySparkResource

from pipeline_patterns import definitions
from pipeline_patterns.defs.checks import QUALITY_GATES, QualityGates
from pipeline_patterns.defs.late_data import rehome_requests
from pipeline_patterns.defs.partitions import REGIONS, region_key
from pipeline_patterns.defs.resilience import Breaker, RetrySettings
from pipeline_patterns.defs.resources import build_resources, spark_config
from pipeline_patterns.defs.sources import FxRates, OrdersSource
from pipeline_patterns.lib.delta_writes import content_hash, read_table
from pipeline_patterns.lib.quarantine import AUDIT_COLUMNS
from pipeline_patterns.lib.warm_spark import free_port  # noqa: F401 (the tests' servers take their ports from it)

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent
# Small volumes keep the suite fast; the benchmark runs the default volume and more.
TEST_ORDERS_PER_DAY = 400
# normal days pass, the simulator's collapsed days (2 % of the volume) fail
TEST_MIN_ORDERS = TEST_ORDERS_PER_DAY // 5  # as the code location sizes it for PIPELINE_PATTERNS_FEED_VOLUME
FAST_RETRIES = RetrySettings(base_delay=0.01, backoff_factor=2.0, max_delay=0.05, jitter=0.2, max_retries=6)
FAST_BREAKER_RECOVERY = 0.2
# A few hundred rows a region-day: the JIT's optimising compiler, a parallel garbage collector
# and Spark's adaptive plans and whole-stage code generation cost more CPU than they save (the
# suite is CPU-bound on two cores). Results do not depend on them: test_engines compares a Connect
# server on Spark's default SQL settings with runs on these. Every JVM the suite starts inherits
# them (conftest.py); SQL settings reach a subprocess's session through PYSPARK_SUBMIT_ARGS.
TEST_SQL_SETTINGS = {
    "spark.sql.adaptive.enabled": "false",
    "spark.sql.codegen.wholeStage": "false",
    # expressions interpreted, not compiled to Java by Janino first (Spark's own test suites use it)
    "spark.sql.codegen.factoryMode": "NO_CODEGEN",
}
TEST_JVM_ENV = {
    "JDK_JAVA_OPTIONS": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -XX:CICompilerCount=1",
    "PYSPARK_SUBMIT_ARGS": " ".join(f"--conf {k}={v}" for k, v in TEST_SQL_SETTINGS.items()) + " pyspark-shell",
}
# one core per worker (the two xdist workers fill the two cores; local[2] each oversubscribes them)
# and two shuffle partitions, not eight
TEST_SPARK_CONFIG = {
    **spark_config(),
    "spark.master": "local[1]",
    "spark.sql.shuffle.partitions": "2",
    **TEST_SQL_SETTINGS,
}
# Every table the daily graph writes, by its lake path.
LAYERS = ("regional_orders", "quarantined_orders", "late_orders")
TABLES = [f"{layer}/{region_key(r)}" for layer in LAYERS for r in REGIONS] + ["global_orders", "daily_revenue"]


def lake_table(data_dir: pathlib.Path, name: str) -> pa.Table:
    return read_table(str(data_dir / "lake" / name))


def lake_hashes(data_dir: pathlib.Path, names: list[str] = TABLES) -> dict[str, str]:
    """The content of each table, without the audit columns (run ids, times) a re-run changes."""
    return {name: content_hash(lake_table(data_dir, name), exclude=AUDIT_COLUMNS) for name in names}


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A lake built once per test session (conftest.py) and the runs that built it: read only."""

    data_dir: pathlib.Path
    instance: dg.DagsterInstance
    results: list[dg.ExecuteInProcessResult]

    @property
    def result(self) -> dg.ExecuteInProcessResult:
        return self.results[-1]

    def copy_to(self, target: pathlib.Path) -> pathlib.Path:
        """A writable copy of the data dir (landing, lake, breakers) for a test that changes it."""
        shutil.copytree(self.data_dir, target, symlinks=True)
        return target


# Subprocesses (`dagster asset materialize`, `dagster dev`) run at the same test volume.
TEST_ENV = {"PIPELINE_PATTERNS_FEED_VOLUME": str(TEST_ORDERS_PER_DAY)}


def fast_breaker(data_dir: pathlib.Path, **settings) -> Breaker:
    """A breaker in the test's data dir that recovers fast."""
    return Breaker(
        **{"store": str(data_dir / "breakers.sqlite"), "recovery_timeout": FAST_BREAKER_RECOVERY, **settings}
    )


def resilient(data_dir: pathlib.Path) -> dict[str, object]:
    """The fast retry and breaker settings of a dependency resource, for a test's own source."""
    return {"breaker": fast_breaker(data_dir), "retries": FAST_RETRIES}


class Uncomputed:
    """Stands for a Spark frame or session that must not be used: fails on any use."""

    def __getattr__(self, name):
        raise AssertionError(f"Spark was used ({name})")


def pipeline_resources(data_dir: pathlib.Path, **source_config) -> dict[str, object]:
    return {
        **build_resources(data_dir),
        "spark": PySparkResource(spark_config=TEST_SPARK_CONFIG),
        "quality_gates": QualityGates(min_orders_per_day=TEST_MIN_ORDERS),
        "orders_source": OrdersSource(
            **{
                "orders_per_day": TEST_ORDERS_PER_DAY,
                "corrections_file": str(data_dir / "source_corrections.json"),
                **resilient(data_dir),
                **source_config,
            }
        ),
        "fx_rates": FxRates(**resilient(data_dir)),
    }


# The code location's definitions, loaded once per test process (each load costs ~0.2 s and a run
# or sensor test needs them a hundred times); the tests give them their own resources.
loaded_defs = functools.cache(definitions.defs)
assets_and_checks = functools.cache(definitions.assets_and_checks)


def pipeline_defs(data_dir: pathlib.Path, **source_config) -> dg.Definitions:
    """The project's definitions over a data dir of the test's own."""
    loaded = loaded_defs()
    return dg.Definitions(
        assets=list(loaded.assets or []),
        asset_checks=list(loaded.asset_checks or []),
        jobs=list(loaded.jobs or []),
        sensors=list(loaded.sensors or []),
        resources=pipeline_resources(data_dir, **source_config),
        executor=dg.in_process_executor,
    )


def materialize(
    data_dir: pathlib.Path,
    instance: dg.DagsterInstance,
    *,
    partition: str | None = None,
    first: str | None = None,
    last: str | None = None,
    selection: str | list[str] | dg.AssetSelection | None = None,
    raise_on_error: bool = True,
    resources: dict[str, object] | None = None,
    tags: dict[str, str] | None = None,
    **source_config,
) -> dg.ExecuteInProcessResult:
    """Materialize the daily graph (or `selection`) for one partition, or a range [first, last]
    in ONE run, as a backfill does."""
    tags = dict(tags or {})
    if first:
        tags |= {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}
    return dg.materialize(
        assets_and_checks(),
        selection=selection or "*daily_revenue",
        partition_key=partition,
        tags=tags,
        resources={**pipeline_resources(data_dir, **source_config), **(resources or {})},
        instance=instance,
        raise_on_error=raise_on_error,
    )


def gate_evaluation(
    result: dg.ExecuteInProcessResult, region: str = "us-east", day: str | None = None
) -> dg.AssetCheckEvaluation:
    """A region's `quality_gates` verdict in a run: the run's own, or one day's of a range run.
    Each rule's outcome is its metadata entry: `.metadata[rule].value["passed"]`."""
    gates = [
        e
        for e in result.get_asset_check_evaluations()
        if e.check_name == QUALITY_GATES and e.asset_key.path == ["regional_orders", region_key(region)]
    ]
    if day is None and len(gates) == 1:  # a one-day run: its result is the day's own
        return gates[0]
    return next(e for e in gates if e.partition == day)


def run_late_data_requests(data_dir: pathlib.Path, instance: dg.DagsterInstance, requests: list[dg.RunRequest]) -> None:
    """Run in process what the late-data sensor requested, as the daemon would launch it: the
    fan-in of each stale block, with the request's range and reason tags."""
    for request in requests:
        materialize(
            data_dir,
            instance,
            partition=request.partition_key,
            selection=["global_orders", "daily_revenue"],
            tags=dict(request.tags),
        )


def catch_up_late_data(data_dir: pathlib.Path, instance: dg.DagsterInstance, ticks: int = 3) -> list[str]:
    """Tick the late-data sensor and run its requests until nothing is stale (at most `ticks`
    ticks); returns the blocks of days it re-homed. Fails if days are still stale or waiting."""
    blocks: list[str] = []
    for _ in range(ticks):
        requests, _ = rehome_requests(instance)
        if not requests:
            break
        run_late_data_requests(data_dir, instance, requests)
        blocks += [r.tags["pipeline_patterns/rehomes_days"] for r in requests]
    assert rehome_requests(instance) == ([], []), "still stale after the late-data runs"
    return blocks


def interruptible(command: list[str]) -> list[str]:
    """`command`, started with SIGINT's default action restored. pytest-xdist's workers ignore
    SIGINT and a child inherits that; Dagster then ignores SIGTERM too (it gives SIGTERM the
    SIGINT handler), so `dagster dev` would stop only when KILLed, after waiting 60 s."""
    restore = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", restore, *command]


@contextlib.contextmanager
def serving(
    command: list[str],
    port: int,
    log_path: pathlib.Path,
    env: Mapping[str, str],
    timeout: float = 180,
    stop: signal.Signals = signal.SIGTERM,
    cwd: pathlib.Path | None = None,
) -> Iterator[subprocess.Popen]:
    """A server started in a process group of its own, once it accepts connections on
    127.0.0.1:`port`; afterwards exactly that group is stopped (`stop`, then KILL)."""
    with log_path.open("w") as log:
        server = subprocess.Popen(
            command, cwd=cwd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.time() + timeout
            while True:
                assert server.poll() is None, f"{command[0]} exited:\n{log_path.read_text()[-3000:]}"
                assert time.time() < deadline, f"nothing on port {port} in {timeout} s:\n{log_path.read_text()[-3000:]}"
                with socket.socket() as probe:
                    if probe.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.5)
            yield server
        finally:
            with contextlib.suppress(ProcessLookupError):  # the group is gone already: nothing to stop
                os.killpg(server.pid, stop)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
