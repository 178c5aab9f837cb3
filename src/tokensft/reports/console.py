"""What each command prints on the terminal when it ends: a few lines from its summary dict.

The commands return summaries (status, output, counts, metadata); these functions only word them.
"""

from __future__ import annotations


def score_lines(summary: dict) -> list[str]:
    """What `tokensft score` (and `merge`) prints when it ends: where, and the counts."""
    counts = summary.get("metadata", {}).get("counts") or summary.get("counts", {})
    skipped = counts.get("skipped", {})
    by_reason = f" ({', '.join(f'{k} {v:,}' for k, v in skipped.items())})" if skipped else ""
    if summary["status"] == "already-finished":
        lines = [f"scored dataset: {summary['output']} (already complete with this config; --no-resume to redo it)"]
    elif summary["status"] == "finished":
        lines = [f"scored dataset: {summary['output']}"]
    else:
        lines = [f"rank {summary.get('rank')} done; other ranks still running; "
                 f"`tokensft merge {summary['output']}` when all end"]
    if counts:
        lines.append(
            f"  rows read {counts['read']:,}, written {counts['written']:,}, skipped {sum(skipped.values()):,}"
            f"{by_reason}, truncated {counts['truncated']:,}; "
            f"tokens {counts['tokens']:,}, targets {counts['targets']:,}"
        )
    weights = summary.get("metadata", {}).get("weights")
    if weights and "weight_sum" in counts:
        prompt = f", {counts.get('prompt_targets', 0):,} prompt tokens at --prompt-weight {weights['prompt_weight']:g}" \
            if weights.get("prompt_weight") else ""
        mean = counts["weight_sum"] / counts["targets"] if counts["targets"] else float("nan")
        lines.append(f"  weights from {', '.join(weights['sources'])}: column weight, mean {mean:.4g} over the targets, "
                     f"{counts.get('weighted_targets', 0):,} targets weighted other than 1, "
                     f"{counts.get('negative_weights', 0):,} negative{prompt}")
    return lines


def enrich_lines(summary: dict) -> list[str]:
    """What `tokensft enrich` (or `score --mask/--weight/--ref/--teacher`) prints when it ends."""
    if summary["status"] == "rank-done":
        return [f"rank {summary['rank']} done; the last rank to end writes {summary['output']}"]
    word = {"already-enriched": "already holds every requested column", "already-finished": "already complete"}
    lines = [f"enriched dataset: {summary['output']}" + (f" ({word[summary['status']]})" if summary["status"] in word else "")]
    enrichment = summary.get("metadata", {}).get("enrichment", {})
    for column, m in enrichment.get("masks", {}).items():
        kept = "n/a" if m["kept_fraction"] is None else f"{m['kept_fraction']:.1%}"
        lines.append(f"  {column}: {m['spec']} keeps {kept} of {m['targets']:,} targets")
    for column, w in enrichment.get("weights", {}).items():
        stats = ", ".join(f"{k} {'n/a' if w[k] is None else format(w[k], '.4g')}" for k in ("mean", "min", "max"))
        lines.append(f"  {column}: {w['spec']} {stats} over {w['targets']:,} targets")
    for name, r in enrichment.get("refs", {}).items():
        failed = sum(r.get("counts", {}).get("failed", {}).values())
        lines.append(f"  ref {name}: {r['model']['name']} ({r['template']} template), "
                     f"{r.get('counts', {}).get('scored', 0):,} scored, {failed:,} failed")
    if "teacher" in enrichment:
        t = enrichment["teacher"]
        lines.append(f"  teacher: {t['model']['name']}, top-{t['top_k']}")
    return lines


def train_line(summary: dict) -> str:
    """What `tokensft train` prints when it ends: where the model is, and its last metrics."""
    metrics = summary["metrics"]
    done = "already complete with these settings, --overwrite to train again; " if summary.get("complete") else ""
    return (f"trained model: {summary['output']} ({done}{summary['steps']} steps, normalize {summary['normalize']}); "
            f"last loss {metrics.get('loss', float('nan')):.4f}, mean target p {metrics.get('mean_p', float('nan')):.3f}"
            + (f", eval nll {metrics['eval_nll']:.4f}" if "eval_nll" in metrics else ""))


def report_lines(done: dict, compare_with: str | None) -> list[str]:
    """What `tokensft report` prints when it ends: where the page is, and its verdict."""
    s = done["summary"]
    lines = [f"report: {done['index']}"]
    c, r = s["continuum"], s["recommendation"]
    if c["mean_p"] is not None:
        lines.append(f"  mean target p {c['mean_p']:.3f} (median {c['median_p']:.3f}, {c['frac_below_0_1']:.1%} below "
                     f"0.1): {r['regime']}; consider {', '.join(r['objectives'])}")
    weights = (s.get("weights") or {}).get("distribution") or []
    if weights:
        lines.append("  weights: " + "; ".join(
            f"{w['column']} mean {w['mean']:.3g}, {w['effective_tokens']:,.0f} effective of {w['targets']:,} targets"
            if w["targets"] else f"{w['column']} (no targets)" for w in weights))
    m = s.get("compare")
    if m and m["mean_p_a"] is not None:
        lines.append(f"  compared with {compare_with} on {m['examples']:,} shared examples: "
                     f"mean p {m['mean_p_a']:.3f} -> {m['mean_p_b']:.3f}")
    return lines


def _rank_done(summary: dict) -> list[str]:
    return [f"rank {summary['rank']} done; the last rank to end writes {summary['output']}/results.json"]


def eval_lines(summary: dict) -> list[str]:
    """What `tokensft eval` prints when it ends: where, the accuracy, the teacher-forced numbers."""
    if summary["status"] == "rank-done":
        return _rank_done(summary)
    r = summary["results"]
    done = " (already complete with these settings)" if summary["status"] == "already-finished" else ""
    lines = [f"eval: {summary['output']}{done}"]
    for task, metrics in ((r.get("lm_eval") or {}).get("results") or {}).items():
        shown = [f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float) and "stderr" not in k]
        lines.append(f"  lm-eval {task}: {', '.join(shown)}")
    if "accuracy" not in r:  # the suites alone
        return lines
    if r["accuracy"] is not None:
        samples = r["decoding"]["samples"]
        name = f"avg@{samples}" if samples > 1 else "accuracy"
        interval = r.get("interval")
        ci = f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""
        lines.append(f"  {name} {r['accuracy']:.3f}{ci} (95%) on {r['counts']['evaluated']:,} examples ({r['metric']}); "
                     f"{r['stopped_fraction']:.0%} of completions ended at an end-of-turn token")
        more = [f"{k} {r[k]['value']:.3f}" for k in sorted(r) if k.startswith(("pass@", "maj@"))]
        if more:
            lines.append("  " + ", ".join(more))
        outcomes = r.get("outcomes", {})
        if outcomes.get("no_answer"):
            lines.append(f"  no answer read in {outcomes['no_answer']:,} of {r['completions']:,} completions (counted wrong)")
    skipped = r["counts"].get("skipped", {})
    if skipped:
        lines.append(f"  skipped {sum(skipped.values()):,} ({', '.join(f'{k} {v:,}' for k, v in skipped.items())})")
    tf = r.get("teacher_forced")
    if tf and tf["mean_p"] is not None:
        lines.append(f"  teacher-forced: mean target p {tf['mean_p']:.3f}, NLL {tf['nll']:.4f} per token "
                     f"over {tf['targets']:,} targets")
    return lines


def sweep_lines(summary: dict) -> list[str]:
    """What `tokensft sweep` prints when it ends: per held-out set the ranking with intervals and the
    verdicts against the baseline arm, then whether the measurement agrees with the guidance."""
    if summary["status"] == "rank-done":
        return _rank_done(summary)
    r = summary["results"]
    lines = [f"sweep: {summary['output']}/index.html (baseline arm {r.get('baseline')})"]
    for name, judged in (r.get("sets") or {}).items():
        lines.append(f"  {name} ({judged.get('metric')}, {judged.get('examples')} examples):")
        by_arm = {a["arm"]: a for a in judged["arms"]}
        for spec in judged["ranking"]:
            a = by_arm[spec]
            ci = f" [{a['interval'][0]:.3f}, {a['interval'][1]:.3f}]" if a.get("interval") else ""
            accuracy = "n/a" if a["accuracy"] is None else f"{a['accuracy']:.3f}{ci}"
            vs = a.get("vs_baseline") or {}
            moved = a.get("transitions")
            fixed = f"; fixed {moved['fixed']}, broke {moved['broke']}" if moved else ""
            lines.append(f"    {spec:<28} accuracy {accuracy}  {vs.get('verdict', '')}{fixed}")
        initial = judged.get("initial")
        if initial and initial["accuracy"] is not None:
            lines.append(f"    {'(before training)':<28} accuracy {initial['accuracy']:.3f}")
        overlap = judged.get("overlap") or {}
        if overlap.get("in_training"):
            lines.append(f"    warning: {overlap['in_training']} of {overlap['records']} records ask a training prompt")
    g = r["guidance"]
    if g["best"] is not None:
        verdict = "agrees" if g["agree"] else "contradicts it" if g.get("contradicts") else "does not agree"
        lines.append(f"  guidance ({g['regime']}): {', '.join(g['recommended'])}; the best arm {g['best']} {verdict}"
                     + (" (not distinguishable from the runner-up at 95%)" if g["within_noise"] else ""))
    return lines
