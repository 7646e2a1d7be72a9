"""The code location's inventory and graph shape: an unintended change shows up as a diff here."""

import shutil
import subprocess
import sys

import dagster as dg
import pytest

from pipeline_patterns import definitions
from pipeline_patterns.defs.partitions import REGIONS, daily_partitions, region_key
from pipeline_patterns.lib.rules import RULES
from pipeline_patterns_tests.helpers import PROJECT_ROOT

REGIONAL = [region_key(r) for r in REGIONS]

defs = definitions.defs()  # the lazy entry point, loaded as Dagster loads it


def graph() -> dict[str, list[str]]:
    assets = defs.resolve_asset_graph()
    return {
        key.to_user_string(): sorted(p.to_user_string() for p in assets.get(key).parent_keys)
        for key in assets.get_all_asset_keys()
    }


def test_inventory_of_assets_and_groups():
    specs = {spec.key.to_user_string(): spec for spec in defs.resolve_all_asset_specs()}
    assert sorted(specs) == sorted(
        [f"raw_orders/{r}" for r in REGIONAL]
        + [f"regional_orders/{r}" for r in REGIONAL]
        + [f"quarantined_orders/{r}" for r in REGIONAL]
        + [f"late_orders/{r}" for r in REGIONAL]
        + ["global_orders", "daily_revenue", "monthly_revenue", "revenue_summary", "green_release"]
    )
    assert {key: spec.group_name for key, spec in specs.items()} == {
        **{f"raw_orders/{r}": "landing" for r in REGIONAL},
        **{f"regional_orders/{r}": "regional" for r in REGIONAL},
        **{f"quarantined_orders/{r}": "quarantine" for r in REGIONAL},
        **{f"late_orders/{r}": "late" for r in REGIONAL},
        "global_orders": "global",
        "daily_revenue": "revenue",
        "monthly_revenue": "aggregates",
        "revenue_summary": "aggregates",
        "green_release": "publish",
    }


def test_materialize_all_on_the_daily_orders_job_is_the_daily_graph_and_nothing_that_publishes():
    # the UI's "Materialize all" launches every executable asset of the view it is on (a job's, a
    # group's, a selection's; docs/backfills.md): the job's and the daily groups' views hold no
    # green_release build and no month, which fails while incomplete
    daily = {
        *(
            f"{layer}/{r}"
            for r in REGIONAL
            for layer in ("raw_orders", "regional_orders", "quarantined_orders", "late_orders")
        ),
        "global_orders",
        "daily_revenue",
    }
    job = defs.resolve_job_def("daily_orders")
    assert {k.to_user_string() for k in job.asset_layer.selected_asset_keys} == daily
    groups = {spec.key.to_user_string(): spec.group_name for spec in defs.resolve_all_asset_specs()}
    publishing = {"green_release", "monthly_revenue", "revenue_summary"}
    assert {groups[k] for k in daily}.isdisjoint(groups[k] for k in publishing)


def test_the_graph_fans_out_per_region_branches_to_quarantine_and_fans_in_to_global_orders():
    edges = graph()
    for region in REGIONAL:
        assert edges[f"raw_orders/{region}"] == []
        assert edges[f"regional_orders/{region}"] == [f"raw_orders/{region}"]
        assert edges[f"quarantined_orders/{region}"] == [f"raw_orders/{region}"]
        assert edges[f"late_orders/{region}"] == [f"raw_orders/{region}"]
    assert edges["global_orders"] == sorted(
        f"{layer}/{r}" for r in REGIONAL for layer in ("regional_orders", "quarantined_orders", "late_orders")
    )
    assert edges["daily_revenue"] == ["global_orders"]
    assert edges["monthly_revenue"] == edges["revenue_summary"] == ["daily_revenue"]
    assert edges["green_release"] == edges["global_orders"]  # green is built from what blue is built from


def test_every_partitioned_asset_backfills_a_range_in_one_run():
    for asset in defs.resolve_asset_graph().asset_nodes:
        if asset.key.path[0] == "revenue_summary":
            assert asset.partitions_def is None
            continue
        kind = (
            dg.MonthlyPartitionsDefinition if asset.key.path[0] == "monthly_revenue" else dg.DailyPartitionsDefinition
        )
        assert isinstance(asset.partitions_def, kind), asset.key
        assert asset.partitions_def.start.date().isoformat() == "2024-01-01"
        assert asset.backfill_policy == dg.BackfillPolicy.single_run(), asset.key


def test_one_run_shares_one_process_and_spark_session():
    assert defs.resolve_job_def("__ASSET_JOB").executor_def == dg.in_process_executor


@pytest.mark.integration
def test_the_code_location_loads_without_warnings():
    loaded = subprocess.run(
        [
            sys.executable,
            "-W",
            "always",
            "-c",
            "import pipeline_patterns.definitions as d; d.defs().resolve_asset_graph()",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Warning" not in loaded.stderr, loaded.stderr


def test_ci_runs_the_readmes_test_command():
    readme = (PROJECT_ROOT / "README.md").read_text()
    command = 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]" && pytest'
    assert command in readme
    assert command in (PROJECT_ROOT / ".ci" / "run").read_text()


def test_the_checks_are_the_gates_on_every_region_and_the_replay_check():
    checks = {(k.asset_key.to_user_string(), k.name) for k in defs.resolve_asset_graph().asset_check_keys}
    # every rule of lib/rules.py that quarantines is in quality_gates; a warning rule is its own check
    names = {"quality_gates", "event_time_fresh", "rows_accounted"}
    assert checks == {(f"regional_orders/{r}", n) for r in REGIONAL for n in names} | {
        ("daily_revenue", "replay_matches"),
        ("green_release", "green_files_valid"),
        ("green_release", "green_revenue_reconciles"),
        ("green_release", "green_matches_blue"),
    }
    regional = next(a for a in defs.assets if dg.AssetKey(["regional_orders", "us_east"]) in a.keys)
    blocking = {spec.name for spec in regional.check_specs if spec.blocking}
    # the quarantine is the gate; only lost rows stop the run
    assert blocking == {"rows_accounted"}
    # each day's verdict is recorded under its day: the UI's partition bar and history per check
    assert all(spec.partitions_def == daily_partitions for spec in regional.check_specs)
    gate = next(spec for spec in regional.check_specs if spec.name == "quality_gates")
    assert all((f"- {rule.name}:" in (gate.description or "")) == rule.blocking for rule in RULES)


def test_the_daily_schedule_and_the_sensors_run_by_default():
    assert [(s.name, s.default_status) for s in defs.schedules] == [
        ("daily_orders_schedule", dg.DefaultScheduleStatus.RUNNING)
    ]
    assert {(s.name, s.default_status) for s in defs.sensors} == {
        ("aggregates_follow_days", dg.DefaultSensorStatus.RUNNING),
        ("notify_run_failure", dg.DefaultSensorStatus.RUNNING),
        ("heal_failed_days", dg.DefaultSensorStatus.RUNNING),
        ("late_data_rehomes_days", dg.DefaultSensorStatus.RUNNING),
        # stopped: it replaces the schedule when turned on, it never runs beside it
        ("regions_close_their_day", dg.DefaultSensorStatus.STOPPED),
    }
    assert sorted(j.name for j in defs.jobs) == [
        "daily_orders",
        "monthly_revenue_job",
        "promote_green",
        "rehome_late_orders",
        "revenue_summary_job",
        "rollback_green",
    ]
    assert defs.resolve_job_def("daily_orders").partitions_def == dg.DailyPartitionsDefinition(start_date="2024-01-01")


def test_assets_that_call_a_dependency_declare_a_retry_policy():
    for key in (["raw_orders", "us_east"], ["global_orders"], ["green_release"]):
        assets_def = next(a for a in defs.assets if dg.AssetKey(key) in a.keys)
        assert isinstance(assets_def.op.retry_policy, dg.RetryPolicy), key


def test_the_instance_config_loads_with_its_run_limit_and_one_writer_per_pool(tmp_path):
    shutil.copy(PROJECT_ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        config = instance.get_concurrency_config()
        assert instance.run_monitoring_enabled and instance.run_monitoring_start_timeout_seconds == 180
    assert config.run_queue_config.max_concurrent_runs == 2
    assert config.pool_config.default_pool_limit == 1
    pools = {a.op.pool for a in defs.assets if isinstance(a, dg.AssetsDefinition) and a.op.pool}
    assert pools == {f"regional_{r}" for r in REGIONAL} | {"fan_in"}


def test_one_resource_per_external_system_or_policy_and_no_asset_takes_more_than_five():
    assert sorted(defs.resources or {}) == [
        "day_close",
        "fx_rates",
        "healing_policy",
        "lake",
        "landing",
        "notifier",
        "orders_source",
        "quality_gates",
        "spark",
    ]
    for asset in defs.assets or []:
        if isinstance(asset, dg.AssetsDefinition):
            ours = asset.required_resource_keys - {"io_manager"}  # Dagster's default, for assets that return no value
            assert len(ours) <= 5, (asset.keys, ours)
