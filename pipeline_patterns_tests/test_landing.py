"""The landing zone is immutable and switches extractions atomically."""

import datetime as dt
import pathlib
import shutil

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
    assert [f.split("/")[-2:] for f in files] == [["run-1", "0000-b00.csv"]]
    landing.land(tmp_path, "us-east", DAY, "run-3", {"b00.csv": b"a\n3\n", "b01.csv": b"a\n4\n"})
    files = landing.landed_files(tmp_path, "us-east", [DAY])
    assert [f.split("/")[-2] for f in files] == ["run-3", "run-3"]
    # files once landed are never modified
    assert (landing.region_day_dir(tmp_path, "us-east", DAY) / "run-1" / "0000-b00.csv").read_bytes() == b"a\n1\n"


def test_missing_days_are_named_in_the_error(tmp_path):
    landing.land(tmp_path, "eu-west", DAY, "run-1", {"b00.csv": b"a\n"})
    with pytest.raises(landing.MissingLandingDataError, match="eu-west on 2024-01-03, 2024-01-04") as error:
        landing.landed_files(tmp_path, "eu-west", [DAY, DAY + dt.timedelta(1), DAY + dt.timedelta(2)])
    assert "raw_orders/eu_west" in str(error.value)


@pytest.mark.parametrize("name", ["../../escape.csv", "_hidden.csv", ".dot.csv", "*.csv", "[x].csv", "a:b.csv", ""])
def test_the_landing_zone_names_the_files_so_no_delivered_name_escapes_hides_or_globs(tmp_path, name):
    manifest = landing.land(tmp_path, "us-east", DAY, "run-1", {name: b"a\n1\n", "b00.csv": b"a\n2\n"})
    run_dir = landing.region_day_dir(tmp_path, "us-east", DAY) / "run-1"
    for file in manifest.paths(tmp_path):
        path = pathlib.Path(file)
        assert path.parent == run_dir and path.is_file()
        assert path.name[0].isalnum() and not set(path.name) & set("*?[]{}:\\/")
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(pathlib.Path(f).name for f in manifest.paths(tmp_path))
    assert not (tmp_path / "escape.csv").exists() and not (tmp_path.parent / "escape.csv").exists()


def test_a_symlink_in_the_landing_zone_is_refused_without_reading_it(tmp_path):
    manifest = landing.land(tmp_path, "us-east", DAY, "run-1", {"b00.csv": b"a\n1\n"})
    secret = tmp_path.parent / "secret.txt"
    secret.write_text("root:x:0:0\n")
    landed = pathlib.Path(manifest.paths(tmp_path)[0])
    landed.unlink()
    landed.symlink_to(secret)
    with pytest.raises(landing.MissingLandingDataError, match="a link or a path outside the landing zone") as error:
        landing.landed_files(tmp_path, "us-east", [DAY])
    assert (
        "root:x" not in str(error.value)
        and "re-materialize raw_orders/us_east for 2024-01-02" in str(error.value).lower()
    )


def test_a_corrupt_manifest_fails_naming_its_path_region_day_and_remedy(tmp_path):
    landing.land(tmp_path, "us-east", DAY, "run-1", {"b00.csv": b"a\n1\n"})
    manifest = landing.region_day_dir(tmp_path, "us-east", DAY) / landing.MANIFEST
    manifest.write_text('{"region": "us-east", "files": [')
    with pytest.raises(landing.MissingLandingDataError) as error:
        landing.landed_files(tmp_path, "us-east", [DAY])
    message = str(error.value)
    assert str(manifest) in message and "us-east on 2024-01-02" in message
    assert "re-materialize raw_orders/us_east for 2024-01-02" in message


def test_a_copied_data_dir_reads_its_own_landed_files(tmp_path):
    landing.land(tmp_path / "a", "us-east", DAY, "run-1", {"b00.csv": b"a\n1\n"})
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    files = landing.landed_files(tmp_path / "b", "us-east", [DAY])
    assert [pathlib.Path(f).is_relative_to(tmp_path / "b") for f in files] == [True]


COLUMNS = ["a", "b"]


@pytest.mark.parametrize(
    ("payload", "records"),
    [
        (b"a,b\n1,2\n3,4\n", 2),
        (b"a,b\r\n1,2\r\n3,4", 2),  # Windows line ends, no final one
        (b"a,b\r1,2\r3,4\r", 2),  # old Mac line ends: Spark splits on \r too
        (b"a,b\n1,2\n  \n\t\n\n3,4\n", 2),  # blank lines are no records (Spark skips them)
        (b'a,b\n1,"x\ny"\n', 2),  # a quoted line break: two physical lines, two (malformed) records
        (b"", 0),
        (b"a,b\r\n1,2\r\n\x1a", 1),  # a DOS end-of-file mark: Spark trims every byte up to the space
        (b"a,b\n" + b"x" * (9 << 20) + b"\n1,2", 2),  # a line longer than two read chunks
    ],
)
def test_records_are_counted_from_the_bytes_as_spark_splits_lines(tmp_path, payload, records):
    landing.land(tmp_path, "us-east", DAY, "run-1", {"b00.csv": payload})
    [day] = landing.inspect_days(tmp_path, "us-east", [DAY], COLUMNS)
    assert day.records == records and day.refused == [] and len(day.files) == 1


def test_each_bad_file_is_refused_or_flagged_alone_and_the_other_files_are_read(tmp_path):
    import gzip

    manifest = landing.land(
        tmp_path,
        "us-east",
        DAY,
        "run-1",
        {
            "good.csv": b"a,b\n1,2\n",
            "packed.csv": gzip.compress(b"a,b\n1,2\n"),
            "latin.csv": "a,b\n\xe9,2\n".encode("latin-1"),
            "drift.csv": b"a,c\n1,2\n",
            "gone.csv": b"a,b\n1,2\n",
        },
    )
    gone = next(f for f in manifest.paths(tmp_path) if f.endswith("gone.csv"))
    pathlib.Path(gone).unlink()
    [day] = landing.inspect_days(tmp_path, "us-east", [DAY], COLUMNS)
    assert sorted(landing.delivered_name(f) for f in day.files) == ["drift.csv", "good.csv", "latin.csv"]
    assert day.records == 3
    assert [r.split(":")[0] for r in day.refused] == [gone, "packed.csv"]
    assert "missing from the landing zone; re-materialize raw_orders/us_east for 2024-01-02" in day.refused[0]
    assert day.drift == [
        "drift.csv: header: missing b; 1 unexpected",
        "latin.csv: not UTF-8 text (an invalid byte near offset 4): have the "
        "source deliver UTF-8, or re-encode the file at the source",
    ]


def test_a_corrupt_manifest_refuses_its_day_only(tmp_path):
    landing.land(tmp_path, "us-east", DAY, "run-1", {"b00.csv": b"a,b\n1,2\n"})
    landing.land(tmp_path, "us-east", DAY + dt.timedelta(1), "run-1", {"b00.csv": b"a,b\n1,2\n"})
    (landing.region_day_dir(tmp_path, "us-east", DAY) / landing.MANIFEST).write_bytes(b"\xff{")
    first, second = landing.inspect_days(tmp_path, "us-east", [DAY, DAY + dt.timedelta(1)], COLUMNS)
    assert first.files == [] and "is corrupt (UnicodeDecodeError)" in first.refused[0]
    assert second.records == 1 and second.refused == []


def test_the_header_is_the_first_non_blank_line_and_drift_never_shows_a_value(tmp_path):
    landing.land(tmp_path, "us-east", DAY, "run-1", {"swapped.csv": b"\n\nb,a\n1,2\n", "data.csv": b"secret,2\n3,4\n"})
    [day] = landing.inspect_days(tmp_path, "us-east", [DAY], COLUMNS)
    assert sorted(day.drift) == [
        "data.csv: header: missing a, b; 2 unexpected",
        "swapped.csv: header: the expected columns in another order",
    ]


@pytest.mark.parametrize(
    "manifest",
    [
        '{"region": "us-east", "day": "2024-01-03", "run_id": "r", "files": [], "bytes": 0, "landed_at": ""}',
        '{"region": "us-east", "day": "2024-01-02", "run_id": "r", "files": null, "bytes": 0, "landed_at": ""}',
        '{"region": "us-east", "day": "2024-01-02", "run_id": "r", "files": ["../../x"], "bytes": 0, "landed_at": ""}',
        '{"region": "us-east", "day": "garbage", "run_id": "r", "files": [], "bytes": 0, "landed_at": ""}',
        '["not", "an", "object"]',
    ],
)
def test_a_manifest_of_the_wrong_shape_is_corrupt(tmp_path, manifest):
    landing.land(tmp_path, "us-east", DAY, "run-1", {"b00.csv": b"a,b\n1,2\n"})
    (landing.region_day_dir(tmp_path, "us-east", DAY) / landing.MANIFEST).write_text(manifest)
    [day] = landing.inspect_days(tmp_path, "us-east", [DAY], COLUMNS)
    assert day.files == [] and "is corrupt" in day.refused[0] and "re-materialize raw_orders/us_east" in day.refused[0]
