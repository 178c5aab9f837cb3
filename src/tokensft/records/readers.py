"""Read an SFT input file as a stream of rows: JSONL, JSON, Parquet, CSV or a `datasets` directory.

    for row in iter_rows("data.jsonl"):
        row.index, row.where, row.record, row.error   # 0, "data.jsonl line 1", {...}, None

Whole-file problems (missing, unreadable, empty, not UTF-8, wrong layout) raise `InputError` as
soon as `iter_rows` is called or the bad byte is reached. Per-row problems (a malformed JSON line,
a line that is not an object) are yielded as a row with `record=None` and `error` set, so the
caller decides whether to stop or to skip and count them (`--skip-invalid`).
Row numbers in `where` are 1-based; JSONL reports the physical line, blank lines included.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tokensft.core.errors import ConfigError, InputError

KINDS = ("jsonl", "json", "parquet", "csv", "hf-disk")
EXTENSIONS = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".pq": "parquet", ".csv": "csv",
}
HF_DISK_MARKERS = ("state.json", "dataset_info.json")
BLOCK_SIZE = 1 << 20  # 1 MiB reads for fingerprinting
PARQUET_BATCH_ROWS = 1024  # rows per record batch: bounded memory whatever the file size
CSV_MAX_CELL = 1 << 30  # chars; a cell is one whole response
SKIP_HINT = "or --skip-invalid to skip such rows"
SUPPORTED = (
    "supported: .jsonl/.ndjson, .json, .parquet/.pq, .csv, or a `datasets` save_to_disk directory; "
    "or name the format with --input-format {jsonl,json,parquet,csv,hf-disk}"
)


@dataclass(frozen=True)
class SourceRow:
    """One input record. `index` is its 0-based position (stable across runs); `where` names it for errors."""

    index: int
    where: str
    record: dict | None  # None when the row itself could not be parsed
    error: InputError | None  # set instead of raising, so the caller can skip and count


def display_name(path: str | Path) -> str:
    """The path as the user gave it when short, else its base name: short but unambiguous messages."""
    text = str(path)
    return text if len(text) <= 60 else Path(text).name


def detect_kind(path: str | Path) -> str:
    """The input kind from the extension, or "hf-disk" for a `datasets` save_to_disk directory."""
    path, name = Path(path), display_name(path)
    _check_exists(path, name)
    if path.is_dir():
        if (path / "dataset_dict.json").exists():
            splits = sorted(p.name for p in path.iterdir() if p.is_dir())
            raise InputError(name, None, f"is a DatasetDict with splits {splits}, not a single dataset",
                             fix=f"pass one split's directory, e.g. {name}/{splits[0] if splits else 'train'}",
                             reason="unsupported_input")
        if any((path / marker).exists() for marker in HF_DISK_MARKERS):
            return "hf-disk"
        raise InputError(name, None, "is a directory but not a `datasets` save_to_disk directory "
                         "(no state.json or dataset_info.json)", fix=SUPPORTED, reason="unsupported_input")
    kind = EXTENSIONS.get(path.suffix.lower())
    if kind is None:
        raise InputError(name, None, f"unknown file type '{path.suffix or path.name}'", fix=SUPPORTED,
                         reason="unsupported_input")
    return kind


def pending_chunks(rows: Iterable[SourceRow], shard_size: int, pending: set[int]) -> Iterator[tuple[int, list[SourceRow]]]:
    """(k, its rows) for each chunk k in `pending` that has rows (chunk k: rows [k*S, (k+1)*S)), from one
    pass over `rows` in order; chunks not pending are read past, never held."""
    chunk: list[SourceRow] = []
    current = None
    for row in rows:
        k = row.index // shard_size
        if k != current and chunk:
            yield current, chunk
            chunk = []
        current = k
        if k in pending:
            chunk.append(row)
    if chunk:
        yield current, chunk


def iter_rows(path: str | Path, kind: str | None = None) -> Iterator[SourceRow]:
    """Yield every record of `path` in order. `kind` overrides detection (the --input-format flag).

    Not a generator itself, so that a missing or unreadable file raises at the call, not at first use.
    """
    path, name, kind = _open_checks(path, kind)
    return _READERS[kind](path, name)


def count_rows(path: str | Path, kind: str | None = None) -> int:
    """How many rows `iter_rows` will yield, without parsing records where the format allows."""
    path, name, kind = _open_checks(path, kind)
    if kind == "jsonl":
        with _open_binary(path, name) as f:
            return sum(1 for line in f if line.strip())  # same rule as _iter_jsonl: blank lines are not rows
    if kind == "parquet":
        return _parquet_file(path, name).metadata.num_rows
    if kind == "hf-disk":
        return len(_load_hf_disk(path, name))  # memory-mapped: reads Arrow metadata, not the rows
    return sum(1 for _ in _READERS[kind](path, name))  # JSON and CSV have to be parsed to be counted


def input_fingerprint(path: str | Path) -> str:
    """sha256 hex of the input bytes; for a directory, of its *.arrow files in name order, names included."""
    path, name = Path(path), display_name(path)
    _check_exists(path, name)
    digest = hashlib.sha256()
    if not path.is_dir():
        _hash_file(digest, path, name)
        return digest.hexdigest()
    detect_kind(path)  # a directory must be a `datasets` one, whose rows live in its *.arrow files
    # Only the data files: state.json holds a fingerprint that `datasets` may change for the same rows.
    for data_file in sorted(path.glob("*.arrow")):
        digest.update(data_file.name.encode() + b"\0")
        digest.update(data_file.stat().st_size.to_bytes(8, "little"))  # length-prefix: no ambiguous joins
        _hash_file(digest, data_file, name)
    return digest.hexdigest()


# --- checks shared by every kind ---------------------------------------------------------------


def _check_exists(path: Path, name: str) -> None:
    if not path.exists():
        raise InputError(name, None, "file not found", fix="check the path", reason="not_found")
    if not os.access(path, os.R_OK):
        raise _unreadable(name)


def _open_checks(path: str | Path, kind: str | None) -> tuple[Path, str, str]:
    name, path = display_name(path), Path(path)
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"--input-format {kind!r} is not one of {', '.join(KINDS)}")
    _check_exists(path, name)
    if path.is_dir():
        detect_kind(path)  # even with --input-format: a plain directory or a DatasetDict gets its own message
    if kind is not None and path.is_dir() != (kind == "hf-disk"):
        what = "a directory" if path.is_dir() else "a file"
        raise InputError(name, None, f"is {what}, which --input-format {kind} cannot read", fix=SUPPORTED,
                         reason="unsupported_input")
    kind = kind or detect_kind(path)
    if kind != "hf-disk" and path.stat().st_size == 0:
        raise _no_records(name)
    return path, name, kind


def _unreadable(name: str) -> InputError:
    return InputError(name, None, "cannot be read: permission denied", fix="check the file's permissions",
                      reason="unreadable")


def _open_binary(path: Path, name: str):
    try:
        return open(path, "rb")
    except PermissionError as e:
        raise _unreadable(name) from e


def _hash_file(digest, path: Path, name: str) -> None:
    with _open_binary(path, name) as f:
        while block := f.read(BLOCK_SIZE):
            digest.update(block)


def _no_records(name: str) -> InputError:
    return InputError(name, None, "the file has no records", fix="check that this is the right file",
                      reason="empty_file")


def _decode_line(raw: bytes, line_no: int, name: str) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(f"{name} line {line_no}", e) from e
    return text.removeprefix("\ufeff") if line_no == 1 else text  # a BOM is legal UTF-8 but not JSON


def _not_utf8(where: str, e: UnicodeDecodeError) -> InputError:
    return InputError(where, None, f"is not valid UTF-8 (byte 0x{e.object[e.start]:02x})",
                      fix=f"re-encode the file as UTF-8, {SKIP_HINT}", reason="encoding")


def _type_name(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


# --- one reader per kind -----------------------------------------------------------------------


def _iter_jsonl(path: Path, name: str) -> Iterator[SourceRow]:
    index = 0
    with _open_binary(path, name) as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                text = _decode_line(raw, line_no, name).strip()
            except InputError as error:  # lines are independent: a bad one is a bad row, skippable
                yield SourceRow(index, error.where, None, error)
                index += 1
                continue
            if not text:
                continue  # blank lines are not rows, but they still count toward line numbers
            where = f"{name} line {line_no}"
            yield _parse_json_object(text, index, where)
            index += 1
    if index == 0:
        raise _no_records(name)


def _parse_json_object(text: str, index: int, where: str) -> SourceRow:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        error = InputError(where, None, f"malformed JSON: {e.msg} at column {e.colno}",
                           fix=f"fix the line, {SKIP_HINT}", reason="malformed_json")
        return SourceRow(index, where, None, error)
    return _object_row(record, index, where)


def _object_row(record, index: int, where: str) -> SourceRow:
    if isinstance(record, dict):
        return SourceRow(index, where, record, None)
    error = InputError(where, None, f"is {_type_name(record)}, expected a JSON object {{...}}",
                       fix=f"write one object per record, {SKIP_HINT}", reason="wrong_type")
    return SourceRow(index, where, None, error)


def _iter_json(path: Path, name: str) -> Iterator[SourceRow]:
    data = _load_json_list(path, name)  # eager: a bad document raises at the call
    return (_object_row(record, i, f"{name} item {i + 1}") for i, record in enumerate(data))


def _load_json_list(path: Path, name: str) -> list:
    with _open_binary(path, name) as f:
        raw = f.read()  # a JSON document is parsed whole; use JSONL for files that do not fit in memory
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line_no = raw.count(b"\n", 0, e.start) + 1
        raise _not_utf8(f"{name} line {line_no}", e) from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{name} line {e.lineno}", None, f"malformed JSON: {e.msg} at column {e.colno}",
                         fix="fix the file", reason="malformed_json") from e
    if not isinstance(data, list):
        hint = f"; its keys are {sorted(data)[:10]}" if isinstance(data, dict) else ""
        raise InputError(name, None, f"top level is {_type_name(data)}, expected a list of objects{hint}",
                         fix="write the records as a JSON array [{...}, {...}], or as JSONL with one object per line",
                         reason="wrong_type")
    if not data:
        raise _no_records(name)
    return data


def _parquet_file(path: Path, name: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except PermissionError as e:
        raise _unreadable(name) from e
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(name, None, f"is not a valid Parquet file ({e})", fix="check the file, or --input-format",
                         reason="unsupported_input") from e


def _iter_parquet(path: Path, name: str) -> Iterator[SourceRow]:
    pf = _parquet_file(path, name)  # eager: a file that is not Parquet raises at the call
    if pf.metadata.num_rows == 0:
        raise _no_records(name)
    return _parquet_rows(pf, name)


def _parquet_rows(pf, name: str) -> Iterator[SourceRow]:
    index = 0
    for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS):
        for record in batch.to_pylist():
            yield SourceRow(index, f"{name} row {index + 1}", record, None)
            index += 1


def _iter_csv(path: Path, name: str) -> Iterator[SourceRow]:
    line_no = 0

    def lines(f) -> Iterable[str]:
        nonlocal line_no
        for line_no, raw in enumerate(f, start=1):  # decoded per line so a bad byte names its line
            yield _decode_line(raw, line_no, name)

    # Long responses exceed csv's default 128 KiB cell limit; the limit is process-wide, so only raise it.
    csv.field_size_limit(max(csv.field_size_limit(), CSV_MAX_CELL))
    index = 0
    with _open_binary(path, name) as f:
        reader = csv.DictReader(lines(f), restval="")  # short rows: missing cells read as ""
        try:
            for record in reader:
                yield _csv_row(record, len(reader.fieldnames), index, f"{name} row {index + 1}")
                index += 1
        except csv.Error as e:
            raise InputError(f"{name} line {line_no}", None, f"malformed CSV: {e}", fix="fix the file",
                             reason="malformed_csv") from e
    if index == 0:
        raise _no_records(name)


def _csv_row(record: dict, n_columns: int, index: int, where: str) -> SourceRow:
    extra = record.pop(None, None)  # DictReader files cells beyond the header under the key None
    if extra is None:
        return SourceRow(index, where, record, None)
    error = InputError(where, None, f"has {n_columns + len(extra)} cells but the header has {n_columns} columns",
                       fix=f"quote cells that contain commas, {SKIP_HINT}", reason="malformed_csv")
    return SourceRow(index, where, None, error)


def _load_hf_disk(path: Path, name: str):
    import datasets

    from tokensft.core.dataset import ARROW_ERRORS

    if not any(path.glob("*.arrow")):  # `datasets` saves 0 rows as 0 shards, then fails to load them
        raise _no_records(name)
    try:
        ds = datasets.load_from_disk(str(path))
    except PermissionError as e:
        raise _unreadable(name) from e
    except (*ARROW_ERRORS, ValueError) as e:  # a damaged shard or state file: pyarrow's or json's words
        raise _damaged_hf_disk(path, name, e) from None
    if isinstance(ds, datasets.DatasetDict):
        raise InputError(name, None, f"is a DatasetDict with splits {list(ds)}, not a single dataset",
                         fix=f"pass one split's directory, e.g. {name}/{next(iter(ds), 'train')}",
                         reason="unsupported_input")
    return ds.with_format(None)  # a format saved with the data (torch, numpy) would give tensors, not str/list


def _damaged_hf_disk(path: Path, name: str, exc: Exception) -> InputError:
    """Which file of a save_to_disk directory `datasets` could not read: its first unreadable shard, else the directory."""
    import pyarrow as pa

    from tokensft.core.dataset import ARROW_ERRORS, first_line

    for shard in sorted(path.glob("*.arrow")):
        try:
            with pa.memory_map(str(shard)) as source:
                pa.ipc.open_stream(source).read_all()
        except ARROW_ERRORS as e:
            exc, name = e, f"{name}/{shard.name}"
            break
    return InputError(name, None, f"cannot be read as a save_to_disk dataset ({first_line(exc)})",
                      fix="restore it or save the dataset again", reason="unreadable")


def _iter_hf_disk(path: Path, name: str) -> Iterator[SourceRow]:
    ds = _load_hf_disk(path, name)  # loaded here, not lazily: a bad directory raises at the call
    if len(ds) == 0:
        raise _no_records(name)
    return (SourceRow(i, f"{name} (save_to_disk) row {i + 1}", record, None) for i, record in enumerate(ds))


_READERS = {
    "jsonl": _iter_jsonl, "json": _iter_json, "parquet": _iter_parquet, "csv": _iter_csv, "hf-disk": _iter_hf_disk,
}
