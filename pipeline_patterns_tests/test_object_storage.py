"""The landing zone and the lake on an S3-compatible object store (moto's server, started here on
127.0.0.1), chosen by configuration only (PIPELINE_PATTERNS_OBJECT_STORE and the AWS_* variables):
two days of the graph hold exactly what the same days hold on a local disk, a re-run changes
nothing, and two writers racing on one window are serialised by conditional put (delta-rs owns
the log; Spark's executors move the bytes with pyarrow, the wheel having no S3 connector)."""

import datetime as dt
import pathlib
import sys
import threading
from collections.abc import Iterator

import dagster as dg
import pyarrow as pa
import pytest
from dagster_deltalake import S3Config

from pipeline_patterns.defs.lake import Lake
from pipeline_patterns.defs.partitions import REGIONS, region_key
from pipeline_patterns.lib import landing
from pipeline_patterns.lib.day_window import DayWindow
from pipeline_patterns.lib.delta_writes import content_hash, read_table, table_files
from pipeline_patterns.lib.quarantine import AUDIT_COLUMNS
from pipeline_patterns.lib.spark_tables import read_window, write_window
from pipeline_patterns_tests.helpers import free_port, materialize, serving

pytestmark = pytest.mark.integration
FIRST, LAST = "2024-01-02", "2024-01-03"
TABLES = ["global_orders", "daily_revenue"] + [
    f"{layer}/{region_key(r)}" for r in REGIONS for layer in ("regional_orders", "quarantined_orders", "late_orders")
]


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[S3Config]:
    """A moto S3 server of this module's own, with a bucket `lake`; stopped afterwards."""
    import boto3

    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with serving([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], port, log, env={}):
        endpoint = f"http://127.0.0.1:{port}"
        config = S3Config(endpoint=endpoint, access_key_id="test", secret_access_key="test", region="us-east-1")
        boto3.client(
            "s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
        ).create_bucket(Bucket="lake")
        yield config


def _lake(s3: S3Config, prefix: str) -> Lake:
    return Lake(uri=f"s3://lake/{prefix}", storage=s3)


def _hashes(lake: Lake) -> dict[str, str]:
    return {
        name: content_hash(read_table(f"{lake.uri}/{name}", storage_options=lake.options()), exclude=AUDIT_COLUMNS)
        for name in TABLES
    }


def _run(data_dir: pathlib.Path) -> dg.ExecuteInProcessResult:
    return materialize(data_dir, dg.DagsterInstance.ephemeral(), first=FIRST, last=LAST)


def test_two_days_on_object_storage_equal_the_local_run_and_a_rerun_changes_nothing(spark, s3, tmp_path, monkeypatch):
    _run(tmp_path / "local")
    local = {
        name: content_hash(read_table(str(tmp_path / "local" / "lake" / name)), exclude=AUDIT_COLUMNS)
        for name in TABLES
    }
    monkeypatch.setenv("PIPELINE_PATTERNS_OBJECT_STORE", "s3://lake/graph")
    for variable, value in [
        ("AWS_ENDPOINT_URL", s3.endpoint),
        ("AWS_ACCESS_KEY_ID", s3.access_key_id),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_access_key),
        ("AWS_REGION", s3.region),
    ]:
        monkeypatch.setenv(variable, value)
    lake = _lake(s3, "graph/lake")
    _run(tmp_path / "s3")
    on_s3 = _hashes(lake)
    assert on_s3 == local
    files = table_files(f"{lake.uri}/global_orders", storage_options=lake.options())
    assert files and all(f.startswith("s3://lake/graph/lake/global_orders/") for f in files)
    manifest = landing.read_manifest("s3://lake/graph/landing", "us-east", dt.date(2024, 1, 2), lake.options())
    assert manifest is not None and len(manifest.files) > 1
    assert not (tmp_path / "s3" / "lake").exists() and not (tmp_path / "s3" / "landing").exists()
    _run(tmp_path / "s3")
    assert _hashes(lake) == on_s3


def test_two_writers_racing_on_one_window_are_serialised(spark, s3):
    lake = _lake(s3, "race")
    uri, options = f"{lake.uri}/t", lake.options()
    schema = pa.schema([("n", pa.int64()), ("day", pa.string())])
    window = DayWindow(dt.date(2024, 1, 1), dt.date(2024, 1, 3))
    frame = lambda writer: spark.createDataFrame(  # noqa: E731
        [(writer * 100 + i, d) for i in range(5) for d in ("2024-01-01", "2024-01-02")], "n long, day string"
    )
    write_window(frame(0), uri, window, schema, storage_options=options)
    errors: list[BaseException] = []

    def write(writer: int) -> None:
        try:
            write_window(frame(writer), uri, window, schema, storage_options=options)
        except BaseException as error:
            errors.append(error)

    writers = [threading.Thread(target=write, args=(w,)) for w in (1, 2)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    assert errors == []
    from deltalake import DeltaTable

    table = DeltaTable(uri, storage_options=options)
    assert table.version() == 2  # three commits, none lost, none merged
    rows = read_window(spark, uri, schema, window, storage_options=options).toArrow()
    values = sorted(rows["n"].to_pylist())
    assert values in ([100 + i for i in range(5) for _ in (1, 2)], [200 + i for i in range(5) for _ in (1, 2)])
