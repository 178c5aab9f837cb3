"""The report's Weights section: each stored loss weight, where it came from, and how it spreads.

Present only when the dataset stores weights (the data's `weight`, enrich's weight_<name>). Every
number comes from summary.json's "weights" (tokensft.analysis.weights); the figures are drawn here,
like plots.py's, on the Agg canvas.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from tokensft.reports.html import esc, img, table
from tokensft.reports.inspect import weight_sentence
from tokensft.reports.plots import BLUE, GREY, png

STATISTICS = ("targets", "mean", "sd", "min", "q01", "q05", "q25", "median", "q75", "q95", "q99", "max", "frac_zero",
              "negative", "sum", "effective_tokens", "effective_fraction", "weighted_mean_p")
DEFINITIONS = ('<p class="muted">effective_tokens = Σ|w| / max|w|: how many targets at the largest weight would carry '
               "the same total weight (Σw / max w when no weight is negative; absolute values because a negative "
               "weight pushes its token down as hard as a positive one pulls it up). weighted_mean_p = Σ|w|·p / Σ|w|: "
               "the mean target p as the weighted loss sees it. weight_share: a group's part of Σ|w|; target_share: "
               "its part of the targets. sd over targets (ddof 0).</p>")


def histogram(frame: pd.DataFrame, column: str) -> bytes:
    """Target counts over the range of one weight column."""
    fig = Figure(figsize=(6.5, 2.6))
    ax = fig.subplots()
    ax.bar(frame["left"], frame["count"], width=frame["right"] - frame["left"], align="edge", color=BLUE,
           edgecolor="white", linewidth=0.5)
    ax.set_xlabel(column)
    ax.set_ylabel("targets")
    return png(fig)


def by_position(frame: pd.DataFrame) -> bytes:
    """Mean weight of each column along the response, and its share of the weight against the share of targets."""
    fig = Figure(figsize=(10.0, 3.0))
    left, right = fig.subplots(1, 2)
    for column, part in frame.groupby("column", sort=False):
        centers = (part["left"] + part["right"]) / 2
        left.plot(centers, part["mean_weight"], marker="o", label=column)
        right.plot(centers, part["weight_share"], marker="o", label=column)
    first = frame[frame["column"] == frame["column"].iloc[0]]
    right.plot((first["left"] + first["right"]) / 2, first["target_share"], color=GREY, linestyle="--", label="targets")
    for ax, label in ((left, "mean weight"), (right, "share")):
        ax.set_xlim(0, 1)
        ax.set_xlabel("relative position in the response")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    right.set_ylim(bottom=0)
    return png(fig)


def _distribution(records: list[dict]) -> str:
    """The distribution with one column per weight and one row per statistic (wide frames do not fit a page)."""
    frame = pd.DataFrame({"statistic": STATISTICS, **{r["column"]: [r[s] for s in STATISTICS] for r in records}})
    return table(frame, text=("statistic",))


def _side_by_side(frame: pd.DataFrame, keys: list[str], values: tuple[str, ...]) -> pd.DataFrame:
    """Rows of `keys`, one column per (weight, value): "weight mean_weight", ..."""
    out = frame[frame["column"] == frame["column"].iloc[0]][keys].reset_index(drop=True)
    for column, part in frame.groupby("column", sort=False):
        for value in values:
            out[f"{column} {value}"] = part[value].to_numpy()
    return out


def _tokens(frame: pd.DataFrame) -> str:
    if not len(frame):
        return '<p class="muted">none</p>'
    return table(frame.assign(token=[repr(x) for x in frame["token"]])[["row", "id", "position", "token", "weight", "p"]])


def weights_section(data: dict) -> tuple[str, str, str]:
    """(anchor, title, body) of the Weights section from summary()'s "weights" (not None)."""
    w = data["weights"]
    provenance = "".join(f"<li><code>{esc(c)}</code>: {esc(weight_sentence(w['provenance'][c]))}</li>" for c in w["columns"])
    body = f"<p>The loss weights this dataset stores (<code>tokensft train --weight COLUMN</code> reads one):</p><ul>{provenance}</ul>"
    body += "<h3>Distribution over targets</h3>" + _distribution(w["distribution"]) + DEFINITIONS
    hist = pd.DataFrame(w["histogram"])
    body += "".join(img(histogram(hist[hist["column"] == c], c), f"histogram of {c}") for c in w["columns"])
    pos = pd.DataFrame(w["by_position"])
    body += ("<h3>Along the response</h3>" + img(by_position(pos), "weight by position") +
             table(_side_by_side(pos, ["bin", "left", "right", "targets"], ("mean_weight", "weight_share"))))
    if w["by_class"] is not None:
        body += "<h3>By token class</h3>" + table(pd.DataFrame(w["by_class"]), text=("column", "class"))
    else:
        body += ('<h3>By token class</h3><p class="muted">Token classes need the tokenizer (pass <code>--model</code> with '
                 "a local copy).</p>")
    if w["prompt"] is not None:
        body += ('<h3>Prompt against response</h3><p class="muted">Prompt tokens that <code>--prompt-weight</code> made '
                 "targets, against the response's.</p>" + table(pd.DataFrame(w["prompt"]), text=("column", "part")))
    for c in w["columns"]:
        ends = w["extremes"][c]
        body += (f"<h3>Largest <code>{esc(c)}</code></h3>" + _tokens(pd.DataFrame(ends["largest"])) +
                 f"<h3>Smallest <code>{esc(c)}</code></h3>" + _tokens(pd.DataFrame(ends["smallest"])))
    return "weights", "Weights", body
