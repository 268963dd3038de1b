"""bf16 on CPU at tiny size: on-policy parity of rollout and update, finite SFT and RL losses, and
FSDP2 with a bf16 MixedPrecisionPolicy on 2 gloo processes against 1. Run: python -m pytest
tests/test_bf16.py -q

model.autocast is bf16 on CUDA and a no-op on CPU; these tests switch it to CPU bf16 autocast so the
rollout (sde.sample) and the update (train.rl_update) run the GPU's precision path, autocast placed
exactly where train.py places it.

The parity tolerance, derived. For one video and one trained step, the rollout drew x' = mu_r + s
eps (mu_r its mean, s the step's std, eps ~ N(0, I) on the M unmasked elements); the update
recomputes the mean mu_u = mu_r + c dv, where dv = v_update - v_rollout and
c = dt (1 + sigma_t^2 (1 - sigma) / (2 sigma)) is the mean's coefficient of v (sde.sde_step, "sde"
type). The log-probabilities are element means, so
    log ratio = mean(eps c dv) / s - c^2 mean(dv^2) / (2 s^2)
    |log ratio| <= (|c| / s) rms(eps) rms(dv) + (c^2 / (2 s^2)) rms(dv)^2
    (Cauchy-Schwarz)
and rms(dv) <= e_r + e_u, the rms distances of the two bf16 velocities from the float32 one
(triangle inequality). e_r, e_u are measured here against float32 forwards of the same inputs, so
the bound follows from bf16 rounding of the forward alone, whatever makes the two evaluations differ
(batch composition, grad mode, checkpointing, kernels). The bound is a worst case: with dv
uncorrelated with eps the first term shrinks by sqrt(M) (M = 518,400 latent elements per 5B video).
In float32, and in bf16 when rollout and update make the same calls (same micro-batch), ratio == 1.

FSDP2 tolerance: with param_dtype bf16 both runs compute with the same bf16 weights; each process
rounds its local gradient to bf16 once (unit roundoff u = 2^-8) before the float32 reduce-scatter,
so a gradient differs from the 1-process one by at most u (|g_1| + |g_2| / 2 + |g_2'| / 2) per
element, and per tensor ||g_1 - g_2|| / ||g_1|| <= 4 u = 2^-6 is asserted (measured: up to ~3e-3).
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also run as the torchrun worker
import grpo  # noqa: E402
import model as M  # noqa: E402
import sde  # noqa: E402
import train as T  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
U_BF16 = 2.0**-8


def bf16_autocast(device):
    return torch.autocast("cpu", dtype=torch.bfloat16)


def tiny_setup(seed=0):
    """A small DiT with non-zero weights, a tiny text encoder, 6 rollouts (2 puzzles x 3)."""
    torch.manual_seed(seed)
    dit = M.WanModel(
        M.DiTConfig(
            dim=64,
            ffn_dim=128,
            num_heads=2,
            num_layers=2,
            in_dim=4,
            out_dim=4,
            text_len=8,
            text_dim=16,
        )
    )
    for p in dit.parameters():
        torch.nn.init.normal_(p, std=0.05)
    text = M.TextEncoder(
        M.T5Encoder(
            M.T5Config(vocab=256, dim=16, dim_attn=16, dim_ffn=32, num_heads=2, num_layers=1)
        ),
        8,
    )
    return dit, text


def rollout_and_update(precision, rollout_batch, update_batch, monkeypatch, grad_ckpt=True):
    """sde.sample in micro-batches of rollout_batch, then train.rl_update in micro-batches of
    update_batch, both under `precision` autocast; -> (cfg, dit, text, traj, stats of the
    update)."""
    if precision == "bf16":
        monkeypatch.setattr(M, "autocast", bf16_autocast)
    cfg = T.get_config(
        [
            "--config=tiny",
            "--frames=5",
            "--puzzles_per_step=2",
            "--group_size=3",
            "--groups_per_update=2",
            "--num_steps=4",
            "--sde_steps=2",
            "--grad_clip=1e9",
            f"--micro_batch={update_batch}",
        ]
    )
    dit, text = tiny_setup()
    dit.gradient_checkpointing = grad_ckpt
    batch = T.make_puzzles(cfg, "train", 0, 2)
    ctx = text.encode([p.prompt for p in batch])
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(6, 4, 2, 4, 4, generator=g)
    image = torch.randn(2, 4, 1, 4, 4, generator=g)[[0, 0, 0, 1, 1, 1]]
    parts = []
    for i in range(0, 6, rollout_batch):
        sl = slice(i, i + rollout_batch)
        with M.autocast(torch.device("cpu")):
            parts.append(
                sde.sample(
                    dit,
                    noise[sl],
                    [ctx[j // 3] for j in range(6)][sl],
                    image_latent=image[sl],
                    num_steps=4,
                    shift=5.0,
                    sde_steps=2,
                    noise_level=0.7,
                    generator=g,
                    patch_size=dit.cfg.patch_size,
                )[1]
            )
    traj = sde.Trajectory(
        *(
            (
                torch.cat([getattr(t, f) for t in parts])
                if f in ("latents", "next_latents", "log_probs")
                else getattr(parts[0], f)
            )
            for f in sde.Trajectory._fields
        )
    )
    opt = torch.optim.SGD(dit.parameters(), lr=0.0)
    adv = [1.0, -0.5, -0.5, 0.7, -0.2, -0.5]  # all non-zero: every video is updated
    run = T.Run(cfg, dit, None, None, text, torch.device("cpu"))
    rollout = T.Rollout(batch, list(range(6)), traj, None, None, {})
    out = T.rl_update(run, rollout, adv, opt)
    return cfg, dit, text, ctx, traj, [s for u in out for s in u["stats"]]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_same_calls_give_ratio_exactly_one(precision, monkeypatch):
    *_, traj, stats = rollout_and_update(precision, 3, 3, monkeypatch)
    # stored log-probs in float32 under autocast too: in bf16 (8 bits) a log-prob near 1 would be
    # rounded by ~4e-3, 40x the 5B clip range of 1e-4
    assert traj.log_probs.dtype == torch.float32 and traj.latents.dtype == torch.float32
    assert len(stats) == 2 * 2  # 2 calls of 3 videos x K = 2 steps
    assert all(
        s["ratio_max_dev"] == 0.0 and s["ratio_mean"] == 1.0 and s["clipfrac"] == 0.0 for s in stats
    )
    assert all(math.isfinite(s["loss"]) for s in stats)


def test_bf16_parity_within_the_derived_bound(monkeypatch):
    """Rollout 6 videos per call, update 1 per call (different shapes, with grad and checkpointing):
    every |log ratio| within the bound of the module docstring, computed per video and step."""
    cfg, dit, text, ctx, traj, stats = rollout_and_update("bf16", 6, 1, monkeypatch)
    K = traj.latents.shape[1]
    mask = sde.frame_mask(traj.latents.shape[3])
    ctxs = [ctx[j // 3] for j in range(6)]
    worst = 0.0
    for k in range(K):
        x, x_next = traj.latents[:, k], traj.next_latents[:, k]
        s, s_next = traj.sigmas[k], traj.sigmas_next[k]
        with torch.no_grad():
            v32 = sde.velocity(dit, x, traj.timesteps[k], ctxs, patch_size=dit.cfg.patch_size)
        with torch.no_grad(), bf16_autocast(None):
            v_r = sde.velocity(
                dit, x, traj.timesteps[k], ctxs, patch_size=dit.cfg.patch_size
            )  # as the rollout
            v_u = torch.cat(
                [
                    sde.velocity(
                        dit,
                        x[i : i + 1],
                        traj.timesteps[k],
                        ctxs[i : i + 1],
                        patch_size=dit.cfg.patch_size,
                    )
                    for i in range(6)
                ]
            )  # as the update
        _, _, mean_r, std = sde.sde_step(
            x, v_r, s, s_next, cfg.noise_level, x_next=x_next, mask=mask
        )
        sigma_t = cfg.noise_level * torch.sqrt(s / (1 - (s_next if s == 1 else s)))
        c = (s_next - s) * (1 + sigma_t**2 * (1 - s) / (2 * s))
        for i in range(6):
            m = mask.expand_as(x[i : i + 1]).bool()
            rms = lambda a: a[m].double().square().mean().sqrt()  # noqa: E731
            eps = (x_next[i : i + 1] - mean_r[i : i + 1]) / std
            e_r, e_u = rms(v_r[i : i + 1] - v32[i : i + 1]), rms(v_u[i : i + 1] - v32[i : i + 1])
            a = abs(float(c)) / float(std)
            bound = a * rms(eps) * (e_r + e_u) + a**2 * (e_r + e_u) ** 2 / 2
            ratio_dev = stats[i * K + k]["ratio_max_dev"]  # call i (video i), step k
            log_ratio = (
                -math.log1p(-ratio_dev) if ratio_dev < 1 else math.inf
            )  # the larger of |log(1 +- d)|
            assert log_ratio <= float(bound) * 1.01 + 1e-7, (k, i, log_ratio, float(bound))
            assert float(e_r) > 0  # bf16 really ran
            worst = max(worst, float(bound))
    print(
        f"bf16 parity: worst-case bound on |log ratio| {worst:.2e}; measured max |ratio - 1| "
        f"{max(s['ratio_max_dev'] for s in stats):.2e}"
    )


def test_sft_and_rl_losses_finite_in_bf16(monkeypatch):
    dit, text = tiny_setup()
    x0 = torch.randn(4, 4, 3, 4, 4)
    noised = sde.sft_noising(
        x0, generator=torch.Generator().manual_seed(0), patch_size=dit.cfg.patch_size
    )
    ctx = text.encode(["a", "b", "c", "d"])
    with bf16_autocast(None):
        v = dit(noised.x_t, noised.t, ctx)
    loss = sde.sft_loss(v, noised)
    loss.backward()
    assert v.dtype == torch.float32 and math.isfinite(loss.item()) and loss.item() > 0
    assert all(torch.isfinite(p.grad).all() for p in dit.parameters() if p.grad is not None)
    *_, stats = rollout_and_update("bf16", 6, 2, monkeypatch)
    assert stats and all(
        math.isfinite(s["loss"]) and math.isfinite(s["policy_loss"]) for s in stats
    )
    lp = torch.tensor([0.1, -0.2], requires_grad=True)
    rl, _ = grpo.policy_loss(lp, lp.detach(), torch.tensor([1.0, -1.0]))
    assert math.isfinite(rl.item())


# -----------------------------------------------------------------------------
# FSDP2, bf16 MixedPrecisionPolicy, gloo: this file is also the torchrun worker


def fsdp_worker(out):
    """One backward of a small DiT under FSDP2 (bf16 params, fp32 reduction) on this rank's share of
    4 fixed videos (local mean loss: FSDP averages over ranks = the global mean); rank 0 saves the
    full gradients."""
    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dit, _ = tiny_setup()
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in dit.blocks:
        fully_shard(block, mp_policy=mp)
    fully_shard(dit, mp_policy=mp)
    g = torch.Generator().manual_seed(1)
    x, t, ctx = (
        torch.randn(4, 4, 2, 4, 4, generator=g),
        torch.rand(4, generator=g) * 1000,
        torch.randn(4, 5, 16, generator=g),
    )
    sl = slice(rank * 4 // world, (rank + 1) * 4 // world)
    v = dit(x[sl], t[sl], ctx[sl])
    v.square().mean().backward()
    grads = {n: p.grad.full_tensor() for n, p in dit.named_parameters()}
    if rank == 0:
        torch.save(dict(grads=grads, out_dtype=str(v.dtype)), out)
    dist.destroy_process_group()


def test_fsdp2_bf16_two_gloo_processes_match_one(tmp_path):
    res = {}
    for n in (1, 2):
        out = tmp_path / f"grads{n}.pt"
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={n}",
            str(Path(__file__)),
            str(out),
        ]
        p = subprocess.run(
            cmd,
            cwd=tmp_path,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert p.returncode == 0, p.stderr[-4000:]
        res[n] = torch.load(out)
    g1, g2 = res[1]["grads"], res[2]["grads"]
    assert set(g1) == set(g2) and len(g1) > 10
    worst = 0.0
    for name in g1:
        norm = g1[name].norm()
        if norm == 0:
            assert g2[name].norm() == 0, name
            continue
        rel = float((g1[name] - g2[name]).norm() / norm)
        assert rel <= 4 * U_BF16, (name, rel)
        worst = max(worst, rel)
    assert worst > 0  # bf16 really ran (fp32 halves would match closer)
    print(
        f"FSDP2 bf16, 2 gloo processes vs 1: worst relative gradient difference {worst:.2e} "
        f"(bound {4 * U_BF16:.2e})"
    )


if __name__ == "__main__":
    fsdp_worker(sys.argv[1])
