"""The immutable landing zone: files exactly as the source delivered them (pattern: raw layer).

Each extraction of a region-day writes its files into a directory of its own, named by the Dagster
run id, and only then points the region-day's manifest at it with an atomic rename. A run killed
half-way leaves an orphan directory that no reader sees; a re-run lands a complete new copy and
switches the manifest; files once written are never modified.

    <root>/<region>/<day>/<run_id>/<batch_id>.csv
    <root>/<region>/<day>/_manifest.json      -> the extraction readers use
"""

import codecs
import csv
import dataclasses
import datetime as dt
import json
import os
import re
from pathlib import Path

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

    def paths(self, root: Path) -> list[str]:
        folder = region_day_dir(root, self.region, dt.date.fromisoformat(self.day))
        return [str(folder / file) for file in self.files]


def region_day_dir(root: Path, region: str, day: dt.date) -> Path:
    return root / region / day.isoformat()


def land(root: Path, region: str, day: dt.date, run_id: str, files: dict[str, bytes]) -> Manifest:
    """Write one extraction's files, then publish them atomically through the manifest.

    The landing zone names the files, not the source: each is stored as `NNNN-<name>` with every
    character outside [A-Za-z0-9._-] replaced, so a delivered name can neither leave the folder
    (`../x`), be skipped by Spark (`_x`, `.x`) nor be read as a pattern (`*`, `[`, `:`)."""
    target = region_day_dir(root, region, day)
    run_dir = target / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    stored = {name: f"{i:04d}-{safe_name(name)}" for i, name in enumerate(sorted(files))}
    for name, payload in files.items():
        (run_dir / stored[name]).write_bytes(payload)
    manifest = Manifest(
        region=region,
        day=day.isoformat(),
        run_id=run_id,
        files=[f"{run_id}/{stored[name]}" for name in sorted(files)],
        bytes=sum(len(p) for p in files.values()),
        landed_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    tmp = target / f".{MANIFEST}.{run_id}.tmp"
    tmp.write_text(json.dumps(dataclasses.asdict(manifest), indent=1))
    os.replace(tmp, target / MANIFEST)  # atomic: readers see the old or the new extraction
    return manifest


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip("._-") or "file"


def delivered_name(file: str) -> str:
    """The name a landed file had at the source, as far as it was safe to keep."""
    return Path(file).name.split("-", 1)[1]


def day_of(file: str) -> str:
    """The day ('YYYY-MM-DD') a landed file belongs to, from its place in the layout."""
    return Path(file).parent.parent.name


def read_manifest(root: Path, region: str, day: dt.date) -> Manifest | None:
    path = region_day_dir(root, region, day) / MANIFEST
    if not path.exists():
        return None
    try:
        return Manifest(**json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as error:
        raise CorruptManifestError(
            f"the landing manifest {path} of region {region} on {day} is corrupt ({type(error).__name__}); "
            f"{_reland(region, day)}"
        ) from None


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


def inspect_days(root: Path, region: str, days: list[dt.date], columns: list[str]) -> list[LandedDay]:
    """Decide, for each day's current extraction, what every landed file is: read, drifted or
    refused (a link, a path outside the landing zone, a missing file, compressed content, or a
    corrupt manifest). A refusal concerns its region-day only; days with no extraction at all
    are an error naming them (their raw assets must run first). Streams each file once."""
    found: list[LandedDay] = []
    missing: list[str] = []
    for day in days:
        try:
            manifest = read_manifest(root, region, day)
        except CorruptManifestError as error:
            found.append(LandedDay(region, day.isoformat(), [], 0, [], [str(error)]))
            continue
        if manifest is None:
            missing.append(day.isoformat())
            continue
        files, drift, refused, records = [], [], [], 0
        for file in manifest.paths(root):
            name = delivered_name(file)
            if os.path.islink(file) or not _inside(root, file):
                refused.append(
                    f"{file}: a link or a path outside the landing zone {root}, refused unread; {_reland(region, day)}"
                )
            elif not os.path.isfile(file):
                refused.append(f"{file}: missing from the landing zone; {_reland(region, day)}")
            elif kind := _compressed(file):
                refused.append(
                    f"{name}: {kind} content, not CSV text, refused unread; have the source deliver it uncompressed"
                )
            else:
                files.append(file)
                problem, lines = _scan(file)
                records += max(lines - 1, 0)
                if problem:
                    drift.append(f"{name}: {problem}")
                elif (landed_columns := header(file)) and landed_columns != columns:
                    drift.append(f"{name}: {', '.join(landed_columns)}")
        found.append(LandedDay(region, day.isoformat(), files, records, drift, refused))
    if missing:
        raise MissingLandingDataError(
            f"no landed data for region {region} on {', '.join(missing)} under {root}: "
            f"materialize raw_orders/{region.replace('-', '_')} for those days first"
        )
    return found


def landed_files(root: Path, region: str, days: list[dt.date]) -> list[str]:
    """The files of the current extraction of every day, or a clear error naming what is missing
    or refused (for readers that need every file: the regional assets use `inspect_days`)."""
    files: list[str] = []
    for landed in inspect_days(root, region, days, columns=[]):
        if landed.refused:
            raise MissingLandingDataError(f"region {region} on {landed.day}: {landed.refused[0]}")
        files.extend(landed.files)
    return files


def _inside(root: Path, file: str) -> bool:
    return Path(file).resolve().is_relative_to(root.resolve())


def record_count(files: list[str]) -> int:
    """Records landed in these files: non-blank lines after each file's header."""
    return sum(max(_scan(file)[1] - 1, 0) for file in files)


def header(file: str) -> list[str]:
    """The column names of a landed CSV file ([] for an empty file); bytes that are not UTF-8
    show as U+FFFD (`_scan` names them)."""
    with open(file, "rb") as handle:
        start = handle.read(1 << 16).decode("utf-8", errors="replace")  # a header is short; a line may not be
    return next(csv.reader([re.split(r"\r\n|\r|\n", start, maxsplit=1)[0]]), [])


_MAGIC = {b"\x1f\x8b": "gzip-compressed", b"PK\x03\x04": "a zip archive", b"BZh": "bzip2-compressed"}


def _compressed(file: str) -> str | None:
    with open(file, "rb") as handle:
        start = handle.read(4)
    return next((kind for magic, kind in _MAGIC.items() if start.startswith(magic)), None)


def _scan(file: str) -> tuple[str | None, int]:
    """Why a landed file is not plain UTF-8 text (a byte-order mark, bytes that are not UTF-8)
    or None, and its non-blank lines. One streaming pass; a problem names the offset, never the
    content."""
    decoder, offset, lines, problem, pending = codecs.getincrementaldecoder("utf-8")("strict"), 0, 0, None, b""
    with open(file, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            if offset == 0 and chunk.startswith(codecs.BOM_UTF8):
                problem = "starts with a byte-order mark (BOM): have the source deliver UTF-8 without one"
            if problem is None:
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as error:
                    problem = (
                        f"not UTF-8 text (an invalid byte near offset {offset + error.start}): have the source "
                        "deliver UTF-8, or re-encode the file at the source"
                    )
            offset += len(chunk)
            # the last line may continue in the next chunk (and a \r may be followed by its \n)
            text = (pending + chunk).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            *complete, pending = text.split(b"\n")  # a \r\n cut in two adds a blank line: not counted
            lines += sum(1 for line in complete if line.strip())
    if pending.strip():
        lines += 1
    if problem is None:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            problem = "not UTF-8 text (the file ends inside a character): have the source deliver UTF-8"
    return problem, lines
