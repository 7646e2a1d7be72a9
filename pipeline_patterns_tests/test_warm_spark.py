"""The warm Spark Connect server's logic, without a server: its state file, when the watchdog
stops it, which process is `dagster dev`, and which master each setting chooses."""

import os
import subprocess
import sys

import pytest

from pipeline_patterns import environment
from pipeline_patterns.defs.resources import build_resources, spark_config
from pipeline_patterns.lib import warm_spark

STATE = warm_spark.ServerState(41234, warm_spark.Proc(11, 500), warm_spark.Proc(10, 499))


def test_the_state_file_round_trips_and_anything_incomplete_reads_as_no_server():
    assert warm_spark.parse_state(STATE.to_json()) == STATE
    assert STATE.url == "sc://127.0.0.1:41234"
    for text in ["", "{", '{"port": 41234}', STATE.to_json()[:-5], "null", '{"port": "x", "jvm": {}, "watchdog": {}}']:
        assert warm_spark.parse_state(text) is None, text


def test_runs_share_one_session_per_server_and_version_of_the_code(tmp_path):
    (tmp_path / "lib").mkdir()
    code = tmp_path / "lib" / "rules.py"
    code.write_text("RULES = 1\n")
    shared = warm_spark.session_id(STATE, tmp_path)
    assert warm_spark.session_id(STATE, tmp_path) == shared, "the next run joins the same session"
    assert str(warm_spark.uuid.UUID(shared, version=4)) == shared, "Spark Connect takes only a UUID"
    restarted = warm_spark.ServerState(STATE.port, warm_spark.Proc(12, 900), STATE.watchdog)
    assert warm_spark.session_id(restarted, tmp_path) != shared, "a new server, a new session"
    code.write_text("RULES = 2\n")
    assert warm_spark.session_id(STATE, tmp_path) != shared, "edited code: no worker of the old session runs it"


def test_the_watchdog_stops_the_server_when_dagster_dev_is_gone_or_no_run_used_it_for_the_idle_timeout():
    idle = {"idle_timeout_s": 600.0, "watched_alive": True}
    assert warm_spark.stop_reason(now=1000, last_busy=500, in_use=False, **idle) is None
    assert "600 s" in (warm_spark.stop_reason(now=1100, last_busy=500, in_use=False, **idle) or "")
    # a run holding the server keeps it, however long it has been running
    assert warm_spark.stop_reason(now=10_000, last_busy=500, in_use=True, **idle) is None
    gone = warm_spark.stop_reason(now=501, last_busy=500, in_use=True, idle_timeout_s=600, watched_alive=False)
    assert gone and "dagster dev" in gone


def test_dagster_dev_is_recognised_however_it_was_started():
    assert warm_spark.is_dev_cli(["/venv/bin/python3", "/venv/bin/dagster", "dev", "-w", "workspace.yaml"])
    assert warm_spark.is_dev_cli(["dagster", "dev"])
    assert warm_spark.is_dev_cli(["python", "-m", "dagster", "dev"])
    assert not warm_spark.is_dev_cli(["/venv/bin/python3", "-m", "dagster", "api", "grpc", "--dev"])
    assert not warm_spark.is_dev_cli(["/venv/bin/dagster", "asset", "materialize"])
    assert not warm_spark.is_dev_cli(["/venv/bin/dagster"])


def test_a_process_is_its_pid_and_start_time_and_a_finished_one_is_not_alive():
    me = warm_spark.process(os.getpid())
    assert me and warm_spark.alive(me)
    assert not warm_spark.alive(warm_spark.Proc(me.pid, me.start + 1)), "a reused pid is another process"
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = warm_spark.process(child.pid)
    child.wait()
    assert warm_spark.process(child.pid) is None and not (started and warm_spark.alive(started))
    assert warm_spark.dev_cli_process() is None, "pytest does not run under dagster dev"


def test_the_server_command_binds_loopback_with_the_embedded_settings():
    command = warm_spark.server_command(warm_spark.pathlib.Path("/spark"), 41234, {"spark.driver.memory": "2g"})
    assert command[:3] == [
        "/spark/bin/spark-submit",
        "--class",
        "org.apache.spark.sql.connect.service.SparkConnectServer",
    ]
    confs = dict(c.split("=", 1) for c in command[4::2])
    assert confs == {
        "spark.driver.memory": "2g",
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": "41234",
    }


@pytest.mark.parametrize(
    ("dev", "master", "expected"),
    [
        ("1", None, "warm"),  # under dagster dev: the warm server
        ("1", "local[*]", "local[*]"),  # one setting away: embedded
        ("1", "sc://host:15002", "sc://host:15002"),
        (None, None, "local[*]"),  # the CLI and tests: embedded
        (None, "warm", "warm"),  # the CLI's opt-in
    ],
)
def test_the_warm_server_is_the_default_under_dagster_dev_only(monkeypatch, tmp_path, dev, master, expected):
    for name, value in [(environment.DEV_CLI_VAR, dev), (environment.SPARK_MASTER_VAR, master)]:
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert environment.spark_master() == expected
    spark = build_resources(tmp_path)["spark"]
    assert spark.warm_server_dir == (str(tmp_path / "spark_server") if expected == "warm" else "")  # type: ignore[attr-defined]
    assert ("spark.master" in spark_config()) == expected.startswith("local")


def test_the_submit_arguments_confs_reach_the_server(monkeypatch):
    monkeypatch.setenv("PYSPARK_SUBMIT_ARGS", "--conf spark.sql.adaptive.enabled=false --conf a.b=c=d pyspark-shell")
    assert environment.spark_submit_confs() == {"spark.sql.adaptive.enabled": "false", "a.b": "c=d"}
    monkeypatch.delenv("PYSPARK_SUBMIT_ARGS")
    assert environment.spark_submit_confs() == {}
