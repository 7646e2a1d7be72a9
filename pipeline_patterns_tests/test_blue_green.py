"""Blue-green publication: green is built and audited beside blue, published with one commit per
table, rolled back with one; a reader only ever sees complete blue or complete green."""

import json
import threading

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from pipeline_patterns import cli
from pipeline_patterns.defs.blue_green import CHECKS, PUBLISHED
from pipeline_patterns.defs.sources import FxRates
from pipeline_patterns.lib import blue_green
from pipeline_patterns.lib.delta_writes import content_hash, read_table
from pipeline_patterns_tests.helpers import materialize, pipeline_defs, resilient

FIRST, LAST = "2024-01-02", "2024-01-04"
TABLES = list(PUBLISHED)


class CorrectedRates(FxRates):
    """The FX service after a correction: every rate `factor` times the old one."""

    factor: float = 1.0

    def rates(self, currencies, days):
        table = super().rates(currencies, days)
        return table.set_column(2, "usd_rate", pc.multiply(table["usd_rate"], self.factor))


def live(data_dir) -> dict[str, str]:
    return {name: content_hash(read_table(str(data_dir / "lake" / name))) for name in TABLES}


def versions(data_dir) -> dict[str, int]:
    return {name: DeltaTable(str(data_dir / "lake" / name)).version() for name in TABLES}


def staged_hashes(data_dir, release: blue_green.Release) -> dict[str, str]:
    """The content of green's staged files, as the table will hold it once promoted."""
    hashes = {}
    for green in release.tables:
        uri = data_dir / "lake" / green.name
        parts = []
        for path in sorted((uri / green.staging).glob("day=*/*.parquet")):
            part = pq.read_table(path)
            parts.append(part.append_column("day", pa.array([path.parent.name[4:]] * part.num_rows)))
        schema = PUBLISHED[green.name]
        hashes[green.name] = content_hash(pa.concat_tables(parts).select(schema.names).cast(schema))
    return hashes


def build_green(data_dir, instance, factor: float) -> blue_green.Release:
    build = materialize(
        data_dir,
        instance,
        first=FIRST,
        last=LAST,
        selection=["green_release"],
        raise_on_error=False,
        resources={"fx_rates": CorrectedRates(factor=factor, **resilient(data_dir))},
    )
    release = blue_green.load(str(data_dir / "lake"))
    assert release is not None
    # each day of the range carries the audit's verdicts (a check result alone has no partition)
    per_day = {(e.partition, e.check_name, e.passed) for e in build.get_asset_check_evaluations() if e.partition}
    assert per_day == {
        (day, name, release.audit[name]["passed"])
        for day in ("2024-01-02", "2024-01-03", "2024-01-04")
        for name in CHECKS
    }
    return release


def switch(data_dir, instance, job: str) -> dg.ExecuteInProcessResult:
    return pipeline_defs(data_dir).resolve_job_def(job).execute_in_process(instance=instance, raise_on_error=False)


class Reader(threading.Thread):
    """Polls the published tables as a dashboard would, recording every content it sees."""

    def __init__(self, data_dir):
        super().__init__(daemon=True)
        self.data_dir, self.seen, self.stop = data_dir, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.seen.append(live(self.data_dir))

    def wait_for(self, state: dict[str, str]) -> None:
        start = len(self.seen)
        for _ in range(500):
            if state in self.seen[start:]:
                return
            self.stop.wait(0.02)
        raise AssertionError("the reader never saw the expected state")


@pytest.fixture(scope="module")
def publication(spark, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("blue_green")
    instance = dg.DagsterInstance.ephemeral()
    assert materialize(data_dir, instance, first=FIRST, last=LAST).success
    blue, blue_versions = live(data_dir), versions(data_dir)
    reader = Reader(data_dir)
    reader.start()
    release = build_green(data_dir, instance, factor=1.001)  # a small correction of the FX rates
    after_build = live(data_dir), versions(data_dir)
    green = staged_hashes(data_dir, release)
    promoted = switch(data_dir, instance, "promote_green")
    after_promote = live(data_dir), versions(data_dir)
    reader.wait_for(green)
    rolled_back = switch(data_dir, instance, "rollback_green")
    after_rollback = live(data_dir), versions(data_dir)
    reader.wait_for(blue)
    reader.stop.set()
    reader.join()
    return {
        "data_dir": data_dir,
        "instance": instance,
        "blue": blue,
        "blue_versions": blue_versions,
        "green": green,
        "release": release,
        "after_build": after_build,
        "promoted": promoted,
        "after_promote": after_promote,
        "rolled_back": rolled_back,
        "after_rollback": after_rollback,
        "seen": reader.seen,
    }


def test_green_is_built_and_audited_beside_blue_without_touching_it(publication):
    p = publication
    assert p["after_build"] == (p["blue"], p["blue_versions"])
    assert p["release"].state == blue_green.AUDITED and p["release"].audit_passed
    assert "within ±0.50% of blue" in p["release"].audit["green_matches_blue"]["detail"]
    assert p["green"] != p["blue"], "the correction changed amount_usd and revenue"


def test_promote_and_rollback_are_one_commit_per_table(publication):
    p = publication
    assert p["promoted"].success and p["rolled_back"].success
    live_after_promote, promote_versions = p["after_promote"]
    assert live_after_promote == p["green"]
    assert promote_versions == {t: v + 1 for t, v in p["blue_versions"].items()}
    live_after_rollback, rollback_versions = p["after_rollback"]
    assert live_after_rollback == p["blue"]
    assert rollback_versions == {t: v + 2 for t, v in p["blue_versions"].items()}
    for name in TABLES:
        last, previous = DeltaTable(str(p["data_dir"] / "lake" / name)).history(2)
        assert (last["blue_green"], previous["blue_green"]) == ("rollback", "promote")


def test_a_reader_only_ever_sees_complete_blue_or_complete_green(publication):
    """Per table: each switches in one commit (the two tables one after the other)."""
    p = publication
    assert len(p["seen"]) > 10
    for name in TABLES:
        assert {s[name] for s in p["seen"]} == {p["blue"][name], p["green"][name]}, name


def test_the_switches_are_recorded_per_day_on_the_published_assets(publication):
    instance = publication["instance"]
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("daily_revenue"), asset_partitions=[FIRST]), limit=2
    ).records
    notes = [r.asset_materialization.metadata["publication"].value for r in records]
    release = publication["release"].release_id
    assert notes == [f"rolled back from green {release} to blue", f"green {release} promoted"]


def test_a_green_that_fails_its_audit_is_never_published(publication, capsys, monkeypatch):
    data_dir, instance = publication["data_dir"], publication["instance"]
    before = live(data_dir), versions(data_dir)
    release = build_green(data_dir, instance, factor=1.10)  # 10 % off: beyond the 0.5 % tolerance
    assert release.state == blue_green.REFUSED
    assert "beyond ±0.50%" in release.audit["green_matches_blue"]["detail"]
    refused = switch(data_dir, instance, "promote_green")
    assert not refused.success
    assert (live(data_dir), versions(data_dir)) == before
    monkeypatch.setenv("PIPELINE_PATTERNS_DATA_DIR", str(data_dir))
    assert cli.main(["publish", "status"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["green"]["state"] == "refused" and status["green"]["release_id"] == release.release_id
    assert status["green"]["days"] == f"{FIRST}..{LAST}"
    assert {t: s["live_version"] for t, s in status["tables"].items()} == before[1]
    assert status["tables"]["daily_revenue"]["last_publication"]["blue_green"] == "rollback"
    assert cli.main(["publish", "promote"]) == 1
    assert "its audit failed" in capsys.readouterr().err


def test_a_green_is_not_published_once_blue_changed_under_it(publication):
    data_dir, instance = publication["data_dir"], publication["instance"]
    release = build_green(data_dir, instance, factor=1.001)
    assert release.state == blue_green.AUDITED
    assert materialize(data_dir, instance, partition=LAST, selection=["global_orders", "daily_revenue"]).success
    before = live(data_dir), versions(data_dir)
    refused = switch(data_dir, instance, "promote_green")
    assert not refused.success
    failure = next(e for e in refused.all_events if e.is_step_failure).step_failure_data.error
    assert "changed in 2024-01-02..2024-01-04 after green" in failure.message
    assert (live(data_dir), versions(data_dir)) == before
