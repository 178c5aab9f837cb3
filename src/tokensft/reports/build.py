"""`tokensft report DIR --output REPORT [--compare B]`: index.html + summary.json + examples.parquet.

    load_targets(DIR) -> summary() and the tables of tokensft.analysis -> figures (plots.py)
    -> one self-contained page (html.py, tokens.py) -> written to a hidden sibling directory,
    then swapped in place of REPORT, so a reader sees the old report or the new one, whole.

All numbers come from tokensft.analysis; this module only arranges them.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pandas as pd

from tokensft import __version__
from tokensft.analysis import (agreement, cdf, classify_vocab, compare, enrichment_parts, entropy_vs_probability,
                               jsonable, load_targets, mask_drift, probability_histogram, summary, token_strings)
from tokensft.core.dataset import load_metadata, read_rows, tokenizer_for
from tokensft.core.errors import ConfigError
from tokensft.core.fileio import atomic_write, exchange_dirs, keeping, temp_sibling
from tokensft.core.generations import read_whole
from tokensft.core.locks import replace_lock
from tokensft.core.progress import Stages
from tokensft.reports import plots
from tokensft.reports.html import img, page, table
from tokensft.reports.sections import (compare_section, continuum_section, enrichment_sections, examples_section,
                                       overview_section, per_example_frame)
from tokensft.reports.sweep import sweep_section
from tokensft.reports.tokens import pick_examples
from tokensft.reports.weights import weights_section

REPORT_FILES = {"index.html", "summary.json", "examples.parquet"}
COMPARE_ROWS = 30  # tokens moved and examples changed kept in summary.json (examples.parquet has every example)


def write_report(directory: str, output: str, compare_with: str | None = None, model: str | None = None,
                 examples: int = 8, seed: int = 0, quiet: bool = False, sweep: str | None = None) -> dict:
    """Build the report of `directory` into `output`; returns {"output", "index", "summary"}.

    The inputs and the output are checked first (a one-line error before any work); a progress bar
    on stderr then follows the stages (quiet=True: none)."""
    began = time.perf_counter()
    for path in (directory, compare_with):
        if path is not None:
            load_metadata(path)
    _check_output(Path(output))
    measured = _sweep_results(sweep) if sweep is not None else None
    with Stages(["reading targets", "analysis", "figures", "page", "writing"], disable=quiet) as stages:
        return _build(directory, Path(output), compare_with, model, examples, seed, stages, began, measured)


def _sweep_results(sweep: str) -> dict:
    """A finished sweep's results.json (`tokensft sweep ... --output DIR`)."""
    path = Path(sweep) / "results.json"
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--sweep {sweep}: no readable results.json ({exc}); finish the sweep first "
                          "(rerun its tokensft sweep command)") from None
    if not isinstance(results, dict) or not isinstance(results.get("arms"), list) or "ranking" not in results:
        raise ConfigError(f"--sweep {sweep}: {path} is not a `tokensft sweep` result (an eval's?); pass a sweep's --output")
    return results


def _build(directory: str, output: Path, compare_with: str | None, model: str | None, examples: int, seed: int,
           stages: Stages, began: float, measured: dict | None = None) -> dict:
    """The stages of write_report: read, analyse, draw, lay out, write."""
    # the targets and the rendered examples' tokens from one generation (core.generations)
    t, input_ids = read_whole(directory, lambda: _read(directory, examples, seed))
    stages.next()
    tokenizer = tokenizer_for(t.meta, model)
    classes = classify_vocab(tokenizer) if tokenizer is not None else None
    parts = enrichment_parts(t, classes, tokenizer=tokenizer)
    data = summary(t, classes, parts=parts)
    other = load_targets(compare_with) if compare_with else None
    moved = compare(t, other) if other is not None else None
    if moved is not None:  # the page's comparison tables too, so summary.json holds every number shown
        moved["mask_drift"] = mask_drift(t, other)
        data["compare"] = {**moved["summary"], **jsonable({"tokens_moved": moved["tokens_moved"].head(COMPARE_ROWS),
                                                            "examples_changed": moved["examples_changed"].head(COMPARE_ROWS),
                                                            "mask_drift": moved["mask_drift"]["masks"],
                                                            "mask_drift_by_position": moved["mask_drift"]["by_position"]})}
    data["report"] = {"tokensft_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                      "tokenizer": None if tokenizer is None else type(tokenizer).__name__,
                      "token_classes": classes is not None}
    stages.next()

    hist = probability_histogram(t)
    binned, sample = entropy_vs_probability(t)
    sections = [overview_section(data, tokenizer is not None)]
    if measured is not None:  # the measurement leads; the guidance it tests follows
        sections.append(sweep_section(measured, data["recommendation"]))
        data["sweep"] = {"ranking": measured.get("ranking"), "arms": measured["arms"],
                         "agreement": agreement(measured["arms"], data["recommendation"], measured.get("lead"))}
    sections.append(continuum_section(data, directory, moved, measured=measured is not None))
    probs = (img(plots.histogram(hist), "histogram of target probabilities") +
             img(plots.cdf(cdf(t)), "cumulative distribution of target probabilities") +
             "<h3>Quantiles of target p</h3>" + table(pd.DataFrame(data["quantiles"])) +
             "<h3>Entropy against probability</h3>" +
             '<p class="muted">Low p with low entropy: the model was confident in another token. Low p with high '
             "entropy: it had no clear guess.</p>" + img(plots.entropy_vs_probability(binned, sample), "entropy against probability"))
    sections.append(("distribution", "Probabilities", probs))
    sections.append(("position", "Position & class", _position_and_class(data)))
    masks, refs, teacher = parts["masks"], parts["refs"], parts["teacher"]
    sections += enrichment_sections(directory, masks, refs, teacher)
    if data["weights"] is not None:  # only a dataset that stores weights has the section
        sections.append(weights_section(data))
    sections.append(examples_section(t, data, tokenizer, examples, seed, input_ids))
    if moved is not None:
        sections.append(compare_section(moved, directory, compare_with, token_strings(tokenizer, moved["tokens_moved"]["token_id"][:30])))
    stages.next()
    html = page(f"tokensft report: {Path(directory).name}",
                f"{t.num_targets:,} targets in {t.num_examples:,} examples scored by {data['overview']['model']} "
                f"· tokensft {__version__}", sections)
    frame = per_example_frame(t, masks, refs, teacher, moved)
    data["report"]["seconds"] = round(time.perf_counter() - began, 3)  # everything but writing the files
    stages.next()
    _write_atomically(output, html, data, frame)
    return {"output": str(output), "index": str(Path(output) / "index.html"), "summary": data}


def _position_and_class(data: dict) -> str:
    body = ("<h3>Along the response</h3>" + img(plots.by_position(pd.DataFrame(data["by_position"])), "probability by position")
            + table(pd.DataFrame(data["by_position"])))
    if data["by_class"] is None:
        return body + ('<h3>By token class</h3><p class="muted">The scorer\'s tokenizer could not be loaded offline, so '
                       "token classes are unavailable; pass <code>--model</code> with a local copy.</p>")
    frame = pd.DataFrame(data["by_class"])
    return (body + "<h3>By token class</h3>" + img(plots.by_class(frame), "probability by token class") + table(frame))


def _read(directory: str, n: int, seed: int) -> tuple:
    """The targets, and the input_ids of the examples the page renders (the only rows whose tokens it shows)."""
    t = load_targets(directory)
    return t, read_rows(Path(directory), t.meta, [row for row, _ in pick_examples(t, n, seed)], "input_ids")


def _check_output(output: Path) -> None:
    """An --output is new or a report: a report replaces only what a report holds."""
    if output.exists() and (not output.is_dir() or set(p.name for p in output.iterdir()) - REPORT_FILES):
        raise ConfigError(f"{output}: exists and is not a tokensft report (it holds other files); choose another --output")


def _write_atomically(output: Path, html: str, data: dict, frame: pd.DataFrame) -> None:
    """Write the three files to a sibling directory, then put it in place of `output` (under the
    output's replace lock: two reports of one output take turns)."""
    output = output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    with replace_lock(output), keeping(f"{'the report there is unchanged' if output.exists() else 'no report was written'}"
                                       ": free some space, then rerun the same command"):
        _clear_staging(output)
        _check_output(output)  # again: something may have been written there meanwhile
        _stage_and_swap(output, html, data, frame)


def _clear_staging(output: Path) -> None:
    """Remove the staging directories a killed report of `output` left beside it (`.NAME.tmp-*`
    holding nothing but report files): under the replace lock, no other report is writing them."""
    for stale in output.parent.glob(f".{output.name}.tmp-*"):
        if stale.is_dir() and {p.name for p in stale.iterdir()} <= REPORT_FILES:
            shutil.rmtree(stale, ignore_errors=True)


def _stage_and_swap(output: Path, html: str, data: dict, frame: pd.DataFrame) -> None:
    staging = temp_sibling(output)
    staging.mkdir()
    try:
        with atomic_write(staging / "index.html", "w", encoding="utf-8", fsync=False) as f:
            f.write(html)
        with atomic_write(staging / "summary.json", "w", encoding="utf-8", fsync=False) as f:
            f.write(json.dumps(data, indent=1, allow_nan=False))
        with atomic_write(staging / "examples.parquet", "wb", fsync=False) as f:
            frame.to_parquet(f, index=False)
        if output.exists():
            exchange_dirs(staging, output)  # staging now holds the old report
            shutil.rmtree(staging)
        else:
            staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

