"""The quality rules over a region-day of orders, one definition each, judged in batches (`DayJudge`).
See docs/quality_gates.md."""

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterable

import pyarrow as pa
import pyarrow.compute as pc

from pipeline_patterns.lib.landing import LandedDay
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
    max_event_age_days: float = 7.0
    """Oldest event time a feed day may carry (before the day's start): older is a broken
    timestamp, not a late order."""
    max_delivery_delay_days: float = 7.0
    """Latest delivery time a feed day may carry, after the day's end."""
    max_key_length: int = 256
    """Longest order, user or batch id accepted: a huge value is a broken line or an attack, not an id."""
    known_currencies: tuple[str, ...] = ()
    """The currencies the FX service has rates for (the gate asks the service, not the feed)."""
    region: str = ""
    """The region whose feed is judged: a row of another region is quarantined ('' checks none)."""


# Columns the parse and deduplication stage adds to the judged rows (`STAGED_SCHEMA`), not data.
STAGE_COLUMNS = ("parse_errors", "ordering_ties")

RowCheck = Callable[[pa.Table, dt.date, GateSettings], tuple[pa.Array | pa.ChunkedArray | None, dict[str, object]]]
"""A row rule's check: (orders, feed day, settings) -> (mask of failing rows, or None when the rule
does not apply; details)."""


@dataclasses.dataclass(frozen=True)
class RuleOutcome:
    rule: str
    passed: bool
    failing_rows: int
    sample_keys: list[str]
    details: dict[str, object]


SAMPLES = 5


@dataclasses.dataclass(frozen=True)
class RowRule:
    """A rule that flags rows: a day fails when any row does."""

    name: str
    description: str
    blocking: bool
    check: RowCheck

    @property
    def severity(self) -> str:
        return "ERROR" if self.blocking else "WARN"


@dataclasses.dataclass(frozen=True)
class DayFacts:
    """What the day rules judge: totals over all of a region-day's rows, and its landed files."""

    rows: int
    newest_event: pa.TimestampScalar | None
    """An Arrow scalar: a parsed time may lie beyond Python's datetime (year 10000 in UTC)."""
    repeated_ids: int
    """Rows whose order_id another row of the day also has."""
    repeated_sample: list[str]
    columns: dict[str, str]
    """Name -> type of the judged rows."""
    landed: LandedDay | None = None


@dataclasses.dataclass(frozen=True)
class DayRule:
    """A rule over the day as a whole."""

    name: str
    description: str
    blocking: bool
    check: Callable[[DayFacts, dt.date, GateSettings], tuple[bool, dict]]
    """-> (failed, details); details may carry `failing_rows` and `sample_keys`."""

    @property
    def severity(self) -> str:
        return "ERROR" if self.blocking else "WARN"


def _not_null(column: str) -> RowCheck:
    def check(orders: pa.Table, day: dt.date, settings: GateSettings) -> tuple[pa.ChunkedArray, dict[str, object]]:
        return pc.is_null(orders[column]), {"column": column}

    return check


def _values_parse(orders: pa.Table, day: dt.date, settings: GateSettings) -> tuple[pa.ChunkedArray, dict[str, object]]:
    return pc.greater(pc.utf8_length(pc.fill_null(orders["parse_errors"], "")), 0), {}


REQUIRED = ["region", "amount", "currency", "event_ts", "delivered_at"]


def _required_present(
    orders: pa.Table, day: dt.date, settings: GateSettings
) -> tuple[pa.ChunkedArray, dict[str, object]]:
    missing = pc.is_null(orders[REQUIRED[0]])
    for column in REQUIRED[1:]:
        missing = pc.or_(missing, pc.is_null(orders[column]))
    return missing, {"columns": ", ".join(REQUIRED)}


KEYS = ("order_id", "user_id", "batch_id")


def _keys_plausible(
    orders: pa.Table, day: dt.date, settings: GateSettings
) -> tuple[pa.ChunkedArray, dict[str, object]]:
    too_long = pc.greater(pc.utf8_length(orders[KEYS[0]]), settings.max_key_length)
    for column in KEYS[1:]:
        too_long = pc.or_(too_long, pc.greater(pc.utf8_length(orders[column]), settings.max_key_length))
    return pc.fill_null(too_long, False), {"max_key_length": settings.max_key_length, "columns": ", ".join(KEYS)}


TIE_REMEDY = (
    "two deliveries of an order tie on delivery time and batch sequence but differ in content, so which one is "
    "the correction is unknown: have the source redeliver the order with a later delivery time or batch"
)


def _deliveries_ordered(
    orders: pa.Table, day: dt.date, settings: GateSettings
) -> tuple[pa.ChunkedArray | None, dict[str, object]]:
    if "ordering_ties" not in orders.column_names:  # rows not from the deduplication: no deliveries to order
        return None, {"remedy": TIE_REMEDY}
    return pc.fill_null(pc.greater(orders["ordering_ties"], 0), False), {"remedy": TIE_REMEDY}


def _region_matches(
    orders: pa.Table, day: dt.date, settings: GateSettings
) -> tuple[pa.ChunkedArray | None, dict[str, object]]:
    if not settings.region:
        return None, {"region": "not checked"}
    other = pc.fill_null(pc.not_equal(orders["region"], settings.region), False)  # a null: required_fields_present
    return other, {"region": settings.region}


def _amount_plausible(
    orders: pa.Table, day: dt.date, settings: GateSettings
) -> tuple[pa.ChunkedArray, dict[str, object]]:
    amount = orders["amount"]
    implausible = pc.or_(pc.invert(pc.is_finite(amount)), pc.greater(pc.abs(amount), settings.max_amount))
    return pc.fill_null(implausible, False), {"max_amount": settings.max_amount}


def _amount_non_negative(
    orders: pa.Table, day: dt.date, settings: GateSettings
) -> tuple[pa.ChunkedArray, dict[str, object]]:
    return pc.fill_null(pc.less(orders["amount"], 0), False), {}


def _currency_known(
    orders: pa.Table, day: dt.date, settings: GateSettings
) -> tuple[pa.ChunkedArray, dict[str, object]]:
    known = pc.is_in(orders["currency"], value_set=pa.array(settings.known_currencies, pa.string()))
    return pc.invert(pc.fill_null(known, False)), {"known_currencies": ", ".join(settings.known_currencies)}


def _day_end(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


def _not_in_future(orders: pa.Table, day: dt.date, settings: GateSettings) -> tuple[pa.ChunkedArray, dict[str, object]]:
    limit = _day_end(day) + dt.timedelta(minutes=settings.future_tolerance_minutes)
    later = pc.greater(orders["event_ts"], pa.scalar(limit, pa.timestamp("us", tz="UTC")))
    return pc.fill_null(later, False), {"latest_allowed": limit.isoformat()}


def _times_in_range(
    orders: pa.Table, day: dt.date, settings: GateSettings
) -> tuple[pa.ChunkedArray, dict[str, object]]:
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    earliest = pa.scalar(start - dt.timedelta(days=settings.max_event_age_days), pa.timestamp("us", tz="UTC"))
    latest = pa.scalar(
        _day_end(day) + dt.timedelta(days=settings.max_delivery_delay_days), pa.timestamp("us", tz="UTC")
    )
    out = pc.or_(
        pc.less(orders["event_ts"], earliest),
        pc.or_(pc.less(orders["delivered_at"], earliest), pc.greater(orders["delivered_at"], latest)),
    )
    return pc.fill_null(out, False), {
        "earliest_allowed": earliest.as_py().isoformat(),
        "latest_delivery_allowed": latest.as_py().isoformat(),
    }


def _files_readable(facts: DayFacts, day: dt.date, settings: GateSettings) -> tuple[bool, dict[str, object]]:
    refused = facts.landed.refused if facts.landed else []
    return bool(refused), {"refused_files": "; ".join(refused) or "none"}


def _schema(facts: DayFacts, day: dt.date, settings: GateSettings) -> tuple[bool, dict[str, object]]:
    expected = {f.name: str(f.type) for f in REGIONAL_SCHEMA}
    actual = {k: v for k, v in facts.columns.items() if k in expected}
    drift = {k: f"{actual.get(k, 'missing')} (expected {v})" for k, v in expected.items() if actual.get(k) != v}
    extra = sorted(set(facts.columns) - set(expected) - set(STAGE_COLUMNS))
    header_drift = facts.landed.drift if facts.landed else []
    return bool(drift or extra or header_drift), {
        "drift": str(drift) if drift else "none",
        "unexpected_columns": ", ".join(extra) or "none",
        "landed_header_drift": "; ".join(header_drift) or "none",
    }


def _unique_order_id(facts: DayFacts, day: dt.date, settings: GateSettings) -> tuple[bool, dict[str, object]]:
    return facts.repeated_ids > 0, {"failing_rows": facts.repeated_ids, "sample_keys": facts.repeated_sample}


def _volume(facts: DayFacts, day: dt.date, settings: GateSettings) -> tuple[bool, dict[str, object]]:
    inside = settings.min_orders_per_day <= facts.rows <= settings.max_orders_per_day
    return not inside, {
        "orders": facts.rows,
        "min_orders_per_day": settings.min_orders_per_day,
        "max_orders_per_day": settings.max_orders_per_day,
    }


def _fresh(facts: DayFacts, day: dt.date, settings: GateSettings) -> tuple[bool, dict[str, object]]:
    newest = facts.newest_event
    oldest_allowed = _day_end(day) - dt.timedelta(hours=settings.freshness_lag_hours)
    stale = newest is None or pc.less(newest, pa.scalar(oldest_allowed, newest.type)).as_py()
    return stale, {
        "newest_event": str(pc.strftime(newest, "%Y-%m-%dT%H:%M:%S%z")) if newest else "none",
        "oldest_allowed": oldest_allowed.isoformat(),
    }


RULES: list[RowRule | DayRule] = [
    DayRule(
        "files_readable",
        "Every landed file of the day was read: none refused (a link, outside the landing zone, missing, "
        "compressed, or a corrupt manifest).",
        True,
        _files_readable,
    ),
    DayRule("schema_matches", "Columns and types are the expected ones (schema drift is caught).", True, _schema),
    RowRule(
        "values_parse", "Every line is well formed and every value parses (amounts, timestamps).", True, _values_parse
    ),
    RowRule("order_id_not_null", "Every order has an order_id.", True, _not_null("order_id")),
    RowRule("user_id_not_null", "Every order has a user_id.", True, _not_null("user_id")),
    DayRule("order_id_unique", "One row per order and day after deduplication.", True, _unique_order_id),
    RowRule(
        "deliveries_ordered",
        "The newest delivery of every order is known: no two deliveries tie on delivery time and batch sequence "
        "with different content.",
        True,
        _deliveries_ordered,
    ),
    DayRule("volume_within_bounds", "The day's order count is within the configured bounds.", True, _volume),
    RowRule(
        "required_fields_present",
        "Every order has a region, amount, currency, event time and delivery time.",
        True,
        _required_present,
    ),
    RowRule(
        "keys_plausible", "Order, user and batch ids are at most max_key_length characters.", True, _keys_plausible
    ),
    RowRule("region_matches", "Every row belongs to the region whose feed delivered it.", True, _region_matches),
    RowRule("amount_plausible", "Every amount is a finite number no larger than max_amount.", True, _amount_plausible),
    RowRule("amount_non_negative", "No negative amounts.", True, _amount_non_negative),
    RowRule("currency_known", "Every currency has an FX rate.", True, _currency_known),
    RowRule("event_time_not_in_future", "No event time after the end of its feed day.", True, _not_in_future),
    RowRule(
        "times_in_range",
        "Event times no older than max_event_age_days before the feed day; delivery times within "
        "max_event_age_days before and max_delivery_delay_days after it.",
        True,
        _times_in_range,
    ),
    DayRule("event_time_fresh", "The newest event is within the freshness lag of the day's end.", False, _fresh),
]


SHOWN_KEY_LENGTH = 64


def shown(key: str | None) -> str:
    """A sample id as reasons and check metadata show it: at most SHOWN_KEY_LENGTH characters (an
    absurd id is a broken line, and its content has no place in a message)."""
    text = str(key)
    return text if len(text) <= SHOWN_KEY_LENGTH else f"{text[: SHOWN_KEY_LENGTH - 1]}… ({len(text):,} characters)"


REPEATS = "_repeats"
"""A column Spark adds to the rows it judges: the rows of the whole day with the row's order id."""


def _smallest(keys: Iterable[str | None]) -> list[str | None]:
    """The SAMPLES smallest ids, missing ones last: the reason is part of the content, so the
    samples must not depend on the order Spark delivers rows in."""
    return sorted(keys, key=lambda k: (k is None, k or ""))[:SAMPLES]


class DayJudge:
    """Judges one region-day fed in batches: memory is one batch's, whatever the day's size.
    Repeated order ids are counted from `REPEATS` when the rows carry it (Spark's count over the
    whole day); else the judge counts them itself, holding the ids (fine for small days and tests)."""

    def __init__(
        self,
        day: dt.date,
        settings: GateSettings,
        landed: LandedDay | None = None,
    ):
        self.day, self.settings, self.landed = day, settings, landed
        self.rows, self.newest, self.columns = 0, None, {f.name: str(f.type) for f in REGIONAL_SCHEMA}
        self.failing = {r.name: 0 for r in RULES if isinstance(r, RowRule)}
        self.samples: dict[str, list[str | None]] = {name: [] for name in self.failing}
        self.details: dict[str, dict] = {}
        self._ids: list[pa.Array] = []
        self._counted: tuple[int, list[str | None]] | None = None  # from REPEATS

    def add(self, orders: pa.Table) -> None:
        if REPEATS in orders.column_names:
            repeated = pc.and_(pc.is_valid(orders["order_id"]), pc.greater(orders[REPEATS], 1))
            ids = orders["order_id"].filter(repeated)
            rows, sample = self._counted or (0, [])
            self._counted = rows + len(ids), _smallest({*sample, *pc.unique(ids).to_pylist()})
            orders = orders.drop_columns([REPEATS])
        self.columns = {f.name: str(f.type) for f in orders.schema}
        if orders.num_rows == 0:
            return
        self.rows += orders.num_rows
        newest = pc.max(orders["event_ts"])
        if newest.is_valid and (self.newest is None or pc.greater(newest, self.newest).as_py()):
            self.newest = newest
        if self._counted is None:
            self._ids.append(orders["order_id"].combine_chunks())
        for rule in RULES:
            if isinstance(rule, RowRule):
                mask, self.details[rule.name] = rule.check(orders, self.day, self.settings)
                if mask is None:
                    continue
                failing = orders.filter(mask)
                if failing.num_rows:
                    self.failing[rule.name] += failing.num_rows
                    named = failing.filter(pc.is_valid(failing["order_id"]))
                    first = pc.select_k_unstable(named, SAMPLES, [("order_id", "ascending")])
                    ids = named.take(first)["order_id"].to_pylist() if named.num_rows else []
                    ids += [None] * min(failing.num_rows - named.num_rows, SAMPLES)
                    self.samples[rule.name] = _smallest([*self.samples[rule.name], *ids])

    def facts(self) -> DayFacts:
        if self._counted is not None:
            repeated = self._counted[0], [shown(k) for k in self._counted[1]]
        else:
            repeated = _repeated(pa.chunked_array(self._ids, pa.string()))
        return DayFacts(self.rows, self.newest, repeated[0], list(repeated[1]), self.columns, self.landed)

    def outcomes(self) -> list[RuleOutcome]:
        facts = self.facts()
        outcomes = []
        for rule in RULES:
            if isinstance(rule, RowRule):
                if rule.name not in self.details:  # no rows: the rule's parameters only
                    _, self.details[rule.name] = rule.check(_EMPTY, self.day, self.settings)
                failing, samples, details = self.failing[rule.name], self.samples[rule.name], self.details[rule.name]
            else:
                failed, details = rule.check(facts, self.day, self.settings)
                details = dict(details)
                failing, samples = details.pop("failing_rows", 0), details.pop("sample_keys", [])
            passed = not failed if isinstance(rule, DayRule) else failing == 0
            outcomes.append(RuleOutcome(rule.name, passed, failing, [shown(k) for k in samples], details))
        return outcomes


_EMPTY = pa.schema([*REGIONAL_SCHEMA, pa.field("parse_errors", pa.string())]).empty_table()


def _repeated(ids: pa.ChunkedArray) -> tuple[int, list[str]]:
    counts = pa.table({"order_id": ids}).group_by("order_id").aggregate([("order_id", "count")])
    repeated = counts.filter(pc.and_(pc.greater(counts["order_id_count"], 1), pc.is_valid(counts["order_id"])))
    rows = pc.sum(repeated["order_id_count"]).as_py() or 0
    return rows, [shown(k) for k in _smallest(repeated["order_id"].to_pylist())]


def evaluate_day(
    orders: pa.Table, day: dt.date, settings: GateSettings, landed: LandedDay | None = None
) -> list[RuleOutcome]:
    """Every rule over one region-day's (deduplicated) orders, in one batch."""
    judge = DayJudge(day, settings, landed)
    judge.add(orders)
    return judge.outcomes()


def blocking_failures(outcomes: list[RuleOutcome]) -> list[RuleOutcome]:
    blocking = {r.name for r in RULES if r.blocking}
    return [o for o in outcomes if not o.passed and o.rule in blocking]
