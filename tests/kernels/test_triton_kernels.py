"""Triton kernels (run by the interpreter on CPU, see conftest) against the PyTorch references.

Every output starts NaN-filled (``out=``) and internal scratch buffers are NaN-poisoned, so an element a
kernel forgets to write fails the comparison. Shapes are small: the interpreter executes each program in
Python.
"""
import pytest
import torch

from sketchtune_kernels import (dequant_ref, lut_dequant, lut_grad, lut_grad_from_io, lut_grad_from_io_ref,
                                lut_grad_ref, lut_matmul, lut_matmul_ref, pack_codes)
from sketchtune_kernels.triton_common import interpreting

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (rows, groups_per_row, group_size): odd sizes, groups not a multiple of 8 (3-bit straddles), one group
# longer than a tile (so the kernels loop and splits really split).
SHAPES = [(5, 3, 7), (33, 2, 40), (17, 4, 13), (70, 1, 129)]
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


@pytest.fixture(autouse=True)
def _poison_scratch(monkeypatch):
    monkeypatch.setenv("SKETCHTUNE_KERNEL_POISON", "1")


def test_runs_under_the_interpreter():
    assert interpreting()


def _layer(rows, groups, n, bits, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**bits, (rows, groups, n), generator=gen, dtype=torch.uint8)
    lut = torch.randn(rows, groups, 2**bits, generator=gen).to(dtype)
    return lut, pack_codes(codes, bits)


def _strided(t: torch.Tensor) -> torch.Tensor:
    """Same values, non-contiguous: every other element of a buffer twice as long in the last dim."""
    big = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    big[..., ::2] = t
    return big[..., ::2]


def _nan(shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype)


def _close(got, expect, dtype):
    tol = TOL[dtype]
    torch.testing.assert_close(got.float(), expect.float(), rtol=tol, atol=tol * max(1.0, expect.abs().max().item()))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_dequant_at_the_gpu_launch_config(bits, monkeypatch):
    """The interpreter normally runs its own block sizes; the GPU's (few rows, long column runs) must mask odd
    shapes just as well."""
    from sketchtune_kernels import triton_dequant

    monkeypatch.setattr(triton_dequant, "interpreting", lambda: False)
    for rows, groups, n in [(13, 3, 57), (9, 2, 600)]:
        lut, codes = _layer(rows, groups, n, bits, torch.float32, seed=bits)
        got = lut_dequant(lut, codes, bits, groups * n, backend="triton", dtype=torch.bfloat16,
                          out=_nan((rows, groups * n), torch.bfloat16))
        exact = dequant_ref(lut, codes, bits, groups * n)
        # Compiled Triton rounds fp32 -> bf16 to nearest-even like torch (scripts/gpu_check.py checks that on a
        # GPU); the interpreter truncates (triton/runtime/interpreter.py, cast_impl). Either way, every element
        # is the right LUT entry.
        truncated = (exact.view(torch.int32) & ~0xFFFF).view(torch.float32).to(torch.bfloat16)
        assert torch.equal(got, exact.to(torch.bfloat16)) or torch.equal(got, truncated)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_dequant(bits, dtype, shape):
    rows, groups, n = shape
    lut, codes = _layer(rows, groups, n, bits, dtype, seed=bits + n)
    cols = groups * n
    got = lut_dequant(lut, codes, bits, cols, backend="triton", out=_nan((rows, cols), dtype))
    assert torch.equal(got, dequant_ref(lut, codes, bits, cols))  # a gather: exact
    # strided lut/codes and a transposed out
    out_t = _nan((cols, rows), dtype).t()
    got = lut_dequant(_strided(lut), _strided(codes), bits, cols, backend="triton", out=out_t)
    assert torch.equal(got, dequant_ref(lut, codes, bits, cols))
    # training's path: an fp32 LUT written straight into the activations' dtype, cast in the kernel
    got = lut_dequant(lut.float(), codes, bits, cols, backend="triton", dtype=dtype, out=_nan((rows, cols), dtype))
    assert torch.equal(got, dequant_ref(lut.float(), codes, bits, cols).to(dtype))


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_lut_grad(bits, dtype, shape):
    rows, groups, n = shape
    _, codes = _layer(rows, groups, n, bits, dtype, seed=bits * n)
    grad_w = torch.randn(groups * n, rows).to(dtype).t()  # non-contiguous on purpose
    expect = lut_grad_ref(grad_w, codes, bits, groups)
    for splits in (None, 3):
        from sketchtune_kernels.triton_lut_grad import lut_grad_triton

        got = lut_grad_triton(grad_w, codes, bits, groups, out=_nan(expect.shape, torch.float32), splits=splits)
        _close(got, expect, torch.float32)
    got = lut_grad(grad_w, _strided(codes), bits, groups, backend="triton")
    assert got.dtype == torch.float32
    _close(got, expect, torch.float32)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_lut_matmul(bits, dtype, shape):
    rows, groups, n = shape
    cols = groups * n
    lut, codes = _layer(rows, groups, n, bits, dtype, seed=bits + 7 * n)
    x = _strided(torch.randn(2, 3, cols).to(dtype))
    expect = lut_matmul_ref(x.float(), lut.float(), codes, bits, cols)
    got = lut_matmul(x, lut, codes, bits, cols, backend="triton", out=_nan((2, 3, rows), dtype))
    assert got.shape == (2, 3, rows) and got.dtype == dtype
    _close(got, expect, dtype)


@pytest.mark.parametrize("tokens", [1, 16, 37])
@pytest.mark.parametrize("bits", [3, 4])
def test_lut_matmul_tokens_splits_and_layouts(tokens, bits):
    """Decode-sized and ragged token counts, K split across programs, transposed x and out."""
    from sketchtune_kernels.triton_matmul import lut_matmul_triton

    rows, groups, n = 19, 2, 99
    cols = groups * n
    lut, codes = _layer(rows, groups, n, bits, torch.float32, seed=tokens)
    x = torch.randn(cols, tokens).t()
    expect = lut_matmul_ref(x, lut, codes, bits, cols)
    for splits in (1, 2, 4):
        out = _nan((rows, tokens), torch.float32).t()
        _close(lut_matmul_triton(x, lut, codes, bits, cols, out=out, splits=splits), expect, torch.float32)


def test_decode_launch_default_is_the_first_formula():
    """GPU_DECODE's default reproduces the fixed decode launch it replaced: 16/64/64, 4 warps, K split until
    about 2 programs per SM with at least 4 BLOCK_K steps per split."""
    from sketchtune_kernels.triton_matmul import _decode_launch

    for tokens, rows, cols, sms in [(1, 4096, 4096, 132), (16, 4096, 14336, 132), (16, 14336, 4096, 132),
                                    (7, 19, 198, 4), (1, 1000, 100, 108)]:
        programs = -(-tokens // 16) * -(-rows // 64)
        splits = max(1, min(-(-cols // 256), -(-2 * sms // programs)))
        assert _decode_launch(tokens, rows, cols, sms, (64, 64, 4, 2)) == (16, 64, 64, splits, 4)
        assert _decode_launch(tokens, rows, cols, sms) == _decode_launch(tokens, rows, cols, sms, (64, 64, 4, 2))


@pytest.mark.parametrize("cfg", [(16, 128, 2, 8), (32, 256, 4, 4), (128, 64, 8, 1)])
def test_lut_matmul_at_sweep_decode_configs(cfg, monkeypatch):
    """Launches as scripts/sweep_matmul_blocks.py sets GPU_DECODE (other blocks, warps, splits) mask a ragged
    layer just as well."""
    from sketchtune_kernels import triton_matmul

    monkeypatch.setattr(triton_matmul, "_config",
                        lambda tokens, rows, cols, device: triton_matmul._decode_launch(tokens, rows, cols, 4, cfg))
    rows, groups, n = 19, 2, 700
    cols = groups * n
    assert triton_matmul._decode_launch(1, rows, cols, 4, cfg)[3] > 1  # K really split
    lut, codes = _layer(rows, groups, n, 4, torch.bfloat16, seed=cfg[0])
    for tokens in (1, 16):
        x = torch.randn(tokens, cols).to(torch.bfloat16)
        expect = lut_matmul_ref(x.float(), lut.float(), codes, 4, cols)
        _close(lut_matmul(x, lut, codes, 4, cols, backend="triton", out=_nan((tokens, rows), torch.bfloat16)),
               expect, torch.bfloat16)


def test_lut_matmul_lut_dtype_differs_from_x():
    """The LUT is cast to x's dtype, as the reference casts W_hat."""
    lut, codes = _layer(9, 2, 24, 4, torch.float32, seed=5)
    x = torch.randn(4, 48).to(torch.bfloat16)
    expect = lut_matmul_ref(x.float(), lut.to(torch.bfloat16).float(), codes, 4, 48)
    _close(lut_matmul(x, lut, codes, 4, 48, backend="triton"), expect, torch.bfloat16)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", [1, 70])
def test_lut_grad_from_io(bits, dtype, tokens):
    from sketchtune_kernels.triton_lut_grad import lut_grad_from_io_triton

    rows, groups, n = 21, 2, 70
    _, codes = _layer(rows, groups, n, bits, dtype, seed=bits + tokens)
    grad_y = torch.randn(rows, tokens).to(dtype).t()
    x = _strided(torch.randn(tokens, groups * n).to(dtype))
    expect = lut_grad_from_io_ref(grad_y, x, codes, bits, groups)
    for splits in (None, 2):
        got = lut_grad_from_io_triton(grad_y, x, codes, bits, groups, out=_nan(expect.shape, torch.float32),
                                      splits=splits)
        _close(got, expect, torch.float32)
    _close(lut_grad_from_io(grad_y.unsqueeze(0), x.unsqueeze(0), codes, bits, groups, backend="triton"),
           expect, torch.float32)
    materialized = lut_grad_from_io(grad_y.unsqueeze(0), x.unsqueeze(0), codes, bits, groups, backend="triton",
                                    out=_nan(expect.shape, torch.float32), materialize=True)
    _close(materialized, expect, torch.float32)


def test_lut_grads_are_deterministic():
    from sketchtune_kernels.triton_lut_grad import lut_grad_from_io_triton, lut_grad_triton

    _, codes = _layer(40, 2, 130, 4, torch.float32, seed=9)
    grad_w = torch.randn(40, 260) * 1e3
    runs = [lut_grad_triton(grad_w, codes, 4, 2, splits=3) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    grad_y, x = torch.randn(33, 40), torch.randn(33, 260)
    runs = [lut_grad_from_io_triton(grad_y, x, codes, 4, 2, splits=3) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


def test_empty_and_bad_inputs():
    lut, codes = _layer(4, 2, 8, 4, torch.float32, seed=0)
    assert lut_matmul(torch.randn(0, 16), lut, codes, 4, 16, backend="triton").shape == (0, 4)
    got = lut_grad_from_io(torch.randn(0, 4), torch.randn(0, 16), codes, 4, 2, backend="triton")
    assert torch.equal(got, torch.zeros(4, 2, 16))
    with pytest.raises(ValueError):
        lut_dequant(lut, codes[..., :3], 4, 16, backend="triton")
    with pytest.raises(ValueError):
        lut_matmul(torch.randn(2, 15), lut, codes, 4, 16, backend="triton")
    with pytest.raises(ValueError):
        lut_dequant(lut, codes, 4, 16, backend="triton", out=torch.empty(4, 16, dtype=torch.float16))


@pytest.mark.slow
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_larger_layers(bits):
    rows, groups, n = 300, 4, 250
    cols = groups * n
    lut, codes = _layer(rows, groups, n, bits, torch.bfloat16, seed=bits)
    x = torch.randn(50, cols).to(torch.bfloat16)
    _close(lut_matmul(x, lut, codes, bits, cols, backend="triton"),
           lut_matmul_ref(x.float(), lut.float(), codes, bits, cols), torch.bfloat16)
    grad_w = torch.randn(rows, cols)
    _close(lut_grad(grad_w, codes, bits, groups, backend="triton"), lut_grad_ref(grad_w, codes, bits, groups),
           torch.float32)


# ---- compress's code assignment (triton_assign.py) ---------------------------------------------

def _assign_problem(rows, n, groups, bits, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(512, n, generator=gen) * (torch.rand(n, generator=gen) * 3 + 0.1)
    H = X.T @ X / 512 + 0.1 * torch.eye(n)
    upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    weights = torch.randn(rows, n, generator=gen) * 0.05
    lut = torch.sort(torch.randn(rows, groups, 2 ** bits, generator=gen) * 0.05, -1).values
    mids = torch.full_like(lut, float("inf"))
    mids[..., :-1] = (lut[..., 1:] + lut[..., :-1]) * 0.5
    group_of = torch.randint(0, groups, (n,), generator=gen, dtype=torch.int32)
    return weights, upper, group_of, lut, mids


@pytest.mark.parametrize("rows,n,groups,bits", [(5, 7, 1, 4), (70, 128, 4, 4), (33, 40, 3, 3), (17, 100, 2, 2)])
def test_assign_block_kernel_matches_the_reference(rows, n, groups, bits):
    from sketchtune_kernels import assign_block_ref, lut_assign_block

    weights, upper, group_of, lut, mids = _assign_problem(rows, n, groups, bits)
    codes, errs = lut_assign_block(weights, upper, group_of, lut, mids, backend="triton")
    ref_codes, ref_errs = assign_block_ref(weights, upper, group_of, lut, mids)
    assert (codes == ref_codes).float().mean() >= 0.999  # a weight within rounding of a midpoint may flip
    same = codes == ref_codes
    torch.testing.assert_close(errs[same], ref_errs[same], rtol=1e-4, atol=1e-5)
    assert codes.dtype == torch.int32 and int(codes.min()) >= 0 and int(codes.max()) < 2 ** bits


def test_sketcher_block_path_through_the_kernel_gives_the_cpu_loops_codes():
    from sketchtune_cli.compress import sketcher
    from sketchtune_cli.compress.settings import CompressSettings

    gen = torch.Generator().manual_seed(0)
    rows, cols, groups = 48, 160, 4
    X = torch.randn(1024, cols, generator=gen) * (torch.rand(cols, generator=gen) * 3 + 0.1)
    W = torch.randn(rows, cols, generator=gen) * 0.05
    prep = sketcher._prepare(W, X.T @ X / 1024, CompressSettings(groups_per_row=groups))
    lut = torch.sort(torch.randn(rows, groups, 16, generator=gen) * 0.05, -1).values
    cpu = sketcher._assign_compensated(W.clone(), prep, lut, 64)
    kernel = sketcher.assign_compensated_blocks(W.clone(), prep, lut, 64, backend="triton")
    assert (kernel == cpu).float().mean() >= 0.999
