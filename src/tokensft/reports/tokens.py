"""Examples rendered token by token: each target coloured by its probability, with a tooltip.

The tooltip (CSS only, from the span's `data-tip`) gives the token, p, log p, rank, entropy,
the stored masks that keep it, its stored weights (and whether --prompt-weight made it a target),
the teacher's p and the scorer's top alternatives when stored.
The prompt is shown as grey context (its last CONTEXT_CHARS characters).
"""

from __future__ import annotations

import math

import numpy as np

from tokensft.analysis import Targets, extreme_examples, token_strings
from tokensft.reports.html import esc

CONTEXT_CHARS = 300
MAX_TARGETS_SHOWN = 400
ALTERNATIVES = 5


def color(p: float) -> str:
    """Red (p = 0) through yellow to green (p = 1), light enough for black text."""
    return f"hsl({int(round(120 * min(max(p, 0.0), 1.0)))}, 75%, 78%)"


def legend() -> str:
    steps = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]
    cells = "".join(f'<span style="background:{color(p)}">{p:g}</span>' for p in steps)
    return f'<p class="legend muted">target probability: {cells} &nbsp; hover a token for details</p>'


def pick_examples(t: Targets, n: int, seed: int = 0) -> list[tuple[int, str]]:
    """(row, why) for n examples: a quarter lowest mean p, a quarter highest, the rest drawn at random."""
    if n <= 0:
        return []
    lowest, highest = extreme_examples(t, max(1, n // 4))
    picked: list[tuple[int, str]] = [(int(r), "lowest mean p") for r in lowest["row"]]
    picked += [(int(r), "highest mean p") for r in highest["row"] if int(r) not in {p for p, _ in picked}]
    taken = {r for r, _ in picked}
    rest = [r for r in np.flatnonzero(t.examples["num_targets"].to_numpy() > 0) if r not in taken]
    order = np.random.default_rng(seed).permutation(len(rest))
    picked += [(int(rest[i]), "random") for i in order[:max(0, n - len(picked))]]
    return picked[:n]


def _tip(piece: str, i: int, t: Targets, tokenizer) -> str:
    p = math.exp(t.logprob[i])
    lines = [f"{piece!r}  p = {p:.4f}  log p = {t.logprob[i]:.3f}",
             f"rank {int(t.rank[i])}  entropy {float(t.entropy[i]):.3f}"]
    if t.masks:
        lines.append("masks: " + "  ".join(f"{name[5:]} {'kept' if kept[i] else 'dropped'}" for name, kept in sorted(t.masks.items())))
    if t.weights:
        lines.append("weights: " + "  ".join(f"{column} {t.weights[column][i]:.4g}" for column in t.weight_columns))
    if t.from_prompt is not None and t.from_prompt[i]:
        lines.append("a prompt token, a target by --prompt-weight")
    if t.teacher_logprob is not None and np.isfinite(t.teacher_logprob[i]):
        lines.append(f"teacher p = {math.exp(t.teacher_logprob[i]):.4f}")
    if t.topk_ids is not None and t.topk_ids.shape[1]:
        ids = t.topk_ids[i, :ALTERNATIVES]
        probs = np.exp(t.topk_logprobs[i, :ALTERNATIVES].astype(np.float64))
        pieces = token_strings(tokenizer, ids)
        lines.append("top: " + "  ".join(f"{s!r} {q:.3f}" for s, q in zip(pieces, probs)))
    return "\n".join(lines)


def render_example(t: Targets, row: int, input_ids: list[int], why: str, tokenizer) -> str:
    """One example: header line, grey prompt context, then the targets as coloured spans."""
    start, stop = np.searchsorted(t.example, [row, row + 1])  # its targets (t.example is non-decreasing)
    positions = t.position[start:stop]
    ex = t.examples.iloc[row]
    head = (f'<p><b>{esc(ex["id"])}</b> <span class="muted">({esc(why)}; {int(ex["num_targets"])} targets, '
            f'mean p {ex["mean_p"]:.3f}, min p {ex["min_p"]:.3g}{", truncated" if ex["truncated"] else ""})</span></p>')
    first = int(positions[0]) if len(positions) else len(input_ids)
    context = tokenizer.decode(input_ids[:first]) if tokenizer is not None else " ".join(map(str, input_ids[:first]))
    if len(context) > CONTEXT_CHARS:
        context = "…" + context[-CONTEXT_CHARS:]
    shown = list(range(start, min(stop, start + MAX_TARGETS_SHOWN)))
    pieces = token_strings(tokenizer, [input_ids[int(t.position[i])] for i in shown])
    spans, previous = [], first - 1
    for i, piece in zip(shown, pieces):
        position = int(t.position[i])
        if position > previous + 1 and tokenizer is not None:  # non-target tokens inside the response (a later turn)
            spans.append(f'<span class="context">{esc(tokenizer.decode(input_ids[previous + 1:position]))}</span>')
        previous = position
        spans.append(f'<span class="tok" style="background:{color(math.exp(t.logprob[i]))}" '
                     f'data-tip="{esc(_tip(piece, i, t, tokenizer))}">{esc(piece)}</span>')
    more = stop - start - len(shown)
    tail = f'<span class="muted"> … {more} more targets</span>' if more > 0 else ""
    return (f'<div class="example">{head}<div class="tokens"><span class="context">{esc(context)}</span>'
            f'{"".join(spans)}{tail}</div></div>')
