"""`tokensft eval MODEL DATA --output DIR`: held-out task accuracy by generation, resumable.

    rows    = iter_rows(DATA)                       # any input format `tokensft score` reads
    chunk k = rows [k*S, (k+1)*S); rank r owns k % world == r
    for each chunk of this rank without its part:
        prompt     = the render up to the last target turn (score's Renderer, so the prompt tokens
                     are exactly those training saw before that turn)
        completion = generate(...)                  # greedy, or seeded samples (avg@N)
        teacher    = the chunk's valid records scored teacher-forced (teacher_forced.py): target sums
        part k     = one row per (example, sample), the sums in its metadata  # atomic: a killed run
                                                                              # redoes only chunk k
    when every part exists: examples.parquet, then results.json

    DIR/.tokensft/run.json     what decides the results (a rerun with other settings is refused)
    DIR/.tokensft/parts/       one part per chunk
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tokensft import __version__
from tokensft.core.counts import Counts
from tokensft.core.errors import ConfigError, InputError
from tokensft.core.fileio import atomic_write
from tokensft.core.identity import changed_keys
from tokensft.core.locks import OutputLock, RankLock
from tokensft.core.progress import Progress
from tokensft.core.schema import IGNORE_INDEX, STATE_DIR
from tokensft.evaluate import teacher_forced
from tokensft.evaluate.answers import parse_metric
from tokensft.evaluate.config import EvalConfig
from tokensft.evaluate.scores import eval_scores
from tokensft.records.formats import Example, Message, to_example
from tokensft.records.readers import count_rows, detect_kind, input_fingerprint, iter_rows, pending_chunks
from tokensft.records.render import Renderer
from tokensft.records.validate import detect_record_format, validate_rows

RESULTS, EXAMPLES = "results.json", "examples.parquet"
OUR_FILES = {RESULTS, EXAMPLES, STATE_DIR, ".tokensft.lock", "lm_eval.json", "scored"}  # scored/: what 0.1 wrote
PART_COLUMNS = pa.schema([
    ("id", pa.string()), ("sample", pa.int32()), ("prompt", pa.string()), ("completion", pa.string()),
    ("answer", pa.string()), ("reference", pa.string()), ("correct", pa.bool_()),
    ("verdict", pa.string()),  # right, wrong, or no_answer (the metric read no answer: wrong, and counted apart)
    ("note", pa.string()),  # e.g. "timeout" (math), "unreadable reference"
    ("prompt_tokens", pa.int32()), ("new_tokens", pa.int32()), ("stopped", pa.bool_()),
])
VERDICTS = {True: "right", False: "wrong", None: "no_answer"}


def evaluate(config: EvalConfig) -> dict:
    """Run (or resume) this rank's share of an evaluation; write the results once all is done.
    Returns a summary: status ("finished", "already-finished", "rank-done"), output, results."""
    from tokensft.core.models import load_model, tokenizer_fingerprint  # deferred: torch

    config.validate()
    if config.input is None:  # the suites alone
        return _harness_only(config)
    metric = parse_metric(config.metric)
    kind = config.input_format or detect_kind(config.input)
    fmt = detect_record_format(config, kind)
    num_rows = count_rows(config.input, kind=kind)
    if not config.skip_invalid:
        validate_rows(config, kind, fmt)  # seconds, before any generation (weights are not read)
    loaded = load_model(config.model, dtype=config.dtype, device=config.device)
    # rendered whole (no cut): a prompt and its completion must fit within this many tokens
    limit = config.max_length or getattr(loaded.model.config, "max_position_embeddings", None)
    renderer = Renderer(loaded.tokenizer, config.template, None)
    identity = {
        "kind": "eval", "input_fingerprint": input_fingerprint(config.input), "model_hash": loaded.content_hash,
        "tokenizer_fingerprint": tokenizer_fingerprint(loaded.tokenizer), "format": fmt,
        "format_spec": asdict(config.format), "template": renderer.template, "max_length": limit,
        "metric": metric.spec, "max_new_tokens": config.max_new_tokens, "temperature": config.temperature,
        "top_p": config.top_p, "samples": config.samples, "seed": config.seed, "shard_size": config.shard_size,
        "parts": 2,  # the part columns' version: verdict and note since 2
        "skip_invalid": config.skip_invalid, "dtype": str(loaded.dtype).removeprefix("torch."),
        "teacher_forced": config.teacher_forced,
    }
    directory = Path(config.output)
    num_chunks = -(-num_rows // config.shard_size)
    with ExitStack() as held:
        with OutputLock(directory, wait=config.wait):  # --no-wait: refused here, before any work
            if _prepare(directory, identity, config.overwrite, config.resume) == "finished":
                results = _read_results(directory)
                if config.lm_eval and config.rank == 0:  # suites asked for now: run (or read) them beside it
                    results["lm_eval"] = _harness(config, loaded, directory)
                    with atomic_write(directory / RESULTS, "w", encoding="utf-8") as f:
                        json.dump(results, f, indent=2, sort_keys=True)
                return {"status": "already-finished", "output": str(directory), "results": results}
            held.enter_context(RankLock(directory, config.rank))
        pending = [k for k in range(num_chunks) if k % config.world_size == config.rank and not _part_ok(directory, k)]
        teacher = teacher_forced.TeacherForced(loaded, renderer.template, limit, config.batch_tokens,
                                               config.chunk_size) if config.teacher_forced else None
        counts = _generate_chunks(config, kind, fmt, renderer, limit, loaded, metric, teacher, directory, set(pending),
                                  num_rows)
        if config.lm_eval and config.rank == 0:  # beside ours, on the model already loaded
            _harness(config, loaded, directory)
    with OutputLock(directory):
        if all(_part(directory, k).is_file() for k in range(num_chunks)):
            results = _finish(config, directory, identity, num_chunks)
            return {"status": "finished", "output": str(directory), "results": results}
    return {"status": "rank-done", "output": str(directory), "rank": config.rank, "counts": counts}


def _harness(config: EvalConfig, loaded, directory: Path) -> dict:
    from tokensft.evaluate.harness import run_harness

    settings = {"model_hash": loaded.content_hash, "dtype": str(loaded.dtype).removeprefix("torch.")}
    return run_harness(loaded, directory, config.lm_eval, config.lm_eval_include, batch_size=8,
                       limit=config.lm_eval_limit, settings=settings)


def _harness_only(config: EvalConfig) -> dict:
    """`tokensft eval MODEL --lm-eval TASKS -o DIR`: the harness's suites, no held-out records of ours."""
    from tokensft.core.models import load_model

    directory = Path(config.output)
    directory.mkdir(parents=True, exist_ok=True)
    with OutputLock(directory, wait=config.wait):
        loaded = load_model(config.model, dtype=config.dtype, device=config.device)
        harness = _harness(config, loaded, directory)
    return {"status": "finished", "output": str(directory), "results": {"lm_eval": harness}}


def _prepare(directory: Path, identity: dict, overwrite: bool, resume: bool) -> str:
    """"new", "resume" or "finished"; refuses another run's output, or files eval did not write."""
    directory.mkdir(parents=True, exist_ok=True)
    foreign = sorted(p.name for p in directory.iterdir() if p.name not in OUR_FILES and ".tmp-" not in p.name)
    if foreign:
        raise ConfigError(f"{directory}: not an empty directory or a tokensft eval output (found "
                          f"{', '.join(foreign[:3])}); choose another --output")
    run_file = directory / STATE_DIR / "run.json"
    try:
        existing = json.loads(run_file.read_text(encoding="utf-8")) if run_file.is_file() else None
    except (OSError, ValueError):
        existing = None  # unreadable: nothing of it can be trusted, start over
    if existing == identity and resume and not overwrite:
        return "finished" if (directory / RESULTS).is_file() else "resume"
    if existing is not None and existing != identity and not overwrite:
        changed = changed_keys(existing, identity)
        raise ConfigError(f"{directory} holds an evaluation with other settings (differs in: {', '.join(changed)}); "
                          "pass --overwrite to replace it, or choose another --output")
    for name in OUR_FILES - {".tokensft.lock"}:
        path = directory / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    (directory / STATE_DIR / "parts").mkdir(parents=True)
    with atomic_write(run_file, "w", encoding="utf-8") as f:
        json.dump(identity, f, indent=2, sort_keys=True)
    return "new"


def _part(directory: Path, chunk: int) -> Path:
    return directory / STATE_DIR / "parts" / f"eval-{chunk:05d}.parquet"


def _part_ok(directory: Path, chunk: int) -> bool:
    """Whether chunk's part exists and reads (parts are written atomically: an unreadable one was
    damaged afterwards, and is dropped to be generated again)."""
    path = _part(directory, chunk)
    if not path.is_file():
        return False
    try:
        pq.read_table(path)
        return True
    except (OSError, pa.ArrowException):
        path.unlink(missing_ok=True)
        return False


def sample_seed(seed: int, example_id: str, sample: int) -> int:
    """The seed of one (example, sample): a hash, so it does not depend on batches, ranks or resumes."""
    digest = hashlib.blake2b(f"{seed}:{example_id}:{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # torch seeds are < 2**63


def eval_prompt(example: Example, renderer: Renderer, where: str, limit: int | None = None,
                max_new_tokens: int = 0) -> tuple[list[int], str]:
    """(prompt ids, reference): the render before the example's last target turn, and that turn's text.

    The prompt ids are the scoring render's own tokens up to the first token of the last run of
    targets, so they are exactly what training conditioned that turn on. `renderer` renders whole
    (no max length): a prompt that leaves no room for `max_new_tokens` within `limit` (--max-length,
    else the model's context) is an InputError, never a prompt of an earlier turn."""
    targets = [m for m in example.messages if m.is_target]
    if example.kind == "text" or not targets or len(targets) == len(example.messages):
        raise InputError(where, "messages", "no prompt to answer (plain text, or only target turns)",
                         fix="evaluate prompt-response, alpaca or messages records", reason="no_prompt")
    rendered = renderer(example, where)
    labels = rendered.labels
    ends = [t for t in range(len(labels)) if labels[t] != IGNORE_INDEX]
    if not ends:
        raise InputError(where, "messages", "the answer renders to no tokens", fix="check the record", reason="no_targets")
    start = ends[-1]
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    if limit is not None and start + max_new_tokens > limit:
        raise InputError(where, "messages", f"the prompt has {start} tokens: with --max-new-tokens {max_new_tokens} it "
                         f"passes {limit} (--max-length, else the model's context)",
                         fix="lower --max-new-tokens, raise --max-length, or --skip-invalid to skip such records",
                         reason="prompt_too_long")
    return rendered.input_ids[:start], targets[-1].content


def stop_ids(tokenizer, renderer: Renderer, generation_eos=None) -> set[int]:
    """The ids a completion ends with: eos, the model's generation eos ids (Llama 3's <|eot_id|>),
    and the end-of-turn token the template puts after an answer (the last target token of a probe
    conversation, when it is a special token, as the renderer counts them). An end of turn written
    as plain text (no special token) is not a stop: such completions end at --max-new-tokens."""
    out = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    out |= set(generation_eos if isinstance(generation_eos, (list, tuple, set)) else
               [generation_eos] if generation_eos is not None else [])
    probe = Example("probe", "chat", (Message("user", "Hi", False), Message("assistant", "Hello", True)))
    rendered = renderer(probe, "the end-of-turn probe")
    last = [y for y in rendered.labels if y != IGNORE_INDEX][-1:]
    return out | {y for y in last if y in renderer.special_ids}


def _generate_chunks(config, kind, fmt, renderer, limit, loaded, metric, teacher, directory, pending,
                     num_rows) -> Counts:
    """Generate (and score teacher-forced) every chunk in `pending`, streaming the input once; one part per chunk."""
    counts = Counts(read=0, evaluated=0, skipped={})
    generation = getattr(loaded.model, "generation_config", None)
    stops = stop_ids(loaded.tokenizer, renderer, getattr(generation, "eos_token_id", None))
    progress = Progress(total_rows=sum(min(config.shard_size, num_rows - k * config.shard_size) for k in pending),
                        disable=config.quiet, desc="generating", rate="new tok/s")
    for k, rows in pending_chunks(iter_rows(config.input, kind=kind), config.shard_size, pending):
        counts.merge(_generate_chunk(config, fmt, renderer, limit, loaded, metric, teacher, stops, directory, k, rows,
                                     progress))
    for k in sorted(k for k in pending if not _part(directory, k).is_file()):  # chunks the input never filled
        _write_part(directory, k, [], Counts(read=0, evaluated=0, skipped={}), teacher_forced.ZERO if teacher else None)
    progress.close()
    return counts


def _generate_chunk(config, fmt, renderer, limit, loaded, metric, teacher, stops, directory, chunk, rows,
                    progress) -> Counts:
    from tokensft.evaluate.generate import default_batch_tokens, generate

    counts = Counts(read=len(rows), evaluated=0, skipped={})
    todo = []  # (example id, sample, prompt ids, reference)
    scored = []  # (example, where): every valid record, teacher-forced, whether or not it has a prompt to answer
    for row in rows:
        try:
            if row.error is not None:
                raise row.error
            example = to_example(row.record, config.format, row.where, fmt)
            scored.append((example, row.where))
            prompt, reference = eval_prompt(example, renderer, row.where, limit, config.max_new_tokens)
        except InputError as exc:
            if not config.skip_invalid:
                raise
            counts.add("skipped", 1, exc.reason)
            continue
        counts.add("evaluated")
        todo += [(example.id, s, prompt, reference) for s in range(config.samples)]
    tokenizer = loaded.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
    seeds = [sample_seed(config.seed, i, s) for i, s, _, _ in todo]
    completions = generate(loaded.model, [t[2] for t in todo], config.max_new_tokens, stops, pad,
                           config.temperature, seeds,
                           batch_tokens=config.batch_tokens or default_batch_tokens(loaded.device),
                           top_p=config.top_p) if todo else []
    out = []
    for (example_id, sample, prompt, reference), ids in zip(todo, completions):
        stopped = bool(ids) and ids[-1] in stops
        text = tokenizer.decode(ids[:-1] if stopped else ids, skip_special_tokens=True)
        grade = metric.grade(text, reference)
        out.append({"id": example_id, "sample": sample, "prompt": tokenizer.decode(prompt), "completion": text,
                    "answer": grade.answer, "reference": reference, "correct": grade.correct,
                    "verdict": VERDICTS[grade.verdict], "note": grade.note,
                    "prompt_tokens": len(prompt), "new_tokens": len(ids), "stopped": stopped})
    _write_part(directory, chunk, out, counts, teacher.score(scored) if teacher else None)
    progress.update(rows=len(rows), targets=sum(r["new_tokens"] for r in out))
    return counts


def _write_part(directory: Path, chunk: int, rows: list[dict], counts: Counts, teacher_sums: dict | None) -> None:
    metadata = {"counts": json.dumps(counts), "teacher_forced": json.dumps(teacher_sums)}
    table = pa.Table.from_pylist(rows, schema=PART_COLUMNS).replace_schema_metadata(metadata)
    with atomic_write(_part(directory, chunk), "wb") as f:
        pq.write_table(table, f)


def _finish(config: EvalConfig, directory: Path, identity: dict, num_chunks: int) -> dict:
    """examples.parquet (every part, in input order), then results.json (its presence = finished)."""
    parts = [pq.read_table(_part(directory, k)) for k in range(num_chunks)]
    counts = Counts.total((json.loads(p.schema.metadata[b"counts"]) for p in parts), read=0, evaluated=0, skipped={})
    teacher_sums = [json.loads(p.schema.metadata[b"teacher_forced"]) for p in parts]
    table = pa.concat_tables(parts) if parts else PART_COLUMNS.empty_table()
    table = table.replace_schema_metadata(None)
    with atomic_write(directory / EXAMPLES, "wb") as f:
        pq.write_table(table, f)
    correct = table.column("correct").to_numpy(zero_copy_only=False).astype(float)
    sample = table.column("sample").to_numpy()
    per_sample = [float(correct[sample == s].mean()) for s in range(config.samples) if (sample == s).any()]
    scores = eval_scores(table.select(["id", "sample", "answer", "correct", "verdict", "note"]).to_pylist(),
                         config.samples, config.ks, config.seed)
    results = {
        **scores,  # accuracy (the mean over every draw) and its interval; avg@N, pass@k, maj@N; outcomes
        "accuracy_per_sample": per_sample,
        "accuracy_sd": float(np.std(per_sample, ddof=1)) if len(per_sample) > 1 else None,
        "metric": identity["metric"], "counts": counts, "completions": table.num_rows,
        "stopped_fraction": float(table.column("stopped").to_numpy(zero_copy_only=False).mean()) if len(table) else None,
        "model": {"name": config.model, "content_hash": identity["model_hash"]},
        "decoding": {**{k: identity[k] for k in ("max_new_tokens", "temperature", "top_p", "samples", "seed")},
                     "pass_k": config.ks},
        "render": {"format": identity["format"], "template": identity["template"], "max_length": identity["max_length"]},
        "input": {"path": str(config.input), "fingerprint": identity["input_fingerprint"]},
        "teacher_forced": teacher_forced.numbers(teacher_sums) if config.teacher_forced else None,
        "lm_eval": _read_json(directory / "lm_eval.json"),
        "command": config.command, "tokensft_version": __version__, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with atomic_write(directory / RESULTS, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, sort_keys=True)
    return results


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_results(directory: Path) -> dict:
    return json.loads((directory / RESULTS).read_text(encoding="utf-8"))
