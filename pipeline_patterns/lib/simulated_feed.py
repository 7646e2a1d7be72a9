"""The deterministic regional order feed, its defects, and simulated FX rates (the source system).
See docs/source_and_landing.md."""

import dataclasses
import datetime as dt
import io
import json
import math
import os
import pathlib
import random
import zlib
from collections.abc import Collection, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

# What each region sells in; the first currency is the main one. A region missing here sells in USD.
CURRENCIES_BY_REGION: dict[str, tuple[str, ...]] = {
    "us-east": ("USD",),
    "us-west": ("USD", "MXN"),
    "eu-west": ("EUR", "GBP"),
    "ap-south": ("INR", "SGD"),
}
# USD per unit, the level the simulated FX rates move around.
BASE_USD_RATES: dict[str, float] = {
    "USD": 1.0,
    "EUR": 1.09,
    "GBP": 1.27,
    "MXN": 0.058,
    "INR": 0.012,
    "SGD": 0.74,
    "CAD": 0.74,
}

RECORD_FIELDS = (
    "order_id",
    "user_id",
    "region",
    "amount",
    "currency",
    "event_ts",
    "batch_id",
    "delivered_at",
)
REDELIVERY_BATCH = "redelivery"


@dataclasses.dataclass(frozen=True)
class FeedSettings:
    """Volume and defect rates of the simulated feed (realistic, low defaults)."""

    seed: int = 7
    orders_per_day: int = 5000
    batches_per_day: int = 4
    duplicate_rate: float = 0.005
    late_rate: float = 0.01
    null_user_day_rate: float = 0.02
    null_user_fraction: float = 0.2
    collapsed_volume_day_rate: float = 0.02
    collapsed_volume_fraction: float = 0.02
    users_per_region: int = 20_000
    corrected: frozenset[tuple[str, str]] = frozenset()
    """(region, 'YYYY-MM-DD') pairs the source has corrected: re-fetched, such a region-day comes
    without its bad-day defects (null user ids, collapsed volume). ('*', '*') corrects every day."""

    def is_corrected(self, region: str, day: dt.date) -> bool:
        keys = {(region, day.isoformat()), (region, "*"), ("*", day.isoformat()), ("*", "*")}
        return not keys.isdisjoint(self.corrected)


@dataclasses.dataclass(frozen=True)
class RegionDayDefects:
    """What is wrong with one region-day of the feed, known before generating it."""

    region: str
    day: dt.date
    orders: int
    duplicate_deliveries: int
    late_records: int
    null_user_ids: int
    collapsed_volume: bool

    @property
    def defects(self) -> list[str]:
        names = []
        if self.duplicate_deliveries:
            names.append("duplicate_deliveries")
        if self.late_records:
            names.append("late_records")
        if self.null_user_ids:
            names.append("null_user_ids")
        if self.collapsed_volume:
            names.append("collapsed_volume")
        return names

    def as_json(self) -> dict:
        return {
            "region": self.region,
            "day": self.day.isoformat(),
            "defects": self.defects,
            "orders": self.orders,
            "duplicate_deliveries": self.duplicate_deliveries,
            "late_records": self.late_records,
            "null_user_ids": self.null_user_ids,
            "collapsed_volume": self.collapsed_volume,
        }


def _stable_id(text: str) -> int:
    # hash() is salted per process; crc32 is the same everywhere.
    return zlib.crc32(text.encode())


def _rng(seed: int, *parts: str | int) -> np.random.Generator:
    return np.random.default_rng([seed] + [p if isinstance(p, int) else _stable_id(p) for p in parts])


def region_day_defects(region: str, day: dt.date, settings: FeedSettings) -> RegionDayDefects:
    rng = _rng(settings.seed, "defects", region, day.toordinal())
    null_draw, collapse_draw = rng.random(2)
    if settings.is_corrected(region, day):
        null_draw = collapse_draw = 1.0  # the corrected re-delivery: the same orders, whole and complete
    collapsed = bool(collapse_draw < settings.collapsed_volume_day_rate)
    orders = settings.orders_per_day
    if collapsed:
        orders = max(1, int(orders * settings.collapsed_volume_fraction))
    null_users = 0
    if null_draw < settings.null_user_day_rate:
        null_users = max(1, int(orders * settings.null_user_fraction))
    return RegionDayDefects(
        region=region,
        day=day,
        orders=orders,
        duplicate_deliveries=int(rng.binomial(orders, settings.duplicate_rate)),
        late_records=int(rng.binomial(orders, settings.late_rate)),
        null_user_ids=null_users,
        collapsed_volume=collapsed,
    )


def _iso(ts_seconds: np.ndarray) -> list[str]:
    return np.datetime_as_string(ts_seconds.astype("datetime64[s]"), unit="s", timezone="UTC").tolist()


def region_day_deliveries(region: str, day: dt.date, settings: FeedSettings) -> dict[str, pa.Table]:
    """The batches the feed delivers for one region-day: batch id -> records (all strings, as
    received). Orders delivered twice appear in the final `redelivery` batch."""
    defects = region_day_defects(region, day, settings)
    n = defects.orders
    rng = _rng(settings.seed, "orders", region, day.toordinal())
    day_start = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())
    seconds = np.sort(rng.integers(0, 86_400, n))
    batches = settings.batches_per_day
    batch_index = seconds * batches // 86_400
    event_ts = day_start + seconds
    late = rng.choice(n, size=defects.late_records, replace=False)
    event_ts[late] -= rng.integers(1, 4, size=late.size) * 86_400

    user_ids = np.char.add("u", np.char.zfill(rng.integers(0, settings.users_per_region, n).astype(str), 6))
    user_ids = user_ids.astype(object)
    user_ids[rng.choice(n, size=defects.null_user_ids, replace=False)] = None

    currencies = CURRENCIES_BY_REGION.get(region, ("USD",))
    weights = np.array([0.8] + [0.2 / (len(currencies) - 1)] * (len(currencies) - 1)) if len(currencies) > 1 else None
    currency = rng.choice(np.array(currencies), size=n, p=weights)
    usd_value = rng.lognormal(mean=3.6, sigma=0.8, size=n)
    base = np.array([BASE_USD_RATES[c] for c in currency])
    amount = np.round(usd_value / base, 2)

    ymd = day.strftime("%Y%m%d")
    order_ids = np.char.add(f"{region}-{ymd}-", np.char.zfill(np.arange(n).astype(str), 6))
    batch_ids = np.char.add(f"{region}-{ymd}-b", np.char.zfill(batch_index.astype(str), 2))
    delivered_at = day_start + (batch_index + 1) * (86_400 // batches) + 300

    columns = {
        "order_id": order_ids.tolist(),
        "user_id": user_ids.tolist(),
        "region": [region] * n,
        "amount": [f"{a:.2f}" for a in amount],
        "currency": currency.tolist(),
        "event_ts": _iso(event_ts),
        "batch_id": batch_ids.tolist(),
        "delivered_at": _iso(delivered_at),
    }
    schema = pa.schema([(name, pa.string()) for name in RECORD_FIELDS])
    records = pa.table(columns, schema=schema)
    deliveries = {bid: records.filter(pc.equal(records["batch_id"], bid)) for bid in sorted(set(columns["batch_id"]))}
    dup = np.sort(rng.choice(n, size=defects.duplicate_deliveries, replace=False))
    if dup.size:
        redelivery_id = f"{region}-{ymd}-{REDELIVERY_BATCH}"
        again = records.take(pa.array(dup))
        again = again.set_column(
            again.schema.get_field_index("batch_id"), "batch_id", pa.array([redelivery_id] * dup.size)
        )
        again = again.set_column(
            again.schema.get_field_index("delivered_at"),
            "delivered_at",
            pa.array(_iso(np.full(dup.size, day_start + 86_400 + 3_600))),
        )
        deliveries[redelivery_id] = again
    return deliveries


def region_day_files(region: str, day: dt.date, settings: FeedSettings) -> dict[str, bytes]:
    """The deliveries of a region-day as the feed sends them: file name -> CSV bytes."""
    files = {}
    for batch_id, records in region_day_deliveries(region, day, settings).items():
        buffer = io.BytesIO()
        pacsv.write_csv(records, buffer)
        files[f"{batch_id}.csv"] = buffer.getvalue()
    return files


def expected_orders(region: str, day: dt.date, settings: FeedSettings) -> pa.Table:
    """One row per distinct order of a region-day, as a correct pipeline must keep it
    (the latest delivery of each order). Used by tests and the idempotency proof."""
    records = pa.concat_tables(region_day_deliveries(region, day, settings).values())
    records = records.sort_by([("order_id", "ascending"), ("delivered_at", "descending")])
    order_ids = records["order_id"].to_pylist()
    keep = [i for i, oid in enumerate(order_ids) if i == 0 or order_ids[i - 1] != oid]
    return records.take(pa.array(keep))


def read_corrections(path: str) -> list[str]:
    """The 'REGION DAY' entries of a corrections file ([] when there is none yet)."""
    if not path or not os.path.exists(path):
        return []
    try:
        entries = json.loads(pathlib.Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(
            f"corrections file {path} is not valid JSON ({error}); rewrite it with `pipeline-patterns source correct`"
        ) from error
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise ValueError(f"corrections file {path} must hold a JSON list of 'REGION DAY' strings")
    return entries


def add_corrections(path: str, entries: list[str]) -> list[str]:
    """Record that the source corrected these region-days; atomic, so a reader sees old or new."""
    merged = sorted(set(read_corrections(path)) | set(entries))
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(merged, indent=1))
    os.replace(tmp, target)
    return merged


def days_between(start: dt.date, end: dt.date) -> Iterator[dt.date]:
    """Days in [start, end)."""
    for offset in range((end - start).days):
        yield start + dt.timedelta(days=offset)


def usd_rate(currency: str, day: dt.date, seed: int = 7) -> float:
    """Simulated USD per unit of `currency` on `day`: a slow seasonal swing plus daily noise."""
    if currency not in BASE_USD_RATES:
        raise KeyError(f"no FX rate for unknown currency {currency!r}")
    if currency == "USD":
        return 1.0
    phase = (_stable_id(currency) % 628) / 100
    noise = _rng(seed, "fx", currency, day.toordinal()).normal(0, 0.004)
    swing = 0.03 * math.sin(2 * math.pi * day.toordinal() / 365 + phase)
    return round(BASE_USD_RATES[currency] * math.exp(swing + noise), 6)


class SourceUnavailableError(ConnectionError):
    """The feed did not answer (a timeout, a 5xx, a refused connection): worth retrying."""


@dataclasses.dataclass
class FeedFaults:
    """Fault injection for the simulated feed: a share of calls fail at random, and the feed is
    down during outage windows (wall-clock UTC, [start, end)). Seeded: the same seed fails the
    same calls, so a test with faults never passes or fails by chance."""

    failure_rate: float = 0.0
    outages: Sequence[tuple[dt.datetime, dt.datetime]] = ()
    seed: int = 7

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def check(self, what: str, now: dt.datetime | None = None) -> None:
        now = now or dt.datetime.now(dt.UTC)
        for start, end in self.outages:
            if start <= now < end:
                raise SourceUnavailableError(f"{what}: the feed is down (outage until {end.isoformat()})")
        if self.failure_rate and self.rng.random() < self.failure_rate:
            raise SourceUnavailableError(f"{what}: the feed timed out (simulated transient failure)")


def expected_day_orders(
    day: dt.date,
    settings: FeedSettings,
    delivered: Sequence[dt.date],
    regions: Sequence[str],
    allowed_lateness: int = 3,
    held: Collection[tuple[str, str]] = (),
) -> pa.Table:
    """The orders a correct pipeline counts in global `day` once the feed days `delivered` are
    processed (but the (region, 'YYYY-MM-DD') region-days `held` in quarantine): of the feed days
    `day` .. `day` + `allowed_lateness` among them, the orders whose event day is `day` (the
    simulator never delivers an order on two feed days)."""
    feed_days = [d for d in delivered if 0 <= (d - day).days <= allowed_lateness]
    tables = [expected_orders(r, d, settings) for r in regions for d in feed_days if (r, d.isoformat()) not in held]
    if not tables:
        return pa.table({name: pa.array([], pa.string()) for name in RECORD_FIELDS})
    orders = pa.concat_tables(tables)
    return orders.filter(pc.equal(pc.utf8_slice_codeunits(orders["event_ts"], 0, 10), day.isoformat()))
