"""Regenerate the shipped tiny VAE, assets/tiny_vae.safetensors (train.TINY_VAE).

The demo preset's stage 0 settings (vae_steps, vae_batch, vae_lr, seed, domains, level, video
size) run train.warmup_vae, the warm-up any run does with --vae_weights= (its docstring gives the
loss); the result, with its measured latent normalization, is copied to the asset path. Then the
round-trip check the runs print: ground-truth test videos per domain that still verify after an
encode-decode round trip. Nothing is downloaded.

  python tests/scripts/make_tiny_vae.py [--out assets/tiny_vae.safetensors] [--check 64] \
      [--key=value overrides of the demo preset, e.g. --vae_steps=800]
"""
import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import train as T  # noqa: E402  (first: it sets the OpenMP wait policy before torch loads)

import model as M  # noqa: E402
import torch  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=T.TINY_VAE, help="where the weights go (relative to the repo)")
    ap.add_argument("--check", type=int, default=64, help="round-trip test videos per domain")
    ap.add_argument("--check_every", type=int, default=0,
                    help="also print a round trip of 16 videos per domain every this many steps")
    args, overrides = ap.parse_known_args()
    cfg = T.get_config(["--config", "demo", "--vae_weights=", *overrides])
    device = torch.device("cpu")
    _, vae, _ = T.build_models(cfg, device)             # the initialisation a run starts from
    t0 = time.time()

    def progress(step, loss):
        if args.check_every and (step + 1) % args.check_every == 0:
            passed = T.vae_round_trip(cfg, vae, device, 16)
            print(f"step {step + 1}: loss {loss:.5f}, {time.time() - t0:.0f}s, round trip "
                  + ", ".join(f"{d} {ok}/16" for d, ok in passed.items()), flush=True)

    cached = T.warmup_vae(cfg, vae, device, after_step=progress)
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) in {time.time() - t0:.0f}s: "
          f"{cfg.vae_steps} steps x {cfg.vae_batch} videos of {cfg.domains}, level {cfg.level}, "
          f"{cfg.frames}x{cfg.height}x{cfg.width}, lr {cfg.vae_lr}, seed {cfg.seed}")
    M.load_vae(vae, out)
    passed = T.vae_round_trip(cfg, vae.eval(), device, args.check)
    print("ground-truth test videos that still verify after a round trip: "
          + ", ".join(f"{d} {ok}/{args.check}" for d, ok in passed.items()))


if __name__ == "__main__":
    main()
