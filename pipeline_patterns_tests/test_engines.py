"""The same daily graph on every Spark engine, chosen by PIPELINE_PATTERNS_SPARK_MASTER alone:
embedded (the default), a Spark Connect server, a standalone cluster, and a Connect server with
the multiprocess executor; each run's tables hold exactly what the embedded run writes.

Each engine is a real server started here from the pyspark wheel on 127.0.0.1 and stopped after
(exactly its process group); the graph runs as a user runs it, `dagster asset materialize`."""

import os
import pathlib
import re
import shutil
import subprocess
import sys

import dagster as dg
import pyspark
import pytest

from pipeline_patterns.defs.partitions import REGIONS, region_key
from pipeline_patterns.lib.delta_writes import content_hash, read_table
from pipeline_patterns.lib.quarantine import AUDIT_COLUMNS
from pipeline_patterns_tests.helpers import PROJECT_ROOT, TEST_ENV, free_port, materialize, serving

pytestmark = pytest.mark.integration
SPARK_HOME = pathlib.Path(pyspark.__file__).parent
FIRST, LAST = "2024-01-02", "2024-01-03"
TABLES = ["global_orders", "daily_revenue"] + [
    f"{layer}/{region_key(r)}" for r in REGIONS for layer in ("regional_orders", "quarantined_orders", "late_orders")
]
SERVER_ENV = {"SPARK_HOME": str(SPARK_HOME), "PYSPARK_PYTHON": sys.executable}


def hashes(data_dir: pathlib.Path) -> dict[str, str]:
    return {name: content_hash(read_table(str(data_dir / "lake" / name)), exclude=AUDIT_COLUMNS) for name in TABLES}


@pytest.fixture(scope="module")
def embedded(spark, tmp_path_factory) -> dict[str, str]:
    """The reference: the two days in process, on the suite's embedded Spark session."""
    data_dir = tmp_path_factory.mktemp("embedded")
    assert materialize(data_dir, dg.DagsterInstance.ephemeral(), first=FIRST, last=LAST).success
    return hashes(data_dir)


def run_graph(tmp_path: pathlib.Path, master: str, **env: str) -> pathlib.Path:
    """`dagster asset materialize` of the two days on `master`; returns the data dir."""
    home, data_dir = tmp_path / "home", tmp_path / "data"
    home.mkdir(exist_ok=True)
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    result = subprocess.run(
        [
            str(pathlib.Path(sys.executable).parent / "dagster"),
            *("asset", "materialize", "-m", "pipeline_patterns.definitions", "--select", "*daily_revenue"),
            *("--partition-range", f"{FIRST}...{LAST}"),
        ],
        cwd=PROJECT_ROOT,
        env={
            **os.environ,
            **TEST_ENV,
            "DAGSTER_HOME": str(home),
            "PIPELINE_PATTERNS_DATA_DIR": str(data_dir),
            "PIPELINE_PATTERNS_SPARK_MASTER": master,
            **env,
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return data_dir


@pytest.fixture(scope="module")
def connect_server(tmp_path_factory):
    """A Spark Connect server (the wheel's SparkConnectServer) with its own local JVM."""
    logs = tmp_path_factory.mktemp("connect")
    port = free_port()
    command = [
        str(SPARK_HOME / "bin" / "spark-submit"),
        "--class",
        "org.apache.spark.sql.connect.service.SparkConnectServer",
        "--master",
        "local[2]",
        "--driver-memory",
        "1g",
        "--conf",
        "spark.connect.grpc.binding.address=127.0.0.1",
        "--conf",
        f"spark.connect.grpc.binding.port={port}",
        "--conf",
        "spark.ui.enabled=false",
    ]
    with serving(command, port, logs / "connect.log", SERVER_ENV):
        yield f"sc://127.0.0.1:{port}", logs / "connect.log"


def connect_sessions(log: pathlib.Path) -> set[str]:
    """The client sessions the Connect server has served (from its log)."""
    return set(re.findall(r"sessionId: ([0-9a-f-]+)", log.read_text()))


@pytest.fixture(scope="module")
def standalone_cluster(tmp_path_factory):
    """A standalone Spark master and one worker (2 cores, 1 GiB), started from the wheel."""
    logs = tmp_path_factory.mktemp("standalone")
    port = free_port()
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    master = [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port)]
    worker_port = free_port()
    worker = [spark_class, "org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}"]
    worker += ["--host", "127.0.0.1", "--port", str(worker_port), "--cores", "2", "--memory", "1g"]
    env = {**SERVER_ENV, "SPARK_MASTER_WEBUI_PORT": str(free_port()), "SPARK_WORKER_WEBUI_PORT": str(free_port())}
    with (
        serving(master, port, logs / "master.log", env),
        serving(worker, worker_port, logs / "worker.log", {**env, "SPARK_WORKER_DIR": str(logs / "work")}),
    ):
        yield f"spark://127.0.0.1:{port}", logs / "worker.log"


def test_a_spark_connect_server_writes_what_the_embedded_session_writes_and_a_rerun_changes_nothing(
    embedded, connect_server, tmp_path
):
    url, log = connect_server
    before = connect_sessions(log)
    data_dir = run_graph(tmp_path, url)
    assert hashes(data_dir) == embedded
    assert connect_sessions(log) - before, "the run's Spark work went to the Connect server"
    data_dir = run_graph(tmp_path, url)  # the same days again, same lake
    assert hashes(data_dir) == embedded


def test_the_multiprocess_executor_on_a_connect_server_writes_the_same(embedded, connect_server, tmp_path):
    url, log = connect_server
    before = connect_sessions(log)
    data_dir = run_graph(tmp_path, url, PIPELINE_PATTERNS_EXECUTOR="multiprocess")
    assert hashes(data_dir) == embedded
    # the four regional steps and the fan-in each opened a client session of their own
    assert len(connect_sessions(log) - before) >= 5
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        [run] = instance.get_runs()
        starts = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)
    pids = {e.dagster_event.pid for e in starts if e.dagster_event}
    assert len(starts) == 9 and len(pids) == 9, "each step in a process of its own, none with a JVM of its own"


def test_a_standalone_cluster_writes_what_the_embedded_session_writes(embedded, standalone_cluster, tmp_path):
    url, log = standalone_cluster
    data_dir = run_graph(tmp_path, url)
    assert hashes(data_dir) == embedded
    assert "Asked to launch executor" in log.read_text(), "the cluster's worker ran the executors"
