"""Shared fixtures: one Spark session for the whole suite, and small, isolated pipelines."""

import pathlib

import dagster as dg
import pytest
from pyspark.sql import SparkSession

from pipeline_patterns.defs.checks import QualityGates
from pipeline_patterns.defs.resources import build_resources, spark_config
from pipeline_patterns.defs.sources import OrdersSource
from pipeline_patterns.definitions import defs

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent
# Small volumes keep the suite fast; the benchmark runs the default volume and more.
TEST_ORDERS_PER_DAY = 400
# normal days pass, the simulator's collapsed days (2 % of the volume) fail
TEST_MIN_ORDERS = 100


@pytest.fixture(scope="session")
def spark() -> SparkSession:
    """The suite's one Spark session; PySparkResource's getOrCreate() picks it up."""
    builder = SparkSession.builder
    for key, value in {**spark_config(), "spark.master": "local[2]"}.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    yield session
    session.stop()


def pipeline_resources(data_dir: pathlib.Path, **source_config) -> dict[str, object]:
    return {
        **build_resources(data_dir),
        "quality_gates": QualityGates(min_orders_per_day=TEST_MIN_ORDERS),
        "orders_source": OrdersSource(**{"orders_per_day": TEST_ORDERS_PER_DAY, **source_config}),
    }


def pipeline_defs(data_dir: pathlib.Path, **source_config) -> dg.Definitions:
    """The project's assets over a data dir of the test's own."""
    return dg.Definitions(
        assets=list(defs.assets or []),
        asset_checks=list(defs.asset_checks or []),
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
    **source_config,
) -> dg.ExecuteInProcessResult:
    """Materialize the daily graph (or `selection`) for one partition, or a range [first, last]
    in ONE run."""
    tags = {}
    if first:
        tags = {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}
    return dg.materialize(
        all_assets(),
        selection=selection or "*daily_revenue",
        partition_key=partition,
        tags=tags,
        resources=pipeline_resources(data_dir, **source_config),
        instance=instance,
        raise_on_error=raise_on_error,
    )
