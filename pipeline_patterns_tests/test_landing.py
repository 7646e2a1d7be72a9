"""The landing zone is immutable and switches extractions atomically."""

import datetime as dt
import json
import os
import pathlib
import shutil

import dagster as dg
import pytest

from pipeline_patterns.lib import landing
from pipeline_patterns_tests.helpers import materialize

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
    with pytest.raises(landing.MissingLandingDataError, match="a symbolic link, or a path through a linked") as error:
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


# The landing zone's boundary: nothing outside its root is read, whatever the link.
SECRET_LINE = "root:x:0:0,secret"
SECRET = f"order_id,user_id\n{SECRET_LINE}\n".encode()


def outside(tmp_path: pathlib.Path) -> pathlib.Path:
    """A landing zone of its own outside the root, holding a complete region-day, and a secret."""
    elsewhere = tmp_path / "elsewhere"
    landing.land(elsewhere, "us-east", DAY, "run-1", {"b00.csv": SECRET})
    (elsewhere / "secret.csv").write_bytes(SECRET)
    return elsewhere


def refused_day(root: pathlib.Path) -> landing.LandedDay:
    [day] = landing.inspect_days(root, "us-east", [DAY], COLUMNS)
    assert day.files == [] and day.records == 0 and day.identities == {}
    assert all("root:x" not in r for r in day.refused)
    return day


def test_a_manifest_that_is_a_symlink_is_refused_unread(tmp_path):
    elsewhere, root = outside(tmp_path), tmp_path / "landing"
    landing.land(root, "us-east", DAY, "run-1", {"b00.csv": b"a,b\n1,2\n"})
    manifest = landing.region_day_dir(root, "us-east", DAY) / landing.MANIFEST
    manifest.unlink()
    manifest.symlink_to(landing.region_day_dir(elsewhere, "us-east", DAY) / landing.MANIFEST)
    [refusal] = refused_day(root).refused
    assert refusal.startswith(f"the landing manifest {manifest} of region us-east on 2024-01-02: a symbolic link")
    assert refusal.endswith(
        "remove the link, then re-materialize raw_orders/us_east for 2024-01-02 to land the day again"
    )


@pytest.mark.parametrize("linked", ["region", "day"])
def test_a_region_or_day_folder_that_is_a_symlink_is_refused_unread(tmp_path, linked):
    elsewhere, root = outside(tmp_path), tmp_path / "landing"
    source = elsewhere / "us-east" if linked == "region" else landing.region_day_dir(elsewhere, "us-east", DAY)
    folder = root / "us-east" if linked == "region" else landing.region_day_dir(root, "us-east", DAY)
    folder.parent.mkdir(parents=True)
    folder.symlink_to(source, target_is_directory=True)
    [refusal] = refused_day(root).refused
    assert (
        "a symbolic link, or a path through a linked folder" in refusal
        and "re-materialize raw_orders/us_east" in refusal
    )


def test_a_landed_file_that_is_a_hard_link_to_an_outside_file_is_refused_unread(tmp_path):
    elsewhere, root = outside(tmp_path), tmp_path / "landing"
    manifest = landing.land(root, "us-east", DAY, "run-1", {"b00.csv": b"a,b\n1,2\n", "b01.csv": b"a,b\n3,4\n"})
    landed = pathlib.Path(manifest.paths(root)[0])
    landed.unlink()
    os.link(elsewhere / "secret.csv", landed)
    [day] = landing.inspect_days(root, "us-east", [DAY], COLUMNS)
    assert [landing.delivered_name(f) for f in day.files] == ["b01.csv"] and day.records == 1
    assert day.refused == [
        f"{landed}: a hard link (2 names of one file), and a link may lead outside the landing zone {root} (which "
        "makes none): refused unread; remove it, then re-materialize raw_orders/us_east for 2024-01-02 to land "
        "the day again"
    ]


def test_a_landed_file_swapped_for_a_symlink_after_inspection_is_never_read(tmp_path):
    elsewhere, root = outside(tmp_path), tmp_path / "landing"
    manifest = landing.land(root, "us-east", DAY, "run-1", {"b00.csv": b"a,b\n1,2\n"})
    [day] = landing.inspect_days(root, "us-east", [DAY], COLUMNS)
    [file] = day.files
    with landing.open_landed(file, day.identities[file]) as handle:  # as inspected: read
        assert handle.read() == b"a,b\n1,2\n"
    pathlib.Path(file).unlink()
    pathlib.Path(file).symlink_to(elsewhere / "secret.csv")
    with pytest.raises(landing.LandingChangedError) as error:
        landing.open_landed(file, day.identities[file])
    assert str(error.value) == (
        f"the landed file {file} of region us-east on 2024-01-02 changed after the step inspected it (it is now a "
        "symbolic link, or a path through a linked folder): nothing of it was read; re-materialize "
        f"regional_orders/us_east for 2024-01-02 (if it recurs, find what writes into the landing zone {root} "
        "besides raw_orders)"
    )
    assert manifest.files == [f"run-1/{pathlib.Path(file).name}"]


@pytest.mark.parametrize("change", ["modified", "deleted", "run folder swapped for a link", "a FIFO"])
def test_a_landed_file_changed_after_inspection_fails_the_read_naming_it(tmp_path, change):
    elsewhere, root = outside(tmp_path), tmp_path / "landing"
    landing.land(root, "us-east", DAY, "run-1", {"b00.csv": b"a,b\n1,2\n"})
    [day] = landing.inspect_days(root, "us-east", [DAY], COLUMNS)
    [file] = day.files
    path = pathlib.Path(file)
    if change == "modified":
        path.write_bytes(b"a,b\n1,2\n3,4\n")
    elif change == "deleted":
        path.unlink()
    elif change == "a FIFO":  # must not hang the read
        path.unlink()
        os.mkfifo(path)
    else:
        shutil.rmtree(path.parent)
        path.parent.symlink_to(landing.region_day_dir(elsewhere, "us-east", DAY) / "run-1", target_is_directory=True)
    with pytest.raises(landing.LandingChangedError, match=f"the landed file {file} of region us-east on 2024-01-02"):
        landing.open_landed(file, day.identities[file])


def test_a_manifest_entry_that_is_not_one_file_of_one_run_folder_is_corrupt(tmp_path):
    for entry in ["/etc/passwd", "run-1/a\x00b.csv", "run-1//x", "run-1/" + "x" * 256, "run-1/.", "/run-1/x"]:
        landing.land(tmp_path, "us-east", DAY, "run-1", {"b00.csv": b"a,b\n1,2\n"})
        path = landing.region_day_dir(tmp_path, "us-east", DAY) / landing.MANIFEST
        fields = json.loads(path.read_text())
        path.write_text(json.dumps({**fields, "files": [entry]}))
        [day] = landing.inspect_days(tmp_path, "us-east", [DAY], COLUMNS)
        assert day.files == [] and "is corrupt (ValueError)" in day.refused[0], entry


def test_a_data_dir_behind_a_symlinked_root_is_read(tmp_path):
    landing.land(tmp_path / "disk", "us-east", DAY, "run-1", {"b00.csv": b"a,b\n1,2\n"})
    (tmp_path / "root").symlink_to(tmp_path / "disk", target_is_directory=True)
    [day] = landing.inspect_days(tmp_path / "root", "us-east", [DAY], COLUMNS)
    assert day.records == 1 and day.refused == [] and list(day.identities) == day.files


def test_a_file_swapped_for_a_symlink_between_inspection_and_read_fails_the_regional_step_naming_it(
    spark, tmp_path, monkeypatch
):
    """The regional step inspects the landing zone, then Spark's executors read it: a file swapped
    for a link in between is never read, and the step fails saying which file and what to do."""
    secret = tmp_path / "secret.csv"
    secret.write_text(SECRET_LINE + "\n")
    header = "order_id,user_id,region,amount,currency,event_ts,batch_id,delivered_at"
    good = f"{header}\no1,u1,us-east,1.00,USD,2024-01-02T10:00:00Z,b1,2024-01-02T12:00:00Z\n".encode()
    landing.land(tmp_path / "landing", "us-east", DAY, "hand-made", {"b00.csv": good})
    inspect = landing.inspect_days

    def inspect_then_swap(*args, **kwargs):
        found = inspect(*args, **kwargs)
        for file in found[0].files:
            pathlib.Path(file).unlink()
            pathlib.Path(file).symlink_to(secret)
        return found

    monkeypatch.setattr(landing, "inspect_days", inspect_then_swap)
    result = materialize(
        tmp_path,
        dg.DagsterInstance.ephemeral(),
        partition=DAY.isoformat(),
        selection=["regional_orders/us_east", "quarantined_orders/us_east", "late_orders/us_east"],
        raise_on_error=False,
    )
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.user_failure_data.description
    assert (
        message.startswith("regional_orders/us_east: the landed file ")
        and "changed after the step inspected it" in message
    )
    assert "re-materialize regional_orders/us_east for 2024-01-02" in message
    assert not (tmp_path / "lake" / "regional_orders" / "us_east").exists()  # nothing written
    shown = " ".join(str(e.event_specific_data) + str(e.message) for e in result.all_events)
    assert SECRET_LINE not in shown


@pytest.mark.parametrize(
    "payload",
    [
        b"a,b\n1,2\n" + b"\0" * 4096 + b"\n5,6\n",  # a crashed writer's zero-filled block where records were
        b"a,b\n1,2\n3," + b"\0" * 100,  # a block cutting the last record
        b"\0" * 8192,  # nothing but zeros
    ],
)
def test_a_block_of_nul_bytes_refuses_its_file_counting_them_and_naming_it(tmp_path, payload):
    landing.land(tmp_path, "us-east", DAY, "run-1", {"zeros.csv": payload, "good.csv": b"a,b\n7,8\n"})
    [day] = landing.inspect_days(tmp_path, "us-east", [DAY], COLUMNS)
    assert [landing.delivered_name(f) for f in day.files] == ["good.csv"] and day.records == 1
    zeros, first = payload.count(b"\0"), payload.index(b"\0")
    assert day.refused == [
        f"zeros.csv: {zeros:,} NUL bytes from offset {first:,} (a zero-filled block where records were, as a "
        "crashed or cut write leaves it): not read, so its records are missing from the day; have the source "
        "deliver the file again"
    ]


def test_a_line_of_more_fields_than_sparks_parser_takes_refuses_its_file_instead_of_crashing_the_job(tmp_path):
    wide = b"o9," + b",".join([b"x"] * landing.MAX_FIELDS) + b"\n"  # one field more than the limit
    at_limit = b"o8," + b",".join([b"x"] * (landing.MAX_FIELDS - 2)) + b"\n"  # Spark parses it (as malformed)
    landing.land(
        tmp_path, "us-east", DAY, "run-1", {"wide.csv": b"a,b\n1,2\n" + wide, "limit.csv": b"a,b\n" + at_limit}
    )
    [day] = landing.inspect_days(tmp_path, "us-east", [DAY], COLUMNS)
    assert [landing.delivered_name(f) for f in day.files] == ["limit.csv"] and day.records == 1
    assert day.refused == [
        f"wide.csv: a line of more than {landing.MAX_FIELDS:,} fields near offset 0 (no record of 2 columns, and "
        "more than Spark's CSV parser takes): refused unread; have the source deliver the file again"
    ]
