"""What compress costs, counted from shapes alone, and how long that takes on a device (issue 21).

Each phase of sketching one layer (``prepare``, ``kmeans``, ``codes``, ``refit``, ``objective``, ``error``,
the names of the ``timing`` markers) and of feeding one decoder block (``forward``, ``hessian``) is counted
as :class:`Work`: amounts of the primitives that :class:`Rates` gives speeds for (dense flops,
factorisation flops, streamed bytes, sorted elements, sparse multiply-adds, k-means step elements,
column-loop elements, dispatched operations; ``device_rates`` says where a device's rates come from).
Predicted seconds = sum of amount / rate. Counts follow the code, leading terms only; the
operation counts per column, per k-means step and per refit round were read off a dispatch counter
(``tests/compress/test_cost_model.py`` re-counts them). What a count cannot know before the run is assumed
and named: the k-means iterations Lloyd needs (:data:`ASSUMED_KMEANS_ITERATIONS`).

Validated against measured phase times at several layer shapes in benchmarks/cost_model.md.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from .kmeans import _BYTES_PER_ELEMENT as _KMEANS_BYTES_PER_ELEMENT, _CHUNK_BYTES as _KMEANS_CHUNK_BYTES
from .refit import _CHUNK_BYTES as _REFIT_CHUNK_BYTES
from .settings import CompressSettings
from .sketcher import refit_product

LAYER_PHASES = ("prepare", "kmeans", "codes", "refit", "objective", "error")
# Lloyd iterations per (row, group) problem until the tolerance stops it: 13-15 on the embedded model's
# layers at 4 bits, 18-42 on Gaussian rows (benchmarks/cost_model.md); the default ceiling (100) is rarely reached.
ASSUMED_KMEANS_ITERATIONS = 20


@dataclass(frozen=True)
class Rates:
    """Primitive speeds; the cost model divides its counted work by them."""

    name: str
    gemm: float  # float32 dense matmul, flop/s (Hessians, GPTQ's lazy updates, the objective)
    forward: float  # the block forward's matmuls in the dtype compress runs the model in, flop/s
    factor: float  # Cholesky, inverse-from-Cholesky, Cholesky of one large matrix: flop/s as n grows large
    factor_half: float  # ... and the n at which it runs at half that (Hockney's n-half: blocked LAPACK
    #                     approaches its GEMM speed as the matrix grows)
    small_factor: float  # batched Cholesky of many (G*k)-sized systems (the refit's solve), flop/s
    bandwidth: float  # streamed bytes/s of elementwise work, from main memory
    cache: float  # bytes of the last-level cache: an operand re-read per row (H) beyond it streams from memory
    sort: float  # elements/s of a row-wise sort of ~1k-element rows
    sparse: float  # CSR @ dense, (nonzero x dense column) multiply-adds/s (the refit's A^T H), H in cache
    sparse_stream: float  # the same with H beyond the cache: each nonzero streams its H row from memory
    sparse_out: float  # output elements/s of that product (rows x slots x cols, written whatever the nonzeros)
    scatter: float  # elements/s of scatter_add (the refit's M)
    steps: float  # k-means step elements/s: searches, gathers and arithmetic on [problems, k] tensors
    loop: float  # column-loop elements/s: the code assignment's per-column vector work, per row and column
    op: float  # seconds per dispatched operation in a Python-driven loop of small ones (the column loop)
    source: str
    gpu: bool = False  # a CUDA device: compress runs the model in bf16 and the refit's dense product there

    def factor_rate(self, n: int) -> float:
        """Flop/s of the prepare chain on an ``n x n`` matrix."""
        return self.factor * n / (n + self.factor_half)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Work:
    """Amounts of each primitive (the fields of ``Rates`` without name/source; ``ops`` counts dispatches)."""

    gemm: float = 0.0
    forward: float = 0.0
    factor: float = 0.0
    small_factor: float = 0.0
    cols: int = 0  # H's size: the factorisation's speed and whether the refit's H rows stay in cache depend on it
    bytes: float = 0.0
    sort: float = 0.0
    sparse: float = 0.0
    sparse_out: float = 0.0
    scatter: float = 0.0
    steps: float = 0.0
    loop: float = 0.0
    ops: float = 0.0

    def __add__(self, other: "Work") -> "Work":
        summed = {f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self) if f.name != "cols"}
        return Work(**summed, cols=max(self.cols, other.cols))

    def __mul__(self, times: float) -> "Work":
        return Work(**{f.name: getattr(self, f.name) * times for f in fields(self) if f.name != "cols"}, cols=self.cols)

    def flops(self) -> float:
        return self.gemm + self.forward + self.factor + self.small_factor

    def seconds(self, rates: Rates) -> float:
        # beyond the cache each nonzero streams its H row from memory
        sparse = self.sparse / (rates.sparse if 4.0 * self.cols ** 2 <= rates.cache else rates.sparse_stream)
        factor = self.factor / rates.factor_rate(self.cols) if self.factor else 0.0
        return (self.gemm / rates.gemm + self.forward / rates.forward + factor + sparse
                + self.small_factor / rates.small_factor + self.bytes / rates.bandwidth + self.sort / rates.sort
                + self.sparse_out / rates.sparse_out + self.scatter / rates.scatter + self.steps / rates.steps
                + self.loop / rates.loop + self.ops * rates.op)


def layer_work(rows: int, cols: int, s: CompressSettings, refit_rounds: int | None = None,
               kmeans_iterations: int | None = None, gpu: bool = False) -> dict[str, Work]:
    """Work per phase of ``sketch_layer`` on a ``rows x cols`` weight with settings ``s``. ``refit_rounds`` /
    ``kmeans_iterations``: what a run used (defaults: the settings' rounds, :data:`ASSUMED_KMEANS_ITERATIONS`);
    ``gpu``: on a CUDA device (the Triton code assignment; ``refit_product: auto`` means the dense product)."""
    R, C, G, k = rows, cols, s.groups_per_row, 2 ** s.bits
    rounds = s.lut_refit_rounds if refit_rounds is None else refit_rounds
    iters = ASSUMED_KMEANS_ITERATIONS if kmeans_iterations is None else kmeans_iterations
    assignments = 1 + max(rounds - 1, 0)  # once after k-means, again before every refit round but the first
    return {
        # Cholesky of the damped H (C^3/3), the inverse from it (2C^3/3), Cholesky of the inverse (C^3/3);
        # ~10 C x C float32 copies (clone, act-order gathers, the factors)
        "prepare": Work(factor=4 / 3 * C ** 3, bytes=40.0 * C * C, ops=50, cols=C),
        "kmeans": kmeans_work(R, C, G, k, iters, s.kmeans_restarts),
        "codes": codes_work(R, C, s.block_size, gpu) * assignments,
        # dense GEMMs or the sparse product: the sketcher's own rule for this kind of device
        "refit": refit_work(R, C, G, k, rounds, refit_product(s, "cuda" if gpu else "cpu") == "dense"),
        # tr((W-Q) H (W-Q)^T): one dense product and a few passes over the rows, before and after each round
        "objective": (Work(gemm=2.0 * R * C * C, bytes=32.0 * R * C, ops=11 * math.ceil(R / 1024)) * (rounds + 1)
                      if rounds else Work()),
        "error": Work(gemm=4.0 * R * C * C, bytes=40.0 * R * C, ops=42),  # dW H and W H, the dequant
    }


def kmeans_work(R: int, C: int, G: int, k: int, iters: int, restarts: int) -> Work:
    """One sort of every (row, group), ~360 bytes per weight of float64 prefix sums and passes (counted from
    kmeans.py), then per chunk of rows: greedy k-means++ (k-1 steps of ~106 operations plus a bisection of
    ~28 per halving over the group's n values, on [B, trials] tensors) and Lloyd (46 operations per
    iteration on [B, k] tensors). Their elements cost more with the group's size: the searches take log2(n)
    steps and the gathers land in longer prefix-sum rows (the probe's rate is at n = 128, log2 = 7)."""
    n, weights, problems = C // G, R * C, R * G
    trials = 2 + int(math.log(k))
    chunks = math.ceil(R / max(1, _KMEANS_CHUNK_BYTES // (_KMEANS_BYTES_PER_ELEMENT * C)))
    init_ops = (k - 1) * (106 + 28 * math.ceil(math.log2(n + 1)))
    depth = math.log2(max(n, 2)) / 7
    per_run = Work(steps=float(problems) * (init_ops * trials + 46 * iters * k) * depth,
                   ops=chunks * (init_ops + 46 * iters + 13))
    sort_scale = math.log2(max(n, 2)) / 10  # the probe sorts 1024-element rows
    return Work(sort=weights * sort_scale, bytes=360.0 * weights, ops=31) + per_run * restarts


def codes_work(R: int, C: int, block: int, gpu: bool = False) -> Work:
    """One error-compensated assignment: the lazy updates are R*C^2 flops (multiply-adds over the upper
    triangle). On a CPU (the PyTorch loop): plus the in-block updates, ~6.45 dispatches per column (5 in the
    loop, the rest per 32-column inner block), per column a rank-1 update of up to 32 transposed rows and a
    few [R] vectors. On a GPU (sketchtune_kernels.triton_assign): one launch and ~8 operations per block, the
    kernel's ~8 float operations per weight and block column billed at the fp32 matmul rate (CUDA cores)."""
    if gpu:
        blocks = math.ceil(C / block)
        return Work(gemm=R * C * C + 8.0 * R * C * block, bytes=16.0 * R * C, ops=8 * blocks)
    return Work(gemm=R * C * C + 2.0 * R * C * block, loop=float(R) * C, ops=6.45 * C)


def refit_work(R: int, C: int, G: int, k: int, rounds: int, dense: bool = False) -> Work:
    """Per round and row: A^T H (sparse: C nonzeros times C columns and the output written; dense: one
    one-hot GEMM per group, 2 k C^2 flops), its scatter into the slots x slots normal matrix, a batched
    Cholesky solve, the CSR build (a sort of the row's slots) and ~53 dispatches per row chunk; once per
    layer the dense H w and the shrunk H."""
    if not rounds:
        return Work()
    slots = G * k
    chunks = math.ceil(R / max(1, min(R, _REFIT_CHUNK_BYTES // (4 * slots * C))))
    if dense:  # G GEMMs of [R k, C/G] x [C/G, C]
        product = Work(gemm=2.0 * k * R * C * C, bytes=4.0 * R * slots * C, ops=14 * G * chunks)
    else:
        product = Work(sparse=float(R) * C * C, sparse_out=float(R) * slots * C, sort=float(R) * C, cols=C)
    per_round = product + Work(scatter=float(R) * slots * C, small_factor=R * slots ** 3 / 3,
                     bytes=8.0 * R * slots * C + 4.0 * R * slots * slots, ops=53 * chunks, cols=C)
    return per_round * rounds + Work(gemm=2.0 * R * C * C, bytes=20.0 * C * C, ops=20)


def block_work(hidden: int, intermediate: int, heads: int, kv_heads: int, tokens: int, seq_len: int,
               forward_bytes_per_value: int = 4) -> dict[str, Work]:
    """Feeding one Llama-style decoder block its calibration tokens (the layer pipeline with kept outputs:
    every module computes once, docs/architecture.md) and collecting its four Hessians (q/k/v's, o's,
    gate/up's inputs: ``hidden``; down's: ``intermediate``) in float32."""
    kv = hidden * kv_heads // heads
    params = hidden * (hidden + 2 * kv) + hidden * hidden + 3 * hidden * intermediate
    # QK^T and AV, 2 flops per multiply-add, the causal mask's half counted too (measured on CPU: SDPA's time
    # matches the full count at the matmul rate; on a GPU, where flash attention skips it, this over-counts
    # a phase that is ~7% of a Llama-3-8B block)
    attention = 4.0 * tokens * seq_len * hidden
    # norms, rotary, SiLU*up, residuals and the kept outputs copied back: ~(20 h + 10 i) values per token
    elementwise = float(tokens) * (20 * hidden + 10 * intermediate) * forward_bytes_per_value
    hess_cols = (hidden, hidden, hidden, intermediate)
    return {
        "forward": Work(forward=2.0 * tokens * params + attention, bytes=elementwise),
        "hessian": Work(gemm=sum(2.0 * tokens * c * c for c in hess_cols),
                        bytes=sum(12.0 * tokens * c for c in hess_cols)),
    }


def block_layers(hidden: int, intermediate: int, heads: int, kv_heads: int) -> list[tuple[int, int]]:
    """(rows, cols) of a Llama-style block's seven linears: q, k, v, o, gate, up, down."""
    kv = hidden * kv_heads // heads
    return [(hidden, hidden), (kv, hidden), (kv, hidden), (hidden, hidden),
            (intermediate, hidden), (intermediate, hidden), (hidden, intermediate)]


def predict_compress(config, s: CompressSettings, rates: Rates) -> dict:
    """Predicted seconds per phase (and ``total``) for compressing a Llama-style model with ``config`` (a
    transformers config: hidden_size, intermediate_size, num_attention_heads, num_key_value_heads,
    num_hidden_layers) on a device with ``rates``, one process. Leaves out loading and saving."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    per_block = block_seconds(config.hidden_size, config.intermediate_size, heads, kv_heads, s, rates)
    seconds = {p: v * config.num_hidden_layers for p, v in per_block.items()}
    seconds["total"] = sum(seconds.values())
    return seconds


def block_seconds(hidden: int, intermediate: int, heads: int, kv_heads: int, s: CompressSettings, rates: Rates,
                  forward_bytes: int | None = None) -> dict[str, float]:
    """Predicted seconds per phase for one Llama-style block with the calibration of ``s``: its feeds and
    Hessians, and its seven linears sketched. ``forward_bytes``: bytes per activation value (default: bf16
    on a GPU, float32 on a CPU, as compress runs the model)."""
    forward_bytes = forward_bytes or (2 if rates.gpu else 4)
    seconds = {p: w.seconds(rates) for p, w in block_work(hidden, intermediate, heads, kv_heads,
                                                          s.num_samples * s.seq_len, s.seq_len, forward_bytes).items()}
    for rows, cols in block_layers(hidden, intermediate, heads, kv_heads):
        for p, w in layer_work(rows, cols, s, gpu=rates.gpu).items():
            seconds[p] = seconds.get(p, 0.0) + w.seconds(rates)
    return seconds


def layer_flops(rows: int, cols: int, s: CompressSettings, refit_rounds: int | None = None,
                kmeans_iterations: int | None = None) -> dict[str, float]:
    """Floating-point operations per phase (dense, factorisation and sparse multiply-adds; a multiply-add =
    2 for dense products, 1 for the sparse one): divided by a phase's measured time, the achieved rate."""
    return {p: w.flops() + w.sparse for p, w in layer_work(rows, cols, s, refit_rounds, kmeans_iterations).items()}


def hessian_flops(tokens: int, cols: int) -> float:
    """``X^T X`` over the calibration tokens: once per group of linears that share an input."""
    return 2.0 * tokens * cols ** 2
