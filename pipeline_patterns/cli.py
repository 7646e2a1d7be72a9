"""The `pipeline-patterns` command: the simulated source, breakers, idempotency proof, lake vacuum, blue-green.

Usage: docs/configuration.md."""

import argparse
import dataclasses
import datetime as dt
import json
import os
import sys

from pipeline_patterns import environment
from pipeline_patterns.defs.partitions import REGIONS
from pipeline_patterns.lib.breaker import CircuitBreaker, all_statuses
from pipeline_patterns.lib.simulated_feed import FeedSettings, add_corrections, days_between, region_day_defects


def _day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not a day (YYYY-MM-DD): {text!r}") from error


def source_defects(args: argparse.Namespace) -> int:
    """One JSON line per region-day in [start, end] that carries at least one defect."""
    settings = FeedSettings()
    regions = args.region or REGIONS
    for day in days_between(args.start, args.end + dt.timedelta(days=1)):
        for region in regions:
            defects = region_day_defects(region, day, settings)
            if defects.defects and (not args.defect or args.defect in defects.defects):
                print(json.dumps(defects.as_json()))
    return 0


def source_correct(args: argparse.Namespace) -> int:
    """Record that the source corrected region-days: the next extraction of each comes clean."""
    pairs = args.region_day
    if len(pairs) % 2:
        print("give REGION DAY pairs, e.g. eu-west 2024-01-05 us-east 2024-01-05", file=sys.stderr)
        return 2
    entries = []
    for region, day in zip(pairs[::2], pairs[1::2], strict=True):
        if region not in REGIONS and region != "*":
            print(f"unknown region {region!r}; one of {', '.join(REGIONS)} or '*'", file=sys.stderr)
            return 2
        entries.append(f"{region} {_day(day).isoformat() if day != '*' else day}")
    path = environment.data_dir() / "source_corrections.json"
    print(json.dumps({"corrections_file": str(path), "corrected": add_corrections(str(path), entries)}))
    return 0


def _breaker_store() -> str:
    environment.data_dir().mkdir(parents=True, exist_ok=True)
    return environment.breaker_store(environment.data_dir())


def breaker_status(args: argparse.Namespace) -> int:
    statuses = [s for s in all_statuses(_breaker_store()) if not args.name or s.name == args.name]
    if args.name and not statuses:
        print(f"no breaker named {args.name!r} has been used yet (store {_breaker_store()})", file=sys.stderr)
        return 1
    for status in statuses:
        print(json.dumps(dataclasses.asdict(status)))
    return 0


def breaker_reset(args: argparse.Namespace) -> int:
    print(json.dumps(dataclasses.asdict(CircuitBreaker(args.name, _breaker_store()).reset())))
    return 0


def verify_idempotency(args: argparse.Namespace) -> int:
    """One JSON line per table; exit 1 unless every table is identical to a clean replay of the
    live landing zone (default resource configuration, see the command's help)."""
    from pipeline_patterns.replay import verify_range  # imports Spark and the code location

    comparisons = verify_range(environment.data_dir(), args.start, args.end)
    for comparison in comparisons:
        print(json.dumps(dataclasses.asdict(comparison)))
    identical = bool(comparisons) and all(c.identical for c in comparisons)  # nothing compared proves nothing
    print(json.dumps({"range": f"{args.start}...{args.end}", "identical": identical}))
    return 0 if identical else 1


def lake_vacuum(args: argparse.Namespace) -> int:
    """One JSON line per Delta table of the lake: the files a full vacuum removes (lists them
    unless --apply). Staged folders in a folder that never became a table (its first writer was
    killed before committing) are removed too, once older than the retention."""
    import shutil
    import time

    from pipeline_patterns.lib.delta_writes import STAGING_PREFIX, vacuum_orphans

    lake = environment.data_dir() / "lake"
    tables = sorted(log.parent for log in lake.rglob("_delta_log"))
    for table in tables:
        files = vacuum_orphans(str(table), args.retention_hours, dry_run=not args.apply)
        print(json.dumps({"table": str(table.relative_to(lake)), "files": len(files), "removed": args.apply}))
    cutoff = time.time() - args.retention_hours * 3600
    for staged in sorted(lake.rglob(f"{STAGING_PREFIX}*")):
        if staged.is_dir() and not (staged.parent / "_delta_log").exists() and staged.stat().st_mtime <= cutoff:
            count = sum(1 for f in staged.rglob("*") if f.is_file())
            if args.apply:
                shutil.rmtree(staged)
            print(json.dumps({"uncommitted": str(staged.relative_to(lake)), "files": count, "removed": args.apply}))
    if not tables:
        print(f"no Delta table under {lake}", file=sys.stderr)
    return 0


def publish_status(args: argparse.Namespace) -> int:
    from pipeline_patterns.defs.blue_green import PUBLISHED
    from pipeline_patterns.lib.blue_green import status

    print(json.dumps(status(str(environment.data_dir() / "lake"), list(PUBLISHED)), indent=2))
    return 0


def publish_switch(args: argparse.Namespace) -> int:
    """Run the promote_green or rollback_green job in this process, recorded in the Dagster
    instance of $DAGSTER_HOME (so the UI and the aggregates sensor see the switch), then print
    the status."""
    import dagster as dg

    from pipeline_patterns.defs.blue_green import promote_green, rollback_green
    from pipeline_patterns.defs.resources import build_resources

    job = promote_green if args.publish_command == "promote" else rollback_green
    definitions = dg.Definitions(jobs=[job], resources=build_resources(environment.data_dir()))
    if not environment.dagster_home():
        print("DAGSTER_HOME is not set: the switch is not recorded in a Dagster instance", file=sys.stderr)
    with dg.DagsterInstance.get() if environment.dagster_home() else dg.DagsterInstance.ephemeral() as instance:
        result = definitions.resolve_job_def(job.name).execute_in_process(instance=instance, raise_on_error=False)
    if not result.success:
        failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data
        why = failure.user_failure_data.description if failure.user_failure_data else failure.error
        print(f"{args.publish_command} refused: {why}", file=sys.stderr)
        return 1
    return publish_status(args)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="pipeline-patterns", description=__doc__.splitlines()[0])
    commands = root.add_subparsers(dest="command", required=True)

    source = commands.add_parser("source", help="the simulated regional order feed")
    source_commands = source.add_subparsers(dest="source_command", required=True)
    defects = source_commands.add_parser("defects", help="which region-days carry which defect, as JSON lines")
    defects.add_argument("--start", type=_day, required=True, help="first day, YYYY-MM-DD")
    defects.add_argument("--end", type=_day, required=True, help="last day (inclusive), YYYY-MM-DD")
    defects.add_argument("--region", action="append", choices=REGIONS, help="repeatable; default all")
    defects.add_argument(
        "--defect",
        choices=["duplicate_deliveries", "late_records", "null_user_ids", "collapsed_volume"],
        help="only region-days with this defect",
    )
    defects.set_defaults(handler=source_defects)
    correct = source_commands.add_parser(
        "correct",
        help="the source has corrected these region-days (REGION DAY pairs): re-fetched, they come clean",
    )
    correct.add_argument("region_day", nargs="+", help="REGION DAY pairs, e.g. eu-west 2024-01-05; '*' for any")
    correct.set_defaults(handler=source_correct)

    breaker = commands.add_parser("breaker", help="inspect or reset a circuit breaker")
    breaker_commands = breaker.add_subparsers(dest="breaker_command", required=True)
    status = breaker_commands.add_parser("status", help="state of every breaker (or one), as JSON lines")
    status.add_argument("name", nargs="?", help="orders_source or fx_rates; default all")
    status.set_defaults(handler=breaker_status)
    reset = breaker_commands.add_parser("reset", help="close a breaker and clear its failures")
    reset.add_argument("name", help="orders_source or fx_rates")
    reset.set_defaults(handler=breaker_reset)

    verify = commands.add_parser(
        "verify-idempotency",
        help="replay a day range from the live landing zone into a scratch lake and compare content hashes with the live tables",
        description=(
            "Replays [--start, --end] in one run from the live landing zone ($PIPELINE_PATTERNS_DATA_DIR/landing, "
            "read only; the source is never called) through every daily asset downstream of it into a "
            "scratch lake, then compares each table's rows in the range with the live lake by content hash "
            "(run-id and time audit columns excluded). The replay uses the DEFAULT resource configuration "
            "(pipeline_patterns.defs.resources.build_resources, sized by $PIPELINE_PATTERNS_FEED_VOLUME when "
            "set): if the live tables were built with other settings (quality gates, FX rates), days may "
            "branch differently and the tables differ. Prints one JSON line per table and a verdict line; "
            "exit 0 when every table is identical, 1 otherwise (or when there is no table to compare)."
        ),
    )
    verify.add_argument("--start", type=_day, required=True, help="first day, YYYY-MM-DD")
    verify.add_argument("--end", type=_day, required=True, help="last day (inclusive), YYYY-MM-DD")
    verify.set_defaults(handler=verify_idempotency)

    lake = commands.add_parser("lake", help="maintain the Delta lake")
    lake_commands = lake.add_subparsers(dest="lake_command", required=True)
    vacuum = lake_commands.add_parser(
        "vacuum",
        help="remove files no kept table version references (a full vacuum): old versions' files, and "
        "the staged files of writers killed before their commit",
        description=(
            "A write stages its Parquet files inside the table's folder and commits them in one transaction; "
            "a writer killed before its commit leaves its files unreferenced (readers never see them). A "
            "default Delta vacuum never removes such files; this full vacuum does, for every table of "
            "$PIPELINE_PATTERNS_DATA_DIR/lake, once they are older than --retention-hours. Keep the retention "
            "above your longest run, or a running writer's staged files are taken; versions older than it can "
            "no longer be read (time travel, restore). Dry run unless --apply."
        ),
    )
    vacuum.add_argument("--retention-hours", type=int, default=168, help="keep files younger than this (default 168)")
    vacuum.add_argument("--apply", action="store_true", help="delete the files (default: only count them)")
    vacuum.set_defaults(handler=lake_vacuum)

    publish = commands.add_parser("publish", help="blue-green publication of global_orders and daily_revenue")
    publish_commands = publish.add_subparsers(dest="publish_command", required=True)
    publish_commands.add_parser("status", help="live versions, last publication, what green holds (JSON)").set_defaults(
        handler=publish_status
    )
    publish_commands.add_parser(
        "promote", help="publish the audited green release (one commit per table)"
    ).set_defaults(handler=publish_switch)
    publish_commands.add_parser("rollback", help="switch back to blue (one restore commit per table)").set_defaults(
        handler=publish_switch
    )
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "end", None) and getattr(args, "start", None) and args.end < args.start:
        parser().error(f"--end {args.end} is before --start {args.start}")
    try:
        code = args.handler(args)
        sys.stdout.flush()  # a closed pipe surfaces here, not in the interpreter's exit flush
        return code
    except BrokenPipeError:
        # The reader went away (`| head -1`): stop quietly, as `cat` does. Point stdout at devnull
        # so the interpreter's final flush of the buffered rest does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a writer killed by a closed pipe


if __name__ == "__main__":
    sys.exit(main())
