"""Evaluate a checkpoint on held-out puzzles and print the paper's table (P / R / F1 / SR).

Videos are generated for the first eval_n puzzles of the TEST split (puzzles.split_seeds("test"):
seeds and layouts disjoint from every training puzzle) with the deterministic ODE sampler
(eval_steps Euler steps on the shifted grid; --eval_unipc for Wan2.2's own flow UniPC solver;
classifier-free guidance with --eval_cfg), decoded by the VAE, and scored from pixels by reward.py.
Per domain and overall: mean precision, mean recall, F1 of those means, success rate, mean dense
reward (the table of VideoRLVR, arXiv 2605.15458, and its project page DarthZhu/VideoRLVR-page
index.html), with standard errors of the success rate and reward. Writes results.json, results.md
and a few GIFs. Under torchrun the test set is sharded over ranks.

This file also holds the one video-generation loop (`generate_videos`) that train.py's RL rollout
uses too: render and encode the puzzle images, sample latents, decode them to pixels.

Run:
  python eval.py --ckpt=runs/demo/ckpt_002424                      # ours (with its saved config)
  python eval.py --config 5b --ckpt_dir=Wan2.2-TI2V-5B --eval_n=300  # the official weights
  torchrun --standalone --nproc_per_node=8 eval.py --ckpt=runs/5b/ckpt_004900
Any TrainConfig field can be overridden with --key=value (train.get_config, used by main() only).
"""
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import NamedTuple

# Idle OpenMP threads sleep instead of spinning, so a run on shared cores slows in proportion
# to the cores it loses (measured in train.py's note on it); set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import torch.distributed as dist

import model as M
import puzzles
import reward
import sde


# -----------------------------------------------------------------------------
# ranks: evaluation shards its puzzles over torchrun's processes and gathers the scores

def rank_and_world():
    """(rank, world) of this process: (0, 1) without torch.distributed."""
    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def all_gather_list(values):
    """Concatenate a per-rank python list over ranks, in rank order (rewards, score rows)."""
    if not dist.is_initialized():
        return list(values)
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, list(values))
    return [v for part in out for v in part]


# -----------------------------------------------------------------------------
# one video-generation loop: puzzle images -> latents -> pixels (evaluation and RL rollouts)

@torch.no_grad()
def encode_puzzles(vae, batch, frames, height, width, micro_batch, device, cache=None,
                   cache_size=0):
    """Render puzzles and VAE-encode them: (B, C, F', H/16, W/16) latents.

    frames=1 gives the conditioning image (frame 0 alone, whose latent equals latent frame 0 of the
    whole video: the VAE is causal). cache: a dict {(layout, frames): latent} filled up to
    cache_size entries. The ground-truth video is a function of the layout (unique solutions), and
    the tiny mazes repeat: SFT then encodes each distinct one once.
    """
    keys = [(puzzles.puzzle_layout_key(p), frames) for p in batch]
    todo = [i for i, k in enumerate(keys) if cache is None or k not in cache]
    new = {}
    for i in range(0, len(todo), micro_batch):
        part = todo[i:i + micro_batch]
        videos = [M.to_pixels(puzzles.render(batch[j], height, width, frames)) for j in part]
        x = torch.stack(videos).to(device)                                  # (b, 3, F, H, W)
        new.update(zip(part, vae.encode(x, **M.vae_chunks(frames))))
    if cache is not None:
        for j, z in new.items():
            if len(cache) < cache_size:
                cache[keys[j]] = z
    return torch.stack([new[i] if i in new else cache[k] for i, k in enumerate(keys)])


def negative_context(text, n, guidance):
    """The unconditional branch of classifier-free guidance for n videos, or None without guidance.

    The empty prompt (encoded once, cached); Wan2.2's sampler uses its long sample_neg_prompt
    instead (Wan-Video/Wan2.2 wan/configs/shared_config.py). guidance 1 means no CFG: the RL
    default, as the Flow-GRPO README's "Training Speed" section advises (RL distils guidance).
    """
    if guidance == 1:
        return None
    return text.encode([""] * n)


class Generated(NamedTuple):
    """What generate_videos returns."""
    videos: np.ndarray          # (n, F, H, W, 3) uint8, decoded
    latents: torch.Tensor       # (n, C, F', h, w) float32, the sampled latents before decoding
    trajectories: list          # one sde.Trajectory per micro-batch (empty ones without SDE steps)


@torch.no_grad()
def generate_videos(dit, vae, image, context, noise_for, *, text, frames, micro_batch, device,
                    guidance=1.0, generator=None, timing=None, **sampler):
    """Sample and decode one video per row of `image`, micro_batch videos at a time.

    image (n, C, 1, h, w): each video's conditioning latent; context: n text features;
    noise_for(rows) -> (len(rows), C, F', h, w) initial noise, called once per micro-batch before
    its sampling (the RL rollout draws it from the same generator as the SDE noise, evaluation
    from one generator per puzzle). sampler: the keyword arguments of sde.sample (steps, shift,
    SDE window, UniPC). timing, if a dict, accumulates seconds under "rollout" and "decode".
    """
    videos, latents, trajectories = [], [], []
    for lo in range(0, len(image), micro_batch):
        rows = list(range(lo, min(lo + micro_batch, len(image))))
        t0 = time.time()
        noise = noise_for(rows)
        neg = negative_context(text, len(rows), guidance)
        with M.autocast(device):
            x0, traj = sde.sample(dit, noise, [context[r] for r in rows], image_latent=image[rows],
                                  cfg_scale=guidance, neg_context=neg, generator=generator,
                                  patch_size=dit.cfg.patch_size, **sampler)
        t1 = time.time()
        videos.append(M.decode_videos(vae, x0, frames))                    # (b, F, H, W, 3)
        latents.append(x0)
        trajectories.append(traj)
        if timing is not None:
            timing["rollout"] = timing.get("rollout", 0.0) + t1 - t0
            timing["decode"] = timing.get("decode", 0.0) + time.time() - t1
    return Generated(np.concatenate(videos), torch.cat(latents), trajectories)


# -----------------------------------------------------------------------------
# evaluation: generate, score, summarize

def eval_noise(latent, seed, indices, device):
    """Initial noise (len(indices), C, F', h, w): test puzzle i from its own generator."""
    draws = []
    for i in indices:
        g = sde.generator(device, seed, "eval", i)
        draws.append(torch.randn(latent, generator=g, device=device))
    return torch.stack(draws)


@torch.no_grad()
def evaluate(dit, vae, text, batch, device, *, frames, height, width, steps, shift, guidance=1.0,
             unipc=False, seed=0, micro_batch=8, gif_dir=None, n_gifs=4, reward_weights="paper"):
    """Generate and score one video per puzzle of `batch` with the deterministic ODE sampler.

    reward_weights names the dense reward's weights (reward.REWARD_WEIGHTS); the success and the
    P / R / F1 metrics do not depend on them.

    Returns {"overall": summary, "<domain>": summary, "samples": per-sample rows} on every rank
    (scores are gathered). Puzzle i's initial noise comes from its own generator (seed, "eval", i),
    so the videos depend neither on the number of ranks nor on the batch size. Every rank makes
    the same number of DiT forwards (the last rank's share is padded with repeats that are
    dropped): a sharded (FSDP) model needs all ranks in every forward.
    """
    rank, world = rank_and_world()
    n = len(batch)
    share = list(range(rank, math.ceil(n / world) * world, world))       # indices >= n are padding
    mine = [batch[min(i, n - 1)] for i in share]
    lat = M.latent_shape(frames, height, width, vae.cfg.z_dim)            # (C, F', h, w)
    image = encode_puzzles(vae, mine, 1, height, width, micro_batch, device)   # (b, C, 1, h, w)
    context = text.encode([p.prompt for p in mine])

    def noise_for(rows):                                                  # (b, C, F', h, w)
        return eval_noise(lat, seed, [share[r] for r in rows], device)

    gen = generate_videos(dit, vae, image, context, noise_for, text=text, frames=frames,
                          micro_batch=micro_batch, device=device, guidance=guidance,
                          num_steps=steps, shift=shift, unipc=unipc)
    rows, saved = [], 0
    for i, p, v in zip(share, mine, gen.videos):
        if i >= n:
            continue
        s = reward.score(p, v, weights=reward_weights)
        rows.append(dict(index=i, domain=p.domain, seed=p.seed, precision=s.precision,
                         recall=s.recall, f1=s.f1, success=s.success, reward=s.reward,
                         reason=s.reason))
        if gif_dir is not None and saved < n_gifs:
            Path(gif_dir).mkdir(parents=True, exist_ok=True)
            verdict = "ok" if s.success else "fail"
            puzzles.save_gif(Path(gif_dir) / f"{i:04d}_{p.domain}_{verdict}.gif", v)
            saved += 1
    rows = sorted(all_gather_list(rows), key=lambda r: r["index"])
    return summarize_rows(rows)


def standard_error(values):
    """Standard error of the mean, sqrt(var / n) with the sample variance; nan below 2 values."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float("nan")
    return float(values.std(ddof=1) / math.sqrt(len(values)))


def summarize_rows(rows):
    """Per domain and overall: reward.summarize of the scores, plus standard errors.

    The standard errors of the success rate and of the mean reward are what a difference between
    two checkpoints must exceed.
    """
    def block(sel):
        scores = [reward.Score(precision=r["precision"], recall=r["recall"], f1=r["f1"],
                               success=r["success"], reward=r["reward"], components={},
                               reason=r["reason"]) for r in sel]
        out = reward.summarize(scores)
        out["n"] = len(sel)
        out["success_se"] = standard_error([r["success"] for r in sel])
        out["reward_se"] = standard_error([r["reward"] for r in sel])
        return out

    res = {}
    for d in puzzles.DOMAINS:
        sel = [r for r in rows if r["domain"] == d]
        if sel:
            res[d] = block(sel)
    res["overall"] = block(rows)
    res["samples"] = rows
    return res


def paired_difference(a, b, domain=None):
    """b - a on the same puzzles (both evaluate() results), over all domains or one.

    The mean difference of success and of reward with the standard error of the paired
    differences, sqrt(var(d) / n). This is the right error bar for comparing two checkpoints on one
    test set: puzzles both solve, or both fail, add no noise to it (unlike two separate errors).
    Samples are matched by (domain, seed), so an evaluation of one domain pairs with the same
    domain's puzzles of a multi-domain one; with the same eval_n and domains they also share the
    noise (eval_noise draws it by index).
    """
    def by_puzzle(result):
        return {(r["domain"], r["seed"]): r for r in result["samples"]
                if domain is None or r["domain"] == domain}

    sa, sb = by_puzzle(a), by_puzzle(b)
    common = sorted(set(sa) & set(sb))
    out = {"n": len(common)}
    for key in ("success", "reward"):
        d = np.array([float(sb[i][key]) - float(sa[i][key]) for i in common])
        out[key] = float(d.mean()) if len(d) else float("nan")
        out[key + "_se"] = standard_error(d)
    return out


# -----------------------------------------------------------------------------
# the table

def percent(v):
    """A fraction as a percentage with one decimal; "-" where no sample defined it (None or nan)."""
    if v is None or v != v:
        return "-"
    return f"{100 * v:.1f}"


def format_table(results):
    """{row name: evaluate() result} -> a Markdown table, one row per checkpoint.

    The paper's columns (P / R / F1 / SR per domain, in %) plus the overall success rate and mean
    dense reward with their standard errors.
    """
    doms = [d for d in puzzles.DOMAINS if any(d in r for r in results.values())]
    head = ["Model"] + [f"{d} {m}" for d in doms for m in ("P", "R", "F1", "SR")]
    head += ["SR (all)", "reward (all)", "n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        cells = [name]
        for d in doms:
            if d in r:
                cells += [percent(r[d][k]) for k in ("precision", "recall", "f1", "success")]
            else:
                cells += ["-"] * 4
        o = r["overall"]
        cells.append(f"{percent(o['success'])} ± {percent(o['success_se'])}")
        cells.append(f"{o['reward']:.3f} ± {o['reward_se']:.3f}")
        cells.append(str(o["n"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(results, out):
    """Print the table of {row name: evaluate() result} and write it to out/results.md.

    Below the table: the paired difference of each row to the first (same puzzles, same noise).
    """
    table = format_table(results)
    names = list(results)
    for name in names[1:]:
        table += f"\n\n{name} - {names[0]}, paired:"
        first = results[names[0]]
        doms = [d for d in puzzles.DOMAINS if d in first and d in results[name]]
        for domain in [None] + (doms if len(doms) > 1 else []):
            d = paired_difference(first, results[name], domain)
            table += (f"\n- {domain or 'all'} ({d['n']} puzzles): success "
                      f"{100 * d['success']:+.1f} ± {100 * d['success_se']:.1f} points, "
                      f"reward {d['reward']:+.3f} ± {d['reward_se']:.3f}")
    M.atomic_write(Path(out) / "results.md", lambda tmp: tmp.write_text(table + "\n"))
    print("\n" + table)
    return table


# -----------------------------------------------------------------------------
# command line

EVAL_SUMMARY = """Evaluate a checkpoint on eval_n held-out test puzzles and print the paper's table.
  --ckpt=<ckpt_* or run folder>   our checkpoint; its saved config is the base unless --config
  --ckpt_dir=<folder>             the official Wan2.2-TI2V-5B weights (with --config 5b)
  --out_dir=<folder>              where results.json, results.md and GIFs go (default: the
                                  checkpoint's eval/ folder; with --ckpt_dir: <out_dir>/eval)
The settings used are eval_n, eval_steps, eval_shift, eval_cfg (guidance) and eval_unipc."""


def main(argv=None):
    """python eval.py --ckpt=... | --ckpt_dir=...: evaluate, print the table, write the results."""
    import train                  # the config parser and the loaders; train.py imports this file
    argv = sys.argv[1:] if argv is None else argv
    if train.wants_help(argv):
        print(train.usage("eval.py", EVAL_SUMMARY))
        return None
    try:
        cfg, out = eval_config(train, argv)
    except train.ConfigError as e:
        train.config_exit("eval.py", e)
    rank, world, device = train.setup_distributed(cfg)
    dit, vae, text = train.build_models(cfg, device)
    if cfg.ckpt:
        ckpt = train.resolve_checkpoint(cfg.ckpt)
        try:
            train.check_checkpoint(ckpt)
        except train.CheckpointError as e:
            print(f"eval.py: error: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        train.load_weights(ckpt, dit, vae, text)
    train.channels_last(vae)
    dit.to(device).eval()
    solver = "UniPC" if cfg.eval_unipc else "Euler"
    train.print0(f"evaluating {cfg.ckpt or cfg.ckpt_dir} on {cfg.eval_n} test puzzles "
                 f"({cfg.domains}, level {cfg.level}), {cfg.eval_steps} {solver} steps, "
                 f"shift {cfg.eval_shift}, guidance {cfg.eval_cfg}")
    res = evaluate_config(cfg, dit, vae, text, device, gif_dir=out / "gifs")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        payload = json.dumps(res | {"config": dataclasses.asdict(cfg)}, indent=1)
        M.atomic_write(out / "results.json", lambda tmp: tmp.write_text(payload))
        report({Path(cfg.ckpt or cfg.ckpt_dir).name: res}, out)
        print(f"wrote {out / 'results.json'}, {out / 'results.md'} and GIFs in {out / 'gifs'}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return res


def eval_config(train, argv):
    """(TrainConfig, output folder) of an eval.py command line; ConfigError for a bad one.

    With --ckpt and no --config, the checkpoint's own config is the base (puzzles, size, model).
    Results go to --out_dir when it is given, else to the checkpoint's eval/ folder.
    """
    ckpt_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--ckpt=")), "")
    base = None
    if ckpt_arg and not any(a.startswith("--config") for a in argv):
        base = json.loads((train.resolve_checkpoint(ckpt_arg) / "config.json").read_text())
    cfg = train.get_config(argv, base=base)
    if cfg.eval_n <= 0:
        raise train.ConfigError("--eval_n must be > 0 (the number of held-out puzzles)")
    out_given = any(a.startswith("--out_dir") for a in argv)
    if out_given:
        out = Path(cfg.out_dir)
    elif cfg.ckpt:
        out = train.resolve_checkpoint(cfg.ckpt) / "eval"
    elif cfg.ckpt_dir:
        out = Path(cfg.out_dir) / "eval"
    else:
        raise train.ConfigError("nothing to evaluate: give --ckpt=<our checkpoint or run folder> "
                                "or --ckpt_dir=<official folder>")
    return cfg, out


def evaluate_config(cfg, dit, vae, text, device, gif_dir=None, split=("test", 0)):
    """evaluate() with the evaluation settings of a train.TrainConfig (eval_n puzzles of `split`).

    split: ("test", 0), or for tuning ("train", first index) of puzzles no stage trains on.
    """
    doms = [d.strip() for d in cfg.domains.split(",") if d.strip()]
    batch = puzzles.make_batch(doms, cfg.level, split[0], split[1], cfg.eval_n)
    return evaluate(dit, vae, text, batch, device, frames=cfg.frames, height=cfg.height,
                    width=cfg.width, steps=cfg.eval_steps, shift=cfg.eval_shift,
                    guidance=cfg.eval_cfg, unipc=cfg.eval_unipc, seed=cfg.eval_seed,
                    micro_batch=cfg.micro_batch, gif_dir=gif_dir,
                    reward_weights=cfg.reward_weights)


if __name__ == "__main__":
    main()
