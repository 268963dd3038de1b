"""T5Encoder (umT5) against the official outputs; tokenizers and the prompt cache of TextEncoder.

python -m pytest tests/test_model_t5.py -q
"""

import json

import pytest
import torch

from model import (
    BYTE_EOS,
    BYTE_OFFSET,
    BYTE_PAD,
    T5_CONFIGS,
    T5Config,
    T5Encoder,
    TextEncoder,
    byte_tokenize,
    relative_position_bucket,
)

TOL = 1e-5


@pytest.fixture(scope="module")
def oracle(oracle_dir):
    from safetensors.torch import load_file

    c = json.loads((oracle_dir / "tiny_t5_config.json").read_text())
    model = T5Encoder(T5Config(**{k: c[k] for k in T5Config.__dataclass_fields__})).eval()
    model.load_state_dict(torch.load(oracle_dir / "tiny_t5.pth", weights_only=True), strict=True)
    return model, load_file(oracle_dir / "tiny_t5_reference.safetensors")


def test_oracle_outputs_and_trimmed(oracle):
    model, ref = oracle
    with torch.no_grad():
        out = model(ref["ids"], ref["mask"])
        # the trimmed outputs do not depend on how much padding follows (what TextEncoder relies on)
        short = model(ref["ids"][:, :150], ref["mask"][:, :150])
    assert (out - ref["out"]).abs().max() < TOL
    for i, n in enumerate(ref["mask"].sum(1).tolist()):
        assert (out[i, :n] - ref[f"out_trimmed{i}"]).abs().max() < TOL
        assert (short[i, :n] - ref[f"out_trimmed{i}"]).abs().max() < TOL


def test_relative_position_buckets(oracle):
    _, ref = oracle
    assert torch.equal(relative_position_bucket(200, 32), ref["rel_bucket_200"])


def test_full_size_keys_and_shapes_on_meta(request):
    with torch.device("meta"):
        model = T5Encoder(T5_CONFIGS["5b"])
    # the official umt5_xxl(encoder_only=True): tests/fixtures/wan22_t5_umt5xxl_enc_shapes.json
    assert (
        sum(p.numel() for p in model.parameters()) == 5_680_910_336
        and len(model.state_dict()) == 242
    )
    ref = json.loads(
        (request.getfixturevalue("oracle_dir") / "wan22_t5_umt5xxl_enc_shapes.json").read_text()
    )
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == ref["shapes"]


def test_byte_tokenizer():
    ids, mask = byte_tokenize(["ab", "", "héllo wörld"], text_len=6)
    assert ids[0].tolist() == [
        ord("a") + BYTE_OFFSET,
        ord("b") + BYTE_OFFSET,
        BYTE_EOS,
        BYTE_PAD,
        BYTE_PAD,
        BYTE_PAD,
    ]
    assert mask.tolist()[:2] == [[1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]]
    assert ids[1, 0] == BYTE_EOS
    assert ids[2, -1] == BYTE_EOS and mask[2].sum() == 6  # truncated, EOS kept last
    assert ids.max() < T5_CONFIGS["tiny"].vocab


def test_text_encoder_trims_and_caches():
    torch.manual_seed(0)
    model = T5Encoder(T5_CONFIGS["tiny"]).eval()
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    enc = TextEncoder(model, text_len=32)
    prompts = ["solve the maze", "push the box onto the target", "solve the maze"]
    out = enc.encode(prompts)
    assert [o.shape for o in out] == [(15, 64), (29, 64), (15, 64)]  # bytes + EOS
    assert out[0] is out[2] and len(calls) == 1  # each prompt encoded once
    assert enc.encode(["push the box onto the target"])[0] is out[1] and len(calls) == 1
    # equal to running the encoder on the full text_len positions and trimming by hand
    ids, mask = byte_tokenize(prompts[:2], 32)
    with torch.no_grad():
        full = model(ids, mask)
    assert torch.allclose(out[1], full[1, :29], atol=TOL) and torch.allclose(
        out[0], full[0, :15], atol=TOL
    )


def test_huggingface_tokenizer_file(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "solve": 3, "the": 4, "maze": 5}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    tok.save(str(tmp_path / "tokenizer.json"))
    torch.manual_seed(0)
    enc = TextEncoder(
        T5Encoder(T5Config(vocab=6, dim=8, dim_attn=8, dim_ffn=16, num_heads=2, num_layers=1)),
        text_len=4,
        tokenizer_file=tmp_path / "tokenizer.json",
    )
    ids, mask = enc.tokenize(["solve  the\n maze", "the &amp;maze solve the maze"])
    assert ids.tolist() == [[3, 4, 5, 1], [4, 2, 5, 1]] and mask.tolist() == [
        [1, 1, 1, 1],
        [1, 1, 1, 1],
    ]
    assert enc.tokenize(["maze"])[0].tolist() == [[5, 1, 0, 0]]
    assert [o.shape for o in enc.encode(["maze", "solve the maze"])] == [(2, 8), (4, 8)]
    assert enc.tokenize(["  solve &amp;amp;\t\n maze "])[0].tolist() == [
        [3, 2, 5, 1]
    ]  # cleaned: "solve & maze"
