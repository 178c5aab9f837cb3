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
    return lines


def enrich_lines(summary: dict) -> list[str]:
    """What `tokensft enrich` (or `score --mask/--ref/--teacher`) prints when it ends."""
    if summary["status"] == "rank-done":
        return [f"rank {summary['rank']} done; the last rank to end writes {summary['output']}"]
    word = {"already-enriched": "already holds every requested column", "already-finished": "already complete"}
    lines = [f"enriched dataset: {summary['output']}" + (f" ({word[summary['status']]})" if summary["status"] in word else "")]
    enrichment = summary.get("metadata", {}).get("enrichment", {})
    for column, m in enrichment.get("masks", {}).items():
        kept = "n/a" if m["kept_fraction"] is None else f"{m['kept_fraction']:.1%}"
        lines.append(f"  {column}: {m['spec']} keeps {kept} of {m['targets']:,} targets")
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
    return (f"trained model: {summary['output']} ({summary['steps']} steps, normalize {summary['normalize']}); "
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
    m = s.get("compare")
    if m and m["mean_p_a"] is not None:
        lines.append(f"  compared with {compare_with} on {m['examples']:,} shared examples: "
                     f"mean p {m['mean_p_a']:.3f} -> {m['mean_p_b']:.3f}")
    return lines
