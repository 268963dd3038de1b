"""Evaluate a finished run's SFT and RL checkpoints again with the current code, and print its table.

Every number in the README must come from the committed reward.py; after a change to the verifier
(or to evaluation), this regenerates a run's held-out results without training again. The
evaluation is deterministic (the same test puzzles and initial noise, eval_seed), so only the
scoring can change. The run's eval_sft.json and eval_rl.json are kept as *.before.json, the new
ones written in their place, and the table (with paired differences) printed and written to
results.md, as train.py does at the end of a run.

Run: python tests/scripts/rescore_run.py --run runs/demo [--stages sft,rl]
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import train as T  # noqa: E402  (first: it sets the OpenMP wait policy before torch loads)

import eval as E  # noqa: E402
import model as M  # noqa: E402
import torch  # noqa: E402
from tune_rl import load_checkpoint  # noqa: E402  (this folder: build the models, load a ckpt)

NAMES = {"sft": "SFT", "rl": "SFT + RL (VideoRLVR)"}


def stage_step(run, cfg, stage):
    """The global step a stage ended on (sft_steps, or sft_steps + rl_steps), its ckpt checked."""
    step = cfg.sft_steps if stage == "sft" else cfg.sft_steps + cfg.rl_steps
    ckpt = run / f"ckpt_{step:06d}"
    if not ckpt.is_dir():
        raise SystemExit(f"rescore_run.py: error: {ckpt} not found (the {stage} stage's last "
                         f"checkpoint; is the run finished?)")
    return step


def rescore(run, stage, device):
    """Evaluate one stage's checkpoint with its saved config; write eval_<stage>.json."""
    config = json.loads((T.resolve_checkpoint(str(run)) / "config.json").read_text())
    cfg = T.get_config([], base=config)
    step = stage_step(run, cfg, stage)
    dit, vae, text = load_checkpoint(cfg, run, step, device)
    dit.eval()
    print(f"{stage}: evaluating {run / f'ckpt_{step:06d}'} on {cfg.eval_n} test puzzles",
          flush=True)
    res = E.evaluate_config(cfg, dit, vae, text, device)
    path = run / f"eval_{stage}.json"
    if path.exists():
        path.replace(run / f"eval_{stage}.before.json")
    payload = json.dumps(res, indent=1)
    M.atomic_write(path, lambda tmp: tmp.write_text(payload))
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/demo", help="a finished train.py run folder")
    ap.add_argument("--stages", default="sft,rl")
    args = ap.parse_args()
    run = (ROOT / args.run).resolve()
    device = torch.device("cpu")
    results = {}
    for stage in args.stages.split(","):
        results[NAMES[stage]] = rescore(run, stage, device)
    E.report(results, run)


if __name__ == "__main__":
    main()
