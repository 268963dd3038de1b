"""The two ablations of VideoRLVR on the tiny config, as train.py runs from SFT checkpoints.

1. Early-Step Focus vs full-step: RL from the main run's SFT checkpoint with SDE + backprop on the
   first K = N/2 steps vs on all N steps, same seeds, same number of iterations; prints the time per
   RL iteration (ratio; paper: about 40% less) and the held-out results of both. The K = N/2 arm is
   the main run's own RL stage when its settings match (RL seeds depend on the RL step only).
2. Dense vs sparse reward: where SFT succeeds rarely (a shorter SFT run, trained here), RL with the
   dense decomposed reward vs the success-only reward; prints the zero-std group ratio (with sparse
   rewards most groups are all-0 and teach nothing) and the held-out results of both.
Each RL run is `python train.py --config tiny --ckpt=<SFT checkpoint> --sft_steps=0 ...`; all numbers
come from the runs' metrics.jsonl and eval_rl.json (held-out test puzzles, scored from pixels).
Run after `python train.py --config tiny` (its SFT checkpoint and cached VAE are reused):
  python tests/scripts/ablations.py [--run runs/tiny] [--rl_steps N] [--out runs/ablations]
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import eval as E  # noqa: E402


def train(args, *extra):
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", "tiny", *extra]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def rl_summary(out):
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in rows if r["stage"] == "rl"]
    res = json.loads((Path(out) / "eval_rl.json").read_text())
    return (
        dict(
            seconds=float(np.median([r["seconds"] for r in rl])),
            zero_std=float(np.mean([r["zero_std_ratio"] for r in rl])),
            **{
                k: float(np.median([r[f"time_{k}"] for r in rl]))
                for k in ("rollout", "decode", "reward", "update")
            },
        ),
        res,
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--run", default="runs/tiny", help="the main tiny run (its SFT checkpoint is the start)"
    )
    ap.add_argument(
        "--rl_steps", type=int, default=0, help="RL iterations per run (0: as many as the main run)"
    )
    ap.add_argument(
        "--weak_sft_steps", type=int, default=500, help="SFT steps of the rarely-succeeding start"
    )
    ap.add_argument("--out", default="runs/ablations")
    args = ap.parse_args()
    run, out = ROOT / args.run, ROOT / args.out
    cfg = json.loads((run / (run / "latest").read_text().strip() / "config.json").read_text())
    sft = run / f"ckpt_{cfg['sft_steps']:06d}"
    args.rl_steps = args.rl_steps or cfg["rl_steps"]
    common = ["--sft_steps=0", f"--rl_steps={args.rl_steps}", f"--seed={cfg['seed']}"]
    table, lines = {
        f"SFT ({cfg['sft_steps']} steps)": json.loads((run / "eval_sft.json").read_text())
    }, []

    # 1. Early-Step Focus (K = N/2) vs full-step (K = N), same seeds and budget
    for name, k in (("ESF", cfg["num_steps"] // 2), ("full", cfg["num_steps"])):
        o = out / f"esf_{name}"
        if (k, args.rl_steps, cfg["sde_start"]) == (cfg["sde_steps"], cfg["rl_steps"], 0) and (
            run / "eval_rl.json"
        ).exists():
            o = run  # the main run's RL stage is this arm: same checkpoint, seeds and settings
            print(f"K={k}: the RL stage of {run} (same SFT checkpoint, seeds and settings)")
        elif not (o / "eval_rl.json").exists():
            train(args, f"--ckpt={sft}", *common, f"--sde_steps={k}", f"--out_dir={o}")
        t, res = rl_summary(o)
        table[f"SFT + RL, K={k} ({name})"] = res
        lines.append((name, k, t))
    (_, _, a), (_, _, b) = lines
    print(f"\nEarly-Step Focus vs full-step, {args.rl_steps} RL iterations each from {sft}:")
    for name, k, t in lines:
        print(
            f"  K={k:2d} ({name}): {t['seconds']:.2f}s per iteration = rollout {t['rollout']:.2f} + decode "
            f"{t['decode']:.2f} + reward {t['reward']:.2f} + update {t['update']:.2f}"
        )
    print(
        f"  time per iteration ESF / full = {a['seconds'] / b['seconds']:.2f} "
        f"({1 - a['seconds'] / b['seconds']:.0%} less)"
    )
    (out / "esf").mkdir(parents=True, exist_ok=True)
    E.report(table, out / "esf")

    # 2. dense vs sparse reward from a rarely-succeeding SFT checkpoint
    weak = out / "sft_weak"
    if not (weak / "latest").exists():
        train(
            args,
            f"--sft_steps={args.weak_sft_steps}",
            "--rl_steps=0",
            f"--out_dir={weak}",
            f"--seed={cfg['seed']}",
        )
    table = {f"SFT {args.weak_sft_steps} steps": json.loads((weak / "eval_sft.json").read_text())}
    for reward in ("dense", "sparse"):
        o = out / f"reward_{reward}"
        if not (o / "eval_rl.json").exists():
            train(args, f"--ckpt={weak}", *common, f"--reward={reward}", f"--out_dir={o}")
        t, res = rl_summary(o)
        table[f"SFT {args.weak_sft_steps} + RL, {reward} reward"] = res
        print(
            f"  {reward:6s} reward: zero-std group ratio {t['zero_std']:.2f}, held-out SR "
            f"{res['overall']['success']:.3f} ± {res['overall']['success_se']:.3f}"
        )
    (out / "reward").mkdir(parents=True, exist_ok=True)
    E.report(table, out / "reward")


if __name__ == "__main__":
    main()
