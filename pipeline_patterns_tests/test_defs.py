"""The code location's inventory and graph shape: an unintended change shows up as a diff here."""

import subprocess
import sys

import dagster as dg

from pipeline_patterns.definitions import defs
from pipeline_patterns.defs.partitions import REGIONS, region_key
from pipeline_patterns_tests.conftest import PROJECT_ROOT

REGIONAL = [region_key(r) for r in REGIONS]


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
        + ["global_orders", "daily_revenue", "monthly_revenue", "revenue_summary"]
    )
    assert {key: spec.group_name for key, spec in specs.items()} == {
        **{f"raw_orders/{r}": "landing" for r in REGIONAL},
        **{f"regional_orders/{r}": "regional" for r in REGIONAL},
        "global_orders": "global",
        "daily_revenue": "revenue",
        "monthly_revenue": "revenue",
        "revenue_summary": "revenue",
    }


def test_the_graph_fans_out_per_region_and_fans_in_to_global_orders():
    edges = graph()
    for region in REGIONAL:
        assert edges[f"raw_orders/{region}"] == []
        assert edges[f"regional_orders/{region}"] == [f"raw_orders/{region}"]
    assert edges["global_orders"] == sorted(f"regional_orders/{r}" for r in REGIONAL)
    assert edges["daily_revenue"] == ["global_orders"]
    assert edges["monthly_revenue"] == edges["revenue_summary"] == ["daily_revenue"]


def test_every_partitioned_asset_backfills_a_range_in_one_run():
    for asset in defs.resolve_asset_graph().asset_nodes:
        if asset.key.path[0] == "revenue_summary":
            assert asset.partitions_def is None
            continue
        kind = dg.MonthlyPartitionsDefinition if asset.key.path[0] == "monthly_revenue" else dg.DailyPartitionsDefinition
        assert isinstance(asset.partitions_def, kind), asset.key
        assert asset.partitions_def.start.date().isoformat() == "2024-01-01"
        assert asset.backfill_policy == dg.BackfillPolicy.single_run(), asset.key


def test_one_run_shares_one_process_and_spark_session():
    assert defs.resolve_job_def("__ASSET_JOB").executor_def == dg.in_process_executor


def test_the_code_location_loads_without_warnings():
    loaded = subprocess.run(
        [sys.executable, "-W", "always", "-c", "import pipeline_patterns.definitions as d; d.defs.resolve_asset_graph()"],
        capture_output=True, text=True, check=True,
    )
    assert "Warning" not in loaded.stderr, loaded.stderr


def test_ci_runs_the_readmes_test_command():
    readme = (PROJECT_ROOT / "README.md").read_text()
    command = 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]" && pytest'
    assert command in readme
    assert command in (PROJECT_ROOT / ".ci" / "run").read_text()


def test_the_checks_are_the_gates_on_every_region_and_the_replay_check():
    checks = {(k.asset_key.to_user_string(), k.name) for k in defs.resolve_asset_graph().asset_check_keys}
    names = {
        "schema_matches", "values_parse", "order_id_not_null", "user_id_not_null", "order_id_unique",
        "volume_within_bounds", "amount_non_negative", "currency_known", "event_time_not_in_future",
        "event_time_fresh", "rows_accounted",
    }
    assert checks == {(f"regional_orders/{r}", n) for r in REGIONAL for n in names} | {("daily_revenue", "replay_matches")}
    regional = next(a for a in defs.assets if dg.AssetKey(["regional_orders", "us_east"]) in a.keys)
    blocking = {spec.name: spec.blocking for spec in regional.check_specs}
    assert blocking["user_id_not_null"] and blocking["rows_accounted"]
    assert not blocking["event_time_fresh"]  # a warning: late feeds are reported, not blocked


def test_the_aggregates_follow_their_upstream_automatically():
    nodes = {n.key.to_user_string(): n for n in defs.resolve_asset_graph().asset_nodes}
    for key in ("monthly_revenue", "revenue_summary"):
        assert nodes[key].automation_condition.get_label() == "follows_upstream"
    assert nodes["daily_revenue"].automation_condition is None
