"""Under a real `dagster dev`, runs launched as the UI launches them share one warm Spark Connect
server, write what the embedded session writes, fail clearly when the server dies under them,
and leave no JVM or watchdog behind once `dagster dev` stops, by SIGTERM or by SIGKILL.

Each `dagster dev` is started here on 127.0.0.1 with an instance and data dir of its own, and
stopped after (exactly its process group); the server is started by the code location itself."""

import concurrent.futures
import contextlib
import os
import pathlib
import shutil
import signal
import sys
import time

import pytest

from pipeline_patterns.benchmark import graphql, launch_day, repository, wait_for_run
from pipeline_patterns.lib import warm_spark
from pipeline_patterns_tests.helpers import PROJECT_ROOT, TEST_ENV, free_port, interruptible, lake_hashes, serving

pytestmark = pytest.mark.integration

SENSORS = """
query ($repo: RepositorySelector!) {
  sensorsOrError(repositorySelector: $repo) { ... on Sensors { results { name sensorState { id status } } } }
}"""
STOP_SENSOR = "mutation ($id: String!) { stopSensor(id: $id) { __typename } }"
FAILURES = """
query ($id: ID!) {
  logsForRun(runId: $id) {
    ... on EventConnection { events { ... on ExecutionStepFailureEvent { stepKey error { message causes { message } } } } }
  }
}"""


@contextlib.contextmanager
def dagster_dev(tmp_path: pathlib.Path):
    """`dagster dev` with a temporary DAGSTER_HOME (the project's dagster.yaml) and data dir, at
    the test volume; yields its GraphQL url, data dir and process. Its sensors are stopped, so
    only the test's runs use the server."""
    home, data_dir = tmp_path / "home", tmp_path / "data"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    env = {**TEST_ENV, "DAGSTER_HOME": str(home), "PIPELINE_PATTERNS_DATA_DIR": str(data_dir)}
    dagster = pathlib.Path(sys.executable).parent / "dagster"
    command = [str(dagster), "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)]
    with serving(interruptible(command), port, tmp_path / "dagster_dev.log", env, cwd=home) as process:
        url = f"http://127.0.0.1:{port}/graphql"
        stop_sensors(url)
        yield url, data_dir, process


def stop_sensors(url: str) -> None:
    """Stop every running sensor, as a click in the UI does."""
    for sensor in graphql(url, SENSORS, repo=repository(url))["sensorsOrError"]["results"]:
        attempts = 5 if sensor["sensorState"]["status"] == "RUNNING" else 0
        for attempt in range(attempts):  # the daemon's own sensor ticks may hold SQLite's lock a moment
            try:
                graphql(url, STOP_SENSOR, id=sensor["sensorState"]["id"])
                break
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
                time.sleep(1)


def server_processes(state_dir: pathlib.Path) -> dict[int, str]:
    """Every live process of the server of `state_dir` (watchdog, JVM, its Python workers), by the
    marker the watchdog puts in their environment: pid -> command line."""
    marker = f"{warm_spark.MARKER_VAR}={state_dir}".encode()
    found = {}
    for proc in pathlib.Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if marker in (proc / "environ").read_bytes().split(b"\0") and warm_spark.process(int(proc.name)):
                found[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    return found


def left_after(state_dir: pathlib.Path, seconds: float = 30) -> dict[int, str]:
    """The server's processes still alive after `seconds` (empty as soon as none is)."""
    deadline = time.time() + seconds
    while (found := server_processes(state_dir)) and time.time() < deadline:
        time.sleep(0.5)
    return found


def jvms(state_dir: pathlib.Path) -> list[int]:
    return [pid for pid, command in server_processes(state_dir).items() if command.split()[0].endswith("/java")]


def test_runs_share_one_warm_server_a_server_lost_mid_run_fails_that_run_and_sigterm_leaves_nothing(
    clean_days, tmp_path
):
    with dagster_dev(tmp_path) as (url, data_dir, dev):
        state_dir = data_dir / "spark_server"

        # two one-day runs of the daily graph: the first starts the server, the second uses it
        first = wait_for_run(url, launch_day(url, "2024-01-02"))
        server = warm_spark.read_state(state_dir)
        second = wait_for_run(url, launch_day(url, "2024-01-03"))
        assert (first["status"], second["status"]) == ("SUCCESS", "SUCCESS")
        assert server and warm_spark.read_state(state_dir) == server
        assert jvms(state_dir) == [server.jvm.pid], "one JVM for both runs"
        found = server_processes(state_dir).items()
        daemons = [pid for pid, c in found if "pyspark.daemon" in c and warm_spark.parent_pid(pid) == server.jvm.pid]
        assert len(daemons) == 1, f"one session, one pool of Python workers for both runs: {daemons}"
        assert (state_dir / "server.log").read_text().count("started the Spark Connect server") == 1
        assert lake_hashes(data_dir) == lake_hashes(clean_days.data_dir), "what the embedded session writes"

        # the server dies while a run uses it: that run fails saying so, the next starts a fresh one
        run_id = launch_day(url, "2024-01-04")
        deadline = time.time() + 300
        while not any(s["stepKey"].startswith("regional_orders") for s in wait_steps(url, run_id)):
            assert time.time() < deadline, "the run never reached its Spark steps"
            time.sleep(0.2)
        os.kill(server.jvm.pid, signal.SIGKILL)
        lost = wait_for_run(url, run_id)
        assert lost["status"] == "FAILURE"
        messages = [
            " ".join(c["message"] for c in [e["error"], *e["error"]["causes"]]) for e in run_failures(url, run_id)
        ]
        assert any("WarmServerLost" in m and "stopped while this run was using it" in m for m in messages), messages
        assert any("the next run starts a fresh server" in m for m in messages), messages
        assert wait_for_run(url, launch_day(url, "2024-01-04"))["status"] == "SUCCESS"
        fresh = warm_spark.read_state(state_dir)
        assert fresh and fresh.jvm != server.jvm and jvms(state_dir) == [fresh.jvm.pid]

        # `kill PID` of dagster dev alone: it stops, and so do the watchdog and the JVM
        dev.send_signal(signal.SIGTERM)
        dev.wait(timeout=120)
        assert left_after(state_dir) == {}, "a JVM or watchdog outlived dagster dev"


def test_sigkill_of_dagster_dev_leaves_no_server(tmp_path):
    with dagster_dev(tmp_path) as (url, data_dir, dev):
        state_dir = data_dir / "spark_server"
        assert wait_for_run(url, launch_day(url, "2024-01-02"))["status"] == "SUCCESS"
        assert len(jvms(state_dir)) == 1
        dev.kill()  # dagster dev alone, not its process group: nothing of it can clean up
        dev.wait()
        assert left_after(state_dir) == {}, "a JVM or watchdog outlived dagster dev"


# A stand-in for the JVM: listens on the port it is given, for the lock, idle and watchdog tests.
STAND_IN = "import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); time.sleep(600)"


def stand_in(port: int) -> list[str]:
    return [sys.executable, "-c", STAND_IN, str(port)]


def test_concurrent_first_runs_start_one_server_which_stops_once_no_run_has_held_it_for_the_idle_timeout(tmp_path):
    state_dir = tmp_path / "spark_server"
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        leases = list(
            pool.map(lambda _: warm_spark.acquire(state_dir, stand_in, watch=None, env={}, idle_timeout_s=1), range(4))
        )
    assert len({lease.state for lease in leases}) == 1
    assert (state_dir / "server.log").read_text().count("started the Spark Connect server") == 1
    time.sleep(3)
    assert warm_spark.alive(leases[0].state.jvm), "held by a run: never idle"
    for lease in leases:
        lease.release()
    assert left_after(state_dir) == {}
    assert "no run used it for 1 s" in (state_dir / "server.log").read_text()


def test_the_server_dies_with_its_watchdog_however_the_watchdog_dies(tmp_path):
    state_dir = tmp_path / "spark_server"
    lease = warm_spark.acquire(state_dir, stand_in, watch=None, env={})
    os.kill(lease.state.watchdog.pid, signal.SIGKILL)  # no clean-up can run: the kernel's PR_SET_PDEATHSIG
    assert left_after(state_dir) == {}
    lease.release()


def wait_steps(url: str, run_id: str) -> list[dict]:
    run = graphql(
        url, "query ($id: ID!) { runOrError(runId: $id) { ... on Run { stepStats { stepKey } } } }", id=run_id
    )
    return run["runOrError"]["stepStats"]


def run_failures(url: str, run_id: str) -> list[dict]:
    events = graphql(url, FAILURES, id=run_id)["logsForRun"]["events"]
    return [e for e in events if e.get("error")]
