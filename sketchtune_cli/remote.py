"""The one fetcher for files named by an http(s) URL (training data, calibration text, eval test sets).

A URL is downloaded once into ``<cache root>/downloads/`` (``$SKETCHTUNE_CACHE``, default
``~/.cache/sketchtune``; LLM-Adapters files into ``llm-adapters/<commit>/`` in the repository's layout) and
read from there afterwards without touching the network, so a second run and
the other ranks of a distributed run fetch nothing. Several processes may ask at once: a file lock lets one
download while the others wait and then read its copy (the lock lives beside the file, so processes that
share the cache share the download; nodes with their own caches each fetch once).

A file with a pinned hash (:mod:`sketchtune_cli.llm_adapters`) is verified before it enters the cache and
every time it is read back; bytes that differ are refused and never cached. A file with no pin is cached
as fetched and its sha256 is reported, so the artifact that used it can record what it read.
``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` (as ``datasets`` reads them: either one) forbid the network:
a file not cached yet is then a one-line error saying what to pass instead.
"""
from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .artifacts import sha256_file as sha256_of
from .errors import UserError, one_line

log = logging.getLogger(__name__)

OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
TIMEOUT_S = 60
CHUNK = 1 << 20


@dataclass(frozen=True)
class Pin:
    """Expected content of a remote file: a sha256, else the git blob id of the commit it was pinned at
    (sha1 over ``blob <size>\\0`` + bytes; finding other bytes with the same id is a SHA-1 second preimage,
    which no one can compute)."""
    sha256: str | None = None
    git_blob_sha1: str | None = None

    @property
    def key(self) -> str:
        return self.sha256 or f"git-{self.git_blob_sha1}"


@dataclass(frozen=True)
class Fetched:
    path: Path  # the cached copy
    url: str
    sha256: str
    verified: bool  # matched a pin

    def describe(self) -> dict:
        return {"url": self.url, "sha256": self.sha256, "verified": self.verified}


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def offline() -> str | None:
    """The variable that forbids network access, or None."""
    for var in OFFLINE_VARS:
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return var
    return None


def url_filename(url: str) -> str:
    return Path(urllib.parse.urlsplit(url).path).name or "download"


def cache_path(url: str, pin: Pin | None) -> Path:
    """Where ``url`` is cached: keyed by the pinned content (so every mirror shares one copy), else by URL."""
    from .models import cache_root

    key = pin.key if pin else "url-" + hashlib.sha256(url.encode()).hexdigest()[:24]
    return cache_root() / "downloads" / key / url_filename(url)


def fetch(url: str, pin: Pin | None = None, instead: str = "pass a local file instead",
          target: Path | None = None) -> Fetched:
    """The cached copy of ``url`` (downloaded on first use, into ``target`` when given); ``instead``
    completes error messages with what the user can pass instead of the URL."""
    from filelock import FileLock

    target = target or cache_path(url, pin)
    cached = _cached(target, url, pin)  # the usual case after the first run: no lock, no network
    if cached is not None:
        return cached
    var = offline()
    if var:
        raise UserError(f"{url} is not in the cache ({target.parent}) and {var} is set, so it cannot be "
                        f"fetched; {instead}, or unset {var}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        cached = _cached(target, url, pin, drop_damaged=True)  # another process may have fetched it meanwhile
        if cached is not None:
            return cached
        _download(url, target, instead)
        digest = sha256_of(target)
        problem = mismatch(target, digest, pin)
        if problem:
            target.unlink()
            raise UserError(f"refusing {url}: {problem}, so it is not the pinned file (a changed or wrong "
                            f"mirror); {instead}")
        _digest_file(target).write_text(digest + "\n")
        log.info("fetched %s (%s bytes, sha256 %s)", url, f"{target.stat().st_size:,}", digest)
        return Fetched(target, url, digest, pin is not None)


def _cached(target: Path, url: str, pin: Pin | None, drop_damaged: bool = False) -> Fetched | None:
    """The cached copy when complete and (if pinned) still matching; under the lock a damaged copy is
    dropped (and fetched again)."""
    if not target.is_file() or not _digest_file(target).is_file():
        return None
    digest = sha256_of(target) if pin else _digest_file(target).read_text().strip()
    if pin and mismatch(target, digest, pin):
        if drop_damaged:
            log.warning("cached %s does not match its pin any more; fetching it again", target)
            target.unlink()
        return None
    log.debug("using cached %s for %s", target, url)
    return Fetched(target, url, digest, pin is not None)


def _digest_file(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _download(url: str, target: Path, instead: str) -> None:
    """Stream ``url`` into ``target`` through a temporary file (never a half-written cache entry)."""
    from tqdm.auto import tqdm

    tmp = target.with_name(target.name + f".part-{os.getpid()}")
    log.info("fetching %s", url)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=url_filename(url), leave=False,
                      disable=total is not None and total < 4 * CHUNK) as bar:
                while chunk := resp.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
        os.replace(tmp, target)
    except urllib.error.HTTPError as e:
        raise UserError(f"could not fetch {url}: the server answered HTTP {e.code} ({e.reason}); "
                        f"check the URL, or {instead}") from None
    except (urllib.error.URLError, OSError) as e:  # DNS, refused, timeout, TLS
        reason = getattr(e, "reason", None) or e
        raise UserError(f"could not fetch {url} (host unreachable: {one_line(reason, 120)}); "
                        f"{instead}") from None
    finally:
        tmp.unlink(missing_ok=True)


def git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1(usedforsecurity=False)
    h.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def mismatch(path: Path, digest: str, pin: Pin | None) -> str | None:
    """Why ``path`` (sha256 ``digest``) is not the pinned file, or None when it is (or nothing is pinned)."""
    if pin is None:
        return None
    if pin.sha256:
        return None if digest == pin.sha256 else f"its sha256 is {digest[:16]}..., the pin is {pin.sha256[:16]}..."
    blob = git_blob_sha1(path)
    return None if blob == pin.git_blob_sha1 else f"its git blob id is {blob[:16]}..., the pin is {pin.git_blob_sha1[:16]}..."

