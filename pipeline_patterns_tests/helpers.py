"""Test helpers: small, isolated pipelines over a data dir of the test's own, with test volumes
and fast retry and breaker timings (production timings would make the suite sleep)."""

import contextlib
import hashlib
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping

import dagster as dg
import pyspark
from dagster_pyspark import PySparkResource

from pipeline_patterns.definitions import defs
from pipeline_patterns.defs.checks import QualityGates
from pipeline_patterns.defs.late_data import rehome_requests
from pipeline_patterns.defs.resilience import Breaker, RetrySettings
from pipeline_patterns.defs.resources import build_resources, spark_config
from pipeline_patterns.defs.sources import OrdersSource

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent
# Small volumes keep the suite fast; the benchmark runs the default volume and more.
TEST_ORDERS_PER_DAY = 400
# normal days pass, the simulator's collapsed days (2 % of the volume) fail
TEST_MIN_ORDERS = TEST_ORDERS_PER_DAY // 5  # as the code location sizes it for PIPELINE_PATTERNS_FEED_VOLUME
FAST_RETRIES = RetrySettings(base_delay=0.01, backoff_factor=2.0, max_delay=0.05, jitter=0.2, max_retries=6)
FAST_BREAKER_RECOVERY = 0.2
# A few hundred rows a region-day: the JIT's optimising compiler, a parallel garbage collector
# and Spark's adaptive plans and whole-stage code generation cost more CPU than they save, and the
# suite is CPU-bound on two cores (three one-day runs: 128 CPU s with the defaults, 63 without).
# Results do not depend on them: test_engines compares a Connect server on Spark's default SQL
# settings with runs on these. Every JVM the suite starts (its session, the CLI's, servers) inherits them
# (conftest.py); SQL settings reach a subprocess's session through PYSPARK_SUBMIT_ARGS.
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
# two shuffle partitions (one per core), not eight
TEST_SPARK_CONFIG = {
    **spark_config(),
    "spark.master": "local[2]",
    "spark.sql.shuffle.partitions": "2",
    **TEST_SQL_SETTINGS,
}
# Every JVM of the suite loads Spark's classes from one class-data archive (JDK 17's AppCDS),
# recorded from a small Spark workload by a process the suite starts first (conftest.py): a
# session then starts in 2.3-4.3 s instead of 5.4-9.1 s, and its first run is a few seconds shorter. A JVM started
# before the archive is there, or that cannot use it (another JDK, another classpath), loads its
# classes as usual.
CLASS_ARCHIVE_TRAINING = """
import os, pathlib, shutil, sys
from pyspark import SparkContext
from pyspark.sql import SparkSession, functions as F
from pipeline_patterns_tests.helpers import TEST_SPARK_CONFIG
archive, recording, data = sys.argv[1:]
builder = SparkSession.builder.config("spark.driver.extraJavaOptions", f"-XX:ArchiveClassesAtExit={recording}")
for key, value in TEST_SPARK_CONFIG.items():
    builder = builder.config(key, value)
spark = builder.getOrCreate()
(pathlib.Path(data) / "orders.csv").write_text("order_id,day,amount\\n1,2024-01-01,2.5\\n2,2024-01-02,3.0\\n1,2024-01-01,2.5\\n")
orders = spark.read.option("header", True).csv(f"{data}/orders.csv")
orders = orders.selectExpr("cast(order_id as long) order_id", "day", "cast(amount as double) amount")
orders = orders.repartition("day").persist()
orders.groupBy("day", "order_id").count().where("count > 1").groupBy("day").agg(F.collect_list("order_id")).collect()
orders.groupBy("day").applyInArrow(lambda key, table: table, orders.schema).toArrow()
orders.write.partitionBy("day").parquet(f"{data}/parquet")
spark.read.parquet(f"{data}/parquet").join(orders, ["order_id", "day"]).toArrow()
jvm = SparkContext._gateway.proc
spark.stop()
jvm.stdin.close()  # the JVM exits at the end of its input, and writes the archive as it exits
jvm.wait()
shutil.rmtree(data)
os.replace(recording, archive)  # whole or not at all, whoever else records it at the same time
"""


def class_archive() -> pathlib.Path:
    """Where the suite keeps the class-data archive of this java, this Spark installation and
    these options. An archive maps only into a JVM of the same java and the same classpath:
    pyspark's jars, where this environment installed them (another clone's venv has its own)."""
    java = shutil.which("java", path=f"{os.environ.get('JAVA_HOME', '')}/bin:{os.environ.get('PATH', '')}")
    jars = os.path.realpath(os.path.join(os.path.dirname(pyspark.__file__), "jars"))
    recorded_by = (
        f"{java and os.path.realpath(java)} {jars} {pyspark.__version__} {TEST_JVM_ENV} {CLASS_ARCHIVE_TRAINING}"
    )
    key = hashlib.sha256(recorded_by.encode()).hexdigest()[:12]
    return pathlib.Path(tempfile.gettempdir()) / "pipeline_patterns_tests" / f"spark-classes-{key}.jsa"


def class_archive_options(archive: pathlib.Path) -> str:
    """The test JVM options, with the classes from `archive` once it exists (silently without)."""
    return f"{TEST_JVM_ENV['JDK_JAVA_OPTIONS']} -Xlog:cds=off -Xlog:cds+dynamic=off -XX:SharedArchiveFile={archive}"


def record_class_archive(archive: pathlib.Path) -> subprocess.Popen:
    """Start recording `archive` in the background: a Spark session runs CLASS_ARCHIVE_TRAINING,
    and its JVM writes the classes it loaded as it exits."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    recording = archive.with_suffix(f".{os.getpid()}.tmp")
    return subprocess.Popen(
        [sys.executable, "-c", CLASS_ARCHIVE_TRAINING, str(archive), str(recording), tempfile.mkdtemp()],
        cwd=PROJECT_ROOT,
        env={**os.environ, **TEST_JVM_ENV, "JDK_JAVA_OPTIONS": f"{TEST_JVM_ENV['JDK_JAVA_OPTIONS']} -Xlog:cds=off"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop_recording(recording: subprocess.Popen) -> None:
    """Stop a recording still under way (the suite ended first), and remove its files."""
    if recording.poll() is None:
        os.killpg(recording.pid, signal.SIGKILL)  # exactly its process group
        recording.wait()
        *_, partial, data = recording.args
        pathlib.Path(partial).unlink(missing_ok=True)
        shutil.rmtree(data, ignore_errors=True)


# Subprocesses (`dagster asset materialize`, `dagster dev`) run at the same test volume.
TEST_ENV = {"PIPELINE_PATTERNS_FEED_VOLUME": str(TEST_ORDERS_PER_DAY)}


def pipeline_resources(data_dir: pathlib.Path, **source_config) -> dict[str, object]:
    store = str(data_dir / "breakers.sqlite")
    return {
        **build_resources(data_dir),
        "spark": PySparkResource(spark_config=TEST_SPARK_CONFIG),
        "quality_gates": QualityGates(min_orders_per_day=TEST_MIN_ORDERS),
        "orders_source": OrdersSource(
            **{
                "orders_per_day": TEST_ORDERS_PER_DAY,
                "corrections_file": str(data_dir / "source_corrections.json"),
                **source_config,
            }
        ),
        "source_breaker": Breaker(name="orders_source", store=store, recovery_timeout=FAST_BREAKER_RECOVERY),
        "fx_breaker": Breaker(name="fx_rates", store=store, recovery_timeout=FAST_BREAKER_RECOVERY),
        "source_retries": FAST_RETRIES,
        "fx_retries": FAST_RETRIES,
    }


def pipeline_defs(data_dir: pathlib.Path, **source_config) -> dg.Definitions:
    """The project's definitions over a data dir of the test's own."""
    return dg.Definitions(
        assets=list(defs.assets or []),
        asset_checks=list(defs.asset_checks or []),
        jobs=list(defs.jobs or []),
        sensors=list(defs.sensors or []),
        resources=pipeline_resources(data_dir, **source_config),
        executor=dg.in_process_executor,
    )


def all_assets() -> list[dg.AssetsDefinition]:
    """Every asset and standalone asset check of the code location."""
    return [a for a in defs.assets or [] if isinstance(a, dg.AssetsDefinition)] + list(defs.asset_checks or [])


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
        all_assets(),
        selection=selection or "*daily_revenue",
        partition_key=partition,
        tags=tags,
        resources={**pipeline_resources(data_dir, **source_config), **(resources or {})},
        instance=instance,
        raise_on_error=raise_on_error,
    )


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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serving(
    command: list[str],
    port: int,
    log_path: pathlib.Path,
    env: Mapping[str, str],
    timeout: float = 180,
    stop: signal.Signals = signal.SIGTERM,
) -> Iterator[subprocess.Popen]:
    """A server started in a process group of its own, once it accepts connections on
    127.0.0.1:`port`; afterwards exactly that group is stopped (`stop`, then KILL)."""
    with log_path.open("w") as log:
        server = subprocess.Popen(
            command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
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
