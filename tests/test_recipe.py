"""The plumbing of train.py that a wrong factor would silently break: one-way imports, the RL
gradient scale, SFT micro-batching, the sparse reward, the LoRA reference policy, 1 vs 2 processes,
guidance in rollouts, and state.pt loading only tensors and plain data.

Run: python -m pytest tests/test_recipe.py -q
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import grpo
import model as M
import reward
import sde
import train as T

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def python(code, script=None, torchrun=False, timeout=600):
    """Run `code` (or the file `script`) in a fresh interpreter, or in 2 torchrun processes."""
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    else:
        cmd = [sys.executable]
    cmd += [str(script)] if script else ["-c", code]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return p.stdout


# -----------------------------------------------------------------------------
# imports run one way: model, sde, puzzles < reward, grpo < eval < train

def test_import_eval_does_not_import_train():
    code = "import sys, eval; print(sorted(m for m in ('train', 'eval') if m in sys.modules))"
    out = python(code)
    assert out.strip() == "['eval']"


def test_train_py_run_loads_train_py_once():
    """`python train.py` runs the file as __main__; importing it again (as `train`, through eval)
    would execute it twice and make two TrainConfig classes."""
    code = ("import runpy, sys; sys.argv = ['train.py', '--config', '5b', '--dry_run']; "
            "runpy.run_path('train.py', run_name='__main__'); print('train' in sys.modules)")
    assert python(code).strip().splitlines()[-1] == "False"


# -----------------------------------------------------------------------------
# a small policy and rollout for the update tests

def small_policy():
    torch.manual_seed(0)
    dit = M.WanModel(M.DiTConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_dim=4,
                                 out_dim=4, text_len=8, text_dim=16))
    for p in dit.parameters():
        torch.nn.init.normal_(p, std=0.05)
    text = M.TextEncoder(M.T5Encoder(M.T5Config(vocab=256, dim=16, dim_attn=16, dim_ffn=32,
                                                num_heads=2, num_layers=1)), 8)
    return dit, text


def small_rollout(extra=(), lora=False):
    """A real 6-video rollout (2 puzzles x 3) with K = 2 stored SDE steps of a small DiT."""
    cfg = T.get_config(["--config=tiny", "--frames=9", "--puzzles_per_step=2", "--group_size=3",
                        "--groups_per_update=2", "--num_steps=4", "--sde_steps=2",
                        "--grad_clip=1e9", "--micro_batch=2", *extra])
    dit, text = small_policy()
    if lora:
        T.add_lora(dit, 4, 8.0, "q,k,v,o")
    batch = T.make_puzzles(cfg, "train", 0, 2)
    ctx = text.encode([p.prompt for p in batch])
    g = torch.Generator().manual_seed(0)
    neg = text.encode([""] * 6) if cfg.cfg_scale != 1 else None
    noise = torch.randn(6, 4, 3, 4, 4, generator=g)
    _, traj = sde.sample(dit, noise, [ctx[j // 3] for j in range(6)],
                         image_latent=torch.randn(2, 4, 1, 4, 4, generator=g)[[0, 0, 0, 1, 1, 1]],
                         num_steps=4, sde_steps=2, noise_level=0.7, generator=g,
                         patch_size=dit.cfg.patch_size, cfg_scale=cfg.cfg_scale, neg_context=neg)
    run = T.Run(cfg=cfg, dit=dit, ref=dit, vae=None, text=text, device=CPU)
    rollout = T.Rollout(puzzles=batch, mine=list(range(6)), traj=traj, videos=None, scores=None,
                        timing={})
    return run, rollout


def hand_gradient(run, rollout, adv):
    """The gradient of mean over kept videos j and stored steps k of the clipped loss l_jk,
    each video's step recomputed alone (no micro-batching, no weights)."""
    cfg, traj = run.cfg, rollout.traj
    K = traj.latents.shape[1]
    kept = [j for j in range(len(adv)) if adv[j] != 0]
    mask = sde.frame_mask(traj.latents.shape[3])
    run.dit.zero_grad()
    total = 0.0
    for j in kept:
        ctx = run.text.encode([rollout.puzzles[j // cfg.group_size].prompt])
        for k in range(K):
            x, x_next = traj.latents[[j], k], traj.next_latents[[j], k]
            v = sde.velocity(run.dit, x, traj.timesteps[k], ctx, patch_size=run.dit.cfg.patch_size)
            _, log_prob, _, _ = sde.sde_step(x, v, traj.sigmas[k], traj.sigmas_next[k],
                                             cfg.noise_level, x_next=x_next, mask=mask)
            loss, _ = grpo.policy_loss(log_prob, traj.log_probs[[j], k], torch.tensor([adv[j]]),
                                       cfg.clip_range)
            total = total + loss
    (total / (len(kept) * K)).backward()
    grads = [p.grad.clone() for p in run.dit.parameters()]
    run.dit.zero_grad()
    return grads


def test_rl_update_gradient_is_the_mean_over_kept_videos_and_steps():
    adv = [1.0, -0.5, -0.5, 0.0, 0.0, 0.0]                  # group 1: all-equal rewards, not kept
    run, rollout = small_rollout()
    expected = hand_gradient(run, rollout, adv)
    before = [p.detach().clone() for p in run.dit.parameters()]
    opt = torch.optim.SGD(run.dit.parameters(), lr=1.0)
    out = T.rl_update(run, rollout, adv, opt)
    assert len(out) == 1 and len(out[0]["stats"]) == 2 * 2   # 3 kept videos in 2 calls x K = 2
    norm = torch.sqrt(sum(g.square().sum() for g in expected))
    assert out[0]["grad_norm"] == pytest.approx(float(norm), rel=1e-4)
    for p, b, g in zip(run.dit.parameters(), before, expected):
        # SGD lr 1: step = grad
        torch.testing.assert_close(b - p.detach(), g, rtol=1e-3, atol=1e-8)


def test_sparse_reward_trains_on_success_only():
    cases = ((0.9, False), (0.3, False), (1.0, True), (0.2, False))
    scores = [reward.Score(precision=1.0, recall=r, f1=r, success=ok, reward=r, components={},
                           reason="") for r, ok in cases]
    rollout = T.Rollout(puzzles=None, mine=[0, 1, 2, 3], traj=None, videos=None, scores=scores,
                        timing={})
    sparse = T.score_rows(T.get_config(["--reward=sparse"]), rollout)
    dense = T.score_rows(T.get_config(["--reward=dense"]), rollout)
    assert [r.signal for r in sparse] == [0.0, 0.0, 1.0, 0.0]
    assert [r.signal for r in dense] == [0.9, 0.3, 1.0, 0.2]
    # the dense reward is still logged
    assert [r.reward for r in sparse] == [r.reward for r in dense]
    # a group of failures with different dense rewards teaches nothing under the sparse reward
    signal = torch.tensor([r.signal for r in sparse[:2]], dtype=torch.float64)
    adv, zero = grpo.group_advantages(signal, 2)
    assert zero.all() and not adv.any()


def test_lora_reference_policy_is_the_adapter_switched_off():
    """With beta > 0 the KL to the reference is 0 before the adapters move, > 0 after one update:
    the reference really is the base model, not the current policy."""
    adv = [1.0, -0.5, -0.5, 0.4, -0.8, 0.4]
    extra = ["--beta=0.1", "--lora_rank=4", "--groups_per_update=1"]
    run, rollout = small_rollout(extra, lora=True)
    assert any(".lora_" in n for n, p in run.dit.named_parameters() if p.requires_grad)
    opt = torch.optim.SGD([p for p in run.dit.parameters() if p.requires_grad], lr=1.0)
    first, second = T.rl_update(run, rollout, adv, opt)             # two updates, one group each
    assert max(s["kl"] for s in first["stats"]) == 0.0              # B = 0: policy = reference
    assert min(s["kl"] for s in second["stats"]) > 0.0
    T.set_lora(run.dit, False)                                      # and the adapters came back on:
    assert all(m.lora_on is False for m in run.dit.modules() if hasattr(m, "lora_on"))
    T.set_lora(run.dit, True)


def test_guidance_in_rollouts_runs_and_changes_them(tmp_path):
    torch.manual_seed(0)
    dit, vae = M.WanModel(M.DIT_CONFIGS["tiny"]), M.WanVAE(M.VAE_CONFIGS["tiny"])
    text = M.TextEncoder(M.T5Encoder(M.T5_CONFIGS["tiny"]).eval(), dit.cfg.text_len)
    for p in dit.head.parameters():
        torch.nn.init.normal_(p, std=0.1)
    latents = []
    for scale in (1.0, 2.0):
        cfg = T.get_config(["--frames=9", "--height=64", "--width=64", "--puzzles_per_step=1",
                            "--group_size=2", "--groups_per_update=1", "--num_steps=2",
                            "--sde_steps=1", f"--cfg_scale={scale}", "--gif_every=0",
                            f"--out_dir={tmp_path}"])
        run = T.Run(cfg=cfg, dit=dit, ref=dit, vae=vae, text=text, device=CPU)
        rollout = T.rl_rollout(run, 0)
        latents.append(rollout.traj.next_latents)
        opt = torch.optim.SGD(dit.parameters(), lr=0.0)
        # the update runs with guidance too
        updates = T.rl_update(run, rollout, [1.0, -1.0], opt)
        stats = updates[0]["stats"]
        assert stats and all(abs(s["ratio_mean"] - 1) < 1e-5 for s in stats)
    assert (latents[0] - latents[1]).abs().max() > 1e-3


# -----------------------------------------------------------------------------
# SFT micro-batching and 1 vs 2 processes

def sft_once(micro_batch):
    cfg = T.get_config(["--frames=9", "--height=64", "--width=64", "--sft_batch=4",
                        f"--micro_batch={micro_batch}", "--grad_clip=1e9", "--sft_steps=10"])
    dit, vae, text = T.build_models(cfg, CPU)
    for p in dit.head.parameters():
        torch.nn.init.normal_(p, std=0.05)
    run = T.Run(cfg=cfg, dit=dit, ref=dit, vae=vae, text=text, device=CPU)
    before = [p.detach().clone() for p in dit.parameters()]
    opt = torch.optim.SGD(dit.parameters(), lr=1.0)
    log = T.sft_step(run, 0, opt)
    return log, [b - p.detach() for p, b in zip(dit.parameters(), before)]


def test_sft_micro_batches_give_the_full_batch_gradient():
    full, g_full = sft_once(4)
    part, g_part = sft_once(1)                                       # 4 calls of 1 video
    assert part["loss"] == pytest.approx(full["loss"], rel=1e-5)
    assert part["grad_norm"] == pytest.approx(full["grad_norm"], rel=1e-4)
    for a, b in zip(g_full, g_part):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)


DIST_SCRIPT = r'''
import json, sys, torch
import model as M, sde, train as T
cfg = T.get_config(["--frames=9", "--height=64", "--width=64", "--sft_batch=4", "--micro_batch=2",
                    "--sft_steps=10", "--puzzles_per_step=2", "--group_size=3",
                    "--groups_per_update=2", "--num_steps=4", "--sde_steps=2"])
rank, world, device = T.setup_distributed(cfg)
dit, vae, text = T.build_models(cfg, device)
for p in dit.head.parameters():
    torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(1))
# one fixed global rollout of 6 videos (2 puzzles x 3), sampled identically on every rank
batch = T.make_puzzles(cfg, "train", 0, 2)
ctx = text.encode([p.prompt for p in batch])
g = torch.Generator().manual_seed(0)
lat = (6, *T.latent_shape(cfg))
image = torch.randn(2, *lat[1:2], 1, *lat[3:], generator=g)[[0, 0, 0, 1, 1, 1]]
_, traj = sde.sample(dit, torch.randn(lat, generator=g), [ctx[j // 3] for j in range(6)],
                     image_latent=image, num_steps=4, sde_steps=2, generator=g,
                     patch_size=dit.cfg.patch_size)
if world > 1:
    T.shard_model(dit, device)
run = T.Run(cfg=cfg, dit=dit, ref=dit, vae=vae, text=text, device=device, rank=rank, world=world)
opt = torch.optim.SGD([p for p in dit.parameters()], lr=0.0)
sft = T.sft_step(run, 0, opt)
# the RL update: this rank holds videos j = rank mod world
mine = list(range(rank, 6, world))
part = sde.Trajectory(traj.latents[mine], traj.next_latents[mine], traj.log_probs[mine], *traj[3:])
rollout = T.Rollout(puzzles=batch, mine=mine, traj=part, videos=None, scores=None, timing={})
out = T.rl_update(run, rollout, [1.0, -0.5, -0.5, 0.7, 0.0, -0.7], opt)
if rank == 0:
    print("RESULT " + json.dumps(dict(sft_loss=sft["loss"], sft_grad_norm=sft["grad_norm"],
                                      rl_grad_norm=out[0]["grad_norm"])))
'''


def test_two_processes_give_the_same_sft_loss_and_rl_gradient_norm(tmp_path):
    def result(text):
        line = next(line for line in text.splitlines() if line.startswith("RESULT "))
        return json.loads(line[len("RESULT "):])
    script = tmp_path / "dist_check.py"
    script.write_text(DIST_SCRIPT)
    one = result(python(None, script))
    two = result(python(None, script, torchrun=True))
    assert one["rl_grad_norm"] > 0
    for key in one:
        assert two[key] == pytest.approx(one[key], rel=1e-4), key


# -----------------------------------------------------------------------------
# state.pt holds tensors and plain data only

def test_state_pt_with_a_pickled_object_is_refused(tmp_path):
    path = tmp_path / "state.pt"
    extra = dict(stage="sft", bad=argparse.Namespace(x=1))          # a pickled Python object
    torch.save(dict(optimizer=None, step=3, rng=[], extra=extra), path)
    with pytest.raises(ValueError, match="refused to load: it holds pickled Python objects"):
        T.load_state(path)
    torch.save(dict(optimizer=None, step=3, rng=[T.rng_state()], extra=dict(stage="sft")), path)
    state = T.load_state(path)                                      # what save_checkpoint writes
    assert state["step"] == 3 and state["rng"][0]["numpy"]["keys"].shape == (624,)
