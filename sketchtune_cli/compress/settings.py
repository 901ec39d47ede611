"""`compress:` section of the YAML config (docs/method.md §2). Marked (inferred) defaults are not in the paper."""
from typing import Literal, Optional

from pydantic import Field

from ..settings_base import Section


class CompressSettings(Section):
    bits: Literal[2, 3, 4] = 4
    groups_per_row: int = Field(4, ge=1, description="LUTs per row; must divide every sketched layer's in_features")
    calib: str = Field("c4", description="calibration data: a HF dataset name (c4, wikitext...), a .txt/.json/.jsonl file or its http(s) URL, or 'builtin'")
    calib_encoding: str = Field("utf-8", description="text encoding of a local calibration file (bytes invalid in it are refused, never replaced)")
    num_samples: int = Field(128, ge=1, description="calibration sequences")
    seq_len: int = Field(2048, ge=8, description="tokens per calibration sequence")
    seed: int = 0
    percdamp: float = Field(0.1, ge=0, description="Hessian damping as a fraction of mean(diag(H)) (inferred)")
    exponent: float = Field(0.0, ge=0, description="k-means sample weight d_j^-p (LeanQuant's p). 0: unweighted, the best start for the LUT refit on held-out text; LeanQuant's p = 4 (docs/method.md §2) is for k-means LUTs alone (lut_refit_rounds 0)")
    act_order: bool = Field(True, description="code columns in descending diag(H) order (inferred)")
    block_size: int = Field(128, ge=1, description="GPTQ lazy-update block size")
    kmeans_iters: int = Field(100, ge=1)
    kmeans_init: Literal["kmeans++", "quantile"] = "kmeans++"
    kmeans_restarts: int = Field(1, ge=1, description="k-means++ starts per (row, group), each keeping its lowest-objective run (scikit-learn's n_init). 8 starts lowered the layer error ~5% on the embedded model but not the held-out perplexity (2 seeds), hence 1")
    error_compensation: bool = Field(True, description="GPTQ-style error feedback while assigning codes")
    refit_shrinkage: float = Field(0.5, ge=0, le=1, description="LUT refit objective: H shrunk toward diag(H) by this weight (0 = exact H; the off-diagonal correlations of a small or off-domain calibration set overfit)")
    refit_weighting: Literal["hessian", "none"] = Field("hessian", description="LUT refit objective: the (shrunk) calibration Hessian, or 'none' = plain least squares on the weights (an ablation: no Hessian weighting in the LUT fit)")
    refit_product: Literal["auto", "sparse", "dense"] = Field("auto", description="how the LUT refit forms A^T H: 'sparse' (one CSR product, rows*cols^2 adds; fastest on CPU), 'dense' (one GEMM per row-group, 2^(b+1) times the flops at a GPU's dense rate); auto = dense on CUDA, sparse on CPU. Same normal equations to float rounding")
    lut_refit_rounds: int = Field(6, ge=0, description="least-squares LUT refits after code assignment (each later round re-assigns codes first); 0 = k-means LUTs only")
    refit_tolerance: float = Field(0.0, ge=0, description="stop the LUT refit rounds early once a round lowers the refit objective tr((W-Q) H (W-Q)^T) by less than this fraction (a round that raised it is undone); 0 = always run lut_refit_rounds. On the embedded model every layer still gained >= 0.2% in round 6 (1e-3 would stop none of the default 6 rounds) and 1e-2 saved ~0.8 of 6 rounds for +0.4% objective; a threshold also turns float noise (another world size) into a different round count, hence off by default (benchmarks/compress_profile.md)")
    distill_steps: int = Field(0, ge=0, description="after the layer-wise build, train the LUTs (codes frozen) for this many steps so the sketch's next-token distributions match the dense model's (KL to the teacher) on the calibration sequences; 0 = off; worth it at 2-3 bits (benchmarks/distill.md)")
    distill_lr: float = Field(1e-4, gt=0, description="learning rate of the distillation (AdamW, constant after warm-up)")
    distill_batch_size: int = Field(8, ge=1, description="calibration sequences per distillation step")
    distill_micro_batch_size: int = Field(2, ge=1, description="sequences per forward; distill_batch_size must be a multiple of it x processes (under torchrun each process takes whole micro-batches of every step)")
    distill_warmup_steps: int = Field(10, ge=0)
    distill_gradient_checkpointing: bool = Field(False, description="recompute the student's block activations in the distillation's backward: the lower-memory option `run --dry-run` names when distilling a large model does not fit the device")
    distill_teacher: Literal["online", "topk"] = Field("online", description="online: the dense teacher runs beside the student at every step (exact KL); topk: one teacher pass first keeps its distill_topk most likely next tokens per calibration position (to the .partial directory), then the teacher leaves memory and the KL is taken over those tokens plus one bucket for the rest (the lower-memory option when teacher and student don't fit together)")
    distill_topk: int = Field(64, ge=1, description="next tokens kept per position when distill_teacher=topk")
    targets: Optional[list[str]] = Field(None, description="module name patterns to sketch (default: all linears in decoder blocks)")
    ignore: list[str] = Field(default_factory=list, description="module name patterns to keep dense")
    lut_dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="dtype of the dense tensors saved")
    device: Literal["auto", "cuda", "cpu"] = "auto"
    offload_activations: bool = False


# The config sections the stage reads, and the keys among them that do not change its results (its
# ``interface.STAGE`` uses these, and so does a resume fingerprint where the stage resumes).
SECTIONS = ("model", "compress")
# Where or how fast compress runs, not what it computes: a resume may change them, `run` ignores them.
RESULT_FREE = {"compress": ("device", "offload_activations")}
