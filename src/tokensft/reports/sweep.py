"""The page of a sweep (`tokensft sweep ... --output DIR` writes DIR/index.html), and the report's
section for it (`tokensft report DATA --sweep DIR`): the measured ranking beside the guidance,
judged by paired verdicts against the baseline arm, one table per held-out set and a grid of them."""

from __future__ import annotations

import pandas as pd

from tokensft import __version__
from tokensft.reports import plots
from tokensft.reports.html import esc, img, page, table


def _ci(interval) -> str | None:
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else None


def set_frame(judged: dict, initial: dict | None = None) -> pd.DataFrame:
    """One row per arm of one held-out set: accuracy, interval, difference from the baseline with its
    interval and verdict, McNemar's p (one greedy draw), what training broke and fixed."""
    rows = []
    for a in judged["arms"]:
        vs, moved = a.get("vs_baseline") or {}, a.get("transitions") or {}
        rows.append({"arm": a["arm"], "accuracy": a["accuracy"], "95% interval": _ci(a.get("interval")),
                     f"vs {judged.get('baseline')}": vs.get("difference"), "its 95% interval": _ci(vs.get("interval")),
                     "verdict": vs.get("verdict"), "McNemar p": vs.get("mcnemar_p"),
                     "right→wrong": moved.get("broke"), "wrong→right": moved.get("fixed")})
    frame = pd.DataFrame(rows)
    order = {arm: i for i, arm in enumerate(judged["ranking"])}
    frame = frame.sort_values("arm", key=lambda c: c.map(order), kind="stable")
    if initial is not None:
        frame = pd.concat([frame, pd.DataFrame([{"arm": "(before training)", "accuracy": initial["accuracy"],
                                                 "95% interval": _ci(initial.get("interval"))}])])
    return frame


def grid(results: dict) -> pd.DataFrame:
    """Arm x held-out set: accuracy and the verdict against the baseline."""
    sets = results.get("sets", {})
    rows = []
    for arm in (a["arm"] for a in results["arms"]):
        row = {"arm": arm}
        for name, judged in sets.items():
            a = next(x for x in judged["arms"] if x["arm"] == arm)
            row[name] = f"{a['accuracy']:.3f} ({(a.get('vs_baseline') or {}).get('verdict')})" if a["accuracy"] is not None else None
        rows.append(row)
    return pd.DataFrame(rows)


def verdict(results: dict) -> str:
    """One paragraph: the best arm, the guidance, whether they agree, and whether the lead is a verdict."""
    g = results["guidance"]
    if g["best"] is None:
        return "<p>No arm has a measured accuracy.</p>"
    agree = ("agrees with" if g["agree"] else "contradicts" if g.get("contradicts")
             else "is not among the objectives of")
    interval = f" (difference {_ci(g['lead_interval'])})" if g.get("lead_interval") else ""
    noise = {True: f" Its lead over the runner-up is not distinguishable at 95%{interval}: treat the top two as tied.",
             False: f" Its lead over the runner-up is distinguishable at 95%{interval}.",
             None: " (One seed per arm and no paired comparison: run --seeds 0,1,2.)"}[g["within_noise"]]
    return (f'<div class="guidance"><p>Measured best: <b>{esc(g["best"])}</b>. The report\'s guidance for this data '
            f'({esc(g["regime"])}) suggests {esc(", ".join(g["recommended"]))}; the measurement {agree} it '
            f"(compared by objective).{esc(noise)}</p></div>")


def sweep_body(results: dict) -> str:
    """The verdict, the figure and a table per held-out set (used by the sweep page and the report's section)."""
    body = verdict(results) + img(plots.sweep(results["arms"], results.get("initial")), "held-out accuracy per arm")
    sets = results.get("sets") or {}
    if len(sets) > 1:
        body += "<h3>Every held-out set</h3>" + table(grid(results), text=("arm", *sets))
    for name, judged in sets.items():
        overlap = judged.get("overlap") or {}
        warn = (f'<p class="muted">{overlap["in_training"]} of its {overlap["records"]} records ask a prompt of the '
                "training data: their accuracy measures memory.</p>") if overlap.get("in_training") else ""
        body += (f"<h3>{esc(name)} ({esc(judged.get('metric'))}, {judged.get('examples')} examples)</h3>" + warn
                 + table(set_frame(judged, judged.get("initial")), text=("arm", "95% interval", "its 95% interval",
                                                                         "verdict")))
    return body


def sweep_section(results: dict, recommendation: dict) -> tuple[str, str, str]:
    """The report's section for `tokensft report DATA --sweep DIR`: the measured ranking, judged
    against this report's own guidance."""
    from tokensft.analysis import agreement

    judged = {**results, "guidance": agreement(results["arms"], recommendation, results.get("lead"))}
    sets = ", ".join(f"{n} ({s.get('metric')})" for n, s in (results.get("sets") or {}).items())
    note = (f'<p class="muted">Sweep {esc(results.get("data"))}: {len(results["arms"])} arms, seeds '
            f'{esc(", ".join(map(str, results["seeds"])))}, baseline arm {esc(results.get("baseline"))}, evaluated on '
            f'{esc(sets or results.get("heldout"))}. Verdicts: the paired 95% interval of the difference from the '
            "baseline, over examples.</p>")
    return "sweep", "Measured: which objective wins", note + sweep_body(judged)


def sweep_page(results: dict) -> str:
    """DIR/index.html of a sweep: every number of results.json, and the commands reproducing each run."""
    commands = "".join(f"<li><code>{esc(c)}</code></li>" for a in results["arms"] for r in a["runs"] for c in r["commands"])
    runs = pd.DataFrame([{"arm": a["arm"], "seed": r["seed"], "accuracy": r["accuracy"], "95% interval": _ci(r.get("interval")),
                          "held-out mean p": r["heldout_mean_p"], "held-out nll": r["heldout_nll"]}
                         for a in results["arms"] for r in a["runs"]])
    sections = [("measured", "Which objective wins on this data", sweep_body(results)),
                ("runs", "Every run", table(runs, text=("arm", "95% interval")) + f"<h3>Reproduce</h3><ul>{commands}</ul>")]
    sets = ", ".join(results.get("sets") or [results.get("heldout")])
    return page("tokensft sweep", f"{len(results['arms'])} arms x {len(results['seeds'])} seeds, trained on "
                f"{results['data']}, evaluated on {sets} · baseline arm {results.get('baseline')} · tokensft {__version__}",
                sections)
