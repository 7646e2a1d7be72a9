"""The Dagster instance and the circuit breakers in PostgreSQL (scaling out): a real server,
started here from Debian's packages on 127.0.0.1 and stopped after."""

import glob
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile

import dagster as dg
import psycopg2
import pytest
import yaml

from pipeline_patterns.lib.breaker import OPEN, CircuitBreaker
from pipeline_patterns_tests.helpers import PROJECT_ROOT, TEST_ENV, free_port, serving

pytestmark = pytest.mark.integration
VARIANT = PROJECT_ROOT / "pipeline_patterns" / "deploy" / "dagster.postgres.yaml"


def server_binary(name: str) -> str | None:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)
    return found


@pytest.fixture(scope="module")
def postgres_url():
    """A PostgreSQL server of its own (initdb into a temporary folder), as user `postgres` when
    the tests run as root (the server refuses root); yields the URL of an empty database."""
    initdb, postgres = server_binary("initdb"), server_binary("postgres")
    if not (initdb and postgres):
        pytest.skip("no PostgreSQL server here (initdb, postgres): .ci/run installs Debian's postgresql")
    root = pathlib.Path(tempfile.mkdtemp(prefix="pipeline-patterns-pg-", dir="/tmp"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    try:
        subprocess.run(
            [*as_user, initdb, "-D", str(root / "data"), "-U", "pipeline", "--auth=trust", "--no-sync"],
            check=True,
            capture_output=True,
        )
        port = free_port()
        command = [*as_user, postgres, "-D", str(root / "data"), "-h", "127.0.0.1", "-p", str(port), "-k", str(root)]
        log = pathlib.Path(tempfile.mkdtemp()) / "postgres.log"
        with serving(command, port, log, {}, stop=signal.SIGINT):  # SIGINT: fast shutdown
            admin = psycopg2.connect(f"postgresql://pipeline@127.0.0.1:{port}/postgres")
            admin.autocommit = True
            with admin.cursor() as cursor:
                cursor.execute("CREATE DATABASE dagster")
            admin.close()
            # SQLAlchemy 2.1 would pick psycopg 3 for postgresql://, which dagster-postgres 0.29 does not support
            yield f"postgresql+psycopg2://pipeline@127.0.0.1:{port}/dagster"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_postgres_variant_is_dagster_yaml_plus_its_storage():
    variant = yaml.safe_load(VARIANT.read_text())
    assert variant.pop("storage") == {"postgres": {"postgres_url": {"env": "PIPELINE_PATTERNS_POSTGRES_URL"}}}
    assert variant == yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())


def test_a_materialization_recorded_by_one_process_is_read_back_by_another(postgres_url, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(VARIANT, home / "dagster.yaml")
    env = {
        **os.environ,
        **TEST_ENV,
        "DAGSTER_HOME": str(home),
        "PIPELINE_PATTERNS_DATA_DIR": str(tmp_path / "data"),
        "PIPELINE_PATTERNS_POSTGRES_URL": postgres_url,
    }
    landed = subprocess.run(
        [
            str(pathlib.Path(sys.executable).parent / "dagster"),
            *("asset", "materialize", "-m", "pipeline_patterns.definitions"),
            *("--select", "raw_orders/us_east", "--partition", "2024-01-02"),
        ],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert landed.returncode == 0, landed.stderr[-3000:]
    monkeypatch.setenv("PIPELINE_PATTERNS_POSTGRES_URL", postgres_url)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        [run] = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.SUCCESS
        [record] = instance.fetch_materializations(dg.AssetKey(["raw_orders", "us_east"]), limit=5).records
        assert record.partition_key == "2024-01-02" and record.run_id == run.run_id
        assert record.asset_materialization.metadata["files"].value > 0


OPEN_IT = """
import sys
from pipeline_patterns.lib.breaker import CircuitBreaker
breaker = CircuitBreaker("orders_source", sys.argv[1], failure_threshold=1, recovery_timeout=3600)
try:
    breaker.call(lambda: (_ for _ in ()).throw(TimeoutError("the feed timed out")))
except TimeoutError:
    pass
print(breaker.status().state)
"""


def test_a_breaker_opened_by_one_process_is_seen_open_by_another(postgres_url):
    opened = subprocess.run([sys.executable, "-c", OPEN_IT, postgres_url], capture_output=True, text=True, timeout=60)
    assert opened.stdout.strip() == OPEN, opened.stderr
    status = CircuitBreaker("orders_source", postgres_url).status()
    assert status.state == OPEN and status.retry_after > 3500
    listed = subprocess.run(
        [str(pathlib.Path(sys.executable).parent / "pipeline-patterns"), "breaker", "status", "orders_source"],
        env={**os.environ, "PIPELINE_PATTERNS_BREAKER_STORE": postgres_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(listed.stdout)["state"] == OPEN, listed.stderr
