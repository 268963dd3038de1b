"""Tiny-DiT (DIT_CONFIGS['tiny']) forward and forward+backward times at a few token counts.

python tests/scripts/bench_dit.py [--repeats 5] [--threads N]

Latent grids (F, 8, 8) are what a 128x128 px video of 4F-3 frames becomes (VAE 4x16x16, DiT patch
1x2x2 -> 16 tokens per latent frame). Times: median and min over --repeats runs after one warm-up,
float32; the text context is a full text_len of random features. On a shared machine use --threads 1:
two threads on two busy cores spin-wait on each other and some runs get ~10x slower.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import model  # noqa: E402


def timed(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = model.DIT_CONFIGS["tiny"]
    dit = model.WanModel(cfg)
    print(
        f"tiny DiT: {sum(p.numel() for p in dit.parameters()) / 1e6:.2f} M params, dim {cfg.dim}, "
        f"{cfg.num_layers} layers, {cfg.num_heads} heads, text_len {cfg.text_len}; "
        f"{torch.get_num_threads()} threads"
    )

    def inputs(B, F):
        return (
            torch.randn(B, cfg.in_dim, F, 8, 8),
            torch.rand(B) * 1000,
            torch.randn(B, cfg.text_len, cfg.text_dim),
        )

    for F in (2, 5, 9, 13, 25):
        tokens = F * 16
        for B in (1, 8):
            x, t, ctx = inputs(B, F)
            with torch.no_grad():
                sec, best = timed(lambda: dit(x, t, ctx), args.repeats)
            print(
                f"forward      B={B} tokens={tokens:4d} ({4 * F - 3:3d} frames at 128 px): "
                f"median {sec * 1e3:8.1f} ms, min {best * 1e3:8.1f} ms"
            )
    for F in (9, 13, 25):
        x, t, ctx = inputs(8, F)
        for ckpt in (False, True):
            dit.gradient_checkpointing = ckpt

            def step():
                dit.zero_grad(set_to_none=True)
                dit(x, t, ctx).square().mean().backward()

            sec, best = timed(step, args.repeats)
            print(
                f"forward+backward B=8 tokens={F * 16:4d}, gradient checkpointing {ckpt!s:5}: "
                f"median {sec * 1e3:8.1f} ms, min {best * 1e3:8.1f} ms"
            )


if __name__ == "__main__":
    main()
