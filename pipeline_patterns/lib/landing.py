"""The immutable landing zone: files exactly as the source delivered them, one folder per extraction,
published by switching the region-day's manifest atomically. See docs/source_and_landing.md."""

import codecs
import csv
import dataclasses
import datetime as dt
import errno
import json
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
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


def land(
    root: Path | str, region: str, day: dt.date, run_id: str, files: dict[str, bytes], storage_options: Options = None
) -> Manifest:
    """Write one extraction's files, then publish them atomically through the manifest.

    The landing zone names the files, not the source: each is stored as `NNNN-<name>` with every
    character outside [A-Za-z0-9._-] replaced, so a delivered name can neither leave the folder
    (`../x`), be skipped by Spark (`_x`, `.x`) nor be read as a pattern (`*`, `[`, `:`)."""
    stored = _stored_names(region, day, files)  # before anything is written
    filesystem, base = _store(root, storage_options)
    if object_store.is_local(str(root)):
        _refuse_linked_folders(base, region, day)
    folder = f"{base}/{region}/{day.isoformat()}"
    filesystem.create_dir(f"{folder}/{run_id}", recursive=True)
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


class LandingRefusedError(ValueError):
    """A delivery the landing zone cannot store as asked: a file name no disk stores, or a region
    or day folder that is a link (the landing zone writes through none)."""


def _stored_names(region: str, day: dt.date, files: Mapping[str, bytes]) -> dict[str, str]:
    """Delivered name -> the name the landing zone stores it under, or LandingRefusedError naming
    every name it cannot store: one longer than a disk stores (NAME_MAX bytes, its prefix
    included) or holding a NUL (no file system has such a name: a broken listing)."""
    stored = {name: f"{i:04d}-{safe_name(name)}" for i, name in enumerate(sorted(files))}
    bad = [name for name in sorted(files) if "\0" in name or len(stored[name].encode()) > NAME_MAX]
    if bad:
        longest = NAME_MAX - len(stored[bad[0]].split("-", 1)[0]) - 1
        raise LandingRefusedError(
            f"region {region} on {day}: the landing zone cannot store {len(bad)} delivered file name(s) "
            f"({'; '.join(_shown_name(name) for name in bad[:3])}): a name must have at most {longest} "
            "characters and no NUL. Nothing was landed; have the source deliver the files under such names (or "
            f"rename them in the source client's fetch), then re-materialize raw_orders/{region.replace('-', '_')} "
            f"for {day}"
        )
    return stored


def _refuse_linked_folders(base: str, region: str, day: dt.date) -> None:
    """LandingRefusedError if the region's or the day's folder is a link (they may not exist yet)."""
    try:
        os.close(_open_below(base, [region, day.isoformat()]))
    except FileNotFoundError:
        return
    except LinkRefusedError as error:
        raise LandingRefusedError(
            f"region {region} on {day}: the landing folder {base}/{region}/{day} is {error.strerror}: the landing "
            "zone writes through no link, which may lead outside it. Nothing was landed; replace the link by a "
            f"folder, then re-materialize raw_orders/{region.replace('-', '_')} for {day}"
        ) from None


def _shown_name(name: str) -> str:
    """A delivered name as an error shows it: cut to 40 characters, a NUL as \\0."""
    text = name[:40].replace("\0", "\\0")
    return f"{text}... ({len(name):,} characters)" if len(name) > 40 else text


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip("._-") or "file"


def delivered_name(file: str) -> str:
    """The name a landed file had at the source, as far as it was safe to keep."""
    return Path(file).name.split("-", 1)[-1]


def read_manifest(root: Path | str, region: str, day: dt.date, storage_options: Options = None) -> Manifest | None:
    """The region-day's current extraction, None if it has none; a manifest that does not parse,
    has the wrong types, names another region-day or a file outside its folder is corrupt, and one
    reached through a link is refused unread."""
    filesystem, base = _store(root, storage_options)
    shown = _join(root, region, day.isoformat(), MANIFEST)
    try:
        if object_store.is_local(str(root)):
            opened = _open_local(base, [region, day.isoformat(), MANIFEST])
            if opened is None:
                return None
            handle: BinaryIO = opened[0]
        else:
            path = f"{base}/{region}/{day.isoformat()}/{MANIFEST}"
            if filesystem.get_file_info(path).type == pafs.FileType.NotFound:
                return None
            handle = filesystem.open_input_stream(path)
        with handle:
            fields = json.loads(handle.read().decode("utf-8"))
        manifest = Manifest(**fields)
        _validate(manifest, region, day)
    except LinkRefusedError as error:
        raise CorruptManifestError(
            f"the landing manifest {shown} of region {region} on {day}: {_link_refused(error, root)}; "
            f"remove the link, then {_reland(region, day)}"
        ) from None
    except (OSError, ValueError, TypeError) as error:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
        raise CorruptManifestError(
            f"the landing manifest {shown} of region {region} on {day} is corrupt ({type(error).__name__}); "
            f"{_reland(region, day)}"
        ) from None
    return manifest


def _validate(manifest: Manifest, region: str, day: dt.date) -> None:
    if (manifest.region, manifest.day) != (region, day.isoformat()):
        raise ValueError("the manifest names another region-day")
    if not isinstance(manifest.run_id, str) or not isinstance(manifest.files, list):
        raise TypeError("run_id must be a string and files a list")
    for file in manifest.files:
        if not isinstance(file, str) or not all(_component(part) for part in file.split("/")) or file.count("/") != 1:
            raise ValueError("a listed file is not <run id>/<file>")


# The longest file name a disk stores (bytes; NAME_MAX on Linux, macOS and Windows alike).
NAME_MAX = 255


def _component(part: str) -> bool:
    """Whether `part` is one plain name in a folder: no separator, no NUL, not . or .., not empty
    and not too long to store (a manifest entry with a leading slash or a NUL is none)."""
    return part not in ("", ".", "..") and "/" not in part and "\0" not in part and len(part.encode()) <= NAME_MAX


class LinkRefusedError(OSError):
    """A path below the landing root is a link, runs through one, or is a hard link: the landing
    zone makes none, and one may lead outside it."""


def _link_refused(error: LinkRefusedError, root: Path | str) -> str:
    return f"{error.strerror}, and a link may lead outside the landing zone {root} (which makes none): refused unread"


def _open_below(root: str, parts: list[str]) -> int:
    """A descriptor of root/parts[0]/.../parts[-1], opened without following any link below the
    root: each folder relative to its parent's descriptor (openat) with O_NOFOLLOW, so neither a
    link nor a folder swapped for one after a check can lead outside. The root itself may be a
    link (a data dir on another disk). OSError ENOENT for a missing part."""
    if not all(_component(part) for part in parts):
        raise ValueError(f"not a path below the landing root: {'/'.join(parts)!r}")
    folder = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=folder)
            os.close(folder)
            folder = inner
        # O_NONBLOCK: a FIFO put in a file's place must not hang the open (no effect on a file)
        return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):  # O_NOFOLLOW met a link (or a file as a folder)
            raise LinkRefusedError(error.errno, "a symbolic link, or a path through a linked folder") from None
        raise
    finally:
        os.close(folder)


def _open_local(root: str, parts: list[str]) -> tuple[BinaryIO, str] | None:
    """The regular file root/parts... opened for reading (None if it does not exist) and its
    identity, `<st_dev>:<st_ino>:<size>:<mtime ns>`. LinkRefusedError for a link on the way or a
    hard link (st_nlink > 1: another name of the same content may lie outside the root)."""
    try:
        descriptor = _open_below(root, parts)
    except FileNotFoundError:
        return None
    status = os.fstat(descriptor)
    if not stat.S_ISREG(status.st_mode) or status.st_nlink != 1:
        os.close(descriptor)
        what = f"a hard link ({status.st_nlink} names of one file)" if stat.S_ISREG(status.st_mode) else "not a file"
        raise LinkRefusedError(errno.EPERM, what)
    return os.fdopen(descriptor, "rb"), _identity(status)


def _identity(status: os.stat_result) -> str:
    return f"{status.st_dev}:{status.st_ino}:{status.st_size}:{status.st_mtime_ns}"


def open_landed(file: str, identity: str) -> BinaryIO:
    """Open a landed file of a local landing zone for reading, as `inspect_days` recorded it:
    the same file (device, inode, size, modification time), reached without following any link.
    A file swapped, modified or deleted since the inspection is a LandingChangedError naming the
    file, its region and day and the remedy: nothing outside the landing zone is ever read, and
    the bytes read are the ones whose records were counted."""
    root, region, day, run_id, name = file.rsplit("/", 4)
    base = object_store.filesystem(root)[1]
    try:
        opened = _open_local(base, [region, day, run_id, name])
        why = "it is gone" if opened is None else None
    except LinkRefusedError as error:
        opened, why = None, f"it is now {error.strerror}"
    if opened is not None and opened[1] != identity:
        opened[0].close()
        opened, why = None, "it is another file, or was modified"
    if opened is None:
        raise LandingChangedError(
            f"the landed file {file} of region {region} on {day} changed after the step inspected it ({why}): "
            f"nothing of it was read; re-materialize regional_orders/{region.replace('-', '_')} for {day} "
            f"(if it recurs, find what writes into the landing zone {root} besides raw_orders)"
        )
    return opened[0]


class MissingLandingDataError(FileNotFoundError):
    """Some region-days of a window have no landed extraction yet, or a landed file is unusable."""


class CorruptManifestError(MissingLandingDataError):
    """A region-day's manifest cannot be read."""


class LandingChangedError(MissingLandingDataError):
    """A landed file changed between the inspection and the read (swapped, modified, deleted)."""


# How a LandingChangedError raised on an executor reads in the driver's error (a PythonException).
_CHANGED = re.compile(r"LandingChangedError: (.*)")


def changed_during_read(error: Exception) -> LandingChangedError | None:
    """The LandingChangedError that failed a Spark job, if one did (its message, not its trace)."""
    found = _CHANGED.search(str(error))
    return LandingChangedError(found.group(1)) if found else None


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
    identities: dict[str, str] = dataclasses.field(default_factory=dict)
    """File -> its identity when inspected (local landing zones): the read opens that file or
    fails (`open_landed`)."""


def identities(days: list[LandedDay]) -> dict[str, str]:
    """The identities of every read file of `days`."""
    return {file: identity for day in days for file, identity in day.identities.items()}


def inspect_days(
    root: Path | str, region: str, days: list[dt.date], columns: list[str], storage_options: Options = None
) -> list[LandedDay]:
    """Decide, for each day's current extraction, what every landed file is: read, drifted or
    refused (a link or a path through one, a hard link, a missing file, compressed content, a
    zero-filled block, or a corrupt manifest). A refusal concerns its region-day only; days with
    no extraction at all are an error naming them (their raw assets must run first). Reads each
    file once, through the descriptor whose identity the read then checks."""
    filesystem, base = _store(root, storage_options)
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
        files, drift, refused, records, identity = [], [], [], 0, {}
        for file, listed in zip(manifest.paths(root), manifest.files, strict=True):
            name = delivered_name(file)
            try:
                if local:
                    opened = _open_local(base, [region, day.isoformat(), *listed.split("/")])
                else:
                    path = f"{base}/{region}/{day.isoformat()}/{listed}"
                    exists = filesystem.get_file_info(path).type == pafs.FileType.File
                    opened = (filesystem.open_input_stream(path), "") if exists else None
                if opened is None:
                    refused.append(f"{file}: missing from the landing zone; {_reland(region, day)}")
                    continue
                with opened[0] as handle:
                    scan = _scan(handle)
            except LinkRefusedError as error:
                refused.append(f"{file}: {_link_refused(error, root)}; remove it, then {_reland(region, day)}")
                continue
            except OSError as error:
                refused.append(f"{name}: cannot be read ({type(error).__name__}); {_reland(region, day)}")
                continue
            if scan.kind:
                remedy = "deliver UTF-8" if scan.kind == "UTF-16" else "deliver it uncompressed"
                refused.append(f"{name}: {scan.kind} content, not CSV text, refused unread; have the source {remedy}")
                continue
            if scan.zeros:
                refused.append(
                    f"{name}: {scan.zeros:,} NUL bytes from offset {scan.first_zero:,} (a zero-filled block where "
                    "records were, as a crashed or cut write leaves it): not read, so its records are missing "
                    "from the day; have the source deliver the file again"
                )
                continue
            if scan.wide_at >= 0:
                refused.append(
                    f"{name}: a line of more than {MAX_FIELDS:,} fields near offset {scan.wide_at:,} (no record of "
                    f"{len(columns) or 'a few'} columns, and more than Spark's CSV parser takes): refused unread; "
                    "have the source deliver the file again"
                )
                continue
            files.append(file)
            if opened[1]:
                identity[file] = opened[1]
            records_in_file = max(scan.lines - 1, 0)
            records += records_in_file
            if scan.problem:
                drift.append(f"{name}: {scan.problem}")
            elif records_in_file > 0 and (drift_text := header_drift(scan.header, columns)):
                drift.append(f"{name}: {drift_text}")
        found.append(LandedDay(region, day.isoformat(), files, records, drift, refused, identity))
    if missing:
        raise MissingLandingDataError(
            f"no landed data for region {region} on {', '.join(missing)} under {root}: "
            f"materialize raw_orders/{region.replace('-', '_')} for those days first"
        )
    return found


def readable_days(
    root: Path | str, region: str, days: list[dt.date], storage_options: Options = None
) -> list[LandedDay]:
    """`inspect_days` for readers that need every file (the regional assets quarantine a day with
    a refused file instead): a clear error naming the first refusal."""
    found = inspect_days(root, region, days, columns=[], storage_options=storage_options)
    for landed in found:
        if landed.refused:
            raise MissingLandingDataError(f"region {region} on {landed.day}: {landed.refused[0]}")
    return found


def landed_files(root: Path | str, region: str, days: list[dt.date], storage_options: Options = None) -> list[str]:
    """The files of the current extraction of every day (`readable_days`)."""
    return [file for landed in readable_days(root, region, days, storage_options) for file in landed.files]


def open_read(file: str, identity: str, storage_options: Options = None) -> BinaryIO | pa.NativeFile:
    """A landed file for reading: as inspected when its identity was recorded (`open_landed`),
    else as it is (object storage, where no link exists)."""
    if identity:
        return open_landed(file, identity)
    filesystem, path = object_store.filesystem(file, storage_options)
    return filesystem.open_input_stream(path)


# What Spark's CSV reader trims from a line to decide it is blank: every byte up to the space.
BLANK = bytes(range(0x21))


def _header(start: bytes) -> list[str]:
    """The column names of a landed CSV file from its first 64 KiB: its first non-blank line, as
    Spark takes it ([] when none starts there); bytes that are not UTF-8 show as U+FFFD (`_scan`
    names them)."""
    lines = start[: 1 << 16].replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
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


# Spark's CSV parser fails the whole job on a line of more fields than its maxColumns (20,480 by
# default), showing the line; such a line is no record of 8 columns. Fields are counted as commas
# + 1 (quoted commas too: an overcount, never an undercount).
MAX_FIELDS = 20_480


@dataclasses.dataclass(frozen=True)
class FileScan:
    """What one pass over a landed file found."""

    kind: str | None = None
    """What the file is when it is not text to read line by line (compressed, UTF-16): not scanned further."""
    problem: str | None = None
    """Why it is not plain UTF-8 text (a byte-order mark, bytes that are not UTF-8), or None."""
    lines: int = 0
    """Non-blank lines, split on \\n, \\r\\n and \\r as Spark splits them."""
    header: list[str] = dataclasses.field(default_factory=list)
    zeros: int = 0
    """NUL bytes: no CSV text holds one, a block of them is where a crashed writer's records were
    (Spark would drop such a line as blank)."""
    first_zero: int = 0
    wide_at: int = -1
    """Where (the offset of a chunk) a line with more than MAX_FIELDS fields is, or -1."""


def _scan(handle: BinaryIO | pa.NativeFile) -> FileScan:
    """One streaming pass over a landed file, in the memory of a chunk however long a line; a
    problem names the offset, never the content."""
    decoder, offset, lines, problem = codecs.getincrementaldecoder("utf-8")("strict"), 0, 0, None
    head, zeros, first_zero = b"", 0, 0
    open_line = False  # the line not yet ended has a non-blank byte
    open_commas, wide_at = 0, -1  # commas of the line not yet ended; where a line with too many fields is
    for chunk in iter(lambda: handle.read(1 << 22), b""):
        if offset == 0:
            kind = next((kind for magic, kind in _MAGIC.items() if chunk.startswith(magic)), None)
            if kind:
                return FileScan(kind=kind)
            head = chunk[: 1 << 16]
            if chunk.startswith(codecs.BOM_UTF8):
                problem = "starts with a UTF-8 byte-order mark (BOM): have the source deliver UTF-8 without one"
        if count := chunk.count(b"\0"):
            first_zero = first_zero if zeros else offset + chunk.index(b"\0")
            zeros += count
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
            offset += len(codecs.BOM_UTF8)
        offset += len(chunk)
        # a \r\n cut in two ends the line at the \r and adds a blank line: not counted
        parts = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        if wide_at < 0 and open_commas + chunk.count(b",") >= MAX_FIELDS:  # only then line by line
            commas = [part.count(b",") for part in parts]
            commas[0] += open_commas
            wide_at = offset - len(chunk) if max(commas) >= MAX_FIELDS else -1
            open_commas = commas[-1]
        else:
            open_commas = parts[-1].count(b",") + (open_commas if len(parts) == 1 else 0)
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
    return FileScan(
        problem=problem, lines=lines, header=_header(head), zeros=zeros, first_zero=first_zero, wide_at=wide_at
    )
