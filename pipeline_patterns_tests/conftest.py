"""Fixtures: one Spark session per worker and the shared scenarios, each run once per test session
(the lanes are docs/testing.md; helpers live in helpers.py)."""

import os

import dagster as dg
import pytest
from pyspark.sql import SparkSession

from pipeline_patterns_tests.helpers import TEST_JVM_ENV, TEST_SPARK_CONFIG, Scenario, materialize

for _name, _value in TEST_JVM_ENV.items():  # before any JVM starts: the session's and every subprocess's
    os.environ.setdefault(_name, _value)

# The scenarios several modules read. xdist sends every test that uses one to the same worker
# (its `xdist_group`), so each is computed once per test session; a test must not write to it.
SCENARIOS = ("default_range", "clean_days")


@pytest.fixture(scope="session")
def spark() -> SparkSession:
    """The worker's one Spark session; PySparkResource's getOrCreate() picks it up."""
    builder = SparkSession.builder
    for key, value in TEST_SPARK_CONFIG.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    yield session
    session.stop()


@pytest.fixture(scope="session")
def default_range(spark, tmp_path_factory) -> Scenario:
    """2024-01-01..01-10 in ONE range run with the default feed (its bad region-days on), as a
    newcomer's first backfill: ready days published, the days with a quarantined region-day held."""
    data_dir = tmp_path_factory.mktemp("default_range")
    instance = dg.DagsterInstance.ephemeral()
    result = materialize(data_dir, instance, first="2024-01-01", last="2024-01-10", raise_on_error=False)
    return Scenario(data_dir, instance, [result])


@pytest.fixture(scope="session")
def clean_days(spark, tmp_path_factory) -> Scenario:
    """The whole graph for the clean days 2024-01-02 and 2024-01-03, one run per day."""
    data_dir = tmp_path_factory.mktemp("clean_days")
    instance = dg.DagsterInstance.ephemeral()
    results = [materialize(data_dir, instance, partition=day) for day in ("2024-01-02", "2024-01-03")]
    return Scenario(data_dir, instance, results)


@pytest.fixture(autouse=True)
def _never_the_live_object_store(request, monkeypatch) -> None:
    """A developer's PIPELINE_PATTERNS_OBJECT_STORE never reaches a test's lake (test_object_storage
    sets its own)."""
    monkeypatch.delenv("PIPELINE_PATTERNS_OBJECT_STORE", raising=False)


@pytest.fixture(autouse=True)
def _unit_tests_start_no_spark(request, monkeypatch) -> None:
    """A `unit` test that reaches Spark fails, saying so: it needs the `spark` fixture instead."""
    if request.node.get_closest_marker("unit"):

        def refuse(*_args, **_kwargs):
            raise AssertionError(f"{request.node.name} is a unit test: request the `spark` fixture to use Spark")

        monkeypatch.setattr(SparkSession.Builder, "getOrCreate", refuse)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Markers from what a test uses, so none can be forgotten: `spark` for a test that uses the
    session (directly or through a scenario), `unit` for one that uses neither Spark nor a
    subprocess; and the xdist group: the scenario it reads, else its module (module fixtures
    stay shared, as with --dist loadfile). The tests that use Spark run first, so the quick logic
    tests fill the end of the session, not a long pipeline test started last."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "spark" in names:
            item.add_marker(pytest.mark.spark)
        elif not item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.unit)
        group = next((s for s in SCENARIOS if s in names), item.path.name)
        item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda item: "spark" not in getattr(item, "fixturenames", ()))
