"""model.py against Hugging Face diffusers and transformers: a second, independent Wan2.2 oracle.

python -m pytest tests/test_model_diffusers.py -q        (needs the test extra: pip install .[test])

Each network is built in diffusers / transformers at a tiny size with the structural flags of
Wan2.2-TI2V-5B (patch 1x2x2, q/k RMSNorm across heads, cross-attention norm, 48 latent channels,
the residual VAE with patch size 2, gated-GELU umT5 with a position bias per layer), given random
weights and written with save_pretrained as a -Diffusers folder. model.load_pretrained reads that
folder (configs included) and every output must match in float32.

One documented difference: diffusers computes the timestep sinusoid in float32
(diffusers src/diffusers/models/embeddings.py get_timestep_embedding, used by
transformer_wan.py WanTimeTextImageEmbedding.timesteps_proj), the official code in float64
(Wan-Video/Wan2.2 wan/modules/model.py @42bf4cfa sinusoidal_embedding_1d). At t near 1000 the
float32 angles are off by ~6e-5, which alone moves the DiT output by ~1e-5. The DiT tests measure
the raw difference (bounded by RAW_TOL) and then control for it by giving diffusers' embedder
the float64 sinusoid: the rest of the network must then agree to TOL.
"""
import json

import pytest
import torch

from model import export_diffusers, load_pretrained, sinusoidal_embedding

TOL = 1e-5          # float32 agreement once both sides compute the same sinusoid
RAW_TOL = 1e-4      # with diffusers' own float32 sinusoid


def need(name):
    """The module `name`, or skip with the command that installs it."""
    return pytest.importorskip(
        name, reason=f"{name} is not installed: pip install .[test] (the optional test extra)")


def randomize_(module, seed):
    """Random, non-degenerate weights (library inits zero some layers, hiding bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "gamma" or "norm" in name:
                value = 1 + 0.1 * torch.randn(p.shape, generator=g)
            elif leaf == "bias":
                value = 0.05 * torch.randn(p.shape, generator=g)
            elif "scale_shift_table" in name or "embedding.weight" in name or p.ndim < 2:
                value = 0.1 * torch.randn(p.shape, generator=g)
            else:
                value = torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5
            p.copy_(value)
    return module


def tiny_dit_diffusers():
    diffusers = need("diffusers")
    return diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=128, in_channels=48,
        out_channels=48, text_dim=32, freq_dim=256, ffn_dim=256, num_layers=2,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)


def tiny_vae_diffusers():
    diffusers = need("diffusers")
    # decoder_base_dim left at diffusers' default None ("same as base_dim"): written as null
    g = torch.Generator().manual_seed(5)
    return diffusers.AutoencoderKLWan(
        base_dim=8, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
        temperal_downsample=[False, True, True], dropout=0.0, is_residual=True, in_channels=12,
        out_channels=12, patch_size=2, scale_factor_temporal=4, scale_factor_spatial=16,
        latents_mean=(0.1 * torch.randn(48, generator=g)).tolist(),
        latents_std=(0.5 + torch.rand(48, generator=g)).tolist())


def tiny_umt5():
    transformers = need("transformers")
    config = transformers.UMT5Config(
        vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=32, relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu", dropout_rate=0.0, layer_norm_epsilon=1e-6,
        is_encoder_decoder=False)
    return transformers.UMT5EncoderModel(config)


def save_tokenizer(path):
    tokenizers = need("tokenizers")
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "solve": 3, "the": 4, "maze": 5}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)])
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A -Diffusers folder written by diffusers / transformers, its models, and ours loaded."""
    root = tmp_path_factory.mktemp("wan22_diffusers")
    theirs = {
        "dit": randomize_(tiny_dit_diffusers(), 1).eval(),
        "vae": randomize_(tiny_vae_diffusers(), 2).eval(),
        "t5": randomize_(tiny_umt5(), 3).eval(),
    }
    theirs["dit"].save_pretrained(root / "transformer")
    theirs["vae"].save_pretrained(root / "vae")
    theirs["t5"].save_pretrained(root / "text_encoder")
    save_tokenizer(root / "tokenizer" / "tokenizer.json")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    ours = load_pretrained(root, text_dtype=torch.float32)
    return root, theirs, ours


class Float64Sinusoid(torch.nn.Module):
    """The official float64 timestep sinusoid, cast to float32, in place of diffusers' own."""

    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, t):
        return sinusoidal_embedding(t, self.dim).float()


def diffusers_velocity(model, x, t, context, text_len, float64_sinusoid):
    """diffusers' forward on our inputs: contexts zero-padded to text_len as the pipeline does."""
    padded = torch.stack([torch.nn.functional.pad(c, (0, 0, 0, text_len - len(c)))
                          for c in context])                          # (B, Lt, text_dim)
    embedder = model.condition_embedder
    original = embedder.timesteps_proj
    if float64_sinusoid:
        embedder.timesteps_proj = Float64Sinusoid(model.config.freq_dim)
    try:
        with torch.no_grad():
            return model(x, timestep=t, encoder_hidden_states=padded, return_dict=False)[0]
    finally:
        embedder.timesteps_proj = original


def dit_inputs(seed, per_token):
    """A batch of 2 latents (48, 3, 6, 8) = 36 tokens, timesteps, and contexts of 5 and 9 rows."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 48, 3, 6, 8, generator=g)
    context = [torch.randn(5, 32, generator=g), torch.randn(9, 32, generator=g)]
    if not per_token:
        return x, torch.tensor([937.0, 13.0]), context
    t = torch.full((2, 36), 937.0)
    t[:, :12] = 0.0                  # TI2V: the 12 tokens of latent frame 0 are clean
    t[1, 12:] = 250.0
    return x, t, context


def compare_dit(ours, theirs, x, t, context):
    """(raw max abs diff, max abs diff with the float64 sinusoid on both sides)."""
    with torch.no_grad():
        mine = ours(x, t, context)
    raw = diffusers_velocity(theirs, x, t, context, ours.cfg.text_len, float64_sinusoid=False)
    controlled = diffusers_velocity(theirs, x, t, context, ours.cfg.text_len, True)
    return (mine - raw).abs().max().item(), (mine - controlled).abs().max().item()


@pytest.mark.parametrize("per_token", [False, True], ids=["scalar_t", "ti2v_per_token_t"])
def test_dit_matches_diffusers(release, per_token):
    _, theirs, (dit, _, _) = release
    assert dit.cfg.dim == 256 and dit.cfg.num_heads == 2 and dit.cfg.text_len == 512
    x, t, context = dit_inputs(seed=10 + per_token, per_token=per_token)
    raw, controlled = compare_dit(dit, theirs["dit"], x, t, context)
    assert controlled < TOL, f"with the same sinusoid: {controlled:.2e}"
    assert raw < RAW_TOL, f"with diffusers' float32 sinusoid: {raw:.2e}"


def test_float32_sinusoid_is_the_only_difference():
    # diffusers' float32 sinusoid against the official float64 one: the gap the control removes
    diffusers = need("diffusers")
    from diffusers.models.embeddings import get_timestep_embedding
    t = torch.tensor([0.0, 13.0, 250.0, 500.0, 937.0, 999.0])
    theirs = get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0)
    gap = (theirs.double() - sinusoidal_embedding(t, 256)).abs().max().item()
    assert 1e-6 < gap < 1e-3, diffusers.__version__


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_vae_encode_decode_matches_diffusers(release, frames):
    _, theirs, (_, vae, _) = release
    assert vae.cfg.dec_dim == vae.cfg.dim == 8          # "decoder_base_dim": null read as base_dim
    g = torch.Generator().manual_seed(20 + frames)
    video = torch.rand(1, 3, frames, 32, 48, generator=g) * 2 - 1
    mean = torch.tensor(vae.latent_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.latent_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        latent = vae.encode(video)                                     # normalized
        mu = theirs["vae"].encode(video).latent_dist.mean              # raw encoder mean
        decoded = vae.decode(latent)                                   # clamped, as diffusers
        their_decoded = theirs["vae"].decode(latent * std + mean).sample
    assert latent.shape == (1, 48, (frames - 1) // 4 + 1, 2, 3)
    assert (latent * std + mean - mu).abs().max() < TOL
    assert decoded.shape == video.shape
    assert (decoded - their_decoded).abs().max() < TOL


def test_umt5_encoder_matches_transformers(release):
    _, theirs, (_, _, text) = release
    g = torch.Generator().manual_seed(30)
    ids = torch.randint(2, 64, (2, 40), generator=g)
    mask = torch.zeros(2, 40, dtype=torch.long)
    for row, length in enumerate((40, 17)):
        mask[row, :length] = 1
        ids[row, length - 1] = 1                                       # </s>, then pads
        ids[row, length:] = 0
    with torch.no_grad():
        mine = text.model(ids, mask)
        hf = theirs["t5"](input_ids=ids, attention_mask=mask).last_hidden_state
    for row, length in enumerate((40, 17)):
        assert (mine[row, :length] - hf[row, :length]).abs().max() < TOL


def test_export_loads_in_diffusers_with_the_same_outputs(release, tmp_path):
    diffusers = need("diffusers")
    root, _, (dit, vae, _) = release
    with torch.no_grad():                    # our own weights now, not the ones diffusers wrote
        for p in list(dit.parameters()) + list(vae.parameters()):
            p.add_(0.01 * torch.randn_like(p))
    out = export_diffusers(tmp_path / "export", dit, vae)
    theirs = diffusers.WanTransformer3DModel.from_pretrained(out / "transformer").eval()
    assert theirs.config.num_layers == dit.cfg.num_layers
    x, t, context = dit_inputs(seed=40, per_token=True)
    raw, controlled = compare_dit(dit, theirs, x, t, context)
    assert controlled < TOL and raw < RAW_TOL
    their_vae = diffusers.AutoencoderKLWan.from_pretrained(out / "vae").eval()
    latent = torch.randn(1, 48, 2, 2, 3)
    std = torch.tensor(vae.latent_std).view(1, -1, 1, 1, 1)
    mean = torch.tensor(vae.latent_mean).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        diff = (vae.decode(latent) - their_vae.decode(latent * std + mean).sample).abs().max()
    assert diff < TOL
    # and back: our loader reads the export (text_len kept in "_text_len")
    for part in ("text_encoder", "tokenizer"):
        (out / part).symlink_to(root / part, target_is_directory=True)
    dit2, vae2, _ = load_pretrained(out, text_dtype=torch.float32)
    assert dit2.cfg == dit.cfg and vae2.cfg == vae.cfg
    for a, b in zip(dit.state_dict().values(), dit2.state_dict().values()):
        assert torch.equal(a, b)
