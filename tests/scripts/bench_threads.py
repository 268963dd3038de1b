"""How a tiny run degrades when it shares the CPU cores: the OpenMP wait policy.

Times one tiny VAE warm-up step (4 videos of 128x128x17, train.vae_loss, forward + backward +
Adam) and one tiny DiT step (16 latents, forward + backward + AdamW), each in a fresh process
with OMP_WAIT_POLICY = ACTIVE (threads spin while they wait: the OpenMP runtime's default) or
PASSIVE (they sleep: what train.py, eval.py and the tests set), alone and next to a second,
identical process (both busy on the same cores). Degradation in proportion to the cores lost is
about 2x on 2 cores; far above that, threads waste the cores spinning.

  python tests/scripts/bench_threads.py [--threads 2] [--steps 4]
"""
import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def child(threads, steps):
    """Time the two steps in this process; prints 'vae_seconds dit_seconds'."""
    sys.path.insert(0, str(ROOT))
    import torch

    import model as M
    import puzzles
    import train as T

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = T.get_config(["--config", "demo"])
    vae = M.WanVAE(M.VAE_CONFIGS["tiny"])
    batch = T.make_puzzles(cfg, "train", 10_000_000, 4)
    x = torch.stack([M.to_pixels(puzzles.render(p, 128, 128, 17)) for p in batch])
    vae_opt = torch.optim.Adam(vae.parameters(), 1e-4)
    dcfg = M.DIT_CONFIGS["tiny"]
    dit = M.WanModel(dcfg)
    latents = torch.randn(16, dcfg.in_dim, 5, 8, 8)                        # (B, C, F', h, w)
    context = [torch.randn(20, dcfg.text_dim) for _ in range(16)]
    dit_opt = torch.optim.AdamW(dit.parameters(), 1e-4)

    def vae_step():
        T.vae_loss(vae, x).backward()
        vae_opt.step()
        vae_opt.zero_grad()

    def dit_step():
        dit(latents, torch.full((16,), 500.0), context).square().mean().backward()
        dit_opt.step()
        dit_opt.zero_grad()

    times = []
    for step, n in ((vae_step, steps), (dit_step, 4 * steps)):
        step()                                                              # warm-up
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        times.append((time.perf_counter() - t0) / n)
    print(f"{times[0]:.4f} {times[1]:.4f}")


def measure(policy, threads, steps, together):
    """Seconds per (VAE step, DiT step) of `together` identical processes started at once."""
    env = dict(os.environ, OMP_WAIT_POLICY=policy, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--child", f"--threads={threads}", f"--steps={steps}"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(together)]
    outs = [p.communicate()[0].split() for p in procs]
    return [max(float(o[k]) for o in outs) for k in (0, 1)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.threads, args.steps)
    print(f"{os.cpu_count()} cores, {args.threads} threads per process; seconds per step "
          "(the slower of the processes)")
    for policy in ("ACTIVE", "PASSIVE"):
        alone = measure(policy, args.threads, args.steps, 1)
        shared = measure(policy, args.threads, args.steps, 2)
        print(f"  {policy:7s}  VAE step {alone[0]:.2f}s alone, {shared[0]:.2f}s shared "
              f"({shared[0] / alone[0]:.1f}x) | DiT step {alone[1]:.3f}s alone, "
              f"{shared[1]:.3f}s shared ({shared[1] / alone[1]:.1f}x)")


if __name__ == "__main__":
    main()
