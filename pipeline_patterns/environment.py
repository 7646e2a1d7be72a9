"""The only module that reads the environment: where data lives, where Spark runs, where alerts go.
See docs/configuration.md."""

import itertools
import os
import shlex
from pathlib import Path

DATA_DIR_VAR = "PIPELINE_PATTERNS_DATA_DIR"
SPARK_MASTER_VAR = "PIPELINE_PATTERNS_SPARK_MASTER"
SPARK_DRIVER_MEMORY_VAR = "PIPELINE_PATTERNS_SPARK_DRIVER_MEMORY"
FEED_VOLUME_VAR = "PIPELINE_PATTERNS_FEED_VOLUME"
EXECUTOR_VAR = "PIPELINE_PATTERNS_EXECUTOR"
BREAKER_STORE_VAR = "PIPELINE_PATTERNS_BREAKER_STORE"
ALERT_WEBHOOK_VAR = "PIPELINE_PATTERNS_ALERT_WEBHOOK_URL"
SLACK_TOKEN_VAR = "SLACK_BOT_TOKEN"
OBJECT_STORE_VAR = "PIPELINE_PATTERNS_OBJECT_STORE"
DEV_CLI_VAR = "DAGSTER_IS_DEV_CLI"  # set by `dagster dev`, inherited by its code server and run workers
# the master that means: the warm local Spark Connect server (lib/warm_spark.py)
WARM_MASTER = "warm"


def data_dir() -> Path:
    """The data dir (landing zone and Delta lake): $PIPELINE_PATTERNS_DATA_DIR, default ./data."""
    return Path(os.environ.get(DATA_DIR_VAR) or "data").resolve()


def object_store() -> str | None:
    """Where the landing zone and the lake live when not in the data dir: $PIPELINE_PATTERNS_OBJECT_STORE,
    an s3://bucket/prefix (credentials, region and endpoint from the usual AWS_* variables:
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL)."""
    value = os.environ.get(OBJECT_STORE_VAR)
    if value and not value.startswith("s3://"):
        raise ValueError(f"{OBJECT_STORE_VAR}={value!r}: expected s3://bucket/prefix")
    return value.rstrip("/") if value else None


def s3_settings() -> dict[str, str]:
    """The S3 settings of the environment, as dagster-deltalake's S3Config fields."""
    names = {
        "access_key_id": "AWS_ACCESS_KEY_ID",
        "secret_access_key": "AWS_SECRET_ACCESS_KEY",
        "region": "AWS_REGION",
        "endpoint": "AWS_ENDPOINT_URL",
        "token": "AWS_SESSION_TOKEN",
    }
    return {field: os.environ[var] for field, var in names.items() if os.environ.get(var)}


def spark_master() -> str:
    """Where Spark runs: $PIPELINE_PATTERNS_SPARK_MASTER: `local[*]` (a JVM in the run's process, the
    default), `warm` (a local Spark Connect server shared by runs, the default under `dagster dev`),
    `sc://host:port` a Spark Connect server, `spark://host:port` a standalone cluster."""
    return os.environ.get(SPARK_MASTER_VAR) or (WARM_MASTER if os.environ.get(DEV_CLI_VAR) else "local[*]")


def spark_submit_confs() -> dict[str, str]:
    """The `--conf key=value` settings of $PYSPARK_SUBMIT_ARGS (what an embedded session's JVM
    starts with), for the warm server's JVM too."""
    words = shlex.split(os.environ.get("PYSPARK_SUBMIT_ARGS", ""))
    pairs = [b.partition("=") for a, b in itertools.pairwise(words) if a == "--conf"]
    return {key: value for key, _, value in pairs}


def breaker_store(data: Path) -> str:
    """Where the circuit breakers' shared state lives: $PIPELINE_PATTERNS_BREAKER_STORE, a SQLite
    file or a postgresql:// URL; default <data dir>/breakers.sqlite."""
    return os.environ.get(BREAKER_STORE_VAR) or str(data / "breakers.sqlite")


def executor() -> str:
    """How a run executes its steps: $PIPELINE_PATTERNS_EXECUTOR, `in_process` (the default: one
    process, one Spark session for every step) or `multiprocess` (a process per step; with a
    Spark Connect server each is a thin client, without one each starts a JVM)."""
    value = os.environ.get(EXECUTOR_VAR) or "in_process"
    if value not in ("in_process", "multiprocess"):
        raise ValueError(f"{EXECUTOR_VAR}={value!r}: expected in_process or multiprocess")
    return value


def spark_driver_memory() -> str:
    return os.environ.get(SPARK_DRIVER_MEMORY_VAR) or "1g"


def feed_volume() -> int | None:
    """Orders per region-day of the simulated feed when $PIPELINE_PATTERNS_FEED_VOLUME is set (a
    small feed for demos and tests); None keeps the resource's default."""
    value = os.environ.get(FEED_VOLUME_VAR)
    if not value:
        return None
    if not value.isdigit() or int(value) < 10:
        raise ValueError(f"{FEED_VOLUME_VAR}={value!r}: expected a whole number of orders per region-day, at least 10")
    return int(value)


def alert_webhook_url() -> str:
    """Where alerts are POSTed as JSON besides the JSON-lines file: $PIPELINE_PATTERNS_ALERT_WEBHOOK_URL."""
    return os.environ.get(ALERT_WEBHOOK_VAR, "")


def slack_configured() -> bool:
    """Whether $SLACK_BOT_TOKEN is set; the token itself reaches the notifier as a dg.EnvVar."""
    return bool(os.environ.get(SLACK_TOKEN_VAR))


def dagster_home() -> str | None:
    """$DAGSTER_HOME: the Dagster instance a command records its runs in (unset: none)."""
    return os.environ.get("DAGSTER_HOME") or None
