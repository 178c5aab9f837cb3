"""The Arrow schema of a scored dataset: the one contract between preprocess, train and analysis.

Preprocess writes it; everything else only reads it. A scored dataset is a directory that
`datasets.load_from_disk` opens (Arrow IPC stream shards + `state.json` + `dataset_info.json`)
plus `tokensft.json`, the run metadata. Per-token columns are aligned with `input_ids`:
position t describes token t as predicted from tokens < t.

| column          | type                  | meaning                                                   |
|-----------------|-----------------------|-----------------------------------------------------------|
| id              | string                | the record's `id`, or a stable hash of its content        |
| input_ids       | list<int32>           | the rendered, tokenized example                           |
| labels          | list<int32>           | token id where trained, -100 elsewhere (TRL/transformers) |
| logprob         | list<float32>         | log p(x_t given x_<t), natural log; NaN where labels=-100 |
| entropy         | list<float32>         | entropy of the predictive distribution; NaN likewise      |
| rank            | list<int32>           | rank of x_t (0 = argmax); -1 likewise                     |
| topk_ids        | list<list<int32>>     | with --top-k: the K most likely ids; [] at non-targets    |
| topk_logprobs   | list<list<float16>>   | their log-probs; [] at non-targets                        |
| num_tokens      | int32                 | len(input_ids)                                            |
| num_targets     | int32                 | number of positions with labels != -100                   |
| mean_logprob    | float32               | mean logprob over targets                                 |
| truncated       | bool                  | the render was cut at --max-length                        |

Bump SCHEMA_VERSION on any change to names, types or meaning, and update every reader.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from tokensft.errors import ConfigError

SCHEMA_VERSION = 1
IGNORE_INDEX = -100
METADATA_FILE = "tokensft.json"
METADATA_KEY = b"tokensft"  # key of the run metadata (JSON) in each shard's Arrow schema


def scored_schema(top_k: int, metadata: dict | None = None) -> pa.Schema:
    """The explicit schema of a scored shard (never inferred from the first row)."""
    fields = [
        pa.field("id", pa.string()),
        pa.field("input_ids", pa.list_(pa.int32())),
        pa.field("labels", pa.list_(pa.int32())),
        pa.field("logprob", pa.list_(pa.float32())),
        pa.field("entropy", pa.list_(pa.float32())),
        pa.field("rank", pa.list_(pa.int32())),
    ]
    if top_k > 0:
        fields += [
            pa.field("topk_ids", pa.list_(pa.list_(pa.int32()))),
            pa.field("topk_logprobs", pa.list_(pa.list_(pa.float16()))),
        ]
    fields += [
        pa.field("num_tokens", pa.int32()),
        pa.field("num_targets", pa.int32()),
        pa.field("mean_logprob", pa.float32()),
        pa.field("truncated", pa.bool_()),
    ]
    meta = {METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()} if metadata else None
    return pa.schema(fields, metadata=meta)


def load_metadata(path: str | Path) -> dict:
    """The run metadata (`tokensft.json`) of a finished scored dataset."""
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
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ConfigError(
            f"{file}: schema version {version}, this tokensft reads version {SCHEMA_VERSION}; "
            "re-score the data with this version"
        )
    return meta


def load(path: str | Path):
    """Open a finished scored dataset as a memory-mapped `datasets.Dataset`.

    Checks the metadata first (a clear error for an unfinished or foreign directory);
    read the metadata itself with `load_metadata(path)`.
    """
    import datasets  # deferred: importing datasets costs ~1 s and most commands do not need it

    load_metadata(path)
    return datasets.load_from_disk(str(path))
