"""Evaluate a checkpoint on held-out puzzles and print the paper's table: Precision / Recall / F1 / SR.

Videos are generated for the first eval_n puzzles of the TEST split (puzzles.split_seeds("test"):
seeds and layouts disjoint from every training puzzle) with the deterministic ODE sampler
(eval_steps Euler steps on the shifted grid; --eval_unipc for Wan2.2's own flow UniPC solver; CFG
with --eval_cfg), decoded by the VAE, and scored from pixels by reward.py. Per domain and overall:
mean precision, mean recall, F1 of those means, success rate, mean dense reward (as the table of
VideoRLVR, arXiv 2605.15458, project page), with standard errors of the success rate and reward.
Writes results.json, results.md and a few GIFs. Under torchrun the test set is sharded over ranks.

Run:
  python eval.py --ckpt=runs/tiny/ckpt_000400                      # our checkpoint (its saved config)
  python eval.py --config 5b --ckpt_dir=Wan2.2-TI2V-5B --eval_n=300  # the official weights
  torchrun --standalone --nproc_per_node=8 eval.py --ckpt=runs/5b/ckpt_000200
Any TrainConfig field can be overridden with --key=value (train.get_config).
"""
import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import puzzles
import reward
import sde
import train as T


@torch.no_grad()
def evaluate(cfg, dit, vae, text, device, gif_dir=None, n_gifs=4, split=("test", 0)):
    """Generate and score cfg.eval_n test puzzles (or, for tuning, `split` = ("train", first index) of
    puzzles no stage trains on); returns {"overall": summary, "<domain>": summary, "samples": per-sample
    rows} on every rank (scores are gathered). Puzzle i's initial noise comes
    from its own generator, so the videos do not depend on the number of ranks or the batch size.
    Every rank makes the same number of DiT forwards (the last rank's share is padded with repeats
    that are dropped): a sharded (FSDP) model needs all ranks in every forward."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    n = cfg.eval_n
    batch = T.make_puzzles(cfg, *split, n)
    share = [i for i in range(rank, math.ceil(n / world) * world, world)]    # indices >= n are padding
    lat = T.latent_shape(cfg, vae.cfg.z_dim)                                  # (C, F, h, w)
    rows, saved = [], 0
    for c in range(0, len(share), cfg.micro_batch):
        idx = share[c:c + cfg.micro_batch]
        ps = [batch[min(i, n - 1)] for i in idx]
        image = T.encode_puzzles(vae, ps, cfg, device, frames=1)                 # (b, C, 1, h, w)
        noise = torch.stack([torch.randn(lat, generator=T.generator(device, cfg.seed, "eval", i), device=device)
                             for i in idx])                                     # (b, C, F, h, w)
        with T.autocast(device):
            x0, _ = sde.sample(dit, noise, text.encode([p.prompt for p in ps]), image_latent=image,
                               num_steps=cfg.eval_steps, shift=cfg.eval_shift, cfg_scale=cfg.eval_cfg,
                               neg_context=T.negative_context(cfg, text, len(ps)), unipc=cfg.eval_unipc,
                               patch_size=dit.cfg.patch_size)
        videos = T.decode_videos(vae, x0, cfg)                                  # (b, F, H, W, 3)
        for i, p, v in zip(idx, ps, videos):
            if i >= n:
                continue
            s = reward.score(p, v)
            rows.append(dict(index=i, domain=p.domain, seed=p.seed, precision=s.precision, recall=s.recall,
                             f1=s.f1, success=s.success, reward=s.reward, reason=s.reason))
            if gif_dir is not None and saved < n_gifs:
                Path(gif_dir).mkdir(parents=True, exist_ok=True)
                puzzles.save_gif(Path(gif_dir) / f"{i:04d}_{p.domain}_{'ok' if s.success else 'fail'}.gif", v)
                saved += 1
    rows = sorted(T.all_gather_list(rows), key=lambda r: r["index"])
    return summarize_rows(rows)


def summarize_rows(rows):
    """Per domain and overall: reward.summarize of the scores, plus the standard errors of the success
    rate and of the mean reward (what a difference between two checkpoints must exceed)."""
    def block(sel):
        scores = [reward.Score(precision=r["precision"], recall=r["recall"], f1=r["f1"], success=r["success"],
                               reward=r["reward"], components={}, reason=r["reason"]) for r in sel]
        out = reward.summarize(scores)
        sr, rw = np.array([r["success"] for r in sel], float), np.array([r["reward"] for r in sel], float)
        out["n"] = len(sel)
        out["success_se"] = float(sr.std(ddof=1) / math.sqrt(len(sel))) if len(sel) > 1 else float("nan")
        out["reward_se"] = float(rw.std(ddof=1) / math.sqrt(len(sel))) if len(sel) > 1 else float("nan")
        return out
    res = {d: block([r for r in rows if r["domain"] == d]) for d in puzzles.DOMAINS if any(r["domain"] == d for r in rows)}
    res["overall"] = block(rows)
    res["samples"] = rows
    return res


def format_table(results):
    """{row name: evaluate() result} -> a Markdown table, one row per checkpoint, the paper's columns
    (P / R / F1 / SR per domain, in %) plus the overall success rate and mean dense reward with
    their standard errors."""
    doms = [d for d in puzzles.DOMAINS if any(d in r for r in results.values())]
    head = ["Model"] + [f"{d} {m}" for d in doms for m in ("P", "R", "F1", "SR")] + ["SR (all)", "reward (all)", "n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    pct = lambda v: "-" if v is None or v != v else f"{100 * v:.1f}"     # nan: no sample defined it
    for name, r in results.items():
        cells = [name]
        for d in doms:
            cells += [pct(r[d][k]) for k in ("precision", "recall", "f1", "success")] if d in r else ["-"] * 4
        o = r["overall"]
        cells += [f"{pct(o['success'])} ± {pct(o['success_se'])}", f"{o['reward']:.3f} ± {o['reward_se']:.3f}", str(o["n"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_difference(a, b):
    """b - a on the same puzzles with the same noise (both evaluate() results): the mean difference of
    success and of reward with the standard error of the paired differences, sqrt(var(d) / n). This
    is the right error bar for comparing two checkpoints on one test set: puzzles both solve, or both
    fail, add no noise to it (unlike the two separate standard errors)."""
    sa, sb = {r["index"]: r for r in a["samples"]}, {r["index"]: r for r in b["samples"]}
    common = sorted(set(sa) & set(sb))
    out = {"n": len(common)}
    for key in ("success", "reward"):
        d = np.array([float(sb[i][key]) - float(sa[i][key]) for i in common])
        out[key] = float(d.mean()) if len(d) else float("nan")
        out[key + "_se"] = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")
    return out


def evaluate_stage(cfg, name, dit, vae, text, device):
    """train.py's held-out evaluation after a stage, written to out_dir/eval_{name}.json once: a resumed
    run does not evaluate the same stage twice."""
    path = Path(cfg.out_dir) / f"eval_{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    res = evaluate(cfg, dit, vae, text, device, gif_dir=Path(cfg.out_dir) / "gifs" / f"eval_{name}")
    if T.is_master():
        T.write_text_atomic(path, json.dumps(res, indent=1))
    return res


def report(results, out):
    """Print the table of {row name: evaluate() result} and write it to out/results.md (rank 0), with
    the paired difference of each row to the first (same puzzles, same noise)."""
    table = format_table(results)
    names = list(results)
    for name in names[1:]:
        d = paired_difference(results[names[0]], results[name])
        table += (f"\n\n{name} - {names[0]} (paired, {d['n']} puzzles): success {100 * d['success']:+.1f} ± "
                  f"{100 * d['success_se']:.1f} points, reward {d['reward']:+.3f} ± {d['reward_se']:.3f}")
    T.write_text_atomic(Path(out) / "results.md", table + "\n")
    print("\n" + table)
    return table


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    # with --ckpt and no --config, the checkpoint's own config is the base (same puzzles, size, model)
    ckpt_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--ckpt=")), "")
    base = None
    if ckpt_arg and not any(a.startswith("--config") for a in argv):
        base = json.loads((T.resolve_checkpoint(ckpt_arg) / "config.json").read_text())
    cfg = T.get_config(argv, base=base)
    rank, world, device = T.setup_distributed(cfg)
    if cfg.eval_n <= 0:
        raise ValueError("--eval_n must be > 0 (the number of held-out puzzles)")
    dit, vae, text = T.build_models(cfg, device)
    if cfg.ckpt:
        ckpt = T.resolve_checkpoint(cfg.ckpt)
        T.load_weights(ckpt, dit, vae, text)
        out = ckpt / "eval"
    elif cfg.ckpt_dir:
        out = Path(cfg.out_dir) / "eval"
    else:
        raise ValueError("nothing to evaluate: give --ckpt=<our checkpoint or run folder> or --ckpt_dir=<official folder>")
    T.channels_last(vae)
    dit.to(device).eval()
    T.print0(f"evaluating {cfg.ckpt or cfg.ckpt_dir} on {cfg.eval_n} test puzzles ({cfg.domains}, level {cfg.level}), "
             f"{cfg.eval_steps} {'UniPC' if cfg.eval_unipc else 'Euler'} steps, shift {cfg.eval_shift}, cfg {cfg.eval_cfg}")
    res = evaluate(cfg, dit, vae, text, device, gif_dir=out / "gifs")
    if T.is_master():
        out.mkdir(parents=True, exist_ok=True)
        T.write_text_atomic(out / "results.json", json.dumps(res | {"config": dataclasses.asdict(cfg)}, indent=1))
        report({Path(cfg.ckpt or cfg.ckpt_dir).name: res}, out)
        print(f"wrote {out / 'results.json'}, {out / 'results.md'} and GIFs in {out / 'gifs'}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return res


if __name__ == "__main__":
    main()
