"""The landing zone is immutable and switches extractions atomically."""

import datetime as dt

import pytest

from pipeline_patterns.lib import landing

DAY = dt.date(2024, 1, 2)


def test_a_reader_sees_the_latest_complete_extraction_only(tmp_path):
    landing.land(tmp_path, "us-east", DAY, "run-1", {"b00.csv": b"a\n1\n"})
    # a run killed after writing its files but before its manifest: invisible
    orphan = landing.region_day_dir(tmp_path, "us-east", DAY) / "run-2"
    orphan.mkdir()
    (orphan / "b00.csv").write_bytes(b"a\n2\n")
    files = landing.landed_files(tmp_path, "us-east", [DAY])
    assert [f.split("/")[-2:] for f in files] == [["run-1", "b00.csv"]]
    landing.land(tmp_path, "us-east", DAY, "run-3", {"b00.csv": b"a\n3\n", "b01.csv": b"a\n4\n"})
    files = landing.landed_files(tmp_path, "us-east", [DAY])
    assert [f.split("/")[-2] for f in files] == ["run-3", "run-3"]
    # files once landed are never modified
    assert (landing.region_day_dir(tmp_path, "us-east", DAY) / "run-1" / "b00.csv").read_bytes() == b"a\n1\n"


def test_missing_days_are_named_in_the_error(tmp_path):
    landing.land(tmp_path, "eu-west", DAY, "run-1", {"b00.csv": b"a\n"})
    with pytest.raises(landing.MissingLandingDataError, match="eu-west on 2024-01-03, 2024-01-04") as error:
        landing.landed_files(tmp_path, "eu-west", [DAY, DAY + dt.timedelta(1), DAY + dt.timedelta(2)])
    assert "raw_orders/eu_west" in str(error.value)
