"""tests/scripts/gpu_check.py --small: the GPU check script runs end to end on CPU at tiny shapes, so it
cannot rot before the first GPU run. Run: python -m pytest tests/test_gpu_check.py -q
"""
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "scripts"))
import gpu_check  # noqa: E402


def test_gpu_check_small_runs_and_reports_everything(tmp_path, capsys):
    out = tmp_path / "gpu_check.json"
    res = gpu_check.main(["--small", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))       # the JSON is the table
    rows = res["rows"]
    for key in ("dit_forward", "dit_fwd_bwd", "vae_decode", "text_encode", "rl_iteration", "rl_rollout",
                "rl_decode", "rl_reward", "rl_update"):
        assert rows[key]["seconds"] > 0, key
    for key in ("dit_forward", "dit_fwd_bwd", "vae_decode"):                  # next to the dry run
        assert rows[key]["pred_seconds"] > 0 and rows[key]["tflops_per_s"] > 0 and rows[key]["mfu"] > 0
    assert rows["dit_fwd_bwd"]["flops"] == 3 * rows["dit_forward"]["flops"]
    assert rows["dit_fwd_bwd"]["pred_peak"] > 0 and rows["vae_decode"]["pred_peak"] > 0
    assert rows["rl_iteration"]["pred_seconds"] > 0
    assert res["shapes"]["tokens"] == 2 * 2 * 2                              # 64x64x5 -> latent 2x4x4 -> 8
    # one entry per trained step; on CPU the rollout and the update make the same bf16 calls (micro-batch
    # 1), so the first update is exactly on-policy
    assert [p["step"] for p in res["parity"]] == [0, 1]
    for p in res["parity"]:
        assert p["ratio_mean"] == 1.0 and p["max_abs_ratio_minus_1"] == 0.0 and p["clipfrac"] == 0.0
    assert all(math.isfinite(r) for r in res["rewards"])
    text = capsys.readouterr().out
    assert "on-policy parity of the first update" in text and "dit_fwd_bwd" in text
