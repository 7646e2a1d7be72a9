"""What to do about each failed day without a person: request a re-run, wait, or give up (pure decisions).
See docs/self_healing.md."""

import dataclasses
from collections.abc import Collection, Mapping, Sequence

REQUEST, WAIT, GIVE_UP, IGNORE = "request", "wait", "give_up", "ignore"


@dataclasses.dataclass(frozen=True)
class FailedDay:
    day: str
    run_id: str  # the run whose failure left the day failed
    failed_at: float  # when that run ended, epoch seconds
    attempts: int  # automatic (healing) runs of the day since it last succeeded
    quarantined: tuple[str, ...] = ()  # regions whose region-day of it sits in quarantine
    corrected: tuple[str, ...] = ()  # of those, the regions the source has delivered a correction for
    retried_by_dagster: bool = False  # Dagster's run retries re-launch the failed run themselves


@dataclasses.dataclass(frozen=True)
class Decision:
    day: str
    action: str  # REQUEST, WAIT, GIVE_UP or IGNORE
    reason: str
    run_id: str  # the failed run the decision is about
    attempt: int = 0  # the attempt a REQUEST starts (1-based)


def decide(
    failed: Sequence[FailedDay],
    *,
    now: float,
    lookback_hours: float,
    max_attempts: int,
    breakers_open: Mapping[str, float],
    backfills_running: Mapping[str, Collection[str]] | None = None,
) -> list[Decision]:
    """One decision per failed day. `breakers_open`: breaker name -> seconds until it lets a trial
    through, for the breakers that refuse calls now; `backfills_running`: id of each backfill in
    progress -> the days it targets of what a healing run writes (a day waits only for those)."""
    decisions = []
    for day in sorted(failed, key=lambda d: d.day):
        waiting_for = sorted(set(day.quarantined) - set(day.corrected))
        backfills = sorted(b for b, days in (backfills_running or {}).items() if day.day in days)
        if now - day.failed_at > lookback_hours * 3600:
            action, reason = IGNORE, f"failed more than {lookback_hours:g} h ago: outside the healing window"
        elif day.attempts >= max_attempts:
            action, reason = (
                GIVE_UP,
                f"{day.attempts} automatic attempts failed (cap {max_attempts}); left for a person, see run {day.run_id}",
            )
        elif day.retried_by_dagster:
            action, reason = WAIT, f"Dagster's run retries re-launch run {day.run_id}"
        elif backfills:
            action, reason = (
                WAIT,
                f"backfill {', '.join(backfills)} targets this day: healing never fights a backfill",
            )
        elif waiting_for:
            action, reason = (
                WAIT,
                f"held by quarantine of {', '.join(waiting_for)}: waiting for the source's correction",
            )
        elif breakers_open:
            action, reason = (
                WAIT,
                "waiting for the dependency: "
                + ", ".join(
                    f"breaker {name} open, trial in {wait:.0f} s" for name, wait in sorted(breakers_open.items())
                ),
            )
        elif day.quarantined:
            action, reason = REQUEST, f"the source corrected {', '.join(sorted(day.quarantined))}"
        else:
            action, reason = REQUEST, f"run {day.run_id} failed; its dependencies take calls again"
        attempt = day.attempts + 1 if action == REQUEST else 0
        decisions.append(Decision(day.day, action, reason, day.run_id, attempt))
    return decisions
