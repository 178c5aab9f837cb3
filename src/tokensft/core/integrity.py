"""Shard records: what each shard was when it was written, to verify it against later.

    write_record(shard, rows)        # right after the shard's rename: DIR/.tokensft/shards/data-00000.json
    problem = check_shard(shard)     # None, or what is wrong: no record, size, rows, checksum
    discard(shard)                   # the shard and its record, so that it is written again

A record holds the shard's size in bytes, its row count and the XXH3-64 checksum of its bytes
(xxhash, which `datasets` already requires: 4-8 GB/s here against zlib.crc32's 1.3-2.8, so
writing and verifying cost a few ms per 100 MB; checking a dataset costs one read of it).
Shards are written atomically, so a shard that differs from its record was changed afterwards:
cut short by a full disk or an interrupted copy, garbled, replaced. A shard without a record
(its run killed between the shard's rename and the record's, or written by a tokensft before
records) is unverified: it cannot be told from a damaged one. Records live under the output's
run state, which `datasets.load_from_disk` never reads.
"""

from __future__ import annotations

import json
import mmap
import os
from pathlib import Path

import xxhash

from tokensft.core.fileio import atomic_write
from tokensft.core.schema import METADATA_FILE, STATE_DIR

RECORDS_DIR = "shards"  # under STATE_DIR: one JSON record per shard
RECORD_KEYS = {"shard", "bytes", "rows", "xxh3_64"}
UNVERIFIED = "unverified: it has no record (written by an older tokensft, or by a run killed right after writing it)"


def record_path(shard: Path) -> Path:
    """DIR/.tokensft/shards/data-00000.json for DIR/data-00000.arrow."""
    return shard.parent / STATE_DIR / RECORDS_DIR / f"{shard.stem}.json"


def checksum(path: Path) -> str:
    """XXH3-64 of a file's bytes (hex), over the memory-mapped file."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return xxhash.xxh3_64_hexdigest(b"")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return xxhash.xxh3_64_hexdigest(view)


def write_record(shard: Path, rows: int) -> None:
    """Record a shard just written (atomically): its size, row count and checksum."""
    path = record_path(shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"shard": shard.name, "bytes": shard.stat().st_size, "rows": rows, "xxh3_64": checksum(shard)}
    # not fsynced: a record lost in a crash leaves its shard unverified, which is rescored
    with atomic_write(path, "w", encoding="utf-8", fsync=False) as f:
        json.dump(record, f, sort_keys=True)


def read_record(shard: Path) -> dict | None:
    """A shard's record; None when it has none; {} when the record itself is unreadable."""
    path = record_path(shard)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    ok = isinstance(record, dict) and RECORD_KEYS <= set(record) and record["shard"] == shard.name
    return record if ok and all(isinstance(record[k], int) for k in ("bytes", "rows")) else {}


def check_shard(shard: Path, rows: int | None = None) -> str | None:
    """What is wrong with `shard` against its record (None: nothing). `rows`: its row count, when
    the caller has read it (the checksum alone already vouches for the rows)."""
    if not shard.is_file():
        return "missing"
    record = read_record(shard)
    if record is None:
        return UNVERIFIED
    if not record:
        return f"unverified: its record {record_path(shard)} is unreadable"
    size = shard.stat().st_size
    if size != record["bytes"]:
        return f"{size:,} bytes where {record['bytes']:,} were written (cut short or replaced)"
    if rows is not None and rows != record["rows"]:
        return f"{rows:,} rows where {record['rows']:,} were written"
    if checksum(shard) != record["xxh3_64"]:
        return "its bytes differ from those written (checksum mismatch: garbled or replaced)"
    return None


def discard(shard: Path) -> None:
    """Delete a shard and its record (the shard first: a record without its shard is ignored)."""
    shard.unlink(missing_ok=True)
    record_path(shard).unlink(missing_ok=True)


def is_enriched(meta: dict) -> bool:
    """Whether a dataset's metadata (tokensft.json, or the metadata in its run state) says it was enriched."""
    return bool(meta.get("enrich_history") or meta.get("enrichment"))


def repair(directory: Path, meta: dict | None = None) -> str:
    """How to repair a damaged or unverified shard of `directory` (`meta`: its metadata; default: tokensft.json)."""
    if meta is None:
        try:
            meta = json.loads((directory / METADATA_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            meta = {}
    if isinstance(meta, dict) and is_enriched(meta):
        return ("the dataset is enriched, so rescoring the shard alone would lose its enrichment columns: restore the "
                "file from a copy, or rerun its `tokensft score` command with --overwrite, then its enrichment "
                "(both commands are in tokensft.json: command, enrich_history)")
    return "rerun the `tokensft score` command that wrote it, which rescores damaged and unverified shards"
