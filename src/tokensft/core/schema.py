"""The vocabulary of a scored dataset: column names and types, metadata keys, the schema version.

The one contract between preprocess, train, analysis and reports. Preprocess writes it; everything
else only reads it (through `tokensft.core.dataset`). Every column name is built here, never spelled
in another module. A scored dataset is a directory that
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
| weight          | list<float32>         | only when some input carries weights (or --prompt-weight) |
|                 |                       | the data's loss weight of each target; NaN where -100     |
| from_prompt     | list<int8>            | only with --prompt-weight > 0: 1 at the prompt tokens it  |
|                 |                       | made targets, 0 elsewhere (reports separate them)         |

Columns added by `tokensft enrich` (or `score --mask/--ref/--teacher`), provenance in tokensft.json
under "enrichment":

| column                   | type                | meaning                                             |
|--------------------------|---------------------|-----------------------------------------------------|
| mask_<name>              | list<int8>          | 1 = train on this token; always 0 where labels=-100 |
| weight_<name>            | list<float32>       | a loss weight computed from stored columns (core.  |
|                          |                     | weights); NaN where labels=-100                     |
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

import pyarrow as pa

SCHEMA_VERSION = 3  # 3: weight, from_prompt and weight_<name> columns; 2: kind + messages, enrichment columns
READABLE_VERSIONS = (2, 3)  # 3 only adds optional columns: a version-2 dataset reads as one without weights
IGNORE_INDEX = -100

# Files and metadata keys
METADATA_FILE = "tokensft.json"  # the run metadata of a finished dataset
STATE_FILE = "state.json"  # datasets' shard list; its presence marks a finished dataset
STATE_DIR = ".tokensft"  # an output's run state (run.json), rank locks and enrichment parts
METADATA_KEY = b"tokensft"  # run identity (JSON) in each shard's Arrow schema metadata
CHUNK_KEY = b"tokensft_chunk"  # a shard's scoring counts (read, written, skipped, ...), summed by finish
ENRICH_KEY = b"tokensft_enrich"  # a shard's enrichment counts (mask kept counts, reference counts)

# Columns written by `tokensft score`
LOGPROB = "logprob"
TOPK_IDS, TOPK_LOGPROBS = "topk_ids", "topk_logprobs"
WEIGHT = "weight"  # the data's weights (per example, turn, span, prompt); not an enrichment
FROM_PROMPT = "from_prompt"  # 1 at prompt tokens made targets by --prompt-weight
MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string()), ("target", pa.bool_())])
TOPK_IDS_TYPE = pa.list_(pa.list_(pa.int32()))
TOPK_LOGPROBS_TYPE = pa.list_(pa.list_(pa.float16()))

# Columns added by `tokensft enrich`
MASK_PREFIX, WEIGHT_PREFIX, REF_PREFIX, TEACHER_PREFIX = "mask_", "weight_", "ref_", "teacher_"
REF_MEAN_LOGPROB = "ref_mean_logprob"  # the mean over the references present
TEACHER_LOGPROB = "teacher_logprob"
TEACHER_TOPK_IDS, TEACHER_TOPK_LOGPROBS = "teacher_topk_ids", "teacher_topk_logprobs"
TEACHER_COLUMNS = (TEACHER_LOGPROB, TEACHER_TOPK_IDS, TEACHER_TOPK_LOGPROBS)
TOPK_COLUMNS = (TOPK_IDS, TOPK_LOGPROBS, TEACHER_TOPK_IDS, TEACHER_TOPK_LOGPROBS)  # (N, K) blocks at targets
# whose probabilities a mask thresholds, and whose sparse top-k a Q-target prior reads
LOGPROB_COLUMNS = {"scorer": LOGPROB, "teacher": TEACHER_LOGPROB}
PRIOR_COLUMNS = {"scorer": (TOPK_IDS, TOPK_LOGPROBS), "teacher": (TEACHER_TOPK_IDS, TEACHER_TOPK_LOGPROBS)}


def mask_column(name: str) -> str:
    """mask_<name>: a stored mask (name: the mask's canonical name, see core.masks)."""
    return f"{MASK_PREFIX}{name}"


def weight_column(name: str) -> str:
    """weight_<name>: a weight computed by enrich (name: the spec's canonical name, see core.weights)."""
    return f"{WEIGHT_PREFIX}{name}"


def is_weight_column(column: str) -> bool:
    """Whether `column` holds loss weights: the data's `weight`, or an enrich-computed weight_<name>."""
    return column == WEIGHT or column.startswith(WEIGHT_PREFIX)


def ref_column(name: str | None = None) -> str:
    """ref_<name>_mean_logprob, a reference's PoFT s_ref; without a name, ref_mean_logprob (their mean)."""
    return REF_MEAN_LOGPROB if name is None else f"{REF_PREFIX}{name}_mean_logprob"


def ref_count_column(name: str) -> str:
    """ref_<name>_num_targets: the reference's target count, in its own tokenization."""
    return f"{REF_PREFIX}{name}_num_targets"


def is_mask_column(column: str) -> bool:
    return column.startswith(MASK_PREFIX)


def is_ref_column(column: str) -> bool:
    """Whether `column` is one reference's ref_<name>_mean_logprob (not their mean ref_mean_logprob)."""
    return column.startswith(REF_PREFIX) and column.endswith("_mean_logprob") and column != REF_MEAN_LOGPROB


def ref_name(column: str) -> str:
    """The <name> of ref_<name>_mean_logprob."""
    assert is_ref_column(column), column
    return column[len(REF_PREFIX):-len("_mean_logprob")]


def ref_columns(columns) -> list[str]:
    """Each reference's ref_<name>_mean_logprob among `columns`, sorted."""
    return sorted(c for c in columns if is_ref_column(c))


def is_enrichment(column: str) -> bool:
    """Whether `column` was added by `tokensft enrich` (a mask, a weight, a reference or the teacher)."""
    return column.startswith((MASK_PREFIX, WEIGHT_PREFIX, REF_PREFIX, TEACHER_PREFIX))


def scored_schema(top_k: int, metadata: dict | None = None, weighted: bool = False,
                  prompt_targets: bool = False) -> pa.Schema:
    """The explicit schema of a scored shard (never inferred from the first row).

    weighted: some input carries weights (or --prompt-weight > 0): a `weight` column after `rank`.
    prompt_targets: --prompt-weight > 0: a `from_prompt` column after `weight`.
    """
    fields = [
        pa.field("id", pa.string()),
        pa.field("input_ids", pa.list_(pa.int32())),
        pa.field("labels", pa.list_(pa.int32())),
        pa.field(LOGPROB, pa.list_(pa.float32())),
        pa.field("entropy", pa.list_(pa.float32())),
        pa.field("rank", pa.list_(pa.int32())),
    ]
    if weighted or prompt_targets:
        fields.append(pa.field(WEIGHT, pa.list_(pa.float32())))
    if prompt_targets:
        fields.append(pa.field(FROM_PROMPT, pa.list_(pa.int8())))
    if top_k > 0:
        fields += [
            pa.field(TOPK_IDS, TOPK_IDS_TYPE),
            pa.field(TOPK_LOGPROBS, TOPK_LOGPROBS_TYPE),
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
    if is_mask_column(column):
        return pa.field(column, pa.list_(pa.int8()))
    if column.startswith(WEIGHT_PREFIX):
        return pa.field(column, pa.list_(pa.float32()))
    if column == REF_MEAN_LOGPROB or is_ref_column(column):
        return pa.field(column, pa.float32())
    if column.startswith(REF_PREFIX) and column.endswith("_num_targets"):
        return pa.field(column, pa.int32())
    types = {TEACHER_LOGPROB: pa.list_(pa.float32()), TEACHER_TOPK_IDS: TOPK_IDS_TYPE,
             TEACHER_TOPK_LOGPROBS: TOPK_LOGPROBS_TYPE}
    if column in types:
        return pa.field(column, types[column])
    raise AssertionError(f"not an enrichment column: {column}")


def enrichment_order(column: str) -> tuple[int, str]:
    """Sort key placing enrichment columns after the scored ones: masks, weights, references, teacher."""
    group = (0 if is_mask_column(column) else 1 if column.startswith(WEIGHT_PREFIX)
             else 3 if column.startswith(TEACHER_PREFIX) else 2)
    return group, "~" if column == REF_MEAN_LOGPROB else column
