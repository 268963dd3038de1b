"""eval.py: the held-out evaluation and the paper-style table.

Run: python -m pytest tests/test_eval.py -q
"""
import math

import numpy as np
import torch

import eval as E
import model as M
import puzzles
import train as T


def rows(domain, successes, rewards, precisions):
    cases = enumerate(zip(successes, rewards, precisions))
    return [dict(index=i, domain=domain, seed=10**9 + i, precision=p, recall=s * 1.0, f1=s * 1.0,
                 success=s, reward=r, reason="ok" if s else "no") for i, (s, r, p) in cases]


def test_summaries_and_standard_errors():
    maze = rows("maze", [1, 0, 1, 1], [1.0, 0.2, 1.0, 0.9], [1.0, None, 1.0, 0.5])
    soko = rows("sokoban", [0, 0], [0.1, 0.3], [None, None])
    res = E.summarize_rows(maze + soko)
    m = res["maze"]
    assert m["n"] == 4 and m["success"] == 0.75
    # undefined P skipped
    assert math.isclose(m["precision"], np.mean([1.0, 1.0, 0.5]))
    assert math.isclose(m["success_se"], np.std([1, 0, 1, 1], ddof=1) / 2)
    assert math.isclose(m["reward_se"], np.std([1.0, 0.2, 1.0, 0.9], ddof=1) / 2)
    assert res["overall"]["n"] == 6 and math.isclose(res["overall"]["success"], 0.5)
    assert math.isnan(res["sokoban"]["precision"])
    table = E.format_table({"SFT": res, "RL": E.summarize_rows(maze)})
    lines = table.splitlines()
    assert lines[0].startswith("| Model | maze P | maze R | maze F1 | maze SR | sokoban P")
    # F1 = 2 P R / (P + R) of the MEAN P and R (the paper's table), "-" where no sample defines P
    assert lines[2].startswith("| SFT | 83.3 | 75.0 | 78.9 | 75.0 | - | 0.0 | - | 0.0 | "
                               "50.0 ± 22.4 | 0.583 ± 0.174 | 6 |")
    # no sokoban rows
    assert "| RL | 83.3 | 75.0 | 78.9 | 75.0 | - | - | - | - | 75.0 ± 25.0 |" in table


def tiny_models():
    """The tiny DiT, VAE and umT5 at random init; a non-zero DiT head (outputs follow the noise)."""
    torch.manual_seed(0)
    dit, vae = M.WanModel(M.DIT_CONFIGS["tiny"]), M.WanVAE(M.VAE_CONFIGS["tiny"])
    text = M.TextEncoder(M.T5Encoder(M.T5_CONFIGS["tiny"]).eval(), dit.cfg.text_len)
    for p in dit.head.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return dit, vae, text


VIDEO = dict(frames=9, height=64, width=64)
CPU = torch.device("cpu")


def sample_latents(dit, vae, text, n, micro_batch, guidance=1.0, steps=2):
    """Evaluation latents of test puzzles 0..n-1 (eval.evaluate's noise and sampler settings)."""
    batch = puzzles.make_batch(["maze"], "easy", "test", 0, n)
    image = E.encode_puzzles(vae, batch, 1, VIDEO["height"], VIDEO["width"], micro_batch, CPU)
    context = text.encode([p.prompt for p in batch])
    lat = M.latent_shape(VIDEO["frames"], VIDEO["height"], VIDEO["width"], vae.cfg.z_dim)
    gen = E.generate_videos(dit, vae, image, context, lambda rows: E.eval_noise(lat, 0, rows, CPU),
                            text=text, frames=VIDEO["frames"], micro_batch=micro_batch, device=CPU,
                            guidance=guidance, num_steps=steps, shift=5.0)
    return gen


def test_evaluate_does_not_depend_on_batching():
    """Each puzzle's noise comes from its own generator: micro-batch 2 and 3 sample the same latents
    (to float rounding: a DiT forward on 2 or 3 videos rounds differently in the last bits)."""
    dit, vae, text = tiny_models()
    a, b = sample_latents(dit, vae, text, 5, 2), sample_latents(dit, vae, text, 5, 3)
    assert a.latents.shape == (5, 16, 3, 4, 4)
    torch.testing.assert_close(a.latents, b.latents, rtol=1e-5, atol=1e-5)
    # and they differ between puzzles
    assert (a.latents[0] - a.latents[1]).abs().max() > 1e-2
    assert np.abs(a.videos.astype(int) - b.videos.astype(int)).max() <= 1
    batch = puzzles.make_batch(["maze"], "easy", "test", 0, 5)
    rows = [E.evaluate(dit, vae, text, batch, CPU, steps=2, shift=5.0, micro_batch=mb,
                       **VIDEO)["samples"] for mb in (2, 3)]
    assert [r["index"] for r in rows[0]] == list(range(5)) and rows[0] == rows[1]
    assert all(r["seed"] >= 10**9 for r in rows[0])                 # test split


def test_guidance_in_evaluation_runs_and_changes_the_videos():
    """--eval_cfg=2 crashed (the negative prompt was built from the RL guidance scale)."""
    dit, vae, text = tiny_models()
    one = sample_latents(dit, vae, text, 2, 2, guidance=1.0)
    two = sample_latents(dit, vae, text, 2, 2, guidance=2.0)
    assert torch.isfinite(two.latents).all()
    assert (one.latents - two.latents).abs().max() > 1e-3
    cfg = T.get_config(["--config", "tiny", "--frames=9", "--height=64", "--width=64", "--eval_n=2",
                        "--eval_steps=2", "--eval_cfg=2", "--micro_batch=2"])
    # RL without guidance, evaluation with
    assert cfg.cfg_scale == 1.0
    res = E.evaluate_config(cfg, dit, vae, text, CPU)
    assert res["overall"]["n"] == 2


def test_paired_difference():
    a = E.summarize_rows(rows("maze", [1, 0, 0, 1, 0], [1.0, 0.2, 0.1, 1.0, 0.3], [1.0] * 5))
    b = E.summarize_rows(rows("maze", [1, 1, 0, 1, 0], [1.0, 1.0, 0.1, 0.8, 0.3], [1.0] * 5))
    d = E.paired_difference(a, b)
    assert d["n"] == 5 and math.isclose(d["success"], 0.2)
    assert math.isclose(d["reward"], (0.8 - 0.2) / 5)
    assert math.isclose(d["success_se"], np.std([0, 1, 0, 0, 0], ddof=1) / math.sqrt(5))
    # the paired error bar is smaller than the separate ones when most puzzles agree
    assert d["success_se"] < min(a["overall"]["success_se"], b["overall"]["success_se"])


def test_paired_difference_per_domain_matches_puzzles_not_positions(tmp_path):
    maze_a = rows("maze", [1, 0, 0], [1.0, 0.2, 0.1], [1.0] * 3)
    soko_a = rows("sokoban", [0, 0], [0.1, 0.2], [None] * 2)
    for i, r in enumerate(maze_a + soko_a):
        r["index"] = i
    a = E.summarize_rows(maze_a + soko_a)
    # a sokoban-only evaluation: the same puzzles at other positions, one of them now solved
    soko_b = rows("sokoban", [0, 1], [0.1, 1.0], [None] * 2)
    b = E.summarize_rows(soko_b)
    d = E.paired_difference(a, b, "sokoban")
    assert d["n"] == 2 and math.isclose(d["success"], 0.5) and math.isclose(d["reward"], 0.4)
    assert E.paired_difference(a, b, "maze")["n"] == 0
    assert E.paired_difference(a, a, "maze")["success"] == 0.0
    # the report lists the paired difference of every domain under the overall one
    both = E.summarize_rows(rows("maze", [1, 1, 0], [1.0, 1.0, 0.1], [1.0] * 3) + soko_b)
    table = E.report({"SFT": a, "SFT + RL": both}, tmp_path)
    assert "- all (5 puzzles): success +40.0" in table
    assert "- maze (3 puzzles): success +33.3" in table
    assert "- sokoban (2 puzzles): success +50.0" in table
