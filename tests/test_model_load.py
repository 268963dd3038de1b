"""load_pretrained on checkpoint folders written like the two releases, from the fixture weights.

python -m pytest tests/test_model_load.py -q
Native = Wan-AI/Wan2.2-TI2V-5B (config.json, diffusion_pytorch_model*.safetensors, Wan2.2_VAE.pth,
models_t5_umt5-xxl-enc-bf16.pth, google/umt5-xxl/tokenizer.json); -Diffusers = transformer/, vae/,
text_encoder/, tokenizer/ with the key names of tests/fixtures/*native_to_*.json.
"""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from model import (
    DIT_TO_DIFFUSERS,
    T5_TO_HF,
    VAE_TO_DIFFUSERS,
    DiTConfig,
    T5Config,
    VAEConfig,
    load_pretrained,
    rename_key,
)

TOL = 1e-5
TINY_VAE = VAEConfig(dim=4, dec_dim=4, z_dim=48)  # tests/fixtures/tiny_vae_config.json


def tiny_configs(oracle):
    c = json.loads((oracle / "tiny_dit_config.json").read_text())
    dit = DiTConfig(
        **{
            k: tuple(v) if isinstance(v, list) else v
            for k, v in c.items()
            if k in DiTConfig.__dataclass_fields__
        }
    )
    t = json.loads((oracle / "tiny_t5_config.json").read_text())
    vae = json.loads((oracle / "tiny_vae_config.json").read_text())
    return c, dit, vae, T5Config(**{k: t[k] for k in T5Config.__dataclass_fields__})


def save_sharded(state, folder, stem, shards):
    """HF layout: stem.safetensors, or stem-0000i-of-0000n.safetensors + the index json."""
    folder.mkdir(parents=True, exist_ok=True)
    if shards == 1:
        save_file(state, folder / f"{stem}.safetensors")
        return
    keys, weight_map = list(state), {}
    for i in range(shards):
        name = f"{stem}-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k].contiguous() for k in keys[i::shards]}
        save_file(part, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    (folder / f"{stem}.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )


def save_tokenizer(path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {
        "<pad>": 0,
        "</s>": 1,
        "<unk>": 2,
        **{w: 3 + i for i, w in enumerate("solve the maze push box".split())},
    }
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))


def write_native(root, oracle, shards):
    dit_json, *_ = tiny_configs(oracle)
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"_class_name": "WanModel", **dit_json}))
    save_sharded(
        load_file(oracle / "tiny_dit.safetensors"), root, "diffusion_pytorch_model", shards
    )
    shutil.copy(oracle / "tiny_vae.pth", root / "Wan2.2_VAE.pth")
    shutil.copy(oracle / "tiny_t5.pth", root / "models_t5_umt5-xxl-enc-bf16.pth")
    save_tokenizer(root / "google" / "umt5-xxl" / "tokenizer.json")
    return root


def renamed(state, oracle, map_file):
    m = json.loads((oracle / map_file).read_text())["map"]
    return {m[k]: v for k, v in state.items()}


def write_diffusers(root, oracle, shards):
    dit_json, _, vae_json, t5 = tiny_configs(oracle)
    root.mkdir(parents=True)
    (root / "model_index.json").write_text(
        json.dumps({"_class_name": "WanPipeline", "expand_timesteps": True})
    )
    dit = renamed(
        load_file(oracle / "tiny_dit.safetensors"), oracle, "wan22_5b_dit_native_to_diffusers.json"
    )
    save_sharded(dit, root / "transformer", "diffusion_pytorch_model", shards)
    (root / "transformer" / "config.json").write_text(
        json.dumps(
            dict(
                patch_size=dit_json["patch_size"],
                num_attention_heads=dit_json["num_heads"],
                attention_head_dim=dit_json["dim"] // dit_json["num_heads"],
                in_channels=48,
                out_channels=48,
                text_dim=dit_json["text_dim"],
                freq_dim=256,
                ffn_dim=dit_json["ffn_dim"],
                num_layers=dit_json["num_layers"],
                cross_attn_norm=True,
                qk_norm="rms_norm_across_heads",
                eps=1e-6,
            )
        )
    )
    vae_ref = load_file(oracle / "tiny_vae_reference.safetensors")
    vae = renamed(
        torch.load(oracle / "tiny_vae.pth", weights_only=True),
        oracle,
        "wan22_vae_native_to_diffusers.json",
    )
    save_sharded(vae, root / "vae", "diffusion_pytorch_model", 1)
    (root / "vae" / "config.json").write_text(
        json.dumps(
            dict(
                base_dim=vae_json["dim"],
                decoder_base_dim=vae_json["dec_dim"],
                z_dim=48,
                is_residual=True,
                in_channels=12,
                patch_size=2,
                dim_mult=vae_json["dim_mult"],
                num_res_blocks=2,
                temperal_downsample=vae_json["temperal_downsample"],
                latents_mean=vae_ref["latents_mean"].tolist(),
                latents_std=vae_ref["latents_std"].tolist(),
            )
        )
    )
    text = renamed(
        torch.load(oracle / "tiny_t5.pth", weights_only=True),
        oracle,
        "wan22_t5_native_to_hf_umt5.json",
    )
    text["encoder.embed_tokens.weight"] = text[
        "shared.weight"
    ].clone()  # transformers may save the tied copy too
    save_sharded(text, root / "text_encoder", "model", shards)
    (root / "text_encoder" / "config.json").write_text(
        json.dumps(
            dict(
                vocab_size=t5.vocab,
                d_model=t5.dim,
                d_kv=t5.dim_attn // t5.num_heads,
                d_ff=t5.dim_ffn,
                num_heads=t5.num_heads,
                num_layers=t5.num_layers,
                relative_attention_num_buckets=t5.num_buckets,
            )
        )
    )
    save_tokenizer(root / "tokenizer" / "tokenizer.json")
    return root


def check_against_oracle(oracle, dit, vae, text, dtype=torch.float32):
    ref = load_file(oracle / "tiny_dit_reference.safetensors")
    with torch.no_grad():
        out = dit(ref["i2v.x"][None].to(dtype), ref["i2v.t"], [ref["i2v.context"].to(dtype)])
    assert (out[0] - ref["i2v.out"]).abs().max() < TOL
    ref = load_file(oracle / "tiny_vae_reference.safetensors")
    with torch.no_grad():
        assert (vae.encode(ref["image1.video"][None])[0] - ref["image1.latent"]).abs().max() < TOL
        assert (
            vae.decode(ref["image1.latent"][None], clamp=False)[0] - ref["image1.decoded_raw"]
        ).abs().max() < TOL
    ref = load_file(oracle / "tiny_t5_reference.safetensors")
    with torch.no_grad():
        assert (text.model(ref["ids"], ref["mask"]) - ref["out"]).abs().max() < TOL
    assert [e.shape for e in text.encode(["solve the maze"])] == [(4, 32)]


@pytest.mark.parametrize("shards", [3, 1])
def test_native_layout(tmp_path, oracle_dir, shards):
    _, dit_cfg, vae_json, t5_cfg = tiny_configs(oracle_dir)
    root = write_native(tmp_path / "native", oracle_dir, shards)
    # the native release ships no VAE / T5 config: without these the 5B ones are used
    dit, vae, text = load_pretrained(
        root, text_dtype=torch.float32, vae_cfg=TINY_VAE, t5_cfg=t5_cfg
    )
    assert (
        dit.cfg == dit_cfg and vae.cfg.dim == vae_json["dim"] and text.text_len == dit_cfg.text_len
    )
    check_against_oracle(oracle_dir, dit, vae, text)


@pytest.mark.parametrize("shards", [2, 1])
def test_diffusers_layout(tmp_path, oracle_dir, shards):
    _, dit_cfg, _, t5_cfg = tiny_configs(oracle_dir)
    root = write_diffusers(tmp_path / "diffusers", oracle_dir, shards)
    # the diffusers transformer config has no text_len (the pipeline's max_sequence_length): 512
    assert load_pretrained(root)[0].cfg == DiTConfig(**{**dit_cfg.__dict__, "text_len": 512})
    dit, vae, text = load_pretrained(root, text_dtype=torch.float32, dit_cfg=dit_cfg)
    assert (
        text.model.cfg == t5_cfg and vae.cfg.dec_dim == 4
    )  # VAE and T5 configs read from the folder
    check_against_oracle(oracle_dir, dit, vae, text)


@pytest.fixture(scope="module")
def native(tmp_path_factory, oracle_dir):
    return write_native(tmp_path_factory.mktemp("ckpt") / "native", oracle_dir, shards=3)


def test_dtype_casting(native, oracle_dir):
    _, _, _, t5_cfg = tiny_configs(oracle_dir)
    dit, vae, text = load_pretrained(
        native, dtype=torch.bfloat16, text_dtype=torch.bfloat16, vae_cfg=TINY_VAE, t5_cfg=t5_cfg
    )
    ref = load_file(oracle_dir / "tiny_dit.safetensors")
    assert all(
        v.dtype == torch.bfloat16 and torch.equal(v, ref[k].bfloat16())
        for k, v in dit.state_dict().items()
    )
    assert all(p.dtype == torch.float32 for p in vae.parameters())  # the VAE runs in fp32
    assert all(p.dtype == torch.bfloat16 for p in text.model.parameters())
    x = torch.randn(1, 48, 1, 4, 4)
    with torch.no_grad():
        assert (
            dit(x, torch.tensor([500.0]), [torch.randn(3, 32)]).dtype == torch.float32
        )  # bf16 weights run
        assert text.encode(["maze"])[0].dtype == torch.bfloat16
    ref = torch.load(oracle_dir / "tiny_t5.pth", weights_only=True)
    assert all(torch.equal(v, ref[k].bfloat16()) for k, v in text.model.state_dict().items())


def copy_with(native, tmp_path, edit):
    """A copy of the native folder whose first DiT shard went through edit(state) -> state."""
    root = tmp_path / "edited"
    shutil.copytree(native, root)
    shard = root / "diffusion_pytorch_model-00001-of-00003.safetensors"
    state = edit(load_file(shard))
    save_file(state, shard)
    index = root / "diffusion_pytorch_model.safetensors.index.json"
    weight_map = {k: shard.name for k in state}
    weight_map.update(
        {k: v for k, v in json.loads(index.read_text())["weight_map"].items() if v != shard.name}
    )
    index.write_text(json.dumps({"weight_map": weight_map}))
    return root, shard


def test_missing_unexpected_misshaped_and_duplicate_keys_are_listed(native, tmp_path):
    first, second = sorted(
        load_file(native / "diffusion_pytorch_model-00001-of-00003.safetensors")
    )[:2]
    third = sorted(load_file(native / "diffusion_pytorch_model-00002-of-00003.safetensors"))[0]
    expected = list(
        load_file(native / "diffusion_pytorch_model-00001-of-00003.safetensors")[second].shape
    )

    def edit(state):
        del state[first]
        state["blocks.0.extra.weight"] = torch.zeros(3)
        state[second] = torch.zeros(7, 5)
        state[third] = torch.zeros(1)  # also in shard 2
        return state

    root, shard = copy_with(native, tmp_path, edit)
    with pytest.raises(ValueError) as err:
        load_pretrained(root)
    msg = str(err.value)
    assert f"missing keys (1):\n  {first} [" in msg
    assert f"unexpected keys (1):\n  blocks.0.extra.weight [3] in {shard}" in msg
    assert f"{second}: expected {expected}, found [7, 5] in {shard}" in msg
    assert f"duplicate keys (1):\n  {third} in {shard} and " in msg


def test_truncated_or_corrupt_files_are_named(native, tmp_path):
    root = tmp_path / "bad"
    shutil.copytree(native, root)
    shard = root / "diffusion_pytorch_model-00002-of-00003.safetensors"
    original = shard.read_bytes()
    shard.write_bytes(original[:-1000])
    with pytest.raises(
        ValueError, match=f"{shard}: cannot read the weights, the file is truncated or corrupt"
    ):
        load_pretrained(root)
    shard.write_bytes(original)
    vae = root / "Wan2.2_VAE.pth"
    vae.write_bytes(vae.read_bytes()[: vae.stat().st_size // 2])
    with pytest.raises(
        ValueError, match=f"{vae}: cannot read the weights, the file is truncated or corrupt"
    ):
        load_pretrained(root)
    (root / "diffusion_pytorch_model-00003-of-00003.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="00003-of-00003.safetensors: shard listed in"):
        load_pretrained(root)


def test_folder_that_is_neither_layout(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(
        FileNotFoundError, match="looked for the native layout .*Wan2.2_VAE.pth.* -Diffusers layout"
    ):
        load_pretrained(tmp_path)


def test_missing_pieces_are_named(native, tmp_path, oracle_dir):
    root = tmp_path / "partial"
    shutil.copytree(native, root)
    (root / "google" / "umt5-xxl" / "tokenizer.json").unlink()
    (root / "models_t5_umt5-xxl-enc-bf16.pth").unlink()
    t5_cfg = tiny_configs(oracle_dir)[3]
    with pytest.raises(FileNotFoundError, match="umt5-xxl/tokenizer.json: tokenizer not found"):
        load_pretrained(root, vae_cfg=TINY_VAE, t5_cfg=t5_cfg)
    save_tokenizer(root / "google" / "umt5-xxl" / "tokenizer.json")
    with pytest.raises(
        FileNotFoundError, match="models_t5_umt5-xxl-enc-bf16.pth: weights file not found"
    ):
        load_pretrained(root, vae_cfg=TINY_VAE, t5_cfg=t5_cfg)
    first = r"encoder.conv1.weight: expected \[160, 12, 3, 3, 3\], found \[4, 12, 3, 3, 3\]"
    with pytest.raises(ValueError, match=r"(?s)misshaped keys \(190\):\n  " + first):
        load_pretrained(root, t5_cfg=t5_cfg)  # the 5B VAE config against tiny weights


def test_diffusers_vae_that_is_not_wan22(tmp_path, oracle_dir):
    root = write_diffusers(tmp_path / "diffusers", oracle_dir, shards=1)
    config = root / "vae" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "is_residual": False}))
    with pytest.raises(ValueError, match="vae/config.json: not the Wan2.2 VAE"):
        load_pretrained(root)


def test_rename_rules_reproduce_the_release_key_maps(oracle_dir):
    for rules, name in (
        (DIT_TO_DIFFUSERS, "wan22_5b_dit_native_to_diffusers.json"),
        (VAE_TO_DIFFUSERS, "wan22_vae_native_to_diffusers.json"),
        (T5_TO_HF, "wan22_t5_native_to_hf_umt5.json"),
    ):
        m = json.loads((oracle_dir / name).read_text())["map"]
        assert {k: rename_key(k, rules) for k in m} == m, name


def edit_config(path, **changes):
    """Rewrite the JSON at `path` with `changes` (None values are written as null)."""
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_diffusers_vae_decoder_base_dim_null_means_base_dim(tmp_path, oracle_dir):
    # diffusers' AutoencoderKLWan default, written by save_pretrained: the decoder width = base_dim
    root = write_diffusers(tmp_path / "diffusers", oracle_dir, shards=1)
    edit_config(root / "vae" / "config.json", decoder_base_dim=None)
    _, dit_cfg, _, _ = tiny_configs(oracle_dir)
    dit, vae, text = load_pretrained(root, text_dtype=torch.float32, dit_cfg=dit_cfg)
    assert vae.cfg.dec_dim == vae.cfg.dim == 4
    check_against_oracle(oracle_dir, dit, vae, text)
    edit_config(root / "vae" / "config.json", decoder_base_dim=8)  # a real difference is kept
    with pytest.raises(ValueError, match=r"decoder\.conv1\.weight: expected \[32, 48, 3, 3, 3\]"):
        load_pretrained(root, dit_cfg=dit_cfg)


@pytest.mark.parametrize(
    "component, key, value",
    [
        ("text_encoder", "relative_attention_max_distance", 64),
        ("text_encoder", "layer_norm_epsilon", 1e-5),
        ("text_encoder", "feed_forward_proj", "relu"),
        ("transformer", "qk_norm", "rms_norm"),
        ("transformer", "cross_attn_norm", False),
        ("transformer", "image_dim", 1280),
        ("vae", "patch_size", None),
    ],
)
def test_diffusers_settings_we_do_not_implement_are_refused(
    tmp_path, oracle_dir, component, key, value
):
    root = write_diffusers(tmp_path / "diffusers", oracle_dir, shards=1)
    config = root / component / "config.json"
    edit_config(config, **{key: value})
    with pytest.raises(ValueError, match=f"{config}: {key} = "):
        load_pretrained(root)


def test_diffusers_settings_at_their_defaults_load(tmp_path, oracle_dir):
    # the values transformers / diffusers write for Wan2.2-TI2V-5B are accepted explicitly too
    root = write_diffusers(tmp_path / "diffusers", oracle_dir, shards=1)
    edit_config(
        root / "text_encoder" / "config.json",
        relative_attention_max_distance=128,
        layer_norm_epsilon=1e-6,
        feed_forward_proj="gated-gelu",
    )
    edit_config(root / "transformer" / "config.json", image_dim=None, added_kv_proj_dim=None)
    _, dit_cfg, _, _ = tiny_configs(oracle_dir)
    check_against_oracle(
        oracle_dir, *load_pretrained(root, text_dtype=torch.float32, dit_cfg=dit_cfg)
    )
