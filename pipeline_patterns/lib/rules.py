"""Quality rules over a region-day of orders (pattern: quality gate; process or quarantine).

One definition per rule, parameterised, reused for every region: each returns whether the
region-day passed, how many rows failed, sample order ids and its parameters. A region-day that
fails any blocking rule goes to quarantine as a whole; the clean table never holds it.
"""

import dataclasses
import datetime as dt
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from pipeline_patterns.lib.orders import REGIONAL_SCHEMA


@dataclasses.dataclass(frozen=True)
class GateSettings:
    """The gates' parameters. The volume bounds catch the simulator's collapsed-volume days (2 %
    of 5,000 orders) and pass normal days; size them to your feed."""

    min_orders_per_day: int = 1000
    max_orders_per_day: int = 100_000
    freshness_lag_hours: float = 6.0
    future_tolerance_minutes: float = 5.0
    max_amount: float = 1_000_000.0
    max_key_length: int = 256
    """Longest order or user id accepted: a huge value is a broken line or an attack, not an id."""
    known_currencies: tuple[str, ...] = ()
    """The currencies the FX service has rates for (the gate asks the service, not the feed)."""
    region: str = ""
    """The region whose feed is judged: a row of another region is quarantined ('' checks none)."""


@dataclasses.dataclass(frozen=True)
class RuleOutcome:
    rule: str
    passed: bool
    failing_rows: int
    sample_keys: list[str]
    details: dict[str, object]


@dataclasses.dataclass(frozen=True)
class Rule:
    name: str
    description: str
    blocking: bool
    check: Callable[[pa.Table, dt.date, GateSettings], tuple[pa.Array | None, dict]]

    @property
    def severity(self) -> str:
        return "ERROR" if self.blocking else "WARN"

    def evaluate(self, orders: pa.Table, day: dt.date, settings: GateSettings) -> RuleOutcome:
        bad_mask, details = self.check(orders, day, settings)
        failing = orders.filter(bad_mask) if bad_mask is not None else orders.slice(0, 0)
        passed = not details.pop("_failed", failing.num_rows > 0)
        # the smallest ids, not the first Spark returned: the reason is part of the content
        smallest = (
            pc.select_k_unstable(failing, 5, [("order_id", "ascending")])
            if failing.num_rows
            else pa.array([], pa.uint64())
        )
        return RuleOutcome(
            rule=self.name,
            passed=passed,
            failing_rows=failing.num_rows,
            # the smallest ids, not the first Spark returned: the reason is part of the content
            sample_keys=[str(k) for k in failing.take(smallest)["order_id"].to_pylist()],
            details=details,
        )


def _not_null(column: str) -> Callable:
    def check(orders: pa.Table, day: dt.date, settings: GateSettings):
        return pc.is_null(orders[column]), {"column": column}

    return check


def _unique_order_id(orders, day, settings):
    counts = orders.group_by("order_id").aggregate([("order_id", "count")])
    repeated = counts.filter(pc.greater(counts["order_id_count"], 1))["order_id"]
    return pc.is_in(orders["order_id"], value_set=repeated), {}


def _volume(orders, day, settings):
    rows = orders.num_rows
    inside = settings.min_orders_per_day <= rows <= settings.max_orders_per_day
    return None, {
        "_failed": not inside,
        "orders": rows,
        "min_orders_per_day": settings.min_orders_per_day,
        "max_orders_per_day": settings.max_orders_per_day,
    }


def _values_parse(orders, day, settings):
    return pc.greater(pc.utf8_length(pc.fill_null(orders["parse_errors"], "")), 0), {}


REQUIRED = ["region", "amount", "currency", "event_ts", "delivered_at"]


def _required_present(orders, day, settings):
    missing = pc.is_null(orders[REQUIRED[0]])
    for column in REQUIRED[1:]:
        missing = pc.or_(missing, pc.is_null(orders[column]))
    return missing, {"columns": ", ".join(REQUIRED)}


def _keys_plausible(orders, day, settings):
    too_long = pc.or_(
        pc.greater(pc.utf8_length(orders["order_id"]), settings.max_key_length),
        pc.greater(pc.utf8_length(orders["user_id"]), settings.max_key_length),
    )
    return pc.fill_null(too_long, False), {"max_key_length": settings.max_key_length}


def _region_matches(orders, day, settings):
    if not settings.region:
        return None, {"region": "not checked"}
    other = pc.fill_null(pc.not_equal(orders["region"], settings.region), False)  # a null: required_fields_present
    return other, {"region": settings.region}


def _amount_plausible(orders, day, settings):
    amount = orders["amount"]
    implausible = pc.or_(pc.invert(pc.is_finite(amount)), pc.greater(pc.abs(amount), settings.max_amount))
    return pc.fill_null(implausible, False), {"max_amount": settings.max_amount}


def _amount_non_negative(orders, day, settings):
    return pc.fill_null(pc.less(orders["amount"], 0), False), {}


def _currency_known(orders, day, settings):
    known = pc.is_in(orders["currency"], value_set=pa.array(settings.known_currencies))
    return pc.invert(pc.fill_null(known, False)), {"known_currencies": ", ".join(settings.known_currencies)}


def _day_end(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


def _not_in_future(orders, day, settings):
    limit = _day_end(day) + dt.timedelta(minutes=settings.future_tolerance_minutes)
    later = pc.greater(orders["event_ts"], pa.scalar(limit, pa.timestamp("us", tz="UTC")))
    return pc.fill_null(later, False), {"latest_allowed": limit.isoformat()}


def _fresh(orders, day, settings):
    newest = pc.max(orders["event_ts"]).as_py()
    oldest_allowed = _day_end(day) - dt.timedelta(hours=settings.freshness_lag_hours)
    return None, {
        "_failed": newest is None or newest < oldest_allowed,
        "newest_event": newest.isoformat() if newest else "none",
        "oldest_allowed": oldest_allowed.isoformat(),
    }


def _schema(orders, day, settings):
    expected = {f.name: str(f.type) for f in REGIONAL_SCHEMA}
    actual = {f.name: str(f.type) for f in orders.schema if f.name in expected}
    drift = {k: f"{actual.get(k, 'missing')} (expected {v})" for k, v in expected.items() if actual.get(k) != v}
    extra = sorted(set(orders.column_names) - set(expected) - {"parse_errors", "landed_columns"})
    header_drift = (
        sorted(set(pc.unique(orders["landed_columns"]).to_pylist()) - {None})
        if "landed_columns" in orders.column_names
        else []
    )
    return None, {
        "_failed": bool(drift or extra or header_drift),
        "drift": str(drift) if drift else "none",
        "unexpected_columns": ", ".join(extra) or "none",
        "landed_header_drift": "; ".join(header_drift) or "none",
    }


RULES: list[Rule] = [
    Rule("schema_matches", "Columns and types are the expected ones (schema drift is caught).", True, _schema),
    Rule(
        "values_parse", "Every line is well formed and every value parses (amounts, timestamps).", True, _values_parse
    ),
    Rule("order_id_not_null", "Every order has an order_id.", True, _not_null("order_id")),
    Rule("user_id_not_null", "Every order has a user_id.", True, _not_null("user_id")),
    Rule("order_id_unique", "One row per order and day after deduplication.", True, _unique_order_id),
    Rule("volume_within_bounds", "The day's order count is within the configured bounds.", True, _volume),
    Rule(
        "required_fields_present",
        "Every order has a region, amount, currency, event time and delivery time.",
        True,
        _required_present,
    ),
    Rule("keys_plausible", "Order and user ids are at most max_key_length characters.", True, _keys_plausible),
    Rule("region_matches", "Every row belongs to the region whose feed delivered it.", True, _region_matches),
    Rule("amount_plausible", "Every amount is a finite number no larger than max_amount.", True, _amount_plausible),
    Rule("amount_non_negative", "No negative amounts.", True, _amount_non_negative),
    Rule("currency_known", "Every currency has an FX rate.", True, _currency_known),
    Rule("event_time_not_in_future", "No event time after the end of its feed day.", True, _not_in_future),
    Rule("event_time_fresh", "The newest event is within the freshness lag of the day's end.", False, _fresh),
]


def evaluate_day(orders: pa.Table, day: dt.date, settings: GateSettings) -> list[RuleOutcome]:
    """Every rule over one region-day's (deduplicated) orders."""
    return [rule.evaluate(orders, day, settings) for rule in RULES]


def blocking_failures(outcomes: list[RuleOutcome]) -> list[RuleOutcome]:
    blocking = {r.name for r in RULES if r.blocking}
    return [o for o in outcomes if not o.passed and o.rule in blocking]
