"""Shared fixtures: one Spark session for the whole suite (helpers live in helpers.py)."""

import os
import subprocess

import pytest
from pyspark.sql import SparkSession

from pipeline_patterns_tests.helpers import (
    TEST_JVM_ENV,
    TEST_SPARK_CONFIG,
    class_archive,
    class_archive_options,
    record_class_archive,
    stop_recording,
)

_OWN_JVM_OPTIONS = "JDK_JAVA_OPTIONS" in os.environ  # a user's own JVM options are left alone
for _name, _value in TEST_JVM_ENV.items():  # before any JVM starts: the session's and every subprocess's
    os.environ.setdefault(_name, _value)


def pytest_configure(config: pytest.Config) -> None:
    """The JVM options of the suite with its class-data archive (helpers.py), recorded in the
    background if there is none yet. xdist's workers inherit the variable."""
    if _OWN_JVM_OPTIONS or "PYTEST_XDIST_WORKER" in os.environ:
        return
    archive = class_archive()
    os.environ["JDK_JAVA_OPTIONS"] = class_archive_options(archive)
    if not archive.exists():
        config.stash[_RECORDING] = record_class_archive(archive)


def pytest_unconfigure(config: pytest.Config) -> None:
    recording = config.stash.get(_RECORDING, None)
    if recording:
        stop_recording(recording)


_RECORDING = pytest.StashKey[subprocess.Popen]()


@pytest.fixture(scope="session")
def spark() -> SparkSession:
    """The suite's one Spark session; PySparkResource's getOrCreate() picks it up."""
    builder = SparkSession.builder
    for key, value in TEST_SPARK_CONFIG.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    yield session
    session.stop()


# The files by their measured time (pytest --durations), longest first: xdist hands each worker
# the next file as it frees up, so the long ones started first never run alone at the end
# (`--no-loadscope-reorder` in pyproject.toml keeps this order instead of xdist's by test count).
LONGEST_FIRST = [
    "test_engines.py",
    "test_ui_backfill.py",
    "test_cli.py",
    "test_late_data.py",
    "test_aggregates.py",
    "test_pipeline.py",
    "test_verify_idempotency.py",
    "test_range_backfill.py",
    "test_self_healing.py",
    "test_object_storage.py",
    "test_postgres.py",
    "test_hostile_input.py",
    "test_quality_gates.py",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
