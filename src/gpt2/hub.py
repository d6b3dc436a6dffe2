"""Fetching official files (weights, vocabularies, data sets) when online, with caching and checksums.

Everything here is a convenience on top of local paths: each caller also accepts a local file or folder,
and a failed download raises one GPT2Error that says how to get the file by hand.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

from gpt2.errors import GPT2Error
from gpt2.io import atomic_open

# The four model sizes of the paper, as published by OpenAI on the Hugging Face hub.
HUB_MODELS = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}


def cache_dir() -> Path:
    """Where downloaded files live: $GPT2_CACHE, else ~/.cache/gpt2."""
    return Path(os.environ.get("GPT2_CACHE", Path.home() / ".cache" / "gpt2"))


def snapshot(name: str, files: list[str]) -> Path:
    """A local folder holding `files` of the official hub model `name`, downloaded once and cached.

    Tries the local cache first, so a machine that downloaded once keeps working offline.
    """
    from huggingface_hub import snapshot_download

    repo_id = HUB_MODELS[name]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=files, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(repo_id, allow_patterns=files))
    except Exception as e:
        raise GPT2Error(
            f"could not download '{name}' from the Hugging Face hub ({type(e).__name__}); connect once to "
            f"cache it, or pass a local folder holding config.json and model.safetensors "
            f"(e.g. from https://huggingface.co/{repo_id})"
        ) from None


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: str | os.PathLike, sha256: str | None = None) -> Path:
    """Download `url` to `dest` atomically, verifying `sha256` when given; reuse `dest` if it is already good."""
    dest = Path(dest)
    if dest.exists() and (sha256 is None or sha256_file(dest) == sha256):
        return dest
    try:
        with atomic_open(dest) as out, urllib.request.urlopen(url, timeout=60) as response:
            h = hashlib.sha256()
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
                h.update(chunk)
            if sha256 is not None and (got := h.hexdigest()) != sha256:
                raise GPT2Error(f"{url}: checksum mismatch (sha256 {got}, expected {sha256}); not saved")
    except GPT2Error:
        raise
    except Exception as e:
        raise GPT2Error(
            f"could not download {url} ({type(e).__name__}: {e}); fetch it by hand and put it at {dest}"
        ) from None
    return dest
