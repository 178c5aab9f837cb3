#!/usr/bin/env bash
# GPU checks of tokensft, one script, offline, about 7-8 minutes on one GPU:
#   1. a >=1B-parameter model from Qwen2.5-1.5B's config, random weights (bf16 safetensors), with a
#      tokenizer built here, and a generated dataset of 48 chats of ~300-3,000 tokens
#   2. scoring in bf16 vs fp32: agreement of the per-token log-probs, and the time of each
#   3. bench_score at 8k-token batches on that model: tokensft score's throughput vs a bare forward
#   4. training bf16 with each memory switch (none, --gradient-checkpointing, --batching grouped or
#      packed, with and without checkpointing; packed on flash-attention too when flash_attn is
#      installed): step time and peak memory (metrics.jsonl's peak_memory_gb), 3 steps of 2 x 2 micro-batches
#   5. bench_train_switches at Qwen2.5-1.5B's shape, 2k and 8k tokens: checkpointing on/off, fused
#      vs foreach AdamW; bench_train's loss memory at 8k tokens and hidden 1536
#
#   bash benchmarks/gpu_check.sh            # from the repository root; PY=/path/to/python to choose one
# Without CUDA it says so and exits 0. Everything is written under a temporary directory (KEEP=1 keeps it).
# SMOKE=1: the same steps on a tiny model and data, CPU allowed (a check of this script, in ~3 minutes).
set -uo pipefail
PY=${PY:-python}
SMOKE=${SMOKE:-0}
export SMOKE
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [ "$SMOKE" != 1 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA device (or no torch for $PY): nothing to check here"
    exit 0
fi
WORK=$(mktemp -d)
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
echo "gpu_check: working in $WORK"
"$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
if [ "$SMOKE" = 1 ]; then
    N=8 DTYPE=float32 SHAPE="--hidden 64 --layers 2 --heads 4 --kv-heads 2 --intermediate 128 --vocab 2048 --seq-lens 256 --batch-size 1"
else
    N=48 DTYPE=bfloat16 SHAPE="--hidden 1536 --layers 28 --heads 12 --kv-heads 2 --intermediate 8960 --vocab 151936 --seq-lens 2048,8192 --batch-size 1"
fi
stage() { echo; echo "== $1 ($(date +%T))"; }

stage "1. model (Qwen2.5-1.5B shape, random weights), tokenizer, data"
"$PY" - "$WORK" <<'EOF' || exit 1
import json, os, random, sys
from pathlib import Path
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

work = Path(sys.argv[1])
words = ("the answer is step so total eggs bolts muffins sells each dollars add then we get half twice more "
         "than less left how many does it take first second third finally").split()
rng = random.Random(0)
def text(n):  # n words with numbers and arithmetic, like GSM8K solutions
    return " ".join(rng.choice(words) if rng.random() < 0.8 else f"{rng.randint(1, 99)}+{rng.randint(1, 9)}=<<>>"
                    for _ in range(n))
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
tok.train_from_iterator([text(200) for _ in range(200)], trainers.BpeTrainer(
    vocab_size=2000, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                               pad_token="<|endoftext|>", unk_token="<|endoftext|>")
fast.add_special_tokens({"additional_special_tokens": specials})
fast.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
                      "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
smoke = os.environ["SMOKE"] == "1"
shape = (dict(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
         if smoke else dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                            num_attention_heads=12))
config = Qwen2Config(**shape, num_key_value_heads=2, max_position_embeddings=32768,
                     tie_word_embeddings=True, bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                     pad_token_id=fast.pad_token_id)
torch.manual_seed(0)
with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # initialized on the GPU: seconds, not minutes
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
print(f"model: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters")
model.save_pretrained(work / "model")
fast.save_pretrained(work / "model")
with open(work / "data.jsonl", "w") as f:
    for i in range(8 if smoke else 48):  # ~300 to ~3,000 tokens: a wide spread, so --batching grouped has padding to remove
        n = rng.randint(20, 100) if smoke else rng.randint(150, 1500)
        f.write(json.dumps({"id": f"ex{i}", "messages": [{"role": "user", "content": text(40)},
                                                         {"role": "assistant", "content": text(n)}]}) + "\n")
EOF

stage "2. scoring, bf16 vs fp32"
for dtype in bfloat16 float32; do
    start=$(date +%s%N)
    timeout 180 "$PY" -m tokensft score "$WORK/data.jsonl" --model "$WORK/model" -o "$WORK/scored-$dtype" \
        --dtype "$dtype" --batch-tokens 8192 -q || echo "score --dtype $dtype failed"
    echo "score --dtype $dtype: $(( ($(date +%s%N) - start) / 1000000 )) ms (with model load and the CLI's start-up)"
done
"$PY" - "$WORK" <<'EOF'
import sys
import numpy as np
from datasets import load_from_disk
w = sys.argv[1]
a, b = (load_from_disk(f"{w}/scored-{d}") for d in ("bfloat16", "float32"))
x = np.concatenate([np.asarray(r, np.float64) for r in a["logprob"]])
y = np.concatenate([np.asarray(r, np.float64) for r in b["logprob"]])
ok = ~np.isnan(x) & ~np.isnan(y)
d = np.abs(x[ok] - y[ok])
print(f"bf16 vs fp32 log-probs over {ok.sum():,} targets: mean |diff| {d.mean():.4f}, p99 {np.quantile(d, 0.99):.4f}, "
      f"max {d.max():.4f}, correlation {np.corrcoef(x[ok], y[ok])[0, 1]:.6f}; mean logprob {x[ok].mean():.4f} vs {y[ok].mean():.4f}")
EOF

stage "3. bench_score at 8k-token batches (bf16, the device default)"
timeout 150 "$PY" benchmarks/bench_score.py --data "$WORK/data.jsonl" --model "$WORK/model" --n "$N" \
    --batch-tokens 8192 --methods bare,score,score-8k || echo "bench_score failed or timed out"

stage "4. training bf16 with each memory switch (3 steps, batch 2 x grad-accum 2)"
FLASH=$("$PY" -c "import flash_attn" 2>/dev/null && echo "--attn-implementation flash_attention_2")
for switches in "" "--gradient-checkpointing" "--batching grouped" "--gradient-checkpointing --batching grouped" \
        "--batching packed" "--gradient-checkpointing --batching packed" ${FLASH:+"--batching packed $FLASH"}; do
    name=$(echo "run $switches" | tr -c 'a-z0-9\n' '_')
    # shellcheck disable=SC2086
    timeout 150 "$PY" -m tokensft train "$WORK/scored-bfloat16" -o "$WORK/$name" --model "$WORK/model" --max-steps 3 \
        --batch-size 2 --grad-accum 2 --dtype "$DTYPE" --lr 1e-5 $switches 2>&1 | grep -E "^memory|Error|error" | head -3
    "$PY" - "$WORK/$name/metrics.jsonl" "${switches:-no switch}" <<'EOF' || echo "train ${switches:-} failed"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
last = rows[1:] or rows  # the first step includes the warm-up
tps = sum(r["targets_per_s"] for r in last) / len(last)
print(f"  {sys.argv[2]:<45} loss {rows[-1]['loss']:.4f}  {tps:,.0f} targets/s  peak {max(r.get('peak_memory_gb', 0) for r in rows):.1f} GB")
EOF
    rm -rf "${WORK:?}/$name"  # 6 GB of fp32 weights each
done

stage "5. bench_train_switches at Qwen2.5-1.5B's shape; bench_train's loss memory at 8k tokens"
# shellcheck disable=SC2086
timeout 240 "$PY" benchmarks/bench_train_switches.py $SHAPE --batching-steps 0 --gsm8k "" --optimizers "$([ "$SMOKE" = 1 ] && echo auto || echo fused,foreach)" \
    || echo "bench_train_switches failed or timed out"
timeout 60 "$PY" benchmarks/bench_train.py --parts memory --mem-seq "$([ "$SMOKE" = 1 ] && echo 256 || echo 8192)" --mem-hidden 1536 \
    || echo "bench_train memory failed or timed out"
echo; echo "gpu_check: done ($(date +%T))"
