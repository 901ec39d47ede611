"""Running one decoder block at a time: capture block 0's inputs, run a block over the calibration
activations, and find the block's "true sequential" sub-groups.

Only the current block (plus, briefly, the embeddings) lives on the device; activations stay on the device
or, with ``offload``, on the CPU and move in one sample at a time.
"""
from __future__ import annotations

from contextlib import contextmanager, suppress
from typing import Any, Callable, Iterable

import torch
from torch import nn


class StopForward(Exception):
    """Raised from a hook to end a forward pass once what it needed has been seen."""


def map_tensors(value: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """``value`` with every tensor in it (also inside tuples, lists and dicts) replaced by ``fn(tensor)``;
    everything else as is. The one walker over the nested inputs and outputs of a block's modules."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)):
        return type(value)(map_tensors(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: map_tensors(v, fn) for k, v in value.items()}
    return value


def to_device(value: Any, device, memo: dict) -> Any:
    """Tensors in ``value`` moved to ``device``. Tensors shared between structures (one mask for many
    blocks) are moved once: ``memo`` holds the moved copies by the id of the original."""
    def move(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in memo:
            memo[id(t)] = t.to(device)
        return memo[id(t)]
    return map_tensors(value, move)


def move_outside_blocks(model: nn.Module, blocks_name: str, device) -> None:
    """Move every parameter and buffer that is NOT inside the decoder blocks (embeddings, rotary
    frequencies, final norm, lm_head) to ``device``. ``.data`` is swapped so tied weights stay tied."""
    prefix = blocks_name + "."
    for name, module in model.named_modules():
        if name == blocks_name or name.startswith(prefix):
            continue
        for p in module.parameters(recurse=False):
            p.data = p.data.to(device)
        for key, b in list(module._buffers.items()):
            if b is not None:
                module._buffers[key] = b.to(device)


def _passthrough(hidden_states=None, *args, **kwargs):
    return hidden_states


def capture_block_inputs(
    model: nn.Module, blocks_name: str, calib_ids: torch.Tensor, device, offload: bool
) -> tuple[list[torch.Tensor], list[dict]]:
    """Inputs of block 0 for every calibration sequence, and for EVERY block the keyword arguments the
    model passes to it (position_embeddings, attention_mask, position_ids...): models that mix attention
    types (sliding-window and full layers) give blocks different masks. During the capture every block's
    forward is an identity (its weights are not touched and stay on the CPU) and pre-hooks record the
    arguments; the last block's hook stops the forward before the final norm and lm_head. All sequences
    share one length and carry no padding, so the first sequence's keyword arguments hold for all."""
    blocks = model.get_submodule(blocks_name)
    store = "cpu" if offload else device
    inputs: list[torch.Tensor] = []
    per_block: list[dict | None] = [None] * len(blocks)

    def make_hook(index: int):
        def hook(_module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if index == 0:
                inputs.append(hidden.detach().to(store))
            if per_block[index] is None:
                per_block[index] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            if index == len(blocks) - 1:
                raise StopForward

        return hook

    move_outside_blocks(model, blocks_name, device)
    handles = [b.register_forward_pre_hook(make_hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
    for b in blocks:
        b.forward = _passthrough
    try:
        for ids in calib_ids:
            with suppress(StopForward):
                model(input_ids=ids.unsqueeze(0).to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
        for b in blocks:
            del b.forward  # back to the class's forward
        move_outside_blocks(model, blocks_name, "cpu")
    memo: dict = {}
    return inputs, [to_device(_block_kwargs(kw), device, memo) for kw in per_block]


def _block_kwargs(kwargs: dict | None) -> dict:
    """A block's recorded keyword arguments, without any KV cache."""
    kwargs = dict(kwargs or {})
    for key in ("past_key_values", "past_key_value", "cache"):
        kwargs.pop(key, None)
    kwargs["use_cache"] = False
    return kwargs


def block_output(out: Any) -> torch.Tensor:
    """Decoder blocks return a tensor (transformers >= 5) or a tuple whose first item is the hidden state."""
    return out[0] if isinstance(out, (tuple, list)) else out


def run_block(block: nn.Module, inputs: list[torch.Tensor], kwargs: dict, device,
              reuse: "FinishedOutputs | None" = None) -> list[torch.Tensor]:
    """The block's outputs for every input (kept where the input was)."""
    outs = []
    for i, x in enumerate(inputs):
        if reuse is not None:
            reuse.begin(i)
        y = block_output(block(x.to(device), **kwargs))
        outs.append(y.detach().to(x.device))
    return outs


def feed_until(block: nn.Module, inputs: list[torch.Tensor], kwargs: dict, device,
               reuse: "FinishedOutputs | None" = None) -> None:
    """Run the block over every input, tolerating a hook's StopForward (the caller's hooks collect what
    they need and stop early, so the rest of the block is not computed)."""
    for i, x in enumerate(inputs):
        if reuse is not None:
            reuse.begin(i)
        with suppress(StopForward):
            block(x.to(device), **kwargs)


class FinishedOutputs:
    """Reuses, across the forwards over one block, the outputs of modules whose weights stopped changing:
    target linears already sketched, and the block's children (``self_attn``, ``mlp``) whose targets all are.

    The true-sequential pipeline runs the block five times (one feed per sub-group, then the block's
    outputs), and each feed recomputed the prefix of the block: for Llama the attention four times after
    q/k/v/o had stopped changing, gate/up once more for the outputs. Whatever a module computes is a
    deterministic function of the block input, the block's keyword arguments and the outputs of what ran
    before it in the forward; the only things that change between feeds are the target linears not yet
    sketched. So until the first unfinished target linear starts ("taints" the forward), a finished module
    sees the same input as the last time and gives the same output: the first time, the output is kept (on
    ``store``, where the activations live), later a copy is returned instead of computing it. The block's
    results are bit for bit those of recomputing (tests/compress/test_block_reuse.py).

    Kept outputs stay under ``budget_bytes`` (default: half the memory free on ``store`` when entered);
    past it, modules are recomputed as before. On the embedded model at 128 x 512 calibration tokens
    the kept outputs of one block take about 1.5 GB.

    Use as a context manager around the block's feeds; :meth:`finish` after a sub-group's weights are
    written back, :meth:`begin` before each sample (``feed_until`` / ``run_block`` call it)."""

    def __init__(self, block: nn.Module, linears: dict[str, nn.Module], device, store,
                 budget_bytes: int | None = None):
        name_of = {id(m): n for n, m in linears.items()}
        # what each wrapped module depends on: a target linear on itself, a child on the targets inside it
        self._depends = {name: {name} for name in linears}
        self._modules = dict(linears)
        for child_name, child in block.named_children():
            inside = {name_of[id(m)] for m in child.modules() if id(m) in name_of}
            if inside and id(child) not in name_of:
                self._depends[f"child:{child_name}"], self._modules[f"child:{child_name}"] = inside, child
        self._unfinished = set(linears)
        self._device, self._store = device, torch.device(store)
        self._budget = _free_bytes(self._store) // 2 if budget_bytes is None else budget_bytes
        self._kept: dict[tuple[str, int, int], Any] = {}
        self.kept_bytes = 0
        self._sample, self._tainted, self._calls = 0, False, {}

    def __enter__(self) -> "FinishedOutputs":
        for name, module in self._modules.items():
            module.forward = self._wrap(name, module.forward)
        return self

    def __exit__(self, *exc) -> None:
        for module in self._modules.values():
            del module.forward  # back to the class's forward
        self._kept.clear()

    def finish(self, names: Iterable[str]) -> None:
        """These target linears are sketched and written back: they no longer change."""
        self._unfinished.difference_update(names)

    def begin(self, sample: int) -> None:
        """A new forward, over calibration sample ``sample``."""
        self._sample, self._tainted, self._calls = sample, False, {}

    def _wrap(self, name: str, forward: Callable) -> Callable:
        leaf = not name.startswith("child:")

        def reusing_forward(*args, **kwargs):
            call = self._calls[name] = self._calls.get(name, 0) + 1  # a module called twice: two entries
            unfinished = bool(self._depends[name] & self._unfinished)
            if unfinished and leaf:
                self._tainted = True
            if unfinished or self._tainted:
                return forward(*args, **kwargs)
            key = (name, self._sample, call)
            if key in self._kept:  # a copy: the block may update the output in place
                return _copied(self._kept[key], self._device)
            out = forward(*args, **kwargs)
            size = _nbytes(out)
            if self.kept_bytes + size <= self._budget:
                self._kept[key] = _copied(out, self._store)
                self.kept_bytes += size
            return out

        return reusing_forward


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def _nbytes(value: Any) -> int:
    sizes: list[int] = []
    map_tensors(value, lambda t: sizes.append(t.numel() * t.element_size()))
    return sum(sizes)


def _copied(value: Any, device) -> Any:
    """A detached copy of every tensor in ``value`` on ``device``."""
    return map_tensors(value, lambda t: t.detach().to(device, copy=True))


@contextmanager
def pre_hooks(modules: dict[str, nn.Module], fn: Callable[[str, torch.Tensor], None]):
    """Forward pre-hooks calling ``fn(name, input)`` on each module; removed on exit."""
    handles = [m.register_forward_pre_hook(lambda _m, args, name=name: fn(name, args[0])) for name, m in modules.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def sequential_groups(block: nn.Module, linears: dict[str, nn.Module], x: torch.Tensor, kwargs: dict, device) -> list[list[str]]:
    """The block's "true sequential" sub-groups: linears that read the very same input tensor form a
    group, in the order the forward reaches them. For Llama, Mistral and Qwen2 this is [q,k,v], [o],
    [gate,up], [down] (docs/method.md §2) without a name table, and any other architecture gets one group
    per distinct input."""
    groups: dict[int, list[str]] = {}
    alive: list[torch.Tensor] = []  # holding every input keeps its id() from being reused by a later one

    def record(name: str, inp: torch.Tensor) -> None:
        alive.append(inp)
        group = groups.setdefault(id(inp), [])
        if name not in group:
            group.append(name)

    with pre_hooks(linears, record), torch.no_grad():
        block(x.to(device), **kwargs)
    order = [n for g in groups.values() for n in g]
    missing = [n for n in linears if n not in order]
    if missing:
        raise ValueError(f"layers {missing[:3]} are not used by the block's forward; exclude them with compress.ignore")
    return list(groups.values())
