"""The tokensft cache: where converted models live, and the digests of weight files.

    cache_dir()                 # $TOKENSFT_CACHE, else $XDG_CACHE_HOME/tokensft, else ~/.cache/tokensft
    weights_hash(model_dir)     # what identifies a model's weights (a scored dataset records it)

Per-file digests are kept in cache_dir()/file_hashes.json by (path, size, mtime), so loading a
500 MB model a second time does not hash it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from tokensft.core.errors import ModelError
from tokensft.core.fileio import atomic_write

logger = logging.getLogger(__name__)


def cache_dir() -> Path:
    """$TOKENSFT_CACHE if set, else $XDG_CACHE_HOME/tokensft, else ~/.cache/tokensft."""
    if os.environ.get("TOKENSFT_CACHE"):
        return Path(os.environ["TOKENSFT_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "tokensft"


def weights_hash(model_dir: Path) -> str:
    """sha256 hex over the weight files in name order: of "name<TAB>sha256(file)" lines.

    Only *.safetensors when there are any, since that is what transformers loads then; else *.bin.
    Per-file digests are cached (see file_sha256), so repeat loads do not rehash 500 MB.
    """
    files = sorted(p for p in Path(model_dir).iterdir() if p.suffix == ".safetensors")
    files = files or sorted(p for p in Path(model_dir).iterdir() if p.suffix == ".bin")
    if not files:
        raise ModelError(f"model directory '{model_dir}' has no weight files (*.safetensors or *.bin)")
    lines = "".join(f"{p.name}\t{file_sha256(p)}\n" for p in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 hex of a file, cached in cache_dir()/file_hashes.json by (abs path, size, mtime_ns)."""
    path = Path(path).resolve()  # HF cache snapshots are symlinks to blobs: key on the blob
    stat = path.stat()
    key = json.dumps([str(path), stat.st_size, stat.st_mtime_ns])
    if cached := _read_hash_cache().get(key):
        return cached
    digest = _sha256_of(path)
    cache = _read_hash_cache()  # re-read: another process may have added entries meanwhile
    # Drop older versions of this file and entries for deleted files (temp dirs), so the JSON stays small.
    cache = {k: v for k, v in cache.items() if json.loads(k)[0] != str(path) and Path(json.loads(k)[0]).exists()}
    cache[key] = digest
    _write_hash_cache(cache)
    return digest


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _read_hash_cache() -> dict[str, str]:
    path = cache_dir() / "file_hashes.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError) as e:
        logger.warning("ignoring unreadable hash cache %s (%s); files will be rehashed", path, e)
        return {}


def _write_hash_cache(cache: dict[str, str]) -> None:
    """Write atomically, so a concurrent reader sees the old or the new file, never half of one."""
    path = cache_dir() / "file_hashes.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(cache, indent=0, sort_keys=True))
    except OSError as e:
        logger.warning("cannot write the hash cache %s (%s); weights will be rehashed next time", path, e)
