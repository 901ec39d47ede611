"""The block pipeline on tiny random models: sub-groups, sequential calibration, conversion, offload."""
from __future__ import annotations

import pytest
import torch

from helpers import tiny_llama
from sketchtune_cli.compress.blocks import capture_block_inputs, sequential_groups
from sketchtune_cli.compress.pipeline import check_targets, compress_model
from sketchtune_cli.compress.settings import CompressSettings
from sketchtune_cli.compress.sketcher import sketch_layer
from sketchtune_cli.errors import UserError
from sketchtune_cli.sketch import decoder_layers, find_target_linears, replace_with_sketches

# G=1 and 2 bits: 16 columns per group with 16 LUT entries would reproduce the tiny weights exactly.
SETTINGS = CompressSettings(bits=2, groups_per_row=1, kmeans_iters=15, num_samples=6, seq_len=24)


def calib_ids(n: int = 6, length: int = 24, vocab: int = 128) -> torch.Tensor:
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_true_sequential_groups(family):
    model = tiny_llama(0, family=family)
    blocks_name, blocks = decoder_layers(model)
    inputs, block_kwargs = capture_block_inputs(model, blocks_name, calib_ids(1), "cpu", offload=False)
    kwargs = block_kwargs[1]
    assert {"position_embeddings", "position_ids"} <= set(kwargs) and len(block_kwargs) == 2
    linears = {n: m for n, m in find_target_linears(model).items() if n.startswith(f"{blocks_name}.1.")}
    groups = sequential_groups(blocks[1], linears, inputs[0], kwargs, "cpu")
    short = [[n.rsplit(".", 1)[1] for n in g] for g in groups]
    assert short == [["q_proj", "k_proj", "v_proj"], ["o_proj"], ["gate_proj", "up_proj"], ["down_proj"]]


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_compress_converts_to_the_sketched_weights(family):
    model = tiny_llama(0, family=family)
    dense = tiny_llama(0, family=family)
    ids = calib_ids()
    result = compress_model(model, ids, SETTINGS)
    targets = find_target_linears(model)
    assert set(result.sketches) == set(targets) and set(result.layers) == set(targets)
    for stats in result.layers.values():
        assert 0 < stats["rel_error"] < 0.5 and stats["damping"] > 0 and stats["seconds"] >= 0
    with torch.no_grad():
        w_hat_logits = model(ids).logits
        dense_logits = dense(ids).logits
    if family == "qwen2":
        assert torch.equal(model.model.layers[0].self_attn.q_proj.bias, dense.model.layers[0].self_attn.q_proj.bias)
    replace_with_sketches(model, result.sketches)
    with torch.no_grad():
        sketch_logits = model(ids).logits
    # the LUTs are bf16-exact, so W_hat in the model and the sketch agree to float rounding
    assert torch.allclose(sketch_logits, w_hat_logits, atol=1e-4)
    rel = (sketch_logits - dense_logits).norm() / dense_logits.norm()
    assert 0 < rel < 0.3


def mixed_attention_qwen2():
    """Block 0 full attention, block 1 a 4-token sliding window: the blocks need different masks."""
    return tiny_llama(0, family="qwen2", layer_types=["full_attention", "sliding_attention"], sliding_window=4,
                      use_sliding_window=True, attn_implementation="eager")


def test_every_block_gets_its_own_attention_mask():
    model = mixed_attention_qwen2()
    blocks_name, _ = decoder_layers(model)
    _, block_kwargs = capture_block_inputs(model, blocks_name, calib_ids(1), "cpu", offload=False)
    full, sliding = block_kwargs[0]["attention_mask"], block_kwargs[1]["attention_mask"]
    assert full.shape == sliding.shape and not torch.equal(full, sliding)


@pytest.mark.parametrize("make", [tiny_llama, mixed_attention_qwen2], ids=["llama", "qwen2-mixed-attention"])
def test_each_layer_is_calibrated_on_the_sketched_layers_before_it(make):
    """Every Hessian the sketcher saw equals the Hessian of that layer's inputs in the FINAL sketched
    model: each layer was calibrated with everything before it (blocks and sub-groups) already sketched,
    and with the block's own attention mask."""
    model = make()
    ids = calib_ids()
    seen = []

    def recording(W, H, settings):
        seen.append(H.clone())
        return sketch_layer(W, H, settings)

    compress_model(model, ids, SETTINGS, sketch_fn=recording)
    targets = find_target_linears(model)
    xs = {n: [] for n in targets}
    handles = [m.register_forward_pre_hook(lambda _m, a, n=n: xs[n].append(a[0].reshape(-1, a[0].shape[-1])))
               for n, m in targets.items()]
    with torch.no_grad():
        for row in ids:
            model(row.unsqueeze(0))
    for h in handles:
        h.remove()
    assert len(seen) == len(targets)
    for H, name in zip(seen, targets):
        X = torch.cat(xs[name]).double()
        expected = 2 * X.T @ X / X.shape[0]
        assert torch.allclose(H.double(), expected, rtol=1e-4, atol=1e-5 * expected.abs().max()), name


def test_offloaded_activations_give_the_same_sketch():
    a = compress_model(tiny_llama(0), calib_ids(), SETTINGS)
    b = compress_model(tiny_llama(0), calib_ids(), SETTINGS.model_copy(update={"offload_activations": True}))
    for name in a.sketches:
        assert torch.equal(a.sketches[name].codes, b.sketches[name].codes)
        assert torch.equal(a.sketches[name].lut, b.sketches[name].lut)


def test_progress_callback_sees_every_layer_in_order():
    model = tiny_llama(0)
    calls = []
    compress_model(model, calib_ids(), SETTINGS, on_layer=lambda b, nb, name, s: calls.append((b, nb, name)))
    assert [c[2] for c in calls] == list(find_target_linears(model))
    assert calls[0][:2] == (0, 2) and calls[-1][:2] == (1, 2)


def test_groups_per_row_must_divide_every_layer():
    model = tiny_llama(0)
    with pytest.raises(UserError, match="groups_per_row=3 does not divide in_features=64"):
        check_targets(find_target_linears(model), CompressSettings(groups_per_row=3))
