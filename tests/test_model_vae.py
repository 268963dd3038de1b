"""WanVAE (the Wan2.2 VAE) against the official outputs, streaming, causality, frame rule, training.

python -m pytest tests/test_model_vae.py -q
The reference tensors (tests/fixtures, see its README.md) were computed by the official streaming
code of wan/modules/vae2_2.py in float32; ours must match to 1e-5.
"""

import json

import pytest
import torch

from model import VAE_CONFIGS, VAEConfig, WanVAE, patchify, unpatchify

TOL = 1e-5


@pytest.fixture(scope="module")
def oracle(oracle_dir):
    from safetensors.torch import load_file

    c = json.loads((oracle_dir / "tiny_vae_config.json").read_text())
    cfg = VAEConfig(
        dim=c["dim"],
        dec_dim=c["dec_dim"],
        z_dim=c["z_dim"],
        dim_mult=tuple(c["dim_mult"]),
        num_res_blocks=c["num_res_blocks"],
        temperal_downsample=tuple(c["temperal_downsample"]),
    )
    vae = WanVAE(cfg).eval()
    vae.load_state_dict(torch.load(oracle_dir / "tiny_vae.pth", weights_only=True), strict=True)
    return vae, load_file(oracle_dir / "tiny_vae_reference.safetensors")


def maxdiff(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("name", ["video9", "video5", "image1"])
def test_oracle_encode_decode(oracle, name):
    vae, ref = oracle
    with torch.no_grad():
        latent = vae.encode(ref[f"{name}.video"][None])
        raw = vae.decode(ref[f"{name}.latent"][None], clamp=False)
        clamped = vae.decode(ref[f"{name}.latent"][None])
    assert (
        latent.shape[1:] == ref[f"{name}.latent"].shape
        and maxdiff(latent[0], ref[f"{name}.latent"]) < TOL
    )
    assert maxdiff(raw[0], ref[f"{name}.decoded_raw"]) < TOL
    assert maxdiff(clamped[0], ref[f"{name}.decoded"]) < TOL and clamped.abs().max() <= 1


def test_oracle_raw_mean_and_random_latent(oracle):
    vae, ref = oracle
    assert torch.equal(torch.tensor(vae.latent_mean), ref["latents_mean"])
    assert torch.equal(torch.tensor(vae.latent_std), ref["latents_std"])
    with torch.no_grad():
        raw = vae.decode(ref["randlat.latent"][None], clamp=False)
        assert maxdiff(raw[0], ref["randlat.decoded_raw"]) < TOL
        assert maxdiff(vae.decode(ref["randlat.latent"][None])[0], ref["randlat.decoded"]) < TOL
        mean, std = vae.latent_mean, vae.latent_std
        vae.set_latent_stats([0.0] * 48, [1.0] * 48)  # identity normalization -> raw mu
        try:
            mu = vae.encode(ref["video9.video"][None])
        finally:
            vae.set_latent_stats(mean, std)
    assert maxdiff(mu[0], ref["video9.mu_raw"]) < TOL


def test_full_size_keys_and_shapes_on_meta(request):
    with torch.device("meta"):
        vae = WanVAE(VAE_CONFIGS["5b"])
    assert sum(p.numel() for p in vae.parameters()) == 704_688_668 and len(vae.state_dict()) == 196
    ref = json.loads((request.getfixturevalue("oracle_dir") / "wan22_vae_shapes.json").read_text())
    assert {k: list(v.shape) for k, v in vae.state_dict().items()} == ref["shapes"]


def small_vae(seed=0):
    # narrow, z_dim 8: the same architecture at a size where 21 frames take well under a second
    torch.manual_seed(seed)
    vae = WanVAE(VAEConfig(dim=4, dec_dim=4, z_dim=8)).eval()
    with torch.no_grad():  # default init leaves RMS gammas at 1 and biases near 0: perturb
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return vae


def test_streaming_equals_one_piece_on_a_long_clip():
    vae = small_vae()
    g = torch.Generator().manual_seed(1)
    video = torch.rand(1, 3, 29, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():
        whole = vae.encode(video, chunk=None)
        assert whole.shape == (1, 8, 8, 2, 2)
        for chunk in (4, 8, 12):
            assert maxdiff(vae.encode(video, chunk=chunk), whole) < TOL
        dec_whole = vae.decode(whole, clamp=False, chunk=None)
        assert dec_whole.shape == video.shape
        for chunk in (1, 2, 3):
            assert maxdiff(vae.decode(whole, clamp=False, chunk=chunk), dec_whole) < TOL


def test_causality():
    vae = small_vae()
    g = torch.Generator().manual_seed(2)
    video = torch.rand(1, 3, 13, 16, 16, generator=g) * 2 - 1
    with torch.no_grad():
        base = vae.encode(video)
        for k in range(3):  # latent k covers frames <= 4k
            changed = video.clone()
            changed[:, :, 4 * k + 1 :] = torch.rand(changed[:, :, 4 * k + 1 :].shape, generator=g)
            lat = vae.encode(changed)
            assert torch.equal(lat[:, :, : k + 1], base[:, :, : k + 1])
            assert maxdiff(lat[:, :, k + 1 :], base[:, :, k + 1 :]) > 1e-4  # the rest does see them
        dec = vae.decode(base, clamp=False)
        for k in range(1, 4):  # latent k feeds frames >= 4k-3
            z = base.clone()
            z[:, :, k:] = torch.randn(z[:, :, k:].shape, generator=g)
            out = vae.decode(z, clamp=False)
            assert torch.equal(out[:, :, : 4 * k - 3], dec[:, :, : 4 * k - 3])
            assert maxdiff(out[:, :, 4 * k - 3 :], dec[:, :, 4 * k - 3 :]) > 1e-4


def test_frame_count_rule_and_bad_shapes():
    vae = small_vae()
    with torch.no_grad():
        for frames, latent_frames in ((1, 1), (5, 2), (9, 3), (17, 5)):
            lat = vae.encode(torch.zeros(1, 3, frames, 16, 32))
            assert lat.shape == (1, 8, latent_frames, 1, 2)
            assert vae.decode(lat).shape == (1, 3, frames, 16, 32)
    for shape in (
        (1, 3, 8, 16, 16),
        (1, 3, 4, 16, 16),
        (1, 3, 5, 24, 16),
        (1, 3, 5, 16, 40),
        (1, 4, 5, 16, 16),
    ):
        with pytest.raises(ValueError, match="4k\\+1 frames"):
            vae.encode(torch.zeros(shape))
    with pytest.raises(ValueError, match="multiple of 4"):
        vae.encode(torch.zeros(1, 3, 5, 16, 16), chunk=3)
    with pytest.raises(ValueError, match="z_dim=8"):
        vae.decode(torch.zeros(1, 48, 2, 1, 1))
    with pytest.raises(ValueError, match="8 positive stds"):
        vae.set_latent_stats([0.0] * 8, [1.0] * 7)


def test_differentiable_through_streaming_encode_and_decode():
    vae = small_vae()
    vae.train()
    video = torch.rand(2, 3, 9, 16, 16) * 2 - 1
    grads = []
    for chunk in (1, None):  # streamed (chunks + caches) vs one piece
        vae.zero_grad()
        recon = vae.decode(vae.encode(video, chunk=chunk and 4), clamp=False, chunk=chunk)
        (recon - video).square().mean().backward()
        grads.append({k: p.grad.clone() for k, p in vae.named_parameters()})
    for k in (
        "encoder.conv1.weight",
        "encoder.downsamples.1.downsamples.2.time_conv.weight",
        "conv1.weight",
        "decoder.upsamples.0.upsamples.3.time_conv.weight",
        "decoder.head.2.weight",
        "conv2.weight",
    ):
        assert grads[0][k].abs().sum() > 0, k
    # the caches carry gradient across chunks: streamed training equals one-piece training
    for k, g in grads[1].items():
        assert torch.allclose(grads[0][k], g, rtol=1e-4, atol=1e-6), k


def test_patchify_layout_and_inverse():
    x = torch.arange(2 * 3 * 1 * 4 * 4, dtype=torch.float32).view(2, 3, 1, 4, 4)
    p = patchify(x)
    assert p.shape == (2, 12, 1, 2, 2)
    # channel c*4 + r*2 + q holds pixel (2i + q, 2j + r): q row offset, r column offset
    assert p[0, 1 * 4 + 1 * 2 + 0, 0, 1, 0] == x[0, 1, 0, 2, 1]
    assert torch.equal(unpatchify(p), x)
