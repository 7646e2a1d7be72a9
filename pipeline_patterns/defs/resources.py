"""The resources, one instance per key, configured from `environment.py` (pattern: swappable
infrastructure: local Spark and a local lake by default, a cluster and object storage by
environment)."""

import os
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pyspark
from dagster_deltalake import LocalConfig, S3Config
from dagster_pyspark import PySparkResource
from dagster_pyspark.resources import spark_session_from_config
from pydantic import Field, PrivateAttr

from pipeline_patterns import environment
from pipeline_patterns.defs.alerts import Notifier
from pipeline_patterns.defs.checks import QualityGates
from pipeline_patterns.defs.healing import HealingPolicy
from pipeline_patterns.defs.lake import Lake
from pipeline_patterns.defs.landing import LandingZone
from pipeline_patterns.defs.readiness import DayClose
from pipeline_patterns.defs.resilience import Breaker
from pipeline_patterns.defs.sources import FxRates, OrdersSource
from pipeline_patterns.lib import warm_spark
from pipeline_patterns.lib.spark_tables import spark_settings

# The Python that Spark starts for the gates and the fan-in (they run in its workers) is this
# one, with this project installed: PySpark otherwise starts whatever `python3` is on the PATH.
# (PySpark reads only the environment variable for a local session; a cluster's executors need
# the project installed in their own Python, see docs/scaling_out.md.)
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


def spark_config() -> dict[str, str]:
    """The Spark session's settings. The same assets run on every engine: embedded `local[*]`
    (the default), a standalone cluster (`spark://`), or a Spark Connect server (`sc://`, or the
    warm local one), whose session is a thin client: the JVM and its settings (memory, master) are
    the server's, and only the SQL settings below are the session's own."""
    sql = {
        **spark_settings(),
        "spark.sql.session.timeZone": "UTC",
        # A day of a region is a few thousand rows: a few shuffle partitions, not the default 200.
        "spark.sql.shuffle.partitions": "8",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
    }
    master = environment.spark_master()
    if master == environment.WARM_MASTER:
        return sql
    if master.startswith("sc://"):
        return {"spark.remote": master, **sql}
    return {**sql, **jvm_config(master)}


def jvm_config(master: str) -> dict[str, str]:
    return {
        "spark.master": master,
        "spark.app.name": "pipeline_patterns",
        "spark.driver.memory": environment.spark_driver_memory(),
        "spark.ui.showConsoleProgress": "false",
    }


class WarmServerLost(RuntimeError):
    """The warm Spark Connect server stopped while a run was using it."""


class SparkResource(PySparkResource):
    """dagster-pyspark's resource; with `warm_server_dir` set, the session is a client of the warm
    local Spark Connect server (lib/warm_spark.py), which the first run that needs it starts."""

    warm_server_dir: str = Field(
        default="",
        description="Where the warm local Spark Connect server keeps its lock, state and log; empty: no "
        "warm server, the session is what spark_config says (see docs/configuration.md).",
    )
    _lease: warm_spark.Lease | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if not self.warm_server_dir:
            return super().setup_for_execution(context)
        from pyspark.sql.connect.client.retries import DefaultPolicy

        spark_home = Path(pyspark.__file__).parent
        server_settings = {**self.spark_config, **jvm_config("local[*]"), **environment.spark_submit_confs()}
        lease = warm_spark.acquire(
            Path(self.warm_server_dir),
            lambda port: warm_spark.server_command(spark_home, port, server_settings),
            watch=warm_spark.dev_cli_process(),
            env={"SPARK_HOME": str(spark_home)},
        )
        self._lease = lease

        class WhileServerLives(DefaultPolicy):
            """Spark Connect's default retries while the server lives; once its JVM is gone, fail at once."""

            def can_retry(self, e: BaseException) -> bool:
                if super().can_retry(e) and not warm_spark.alive(lease.state.jvm):
                    raise WarmServerLost(
                        f"The warm local Spark Connect server (pid {lease.state.jvm.pid}, {lease.state.url}) "
                        f"stopped while this run was using it: see the end of {lease.log} for why (e.g. "
                        "java.lang.OutOfMemoryError: raise PIPELINE_PATTERNS_SPARK_DRIVER_MEMORY). Re-run the "
                        "failed steps or the run: the next run starts a fresh server."
                    ) from e
                return super().can_retry(e)

        # the policy first, so that no call (not even the session's settings) waits on a dead server
        shared = warm_spark.session_id(lease.state, Path(__file__).resolve().parents[1])
        session = spark_session_from_config({"spark.remote": f"{lease.state.url}/;session_id={shared}"})
        session.client.set_retry_policies([WhileServerLives()])
        for key, value in self.spark_config.items():
            session.conf.set(key, value)
        self._spark_session = session

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._lease:
            self.spark_session.client.close()  # the session stays: the next run's, with its Python workers
            self._lease.release()


def build_resources(data_dir: Path, *, local: bool = False) -> dict[str, object]:
    """Every resource the assets use, for a data dir (tests pass a temporary one): one per external
    system (Spark, the lake, the landing zone, the order feed, the FX service, the alert channels)
    and per policy. The landing zone and the lake are in the data dir, or on
    $PIPELINE_PATTERNS_OBJECT_STORE unless `local` (a scratch data dir must never point at the live store)."""
    store = None if local else environment.object_store()
    storage: Any = S3Config.model_validate(environment.s3_settings()) if store else LocalConfig()
    breaker = Breaker(store=environment.breaker_store(data_dir))
    volume = environment.feed_volume()
    # a smaller feed keeps the volume gate proportionate: 20 %, as 1,000 of the default 5,000
    sized: dict[str, Any] = {"orders_per_day": volume} if volume else {}
    gates: dict[str, Any] = {"min_orders_per_day": volume // 5} if volume else {}
    return {
        "spark": SparkResource(
            spark_config=spark_config(),
            warm_server_dir=str(data_dir / "spark_server")
            if environment.spark_master() == environment.WARM_MASTER
            else "",
        ),
        "lake": Lake(uri=f"{store}/lake" if store else str(data_dir / "lake"), storage=storage),
        "landing": LandingZone(root=f"{store}/landing" if store else str(data_dir / "landing"), storage=storage),
        "quality_gates": QualityGates(**gates),
        "orders_source": OrdersSource(
            corrections_file=str(data_dir / "source_corrections.json"), breaker=breaker, **sized
        ),
        "fx_rates": FxRates(breaker=breaker),
        "notifier": Notifier(
            path=str(data_dir / "notifications.jsonl"),
            webhook_url=environment.alert_webhook_url(),
            slack_token=dg.EnvVar(environment.SLACK_TOKEN_VAR) if environment.slack_configured() else "",
        ),
        "healing_policy": HealingPolicy(),
        "day_close": DayClose(),
    }


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources=build_resources(environment.data_dir()))
