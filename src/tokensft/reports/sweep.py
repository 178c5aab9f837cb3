"""The page of a sweep (`tokensft sweep ... --output DIR` writes DIR/index.html), and the report's
section for it (`tokensft report DATA --sweep DIR`): the measured ranking beside the guidance."""

from __future__ import annotations

import pandas as pd

from tokensft import __version__
from tokensft.reports import plots
from tokensft.reports.html import esc, img, page, table


def _frame(results: dict) -> pd.DataFrame:
    rows = [{"arm": a["arm"], "accuracy": a["accuracy"], "sd over seeds": a["accuracy_sd"],
             "seeds": len(a["runs"]), "held-out mean p": a["heldout_mean_p"]} for a in results["arms"]]
    if results.get("baseline"):
        b = results["baseline"]
        rows.append({"arm": "(before training)", "accuracy": b["accuracy"], "sd over seeds": None, "seeds": 1,
                     "held-out mean p": b["heldout_mean_p"]})
    return pd.DataFrame(rows).sort_values("accuracy", ascending=False, na_position="last", kind="stable")


def verdict(results: dict) -> str:
    """One paragraph: the best arm, the guidance, whether they agree and whether the lead is within noise."""
    g = results["guidance"]
    if g["best"] is None:
        return "<p>No arm has a measured accuracy.</p>"
    agree = ("agrees with" if g["agree"] else "contradicts" if g.get("contradicts")
             else "is not among the objectives of")
    noise = {True: " The lead over the runner-up is within the spread over seeds: treat the top two as tied.",
             False: " The lead over the runner-up is larger than the spread over seeds.",
             None: " (One seed per arm: no spread to compare the lead with; run --seeds 0,1,2.)"}[g["within_noise"]]
    return (f'<div class="guidance"><p>Measured best: <b>{esc(g["best"])}</b>. The report\'s guidance for this data '
            f'({esc(g["regime"])}) suggests {esc(", ".join(g["recommended"]))}; the measurement {agree} it '
            f"(compared by objective).{esc(noise)}</p></div>")


def sweep_body(results: dict) -> str:
    """The table, the figure and the verdict (used by the sweep page and the report's section)."""
    return (verdict(results) + img(plots.sweep(results["arms"], results.get("baseline")), "held-out accuracy per arm")
            + table(_frame(results), text=("arm",)))


def sweep_section(results: dict, recommendation: dict) -> tuple[str, str, str]:
    """The report's section for `tokensft report DATA --sweep DIR`: the measured ranking, judged
    against this report's own guidance."""
    from tokensft.analysis import agreement

    judged = {**results, "guidance": agreement(results["arms"], recommendation)}
    note = (f'<p class="muted">Sweep {esc(results.get("data"))}: {len(results["arms"])} arms, seeds '
            f'{esc(", ".join(map(str, results["seeds"])))}, evaluated on {esc(results.get("heldout"))} '
            f'({esc(results.get("metric"))}).</p>')
    return "sweep", "Measured: which objective wins", note + sweep_body(judged)


def sweep_page(results: dict) -> str:
    """DIR/index.html of a sweep: every number of results.json, and the commands reproducing each run."""
    commands = "".join(f"<li><code>{esc(c)}</code></li>" for a in results["arms"] for r in a["runs"] for c in r["commands"])
    runs = pd.DataFrame([{"arm": a["arm"], "seed": r["seed"], "accuracy": r["accuracy"],
                          "held-out mean p": r["heldout_mean_p"], "held-out nll": r["heldout_nll"]}
                         for a in results["arms"] for r in a["runs"]])
    sections = [("measured", "Which objective wins on this data", sweep_body(results)),
                ("runs", "Every run", table(runs, text=("arm",)) + f"<h3>Reproduce</h3><ul>{commands}</ul>")]
    return page("tokensft sweep", f"{len(results['arms'])} arms x {len(results['seeds'])} seeds, trained on "
                f"{results['data']}, evaluated on {results['heldout']} ({results['metric']}) · tokensft {__version__}",
                sections)
