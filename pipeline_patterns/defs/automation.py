"""Automation conditions: downstream aggregates follow their upstream on their own (pattern:
keeping aggregates right after a backfill).

Dagster's `AutomationCondition.eager()` only looks at the latest time partition, so a backfill
of last year's days would never refresh last year's months. `follows_upstream` is eager() without
that limit: a partition is requested when it is missing or any of ITS upstream partitions was
updated, so a rewritten day refreshes exactly the month it falls in and nothing else.
"""

import dagster as dg


def follows_upstream(*, wait_for_complete_upstream: bool) -> dg.AutomationCondition:
    condition = (
        (dg.AutomationCondition.newly_missing() | dg.AutomationCondition.any_deps_updated()).since_last_handled()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    )
    if wait_for_complete_upstream:
        # a month is computed once all its days exist; nothing runs before its upstream is ready
        condition = condition & ~dg.AutomationCondition.any_deps_missing()
    return condition.with_label("follows_upstream")
