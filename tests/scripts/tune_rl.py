"""Choose RL settings on validation puzzles, never on the test split.

For each setting (a few --key=value overrides of a preset, --config), RL starts from the main run's
SFT checkpoint for --iters iterations (train.rl_step, the code path of train.py), then the policy
is scored on --n_val validation puzzles: train-split puzzles at indices from 50,000,000 on, which
no stage trains on (the VAE warm-up uses 10-20M, SFT 0..sft_pool, RL 30M on). Their
seeds are unseen, but their layouts may repeat training ones (the easy level has ~2,400 maze
layouts, and test layouts are kept apart from training ones by puzzles.layout_split): this
measures the RL gain in the training distribution, the test split the gain on new layouts. Each
setting is compared with the SFT checkpoint on the same puzzles and noise (paired difference,
standard error).

Run after `python train.py --config demo`:
  python tests/scripts/tune_rl.py [--config demo] [--run runs/demo] [--iters 30] [--n_val 512] \
      [--main_rl] \
      "sde_type=wan noise_level=0.9643"
"""
import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import train as T  # noqa: E402  (first: it sets the OpenMP wait policy before torch loads)

import eval as E  # noqa: E402
import torch  # noqa: E402

VAL = ("train", 50_000_000)


def load_checkpoint(cfg, run, step, device):
    """The main run's checkpoint after `step` global steps: (dit, vae, text)."""
    dit, vae, text = T.build_models(cfg, device)
    T.load_weights(run / f"ckpt_{step:06d}", dit, vae, text)
    T.channels_last(vae)
    return dit.to(device), vae, text


def print_arm(name, sft, res, detail):
    """One setting's validation success and reward, paired against SFT, overall and per domain."""
    d = E.paired_difference(sft, res)
    line = (f"{name}: {detail}; validation SR {res['overall']['success']:.3f} (vs SFT "
            f"{100 * d['success']:+.1f} ± {100 * d['success_se']:.1f} points), reward "
            f"{res['overall']['reward']:.3f} ({d['reward']:+.3f} ± {d['reward_se']:.3f})")
    domains = [k for k in res if k not in ("overall", "samples")]
    if len(domains) > 1:
        parts = []
        for domain in domains:
            dd = E.paired_difference(sft, res, domain)
            parts.append(f"{domain} {100 * dd['success']:+.1f} ± {100 * dd['success_se']:.1f}")
        line += "; per domain: " + ", ".join(parts)
    print(line, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("settings", nargs="*",
                    help='each one quoted string of key=value overrides, e.g. "lr=1e-4"')
    ap.add_argument("--config", default="demo", help="the preset the main run used")
    ap.add_argument("--run", default="runs/demo",
                    help="the main run (its SFT checkpoint is the start)")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--n_val", type=int, default=512)
    ap.add_argument("--main_rl", action="store_true",
                    help="also score the main run's final checkpoint: the preset's own setting "
                         "after its rl_steps iterations, without running them again")
    args = ap.parse_args()
    run_dir = ROOT / args.run
    device = torch.device("cpu")
    common = ["--config", args.config, f"--eval_n={args.n_val}", "--gif_every=0"]
    base = T.get_config(common)
    dit, vae, text = load_checkpoint(base, run_dir, base.sft_steps, device)
    sft = E.evaluate_config(base, dit, vae, text, device, split=VAL)
    print(f"SFT on {args.n_val} validation puzzles: SR {sft['overall']['success']:.3f}, "
          f"reward {sft['overall']['reward']:.3f}", flush=True)
    for setting in args.settings:
        overrides = [f"--{kv}" for kv in setting.split()]
        cfg = T.get_config(common + overrides)
        dit, vae, text = load_checkpoint(cfg, run_dir, cfg.sft_steps, device)
        state = T.Run(cfg=cfg, dit=dit, ref=dit, vae=vae, text=text, device=device)
        opt = T.make_optimizer(cfg, dit, "rl")
        t0 = time.time()
        for it in range(args.iters):
            T.rl_step(state, it, opt)
        res = E.evaluate_config(cfg, dit, vae, text, device, split=VAL)
        print_arm(setting, sft, res, f"{args.iters} RL iterations in {time.time() - t0:.0f}s")
    if args.main_rl:
        last = base.sft_steps + base.rl_steps
        dit, vae, text = load_checkpoint(base, run_dir, last, device)
        res = E.evaluate_config(base, dit, vae, text, device, split=VAL)
        print_arm(f"the main run's RL stage (--config {args.config})", sft, res,
                  f"{base.rl_steps} RL iterations (ckpt_{last:06d})")


if __name__ == "__main__":
    main()
