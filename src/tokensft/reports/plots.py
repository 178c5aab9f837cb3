"""The report's figures: matplotlib on the Agg canvas, returned as PNG bytes.

Every function takes the DataFrames / dicts of `tokensft.analysis` (no computation of its own
beyond layout) and returns `png(fig)`. Figures are built with the object API (`Figure`), never
pyplot, so no global state, no display and no GUI backend are involved.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

BLUE, ORANGE, GREEN, RED, GREY = "#3b6ea8", "#d9822b", "#3a8f5c", "#c0392b", "#888888"
REGIME_COLORS = (("model-weak", "#f6d5d1"), ("intermediate", "#f7ecd0"), ("model-strong", "#d6eedd"))


def png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _figure(width: float = 7.5, height: float = 3.2, panels: int = 1):
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(1, panels)
    return fig, axes


def continuum(cont: dict, compare_mean_p: float | None = None, compare_label: str = "B") -> bytes:
    """The 0..1 axis of mean target p: regime bands, the paper's reference points, this dataset."""
    fig, ax = _figure(8.0, 2.1)
    cuts = [0.0, cont["thresholds"]["model_weak_max"], cont["thresholds"]["model_strong_min"], 1.0]
    for (name, color), lo, hi in zip(REGIME_COLORS, cuts[:-1], cuts[1:]):
        ax.axvspan(lo, hi, color=color, zorder=0)
        ax.text((lo + hi) / 2, 0.9, name, ha="center", va="top", fontsize=8, color="#555555")
    for point in cont["reference_points"]:
        ax.axvline(point["mean_p"], color=GREY, linestyle="--", linewidth=1)
        ax.text(point["mean_p"], 0.08, f"{point['label']}\n~{point['mean_p']:g}", ha="center", va="bottom", fontsize=7,
                color="#444444", bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
    if cont.get("mean_p") is not None:
        ax.plot([cont["mean_p"]], [0.5], marker="o", markersize=11, color=BLUE, zorder=3)
        ax.annotate(f"this data: {cont['mean_p']:.3f}", (cont["mean_p"], 0.5), xytext=(0, 12),
                    textcoords="offset points", ha="center", fontsize=9, color=BLUE, weight="bold")
    if compare_mean_p is not None:
        ax.plot([compare_mean_p], [0.5], marker="D", markersize=9, color=ORANGE, zorder=3)
        ax.annotate(f"{compare_label}: {compare_mean_p:.3f}", (compare_mean_p, 0.5), xytext=(0, -16),
                    textcoords="offset points", ha="center", fontsize=9, color=ORANGE, weight="bold")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_xlabel("mean target probability (token level, as Beyond Log Likelihood measures it)")
    return png(fig)


def histogram(hist: pd.DataFrame) -> bytes:
    """Target counts on linear p bins and on log10 p bins, side by side."""
    fig, (left, right) = _figure(9.0, 3.0, 2)
    for ax, scale, label in ((left, "linear", "p"), (right, "log10", "log10 p")):
        part = hist[hist["scale"] == scale]
        ax.bar(part["left"], part["count"], width=part["right"] - part["left"], align="edge", color=BLUE,
               edgecolor="white", linewidth=0.5)
        ax.set_xlabel(label)
        ax.set_ylabel("targets")
    left.set_title("target probability", fontsize=10)
    right.set_title("on a log axis (lowest bin includes everything below)", fontsize=10)
    return png(fig)


def cdf(frame: pd.DataFrame) -> bytes:
    """Fraction of targets with probability <= p, on linear and log x axes."""
    fig, (left, right) = _figure(9.0, 3.0, 2)
    for ax, log in ((left, False), (right, True)):
        part = frame[frame["p"] > 0] if log else frame
        ax.step(part["p"], part["frac_at_most"], where="post", color=BLUE)
        ax.axvline(0.1, color=GREY, linestyle=":", linewidth=1)
        ax.set_xscale("log" if log else "linear")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("p")
        ax.set_ylabel("fraction of targets <= p")
        ax.grid(alpha=0.3)
    return png(fig)


def entropy_vs_probability(binned: pd.DataFrame, sample: pd.DataFrame) -> bytes:
    """A sample of targets (p, entropy), with the per-bin median and 10-90% band of entropy."""
    fig, ax = _figure(7.0, 3.4)
    if len(sample):
        ax.scatter(sample["p"], sample["entropy"], s=3, alpha=min(0.6, 300 / len(sample) + 0.05), color=BLUE, linewidths=0)
    centers = (binned["left"] + binned["right"]) / 2
    has = binned["count"] > 0
    ax.fill_between(centers[has], binned["entropy_q10"][has], binned["entropy_q90"][has], color=ORANGE, alpha=0.2,
                    label="10-90% of entropy")
    ax.plot(centers[has], binned["entropy_median"][has], color=ORANGE, marker="o", markersize=3, label="median entropy")
    ax.set_xlim(0, 1)
    ax.set_xlabel("target probability p")
    ax.set_ylabel("entropy (nats)")
    ax.legend(fontsize=8, loc="upper right")
    return png(fig)


def by_position(frame: pd.DataFrame) -> bytes:
    """Mean and median p, and the fraction below 0.1, along the response (0 = first target, 1 = last)."""
    fig, ax = _figure(7.0, 3.0)
    centers = (frame["left"] + frame["right"]) / 2
    ax.plot(centers, frame["mean_p"], marker="o", color=BLUE, label="mean p")
    ax.plot(centers, frame["median_p"], marker="s", color=GREEN, label="median p")
    ax.plot(centers, frame["frac_below_0_1"], marker="^", color=RED, label="fraction p < 0.1")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("relative position in the response")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return png(fig)


def by_class(frame: pd.DataFrame) -> bytes:
    """Mean p per token class, each bar labelled with the class's share of targets."""
    fig, ax = _figure(7.0, 3.0)
    x = np.arange(len(frame))
    ax.bar(x, frame["mean_p"].fillna(0), color=BLUE)
    for i, (share, count) in enumerate(zip(frame["share"], frame["count"])):
        ax.text(i, 0.02, f"{share:.0%}\n({count:,})", ha="center", va="bottom", fontsize=7, color="white" if count else GREY)
    ax.set_xticks(x, frame["class"])
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("mean target p")
    return png(fig)


def masks(stats: dict) -> bytes:
    """Kept fraction of each mask along the response and, with token classes, per class."""
    by_cls = stats.get("by_class")
    fig, axes = _figure(10.0 if by_cls is not None else 6.5, 3.0, 2 if by_cls is not None else 1)
    left = axes[0] if by_cls is not None else axes
    for name, part in stats["by_position"].groupby("mask", sort=True):
        left.plot((part["left"] + part["right"]) / 2, part["kept_fraction"], marker="o", label=name)
    left.set_xlim(0, 1)
    left.set_ylim(0, 1.02)
    left.set_xlabel("relative position in the response")
    left.set_ylabel("kept fraction")
    left.legend(fontsize=7)
    left.grid(alpha=0.3)
    if by_cls is not None:
        names = sorted(by_cls["mask"].unique())
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            part = by_cls[by_cls["mask"] == name]
            axes[1].bar(np.arange(len(part)) + i * width, part["kept_fraction"].fillna(0), width=width, label=name)
        axes[1].set_xticks(np.arange(len(part)) + 0.4 - width / 2, part["class"], fontsize=8)
        axes[1].set_ylim(0, 1.02)
        axes[1].set_ylabel("kept fraction")
        axes[1].legend(fontsize=7)
    return png(fig)


def references(refs: dict) -> bytes:
    """Distribution of the references' mean log-prob, and the scorer's against it per example."""
    fig, (left, right) = _figure(10.0, 3.2, 2)
    hist = refs["histogram"]
    left.bar(hist["left"], hist["count"], width=hist["right"] - hist["left"], align="edge", color=GREEN, edgecolor="white")
    column = refs["summary"]["column"]
    left.set_xlabel(column)
    left.set_ylabel("examples")
    ex = refs["examples"]
    right.scatter(ex[column], ex["mean_logprob"], s=8, alpha=0.6, color=BLUE)
    finite = ex[[column, "mean_logprob"]].replace([np.inf, -np.inf], np.nan).dropna()
    if len(finite):
        lo = float(min(finite.min()))
        hi = float(max(finite.max()))
        right.plot([lo, hi], [lo, hi], color=GREY, linestyle="--", linewidth=1, label="equal")
        right.legend(fontsize=8)
    right.set_xlabel(f"reference: {column}")
    right.set_ylabel("scorer: mean_logprob")
    return png(fig)


def teacher(per_example: pd.DataFrame) -> bytes:
    """Per example: the teacher's mean target p against the scorer's, coloured by the top-k KL."""
    fig, ax = _figure(6.0, 3.4)
    kl = per_example["kl_mean"]
    if kl.notna().any():
        points = ax.scatter(per_example["mean_p"], per_example["teacher_mean_p"], s=10, c=kl, cmap="viridis")
        fig.colorbar(points, ax=ax, label="mean KL(teacher || scorer), top-k")
    else:  # no KL to colour by (no scorer top-k): a colormap without values only warns
        ax.scatter(per_example["mean_p"], per_example["teacher_mean_p"], s=10, color=BLUE)
    ax.plot([0, 1], [0, 1], color=GREY, linestyle="--", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("scorer: mean target p")
    ax.set_ylabel("teacher: mean target p")
    return png(fig)


def compare(result: dict, label_a: str = "A", label_b: str = "B") -> bytes:
    """The shift from A to B: histogram of delta p per target, and mean p along the response."""
    fig, (left, right) = _figure(10.0, 3.2, 2)
    hist = result["delta_histogram"]
    left.bar(hist["left"], hist["count"], width=hist["right"] - hist["left"], align="edge", color=BLUE, edgecolor="white")
    left.set_yscale("log" if hist["count"].max() > 50 * max(1, hist["count"].median()) else "linear")
    left.set_xlabel(f"p({label_b}) - p({label_a}) per target")
    left.set_ylabel("targets")
    pos = result["by_position"]
    centers = (pos["left"] + pos["right"]) / 2
    right.plot(centers, pos["mean_p_a"], marker="o", color=BLUE, label=label_a)
    right.plot(centers, pos["mean_p_b"], marker="s", color=ORANGE, label=label_b)
    right.set_xlim(0, 1)
    right.set_ylim(0, 1.02)
    right.set_xlabel("relative position in the response")
    right.set_ylabel("mean target p")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    return png(fig)


def sweep(arms: list[dict], baseline: dict | None) -> bytes:
    """Held-out accuracy per arm (mean over every draw, its 95% interval, each seed a dot) and held-out mean target p."""
    fig, (left, right) = _figure(9.0, 0.9 + 0.45 * max(len(arms), 2), 2)
    names = [a["arm"] for a in arms]
    y = np.arange(len(arms))
    means = [a["accuracy"] if a["accuracy"] is not None else np.nan for a in arms]
    lows = [m - a["interval"][0] if a.get("interval") else 0.0 for m, a in zip(means, arms)]
    highs = [a["interval"][1] - m if a.get("interval") else 0.0 for m, a in zip(means, arms)]
    left.barh(y, means, xerr=[lows, highs], color=BLUE, alpha=0.7, capsize=3)
    for i, arm in enumerate(arms):
        runs = arm.get("runs", [])
        left.plot([r["accuracy"] for r in runs], [i] * len(runs), "o", color="#1e2329", markersize=3)
    if baseline is not None and baseline["accuracy"] is not None:
        left.axvline(baseline["accuracy"], color=GREY, linestyle="--", linewidth=1, label="before training")
        left.legend(fontsize=8, loc="lower right")
    left.set_yticks(y, names, fontsize=8)
    left.invert_yaxis()
    left.set_xlim(0, 1)
    left.set_xlabel("held-out accuracy")
    right.barh(y, [a["heldout_mean_p"] if a.get("heldout_mean_p") is not None else np.nan for a in arms], color=GREEN,
               alpha=0.7)
    if baseline is not None and baseline.get("heldout_mean_p") is not None:
        right.axvline(baseline["heldout_mean_p"], color=GREY, linestyle="--", linewidth=1)
    right.set_yticks(y, [""] * len(arms))
    right.invert_yaxis()
    right.set_xlim(0, 1)
    right.set_xlabel("held-out mean target p (teacher-forced)")
    return png(fig)


def mask_drift(by_position: pd.DataFrame) -> bytes:
    """Fraction of targets flipping side of each threshold, along the response."""
    fig, ax = _figure(7.5, 2.8)
    for spec, rows in by_position.groupby("spec", sort=False):
        ax.plot((rows["left"] + rows["right"]) / 2, rows["flipped"], marker="o", markersize=3, label=spec)
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("relative position in the response")
    ax.set_ylabel("flipped fraction")
    ax.legend(fontsize=8)
    return png(fig)
