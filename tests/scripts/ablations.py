"""VideoRLVR's claims and ablations on the demo preset, as train.py runs from its SFT checkpoint.

Run after `python train.py --config demo` (its SFT checkpoint, eval_sft.json and eval_rl.json are
reused; every number comes from held-out test puzzles scored from pixels):
  python tests/scripts/ablations.py [--run runs/demo] [--out runs/ablations] \
      [--only seeds,esf,reward,weights,esf_seeds] [--domain sokoban] [--weights_domain sokoban] \
      [--no_equal_time] [--time_ratio 0.74] [--esf_seeds 0,1,2]

seeds    RL > SFT is robust, not lucky: the RL stage again with --seed=1 and 2 from the same SFT
         checkpoint (seed 0 is the main run); per domain, the paired gain of each seed and their
         mean and spread. All runs share the evaluation noise (eval_seed), so the gains are paired.
esf      Early-Step Focus (K = N/2, the main run) vs full-step GRPO (K = N - 1: Flow-GRPO trains
         int(0.99 N) of its N steps and keeps the last one deterministic): seconds per iteration
         (rollout, decode, reward, update), held-out success at equal iterations, and ESF run for
         as many iterations as fit in the full-step arm's wall-clock (unless --no_equal_time).
         That wall-clock is the ratio of the two runs' RL stages, or --time_ratio (ESF / full
         seconds per iteration measured alone, tests/scripts/bench_rl_step.py) when either run
         shared its cores with other jobs and its clock says nothing.
esf_seeds  The esf arm again with RL seeds 1 and 2 (--esf_seeds; not in the default --only):
         per domain, each arm's gain over SFT and ESF-at-equal-time minus full-step, per seed, with
         mean and spread (uses the seeds arm's runs for ESF at equal iterations).
reward   Dense vs sparse (success-only) reward on one domain (--domain) from the SFT checkpoint:
         the zero-std group ratio (an all-equal group teaches nothing) and held-out success.
weights  The paper's reward weights vs the official code's (--reward_weights=code;
         luka-group/VideoRLVR issue #2) on one domain (--weights_domain), from the SFT checkpoint.
Each arm's runs are skipped when their eval_rl.json exists (rerun by deleting the folder).
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


def train(cfg, out, *extra):
    """One RL run from the main run's SFT checkpoint (skipped if it has finished before)."""
    if (out / "eval_rl.json").exists():
        return
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", cfg["config"],
           f"--ckpt={cfg['sft_ckpt']}", "--sft_steps=0", f"--out_dir={out}", "--gif_every=0",
           *extra]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def rl_summary(out):
    """(median seconds per RL iteration and its parts, mean zero-std ratio), eval_rl.json."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in rows if r["stage"] == "rl"]
    times = {k: float(np.median([r[f"time_{k}"] for r in rl]))
             for k in ("rollout", "decode", "reward", "update")}
    times["seconds"] = float(np.median([r["seconds"] for r in rl]))
    times["total"] = float(np.sum([r["seconds"] for r in rl]))
    times["zero_std"] = float(np.mean([r["zero_std_ratio"] for r in rl]))
    return times, json.loads((out / "eval_rl.json").read_text())


def gain(sft, res, domain):
    """'+x.x ± y.y' paired success gain in points of res over sft on one domain (or all)."""
    d = E.paired_difference(sft, res, domain)
    return d, f"{100 * d['success']:+.1f} ± {100 * d['success_se']:.1f}"


def over_seeds(values):
    """'+a / +b / +c (mean +m, spread s)' of per-seed gains in points (spread: std over seeds)."""
    spread = np.std(values, ddof=1) if len(values) > 1 else 0.0
    each = " / ".join(f"{v:+.1f}" for v in values)
    return f"{each} (mean {np.mean(values):+.1f}, spread {spread:.1f})"


def equal_time_iterations(iters, time_ratio, esf_run, full_run):
    """(ESF / full seconds per iteration, ESF iterations in the full arm's `iters` iterations of
    time); time_ratio None takes the two runs' RL wall-clocks."""
    if time_ratio is None:
        time_ratio = rl_summary(esf_run)[0]["total"] / rl_summary(full_run)[0]["total"]
    return time_ratio, max(iters, round(iters / time_ratio))


def seeds(cfg, sft, main_rl, out, domains):
    """The RL stage with seeds 0 (the main run), 1, 2: per-domain gains, mean and spread."""
    results = {0: main_rl}
    for seed in (1, 2):
        train(cfg, out / f"seed{seed}", f"--seed={seed}")
        results[seed] = rl_summary(out / f"seed{seed}")[1]
    print("\nRL - SFT success gain (points, paired) per RL seed, same SFT checkpoint:")
    for domain in domains + [None]:
        cells, values = [], []
        for seed, res in results.items():
            d, text = gain(sft, res, domain)
            cells.append(f"seed {seed} {text}")
            values.append(100 * d["success"])
        print(f"  {domain or 'all':8s} " + " | ".join(cells) + f" | mean {np.mean(values):+.1f}, "
              f"spread (std over seeds) {np.std(values, ddof=1):.1f}")
    table = {"SFT": sft} | {f"SFT + RL, seed {s}": r for s, r in results.items()}
    (out / "seeds").mkdir(parents=True, exist_ok=True)
    E.report(table, out / "seeds")


def esf(cfg, sft, run, out, equal_time, time_ratio=None):
    """Early-Step Focus (the main run) vs full-step K = N - 1, at equal iterations and time.

    time_ratio: ESF / full seconds per iteration; None takes the two RL stages' wall-clocks.
    """
    n, k, iters = cfg["num_steps"], cfg["sde_steps"], cfg["rl_steps"]
    full = out / "esf_full"
    train(cfg, full, f"--sde_steps={n - 1}")
    arms = {f"K={k} (ESF)": rl_summary(run), f"K={n - 1} (full)": rl_summary(full)}
    t_esf, t_full = arms[f"K={k} (ESF)"][0], arms[f"K={n - 1} (full)"][0]
    if equal_time:
        measured = time_ratio is not None
        time_ratio, same_time = equal_time_iterations(iters, time_ratio, run, full)
        timed = out / f"esf_{same_time}it"
        train(cfg, timed, f"--rl_steps={same_time}")
        arms[f"K={k} (ESF), {same_time} it = full's time"] = rl_summary(timed)
    print(f"\nEarly-Step Focus vs full-step GRPO from {cfg['sft_ckpt']}:")
    for name, (t, res) in arms.items():
        print(f"  {name}: {t['seconds']:.1f}s per iteration = rollout {t['rollout']:.1f} + decode "
              f"{t['decode']:.1f} + reward {t['reward']:.1f} + update {t['update']:.1f}; RL stage "
              f"{t['total']:.0f}s; held-out SR {100 * res['overall']['success']:.1f}% "
              f"(vs SFT {gain(sft, res, None)[1]} points)")
    print(f"  time per iteration ESF / full = {t_esf['seconds'] / t_full['seconds']:.2f} "
          f"({1 - t_esf['seconds'] / t_full['seconds']:.0%} less) by the runs' own clocks")
    if equal_time and measured:
        print(f"  equal time from --time_ratio {time_ratio:.2f} (ESF / full per iteration, "
              f"measured alone): ESF runs {same_time} iterations in the full arm's {iters}")
    (out / "esf").mkdir(parents=True, exist_ok=True)
    E.report({"SFT": sft} | {name: res for name, (t, res) in arms.items()}, out / "esf")


def esf_seeds(cfg, sft, run, out, seeds, time_ratio=None):
    """ESF vs full-step over RL seeds: per seed and domain, the paired success gains of ESF (equal
    iterations), full-step (K = N - 1), ESF at the full-step arm's wall-clock, and of the last over
    full-step; their mean and spread over the seeds.

    Seed 0's runs are those of the esf arm (the main run, esf_full, esf_<n>it); a seed s > 0 trains
    esf_full_seed<s> and esf_<n>it_seed<s> and takes ESF at equal iterations from the seeds arm
    (seed<s>). time_ratio as in esf.
    """
    n, iters = cfg["num_steps"], cfg["rl_steps"]
    time_ratio, same_time = equal_time_iterations(iters, time_ratio, run, out / "esf_full")
    results = []  # per seed: (ESF, full, ESF at full's time) eval_rl.json
    for seed in seeds:
        tail, flags = (f"_seed{seed}", [f"--seed={seed}"]) if seed else ("", [])
        if seed:
            train(cfg, out / f"seed{seed}", *flags)
        train(cfg, out / f"esf_full{tail}", f"--sde_steps={n - 1}", *flags)
        train(cfg, out / f"esf_{same_time}it{tail}", f"--rl_steps={same_time}", *flags)
        esf_run = out / f"seed{seed}" if seed else run
        results.append([rl_summary(r)[1] for r in
                        (esf_run, out / f"esf_full{tail}", out / f"esf_{same_time}it{tail}")])
    comparisons = {  # name: (baseline, arm) as indices into (SFT, ESF, full, ESF at full's time)
        f"ESF {iters} it - SFT": (0, 1), f"full {iters} it - SFT": (0, 2),
        f"ESF {same_time} it - SFT": (0, 3), f"ESF {same_time} it - full": (2, 3)}
    print(f"\nEarly-Step Focus vs full-step over RL seeds {seeds} (success points, paired; ESF "
          f"{same_time} it = the full-step arm's time at ESF / full = {time_ratio:.2f}):")
    for domain in cfg["domains"].split(",") + [None]:
        print(f"  {domain or 'all'}:")
        for name, (base, arm) in comparisons.items():
            values = [100 * E.paired_difference(runs[base], runs[arm], domain)["success"]
                      for runs in ([sft] + seed_runs for seed_runs in results)]
            print(f"    {name}: {over_seeds(values)}")


def one_domain(cfg, sft, out, domain, name, arms):
    """RL runs on one domain from the SFT checkpoint, printed and reported.

    arms: {run name: (label, extra flags)}; a run is out/<domain>_<run name>, shared by the
    ablations that use it (the dense reward with the paper's weights is both's baseline).
    """
    n = cfg["eval_n"] // len(cfg["domains"].split(","))
    base = [f"--domains={domain}", f"--eval_n={n}"]
    table = {"SFT": sft}
    print(f"\n{name} on {domain} from {cfg['sft_ckpt']} (SFT SR on {domain}: "
          f"{100 * sft[domain]['success']:.1f}%):")
    for run_name, (label, extra) in arms.items():
        o = out / f"{domain}_{run_name}"
        train(cfg, o, *base, *extra)
        t, res = rl_summary(o)
        table[f"SFT + RL, {label}"] = res
        print(f"  {label}: zero-std group ratio {t['zero_std']:.2f}; held-out SR "
              f"{100 * res[domain]['success']:.1f}% (vs SFT {gain(sft, res, domain)[1]} points), "
              f"reward {res[domain]['reward']:.3f}")
    (out / f"{name}_{domain}").mkdir(parents=True, exist_ok=True)
    E.report(table, out / f"{name}_{domain}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/demo", help="the main demo run")
    ap.add_argument("--out", default="runs/ablations")
    ap.add_argument("--only", default="seeds,esf,reward,weights")
    ap.add_argument("--domain", default="sokoban", help="the dense vs sparse arm's domain")
    ap.add_argument("--weights_domain", default="sokoban", help="the reward weights' domain")
    ap.add_argument("--no_equal_time", action="store_true",
                    help="skip the ESF arm run for the full-step arm's wall-clock")
    ap.add_argument("--esf_seeds", default="0,1,2", help="RL seeds of the esf_seeds arm")
    ap.add_argument("--time_ratio", type=float, default=None,
                    help="ESF / full seconds per iteration measured alone (bench_rl_step.py); "
                         "default: the ratio of the two runs' RL wall-clocks")
    args = ap.parse_args()
    run, out = ROOT / args.run, ROOT / args.out
    cfg = json.loads((run / (run / "latest").read_text().strip() / "config.json").read_text())
    cfg["sft_ckpt"] = str(run / f"ckpt_{cfg['sft_steps']:06d}")
    sft = json.loads((run / "eval_sft.json").read_text())
    main_rl = json.loads((run / "eval_rl.json").read_text())
    only = args.only.split(",")
    if "seeds" in only:
        seeds(cfg, sft, main_rl, out, cfg["domains"].split(","))
    if "esf" in only:
        esf(cfg, sft, run, out, not args.no_equal_time, args.time_ratio)
    if "esf_seeds" in only:
        esf_seeds(cfg, sft, run, out, [int(x) for x in args.esf_seeds.split(",")], args.time_ratio)
    if "reward" in only:
        one_domain(cfg, sft, out, args.domain, "reward",
                   {"dense": ("dense reward", []),
                    "sparse": ("sparse reward", ["--reward=sparse"])})
    if "weights" in only:
        one_domain(cfg, sft, out, args.weights_domain, "weights",
                   {"dense": ("paper weights", []),
                    "code": ("code weights", ["--reward_weights=code"])})


if __name__ == "__main__":
    main()
