"""eval.py: the held-out evaluation and the paper-style table. Run: python -m pytest tests/test_eval.py -q"""
import math

import numpy as np
import torch

import eval as E
import model as M
import train as T


def rows(domain, successes, rewards, precisions):
    return [dict(index=i, domain=domain, seed=10**9 + i, precision=p, recall=s * 1.0, f1=s * 1.0, success=s,
                 reward=r, reason="ok" if s else "no") for i, (s, r, p) in enumerate(zip(successes, rewards, precisions))]


def test_summaries_and_standard_errors():
    maze = rows("maze", [1, 0, 1, 1], [1.0, 0.2, 1.0, 0.9], [1.0, None, 1.0, 0.5])
    soko = rows("sokoban", [0, 0], [0.1, 0.3], [None, None])
    res = E.summarize_rows(maze + soko)
    m = res["maze"]
    assert m["n"] == 4 and m["success"] == 0.75
    assert math.isclose(m["precision"], np.mean([1.0, 1.0, 0.5]))                 # undefined P skipped
    assert math.isclose(m["success_se"], np.std([1, 0, 1, 1], ddof=1) / 2)
    assert math.isclose(m["reward_se"], np.std([1.0, 0.2, 1.0, 0.9], ddof=1) / 2)
    assert res["overall"]["n"] == 6 and math.isclose(res["overall"]["success"], 0.5)
    assert math.isnan(res["sokoban"]["precision"])
    table = E.format_table({"SFT": res, "RL": E.summarize_rows(maze)})
    lines = table.splitlines()
    assert lines[0].startswith("| Model | maze P | maze R | maze F1 | maze SR | sokoban P")
    # F1 = 2 P R / (P + R) of the MEAN P and R (the paper's table), "-" where no sample defines P
    assert lines[2].startswith("| SFT | 83.3 | 75.0 | 78.9 | 75.0 | - | 0.0 | - | 0.0 | 50.0 ± 22.4 | 0.583 ± 0.174 | 6 |")
    assert "| RL | 83.3 | 75.0 | 78.9 | 75.0 | - | - | - | - | 75.0 ± 25.0 |" in table   # no sokoban rows


def test_evaluate_does_not_depend_on_batching():
    """Each puzzle's noise comes from its own generator: micro-batch 2 and 3 give identical scores."""
    torch.manual_seed(0)
    cfg = T.get_config(["--config", "tiny", "--frames=5", "--eval_n=5", "--eval_steps=2"])
    dit, vae, text = M.WanModel(M.DIT_CONFIGS["tiny"]), M.WanVAE(M.VAE_CONFIGS["tiny"]), None
    text = M.TextEncoder(M.T5Encoder(M.T5_CONFIGS["tiny"]).eval(), dit.cfg.text_len)
    for p in dit.head.parameters():                               # a non-zero head: outputs depend on noise
        torch.nn.init.normal_(p, std=0.1)
    out = []
    for mb in (2, 3):
        cfg.micro_batch = mb
        out.append(E.evaluate(cfg, dit, vae, text, torch.device("cpu"))["samples"])
    assert [r["index"] for r in out[0]] == list(range(5))
    assert out[0] == out[1]
    assert all(r["seed"] >= 10**9 for r in out[0])                 # test split


def test_paired_difference():
    a = E.summarize_rows(rows("maze", [1, 0, 0, 1, 0], [1.0, 0.2, 0.1, 1.0, 0.3], [1.0] * 5))
    b = E.summarize_rows(rows("maze", [1, 1, 0, 1, 0], [1.0, 1.0, 0.1, 0.8, 0.3], [1.0] * 5))
    d = E.paired_difference(a, b)
    assert d["n"] == 5 and math.isclose(d["success"], 0.2) and math.isclose(d["reward"], (0.8 - 0.2) / 5)
    assert math.isclose(d["success_se"], np.std([0, 1, 0, 0, 0], ddof=1) / math.sqrt(5))
    # the paired error bar is smaller than the separate ones when most puzzles agree
    assert d["success_se"] < min(a["overall"]["success_se"], b["overall"]["success_se"])
