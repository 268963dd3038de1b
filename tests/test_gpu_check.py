"""tests/scripts/gpu_check.py --small: the GPU check script runs end to end on CPU at tiny shapes,
so it cannot rot before the first GPU run. Run: python -m pytest tests/test_gpu_check.py -q
"""

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "scripts"))
import gpu_check  # noqa: E402


@pytest.mark.parametrize("lora", [False, True])
def test_gpu_check_small_runs_and_reports_everything(tmp_path, capsys, lora):
    out = tmp_path / "gpu_check.json"
    res = gpu_check.main(["--small", "--json", str(out)] + ["--lora"] * lora)
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))  # the JSON is the table
    rows = res["rows"]
    for key in (
        "dit_forward",
        "dit_fwd_bwd",
        "vae_decode",
        "text_encode",
        "rl_iteration",
        "rl_rollout",
        "rl_decode",
        "rl_reward",
        "rl_update",
    ):
        assert rows[key]["seconds"] > 0, key
    for key in ("dit_forward", "dit_fwd_bwd", "vae_decode"):  # next to the dry run
        assert (
            rows[key]["pred_seconds"] > 0 and rows[key]["tflops_per_s"] > 0 and rows[key]["mfu"] > 0
        )
    assert rows["dit_fwd_bwd"]["flops"] == (2 if lora else 3) * rows["dit_forward"]["flops"]
    assert rows["dit_fwd_bwd"]["pred_peak"] > 0 and rows["vae_decode"]["pred_peak"] > 0
    assert rows["rl_iteration"]["pred_seconds"] > 0
    assert res["shapes"]["tokens"] == 3 * 2 * 2  # 64x64x9 -> latent 3x4x4 -> 12
    # one entry per trained step; on CPU the rollout and the update make the same bf16 calls
    # (micro-batch 1), so the first update is exactly on-policy
    assert [p["step"] for p in res["parity"]] == [0, 1]
    for p in res["parity"]:
        assert p["ratio_mean"] == 1.0 and p["max_abs_ratio_minus_1"] == 0.0 and p["clipfrac"] == 0.0
    assert all(math.isfinite(r) for r in res["rewards"])
    text = capsys.readouterr().out
    assert "on-policy parity of the first update" in text and "dit_fwd_bwd" in text


# -----------------------------------------------------------------------------
# the dry run's memory model (train.memory_model), which gpu_check's predictions come from


def test_saved_block_bytes_match_a_real_cpu_block():
    """The meta-device count (flash-attention saves emulated) equals what a real bf16 block saves on
    CPU, where torch's flash kernel runs: the same saved-tensor hooks, real storages."""
    import torch
    import model as M
    import train as T

    cfg = M.DiTConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=1, text_len=8, text_dim=16)
    grid = (2, 3, 4)
    S = 24
    predicted = T.saved_block_bytes(cfg, S, grid)
    torch.manual_seed(0)
    block = M.WanAttentionBlock(cfg).to(torch.bfloat16)
    x = torch.randn(1, S, cfg.dim, requires_grad=True)
    e0 = torch.randn(1, S, 6, cfg.dim, requires_grad=True)
    ctx = torch.randn(1, cfg.text_len, cfg.dim, dtype=torch.bfloat16, requires_grad=True)
    cos, sin = M.rope_cos_sin(grid, cfg.dim // cfg.num_heads, S, torch.device("cpu"))
    shared = {t.untyped_storage().data_ptr() for t in (*block.parameters(), e0, ctx, cos, sin)}
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in shared:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x, e0, ctx, cos, sin, None)
    assert sum(seen.values()) == predicted


def test_memory_model_components_and_single_gpu_fit():
    import train as T

    full8 = T.memory_model(T.get_config(["--config", "5b"]), 8)
    full1 = T.memory_model(T.get_config(["--config", "5b_1gpu"]), 1)
    lora1 = T.memory_model(T.get_config(["--config", "5b_lora_1gpu"]), 1)
    n = 4_999_787_712
    assert full1["gradients"] == 4 * n and full1["optimizer"] == 8 * n
    assert full1["weights"] == 4 * n + 2 * n  # fp32 master + autocast's bf16 copies
    assert abs(full8["optimizer"] - 8 * n / 8) < 1  # sharded by FSDP
    assert full1["text"] == 5_680_910_336 * 2  # umT5 in bf16 stays on the GPU
    assert full1["vae_decode"] == 4 * (
        T.VAE_DECODE_BYTES_PER_PIXEL * 480 * 480 + 2 * 3 * 49 * 480 * 480 * 4
    )
    for mem in (full8, full1, lora1):
        parts = ("weights", "optimizer", "trajectories", "vae", "text")
        assert mem["total"] == sum(mem[k] for k in parts) + max(
            mem["activations"] + mem["gradients"], mem["vae_decode"]
        )
    assert lora1["total"] < 0.95 * 80e9 < full1["total"] < 0.95 * 141e9  # the two one-GPU recipes
    b = full8["per_block"]
    assert b["saved"] > 2 * 2925 * (14 * 3072 + 3 * 14336)  # more than the former guess
