"""Shared fixtures: one Spark session for the whole suite (helpers live in helpers.py)."""

import os

import pytest
from pyspark.sql import SparkSession

from pipeline_patterns_tests.helpers import TEST_JVM_ENV, TEST_SPARK_CONFIG

for _name, _value in TEST_JVM_ENV.items():  # before any JVM starts: the session's and every subprocess's
    os.environ.setdefault(_name, _value)


@pytest.fixture(scope="session")
def spark() -> SparkSession:
    """The suite's one Spark session; PySparkResource's getOrCreate() picks it up."""
    builder = SparkSession.builder
    for key, value in TEST_SPARK_CONFIG.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    yield session
    session.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The server and CLI tests first: they mostly wait on other processes, so started first they
    overlap the in-process tests on the other worker instead of running last, alone."""
    items.sort(key=lambda item: item.get_closest_marker("subprocess") is None)
