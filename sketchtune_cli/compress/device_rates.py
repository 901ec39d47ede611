"""How fast a device does the few primitive operations compress is made of (the cost model's denominators).

Two sources: a probe that times each primitive on this process's device in ~2 s on 2 CPU cores (what
``run --dry-run`` and ``inspect --estimate`` use for "this machine"), and a table of named GPUs built from
their spec sheets times an efficiency we assume (stated per entry: no GPU has run the probe for the table
yet; ``scripts/time_compress_block.py`` prints the probe next to the measured phases when one does).
"""
from __future__ import annotations

import time
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import torch

from .cost_model import Rates, codes_work, kmeans_work
from .kmeans import weighted_kmeans_1d
from .refit import _one_hot_transposed
from .settings import CompressSettings
from .sketcher import _assign_compensated, _prepare


def _gpu(name: str, fp32: float, bf16: float, hbm: float, l2: float, note: str) -> Rates:
    """A GPU entry from spec-sheet peaks (flop/s, bytes/s) and the efficiencies below, assumed, not measured:
    SGEMM 75% of the fp32 peak (compress keeps its float32 matmuls off TF32); the model's bf16 forward 50%
    of the dense bf16 tensor peak (eager Hugging Face blocks); large Cholesky/inverse 25% of the fp32 peak
    with half of that at n = 4096, the batched 64x64 Cholesky 2%; streaming at 70% of HBM bandwidth; a sort
    moves its keys and indices ~4 times (32 bytes per element); the CSR product reads one H row per nonzero
    from HBM (no cache reuse: 4 bytes per multiply-add) and writes 8 bytes per output element; scatter_add
    12 bytes per element; a k-means step element 64 bytes (gathers and searches into float64 prefix sums);
    a column-loop element 216 bytes; 6 us per eager PyTorch operation."""
    bw = 0.7 * hbm
    return Rates(name, gemm=0.75 * fp32, forward=0.5 * bf16, factor=0.25 * fp32, factor_half=4096,
                 small_factor=0.02 * fp32, bandwidth=bw, cache=l2, sort=bw / 32, sparse=bw / 4, sparse_stream=bw / 4,
                 sparse_out=bw / 8, scatter=bw / 12, steps=bw / 64, loop=bw / 216, op=6e-6,
                 source=f"spec sheet ({note}) x assumed efficiencies; not measured", gpu=True)


# Dense (non-sparse) peaks from NVIDIA's data sheets, SXM parts.
GPUS = {
    "a100": _gpu("A100 80GB SXM", 19.5e12, 312e12, 2.04e12, 40e6, "19.5 TFLOPS fp32, 312 bf16, 2.04 TB/s, 40 MB L2"),
    "h100": _gpu("H100 SXM", 67e12, 989e12, 3.35e12, 50e6, "67 TFLOPS fp32, 989 bf16, 3.35 TB/s, 50 MB L2"),
    "h200": _gpu("H200 SXM", 67e12, 989e12, 4.8e12, 50e6, "67 TFLOPS fp32, 989 bf16, 4.8 TB/s, 50 MB L2"),
}


def named_rates(name: str) -> Rates:
    """``a100``/``h100``/``h200`` from the table, ``this`` = the probe on this process's default device."""
    key = name.lower()
    if key == "this":
        return measure_rates("cuda" if torch.cuda.is_available() else "cpu")
    if key not in GPUS:
        raise KeyError(f"unknown device {name!r}: use one of {', '.join(['this', *GPUS])}")
    return GPUS[key]


def _best_seconds(fn, device: str, reps: int = 3) -> float:
    """Fastest of ``reps`` timed calls after one warm-up (the least disturbed by other load)."""
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()
    fn()
    sync()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return max(best, 1e-9)


@lru_cache(maxsize=None)
def measure_rates(device: str = "cpu") -> Rates:
    """Times each primitive on ``device`` (~2 s on 2 CPU cores; cached per process). Sizes are small so the
    probe stays cheap, except where the cache decides the speed (memory bandwidth, the refit's product with
    an H beyond the cache); benchmarks/cost_model.md checks the result against whole phases at real layer
    shapes."""
    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(0)
    big_n, n = 2048, 1024  # a product large enough to run near the device's matmul speed; the rest smaller
    a2 = torch.randn(big_n, big_n, device=dev, generator=gen)
    gemm = 2 * big_n ** 3 / _best_seconds(lambda: a2 @ a2, device, reps=2)
    forward_dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16  # what compress runs the model in
    af = a2.to(forward_dtype)
    forward = 2 * big_n ** 3 / _best_seconds(lambda: af @ af, device, reps=2)
    del a2, af
    a = torch.randn(n, n, device=dev, generator=gen)
    spd = a @ a.T / n + torch.eye(n, device=dev)

    def factor_chain():  # the sketcher's prepare: Cholesky, inverse from it, Cholesky of the inverse
        L, _ = torch.linalg.cholesky_ex(spd)
        torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
    # the chain at n = 1024 gives n-half with the matmul speed as the large-n limit (rate = gemm n/(n + n_half))
    factor_at_n = 4 / 3 * n ** 3 / _best_seconds(factor_chain, device)
    factor, factor_half = gemm, n * max(gemm / factor_at_n - 1, 0.0)
    batch, slots = 512, 64
    m = torch.randn(batch, slots, slots, device=dev, generator=gen)
    small = m @ m.transpose(1, 2) + slots * torch.eye(slots, device=dev)
    small_factor = batch * slots ** 3 / 3 / _best_seconds(lambda: torch.linalg.cholesky_ex(small), device)
    big = torch.empty(64 * 2 ** 20, device=dev).fill_(1.0)  # 256 MB: beyond any cache
    copy = torch.empty_like(big)
    bandwidth = 2 * big.numel() * 4 / _best_seconds(lambda: copy.copy_(big), device)
    del big, copy
    sort = a.numel() / _best_seconds(lambda: a.sort(dim=1), device)
    cache = _cache_bytes(dev)
    # the rates measured so far; the probes below subtract what these primitives cost from their timings
    partial = Rates(name="", gemm=gemm, forward=forward, factor=factor, factor_half=factor_half,
                    small_factor=small_factor, bandwidth=bandwidth, cache=cache, sort=sort, sparse=1.0,
                    sparse_stream=1.0, sparse_out=1.0, scatter=1.0, steps=1.0, loop=1.0, op=0.0, source="",
                    gpu=dev.type == "cuda")
    op, loop = _column_loop_rates(dev, gen, spd, partial)
    steps = _kmeans_step_rate(dev, gen, replace(partial, op=op, loop=loop))
    sparse, sparse_out, sparse_stream = _sparse_rates(dev, gen, spd, cache)
    rows = 32
    slot = torch.randint(0, slots, (rows, n), device=dev, generator=gen)
    ath = (_one_hot_transposed(slot, slots) @ spd).view(rows, slots, n)
    index = slot.unsqueeze(1).expand(rows, slots, n)
    normal = torch.zeros(rows, slots, slots, device=dev)
    scatter = rows * slots * n / _best_seconds(lambda: normal.zero_().scatter_add_(2, index, ath), device)
    label = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    return replace(partial, name=label, sparse=sparse, sparse_stream=sparse_stream, sparse_out=sparse_out,
                   scatter=scatter, steps=steps, loop=loop, op=op, source="measured by the probe on this machine")


def _cache_bytes(dev) -> float:
    """Last-level cache: the GPU's L2, or the CPU's largest cache level Linux reports (32 MB if none)."""
    if dev.type == "cuda":
        return float(getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", 50e6))
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = entry.read_text().strip().upper()
        scale = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30}.get(text[-1:], 1)
        try:
            sizes.append(int(text.rstrip("KMG")) * scale)
        except ValueError:
            continue
    return float(max(sizes, default=32 * 2 ** 20))


def _sparse_rates(dev, gen, spd: torch.Tensor, cache: float) -> tuple[float, float, float]:
    """(multiply-adds/s with H in cache, output elements/s, multiply-adds/s with H streamed) of the refit's
    CSR product. Its time is nonzeros x cols / the first + rows x slots x cols / the second: two runs at
    16 and 64 slots (the same nonzeros, 4x the output; 128 rows x 1024 columns, an output beyond the caches
    as the refit's 256 MB row chunks are) separate them; a third with an H far beyond the cache (8192 x
    8192 floats, 256 MB) gives the streamed rate."""
    def product_seconds(H, rows, slots):
        at = _one_hot_transposed(torch.randint(0, slots, (rows, H.shape[0]), device=dev, generator=gen), slots)
        return _best_seconds(lambda: at @ H, dev.type, reps=3)
    rows, cols = 128, spd.shape[0]
    t16, t64 = product_seconds(spd, rows, 16), product_seconds(spd, rows, 64)
    per_out = max(t64 - t16, 0.0) / (rows * 48 * cols)
    cached = rows * cols * cols / max(t16 - rows * 16 * cols * per_out, 0.1 * t16)
    big = 8192 if 4 * 8192 ** 2 >= 4 * cache else 16384
    H = torch.empty(big, big, device=dev).fill_(0.5)  # values do not matter for the speed
    t_big = product_seconds(H, 4, 64)
    streamed = 4 * big * big / max(t_big - 4 * 64 * big * per_out, 0.1 * t_big)
    return cached, 1 / max(per_out, 1e-15), streamed


def _column_loop_rates(dev, gen, spd: torch.Tensor, rates: Rates) -> tuple[float, float]:
    """(seconds per dispatched operation, column-loop elements/s) as the code assignment's eager loop sees
    them (dispatch plus the Python around it, then the per-row vector work): two small instances of the
    loop itself, 64 and 512 rows x 512 columns, less their lazy-update arithmetic; the difference gives the
    per-row cost, the rest the per-operation cost. On a GPU too the eager loop is timed (compress itself
    uses the Triton kernel there): ``op`` is what every eager operation costs."""
    cols = 512
    s = CompressSettings(groups_per_row=1)
    times = {}
    for rows in (64, 512):
        weights = torch.randn(rows, cols, device=dev, generator=gen) * 0.02
        prep = _prepare(weights, spd[:cols, :cols], s)
        lut = (torch.randn(rows, 1, 2 ** s.bits, device=dev, generator=gen) * 0.02).sort(dim=-1).values
        seconds = _best_seconds(lambda: _assign_compensated(weights, prep, lut, s.block_size), dev.type, reps=2)
        times[rows] = seconds - codes_work(rows, cols, s.block_size).gemm / rates.gemm
    ops = codes_work(64, cols, s.block_size).ops
    per_row = max(times[512] - times[64], 1e-9) / (512 - 64)
    loop = cols / per_row
    op = max(times[64] - 64 * per_row, 0.1 * times[64]) / ops
    return op, loop


def _kmeans_step_rate(dev, gen, rates: Rates) -> float:
    """k-means step elements per second: a small instance of the sketcher's k-means (256 rows x 4 groups x
    128 values, 16 centroids), less what the cost model bills to the other primitives, over its counted
    step elements."""
    rows, groups, n, k = 256, 4, 128, 16
    x = torch.randn(rows, groups, n, device=dev, generator=gen)
    iterations = []

    def fit():
        fit_gen = torch.Generator(device=dev).manual_seed(0)
        iterations.append(weighted_kmeans_1d(x, None, k, generator=fit_gen).iterations)
    seconds = _best_seconds(fit, dev.type, reps=2)
    work = kmeans_work(rows, groups * n, groups, k, iterations[-1], 1)
    rest = work.sort / rates.sort + work.bytes / rates.bandwidth + work.ops * rates.op
    return work.steps / max(seconds - rest, 0.1 * seconds)
