"""Shared fixtures: two tokenizer families built in the test, tiny models built from a config.

- "bpe": byte-level BPE (GPT-2 / Qwen / SmolLM family), ChatML template, <|im_end|> closes a turn;
  byte-level merges can join characters across the prompt/response boundary.
- "sp": Metaspace BPE with a BOS added by the post-processor (Llama-2 / Mistral family),
  "[INST] ... [/INST]" template, </s> closes a turn.
Models: Llama (bpe) and Gemma 2 (sp, exercising the final-logit softcap). Nothing touches the network.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CORPUS = [
    "Janet has 16 eggs. She eats 3 and bakes 4 into muffins; she sells the rest for $2 each.",
    "What is 2 + 2? The answer is 4.",
    "You are a helpful assistant. Answer the question step by step.",
    "The quick brown fox jumps over the lazy dog, then naps!",
    "How many bolts in total does it take? It takes 2/2=1 bolt, so 3 in total.",
    "Hello there! Hi, how can I help you today? Tell me a joke about cats.",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))",
    "Line one.\nLine two.\n\nA new paragraph with numbers 10, 20 and 300.",
    "So the total is 2+1=<<2+1=3>>3 bolts.\n#### 3",
] * 4

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA2 = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ '<<SYS>>\n' + m['content'] + '\n<</SYS>>\n\n' }}"
    "{% elif m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}"
)


def make_bpe_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.add_special_tokens({"additional_special_tokens": specials})
    fast.chat_template = CHATML
    return fast


def make_sp_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "<s>", "</s>"]
    alphabet = sorted(set("".join(CORPUS).replace(" ", "▁")) | set("▁[]/<>SYNT_"))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = LLAMA2
    return fast


def make_model(tokenizer, family: str, seed: int = 0):
    torch.manual_seed(seed)
    common = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if family == "bpe":
        model = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=False))
    else:
        config = Gemma2Config(**common, head_dim=8, final_logit_softcapping=5.0, attn_logit_softcapping=None,
                              sliding_window=64, attn_implementation="eager")
        model = Gemma2ForCausalLM(config)
    # Larger weights than the default init, so probabilities spread over a wide range.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model.eval()


TOKENIZERS = {"bpe": make_bpe_tokenizer, "sp": make_sp_tokenizer}


@pytest.fixture(scope="session", params=["bpe", "sp"])
def family(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """Saved tiny model directories, one per family, loadable by `tokensft score --model DIR`."""
    out = {}
    for name, make in TOKENIZERS.items():
        tok = make()
        model = make_model(tok, name)
        path = tmp_path_factory.mktemp(f"tiny-{name}")
        model.save_pretrained(path)
        tok.save_pretrained(path)
        out[name] = path
    return out


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory):
    """No network; a private cache for everything but the real default model (shared, see test_models)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    if "TOKENSFT_CACHE" not in os.environ:
        monkeypatch.setenv("TOKENSFT_CACHE", str(Path.home() / ".cache" / "tokensft"))


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def dies_on_call(original, n: int):
    """A stand-in for `original` that raises KeyboardInterrupt (a kill) on its n-th call, and calls
    `original` on every other; `.calls` counts the calls."""
    def wrapper(*args, **kwargs):
        wrapper.calls += 1
        if wrapper.calls == n:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    wrapper.calls = 0
    return wrapper


def run_processes(cmd: list[str], env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """subprocess.run for a multi-process launch (accelerate launch): on timeout the whole process
    group is killed, so a hung rank fails the test instead of holding the output pipes open forever
    (subprocess.run kills only the launcher, and its children keep the pipes)."""
    import psutil  # a dependency of accelerate

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # the ranks may sit in process groups of their own: kill every descendant, then the launcher
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\n(killed after {timeout} s: a rank hung)"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
