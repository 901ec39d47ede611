"""The LLM-Adapters repository (AGI-Edgerunners/LLM-Adapters at commit 8166572): its training sets and the
paper-protocol test sets, fetched on first use and verified against the hashes this package pins
(``llm_adapters_pins.tsv``: path, bytes, git blob id, sha256; never the data itself).

A file is checked against its sha256 where the pin table has one, else against its git blob id (the
commit's own content address). ``$SKETCHTUNE_LLM_ADAPTERS_URL`` replaces the base URL (a mirror, an
internal proxy): the files fetched from it must still match the pins. URLs under the public base, as the
bundled configs write them, are fetched from the mirror too.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from .remote import Fetched, Pin, fetch

COMMIT = "8166572"
PUBLIC_BASE = f"https://raw.githubusercontent.com/AGI-Edgerunners/LLM-Adapters/{COMMIT}"
BASE_ENV = "SKETCHTUNE_LLM_ADAPTERS_URL"
PINS_FILE = Path(__file__).with_name("llm_adapters_pins.tsv")


def base_url() -> str:
    return (os.environ.get(BASE_ENV) or PUBLIC_BASE).rstrip("/")


@lru_cache(maxsize=None)
def pins() -> dict[str, Pin]:
    """Repository path -> pin, for every file the table lists with at least one hash."""
    table = {}
    for line in PINS_FILE.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        path, _bytes, blob, sha = line.split("\t")  # the size column is for people reading the table
        if blob == "-" and sha == "-":
            continue
        table[path] = Pin(sha256=None if sha == "-" else sha, git_blob_sha1=None if blob == "-" else blob)
    return table


def repo_path(url: str) -> str | None:
    """The repository path of a URL under the public base or the configured mirror, else None."""
    for base in dict.fromkeys((PUBLIC_BASE, base_url())):
        if url.startswith(base + "/"):
            return url[len(base) + 1:]
    return None


def local_dir() -> Path:
    """Verified copies, in the repository's layout (``dataset/<Dataset>/test.json`` is an eval data dir)."""
    from .models import cache_root

    return cache_root() / "llm-adapters" / COMMIT


def fetch_path(path: str, instead: str) -> Fetched:
    """The verified cached copy of repository file ``path`` (e.g. ``dataset/gsm8k/test.json``); a file
    with no pin cannot be verified and is refused."""
    from .errors import UserError

    pin = pins().get(path)
    if pin is None:
        raise UserError(f"LLM-Adapters file {path} has no pinned hash, so it cannot be fetched verified; {instead}")
    return fetch(f"{base_url()}/{path}", pin, instead, target=local_dir() / path)


def fetch_url(url: str, instead: str) -> Fetched:
    """Any http(s) URL: one under the LLM-Adapters base comes from the mirror (if set) and must match its
    pin; any other URL is cached unverified (its sha256 is reported for the manifest)."""
    path = repo_path(url)
    if path is not None and path in pins():
        return fetch_path(path, instead)
    return fetch(url, None, instead)
