"""Versioned artifact directories: one per stage run, described by ``sketchtune.json``.

Writers build the artifact in a sibling ``<out>.partial`` directory and rename it into place only when it
is complete, so a crash never leaves a half artifact that looks whole (and a stage that checkpoints, e.g.
compress or finetune, resumes from the ``.partial`` directory). Readers verify every file's sha256 and
refuse unknown major versions or the wrong stage with a one-line error.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from . import __version__
from .errors import UserError

MANIFEST = "sketchtune.json"
FORMAT_MAJOR = 1
FORMAT_NAMES = {
    "sketch": "sketchtune.sketch",
    "finetune": "sketchtune.finetune",
    "eval": "sketchtune.eval",
    "export": "sketchtune.export",
}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _file_hashes(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel != MANIFEST and not rel.startswith(skip):
            out[rel] = sha256_file(p)
    return out


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

    @property
    def content_hash(self) -> str:
        return content_hash(self.files)

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "path"}
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
        tmp.write_text(json.dumps(manifest.to_json(), indent=2, default=str) + "\n")
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
        return manifest


def check_output(out: Path, overwrite: bool, resume: bool = False) -> None:
    """Refuse to clobber: an existing artifact needs --overwrite; an interrupted run needs --resume or
    removal."""
    if out.exists() and not overwrite:
        raise UserError(f"output {out} exists; pass --overwrite to replace it or choose another -o")
    part = partial_dir(out)
    if part.exists() and not resume:
        raise UserError(
            f"an interrupted run left {part}; pass --resume to continue it or delete that directory"
        )


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
    if writer.path.exists() and not resume:
        shutil.rmtree(writer.path)
    writer.path.mkdir(parents=True, exist_ok=True)
    try:
        yield writer
        writer.manifest = writer.finish(overwrite)
    except BaseException:
        if not keep_partial_on_error:
            shutil.rmtree(writer.path, ignore_errors=True)
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
    stages = (stage,) if isinstance(stage, str) else stage
    if stages and data["stage"] not in stages:
        article = "an" if data["stage"][0] in "aeiou" else "a"
        raise UserError(f"{path} is {article} {data['stage']} artifact, expected {' or '.join(stages)}")
    data.pop("content_hash", None)
    manifest = Manifest(**data, path=path)
    if verify:
        verify_files(manifest)
    return manifest


def verify_files(manifest: Manifest) -> None:
    root = manifest.path
    for rel, digest in manifest.files.items():
        p = root / rel
        if not p.is_file():
            raise UserError(f"{root}: file {rel} listed in the manifest is missing; the artifact is incomplete")
        if sha256_file(p) != digest:
            raise UserError(f"{root}: checksum mismatch for {rel}; the artifact is corrupted, re-create it")


def ref_candidates(ref: dict, origin: str | Path) -> list[Path]:
    """Where a reference (``parent_ref``) may point, in order: its ``relative_path`` taken from ``origin``
    (the referring artifact's directory), then ``path`` (absolute; old manifests have only this)."""
    places = [Path(origin) / ref["relative_path"]] if ref.get("relative_path") else []
    places.append(Path(ref["path"]))
    return list(dict.fromkeys(Path(os.path.normpath(p.absolute())) for p in places))


def resolve_ref(ref: dict, origin: str | Path, *, what: str = "parent", stage: str | tuple[str, ...] | None = None,
                override: str | Path | None = None, verify: bool = True) -> Manifest:
    """The artifact ``ref`` names, seen from the artifact directory ``origin``: the one place every parent
    and base path is resolved. ``override`` (``--base PATH``) re-points it at an artifact that moved on its
    own, accepted only if its content hash is the recorded one."""
    want = ref["content_hash"]
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
