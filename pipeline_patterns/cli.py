"""The `pipeline-patterns` command: what the simulated source will deliver, and (in later
patterns) tools to inspect and prove the pipeline's guarantees.

    pipeline-patterns source defects --start 2024-01-01 --end 2024-03-31   (JSON lines)
"""

import argparse
import datetime as dt
import json
import sys

from pipeline_patterns.defs.partitions import REGIONS
from pipeline_patterns.defs.sources import OrdersSource
from pipeline_patterns.lib.simulated_feed import days_between, region_day_defects


def _day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not a day (YYYY-MM-DD): {text!r}") from error


def source_defects(args: argparse.Namespace) -> int:
    """One JSON line per region-day in [start, end] that carries at least one defect."""
    settings = OrdersSource().settings()
    regions = args.region or REGIONS
    for day in days_between(args.start, args.end + dt.timedelta(days=1)):
        for region in regions:
            defects = region_day_defects(region, day, settings)
            if defects.defects and (not args.defect or args.defect in defects.defects):
                print(json.dumps(defects.as_json()))
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="pipeline-patterns", description=__doc__.splitlines()[0])
    commands = root.add_subparsers(dest="command", required=True)

    source = commands.add_parser("source", help="the simulated regional order feed")
    source_commands = source.add_subparsers(dest="source_command", required=True)
    defects = source_commands.add_parser(
        "defects", help="which region-days carry which defect, as JSON lines"
    )
    defects.add_argument("--start", type=_day, required=True, help="first day, YYYY-MM-DD")
    defects.add_argument("--end", type=_day, required=True, help="last day (inclusive), YYYY-MM-DD")
    defects.add_argument("--region", action="append", choices=REGIONS, help="repeatable; default all")
    defects.add_argument(
        "--defect",
        choices=["duplicate_deliveries", "late_records", "null_user_ids", "collapsed_volume"],
        help="only region-days with this defect",
    )
    defects.set_defaults(handler=source_defects)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "end", None) and getattr(args, "start", None) and args.end < args.start:
        parser().error(f"--end {args.end} is before --start {args.start}")
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
