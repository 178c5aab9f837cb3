"""Synthetic inputs for benchmarks that run the real trainers: a tokenizer built in-process, a Llama
saved from a config with random weights, one sequence of fixed length, and a scored dataset of it.

    tok = tiny_tokenizer()                                      # byte-level BPE, ChatML-like specials
    model_dir = save_llama(dir / "model", tok, layers=2, hidden=256, heads=4, kv_heads=2,
                           intermediate=512, vocab=49152, max_positions=4096)
    ids, labels = sequence(1024, vocab=49152)                   # the last 60% targets
    write_scored(dir / "data", tok, ids, labels, 3, 49152)    # what `tokensft train` reads

The scored dataset goes through preprocess's own writer (output.prepare, shards.write_shard,
output.finish) under core.schema's scored_schema, so it is what `tokensft score` writes, without
running a model over 4,096-token sequences: logprob and entropy are those of a uniform predictor
(log V) at the targets, NaN elsewhere; rank 0 at targets, -1 elsewhere. Its token fingerprint is
the tokenizer's (tokensft.core.models.tokenizer_fingerprint), which `tokensft train` checks against
the model directory's tokenizer. The ids are random over the model's vocabulary, most of them above
the tokenizer's few hundred tokens: nothing decodes them, and the cost of a step does not depend on them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

TARGET_FRACTION = 0.6  # the last 60% of a sequence are targets, as in bench_train
CORPUS = ["The quick brown fox jumps over the lazy dog.", "What is 2 + 2? The answer is 4.",
          "You are a helpful assistant. Answer the question step by step."] * 4


def tiny_tokenizer():
    """A byte-level BPE tokenizer trained in-process on a few sentences (as tests/conftest.py's bpe one)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")


def save_llama(path: Path, tokenizer, layers: int, hidden: int, heads: int, kv_heads: int, intermediate: int,
               vocab: int, max_positions: int, rope_theta: float = 100000.0) -> Path:
    """A LlamaForCausalLM from a config (tied embeddings, random weights, fp32) saved with the tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
                         rope_parameters={"rope_type": "default", "rope_theta": rope_theta}, rms_norm_eps=1e-5,
                         tie_word_embeddings=True, use_cache=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config).float()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def sequence(length: int, vocab: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """`length` random ids and their labels: -100 on the first 40%, the id on the last 60% (never position 0)."""
    ids = np.random.default_rng([seed, length]).integers(0, vocab, length).tolist()
    first = max(1, length - round(TARGET_FRACTION * length))
    return ids, [-100] * first + ids[first:]


def write_scored(directory: Path, tokenizer, ids: list[int], labels: list[int], copies: int, vocab: int) -> Path:
    """A finished scored dataset of `copies` rows of (ids, labels), ids "row-0" ..., through preprocess's writer
    (the scores those of a uniform predictor over `vocab` ids)."""
    import pyarrow as pa

    from tokensft.core.models import tokenizer_fingerprint
    from tokensft.core.schema import (
        IGNORE_INDEX,
        MESSAGE_TYPE,
        SCHEMA_VERSION,
        scored_schema,
    )
    from tokensft.preprocess import output
    from tokensft.preprocess.shards import list_array, scoring_counts, write_shard

    n, labels_np = len(ids), np.asarray(labels)
    target = labels_np != IGNORE_INDEX
    uniform = math.log(vocab)  # -log p and the entropy of the uniform distribution
    logprob = np.where(target, -uniform, np.nan).astype(np.float32)
    entropy = np.where(target, uniform, np.nan).astype(np.float32)
    rank = np.where(target, 0, -1).astype(np.int32)
    identity = {"schema_version": SCHEMA_VERSION, "synthetic": {"length": n, "copies": copies, "targets": int(target.sum())}}
    metadata = {"schema_version": SCHEMA_VERSION, "model": {"name": "synthetic", "content_hash": "synthetic"},
                "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
                "token_fingerprint": tokenizer_fingerprint(tokenizer, chat_template=False),
                "render": {"format": "text"}, "max_length": n, "top_k": 0, "dtype": "float32",
                "input": {"path": "synthetic", "kind": "jsonl", "fingerprint": f"synthetic-{n}-{copies}", "rows": copies}}
    run = {"identity": identity, "metadata": metadata, "num_chunks": 1, "fingerprint": f"synthetic-{n}-{copies}"}
    lengths = [n] * copies

    def tiled(values: np.ndarray, kind) -> pa.Array:
        return list_array(lengths, np.tile(values, copies), kind)

    schema = scored_schema(0, identity)
    columns = {
        "id": pa.array([f"row-{i}" for i in range(copies)], pa.string()),
        "input_ids": tiled(np.asarray(ids, np.int32), pa.int32()), "labels": tiled(labels_np.astype(np.int32), pa.int32()),
        "logprob": tiled(logprob, pa.float32()), "entropy": tiled(entropy, pa.float32()), "rank": tiled(rank, pa.int32()),
        "num_tokens": pa.array([n] * copies, pa.int32()), "num_targets": pa.array([int(target.sum())] * copies, pa.int32()),
        "mean_logprob": pa.array([-uniform] * copies, pa.float32()), "truncated": pa.array([False] * copies, pa.bool_()),
        "kind": pa.array(["text"] * copies, pa.string()),
        "messages": list_array([1] * copies, pa.array([{"role": "text", "content": "synthetic", "target": True}] * copies,
                                                      MESSAGE_TYPE), None),
    }
    table = pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema)
    output.prepare(directory, run, overwrite=True)
    stats = scoring_counts().merge({"read": copies, "written": copies, "tokens": n * copies,
                                    "targets": int(target.sum()) * copies})
    write_shard(directory, 0, table, stats)
    output.finish(directory)
    return directory
