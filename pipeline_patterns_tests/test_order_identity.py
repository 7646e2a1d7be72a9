"""An order's identity is one definition applied at parsing: a variant of an id (padded, with an
invisible character, another Unicode normal form) is the same order, so its correction replaces
it, and every changed raw id is counted."""

import datetime as dt
import re
import unicodedata

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline_patterns.lib import landing
from pipeline_patterns.lib.late_data import newest_deliveries
from pipeline_patterns.lib.orders import REGIONAL_SCHEMA, identity_sql, regional_orders_frame

DAY = dt.date(2024, 1, 2)
HEADER = "order_id,user_id,region,amount,currency,event_ts,batch_id,delivered_at"

# the id variants a source really sends: padding, a tab, a no-break or ideographic space,
# zero-width characters, and the decomposed (NFD) form of an accented id
VARIANTS = {
    "o1": " o1\t",
    "o2": "o2\u00a0",
    "o3": "\u200bo3\u2060",
    "caf\u00e9": "cafe\u0301",
    "o5": "\u3000o5\ufeff\u200c",
}


def oracle(raw: str | None) -> str | None:
    """The identity as the docs state it, in Python: zero-width characters removed, whitespace
    trimmed (Unicode's too), NFC, blank is none."""
    if raw is None:
        return None
    text = unicodedata.normalize("NFC", re.sub("[\u200b-\u200d\u2060\ufeff]", "", raw).strip())
    return text or None


def csv(*rows: tuple[str, str, str, str]) -> bytes:
    """Rows of (order id, amount, batch, delivery time) of DAY."""
    lines = [f"{o},u1,us-east,{a},USD,{DAY}T10:00:00Z,{b},{t}" for o, a, b, t in rows]
    return ("\n".join([HEADER, *lines]) + "\n").encode()


def staged(spark, root, day: dt.date = DAY) -> pa.Table:
    [landed] = landing.inspect_days(root, "us-east", [day], [])
    return regional_orders_frame(spark, landed.files).toArrow().sort_by("order_id")


def test_the_identity_trims_unicode_spaces_drops_zero_width_characters_and_composes_nfc(spark):
    samples = [*VARIANTS, *VARIANTS.values(), "o\u00a0\u00a01", " \u200b ", "", None, "\u00e9\u0301", "a\u200db"]
    frame = spark.createDataFrame([(s,) for s in samples], "id string").selectExpr(f"{identity_sql('id')} AS id")
    assert [row.id for row in frame.collect()] == [oracle(s) for s in samples]


def test_a_correction_under_a_variant_of_the_id_replaces_the_order_and_is_counted(spark, tmp_path):
    first = csv(*((o, "10.00", "b1", f"{DAY}T08:00:00Z") for o in VARIANTS))
    corrected = csv(*((v, "12.00", "b2", f"{DAY}T18:00:00Z") for v in VARIANTS.values()))
    landing.land(tmp_path, "us-east", DAY, "r1", {"first.csv": first, "corrected.csv": corrected})
    orders = staged(spark, tmp_path)
    assert orders["order_id"].to_pylist() == sorted(VARIANTS)  # one order each, never two
    assert set(orders["amount"].to_pylist()) == {12.0}  # the newer delivery won
    counts = [pc.sum(orders[c]).as_py() for c in ("duplicates", "superseded", "ids_normalised")]
    assert counts == [0, len(VARIANTS), len(VARIANTS)]


def test_a_true_copy_under_a_variant_of_the_id_is_a_duplicate_not_a_second_order(spark, tmp_path):
    rows = [("o1", "10.00", "b1", f"{DAY}T08:00:00Z")]
    landing.land(tmp_path, "us-east", DAY, "r1", {"a.csv": csv(*rows), "b.csv": csv(("o1\u00a0", *rows[0][1:]))})
    orders = staged(spark, tmp_path)
    assert (
        orders.num_rows == 1 and orders["duplicates"].to_pylist() == [1] and orders["ids_normalised"].to_pylist() == [1]
    )


def test_a_variant_delivered_on_a_later_feed_day_replaces_the_order_in_its_event_day(spark, tmp_path):
    later = DAY + dt.timedelta(days=1)
    landing.land(tmp_path, "us-east", DAY, "r1", {"a.csv": csv(("cafe\u0301", "10.00", "b1", f"{DAY}T08:00:00Z"))})
    correction = csv(("\u200bcaf\u00e9 ", "12.00", "b1", f"{later}T08:00:00Z"))
    landing.land(tmp_path, "us-east", later, "r1", {"a.csv": correction})
    regional = pa.concat_tables(
        [staged(spark, tmp_path, d).select(REGIONAL_SCHEMA.names).cast(REGIONAL_SCHEMA) for d in (DAY, later)]
    )
    merged = newest_deliveries(regional, allowed_lateness=3, days=[DAY.isoformat()])
    assert merged.select(["order_id", "amount", "feed_day"]).to_pylist() == [
        {"order_id": "caf\u00e9", "amount": 12.0, "feed_day": later.isoformat()}
    ]


@pytest.mark.parametrize("blank", [" ", "\u00a0\t", "\u200b", "\ufeff \u3000"])
def test_an_id_of_only_invisible_characters_is_no_id(spark, tmp_path, blank):
    landing.land(tmp_path, "us-east", DAY, "r1", {"a.csv": csv((blank, "10.00", "b1", f"{DAY}T08:00:00Z"))})
    orders = staged(spark, tmp_path)
    assert orders["order_id"].to_pylist() == [None] and orders["ids_normalised"].to_pylist() == [0]
