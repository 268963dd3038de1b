"""Choose RL settings on validation puzzles, never on the test split.

For each setting (a few --key=value overrides of the tiny config), RL starts from the main run's
SFT checkpoint for --iters iterations (train.rl_step, the code path of train.py), then the policy
is scored on --n_val validation puzzles: train-split puzzles at indices from 50,000,000 on, which
no stage trains on (the VAE warm-up uses 10-20M, SFT 0..sft_steps x sft_batch, RL 30M on). Their
seeds are unseen, but their layouts may repeat training ones (the easy level has ~2,400 maze
layouts, and test layouts are kept apart from training ones by puzzles.layout_split): this
measures the RL gain in the training distribution, the test split the gain on new layouts. Each
setting is compared with the SFT checkpoint on the same puzzles and noise (paired difference,
standard error).

Run after `python train.py --config tiny`:
  python tests/scripts/tune_rl.py [--run runs/tiny] [--iters 30] [--n_val 512] \
      "lr=5e-5" "lr=5e-5 puzzles_per_step=16 groups_per_update=16"
"""
import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import eval as E  # noqa: E402
import train as T  # noqa: E402

VAL = ("train", 50_000_000)


def load_sft(cfg, run, device):
    dit, vae, text = T.build_models(cfg, device)
    ckpt = run / f"ckpt_{cfg.sft_steps:06d}"
    T.load_weights(ckpt, dit, vae, text)
    T.channels_last(vae)
    return dit.to(device), vae, text


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("settings", nargs="+",
                    help='each one quoted string of key=value overrides, e.g. "lr=1e-4"')
    ap.add_argument("--run", default="runs/tiny",
                    help="the main tiny run (its SFT checkpoint is the start)")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--n_val", type=int, default=512)
    args = ap.parse_args()
    run_dir = ROOT / args.run
    device = torch.device("cpu")
    common = ["--config", "tiny", f"--eval_n={args.n_val}", "--gif_every=0"]
    base = T.get_config(common)
    dit, vae, text = load_sft(base, run_dir, device)
    sft = E.evaluate_config(base, dit, vae, text, device, split=VAL)
    print(f"SFT on {args.n_val} validation puzzles: SR {sft['overall']['success']:.3f}, "
          f"reward {sft['overall']['reward']:.3f}")
    for setting in args.settings:
        overrides = [f"--{kv}" for kv in setting.split()]
        cfg = T.get_config(common + overrides)
        dit, vae, text = load_sft(cfg, run_dir, device)
        state = T.Run(cfg=cfg, dit=dit, ref=dit, vae=vae, text=text, device=device)
        opt = T.make_optimizer(cfg, dit, "rl")
        t0 = time.time()
        for it in range(args.iters):
            T.rl_step(state, it, opt)
        res = E.evaluate_config(cfg, dit, vae, text, device, split=VAL)
        d = E.paired_difference(sft, res)
        print(f"{setting}: {args.iters} RL iterations in {time.time() - t0:.0f}s; validation SR "
              f"{res['overall']['success']:.3f} (vs SFT {100 * d['success']:+.1f} "
              f"± {100 * d['success_se']:.1f} points), reward {res['overall']['reward']:.3f} "
              f"({d['reward']:+.3f} ± {d['reward_se']:.3f})", flush=True)

if __name__ == "__main__":
    main()
