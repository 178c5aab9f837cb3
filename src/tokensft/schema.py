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
| kind            | string                | "chat" (through a chat template) or "text" (plain)        |
| messages        | list<struct<role, content, target>> | the normalized conversation, so another    |
|                 |                       | model can re-render it in its own template (references)   |

Columns added by `tokensft enrich` (or `score --mask/--ref/--teacher`), provenance in tokensft.json
under "enrichment":

| column                   | type                | meaning                                             |
|--------------------------|---------------------|-----------------------------------------------------|
| mask_<name>              | list<int8>          | 1 = train on this token; always 0 where labels=-100 |
| ref_<name>_mean_logprob  | float32             | reference model's mean target log-prob (PoFT s_ref) |
| ref_<name>_num_targets   | int32               | its number of targets, in its own tokenization      |
| ref_mean_logprob         | float32             | mean over the references present (NaN: none valid)  |
| teacher_logprob          | list<float32>       | teacher log p of each target; NaN elsewhere         |
| teacher_topk_ids         | list<list<int32>>   | the teacher's K most likely ids; [] at non-targets  |
| teacher_topk_logprobs    | list<list<float16>> | their log-probs                                     |

Bump SCHEMA_VERSION on any change to names, types or meaning, and update every reader.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from tokensft.errors import ConfigError

SCHEMA_VERSION = 2  # 2: kind + messages columns, enrichment columns, token_fingerprint
IGNORE_INDEX = -100
METADATA_FILE = "tokensft.json"
METADATA_KEY = b"tokensft"  # key of the run metadata (JSON) in each shard's Arrow schema
MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string()), ("target", pa.bool_())])
TOPK_IDS_TYPE = pa.list_(pa.list_(pa.int32()))
TOPK_LOGPROBS_TYPE = pa.list_(pa.list_(pa.float16()))


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
            pa.field("topk_ids", TOPK_IDS_TYPE),
            pa.field("topk_logprobs", TOPK_LOGPROBS_TYPE),
        ]
    fields += [
        pa.field("num_tokens", pa.int32()),
        pa.field("num_targets", pa.int32()),
        pa.field("mean_logprob", pa.float32()),
        pa.field("truncated", pa.bool_()),
        pa.field("kind", pa.string()),
        pa.field("messages", pa.list_(MESSAGE_TYPE)),
    ]
    meta = {METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()} if metadata else None
    return pa.schema(fields, metadata=meta)


def enrichment_field(column: str) -> pa.Field:
    """The Arrow field of an enrichment column, by its name (see the table above)."""
    if column.startswith("mask_"):
        return pa.field(column, pa.list_(pa.int8()))
    if column == "ref_mean_logprob" or (column.startswith("ref_") and column.endswith("_mean_logprob")):
        return pa.field(column, pa.float32())
    if column.startswith("ref_") and column.endswith("_num_targets"):
        return pa.field(column, pa.int32())
    types = {"teacher_logprob": pa.list_(pa.float32()), "teacher_topk_ids": TOPK_IDS_TYPE,
             "teacher_topk_logprobs": TOPK_LOGPROBS_TYPE}
    if column in types:
        return pa.field(column, types[column])
    raise AssertionError(f"not an enrichment column: {column}")


def enrichment_order(column: str) -> tuple[int, str]:
    """Sort key placing enrichment columns after the scored ones: masks, references, teacher."""
    group = 0 if column.startswith("mask_") else 2 if column.startswith("teacher_") else 1
    return group, "~" if column == "ref_mean_logprob" else column


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
    bad = _malformed_key(meta)
    if bad:
        raise ConfigError(f"{file}: metadata is corrupt (field {bad} is not what tokensft writes); "
                          f"re-run `tokensft merge {path}`")
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ConfigError(
            f"{file}: schema version {version}, this tokensft reads version {SCHEMA_VERSION}; "
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
    read the metadata itself with `load_metadata(path)`.
    """
    import datasets  # deferred: importing datasets costs ~1 s and most commands do not need it

    load_metadata(path)
    return datasets.load_from_disk(str(path))
