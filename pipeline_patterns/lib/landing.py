"""The immutable landing zone: files exactly as the source delivered them, one folder per extraction,
published by switching the region-day's manifest atomically. See docs/source_and_landing.md."""

import codecs
import csv
import dataclasses
import datetime as dt
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import pyarrow.fs as pafs

from pipeline_patterns.lib import object_store

MANIFEST = "_manifest.json"
# The same layout as a regular expression, for engines that read the paths themselves (Spark).
DAY_IN_PATH = r"/(\d{4}-\d{2}-\d{2})/[^/]+/[^/]+$"


@dataclasses.dataclass(frozen=True)
class Manifest:
    region: str
    day: str
    run_id: str
    files: list[str]
    """Relative to the region-day's folder (`<run id>/<file>`): a data dir can be moved or copied."""
    bytes: int
    landed_at: str

    def paths(self, root: Path | str) -> list[str]:
        folder = _join(root, self.region, dt.date.fromisoformat(self.day).isoformat())
        return [f"{folder}/{file}" for file in self.files]


def region_day_dir(root: Path, region: str, day: dt.date) -> Path:
    return root / region / day.isoformat()


Options = Mapping[str, str] | None


def _join(root: Path | str, *parts: str) -> str:
    return "/".join([str(root).rstrip("/"), *parts])


def _store(root: Path | str, options: Options) -> tuple[pafs.FileSystem, str]:
    """The filesystem of the landing zone and the root's path in it."""
    return object_store.filesystem(str(root), options)


def _path(file: str) -> str:
    """A landed file's path inside its filesystem (an s3:// URI without its scheme)."""
    return file.split("://", 1)[1] if "://" in file else os.path.abspath(file)


def land(
    root: Path | str, region: str, day: dt.date, run_id: str, files: dict[str, bytes], storage_options: Options = None
) -> Manifest:
    """Write one extraction's files, then publish them atomically through the manifest.

    The landing zone names the files, not the source: each is stored as `NNNN-<name>` with every
    character outside [A-Za-z0-9._-] replaced, so a delivered name can neither leave the folder
    (`../x`), be skipped by Spark (`_x`, `.x`) nor be read as a pattern (`*`, `[`, `:`)."""
    filesystem, base = _store(root, storage_options)
    folder = f"{base}/{region}/{day.isoformat()}"
    filesystem.create_dir(f"{folder}/{run_id}", recursive=True)
    stored = {name: f"{i:04d}-{safe_name(name)}" for i, name in enumerate(sorted(files))}
    for name, payload in files.items():
        with filesystem.open_output_stream(f"{folder}/{run_id}/{stored[name]}") as out:
            out.write(payload)
    manifest = Manifest(
        region=region,
        day=day.isoformat(),
        run_id=run_id,
        files=[f"{run_id}/{stored[name]}" for name in sorted(files)],
        bytes=sum(len(p) for p in files.values()),
        landed_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    text = json.dumps(dataclasses.asdict(manifest), indent=1).encode()
    if object_store.is_local(str(root)):
        tmp = f"{folder}/.{MANIFEST}.{run_id}.tmp"
        with filesystem.open_output_stream(tmp) as out:
            out.write(text)
        os.replace(tmp, f"{folder}/{MANIFEST}")  # atomic: readers see the old or the new extraction
    else:
        with filesystem.open_output_stream(f"{folder}/{MANIFEST}") as out:  # one PUT: atomic too
            out.write(text)
    return manifest


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip("._-") or "file"


def delivered_name(file: str) -> str:
    """The name a landed file had at the source, as far as it was safe to keep."""
    return Path(file).name.split("-", 1)[-1]


def read_manifest(root: Path | str, region: str, day: dt.date, storage_options: Options = None) -> Manifest | None:
    """The region-day's current extraction, None if it has none; a manifest that does not parse,
    has the wrong types, names another region-day or a file outside its folder is corrupt."""
    filesystem, base = _store(root, storage_options)
    path = f"{base}/{region}/{day.isoformat()}/{MANIFEST}"
    if filesystem.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    try:
        with filesystem.open_input_stream(path) as handle:
            fields = json.loads(handle.read().decode("utf-8"))
        manifest = Manifest(**fields)
        _validate(manifest, region, day)
    except (OSError, ValueError, TypeError) as error:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
        raise CorruptManifestError(
            f"the landing manifest {_join(root, region, day.isoformat(), MANIFEST)} of region {region} on {day} "
            f"is corrupt ({type(error).__name__}); {_reland(region, day)}"
        ) from None
    return manifest


def _validate(manifest: Manifest, region: str, day: dt.date) -> None:
    if (manifest.region, manifest.day) != (region, day.isoformat()):
        raise ValueError("the manifest names another region-day")
    if not isinstance(manifest.run_id, str) or not isinstance(manifest.files, list):
        raise TypeError("run_id must be a string and files a list")
    for file in manifest.files:
        if not isinstance(file, str) or len(Path(file).parts) != 2 or ".." in Path(file).parts:
            raise ValueError("a listed file is not <run id>/<file>")


class MissingLandingDataError(FileNotFoundError):
    """Some region-days of a window have no landed extraction yet, or a landed file is unusable."""


class CorruptManifestError(MissingLandingDataError):
    """A region-day's manifest cannot be read."""


def _reland(region: str, day: dt.date | str) -> str:
    return f"re-materialize raw_orders/{region.replace('-', '_')} for {day} to land the day again"


@dataclasses.dataclass(frozen=True)
class LandedDay:
    """What the landing zone holds for one region-day, file by file. Every file is either read
    (`files`, by exact path) or refused unread (`refused`); a read file whose header or encoding
    is not the expected one is also named in `drift`."""

    region: str
    day: str
    files: list[str]
    records: int
    """Records in `files`: non-blank lines after each file's header, line breaks \n, \r\n or \r
    (as Spark splits them), counted from the bytes so the accounting does not trust the parser."""
    drift: list[str]
    """`<delivered name>: <what is unexpected>` for read files: schema_matches fails the day."""
    refused: list[str]
    """`<file>: <why>; <remedy>` for files not read: files_readable fails the day."""


def inspect_days(
    root: Path | str, region: str, days: list[dt.date], columns: list[str], storage_options: Options = None
) -> list[LandedDay]:
    """Decide, for each day's current extraction, what every landed file is: read, drifted or
    refused (a link, a path outside the landing zone, a missing file, compressed content, or a
    corrupt manifest). A refusal concerns its region-day only; days with no extraction at all
    are an error naming them (their raw assets must run first). Streams each file once."""
    filesystem, _ = _store(root, storage_options)
    local = object_store.is_local(str(root))
    found: list[LandedDay] = []
    missing: list[str] = []
    for day in days:
        try:
            manifest = read_manifest(root, region, day, storage_options)
        except CorruptManifestError as error:
            found.append(LandedDay(region, day.isoformat(), [], 0, [], [str(error)]))
            continue
        if manifest is None:
            missing.append(day.isoformat())
            continue
        files, drift, refused, records = [], [], [], 0
        for file in manifest.paths(root):
            name, path = delivered_name(file), _path(file)
            if local and (os.path.islink(file) or not _inside(Path(root), file)):
                refused.append(
                    f"{file}: a link or a path outside the landing zone {root}, refused unread; {_reland(region, day)}"
                )
            elif filesystem.get_file_info(path).type != pafs.FileType.File:
                refused.append(f"{file}: missing from the landing zone; {_reland(region, day)}")
            elif kind := _binary_kind(filesystem, path):
                remedy = "deliver UTF-8" if kind == "UTF-16" else "deliver it uncompressed"
                refused.append(f"{name}: {kind} content, not CSV text, refused unread; have the source {remedy}")
            else:
                try:
                    problem, lines = _scan(filesystem, path)
                except OSError as error:
                    refused.append(f"{name}: cannot be read ({type(error).__name__}); {_reland(region, day)}")
                    continue
                files.append(file)
                records_in_file = max(lines - 1, 0)
                records += records_in_file
                if problem:
                    drift.append(f"{name}: {problem}")
                elif records_in_file > 0 and (drift_text := header_drift(header(filesystem, path), columns)):
                    drift.append(f"{name}: {drift_text}")
        found.append(LandedDay(region, day.isoformat(), files, records, drift, refused))
    if missing:
        raise MissingLandingDataError(
            f"no landed data for region {region} on {', '.join(missing)} under {root}: "
            f"materialize raw_orders/{region.replace('-', '_')} for those days first"
        )
    return found


def landed_files(root: Path | str, region: str, days: list[dt.date], storage_options: Options = None) -> list[str]:
    """The files of the current extraction of every day, or a clear error naming what is missing
    or refused (for readers that need every file: the regional assets use `inspect_days`)."""
    files: list[str] = []
    for landed in inspect_days(root, region, days, columns=[], storage_options=storage_options):
        if landed.refused:
            raise MissingLandingDataError(f"region {region} on {landed.day}: {landed.refused[0]}")
        files.extend(landed.files)
    return files


def _inside(root: Path, file: str) -> bool:
    return Path(file).resolve().is_relative_to(root.resolve())


# What Spark's CSV reader trims from a line to decide it is blank: every byte up to the space.
BLANK = bytes(range(0x21))


def header(filesystem: pafs.FileSystem, file: str) -> list[str]:
    """The column names of a landed CSV file: its first non-blank line, as Spark takes it ([]
    when none starts within 64 KiB); bytes that are not UTF-8 show as U+FFFD (`_scan` names them)."""
    with filesystem.open_input_stream(file) as handle:
        start = handle.read(1 << 16)
    lines = start.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    first = next((line for line in lines if line.strip(BLANK)), b"")
    return next(csv.reader([first.decode("utf-8", errors="replace")]), [])


def header_drift(columns: list[str], expected: list[str]) -> str | None:
    """How a landed header differs from the expected columns, naming only expected columns (a
    header line may be a data line: its values are never repeated)."""
    if columns == expected:
        return None
    missing = [c for c in expected if c not in columns]
    unexpected = sum(1 for c in columns if c not in expected)
    parts = [f"{len(columns)} columns, expected {len(expected)}"] if len(columns) != len(expected) else []
    if missing:
        parts.append(f"missing {', '.join(missing)}")
    if unexpected:
        parts.append(f"{unexpected} unexpected")
    if not missing and not unexpected:
        parts.append("the expected columns in another order")
    return "header: " + "; ".join(parts)


_MAGIC = {
    b"\x1f\x8b": "gzip-compressed",
    b"PK\x03\x04": "a zip archive",
    b"BZh": "bzip2-compressed",
    b"\xff\xfe": "UTF-16",
    b"\xfe\xff": "UTF-16",
}


def _binary_kind(filesystem: pafs.FileSystem, file: str) -> str | None:
    """What a landed file is when it is not text to read line by line (compressed, UTF-16)."""
    try:
        with filesystem.open_input_stream(file) as handle:
            start = handle.read(4)
    except OSError:
        return None  # `_scan` reports it
    return next((kind for magic, kind in _MAGIC.items() if start.startswith(magic)), None)


def _scan(filesystem: pafs.FileSystem, file: str) -> tuple[str | None, int]:
    """Why a landed file is not plain UTF-8 text (a byte-order mark, bytes that are not UTF-8)
    or None, and its non-blank lines, split on \\n, \\r\\n and \\r as Spark splits them. One
    streaming pass in the memory of a chunk, however long a line; a problem names the offset,
    never the content."""
    decoder, offset, lines, problem = codecs.getincrementaldecoder("utf-8")("strict"), 0, 0, None
    open_line = False  # the line not yet ended has a non-blank byte
    with filesystem.open_input_stream(file) as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            if offset == 0 and chunk.startswith(codecs.BOM_UTF8):
                problem = "starts with a UTF-8 byte-order mark (BOM): have the source deliver UTF-8 without one"
            if problem is None:
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as error:
                    problem = (
                        f"not UTF-8 text (an invalid byte near offset {offset + error.start}): have the source "
                        "deliver UTF-8, or re-encode the file at the source"
                    )
            if offset == 0 and chunk.startswith(codecs.BOM_UTF8):
                chunk = chunk[len(codecs.BOM_UTF8) :]  # Spark's line reader drops it too
            offset += len(chunk)
            # a \r\n cut in two ends the line at the \r and adds a blank line: not counted
            parts = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
            if len(parts) == 1:
                open_line = open_line or bool(parts[0].strip(BLANK))
                continue
            lines += int(open_line or bool(parts[0].strip(BLANK)))
            lines += sum(1 for line in parts[1:-1] if line.strip(BLANK))
            open_line = bool(parts[-1].strip(BLANK))
    lines += int(open_line)
    if problem is None:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            problem = "not UTF-8 text (the file ends inside a character): have the source deliver UTF-8"
    return problem, lines
