"""The fan-in's decision: a day is published only when every region has clean rows for it."""

from pipeline_patterns.lib.fan_in import held_days

REGIONS = ["eu-west", "us-east"]


def test_a_day_with_clean_rows_in_every_region_is_ready():
    clean = {"eu-west": {"2024-01-02": 3}, "us-east": {"2024-01-02": 5}}
    assert held_days(["2024-01-02"], REGIONS, clean, {}) == {}


def test_a_quarantined_or_missing_region_day_holds_its_day_naming_why():
    clean = {"eu-west": {"2024-01-02": 3, "2024-01-03": 4}, "us-east": {"2024-01-03": 2}}
    quarantined = {"us-east": {"2024-01-02": "user_id_not_null"}}
    days = ["2024-01-02", "2024-01-03", "2024-01-04"]
    assert held_days(days, REGIONS, clean, quarantined) == {
        "2024-01-02": ["us-east: quarantined (user_id_not_null)"],
        "2024-01-04": [
            "eu-west: no clean data (not processed yet, or delivered empty)",
            "us-east: no clean data (not processed yet, or delivered empty)",
        ],
    }


def test_quarantine_rows_beside_clean_rows_still_hold_the_day():
    """A regional run that died between its two commits: re-running the region-day settles it."""
    clean = {"eu-west": {"2024-01-02": 3}, "us-east": {"2024-01-02": 5}}
    quarantined = {"eu-west": {"2024-01-02": "volume_within_bounds"}}
    assert held_days(["2024-01-02"], REGIONS, clean, quarantined) == {
        "2024-01-02": ["eu-west: quarantined (volume_within_bounds)"]
    }
