"""Early-Step Focus vs full-step: RL iteration time on the demo config, same seeds, one run.

Runs train.rl_rollout and train.rl_update (rollout -> decode -> reward -> advantages -> update)
with SDE + backprop on the
first K = N/2 steps and on K = N - 1 steps (full-step GRPO: the last step stays an ODE step, as
Flow-GRPO trains int(0.99 N) of N), alternating so both see the same machine load, and
prints the median time per phase. VideoRLVR reports about 40% less training time for Early-Step
Focus. Timings do not depend on the weights, so a random tiny model is used (no warm-up needed);
its rewards are all 0, so the update is given random non-zero advantages (every group kept, the
update's full cost) instead of the filtered group advantages rl_step would compute.
Run: python tests/scripts/bench_rl_step.py [--iters 6] [--threads 2]
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import train as T  # noqa: E402  (first: it sets the OpenMP wait policy before torch loads)

import model as M  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--iters", type=int, default=6, help="timed iterations per setting (after one warm-up)"
    )
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = T.get_config(["--config", "demo", "--gif_every=0"])
    device = torch.device("cpu")
    torch.manual_seed(0)
    dit, vae, text = M.WanModel(M.DIT_CONFIGS["tiny"]), M.WanVAE(M.VAE_CONFIGS["tiny"]), None
    text = M.TextEncoder(M.T5Encoder(M.T5_CONFIGS["tiny"]).eval(), dit.cfg.text_len)
    # a non-zero head: the update has gradients to apply
    for p in dit.head.parameters():
        torch.nn.init.normal_(p, std=0.02)
    T.channels_last(vae.requires_grad_(False).eval())
    run = T.Run(cfg=cfg, dit=dit, ref=dit, vae=vae, text=text, device=device)
    opt = torch.optim.AdamW(dit.parameters(), lr=0.0)  # lr 0: both settings time the same weights
    n = cfg.num_steps
    print(
        f"demo config: {cfg.frames}x{cfg.height}x{cfg.width} video, N={n} steps, "
        f"{cfg.puzzles_per_step} puzzles x {cfg.group_size} rollouts = "
        f"{cfg.puzzles_per_step * cfg.group_size} videos per iteration, "
        f"{torch.get_num_threads()} threads"
    )
    times = {k: [] for k in (n // 2, n - 1)}
    for it in range(args.iters + 1):
        for k in times:
            cfg.sde_steps = k
            t0 = time.perf_counter()
            rollout = T.rl_rollout(run, it)
            adv = torch.randn(
                len(rollout.mine), generator=torch.Generator().manual_seed(it)
            ).tolist()
            t1 = time.perf_counter()
            T.rl_update(run, rollout, adv, opt)
            timing = rollout.timing
            timing["update"] = time.perf_counter() - t1
            total = time.perf_counter() - t0
            # iteration 0 warms up allocators and kernels
            if it:
                times[k].append({"total": total} | timing)
    med = {k: {p: float(np.median([t[p] for t in v])) for p in v[0]} for k, v in times.items()}
    for k, m in med.items():
        name = "Early-Step Focus" if k < n - 1 else "full-step"
        other = m["total"] - sum(m[p] for p in ("rollout", "decode", "reward", "update"))
        print(
            f"{name:17s} K={k:2d}: total {m['total']:.2f}s = rollout {m['rollout']:.2f} "
            f"+ decode {m['decode']:.2f} + reward {m['reward']:.2f} + update {m['update']:.2f} "
            f"(+ other {other:.2f})"
        )
    esf, full = med[n // 2]["total"], med[n - 1]["total"]
    update = med[n // 2]["update"] / med[n - 1]["update"]
    print(
        f"Early-Step Focus / full-step time per RL iteration: {esf / full:.2f} "
        f"({1 - esf / full:.0%} less; paper: about 40% less); update alone: {update:.2f}"
    )


if __name__ == "__main__":
    main()
