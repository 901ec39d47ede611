"""Versioned artifact directories: one per stage run, described by ``sketchtune.json``.

Writers build the artifact in a sibling ``<out>.partial`` directory and rename it into place only when it
is complete, so a crash never leaves a half artifact that looks whole (and a stage that checkpoints, e.g.
compress or finetune, resumes from the ``.partial`` directory). Readers verify every file's sha256 and
refuse unknown major versions or the wrong stage with a one-line error.

Every output is locked while it is written (``<out>.partial/lock``, see :mod:`output_lock`), and the
manifest is sealed (:func:`seal`): a hash over its canonical JSON plus one per field, so an edit of any field
is refused by every reader with a line naming that field. Format 1 manifests (before the seal) are still
read, with a warning that edits to them cannot be detected.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from . import __version__, output_lock
from .errors import UserError

log = logging.getLogger(__name__)

MANIFEST = "sketchtune.json"
FORMAT_MAJOR = 2  # 2: sealed manifests (a "seal" key, which readers of major 1 do not know)
SEAL_KEY = "seal"
FORMAT_NAMES = {
    "sketch": "sketchtune.sketch",
    "finetune": "sketchtune.finetune",
    "eval": "sketchtune.eval",
    "export": "sketchtune.export",
}


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _is_lock_file(rel: str) -> bool:
    """The writer's lock and another run's attempt at it (``.lock.*``): not part of the artifact."""
    return rel == output_lock.LOCK_NAME or ("/" not in rel and rel.startswith(f".{output_lock.LOCK_NAME}."))


def _file_hashes(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel != MANIFEST and not rel.startswith(skip) and not _is_lock_file(rel):
            out[rel] = sha256_file(p)
    return out


def dir_bytes(directory: Path) -> int:
    """Bytes of every file under ``directory``, lock and manifest included (0 when there is none)."""
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())


def content_hash(files: dict[str, str]) -> str:
    """Hash of an artifact's content: the sha256 of its sorted ``path:sha256`` lines."""
    lines = "".join(f"{k}:{v}\n" for k, v in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


@dataclass
class Manifest:
    format: str
    stage: str
    tool_version: str
    created: str
    config: dict[str, Any]
    parent: dict[str, str] | None
    files: dict[str, str]
    results: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    # the files at ``path`` were hashed against ``files`` in this process (read with verify, or just
    # written): a holder of this manifest need not hash them again
    verified: bool = field(default=False, compare=False, repr=False)

    @property
    def content_hash(self) -> str:
        return content_hash(self.files)

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("path", "verified")}
        d["content_hash"] = self.content_hash
        return d


def parent_ref(parent: Manifest, child: str | Path | None = None) -> dict[str, str]:
    """How an artifact names its parent: ``relative_path`` from the child's directory (a runs tree moved or
    copied as a whole keeps its links), ``path`` where the parent was when the child was written (a child
    moved on its own still finds it; older sketchtune versions read only this), and the parent's content
    hash, which is what makes either place valid."""
    target = Path(parent.path).resolve()
    ref = {"path": str(target), "stage": parent.stage, "content_hash": parent.content_hash}
    if child is not None:
        ref["relative_path"] = os.path.relpath(target, Path(child).resolve())
    return ref


def partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


class ArtifactWriter:
    """Collects results while a stage writes into ``self.path`` (the ``.partial`` directory)."""

    def __init__(self, out: Path, stage: str, config: dict, parent: Manifest | None, unhashed: tuple[str, ...]):
        self.out, self.stage, self.config, self.parent = out, stage, config, parent
        self.path = partial_dir(out)
        self.results: dict[str, Any] = {}
        self.unhashed = unhashed

    def finish(self, overwrite: bool) -> Manifest:
        files = _file_hashes(self.path, skip=self.unhashed)
        manifest = Manifest(
            format=f"{FORMAT_NAMES[self.stage]}/{FORMAT_MAJOR}",
            stage=self.stage,
            tool_version=__version__,
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            config=self.config,
            parent=parent_ref(self.parent, self.out) if self.parent else None,
            files=files,
            results=self.results,
        )
        tmp = self.path / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(seal(manifest.to_json()), indent=2) + "\n")
        os.replace(tmp, self.path / MANIFEST)
        if self.out.exists():
            if not overwrite:  # checked at start too; re-checked in case it appeared meanwhile
                raise UserError(f"output {self.out} exists; pass --overwrite to replace it")
            trash = self.out.with_name(self.out.name + ".old")
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(self.out, trash)
            os.replace(self.path, self.out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(self.path, self.out)
        manifest.path = self.out
        manifest.verified = True  # hashed above, just now
        return manifest


def check_output(out: Path, overwrite: bool, resume: bool = False) -> None:
    """Refuse to clobber: an existing artifact needs --overwrite; an interrupted run needs --resume or
    removal. A run that is writing ``out`` right now is reported as such (never as interrupted), an ``out``
    that could not be created (:func:`writable_problem`) before any work."""
    if partial_dir(out).exists():
        output_lock.refuse_if_held(partial_dir(out), out)
    problem = writable_problem(out)
    if problem:
        raise UserError(problem)
    if out.exists() and not overwrite:
        raise UserError(f"output {out} exists; pass --overwrite to replace it or choose another -o")
    part = partial_dir(out)
    if part.exists() and not resume:
        raise UserError(
            f"an interrupted run left {part}; pass --resume to continue it or delete that directory"
        )


def writable_problem(out: Path) -> str | None:
    """Why ``out`` could not be created, or None: it must not be a file, and its nearest existing ancestor
    must be a directory that takes a new entry (probed with a temporary directory, removed at once; root
    passes permission bits, a read-only mount does not). The line names that ancestor, so stages writing
    under the same one are reported once."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        return f"cannot write {out}: it is a file, not a directory; remove it or choose another output"
    place = existing_ancestor(out.absolute().parent)
    if not place.is_dir():
        return f"cannot write outputs under {place}: it is a file, not a directory; choose another output"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".sketchtune-write-test-", dir=place))
    except OSError as e:
        why = "no write permission" if e.errno in (errno.EACCES, errno.EPERM) else f"it takes no new files ({e.strerror or e})"
        return f"cannot write outputs under {place}: {why}; choose another output or fix its permissions"
    return None


def existing_ancestor(path: Path) -> Path:
    """``path`` if it exists, else its nearest ancestor that does."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


@contextlib.contextmanager
def write_artifact(
    out: str | Path,
    stage: str,
    config: dict,
    parent: Manifest | None = None,
    overwrite: bool = False,
    resume: bool = False,
    keep_partial_on_error: bool = False,
    unhashed: tuple[str, ...] = (),
) -> Iterator[ArtifactWriter]:
    """Context manager: yields a writer whose ``.path`` is the directory to fill; on success writes the
    manifest (with ``writer.results``) and renames into ``out``. On error the partial directory is removed,
    unless ``keep_partial_on_error`` (stages that checkpoint keep it for ``--resume``).

    ``unhashed``: path prefixes (relative) left out of the checksums, e.g. ``checkpoints/`` that resume
    rewrites."""
    if stage not in FORMAT_NAMES:
        raise ValueError(f"unknown stage {stage!r}")
    out = Path(out)
    check_output(out, overwrite, resume)
    writer = ArtifactWriter(out, stage, config, parent, unhashed)
    existed = writer.path.exists()
    writer.path.mkdir(parents=True, exist_ok=True)
    try:  # the lock decides between runs that passed check_output at the same moment
        holder = output_lock.acquire(writer.path, out, take_stale=resume)
    except BaseException:
        if not existed:
            with contextlib.suppress(OSError):
                writer.path.rmdir()  # only when empty: the winner's lock stays
        raise
    try:
        yield writer
        writer.manifest = writer.finish(overwrite)
        output_lock.release(out, holder)
    except BaseException:
        if not keep_partial_on_error:
            shutil.rmtree(writer.path, ignore_errors=True)
        else:
            output_lock.release(writer.path, holder)
        raise


def is_artifact(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(path: str | Path, stage: str | tuple[str, ...] | None = None, verify: bool = True) -> Manifest:
    """Read and check an artifact's manifest. Raises UserError with a one-line reason."""
    path = Path(path)
    mf = path / MANIFEST
    if not path.exists():
        raise UserError(f"artifact {path} does not exist")
    if not mf.is_file():
        raise UserError(f"{path} is not a sketchtune artifact (no {MANIFEST}); give the directory a stage wrote")
    try:
        data = json.loads(mf.read_text())
        name, major = data["format"].rsplit("/", 1)
        major = int(major.split(".")[0])
    except (ValueError, KeyError, json.JSONDecodeError) as e:
        raise UserError(f"{mf} is corrupt ({e}); re-run the stage that wrote it") from None
    if name not in FORMAT_NAMES.values():
        raise UserError(f"{path}: unknown artifact format {data['format']!r}")
    if major > FORMAT_MAJOR:
        raise UserError(
            f"{path} has format {data['format']}, newer than this sketchtune reads (major {FORMAT_MAJOR}); upgrade sketchtune"
        )
    check_seal(data, mf, major)
    check_stage(data["stage"], path, stage)
    data.pop("content_hash", None)
    data.pop(SEAL_KEY, None)
    try:
        manifest = Manifest(**data, path=path)
    except TypeError as e:  # a key missing or unknown: sealed manifests only get here when written so
        raise UserError(f"{mf} is not a valid manifest ({e}); re-run the stage that wrote it") from None
    if verify:
        verify_files(manifest)
    return manifest


def check_stage(found: str, path: str | Path, stage: str | tuple[str, ...] | None) -> None:
    """Refuse an artifact of stage ``found`` unless it is ``stage`` (one name, several, or None for any)."""
    stages = (stage,) if isinstance(stage, str) else stage
    if stages and found not in stages:
        article = "an" if found[0] in "aeiou" else "a"
        raise UserError(f"{path} is {article} {found} artifact, expected {' or '.join(stages)}")


def ensure_verified(manifest: Manifest) -> Manifest:
    """``manifest`` with its files hashed against it: once per manifest object, however many holders ask."""
    if not manifest.verified:
        verify_files(manifest)
    return manifest


def verify_files(manifest: Manifest) -> None:
    """Hash every file of the artifact against the manifest (always: ``inspect`` asks for it explicitly);
    :func:`ensure_verified` skips a manifest already verified."""
    root = manifest.path
    for rel, digest in manifest.files.items():
        p = root / rel
        if not p.is_file():
            raise UserError(f"{root}: file {rel} listed in the manifest is missing; the artifact is incomplete")
        if sha256_file(p) != digest:
            raise UserError(f"{root}: checksum mismatch for {rel}; the artifact is corrupted, re-create it")
    manifest.verified = True


def ref_candidates(ref: dict, origin: str | Path) -> list[Path]:
    """Where a reference (``parent_ref``) may point, in order: its ``relative_path`` taken from ``origin``
    (the referring artifact's directory), then ``path`` (absolute; old manifests have only this)."""
    places = [Path(origin) / ref["relative_path"]] if ref.get("relative_path") else []
    places.append(Path(ref["path"]))
    return list(dict.fromkeys(Path(os.path.normpath(p.absolute())) for p in places))


def resolve_ref(ref: dict, origin: str | Path, *, what: str = "parent", stage: str | tuple[str, ...] | None = None,
                override: str | Path | Manifest | None = None, verify: bool = True) -> Manifest:
    """The artifact ``ref`` names, seen from the artifact directory ``origin``: the one place every parent
    and base path is resolved. ``override`` (``--base PATH``) re-points it at an artifact that moved on its
    own, accepted only if its content hash is the recorded one. A :class:`Manifest` as ``override`` is a
    hint, not a --base: an artifact a caller already read (`sketchtune run`'s compress artifact), used as it
    is (hashed only if not verified yet) when it is the one recorded, else ignored."""
    want = ref["content_hash"]
    if isinstance(override, Manifest):
        stages = (stage,) if isinstance(stage, str) else stage
        if override.content_hash == want and (not stages or override.stage in stages):
            return ensure_verified(override) if verify else override
        override = None
    places = [Path(override)] if override is not None else ref_candidates(ref, origin)
    mismatch = None
    for place in places:
        if not is_artifact(place):
            if override is not None:
                raise UserError(f"--base {place} is not a sketchtune artifact (no {MANIFEST}); give the {what} directory")
            continue
        found = read_manifest(place, stage=stage, verify=False)
        if found.content_hash == want:
            if verify:
                verify_files(found)
            return found
        mismatch = mismatch or found
    if mismatch is not None:
        raise UserError(
            f"{origin} was made for {what} {want[:12]}, not {mismatch.content_hash[:12]} ({mismatch.path}): the "
            f"content hashes differ; pass --base PATH to the {what} it was made from, or re-run this stage"
        )
    looked = " and ".join(str(p) for p in places)
    raise UserError(f"{origin}: its {what} is gone (looked in {looked}); if it moved, pass --base PATH to point at it")


def lineage(manifest: Manifest) -> list[Manifest]:
    """This artifact and its ancestors, nearest first (ancestors that moved away or changed end the chain)."""
    chain = [manifest]
    while chain[-1].parent:
        try:
            chain.append(resolve_ref(chain[-1].parent, chain[-1].path, verify=False))
        except UserError:
            break
    return chain


# ---- the seal ------------------------------------------------------------------------------------------

def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _digest(value: Any) -> str:
    return hashlib.sha256(_canonical(value)).hexdigest()


def _field_digests(data: dict) -> dict[str, str]:
    """One hash per top-level field and per key one level below (``results.summary``, ``files.x``), so a
    mismatch can be named precisely without storing a copy of the manifest."""
    out = {}
    for key, value in data.items():
        out[key] = _digest(value)
        if isinstance(value, dict):
            for sub, v in value.items():
                out[f"{key}.{sub}"] = _digest(v)
    return out


def seal(data: dict) -> dict:
    """``data`` (as it will read back from JSON) with a ``seal``: sha256 of its canonical JSON and per-field
    hashes."""
    data = json.loads(json.dumps({k: v for k, v in data.items() if k != SEAL_KEY}, default=str))
    return {**data, SEAL_KEY: {"sha256": _digest(data), "fields": _field_digests(data)}}


_WARNED_UNSEALED: set[str] = set()


def check_seal(data: dict, mf: Path, major: int) -> None:
    """Refuse a manifest edited after it was written, naming the first field that no longer matches."""
    sealed = data.get(SEAL_KEY)
    if major < 2 and sealed is None:
        if str(mf) in _WARNED_UNSEALED:  # readers often open one artifact several times: say it once
            return
        _WARNED_UNSEALED.add(str(mf))
        log.warning("%s is an unsealed format-%d manifest: edits to it cannot be detected; re-create the "
                    "artifact with this sketchtune to seal it", mf, major)
        return
    if not (isinstance(sealed, dict) and isinstance(sealed.get("sha256"), str)
            and isinstance(sealed.get("fields"), dict)):
        raise UserError(f"{mf} has no valid seal; the manifest was edited or damaged, re-run the stage that wrote it")
    body = {k: v for k, v in data.items() if k != SEAL_KEY}
    if _digest(body) == sealed["sha256"]:
        return
    now, then = _field_digests(body), sealed["fields"]
    changed = sorted(k for k in now.keys() | then.keys() if now.get(k) != then.get(k))
    # name the most precise field: a sub-key when one differs, else the top-level field
    subs = [k for k in changed if "." in k and k.split(".", 1)[0] in body and k.split(".", 1)[0] in then]
    name = (subs or changed or [SEAL_KEY])[0]
    how = "was added" if name not in then else "was removed" if name not in now else "no longer matches its seal"
    raise UserError(f"{mf}: field {name} {how}; the manifest was edited after it was written, re-run the "
                    f"stage that wrote it")
