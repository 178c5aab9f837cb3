"""The report's sections, each (anchor, title, body HTML), from tokensft.analysis results.

A section whose data is absent (no masks, no references, no teacher) still appears, saying
what would fill it and the command that adds it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tokensft.analysis import Targets, sweep_command
from tokensft.reports import plots
from tokensft.reports.html import esc, fmt, img, key_values, table
from tokensft.reports.tokens import legend, pick_examples, render_example

Section = tuple[str, str, str]


def overview_section(data: dict, has_tokenizer: bool) -> Section:
    o = data["overview"]
    skipped = ", ".join(f"{k} {v}" for k, v in o["skipped_by_reason"].items()) or "none"
    pairs = [("dataset", o["path"]), ("examples", o["examples"]), ("tokens", o["tokens"]), ("targets", o["targets"]),
             ("examples without targets", o["examples_without_targets"]), ("truncated", o["truncated"]),
             ("records read", o["read"]), ("skipped", f"{o['skipped']} ({skipped})"),
             ("model", o["model"]), ("model hash", (o["model_hash"] or "")[:16]),
             ("tokenizer fingerprint", (o["tokenizer_fingerprint"] or "")[:16]), ("dtype", o["dtype"]),
             ("format / template / targets", f"{o['format']} / {o['template']} / {o['targets_rule']}"),
             ("max length", o["max_length"]), ("stored top-k", o["top_k"]),
             ("masks", ", ".join(o["masks"]) or "none"), ("references", ", ".join(o["refs"]) or "none"),
             ("teacher", o["teacher"] or "none"), ("scored", o["finished"])]
    note = "" if has_tokenizer else ('<p class="muted">The tokenizer could not be loaded offline: tokens are shown as '
                                     "ids and token classes are unavailable.</p>")
    return "overview", "Overview", key_values(pairs) + note


def continuum_section(data: dict, directory: str, moved: dict | None, measured: bool = False) -> Section:
    c, r = data["continuum"], data["recommendation"]
    if c["mean_p"] is None:
        return "continuum", "Capability continuum", f"<p>{esc(r['text'])}</p>"
    numbers = (f'<p><span class="big">{c["mean_p"]:.3f}</span> mean target p &nbsp; '
               f'<span class="big">{c["median_p"]:.3f}</span> median &nbsp; '
               f'<span class="big">{c["frac_below_0_1"]:.1%}</span> of targets below 0.1</p>'
               f'<p class="muted">Per-example average of mean p: {fmt(c["mean_p_by_example"])}; mean log-prob '
               f'{fmt(c["mean_logprob"])}.</p>')
    label, m = "compared", moved["summary"] if moved else None
    if m and (m["only_in_a"] or m["only_in_b"]):  # B's mean covers the shared examples only: say so, with A's there
        label = f"compared, on the {m['examples']:,} shared examples (this data there: {m['mean_p_a']:.3f})"
    figure = img(plots.continuum(c, m["mean_p_b"] if m else None, label), "capability continuum")
    reasoning = "".join(f"<li>{esc(line)}</li>" for line in r["reasoning"])
    avoid = (f'<p class="muted">Less suited here: {", ".join(f"<code>{esc(a)}</code>" for a in r["avoid"])}.</p>'
             if r["avoid"] else "")
    near = c.get("nearest_project_point")
    evidence = (f'<p><b>What our own miniature measured nearest to this data</b> ({esc(near["label"])}, mean p '
                f'{near["mean_p"]:.3f}): the papers\' claim is <b>{esc(near["claim"])}</b> there: {esc(near["finding"])}.'
                "</p>") if near else ""
    lead = ('<p><b>This report has a sweep of this data: its measured verdict (the section <a href="#sweep">Measured'
            "</a>) comes before the heuristic below.</b></p>") if measured else ""
    guidance = (f'<div class="guidance">{lead}<p><b>Guidance ({esc(r["regime"])})</b>: {esc(r["text"])}</p>'
                "<p>Measure it on your own held-out data with one sweep (every arm against the <code>nll</code> "
                "baseline, paired on the same examples, 3 seeds):</p>"
                f"<p><code>{esc(sweep_command(directory, r))}</code></p>{evidence}"
                f"{avoid}<p>Why:</p><ul>{reasoning}</ul></div>")
    points = pd.DataFrame(c["reference_points"])[["label", "mean_p", "regime", "finding"]]
    ours = pd.DataFrame(c.get("project_points", []))
    ours_table = ("<h3>What tokensft's own miniature measured</h3>"
                  + table(ours[["label", "mean_p", "regime", "claim", "finding"]], text=("label", "regime", "claim", "finding"))
                  + f'<p class="muted">Source: {esc(ours["source"].iloc[0])}.</p>') if len(ours) else ""
    return ("continuum", "Capability continuum", numbers + figure + guidance +
            "<h3>Reference points</h3>" + table(points, text=("label", "regime", "finding")) +
            f'<p class="muted">Source: {esc(points.shape[0] and c["reference_points"][0]["source"])}.</p>' + ours_table)


def enrichment_sections(directory: str, masks: dict, refs: dict | None, teacher: dict | None) -> list[Section]:
    out = []
    if masks:
        body = (table(masks["overall"], text=("mask", "spec")) + img(plots.masks(masks), "kept fraction of each mask") +
                "<h3>Kept fraction by position</h3>" +
                table(masks["by_position"].pivot(index="bin", columns="mask", values="kept_fraction").reset_index()))
        if "by_class" in masks:
            body += "<h3>Kept fraction by token class</h3>" + table(
                masks["by_class"].pivot(index="class", columns="mask", values="kept_fraction").reset_index())
    else:
        body = _absent(f"No masks. Add ProFit's with <code>tokensft enrich {esc(directory)} --mask 'prob&gt;=0.1'</code>.")
    out.append(("masks", "Masks", body))
    if refs is not None:
        s = refs["summary"]
        pairs = [("column", s["column"]), ("examples with a reference", s["with_ref"]), ("missing", s["missing"]),
                 ("mean reference mean log-prob", s["mean_ref_mean_logprob"]),
                 ("mean scorer mean log-prob", s["mean_primary_mean_logprob"]),
                 ("mean PoFT weight at step 0 (beta 1)", s["mean_poft_weight"]),
                 *[(f"correlation scorer vs {k}", v) for k, v in s["correlation"].items()]]
        lowest = refs["lowest"][["row", "id", "num_targets", "mean_logprob", *refs["columns"]]]
        body = (key_values(pairs) + img(plots.references(refs), "reference mean log-probs") +
                "<h3>Examples the references rate lowest</h3><p class=\"muted\">The likely noisy or off-distribution "
                "examples: PoFT gives them the smallest weight.</p>" + table(lowest))
    else:
        body = _absent(f"No PoFT references. Add one with <code>tokensft enrich {esc(directory)} --ref MODEL</code>.")
    out.append(("references", "References", body))
    if teacher is not None:
        s = teacher["summary"]
        pairs = [("teacher", s["model"]), ("top-k", s["top_k"]), ("targets", s["targets"]),
                 ("teacher mean target p", s["teacher_mean_p"]), ("scorer mean target p", s["mean_p"]),
                 ("top-1 agreement", s["top1_agreement"]),
                 ("top-1 agreement bounds", s["top1_agreement_bounds"] and " – ".join(fmt(b) for b in s["top1_agreement_bounds"])),
                 ("agreement method", s["agreement_method"]), ("mean KL(teacher ‖ scorer), top-k", s["kl_mean"]),
                 ("median KL", s["kl_median"]), ("90th percentile KL", s["kl_q90"]),
                 ("teacher mass whose scorer p is not stored", s["kl_unknown_mass"])]
        note = ('<p class="muted">The KL is computed on the teacher\'s top-k ids whose scorer probability is stored '
                "(the target and the scorer's top-k) plus one cell for every other id: a lower bound on the full "
                "KL, looser the more teacher mass falls outside the scorer's stored top-k (score with a larger "
                "<code>--top-k</code> to tighten it).</p>" if s["kl_mean"] is not None else
                '<p class="muted">No KL: the dataset has no scorer top-k to compare with (score with <code>--top-k</code>).</p>')
        body = key_values(pairs) + note + img(plots.teacher(teacher["per_example"]), "teacher against scorer per example")
    else:
        body = _absent(f"No teacher. Add one with <code>tokensft enrich {esc(directory)} --teacher MODEL --top-k 20</code>.")
    out.append(("teacher", "Teacher", body))
    return out


def _absent(text: str) -> str:
    return f'<p class="muted">{text}</p>'


def examples_section(t: Targets, data: dict, tokenizer, n: int, seed: int, input_ids: dict[int, list[int]]) -> Section:
    lowest = pd.DataFrame(data["extremes"]["lowest"])
    highest = pd.DataFrame(data["extremes"]["highest"])
    body = ("<h3>Lowest mean target p</h3>" + (table(lowest) if len(lowest) else _absent("none")) +
            "<h3>Highest mean target p</h3>" + (table(highest) if len(highest) else _absent("none")))
    picked = pick_examples(t, n, seed)
    body += "<h3>Token by token</h3>" + legend()
    body += "".join(render_example(t, row, input_ids[row], why, tokenizer) for row, why in picked) or _absent("no examples")
    return "examples", "Examples", body


def compare_section(moved: dict, a: str, b: str, token_pieces: list[str]) -> Section:
    s = moved["summary"]
    pairs = [("A", a), ("B", b), ("model A / B", f"{s['model_a']} / {s['model_b']}"), ("examples compared", s["examples"]),
             ("targets compared", s["targets"]), ("only in A / only in B", f"{s['only_in_a']} / {s['only_in_b']}"),
             ("mean p A", s["mean_p_a"]), ("mean p B", s["mean_p_b"]), ("shift (B - A)", s["shift"]),
             ("median delta p", s["median_delta_p"]), ("mean delta log p", s["mean_delta_logprob"]),
             ("targets up / down / unchanged", f"{fmt(s['frac_up'])} / {fmt(s['frac_down'])} / {fmt(s['frac_unchanged'])}")]
    tokens = moved["tokens_moved"].head(len(token_pieces)).copy()
    tokens.insert(1, "token", [repr(p) for p in token_pieces])
    body = (key_values(pairs) + img(plots.compare(moved), "shift in target probability") +
            "<h3>Tokens that moved most</h3><p class=\"muted\">Token ids seen at least 5 times, by mean change in p.</p>" +
            table(tokens) + "<h3>Examples that changed most</h3>" + table(moved["examples_changed"].head(20)) +
            "<h3>Targets that moved most</h3>" + table(moved["targets_moved"]))
    if "mask_drift" in moved:
        drift = moved["mask_drift"]
        body += ("<h3>Mask drift: stored p⁰ against B's p</h3><p class=\"muted\">ProFit and Beyond Log Likelihood "
                 "threshold tokens by the current p; a stored mask uses A's. The fraction of targets on the other side "
                 "of each threshold under B (flipped = dropped + added).</p>" + table(drift["masks"]) +
                 img(plots.mask_drift(drift["by_position"]), "mask drift by position"))
    return "compare", "Comparison", body


def per_example_frame(t: Targets, masks: dict, refs: dict | None, teacher: dict | None, moved: dict | None) -> pd.DataFrame:
    """examples.parquet: one row per example -- the analysis frame plus each mask's kept fraction,
    each stored weight's mean over the example's targets (<column>_mean), PoFT delta / weight,
    teacher KL / agreement and, with --compare, the change in mean p."""
    frame = t.examples.rename_axis("row").reset_index()
    counts = np.bincount(t.example, minlength=t.num_examples).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        for name, kept in sorted(t.masks.items()):
            frame[f"{name}_kept_fraction"] = np.bincount(t.example, weights=kept.astype(np.float64),
                                                         minlength=t.num_examples) / counts
        for column in t.weight_columns:
            frame[f"{column}_mean"] = np.bincount(t.example, weights=t.weights[column], minlength=t.num_examples) / counts
    if refs is not None:
        frame = frame.merge(refs["examples"][["row", "delta", "poft_weight"]], on="row", how="left")
    if teacher is not None:
        frame = frame.merge(teacher["per_example"][["row", "teacher_mean_p", "kl_mean", "top1_agreement"]]
                            .rename(columns={"kl_mean": "teacher_kl_mean", "top1_agreement": "teacher_top1_agreement"}),
                            on="row", how="left")
    if moved is not None:
        frame = frame.merge(moved["examples_changed"][["id", "mean_p_b", "delta_mean_p"]].rename(
            columns={"mean_p_b": "compare_mean_p"}), on="id", how="left")
    return frame
