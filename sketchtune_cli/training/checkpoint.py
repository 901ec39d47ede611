"""Training state for exact resume, as safetensors + JSON (no pickle, nothing for torch.load).

A checkpoint is ``checkpoints/step-NNNNNNN/`` with
  ``luts.safetensors``       trained LUTs (``<module>.lut``),
  ``optimizer.safetensors``  per-parameter optimizer tensors keyed ``<param index>.<key>``,
  ``rng.safetensors``        torch CPU/CUDA and numpy generator states,
  ``state.json``             step, config fingerprint, optimizer groups, scheduler, python RNG, counters.
It is written into a temporary directory and renamed, then ``checkpoints/latest.json`` is replaced
atomically, so a kill at any moment leaves the previous checkpoint usable. The two newest are kept: a resume
that cannot read the newest (a truncated file, a damaged ``state.json``) says so in one line and uses the
one before (:func:`candidates`).

Under FSDP the LUTs and their optimizer states are sharded DTensors: they are gathered into full tensors
before saving (:func:`full_optimizer_state`, on every process) and re-sharded on load, so the files are the
same whatever the process count or DDP/FSDP, and a run can resume under another layout.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import UserError, describe

log = logging.getLogger(__name__)

CKPT_DIR = "checkpoints"
LATEST = "latest.json"
KEEP = 2
# what a damaged checkpoint raises when read: truncated safetensors, broken JSON, a missing file or key
READ_ERRORS = (OSError, SafetensorError, ValueError, KeyError, TypeError, RuntimeError)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    return obj


# ---- optimizer -----------------------------------------------------------------------------------------

def _is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full_tensor(t):
    """``t`` itself, or gathered from all processes when it is an FSDP-sharded DTensor (a collective)."""
    return t.full_tensor() if _is_dtensor(t) else t


def full_optimizer_state(optimizer) -> dict:
    """``optimizer.state_dict()`` with FSDP-sharded (DTensor) states gathered into full tensors. A collective
    under FSDP: every process must call it."""
    sd = optimizer.state_dict()
    state = {idx: {k: full_tensor(v) for k, v in st.items()} for idx, st in sd["state"].items()}
    return {"state": state, "param_groups": sd["param_groups"]}


def _like(value, param):
    """A loaded full tensor shaped like ``param``: this process's shard when ``param`` is a sharded DTensor
    (every process reads the whole file, so no communication is needed)."""
    if not (_is_dtensor(param) and isinstance(value, torch.Tensor) and value.shape == param.shape):
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(param.device), param.device_mesh, param.placements, src_data_rank=None)


def optimizer_tensors(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict (:func:`full_optimizer_state`) into tensors (safetensors) and the rest (JSON)."""
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"{idx}.{key}"] = val.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{key}"] = val
    return tensors, {"param_groups": _jsonable(sd["param_groups"]), "scalars": scalars}


def optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, val in list(tensors.items()) + list(meta["scalars"].items()):
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = val
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# ---- RNG -----------------------------------------------------------------------------------------------

def rng_tensors() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.uint32).view(np.int32).copy())
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(cached)], "python": _jsonable(random.getstate())}
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy().view(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


# ---- save / load ---------------------------------------------------------------------------------------

def save_checkpoint(root: Path, step: int, luts: dict[str, torch.Tensor], opt_state: dict, scheduler, state: dict) -> Path:
    """Write checkpoint ``step`` under ``root/checkpoints`` and point ``latest.json`` at it. ``luts`` are full
    tensors, ``opt_state`` the optimizer's full state dict (:func:`full_optimizer_state`)."""
    ck_root = Path(root) / CKPT_DIR
    final = ck_root / f"step-{step:07d}"
    tmp = ck_root / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in luts.items()}, tmp / "luts.safetensors")
    opt_t, opt_meta = optimizer_tensors(opt_state)
    save_file(opt_t, tmp / "optimizer.safetensors")
    rng_t, rng_meta = rng_tensors()
    save_file(rng_t, tmp / "rng.safetensors")
    full = dict(state, step=step, optimizer=opt_meta, scheduler=_jsonable(scheduler.state_dict()), rng=rng_meta)
    (tmp / "state.json").write_text(json.dumps(full, indent=1) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    latest_tmp = ck_root / (LATEST + ".tmp")
    latest_tmp.write_text(json.dumps({"step": step, "dir": final.name}) + "\n")
    os.replace(latest_tmp, ck_root / LATEST)
    _prune(ck_root, keep=KEEP)
    return final


def _prune(ck_root: Path, keep: int) -> None:
    steps = sorted(p for p in ck_root.glob("step-*") if p.is_dir())
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def candidates(root: Path) -> list[Path]:
    """Checkpoint directories under ``root`` to resume from, best first: the one ``latest.json`` names,
    then the other complete ones, newest first (a damaged ``latest.json`` only loses its preference)."""
    ck_root = Path(root) / CKPT_DIR
    found = sorted((p for p in ck_root.glob("step-*") if (p / "state.json").is_file()), reverse=True)
    try:
        named = ck_root / json.loads((ck_root / LATEST).read_text())["dir"]
    except (OSError, ValueError, KeyError, TypeError):
        return found
    return [named] + [p for p in found if p != named] if named in found else found


def latest_checkpoint(root: Path) -> Path | None:
    """The directory of the newest complete checkpoint under ``root``, or None."""
    return next(iter(candidates(root)), None)


def _first_readable(root: Path, read, report: bool):
    """``(checkpoint, read(checkpoint))`` for the best checkpoint ``read`` succeeds on (:func:`candidates`);
    None when there is no checkpoint. Raises UserError when there are some but none reads. ``report``: log
    one line for each that fails, and name the last failure in the error."""
    found, problem = candidates(root), ""
    for ck in found:
        try:
            return ck, read(ck)
        except READ_ERRORS as e:
            if report:
                problem = f" ({describe(e)})"
                log.warning("cannot read checkpoint %s (%s); trying the previous one", ck, describe(e))
    if found:
        raise UserError(f"no readable checkpoint in {Path(root) / CKPT_DIR}{problem}; delete {root} and run "
                        f"without --resume to start over")
    return None


def first_readable_state(root: Path) -> tuple[Path, dict] | None:
    """The best checkpoint whose ``state.json`` reads, with that state; None when there is no checkpoint.
    Raises UserError when there are checkpoints but none reads."""
    return _first_readable(root, read_state, report=False)  # load_latest reports them, once, when it gets there


def read_state(ck: Path) -> dict:
    return json.loads((ck / "state.json").read_text())


def load_latest(root: Path, params: dict[str, torch.nn.Parameter], optimizer, scheduler) -> tuple[Path, dict] | None:
    """Restore from the best readable checkpoint under ``root`` (:func:`candidates`), reporting each one
    that fails to read in one line; None when there is none. Raises UserError when none reads."""
    found = _first_readable(root, _read_files, report=True)
    if found is None:
        return None
    ck, files = found
    return ck, _apply(ck, files, params, optimizer, scheduler)


def _read_files(ck: Path) -> tuple[dict, dict, dict, dict]:
    """Everything a checkpoint holds, read before any of it is applied (a damaged file changes nothing)."""
    state = read_state(ck)
    for key in ("step", "optimizer", "scheduler", "rng"):
        state[key]  # noqa: B018 - a KeyError here marks the checkpoint unreadable
    return (state, load_file(str(ck / "luts.safetensors")), load_file(str(ck / "optimizer.safetensors")),
            load_file(str(ck / "rng.safetensors")))


def _apply(ck: Path, files: tuple[dict, dict, dict, dict], params, optimizer, scheduler) -> dict:
    state, luts, opt_tensors, rng = files
    if set(luts) != set(params):
        raise ValueError(f"checkpoint {ck} holds other LUTs than this model ({len(luts)} vs {len(params)})")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(_like(luts[name], p))
    opt = optimizer_state(opt_tensors, state["optimizer"])
    ordered = [p for g in optimizer.param_groups for p in g["params"]]  # state_dict's indices follow this order
    for idx, st in opt["state"].items():
        if idx < len(ordered):
            opt["state"][idx] = {k: _like(v, ordered[idx]) for k, v in st.items()}
    optimizer.load_state_dict(opt)
    scheduler.load_state_dict(state["scheduler"])
    restore_rng(rng, state["rng"])
    return state
