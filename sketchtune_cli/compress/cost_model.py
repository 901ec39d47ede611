"""Arithmetic per sketcher phase for one layer (issue 21's cost model): divided by a phase's measured time
(``timing``) it gives the achieved rate, i.e. how far each phase runs from the hardware's speed.

Counts are floating-point operations (a multiply-add = 2) of the dominant terms, leading order only; the
sparse refit product and the scatters count one add per element. Bytes are not modelled: at these shapes
the dense products are compute-bound and the refit's sparse product reads one row of H per nonzero
(``rows * cols`` rows of ``cols`` floats), which is what bounds it.
"""
from __future__ import annotations

from .settings import CompressSettings


def layer_flops(rows: int, cols: int, s: CompressSettings, refit_rounds: int | None = None,
                kmeans_iterations: int | None = None) -> dict[str, float]:
    """Leading-order flops per phase for sketching a ``rows x cols`` layer with settings ``s``;
    ``refit_rounds`` / ``kmeans_iterations``: what the run used (defaults: the settings' maxima)."""
    k = 2 ** s.bits
    slots = s.groups_per_row * k
    rounds = s.lut_refit_rounds if refit_rounds is None else refit_rounds
    iters = s.kmeans_iters if kmeans_iterations is None else kmeans_iterations
    assignments = 1 + max(rounds - 1, 0)  # once after k-means, again before every refit round but the first
    return {
        # Cholesky of the damped H (C^3/3), the inverse from it (~2C^3/3), Cholesky of H^-1 (C^3/3)
        "prepare": 4 / 3 * cols ** 3,
        # per iteration and start: distances to k centroids and the weighted centroid update, per weight
        "kmeans": 4.0 * iters * s.kmeans_restarts * rows * cols * k,
        # GPTQ: the lazy trailing updates sum to rows*cols^2 multiply-adds over the upper triangle (= rows*cols^2
        # flops), the in-block updates rows*cols*block, the nearest-value search rows*cols*k
        "codes": assignments * (rows * cols ** 2 + 2.0 * rows * cols * s.block_size + rows * cols * k),
        # per round: sparse A^T H (rows*cols^2 adds), the M scatter (rows*slots*cols), the batched Cholesky
        # solve (rows*slots^3/3); once: H w (2 rows*cols^2)
        "refit": (rounds * (rows * cols ** 2 + rows * slots * cols + rows * slots ** 3 / 3) + 2.0 * rows * cols ** 2
                  if rounds else 0.0),
        "objective": (rounds + 1) * 2.0 * rows * cols ** 2 if rounds else 0.0,
        "error": 4.0 * rows * cols ** 2,  # dW H and W H
    }


def hessian_flops(tokens: int, cols: int) -> float:
    """``X^T X`` over the calibration tokens: once per group of linears that share an input."""
    return 2.0 * tokens * cols ** 2
