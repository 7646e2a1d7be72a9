"""The fan-in: every region's clean orders of a day in one table, in USD, and which days are ready
for it (pattern: fan-in with a readiness rule; a global day is all regions or nothing).

One home for the computation: the `global_orders` asset, the replay check, the idempotency proof
and the benchmark floor all call `global_orders_table`.
"""

import contextlib
import itertools
import pathlib
import tempfile
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from pipeline_patterns.lib.orders import REGIONAL_SCHEMA

GLOBAL_SCHEMA = REGIONAL_SCHEMA.append(pa.field("usd_rate", pa.float64())).append(pa.field("amount_usd", pa.float64()))


def fx_day(event_ts: pa.ChunkedArray) -> pa.ChunkedArray:
    """The UTC calendar day of each event, as 'YYYY-MM-DD' (the day whose FX rate applies)."""
    return pc.cast(pc.cast(event_ts, pa.date32()), pa.string())


def orders_in_usd(orders: pa.Table, rates: pa.Table) -> pa.Table:
    """Add `usd_rate` and `amount_usd` to orders. `rates` has currency, fx_day, usd_rate and must
    cover every (currency, event day) of the orders."""
    keyed = orders.append_column("fx_day", fx_day(orders["event_ts"]))
    joined = keyed.join(rates, keys=["currency", "fx_day"], join_type="left outer")
    missing = pc.is_null(joined["usd_rate"])
    if pc.any(missing).as_py():
        gaps = joined.filter(missing).select(["currency", "fx_day"]).group_by(["currency", "fx_day"]).aggregate([])
        raise ValueError(
            f"global_orders: the FX service returned no rate for {gaps.to_pylist()[:5]} "
            "(currency and event day); the currency_known gate should have quarantined an unknown "
            "currency, so check the FX service's answer for those days"
        )
    amount_usd = pc.round(pc.multiply(joined["amount"], joined["usd_rate"]), 2)
    result = joined.append_column("amount_usd", amount_usd).drop_columns(["fx_day"])
    return result.sort_by([("day", "ascending"), ("order_id", "ascending")])


def global_orders_table(regional: list[pa.Table], rates: pa.Table) -> pa.Table:
    """The regions' clean orders of some days as one table with `usd_rate` and `amount_usd`."""
    return orders_in_usd(pa.concat_tables(regional), rates).cast(GLOBAL_SCHEMA)


@contextlib.contextmanager
def spooled(chunks: Iterable[pa.Table], schema: pa.Schema) -> Iterator[Iterator[pa.Table]]:
    """The chunks, computed first and spooled to a temporary Arrow file, then streamed back.

    delta-rs cannot read a table while its writer pulls the data (a nested-runtime panic), and
    the fan-in reads the regional tables to produce its rows: spooling keeps the two apart with
    memory bounded by one chunk. With no chunk at all, one empty table of `schema` comes back, so
    a window with no ready day is still written, empty, as a clean run would leave it.
    """
    with tempfile.TemporaryDirectory(prefix="spool-") as folder:
        path = pathlib.Path(folder) / "chunks.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for chunk in chunks:
                writer.write_table(chunk.cast(schema))
        with pa.memory_map(str(path)) as source:
            reader = pa.ipc.open_stream(source)
            yield itertools.chain((pa.Table.from_batches([b], schema) for b in reader), [schema.empty_table()])


def held_days(
    days: list[str],
    regions: list[str],
    clean_rows: dict[str, dict[str, int]],
    quarantine_reasons: dict[str, dict[str, str]],
) -> dict[str, list[str]]:
    """The days of a window the fan-in must hold, each with why: every region-day without clean
    rows, as 'region: quarantined (checks)' or 'region: no clean data (not processed yet, or delivered empty)'.

    `clean_rows[region][day]` counts the clean rows, `quarantine_reasons[region][day]` names the
    failed checks of a quarantined region-day. A day is ready when every region has clean rows.
    """
    held: dict[str, list[str]] = {}
    for day in days:
        reasons = [
            f"{region}: quarantined ({quarantine_reasons[region][day]})"
            if day in quarantine_reasons.get(region, {})
            else f"{region}: no clean data (not processed yet, or delivered empty)"
            for region in regions
            # quarantine rows hold the day even beside clean rows (a regional run that died
            # between its two commits): re-running the region-day settles it
            if not clean_rows.get(region, {}).get(day) or day in quarantine_reasons.get(region, {})
        ]
        if reasons:
            held[day] = reasons
    return held
