"""`dagster asset materialize` as a CI job runs it, and a run killed at any instant recovers."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import dagster as dg
import pytest

from pipeline_patterns.lib.delta_writes import content_hash, read_table
from pipeline_patterns_tests.helpers import PROJECT_ROOT, TEST_ENV, materialize

pytestmark = pytest.mark.integration

TABLES = [
    "regional_orders/us_east",
    "regional_orders/us_west",
    "regional_orders/eu_west",
    "regional_orders/ap_south",
    "global_orders",
    "daily_revenue",
]
# the dagster of the interpreter running the tests, whether or not its venv is activated
COMMAND = [
    str(pathlib.Path(sys.executable).parent / "dagster"),
    "asset",
    "materialize",
    "-m",
    "pipeline_patterns.definitions",
    "--select",
    "*daily_revenue",
    "--partition",
    "2024-01-02",
]


def environment(base: pathlib.Path) -> dict[str, str]:
    home = base / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    return {**os.environ, **TEST_ENV, "DAGSTER_HOME": str(home), "PIPELINE_PATTERNS_DATA_DIR": str(base / "data")}


def hashes(base: pathlib.Path) -> dict[str, str]:
    return {t: content_hash(read_table(str(base / "data" / "lake" / t))) for t in TABLES}


@pytest.fixture(scope="module")
def clean_run(spark, tmp_path_factory) -> pathlib.Path:
    """What one clean run of the day writes, at the same volume and settings, run in process
    (a second CLI run would prove nothing more and cost a process and a JVM start)."""
    base = tmp_path_factory.mktemp("clean")
    materialize(base / "data", dg.DagsterInstance.ephemeral(), partition="2024-01-02")
    return base


def test_one_day_from_the_cli_killed_mid_way_then_rerun_holds_exactly_what_a_clean_run_writes(clean_run, tmp_path):
    env = environment(tmp_path)
    run = subprocess.Popen(
        COMMAND, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    lake = tmp_path / "data" / "lake" / "regional_orders"
    deadline = time.time() + 120
    while not (lake.exists() and any(lake.iterdir())) and run.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)  # the run process and its Spark JVM, mid-run
    run.wait()
    assert not (tmp_path / "data" / "lake" / "daily_revenue").exists(), "killed too late to prove anything"
    rerun = subprocess.run(COMMAND, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    revenue = read_table(str(tmp_path / "data" / "lake" / "daily_revenue"))
    assert revenue["day"].to_pylist() == ["2024-01-02"] * 4
    assert sorted(revenue["region"].to_pylist()) == ["ap-south", "eu-west", "us-east", "us-west"]
    assert hashes(tmp_path) == hashes(clean_run)


def test_a_default_config_range_from_the_cli_finishes_the_ready_days_and_exits_non_zero_naming_the_held_one(tmp_path):
    command = [*COMMAND[:-2], "--partition-range", "2024-01-04...2024-01-06"]
    run = subprocess.run(command, cwd=PROJECT_ROOT, env=environment(tmp_path), capture_output=True, text=True)
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert "held 1 of 3 days of 2024-01-04...2024-01-06 (2 processed): 2024-01-05: us-east: quarantined" in output
    orders = read_table(str(tmp_path / "data" / "lake" / "global_orders"))
    assert sorted(set(orders["day"].to_pylist())) == ["2024-01-04", "2024-01-06"]
    events = [json.loads(line) for line in (tmp_path / "data" / "notifications.jsonl").read_text().splitlines()]
    held = [e for e in events if e["event"] == "days_held"]
    assert len(held) == 1 and list(held[0]["held"]) == ["2024-01-05"]
