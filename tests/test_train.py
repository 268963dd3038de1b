"""train.py: config parsing, LoRA, the dry-run cost model, and short real runs of the tiny config
(end to end, exact resume, NaN stop, 2-process torchrun on CPU).
Run: python -m pytest tests/test_train.py -q

The runs share one small geometry (maze, 128x128, 9 frames: the verifier's minimum) and one VAE
warm-up, cached under tests/.cache by the first run that needs it.
"""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import eval as E
import model as M
import sde
import train as T

ROOT = Path(__file__).resolve().parents[1]
# a short but complete tiny run: stage 0 (the shipped VAE, its round trip on 2 test videos per
# domain), 2 SFT steps, 2 RL iterations, evaluation of 4 puzzles; all three domains (the preset's)
SMALL = ["--config", "tiny", "--frames=9", "--vae_check=2", "--sft_steps=2",
         "--sft_batch=4", "--rl_steps=2", "--puzzles_per_step=2", "--group_size=4",
         "--groups_per_update=2", "--num_steps=4", "--sde_steps=2", "--eval_n=4", "--eval_steps=4",
         "--micro_batch=4", "--save_every=100", "--gif_every=1"]
# stage 0 as the VAE warm-up instead (30 steps, cached under tests/.cache)
WARMUP = ["--vae_weights=", "--vae_steps=30", "--vae_batch=4",
          f"--cache_dir={ROOT / 'tests' / '.cache'}"]


def run(args, tmp, *, torchrun=False, check=True):
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        threads = "1"
    else:
        cmd = [sys.executable]
        threads = os.environ.get("OMP_NUM_THREADS", "2")
    cmd += [str(ROOT / "train.py"), *args]
    env = dict(os.environ, OMP_NUM_THREADS=threads)
    p = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n"
                             f"{p.stderr[-5000:]}")
    return p


def metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


# -----------------------------------------------------------------------------
# config

def test_presets_overrides_and_errors():
    for name in T.CONFIGS:
        cfg = T.get_config(["--config", name])
        assert cfg.config == name
        T.check_config(cfg, 1)
    cfg = T.get_config(["--config=5b", "--lr=3e-6", "--group_size", "4", "--dry_run",
                        "--domains=maze", "--beta=1"])
    got = (cfg.lr, cfg.group_size, cfg.dry_run, cfg.domains, cfg.beta)
    assert got == (3e-6, 4, True, "maze", 1.0)
    # an int literal for a float field
    assert type(cfg.beta) is float
    with pytest.raises(ValueError, match="unknown config key --lerning_rate"):
        T.get_config(["--lerning_rate=1"])
    with pytest.raises(ValueError, match="expected int"):
        T.get_config(["--group_size=4.5"])
    with pytest.raises(ValueError, match="needs a value"):
        T.get_config(["--lr"])
    with pytest.raises(ValueError, match="unknown config 'huge'"):
        T.get_config(["--config", "huge"])
    with pytest.raises(ValueError, match="4k\\+1"):
        T.check_config(T.get_config(["--frames=16"]), 1)
    with pytest.raises(ValueError, match="SDE window"):
        T.check_config(T.get_config(["--num_steps=4", "--sde_steps=5"]), 1)
    with pytest.raises(ValueError, match="MIN_FRAMES = 9"):
        T.check_config(T.get_config(["--frames=5"]), 1)          # the verifier's minimum
    # the last denoising step stays deterministic: full-step GRPO is K = N - 1
    T.check_config(T.get_config(["--num_steps=4", "--sde_steps=3"]), 1)
    with pytest.raises(ValueError, match="last of the 4 steps stays a deterministic ODE step"):
        T.check_config(T.get_config(["--num_steps=4", "--sde_steps=4"]), 1)
    with pytest.raises(ValueError, match="SDE window \\[1, 4\\)"):
        T.check_config(T.get_config(["--num_steps=4", "--sde_start=1", "--sde_steps=3"]), 1)
    with pytest.raises(ValueError, match="--reward_weights=papr: choose from paper, code"):
        T.check_config(T.get_config(["--reward_weights=papr"]), 1)
    with pytest.raises(ValueError, match="--vae_weights=nowhere.safetensors: no such file"):
        T.check_config(T.get_config(["--vae_weights=nowhere.safetensors"]), 1)
    T.check_config(T.get_config(["--vae_weights="]), 1)        # no file: the warm-up instead


def test_sft_pool_cycles_a_fixed_set_of_train_puzzles():
    cfg = T.get_config(["--config", "tiny", "--sft_pool=5"])
    run = T.Run(cfg, None, None, None, None, torch.device("cpu"))
    got = T.sft_puzzles(run, 3, 4)                                 # indices 3, 4, 0, 1
    fresh = T.make_puzzles(cfg, "train", 0, 5)
    assert [(p.domain, p.seed) for p in got] == [(fresh[i].domain, fresh[i].seed)
                                                 for i in (3, 4, 0, 1)]
    assert len(run.sft_set) == 5 and got[2] is run.sft_set[0]     # generated once, reused
    cfg.sft_pool = 0                                               # fresh puzzles every step
    run = T.Run(cfg, None, None, None, None, torch.device("cpu"))
    assert [p.seed for p in T.sft_puzzles(run, 7, 3)] == \
        [p.seed for p in T.make_puzzles(cfg, "train", 7, 3)]


# -----------------------------------------------------------------------------
# LoRA

def small_dit():
    torch.manual_seed(0)
    dit = M.WanModel(M.DiTConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_dim=4,
                                 out_dim=4, text_len=8, text_dim=16))
    # a non-zero head, so outputs depend on every weight
    for p in dit.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(2, 4, 2, 4, 4)
    t = torch.tensor([300.0, 700.0])
    ctx = [torch.randn(3, 16), torch.randn(5, 16)]
    return dit, (x, t, ctx)


def test_lora_keeps_names_starts_at_base_merges_and_switches_off():
    dit, inp = small_dit()
    base_keys = set(dit.state_dict())
    base_out = dit(*inp)
    n = T.add_lora(dit, rank=4, alpha=8.0, targets="q,k,v,o")
    # 2 blocks x (self, cross) x q,k,v,o
    assert n == 2 * 2 * 4
    keys = set(dit.state_dict())
    assert base_keys <= keys and all(".lora_" in k for k in keys - base_keys)
    assert all(p.requires_grad == (".lora_" in name) for name, p in dit.named_parameters())
    # B = 0: starts as the base model
    assert torch.equal(dit(*inp), base_out)
    for name, p in dit.named_parameters():
        if name.endswith("lora_B"):
            torch.nn.init.normal_(p, std=0.1)
    adapted = dit(*inp)
    assert (adapted - base_out).abs().max() > 1e-3
    T.set_lora(dit, False)
    # adapters off = the reference policy
    assert torch.equal(dit(*inp), base_out)
    T.set_lora(dit, True)
    merged = T.merge_lora(dit.state_dict(), scale=8.0 / 4)
    assert set(merged) == base_keys
    plain, _ = small_dit()
    plain.load_state_dict(merged, strict=True)
    torch.testing.assert_close(plain(*inp), adapted, rtol=1e-5, atol=1e-5)


def test_lora_gradient_reaches_only_adapters():
    dit, inp = small_dit()
    T.add_lora(dit, rank=2, alpha=4.0, targets="ffn.0,ffn.2")
    for name, p in dit.named_parameters():
        if name.endswith("lora_B"):
            torch.nn.init.normal_(p, std=0.1)
    dit(*inp).square().mean().backward()
    grads = {n: p.grad for n, p in dit.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if ".lora_" in n)
    assert all(g is None for n, g in grads.items() if ".lora_" not in n)
    with pytest.raises(ValueError, match="no nn.Linear"):
        T.add_lora(small_dit()[0], 2, 4.0, "nonexistent")


# -----------------------------------------------------------------------------
# the RL update on stored steps (the end-to-end runs below start from an untrained model whose
# rewards are all 0, so every group is filtered there: the update is checked here on real rollouts)

def rollout_for_update(micro_batch, extra=()):
    cfg = T.get_config(["--config=tiny", "--frames=9", "--puzzles_per_step=2", "--group_size=3",
                        "--groups_per_update=1", "--num_steps=4", "--sde_steps=2",
                        "--grad_clip=1e9", "--clip_range=1e9", f"--micro_batch={micro_batch}",
                        *extra])
    dit, _ = small_dit()
    t5 = M.T5Encoder(M.T5Config(vocab=256, dim=16, dim_attn=16, dim_ffn=32, num_heads=2,
                                num_layers=1))
    text = M.TextEncoder(t5, 8)
    batch = T.make_puzzles(cfg, "train", 0, 2)
    ctx = text.encode([p.prompt for p in batch])
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(6, 4, 3, 4, 4, generator=g)
    image = torch.randn(2, 4, 1, 4, 4, generator=g)[[0, 0, 0, 1, 1, 1]]
    _, traj = sde.sample(dit, noise, [ctx[j // 3] for j in range(6)], image_latent=image,
                         num_steps=4, sde_steps=2, noise_level=0.7, generator=g,
                         patch_size=dit.cfg.patch_size)
    run = T.Run(cfg=cfg, dit=dit, ref=dit, vae=None, text=text, device=torch.device("cpu"))
    rollout = T.Rollout(puzzles=batch, mine=list(range(6)), traj=traj, videos=None, scores=None,
                        timing={})
    return run, rollout


def update_once(micro_batch, adv):
    run, rollout = rollout_for_update(micro_batch)
    before = [p.detach().clone() for p in run.dit.parameters()]
    opt = torch.optim.SGD(run.dit.parameters(), lr=1.0)
    out = T.rl_update(run, rollout, adv, opt)
    return [p.detach() - b for p, b in zip(run.dit.parameters(), before)], out


def test_rl_update_is_the_mean_gradient_and_skips_zero_advantage_groups():
    # group 1: all-equal rewards, filtered
    adv = [1.0, -0.5, -0.5, 0.0, 0.0, 0.0]
    d1, out1 = update_once(1, adv)
    d4, out4 = update_once(4, adv)
    # 3 videos x K
    assert len(out1) == 2 and "skipped" in out1[1] and len(out1[0]["stats"]) == 3 * 2
    # on-policy: ratio 1
    assert all(abs(s["ratio_mean"] - 1) < 1e-6 for s in out1[0]["stats"])
    assert max(d.abs().max() for d in d1) > 0                        # the policy moved ...
    # ... by the same mean gradient, however split
    for a, b in zip(d1, d4):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    # the loss is linear in A (no clipping here)
    d2, _ = update_once(1, [2 * a for a in adv])
    for a, b in zip(d1, d2):
        torch.testing.assert_close(2 * a, b, rtol=1e-4, atol=1e-7)
    d0, out0 = update_once(1, [0.0] * 6)
    assert all("skipped" in o for o in out0) and all(d.abs().max() == 0 for d in d0)


# -----------------------------------------------------------------------------
# dry run

def test_dry_run_5b_counts_and_early_step_focus_saving(capsys):
    res = T.main(["--config", "5b", "--dry_run"])
    # 480x480x49 -> latent 13x30x30 -> 2,925 tokens
    assert res["tokens"] == 13 * 15 * 15
    assert res["n_dit"] == 4_999_787_712          # Wan-AI/Wan2.2-TI2V-5B's released DiT
    # cross-check the counted DiT forward against a matmul count of the Wan2.2 DiT (2 FLOPs per MAC)
    c, L, Lt, layers = 3072, res["tokens"], 512, 30
    per_layer = (L * (4 * c * c + 2 * c * c + 2 * c * 14336) + Lt * 2 * c * c + 2 * L * L * c
                 + 2 * L * Lt * c)
    # + once per video: text embedding (Lt tokens), and per token the patch embedding, the time MLP
    # (256 -> c -> c), the 6-way time projection (c -> 6c) and the head (c -> 192)
    per_token = 48 * 4 * c + 256 * c + c * c + 6 * c * c + c * 192
    analytic = 2 * (layers * per_layer + Lt * (4096 * c + c * c) + L * per_token)
    assert abs(res["f_dit"] / analytic - 1) < 0.02
    esf, full = res["rows"]
    assert esf[1] == 10 and full[1] == 20 and esf[2] == full[2]      # same rollout cost
    assert abs(esf[3] / full[3] - 0.5) < 1e-9                        # update cost is linear in K
    saving = 1 - esf[4] / full[4]
    assert 0.2 < saving < 0.5
    out = capsys.readouterr().out
    assert "Early-Step Focus saves" in out and "4,999,787,712" in out
    lora = T.main(["--config", "5b_lora", "--dry_run"])
    # r32 A and B on q,k,v,o of both attentions
    assert lora["n_train"] == 30 * 2 * 4 * 32 * (3072 + 3072)
    assert lora["mem_gb"] < res["mem_gb"]


# -----------------------------------------------------------------------------
# real tiny runs

@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    p = run([*SMALL, f"--out_dir={tmp / 'out'}"], tmp)
    return tmp / "out", p.stdout + p.stderr


def test_tiny_run_end_to_end_writes_everything(full_run):
    out, log = full_run
    rows = metrics(out)
    assert [r["stage"] for r in rows] == ["sft"] * 2 + ["rl"] * 2
    assert all(math.isfinite(r["loss"]) for r in rows if r["stage"] == "sft" or "loss" in r)
    for key in ("reward", "reward_std", "success", "zero_std_ratio", "grad_norm", "lr",
                "time_rollout",
                "time_decode", "time_reward", "time_update"):
        assert key in rows[-1], key
    latest = out / (out / "latest").read_text().strip()
    # stage-end checkpoints kept
    assert latest.name == "ckpt_000004" and (out / "ckpt_000002").is_dir()
    files = {"dit.safetensors", "vae.safetensors", "t5.safetensors", "state.pt", "config.json"}
    assert files <= {p.name for p in latest.iterdir()}
    assert json.loads((latest / "config.json").read_text())["rl_steps"] == 2
    state = torch.load(latest / "state.pt", weights_only=True)       # tensors and plain data only
    assert state["step"] == 4 and len(state["rng"]) == 1
    for stage in ("sft", "rl"):
        res = json.loads((out / f"eval_{stage}.json").read_text())
        assert res["overall"]["n"] == 4 and len(res["samples"]) == 4
        assert all(s["seed"] >= 1_000_000_000 for s in res["samples"])      # test split only
    table = (out / "results.md").read_text()
    assert "SFT + RL (VideoRLVR)" in table and "maze SR" in table and table in log
    assert list((out / "gifs").glob("rl_*.gif")) and list((out / "gifs" / "eval_rl").glob("*.gif"))
    assert "derived: latent (C, F, H, W)" in log
    # stage 0: the shipped VAE, and its round trip on every domain printed and saved
    assert "stage 0: the trained tiny VAE assets/tiny_vae.safetensors" in log
    check = json.loads((out / "vae_check.json").read_text())
    assert check["n"] == 2 and set(check["passed"]) == {"maze", "flowfree", "sokoban"}
    assert "still verify after a VAE round trip: maze" in log
    assert all(f"{d} SR" in table for d in ("maze", "flowfree", "sokoban"))


def test_resume_is_exact(full_run, tmp_path):
    """2 steps, stop, --resume for the last 2 (crossing SFT -> RL) == the 4 uninterrupted steps."""
    out = tmp_path / "out"
    args = [*SMALL, "--eval_n=0", f"--out_dir={out}"]
    run([*args, "--stop_after=2"], tmp_path)
    assert [r["step"] for r in metrics(out)] == [0, 1]
    run([*args, "--resume"], tmp_path)
    a, b = metrics(full_run[0]), metrics(out)
    assert [r["step"] for r in b] == [0, 1, 2, 3]
    for ra, rb in zip(a, b):
        for key in ("loss", "grad_norm", "reward", "success"):
            if key in ra:
                assert ra[key] == rb[key], (ra["step"], key, ra[key], rb[key])


def test_nonfinite_loss_skips_then_stops(tmp_path):
    args = ["--rl_steps=0", "--eval_n=0", "--sft_steps=6", "--sft_lr=1e30"]
    p = run([*SMALL, *WARMUP, *args, f"--out_dir={tmp_path / 'out'}"],
            tmp_path, check=False)
    assert p.returncode != 0
    assert "stage 0: the warmed-up tiny VAE" in p.stdout
    assert "non-finite loss or gradient, update skipped" in p.stdout + p.stderr
    assert "NaN/inf for 3 consecutive steps" in p.stderr


def test_torchrun_two_processes_on_cpu(tmp_path):
    out = tmp_path / "out"
    p = run([*SMALL, "--eval_n=4", f"--out_dir={out}"], tmp_path, torchrun=True)
    rows = metrics(out)
    # rank 0 alone writes: one row per step
    assert [r["stage"] for r in rows] == ["sft"] * 2 + ["rl"] * 2
    assert all(math.isfinite(r["loss"]) for r in rows if r["stage"] == "sft" or "loss" in r)
    assert "2 rank(s)" in p.stdout
    assert p.stdout.count("derived: latent") == 1                    # rank 0 alone prints
    res = json.loads((out / "eval_rl.json").read_text())
    # the sharded test set, gathered
    assert [s["index"] for s in res["samples"]] == [0, 1, 2, 3]
    assert (out / (out / "latest").read_text().strip() / "dit.safetensors").exists()


def test_tiny_lora_run_with_kl_saves_adapters_resumes_exactly_and_merges(full_run, tmp_path):
    """LoRA r4, beta > 0: lora.safetensors only, exact resume, and --ckpt merges the adapters.

    It starts from the end-to-end run's weights: from the random init the DiT head is zero (as
    Wan2.2 initialises it), so no gradient would reach the adapters.
    """
    from safetensors.torch import load_file
    lora = ["--lora_rank=4", "--lora_alpha=8", "--beta=0.004", "--eval_n=0", "--gif_every=0",
            f"--ckpt={full_run[0]}"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run([*SMALL, *lora, f"--out_dir={whole}"], tmp_path)
    run([*SMALL, *lora, f"--out_dir={parts}", "--stop_after=2"], tmp_path)
    run([*SMALL, *lora, f"--out_dir={parts}", "--resume"], tmp_path)
    a, b = metrics(whole), metrics(parts)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 1, 2, 3]
    for ra, rb in zip(a, b):
        for key in ("loss", "grad_norm", "reward", "success"):
            if key in ra:
                assert ra[key] == rb[key], (ra["step"], key)
    ckpt = T.resolve_checkpoint(whole)
    names = {p.name for p in ckpt.iterdir()}
    assert "lora.safetensors" in names and "dit.safetensors" not in names
    assert T.load_state(ckpt / "state.pt")["step"] == 4              # weights_only=True loads it
    adapters = load_file(str(ckpt / "lora.safetensors"))
    assert adapters and all(".lora_" in k for k in adapters)
    # --ckpt=<LoRA run> into a model without adapters: W + (alpha / r) B A
    cfg = T.get_config([*SMALL, f"--ckpt={whole}"])
    dit, vae, text = T.build_models(cfg, torch.device("cpu"))
    T.load_weights(T.resolve_checkpoint(full_run[0]), dit, vae, text)   # the LoRA run's base
    base = {k: v.clone() for k, v in dit.state_dict().items()}
    T.load_weights(ckpt, dit, vae, text)
    merged = dit.state_dict()
    assert set(merged) == set(base)                                  # the official key set
    moved = 0
    for key_a, A in adapters.items():
        if not key_a.endswith(".lora_A"):
            continue
        stem = key_a[: -len(".lora_A")]
        B = adapters[stem + ".lora_B"]
        expected = base[stem + ".weight"] + (8 / 4) * B @ A
        torch.testing.assert_close(merged[stem + ".weight"], expected, rtol=1e-5, atol=1e-6)
        moved += int(B.abs().max() > 0)
    assert moved > 0                                                 # SFT trained the adapters


# -----------------------------------------------------------------------------
# what a user sees: skipped RL iterations, curves.png, eval --out_dir, a damaged checkpoint

def test_run_shows_skipped_iterations_and_draws_curves(full_run):
    out, log = full_run
    assert T.SKIPPED in log and "loss=nan" not in log                # every group zero-std here
    image = Image.open(out / "curves.png")
    assert image.size == T.CURVES_SIZE
    pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 8         # not blank


def test_eval_writes_where_asked(full_run, tmp_path):
    out, _ = full_run
    ckpt = T.resolve_checkpoint(out)
    shutil.rmtree(ckpt / "eval", ignore_errors=True)
    E.main([f"--ckpt={out}", f"--out_dir={tmp_path / 'there'}", "--eval_n=2", "--eval_steps=2"])
    there = tmp_path / "there"
    assert (there / "results.json").exists() and (there / "results.md").exists()
    assert not (ckpt / "eval").exists()                              # not the checkpoint's folder
    E.main([f"--ckpt={out}", "--eval_n=2", "--eval_steps=2"])        # the default stays
    assert (ckpt / "eval" / "results.json").exists()


def test_resume_from_a_truncated_checkpoint_names_it_and_falls_back(full_run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(full_run[0], copy)
    latest = T.resolve_checkpoint(copy)
    dit = latest / "dit.safetensors"
    dit.write_bytes(dit.read_bytes()[: dit.stat().st_size // 2])      # a partial copy
    assert T.resume_checkpoint(copy) == copy / "ckpt_000002"
    warning = capsys.readouterr().out
    assert str(dit) in warning and "truncated" in warning and "ckpt_000002" in warning
    with pytest.raises(T.CheckpointError, match="dit.safetensors is truncated"):
        T.check_checkpoint(latest)
    earlier = copy / "ckpt_000002" / "dit.safetensors"
    earlier.write_bytes(earlier.read_bytes()[:100])
    with pytest.raises(T.CheckpointError, match="no intact earlier checkpoint"):
        T.resume_checkpoint(copy)
    p = run([*SMALL, f"--out_dir={copy}", "--resume"], tmp_path, check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert str(dit) in lines[-1] and lines[-1].startswith("train.py: error: ")
