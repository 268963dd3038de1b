"""WanModel (the Wan2.2 DiT) against the official implementation's outputs, plus its contracts.

python -m pytest tests/test_model_dit.py -q
The reference tensors (tests/fixtures, see its README.md) were computed by the official
wan/modules/model.py in float32 on CPU; every output and activation must match to 1e-5.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from model import DIT_CONFIGS, DiTConfig, WanModel, apply_rope, rope_cos_sin, sinusoidal_embedding

TOL = 1e-5


def oracle_config(oracle_dir):
    c = json.loads((oracle_dir / "tiny_dit_config.json").read_text())
    return DiTConfig(
        **{
            k: tuple(v) if isinstance(v, list) else v
            for k, v in c.items()
            if k in DiTConfig.__dataclass_fields__
        }
    )


@pytest.fixture(scope="module")
def oracle(oracle_dir):
    model = WanModel(oracle_config(oracle_dir)).eval()
    model.load_state_dict(load_file(oracle_dir / "tiny_dit.safetensors"), strict=True)
    return model, load_file(oracle_dir / "tiny_dit_reference.safetensors")


def maxdiff(a, b):
    return (a - b).abs().max().item()


def test_oracle_i2v_output_and_activations(oracle):
    model, ref = oracle
    acts = {}
    hooks = [
        model.patch_embedding.register_forward_hook(
            lambda m, i, o: acts.__setitem__("patch_embedding", o)
        ),
        model.head.register_forward_hook(lambda m, i, o: acts.__setitem__("head", o)),
    ]
    hooks += [
        b.register_forward_hook(lambda m, i, o, n=n: acts.__setitem__(f"blocks.{n}", o))
        for n, b in enumerate(model.blocks)
    ]
    with torch.no_grad():
        out = model(ref["i2v.x"][None], ref["i2v.t"], [ref["i2v.context"]], int(ref["i2v.seq_len"]))
        e, e0 = model.time_embed(ref["i2v.t"])
        acts["time_embedding"], acts["time_projection"] = e, e0.flatten(2)
        acts["text_embedding"] = model.embed_text([ref["i2v.context"]], "cpu")
    for h in hooks:
        h.remove()
    assert out.shape == (1, 48, 3, 6, 8) and out.dtype == torch.float32
    names = (
        "patch_embedding",
        "time_embedding",
        "time_projection",
        "text_embedding",
        "blocks.0",
        "blocks.1",
        "head",
    )
    for name in names:
        assert acts[name].shape == ref[f"i2v.act.{name}"].shape, name
        assert maxdiff(acts[name], ref[f"i2v.act.{name}"]) < TOL, name
    assert maxdiff(out[0], ref["i2v.out"]) < TOL


def test_oracle_t2v_scalar_timestep(oracle):
    model, ref = oracle
    with torch.no_grad():
        out = model(ref["t2v.x"][None], ref["t2v.t"], [ref["t2v.context"]], int(ref["t2v.seq_len"]))
        per_token = model(ref["t2v.x"][None], ref["t2v.t"].expand(1, 36), [ref["t2v.context"]])
    assert maxdiff(out[0], ref["t2v.out"]) < TOL
    assert torch.equal(out, per_token)


def test_oracle_batch2_padded_tokens_and_contexts(oracle):
    model, ref = oracle
    x = torch.stack([ref["batch2.x0"], ref["batch2.x1"]])
    ctx = [ref["batch2.context0"], ref["batch2.context1"]]
    with torch.no_grad():
        out = model(x, ref["batch2.t"], ctx, seq_len=int(ref["batch2.seq_len"]))  # S = 40 > L = 36
        # the same contexts as one zero-padded tensor, t given for the 36 real tokens only
        padded = torch.stack([torch.nn.functional.pad(c, (0, 0, 0, 32 - len(c))) for c in ctx])
        out_tensor_ctx = model(x, ref["batch2.t"][:, :36], padded)
    assert maxdiff(out[0], ref["batch2.out0"]) < TOL and maxdiff(out[1], ref["batch2.out1"]) < TOL
    # key padding is masked, so dropping the pad tokens changes nothing
    assert maxdiff(out_tensor_ctx, out) < TOL


def test_position_encodings_match_reference(oracle):
    _, ref = oracle
    # the first 64 rows of the official (1024, 64) table: frame pairs 0:22, height 22:43,
    # width 43:64
    grids = ((64, 1, 1), (1, 64, 1), (1, 1, 64))
    parts = [rope_cos_sin(grid, 128, 64, "cpu") for grid in grids]
    spans = ((0, 22), (22, 43), (43, 64))
    table = torch.cat(
        [torch.stack([cos, sin], -1)[:, a:b] for (cos, sin), (a, b) in zip(parts, spans)], 1
    )
    assert maxdiff(table, ref["rope.freqs_real"]) < 1e-12
    assert maxdiff(sinusoidal_embedding(ref["sinusoidal.t"], 256), ref["sinusoidal.emb"]) < 1e-12


@pytest.fixture(scope="module")
def meta_5b():
    with torch.device("meta"):
        return WanModel(DIT_CONFIGS["5b"])


def test_full_size_param_count_and_structure_on_meta(meta_5b):
    assert (
        sum(p.numel() for p in meta_5b.parameters()) == 4_999_787_712
    )  # the official WanModel (fixture)
    assert isinstance(meta_5b.blocks, torch.nn.ModuleList) and len(meta_5b.blocks) == 30
    assert (
        type(meta_5b.blocks[0].self_attn.q) is torch.nn.Linear
        and type(meta_5b.blocks[0].ffn[2]) is torch.nn.Linear
    )


def test_full_size_keys_and_shapes_on_meta(meta_5b, oracle_dir):
    ref = json.loads((oracle_dir / "wan22_5b_dit_shapes.json").read_text())
    assert {k: list(v.shape) for k, v in meta_5b.state_dict().items()} == ref["shapes"]
    assert ref["num_params"] == 4_999_787_712


def small_cfg(**kw):
    return DiTConfig(
        **{
            **dict(
                dim=64,
                ffn_dim=96,
                num_heads=2,
                num_layers=2,
                in_dim=4,
                out_dim=4,
                text_len=8,
                text_dim=16,
                freq_dim=32,
            ),
            **kw,
        }
    )


def small_inputs(cfg, B=2, F=2, H=4, W=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, cfg.in_dim, F, H, W, generator=g)
    t = torch.rand(B, generator=g) * 1000
    ctx = [torch.randn(3 + i, cfg.text_dim, generator=g) for i in range(B)]
    return x, t, ctx


def randomize(model, seed=0):
    # the official init zeroes the head, which would hide most of the network from the checks below
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def test_meta_build_then_materialize_runs_and_rope_is_not_state():
    cfg = small_cfg()
    with torch.device("meta"):
        model = WanModel(cfg)
    model.to_empty(device="cpu")
    randomize(model)
    assert not any("rope" in k or "freq" in k for k in model.state_dict())
    ref = randomize(WanModel(cfg))
    x, t, ctx = small_inputs(cfg)
    with torch.no_grad():
        assert torch.equal(model(x, t, ctx), ref(x, t, ctx))


@pytest.mark.parametrize("head_dim", [6, 10, 32])
def test_any_even_head_dim_and_shapes(head_dim):
    cfg = small_cfg(dim=2 * head_dim)
    model = randomize(WanModel(cfg))
    x, t, ctx = small_inputs(cfg, F=3, H=2, W=4)
    out = model(x, t, ctx)
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_rope_is_relative_and_norm_preserving():
    # <R(p) q, R(p') k> depends on p - p' only (per axis), and rotations keep lengths
    g = torch.Generator().manual_seed(0)
    D, grid = 18, (3, 4, 5)  # pairs split 3/3/3
    cos, sin = rope_cos_sin(grid, D, 60, "cpu")
    q, k = torch.randn(2, D, generator=g)
    qs = apply_rope(q.expand(1, 60, 1, D), cos, sin)[0, :, 0].view(
        *grid, D
    )  # q placed at every position
    ks = apply_rope(k.expand(1, 60, 1, D), cos, sin)[0, :, 0].view(*grid, D)
    dot = lambda a, b: (qs[a] * ks[b]).sum().item()
    assert abs(dot((0, 1, 2), (1, 3, 0)) - dot((1, 0, 4), (2, 2, 2))) < 1e-5
    assert abs(dot((0, 0, 0), (1, 0, 0)) - dot((1, 3, 4), (2, 3, 4))) < 1e-5
    assert (
        abs(dot((0, 0, 0), (1, 0, 0)) - dot((0, 0, 0), (0, 1, 0))) > 1e-3
    )  # axes have their own angles
    assert torch.allclose(qs.norm(dim=-1), q.norm().expand(*grid), atol=1e-5)
    padded_cos, padded_sin = rope_cos_sin(grid, D, 64, "cpu")  # pad tokens are left unrotated
    assert torch.equal(
        apply_rope(q.expand(1, 64, 1, D), padded_cos, padded_sin)[0, 60:, 0], q.expand(4, D)
    )


def test_gradient_checkpointing_gives_the_same_grads():
    cfg = small_cfg()
    model = randomize(WanModel(cfg))
    x, t, ctx = small_inputs(cfg)
    grads = []
    for flag in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = flag
        model(x, t, ctx).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


def test_bf16_autocast_keeps_fp32_islands():
    cfg = small_cfg()
    model = randomize(WanModel(cfg))
    x, t, ctx = small_inputs(cfg)
    dtypes = {}
    for n, b in enumerate(model.blocks):
        b.register_forward_hook(lambda m, i, o, n=n: dtypes.__setitem__(n, o.dtype))
    model.blocks[0].self_attn.q.register_forward_hook(
        lambda m, i, o: dtypes.__setitem__("q", o.dtype)
    )
    model.head.register_forward_hook(lambda m, i, o: dtypes.__setitem__("head", o.dtype))
    with torch.no_grad():
        ref = model(x, t, ctx)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, t, ctx)
            e, e0 = model.time_embed(t[:, None].expand(-1, 12))
    assert dtypes["q"] == torch.bfloat16  # the matmuls do run in bf16
    assert (
        dtypes[0]
        == dtypes[1]
        == dtypes["head"]
        == torch.float32
        == e.dtype
        == e0.dtype
        == out.dtype
    )
    assert maxdiff(out, ref) < 0.05 * ref.abs().max().item()


def test_bad_inputs_raise_clear_errors():
    cfg = small_cfg()
    model = WanModel(cfg)
    x, t, ctx = small_inputs(cfg)
    with pytest.raises(ValueError, match="in_dim=4"):
        model(x[:, :3], t, ctx)
    with pytest.raises(ValueError, match="multiples of the patch"):
        model(x[..., :5], t, ctx)
    with pytest.raises(ValueError, match=r"t: expected \(2,\)"):
        model(x, t[:1], ctx)
    with pytest.raises(ValueError, match="context"):
        model(x, t, ctx[:1])
    with pytest.raises(ValueError, match=r"context\[1\]"):
        model(x, t, [ctx[0], torch.randn(9, cfg.text_dim)])  # longer than text_len = 8
    with pytest.raises(ValueError, match="seq_len"):
        model(x, t, ctx, seq_len=3)
    with pytest.raises(ValueError, match="head dim"):
        WanModel(small_cfg(dim=64, num_heads=16))  # head dim 4 < 6
