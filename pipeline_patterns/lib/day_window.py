"""The day window of a run: one partition is a one-day window, a backfill range a longer one
(pattern: partitions and ranges; every write and read of a run covers exactly its window)."""

import dataclasses
import datetime as dt
from typing import Protocol


class SupportsTimeWindow(Protocol):
    @property
    def start(self) -> dt.datetime: ...

    @property
    def end(self) -> dt.datetime: ...


@dataclasses.dataclass(frozen=True)
class DayWindow:
    """Days [start, end): one partition is a one-day window, a backfill range a longer one."""

    start: dt.date
    end: dt.date

    @classmethod
    def of(cls, window: "SupportsTimeWindow") -> "DayWindow":
        """The days of a time window (Dagster's `TimeWindow`: `start`, `end` datetimes)."""
        return cls(window.start.date(), window.end.date())

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError(f"empty day window [{self.start}, {self.end})")

    def predicate(self, column: str) -> str:
        """The window on `column`, as a Delta/SQL predicate."""
        return f"{column} >= '{self.start.isoformat()}' AND {column} < '{self.end.isoformat()}'"

    @property
    def days(self) -> list[dt.date]:
        return [self.start + dt.timedelta(days=i) for i in range((self.end - self.start).days)]

    def __str__(self) -> str:
        last = self.end - dt.timedelta(days=1)
        return self.start.isoformat() if last == self.start else f"{self.start}...{last}"
