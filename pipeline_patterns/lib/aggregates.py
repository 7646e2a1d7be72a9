"""When the monthly and summary aggregates are recomputed (pure decisions over event-log storage ids):
a month only when it can be published or a published month lost or changed a day, never twice for
the same state of its days. See docs/backfills.md."""

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence

from pipeline_patterns.lib.day_window import DayWindow

SUMMARY = "summary"  # the key of revenue_summary among the months of `Plan.requested`


@dataclasses.dataclass(frozen=True)
class Day:
    day: str
    changed: int = 0  # storage id of its newest change: materialized, or targeted by a run (0: never)
    materialized: bool = False  # its status is MATERIALIZED
    in_progress: bool = False  # a run is writing it now


@dataclasses.dataclass(frozen=True)
class Month:
    month: str  # its first day: the monthly partition key
    days: tuple[Day, ...]  # every day of the month
    published: int = 0  # storage id of its newest materialization (0: never published)
    last_run: int = 0  # storage id of its newest run's planned event (0: never attempted)


@dataclasses.dataclass(frozen=True)
class Request:
    month: str  # a month's first day, or SUMMARY
    newest: int  # the newest change it covers
    reason: str


@dataclasses.dataclass(frozen=True)
class Plan:
    requests: list[Request]
    waiting: list[str]  # per month left alone, what it waits for
    up_to_date: list[str]  # months whose publication includes their newest day
    requested: dict[str, str]  # the next cursor: month (or SUMMARY) -> the state of its days last requested


def month_days(month: str) -> list[str]:
    """The days of the month that starts on `month` (YYYY-MM-01)."""
    start = dt.date.fromisoformat(month)
    end = (start.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return [d.isoformat() for d in DayWindow(start, end).days]


def listed(days: Sequence[str], most: int = 3) -> str:
    return ", ".join(days[:most]) + (", ..." if len(days) > most else "")


def plan(months: Sequence[Month], *, newest_day: int, summary: int, requested: Mapping[str, str]) -> Plan:
    """What to request now. `newest_day`: storage id of daily_revenue's newest materialization;
    `summary`: of revenue_summary's (0: never); `requested`: the previous plan's `requested`.

    A month is requested when all its days are materialized and one changed after its last run
    started, or when it was published and now lacks a day (its run then fails naming the day, so the
    month shows FAILED instead of a total without it). A month attempted but never published is not
    published. The state of the days a month is requested for is remembered: a state already
    requested is never requested again, whatever its run did."""
    requests, waiting, up_to_date, remembered = [], [], [], dict(requested)
    for month in sorted(months, key=lambda m: m.month):
        name, newest = month.month[:7], max((d.changed for d in month.days), default=0)
        writing = [d.day for d in month.days if d.in_progress]
        lacking = [d.day for d in month.days if not d.materialized]
        state = f"lacking {','.join(lacking)}" if lacking else f"complete at {newest}"
        if writing:
            waiting.append(f"{name}: days being written ({listed(writing)})")
        elif lacking and not month.published:
            waiting.append(
                f"{name}: {len(lacking)} of {len(month.days)} days not materialized ({listed(lacking)}); "
                "a month is published only complete"
            )
        elif month.published >= newest:
            up_to_date.append(name)
        elif month.last_run >= newest or requested.get(month.month) == state:
            waiting.append(
                f"{name}: its run for this state of its days "
                + ("was requested or ran already" if not lacking else f"fails for lacking {listed(lacking)}")
                + "; waiting for a day to change"
            )
        else:
            requests.append(
                Request(
                    month.month,
                    newest,
                    f"{name}: published, now lacks {listed(lacking)}: its run fails naming them"
                    if lacking
                    else f"{name}: every day materialized, "
                    + ("a day changed since it was published" if month.published else "not published yet"),
                )
            )
            remembered[month.month] = state
    summary_state = f"complete at {newest_day}"
    if newest_day > summary and requested.get(SUMMARY) != summary_state:
        requests.append(Request(SUMMARY, newest_day, "daily_revenue has days newer than the summary"))
        remembered[SUMMARY] = summary_state
    elif newest_day > summary:
        waiting.append("summary: its run for the newest day was requested already")
    return Plan(requests, waiting, up_to_date, remembered)
