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
        raise MissingLandingDataError(
            f"the landing manifest {path} of region {region} on {day} is corrupt ({type(error).__name__}); "
            f"re-materialize raw_orders/{region.replace('-', '_')} for {day} to land the day again"
        ) from None


class MissingLandingDataError(FileNotFoundError):
    """Some region-days of a window have no landed extraction yet."""


def landed_files(root: Path, region: str, days: list[dt.date]) -> list[str]:
    """The files of the current extraction of every day, or a clear error naming missing days."""
    files: list[str] = []
    missing: list[str] = []
    for day in days:
        manifest = read_manifest(root, region, day)
        if manifest is None:
            missing.append(day.isoformat())
            continue
        paths = manifest.paths(root)
        outside = [f for f in paths if os.path.islink(f) or not _inside(root, f)]
        if outside:
            raise MissingLandingDataError(
                f"landed file {outside[0]} of region {region} on {day} is a link or lies outside the landing "
                f"zone {root}: refused. Re-materialize raw_orders/{region.replace('-', '_')} for {day}"
            )
        lost = [f for f in paths if not os.path.exists(f)]
        if lost:
            raise MissingLandingDataError(
                f"landed file {lost[0]} of region {region} on {day} is missing (manifest "
                f"{region_day_dir(root, region, day) / MANIFEST}): re-materialize raw_orders/"
                f"{region.replace('-', '_')} for {day}"
            )
        files.extend(paths)
    if missing:
        raise MissingLandingDataError(
            f"no landed data for region {region} on {', '.join(missing)} under {root}: "
            f"materialize raw_orders/{region.replace('-', '_')} for those days first"
        )
    return files


def _inside(root: Path, file: str) -> bool:
    return Path(file).resolve().is_relative_to(root.resolve())


def record_count(files: list[str]) -> int:
    """Records landed: non-empty lines after each file's header, counted from the files
    themselves so the row accounting does not trust the parser it audits."""
    total = 0
    for name in files:
        with open(name, "rb") as handle:
            lines = sum(1 for line in handle if line.strip())
        total += max(lines - 1, 0)
    return total


def header(file: str) -> list[str]:
    """The column names of a landed CSV file ([] for an empty file); bytes that are not UTF-8
    show as U+FFFD (`content_problem` names them)."""
    with open(file, "rb") as handle:
        first = handle.readline().decode("utf-8", errors="replace")
    return next(csv.reader([first]), [])


_MAGIC = {b"\x1f\x8b": "gzip-compressed", b"PK\x03\x04": "a zip archive", b"BZh": "bzip2-compressed"}


def content_problem(file: str) -> str | None:
    """Why a landed file is not UTF-8 CSV text (compressed, or bytes that are not UTF-8), or None.
    Read streaming; the error names the offset, never the content."""
    with open(file, "rb") as handle:
        start = handle.read(4)
        for magic, kind in _MAGIC.items():
            if start.startswith(magic):
                return f"{kind} content, not CSV text: have the source deliver it uncompressed"
        if start.startswith(codecs.BOM_UTF8):
            return "starts with a byte-order mark (BOM): have the source deliver UTF-8 without one"
        handle.seek(0)
        decoder, offset = codecs.getincrementaldecoder("utf-8")("strict"), 0
        try:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                decoder.decode(chunk)
                offset += len(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as error:
            return (
                f"not UTF-8 text (an invalid byte near offset {offset + error.start}): have the source "
                "deliver UTF-8, or re-encode the file at the source"
            )
    return None
