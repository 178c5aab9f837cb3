"""Reading a scored dataset: one reader for every stage (preprocess, train, analysis, reports).

    meta = load_metadata(DIR)                 # tokensft.json, checked (version, field types)
    ds = load(DIR)                            # a memory-mapped datasets.Dataset
    ds, meta = load_with_metadata(DIR)        # both, of one generation
    for shard in shard_paths(DIR, meta):      # the shard files in dataset order
        table = read_table(shard, ["labels", "logprob"])
        values, offsets = flat_list(table["logprob"])   # row r: values[offsets[r]:offsets[r + 1]]

A reader that opens several files (metadata, then shards) does so inside
`generations.read_whole(DIR, ...)`, so that an in-place enrich or `score --overwrite` finishing
meanwhile makes it read again instead of mixing two generations; `load`, `load_with_metadata`
and `load_metadata` do it themselves.

A scored dataset is a directory that `datasets.load_from_disk` opens (Arrow IPC stream shards
`data-NNNNN.arrow` + state.json + dataset_info.json) plus tokensft.json. A damaged shard or
metadata file is a one-line error naming the file and how to repair it, never pyarrow's words alone.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from tokensft.core.errors import ConfigError, TokensftError
from tokensft.core.generations import read_whole
from tokensft.core.integrity import repair
from tokensft.core.schema import CHUNK_KEY, METADATA_FILE, METADATA_KEY, READABLE_VERSIONS, SCHEMA_VERSION, STATE_DIR, STATE_FILE

logger = logging.getLogger(__name__)
SHARD_RE = re.compile(r"^data-(\d{5,})\.arrow$")
ARROW_ERRORS = (pa.ArrowException, OSError)  # what pyarrow raises on a damaged file (ArrowIOError is OSError)


def shard_name(chunk: int) -> str:
    """The file of input chunk `chunk`: data-00000.arrow, ..."""
    return f"data-{chunk:05d}.arrow"


def finished_chunks(directory: Path) -> set[int]:
    """Chunks whose shard exists (complete by construction: shards appear only by rename)."""
    if not directory.is_dir():
        return set()
    return {int(m.group(1)) for p in directory.iterdir() if (m := SHARD_RE.match(p.name))}


def load_metadata(path: str | Path) -> dict:
    """The run metadata (`tokensft.json`) of a finished scored dataset."""
    return read_whole(path, lambda: _metadata(path))


def _metadata(path: str | Path) -> dict:
    file = Path(path) / METADATA_FILE
    if not file.is_file():
        raise ConfigError(
            f"{path}: no {METADATA_FILE}; this is not a finished tokensft dataset "
            "(run `tokensft score`, or `tokensft merge DIR` if all ranks have finished)"
        )
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{file}: metadata is unreadable or corrupt ({exc}); re-run `tokensft merge {path}`") from None
    bad = _malformed_key(meta)
    if bad:
        raise ConfigError(f"{file}: metadata is corrupt (field {bad} is not what tokensft writes); "
                          f"re-run `tokensft merge {path}`")
    version = meta.get("schema_version")
    if version not in READABLE_VERSIONS:
        raise ConfigError(
            f"{file}: schema version {version}, this tokensft reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))} (writes {SCHEMA_VERSION}); "
            "re-score the data with this version"
        )
    return meta


def _malformed_key(meta) -> str | None:
    """The first metadata field whose type is wrong (readers index into these), else None."""
    if not isinstance(meta, dict):
        return "(top level)"
    if not isinstance(meta.get("model"), dict) or not isinstance(meta["model"].get("name"), str):
        return "model.name"
    for key in ("enrichment", "counts", "render", "input"):
        if not isinstance(meta.get(key, {}), dict):
            return key
    if not isinstance(meta.get("counts", {}).get("skipped", {}), dict):
        return "counts.skipped"
    return None


def load(path: str | Path):
    """Open a finished scored dataset as a memory-mapped `datasets.Dataset`.

    Checks the metadata first (a clear error for an unfinished or foreign directory);
    read the metadata itself with `load_metadata(path)`, or both with `load_with_metadata`. A
    shard `datasets` cannot read is a ConfigError naming it. A dataset replaced while it is
    being opened (an in-place enrich or `score --overwrite` finishing) is opened again, whole.
    """
    return load_with_metadata(path)[0]


def load_with_metadata(path: str | Path) -> tuple:
    """(the memory-mapped `datasets.Dataset`, its tokensft.json), read from one generation."""
    return read_whole(path, lambda: _load(Path(path)))


def _load(path: Path) -> tuple:
    import datasets  # deferred: importing datasets costs ~1 s and most commands do not need it

    meta = _metadata(path)
    try:
        return datasets.load_from_disk(str(path)), meta
    # what a damaged directory raises: pyarrow's errors (ArrowIOError is OSError), ValueError for a
    # garbled state.json or dataset_info.json (json) or a shard whose columns differ (datasets)
    except (*ARROW_ERRORS, ValueError) as exc:
        raise _unloadable(path, meta, exc) from None


def _unloadable(path: Path, meta: dict, exc: Exception) -> ConfigError:
    """Why `datasets` cannot open a finished dataset: its first unreadable shard, else its state files."""
    try:
        for shard in shard_paths(path, meta):
            read_table(shard)
    except ConfigError as damaged:
        return damaged
    return ConfigError(f"{path}: `datasets` cannot open it ({first_line(exc)}) though every shard reads; "
                       f"its {STATE_FILE} or dataset_info.json is damaged: re-run `tokensft merge {path}`")


def shard_names(path: Path, meta: dict) -> list[str]:
    """The shard file names in dataset order: state.json's `_data_files` (what `datasets` reads), else num_shards."""
    try:
        return [f["filename"] for f in json.loads((Path(path) / STATE_FILE).read_text(encoding="utf-8"))["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return [shard_name(k) for k in range(int(meta.get("num_shards", 0)))]


def shard_paths(path: Path, meta: dict) -> list[Path]:
    """The shard files in dataset order (`shard_names`); a missing one is a ConfigError."""
    path = Path(path)
    names = shard_names(path, meta)
    missing = [n for n in names if not (path / n).is_file()]
    if missing:
        raise ConfigError(f"{path}: shard {missing[0]} is missing ({len(missing)} of {len(names)}); "
                          "rerun the `tokensft score` command that wrote it (it rescores missing shards)")
    return [path / n for n in names]


def read_table(path: Path, columns: Sequence[str] | None = None) -> pa.Table:
    """A shard's rows (optionally only `columns`), schema metadata included."""
    try:
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_stream(source).read_all()
    except ARROW_ERRORS as exc:  # e.g. OSError "Expected to be able to read ...", ArrowInvalid "Invalid flatbuffers"
        raise _damaged(path, exc) from None
    return table.select(list(columns)) if columns is not None else table


def read_schema(path: Path) -> pa.Schema:
    """A shard's schema (column names, types, metadata) without reading its rows."""
    try:
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_stream(source).schema
    except ARROW_ERRORS as exc:
        raise _damaged(path, exc) from None


def _damaged(path: Path, exc: Exception) -> ConfigError:
    """Shards are written atomically, so an unreadable one was damaged or replaced afterwards."""
    if path.parent.parent.name == STATE_DIR:  # an enrichment's part file, scored again when missing
        fix = "delete it and rerun the enrichment, which scores it again"
    else:
        fix = repair(path.parent)
    return ConfigError(f"{path}: not a readable Arrow shard ({first_line(exc)}); it was damaged after tokensft "
                       f"wrote it: {fix}")


def first_line(exc: Exception) -> str:
    """An exception's message as one line (pyarrow's run over several)."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def read_shard_info(path: Path) -> tuple[dict, dict]:
    """(run identity, chunk counts) from a shard's schema metadata, without reading its rows."""
    meta = read_schema(path).metadata or {}
    return json.loads(meta.get(METADATA_KEY, b"{}")), json.loads(meta.get(CHUNK_KEY, b"{}"))


def flat_list(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a list column: row r is values[offsets[r]:offsets[r + 1]]; offsets (R + 1,) int64."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = array.offsets.to_numpy().astype(np.int64)
    values = array.values.slice(offsets[0], offsets[-1] - offsets[0])
    return values.to_numpy(zero_copy_only=False), offsets - offsets[0]


def read_rows(path: Path, meta: dict, rows: Sequence[int], column: str) -> dict[int, object]:
    """{row: value} of one column for a few rows of the dataset (rows in dataset order, across shards),
    reading only the shards that hold them and only that column."""
    wanted, out, base = sorted(set(rows)), {}, 0
    for shard in shard_paths(path, meta):
        if not wanted or base > wanted[-1]:
            break
        values = read_table(shard, [column])[column]
        for row in wanted:
            if base <= row < base + len(values):
                out[row] = values[row - base].as_py()
        base += len(values)
    return out


def tokenizer_for(meta: dict, model: str | None):
    """The dataset's tokenizer, to decode ids.

    Without `model`: the scorer's, if it is on disk (nothing is fetched or converted for it), else
    None (ids are shown then). An explicit `model` must load and share the dataset's tokens (its
    token fingerprint), else a ConfigError: decoding with another vocabulary would mislabel tokens.
    """
    from tokensft.core.models import load_tokenizer, resolve_model_dir, tokenizer_fingerprint

    try:
        path, _ = resolve_model_dir(model or meta["model"]["name"], fetch=model is not None)
        tokenizer = load_tokenizer(path)
    except (TokensftError, OSError, ValueError) as exc:
        if model is not None:
            raise ConfigError(f"--model {model}: {exc}") from None
        return None
    if meta.get("token_fingerprint") not in (None, tokenizer_fingerprint(tokenizer, chat_template=False)):
        if model is not None:
            raise ConfigError(f"--model {model}: its tokenizer differs from the one the dataset was scored with "
                              "(token fingerprints differ); pass the scorer's tokenizer")
        logger.warning("the tokenizer in %s no longer matches the dataset's tokens; showing ids", path)
        return None
    return tokenizer
