"""Teach Wan2.2-TI2V-5B (or its tiny CPU stand-in) to solve puzzles: SFT, then GRPO.

The recipe of VideoRLVR ("Video Models Can Reason with Verifiable Rewards", arXiv 2605.15458; its
project page DarthZhu/VideoRLVR-page index.html lists the four steps):
  stage 0  (tiny only) a short autoencoder warm-up of the randomly initialised tiny VAE on rendered
           puzzle videos: the stand-in for the real model's pretrained VAE, cached under .cache/.
  stage 1  SFT: the flow-matching loss on ground-truth solution videos (latent frame 0 = the puzzle
           image, clean, timestep 0), as DiffSynth-Studio trains Wan2.2-TI2V-5B
           (modelscope/DiffSynth-Studio diffsynth/diffusion/loss.py @0e6976a).
  stage 2  RL: groups of G rollouts per puzzle with SDE noise and stored log-probabilities on the
           first K of N denoising steps only (Early-Step Focus, arXiv 2605.15458 abstract),
           plain ODE after; VAE decode; the pixel verifiers of reward.py score each video;
           group-relative advantages; the clipped policy loss (+ KL to the reference policy)
           recomputed on the stored steps (grpo.py; yifan123/flow_grpo scripts/train_wan2_1.py
           @74db691).

The file reads in that order: the config and its presets; the method (stage 0, stage 1, stage 2:
rollout, GRPO update, RL step); the run (`main` and the one stage loop that serves SFT and RL);
then, below a line, the plumbing (distributed, LoRA, checkpoints, `--dry_run`).

Run:
  python train.py --config tiny                       # CPU smoke run: every stage, ~1 min
  python train.py --config demo                       # CPU demo: 3 domains, SFT, RL, table
  python train.py --config 5b_lora --ckpt_dir=Wan2.2-TI2V-5B          # one 80 GB GPU, LoRA
  torchrun --standalone --nproc_per_node=8 train.py --config 5b --ckpt_dir=Wan2.2-TI2V-5B  # FSDP2
  python train.py --config 5b --dry_run --n_gpus=8     # parameters, memory, FLOPs, time; no weights
  python train.py --config demo --resume               # continue out_dir's latest checkpoint
Any field of TrainConfig can be overridden with --key=value (or --key value; a bare --flag sets a
bool); unknown keys are an error.
"""
import copy
import dataclasses
import difflib
import hashlib
import inspect
import json
import math
import os
import pickle
import random
import shutil
import sys
import time
import zipfile
from ast import literal_eval
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

# OpenMP threads that sleep while they wait for work, instead of spinning. With spinning (the
# default), a tiny run sharing 2 cores with one other busy torch process slowed 2.9x per VAE
# warm-up step and 3.6x per DiT step (up to 5.7x in another measurement); passive waiting slows
# both 1.7x, in proportion to the cores lost, and alone costs nothing beyond run-to-run noise
# (tests/scripts/bench_threads.py). It must be set before torch loads its OpenMP runtime; an
# explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file
from tqdm import tqdm

import eval as E
import grpo
import model as M
import puzzles
import reward
import sde

ROOT = Path(__file__).resolve().parent


# =============================================================================
# config: a dataclass of defaults, named presets, typed --key=value overrides
# =============================================================================

@dataclass
class TrainConfig:
    config: str = "tiny"           # the preset these values start from (--config NAME)
    # model and weights
    model: str = "tiny"            # preset name in model.py DIT_CONFIGS / VAE_CONFIGS / T5_CONFIGS
    ckpt_dir: str = ""             # official Wan2.2-TI2V-5B folder (native or -Diffusers) or ""
    ckpt: str = ""                 # our checkpoint to start from / evaluate: ckpt_* or run folder
    out_dir: str = "runs/tiny"     # what a run writes: checkpoints, metrics.jsonl, GIFs, tables
    resume: bool = False           # continue out_dir's latest checkpoint (weights, optimizer, step)
    device: str = "auto"           # auto: cuda if available, else cpu
    seed: int = 0
    # puzzles and video geometry
    domains: str = "maze"          # comma-separated subset of maze,flowfree,sokoban, round-robin
    level: str = "easy"            # puzzles.LEVELS difficulty per domain
    height: int = 128
    width: int = 128
    frames: int = 17               # 4k+1; latent frames = (frames - 1) / 4 + 1
    # stage 0: tiny VAE warm-up (only for a randomly initialised VAE; skipped with ckpt_dir)
    vae_steps: int = 0
    vae_batch: int = 4
    vae_lr: float = 2e-3
    vae_weights: str = ""          # a trained tiny VAE (model.save_vae file, relative to this file)
                                   # loaded instead of the warm-up: stage 0's stand-in
    vae_check: int = 64            # test videos per domain round-tripped through the VAE (printed)
    # stage 1: SFT
    sft_steps: int = 0
    sft_batch: int = 8             # videos per optimizer step, across all ranks
    sft_lr: float = 1e-4
    sft_pool: int = 0              # SFT cycles over train puzzles 0 .. sft_pool - 1 (a fixed SFT
                                   # set, as the paper's 30,000 videos); 0: fresh puzzles every step
    sft_shift: float = 5.0         # shift of the SFT sigma sampling (sde.sft_noising); the presets
                                   # use one shift for SFT, rollouts and evaluation
    # stage 2: RL
    rl_steps: int = 0
    puzzles_per_step: int = 4      # P distinct puzzles per RL iteration, across all ranks
    group_size: int = 8            # G rollouts per puzzle (CodeGoat24/Pref-GRPO Wan script: 8)
    groups_per_update: int = 4     # optimizer step after this many groups (P / this per iteration)
    num_steps: int = 20            # N rollout denoising steps (flow_grpo config/grpo.py Wan: 20)
    sde_steps: int = 10            # K: SDE + backprop on [sde_start, sde_start + K); K = N/2 from
                                   # the paper's ~40% saving (arXiv 2605.15458 abstract); at most
                                   # N - 1: the last step stays an ODE step
    sde_start: int = 0             # Early-Step Focus: the window starts at the noisiest step
    noise_level: float = 0.7       # a in sigma_t = a sqrt(sigma / (1 - sigma)) (flow_grpo base.py)
    sde_type: str = "sde"          # sde (Flow-GRPO), cps, dance, wan (sde.sde_step)
    shift: float = 5.0             # sigma shift of the rollout grid (Wan2.2 TI2V sample_shift)
    cfg_scale: float = 1.0         # guidance in rollout and update (1 = off: Flow-GRPO README)
    clip_range: float = 1e-3       # PPO ratio clip (flow_grpo Wan config with LoRA; 1e-4 full FT)
    beta: float = 0.0              # KL weight to the reference policy (flow_grpo Wan: 0.004)
    adv_clip_max: float = 5.0      # advantages clipped to +-5 (flow_grpo config/base.py)
    global_std: bool = False       # std over the whole batch, not per group (flow_grpo SD3 configs)
    lr: float = 1e-4               # RL learning rate (flow_grpo Wan LoRA: 1e-4, constant)
    weight_decay: float = 1e-4     # AdamW (0.9, 0.999), eps 1e-8 (flow_grpo config/base.py)
    grad_clip: float = 1.0
    reward: str = "dense"          # dense: reward.py's decomposed reward; sparse: success only
    reward_weights: str = "paper"  # dense-reward weights: paper or code (reward.REWARD_WEIGHTS)
    # LoRA (rank 0 = train all DiT weights)
    lora_rank: int = 0
    lora_alpha: float = 64.0
    lora_targets: str = "q,k,v,o"  # nn.Linear names in the DiT blocks (self- and cross-attention)
    # systems
    grad_checkpointing: bool = False
    micro_batch: int = 8           # videos per DiT forward in rollouts and in the update
    latent_cache: int = 0          # SFT: keep up to this many encoded videos (repeated layouts)
    # evaluation (eval.py; the tiny run evaluates after SFT and after RL)
    eval_n: int = 0                # held-out test puzzles per evaluation (0 = none)
    eval_steps: int = 20           # ODE steps of the evaluation sampler
    eval_shift: float = 5.0
    eval_seed: int = 0             # the evaluation's noise seed: runs of any --seed are scored on
                                   # the same noise, so their differences are paired
    eval_cfg: float = 1.0          # classifier-free guidance scale of the evaluation sampler
    eval_unipc: bool = False       # Wan2.2's flow UniPC solver instead of Euler (deterministic)
    # logging and checkpoints
    save_every: int = 100          # steps between checkpoints (and one at the end of each stage)
    gif_every: int = 25            # RL steps between rollout-group GIFs (0 = never)
    stop_after: int = 0            # stop (after checkpointing) once this global step is done
    cache_dir: str = ".cache"      # the tiny VAE warm-up cache (relative to this file)
    # --dry_run: estimates at full scale without weights
    dry_run: bool = False
    n_gpus: int = 8
    gpu_tflops: float = 989.0      # dense bf16 peak per GPU (H100 SXM)
    mfu: float = 0.35              # assumed model-FLOPs utilization
    gpu_mem_gb: float = 80.0       # GPU memory (decimal GB) the dry run checks its estimate against


# The presets. Each entry is a complete, runnable run; values override the TrainConfig defaults.
CONFIGS = {}

# The tiny model's VAE, trained once by tests/scripts/make_tiny_vae.py (the demo preset's stage 0
# settings below) and shipped in the repository: the stand-in for Wan2.2's pretrained VAE, so no
# run spends minutes warming one up. --vae_weights= warms one up instead (cached under .cache/).
TINY_VAE = "assets/tiny_vae.safetensors"

# The CPU demonstration (2 cores; target 30 min, measured 46 min at commit 863675c, SFT alone 17.5
# min; README "What the CPU demo shows"): one multi-task model on the three domains at their
# easy levels (puzzles.LEVELS: 3x3-room mazes of >= 8 moves, 5x5 FlowFree with 4 colours, 6x6
# Sokoban with 1 box and >= 3 pushes), 128x128, 17 frames = 5 latent frames, 80 DiT tokens.
# Stage 0: the shipped VAE (its round trip checked on 64 test videos per domain). SFT: 2,400 steps
# x 16 videos over a fixed set of 3,072 training puzzles, each encoded once (latent cache). RL: 24
# iterations x 16 puzzles x 8 rollouts, K = 5 of N = 10 steps. One sigma shift, 3, for SFT,
# rollouts and evaluation (the 5b preset's). RL lr and batch were chosen on validation mazes (train
# split, unseen seeds) for the earlier maze-only preset, not on the test split
# (tests/scripts/tune_rl.py). sde_type = "sde" (Flow-GRPO's SD3 schedule, the default) was chosen
# over Flow-GRPO's Wan schedule by tune_rl.py on 512 validation puzzles from this preset's SFT
# checkpoint (24 RL iterations each, one seed): "sde" +1.6 +- 1.0 success points over SFT, reward
# +0.041 +- 0.009; "wan" (noise_level=0.9643 = sde.wan_sigma_max(10, 3)) -0.8 +- 0.9 points, reward
# +0.017 +- 0.010. Evaluation: 256 test puzzles per domain.
DEMO = dict(
    model="tiny", out_dir="runs/demo", domains="maze,flowfree,sokoban", level="easy",
    height=128, width=128, frames=17,
    vae_steps=2000, vae_batch=4, vae_lr=2e-3, vae_weights=TINY_VAE, vae_check=64,
    sft_steps=2400, sft_batch=16, sft_lr=1e-3, sft_pool=3072, latent_cache=3072, sft_shift=3.0,
    rl_steps=24, puzzles_per_step=16, group_size=8, groups_per_update=16,
    num_steps=10, sde_steps=5, shift=3.0, lr=5e-5, clip_range=1e-3,
    eval_n=768, eval_steps=10, eval_shift=3.0, micro_batch=32, save_every=400, gif_every=10,
)

# The smoke run (2 cores, 38 s from a fresh clone): every stage of the demo on all three domains,
# at a size that checks an install, not one that learns: the shipped VAE's round trip on 4 test
# videos per domain, 40 SFT steps, 2 RL iterations of 3 puzzles x 4 rollouts, evaluation of 4 test
# puzzles per domain after SFT and after RL, GIFs, metrics.jsonl, curves.png and the table.
CONFIGS["tiny"] = DEMO | dict(
    out_dir="runs/tiny", vae_check=4,
    sft_steps=40, sft_batch=8, sft_pool=48, latent_cache=48,
    rl_steps=2, puzzles_per_step=3, group_size=4, groups_per_update=3,
    eval_n=12, micro_batch=16, save_every=1000, gif_every=1,
)
CONFIGS["demo"] = DEMO

# Wan2.2-TI2V-5B, all DiT weights under FSDP2.
# SFT: ~5 epochs over the paper's 30,000 training videos (4,700 x 32; RL started from "SFT Epoch 5",
# the row of the project page's results table that RL improves on), lr 1e-5 (DiffSynth-Studio
# examples/wanvideo/model_training/full/Wan2.2-TI2V-5B.sh).
# RL: 480x480x49 = 2,925 tokens per video; N = 20 (flow_grpo config/grpo.py general_ocr_wan2_1);
# K = N/2 (Early-Step Focus, inferred from the paper's ~40% saving); G = 8; 4 puzzles x 8 = 32
# videos per iteration, 2 optimizer steps per iteration (flow_grpo README: grad_acc = batches / 2);
# clip 1e-4 and lr 1e-5 for full fine-tuning (XueZeyue/DanceGRPO scripts/finetune/
# finetune_wan_2_1_grpo.sh, Tencent-Hunyuan/MixGRPO); shift 3 at <= 480p (Wan-Video/Wan2.2
# wan/textimage2video.py); no CFG (flow_grpo README: RL distils CFG); evaluation with the Wan
# default of 50 steps (Wan-Video/Wan2.2 wan/configs/wan_ti2v_5B.py). sde_type "sde" at
# noise_level 0.7 (flow_grpo base.py, as TrainConfig): not validated at 5B (no GPU run in this
# project); on the demo's validation puzzles it beat Flow-GRPO's Wan schedule (the demo preset's
# note). To try that one: --sde_type=wan --noise_level=0.9828 (sde.wan_sigma_max(20, 3)).
CONFIGS["5b"] = dict(
    model="5b", out_dir="runs/5b", domains="maze,flowfree,sokoban", level="medium",
    height=480, width=480, frames=49,
    sft_steps=4700, sft_batch=32, sft_lr=1e-5, sft_shift=3.0,
    rl_steps=200, puzzles_per_step=4, group_size=8, groups_per_update=2,
    num_steps=20, sde_steps=10, shift=3.0, noise_level=0.7, clip_range=1e-4, beta=0.0, lr=1e-5,
    grad_checkpointing=True, micro_batch=1,
    eval_n=300, eval_steps=50, eval_shift=3.0, save_every=100,
)

# The 5b preset plus LoRA r32 / alpha 64 on q,k,v,o (flow_grpo config/grpo.py Wan config; DiffSynth
# examples/wanvideo/model_training/lora/Wan2.2-TI2V-5B.sh: lr 1e-4): the reference policy is the
# adapter switched off, so beta = 0.004 costs one no-grad forward per trained step.
CONFIGS["5b_lora"] = CONFIGS["5b"] | dict(
    out_dir="runs/5b_lora", sft_lr=1e-4, clip_range=1e-3, beta=0.004, lr=1e-4,
    lora_rank=32, lora_alpha=64.0,
)

# One GPU, no FSDP (README "Full scale on one GPU"; memory from --dry_run's memory_model, measured
# per block and for the VAE decoder by tests/scripts/bench_memory.py): LoRA on one 80 GB GPU
# (~54 GiB), and full fine-tuning on one 141 GB H200 (~101 GiB: fp32 weights, gradients, AdamW and
# autocast's bf16 copies are 84 GiB of it). The 8-GPU recipe; an RL iteration takes ~8x as long.
CONFIGS["5b_lora_1gpu"] = CONFIGS["5b_lora"] | dict(
    out_dir="runs/5b_lora_1gpu", n_gpus=1, gpu_mem_gb=80.0,
)
CONFIGS["5b_1gpu"] = CONFIGS["5b"] | dict(
    out_dir="runs/5b_1gpu", n_gpus=1, gpu_mem_gb=141.0,
)


PRESETS_HELP = {
    "tiny": "CPU smoke run (~1 min on 2 cores): every stage on the 3 domains, a tiny size",
    "demo": "CPU demonstration (~46 min on 2 cores): SFT then RL on the 3 domains, results table",
    "5b": "Wan2.2-TI2V-5B, all DiT weights under FSDP2 (torchrun on GPUs); needs --ckpt_dir",
    "5b_lora": "the 5b preset with LoRA r32 on q,k,v,o and KL beta 0.004 (FSDP, 8 GPUs)",
    "5b_lora_1gpu": "5b_lora on one 80 GB GPU, no FSDP (~54 GiB by the dry run)",
    "5b_1gpu": "5b full fine-tuning on one 141 GB GPU (H200), no FSDP (~101 GiB)",
}


class ConfigError(ValueError):
    """A configuration mistake: the command line ends with one line and exit status 2."""


def closest(word, choices):
    """' (did you mean X?)' for the closest of `choices` to `word`, or ''."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not match:
        return ""
    return match[0]


def config_fields_help():
    """Every TrainConfig field as 'name (type, default): its comment', grouped as in the source."""
    defaults = {f.name: f for f in dataclasses.fields(TrainConfig)}
    lines, last = [], None
    for raw in inspect.getsource(TrainConfig).splitlines()[1:]:
        code, _, comment = raw.partition("#")
        code, comment = code.strip(), comment.strip()
        name = code.split(":")[0].strip() if ":" in code else ""
        if name in defaults:
            f = defaults[name]
            lines.append(f"  --{name}=<{f.type if isinstance(f.type, str) else f.type.__name__}>"
                         f"  (default {f.default!r})  {comment}".rstrip())
            last = len(lines) - 1
        elif comment and not code and last is not None and raw.startswith(" " * 8):
            lines[last] += " " + comment                                    # a continued comment
        elif comment and not code:
            lines.append(f" {comment}:")                                     # a group heading
            last = None
    return "\n".join(lines)


def usage(program, summary):
    """The --help text: what the program does, the presets, every config field."""
    presets = "\n".join(f"  --config {name:8s} {PRESETS_HELP.get(name, '')}" for name in CONFIGS)
    return (f"usage: python {program} [--config NAME] [--key=value ...]\n\n{summary}\n\n"
            f"presets:\n{presets}\n\nconfig fields (--key=value, --key value, or a bare --flag "
            f"for a bool):\n{config_fields_help()}")


def wants_help(argv):
    """True if the command line asks for the usage (-h or --help anywhere)."""
    return any(a in ("-h", "--help") for a in argv)


def config_exit(program, error):
    """End the program as command-line tools do on a usage error: one line, exit status 2."""
    print(f"{program}: error: {error}", file=sys.stderr)
    raise SystemExit(2)


def parse_args(argv):
    """--key=value / --key value / --flag -> [(key, value or None)] in order."""
    pairs, args = [], list(argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: use --key=value (--help for the keys)")
        key, eq, val = arg[2:].partition("=")
        if not eq:                                        # --key value, or a bare --flag
            if args and not args[0].startswith("--"):
                val = args.pop(0)
            else:
                val = None
        pairs.append((key, val))
    return pairs


def parse_value(key, val, old):
    """The value of --key=val typed like the field's default `old`."""
    if val is None:
        if not isinstance(old, bool):
            raise ConfigError(f"--{key} needs a value (--{key}=...)")
        return True
    if isinstance(old, str):
        return val
    try:
        new = literal_eval(val)
    except (ValueError, SyntaxError):
        raise ConfigError(f"--{key}={val}: not a valid {type(old).__name__}") from None
    if isinstance(old, float) and type(new) is int:
        new = float(new)
    if type(new) is not type(old):
        raise ConfigError(f"--{key}={val}: expected {type(old).__name__}, got "
                          f"{type(new).__name__}")
    return new


def get_config(argv, base=None):
    """A TrainConfig from a preset (or `base`) and command-line overrides.

    --config NAME picks a preset (or `base`, a saved config dict, e.g. a checkpoint's), then
    --key=value / --key value / --flag override single fields, type-checked against the defaults
    (like nanoGPT's configurator, without exec).
    """
    pairs = parse_args(argv)
    preset = dict(pairs).get("config") or "tiny"
    if base is not None:
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        cfg = TrainConfig(**{k: v for k, v in base.items() if k in known})
    elif preset in CONFIGS:
        cfg = TrainConfig(config=preset, **CONFIGS[preset])
    else:
        near = closest(preset, CONFIGS)
        hint = f"did you mean --config {near}? " if near else ""
        raise ConfigError(f"unknown config {preset!r}; {hint}presets: {', '.join(CONFIGS)}")
    fields = [f.name for f in dataclasses.fields(cfg)]
    for key, val in pairs:
        if key == "config":
            continue
        if key not in fields:
            near = closest(key, fields)
            hint = f"did you mean --{near}?" if near else "--help lists the keys"
            raise ConfigError(f"unknown config key --{key}; {hint}")
        setattr(cfg, key, parse_value(key, val, getattr(cfg, key)))
    return cfg


def check_config(cfg, world):
    """Errors for settings that cannot work, before anything expensive happens."""
    bad = [d for d in domains(cfg) if d not in puzzles.DOMAINS]
    if bad:
        raise ConfigError(f"--domains: unknown {bad}; choose from {puzzles.DOMAINS}")
    if cfg.frames % 4 != 1 or cfg.height % 32 or cfg.width % 32:
        raise ConfigError(f"video {cfg.frames}x{cfg.height}x{cfg.width}: frames must be 4k+1 and "
                         "height/width multiples of 32 (VAE stride 4x16x16 times the DiT patch "
                         "1x2x2)")
    if cfg.frames < reward.MIN_FRAMES:
        raise ConfigError(f"--frames={cfg.frames}: the verifier needs at least "
                          f"reward.MIN_FRAMES = {reward.MIN_FRAMES} frames (frame 0, the motion, "
                          "the held end state)")
    window_end = cfg.sde_start + cfg.sde_steps
    if not 0 <= cfg.sde_start <= window_end <= cfg.num_steps - 1:
        raise ConfigError(f"SDE window [{cfg.sde_start}, {window_end}) must lie in "
                         f"[0, {cfg.num_steps - 1}): the last of the {cfg.num_steps} steps stays "
                         "a deterministic ODE step, or its noise stays in the video (Flow-GRPO "
                         "trains int(0.99 N) of N steps); full-step GRPO is "
                         f"--sde_steps={cfg.num_steps - 1}")
    if cfg.rl_steps and cfg.sde_steps == 0:
        raise ConfigError("--sde_steps=0 leaves RL nothing to train: K must be >= 1")
    if cfg.puzzles_per_step % cfg.groups_per_update:
        raise ConfigError(f"puzzles_per_step {cfg.puzzles_per_step} must be a multiple of "
                         f"groups_per_update {cfg.groups_per_update}")
    if cfg.sft_steps and cfg.sft_batch % world:
        raise ConfigError(f"sft_batch {cfg.sft_batch} must be a multiple of the {world} ranks")
    rl_videos = cfg.puzzles_per_step * cfg.group_size
    if cfg.rl_steps and rl_videos % world:
        raise ConfigError(f"P x G = {rl_videos} videos must split evenly over {world} ranks")
    if cfg.reward not in ("dense", "sparse"):
        raise ConfigError(f"--reward={cfg.reward}: dense or sparse")
    if cfg.reward_weights not in reward.REWARD_WEIGHTS:
        raise ConfigError(f"--reward_weights={cfg.reward_weights}: choose from "
                          f"{', '.join(reward.REWARD_WEIGHTS)}")
    if cfg.vae_weights and not cfg.ckpt_dir and not (ROOT / cfg.vae_weights).is_file():
        raise ConfigError(f"--vae_weights={cfg.vae_weights}: no such file under {ROOT}; "
                          f"regenerate it with python tests/scripts/make_tiny_vae.py, or pass "
                          "--vae_weights= to warm the VAE up instead")
    if cfg.model not in M.DIT_CONFIGS:
        raise ConfigError(f"--model={cfg.model}: presets {list(M.DIT_CONFIGS)}")


def domains(cfg):
    """The configured domains as a list."""
    return [d.strip() for d in cfg.domains.split(",") if d.strip()]


def latent_shape(cfg):
    """(C, F', H', W') of the configured video."""
    return M.latent_shape(cfg.frames, cfg.height, cfg.width, M.VAE_CONFIGS[cfg.model].z_dim)


def make_puzzles(cfg, split, start, n):
    """Puzzles start .. start+n-1 of a split in the configured domains and level."""
    return puzzles.make_batch(domains(cfg), cfg.level, split, start, n)


# =============================================================================
# the method
# =============================================================================

@dataclass
class Run:
    """The state every stage function threads through: the config, the models, where they run."""
    cfg: TrainConfig
    dit: nn.Module              # the policy (trained; FSDP-sharded under torchrun)
    ref: nn.Module              # KL reference: dit itself (adapters off) or a frozen copy
    vae: nn.Module              # frozen Wan2.2 VAE (the tiny one warmed up in stage 0)
    text: M.TextEncoder         # frozen umT5 with its prompt cache
    device: torch.device
    rank: int = 0
    world: int = 1
    latent_cache: dict = dataclasses.field(default_factory=dict)   # SFT: GT latents by layout
    sft_set: list = dataclasses.field(default_factory=list)        # SFT: the sft_pool puzzles


def encode_videos(run, batch):
    """Render and VAE-encode the puzzles' ground-truth videos: (B, C, F', h, w).

    Through the run's latent cache (up to cfg.latent_cache videos, keyed by layout).
    """
    cfg = run.cfg
    return E.encode_puzzles(run.vae, batch, cfg.frames, cfg.height, cfg.width, cfg.micro_batch,
                            run.device, cache=run.latent_cache, cache_size=cfg.latent_cache)


def encode_images(run, batch):
    """VAE-encode the puzzles' images (frame 0 alone, no cache): (B, C, 1, h, w)."""
    cfg = run.cfg
    return E.encode_puzzles(run.vae, batch, 1, cfg.height, cfg.width, cfg.micro_batch, run.device)


# -----------------------------------------------------------------------------
# stage 0: the tiny VAE warm-up (a stand-in for Wan2.2's pretrained VAE)

def vae_loss(vae, x):
    """The warm-up's reconstruction loss of a video batch x (B, 3, F, H, W); see warmup_vae."""
    w = 1 + 5 * (x.amax(1, keepdim=True) - x.amin(1, keepdim=True)) / 2     # (B, 1, F, H, W)
    w[:, :, :1] *= 2
    y = vae.decode(vae.encode(x, chunk=None), clamp=False, chunk=None)      # (B, 3, F, H, W)

    def pool(t):                                                            # 8x8 px means
        return nn.functional.avg_pool3d(t, (1, 8, 8), stride=(1, 4, 4))

    pixel = (w * (y - x).square()).sum() / w.sum()
    colour = (pool(w) * (pool(y) - pool(x)).square()).sum() / pool(w).sum()
    return pixel + 4 * colour


def train_vae(cfg, vae, device, after_step=None):
    """The warm-up's optimisation loop; returns the final loss.

    after_step(step, loss), if given, runs after each step (tests/scripts/make_tiny_vae.py prints
    the round trip along the way; it draws no random numbers, so the result does not change).
    """
    torch.manual_seed(cfg.seed)
    vae.set_latent_stats([0.0] * vae.cfg.z_dim, [1.0] * vae.cfg.z_dim)     # raw latents to train
    vae.train().requires_grad_(True)
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.vae_lr)
    bar = tqdm(range(cfg.vae_steps), desc="stage 0: VAE warm-up", disable=not is_master(),
               dynamic_ncols=True)
    for step in bar:
        for group in opt.param_groups:                                      # warm-up, linear decay
            group["lr"] = cfg.vae_lr * min(1.0, (step + 1) / 20) * (1 - step / cfg.vae_steps)
        first = 10_000_000 + step * cfg.vae_batch                           # its own train seeds
        batch = make_puzzles(cfg, "train", first, cfg.vae_batch)
        videos = [M.to_pixels(puzzles.render(p, cfg.height, cfg.width, cfg.frames)) for p in batch]
        loss = vae_loss(vae, torch.stack(videos).to(device))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if after_step is not None:
            after_step(step, loss.item())
    vae.eval().requires_grad_(False)
    return loss.item()


def warmup_vae(cfg, vae, device, after_step=None):
    """Stage 0 (tiny only): train the randomly initialised VAE as an autoencoder on puzzle videos.

    Rendered videos of the run's domains, level and size: the stand-in for Wan2.2's pretrained VAE.
    Cached under cache_dir, keyed by everything that affects it, so later runs and tests reuse it.

        loss = sum w (y - x)^2 / sum w + 4 sum w' (pool(y) - pool(x))^2 / sum w',
        y = decode(encode(x)),   w = (1 + 5 s) * (2 on frame 0),   pool = 8x8 px means (stride 4),
        w' = pool(w)
    s = the pixel's saturation (max - min channel, in [0, 1]): agent, goal, trail, pipes and boxes
    are saturated, floor and walls grey; a plain MSE is dominated by the grey areas and blurs the
    sprites away. Frame 0 is the conditioning image, encoded alone. The pooled term asks for each
    region's mean colour, which is what the verifier reads: without it the agent on the green goal
    decoded as a brown that is neither (GT test mazes still verifying after a round trip: 0% / 5%
    for seeds 0 / 1; 77% with it). Full clips at the run's frame count: a VAE trained on shorter
    clips broke on longer ones. Adam, 20 warm-up steps, linear decay. Then the per-channel mean and
    std of the encoder output become the latent normalization (as Wan2.2 ships its 48 measured
    values): the DiT sees unit-scale latents.
    """
    key = json.dumps(dict(vae=dataclasses.asdict(vae.cfg), domains=domains(cfg), level=cfg.level,
                          size=(cfg.frames, cfg.height, cfg.width), steps=cfg.vae_steps,
                          batch=cfg.vae_batch, lr=cfg.vae_lr, seed=cfg.seed, version=3),
                     sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = ROOT / cfg.cache_dir / f"vae_{digest}.safetensors"
    if not path.exists() and is_master():
        t0 = time.time()
        final_loss = train_vae(cfg, vae, device, after_step)
        with torch.no_grad():                                               # measured latent stats
            sample = make_puzzles(cfg, "train", 20_000_000, 32)
            raw = E.encode_puzzles(vae, sample, cfg.frames, cfg.height, cfg.width, cfg.micro_batch,
                                   device)                                 # stats still 0 / 1
            mean = raw.mean(dim=(0, 2, 3, 4))
            std = raw.std(dim=(0, 2, 3, 4)).clamp_min(1e-3)
        vae.set_latent_stats(mean.tolist(), std.tolist())
        path.parent.mkdir(parents=True, exist_ok=True)
        M.save_vae(vae, path, metadata={"key": key})
        print0(f"stage 0: VAE warm-up {cfg.vae_steps} steps in {time.time() - t0:.0f}s, final "
               f"loss {final_loss:.5f}; cached at {path}")
    if dist.is_initialized():
        dist.barrier()
    M.load_vae(vae, path)
    vae.eval().requires_grad_(False).to(device)
    return path


def prepare_vae(cfg, vae, device):
    """Stage 0 of a run without pretrained weights: the shipped tiny VAE, or the warm-up.

    Then the round-trip check: how many ground-truth test videos of each domain still verify
    after an encode-decode round trip (the VAE caps what any DiT can reach), printed and written
    to out_dir/vae_check.json.
    """
    if cfg.vae_weights:
        M.load_vae(vae, ROOT / cfg.vae_weights)
        vae.eval().requires_grad_(False).to(device)
        print0(f"stage 0: the trained tiny VAE {cfg.vae_weights} (made by "
               "tests/scripts/make_tiny_vae.py)")
    elif cfg.vae_steps:
        path = warmup_vae(cfg, vae, device)
        print0(f"stage 0: the warmed-up tiny VAE {path}")
    else:
        print0("warning: the VAE is randomly initialised (vae_steps=0, no vae_weights, no "
               "ckpt_dir): videos will be noise")
        return
    if cfg.vae_check and is_master():
        passed = vae_round_trip(cfg, vae, device, cfg.vae_check)
        cells = [f"{d} {ok}/{cfg.vae_check}" for d, ok in passed.items()]
        print0("stage 0: ground-truth test videos that still verify after a VAE round trip: "
               + ", ".join(cells))
        payload = json.dumps(dict(n=cfg.vae_check, passed=passed))
        M.atomic_write(Path(cfg.out_dir) / "vae_check.json", lambda tmp: tmp.write_text(payload))


def vae_round_trip(cfg, vae, device, n):
    """{domain: how many of its first n test puzzles' GT videos verify after encode + decode}."""
    passed = {}
    with torch.no_grad():
        for domain in domains(cfg):
            test = puzzles.make_batch([domain], cfg.level, "test", 0, n)
            z = E.encode_puzzles(vae, test, cfg.frames, cfg.height, cfg.width, cfg.micro_batch,
                                 device)                                    # (n, C, F', h, w)
            videos = M.decode_videos(vae, z, cfg.frames)
            passed[domain] = sum(reward.score(p, v).success for p, v in zip(test, videos))
    return passed


# -----------------------------------------------------------------------------
# stage 1: SFT with the flow-matching loss

def sft_slice(noised, lo, n):
    """Rows lo .. lo+n-1 of an sde.SFTBatch (the frame mask is shared)."""
    rows = slice(lo, lo + n)
    return sde.SFTBatch(noised.x_t[rows], noised.target[rows], noised.t[rows], noised.mask,
                        noised.sigma[rows], noised.weight[rows])


def sft_puzzles(run, start, n):
    """SFT's puzzles start .. start+n-1: fresh train-split puzzles, or with sft_pool a fixed set.

    The fixed set is train puzzles 0 .. sft_pool - 1, cycled (index mod sft_pool), generated once
    into run.sft_set; with latent_cache >= sft_pool each video is also VAE-encoded once.
    """
    cfg = run.cfg
    if not cfg.sft_pool:
        return make_puzzles(cfg, "train", start, n)
    if not run.sft_set:
        run.sft_set.extend(make_puzzles(cfg, "train", 0, cfg.sft_pool))
    return [run.sft_set[(start + i) % cfg.sft_pool] for i in range(n)]


def sft_step(run, step, opt):
    """One optimizer step on sft_batch ground-truth videos (sft_batch / world per rank).

    Rendered from fresh train-split puzzles and VAE-encoded on the fly:
        x_sigma = (1 - sigma) x0 + sigma eps on latent frames 1.. (frame 0 clean, timestep 0),
        loss = w(sigma) * mean (v_theta(x_sigma) - (eps - x0))^2 over frames 1..   (sde.sft_loss)
    (DiffSynth-Studio diffsynth/diffusion/loss.py @0e6976a, FlowMatchSFTLoss). Micro-batches of
    micro_batch videos; backward() sums their gradients, so each loss is weighted by its share of
    the rank's videos. Returns the log row (the loss averaged over ranks); a non-finite loss or
    gradient skips the update.
    """
    cfg, dit = run.cfg, run.dit
    per_rank = cfg.sft_batch // run.world
    batch = sft_puzzles(run, step * cfg.sft_batch + run.rank * per_rank, per_rank)
    x0 = encode_videos(run, batch)                                          # (b, C, F', h, w)
    context = run.text.encode([p.prompt for p in batch])
    # One noise draw for the global batch, identical on every rank (generator key 0: the global
    # batch); this rank keeps its rows, so a video's noise does not depend on the number of ranks.
    first = run.rank * per_rank
    full = x0.new_zeros((cfg.sft_batch, *x0.shape[1:]))                   # (B, C, F', h, w)
    full[first:first + per_rank] = x0
    g = sde.generator(run.device, cfg.seed, "sft", step, 0)
    noised = sde.sft_noising(full, generator=g, shift=cfg.sft_shift, patch_size=dit.cfg.patch_size)
    noised = sft_slice(noised, first, per_rank)
    total = 0.0
    for lo in range(0, per_rank, cfg.micro_batch):
        part = sft_slice(noised, lo, cfg.micro_batch)
        with M.autocast(run.device):
            v = dit(part.x_t, part.t, context[lo:lo + cfg.micro_batch])
        share = part.x_t.shape[0] / per_rank
        loss = sde.sft_loss(v, part) * share
        loss.backward()
        total += loss.item()
    grad_norm = clip_gradients(run)
    ok = finite_everywhere(grad_norm, [total])
    if ok:
        opt.step()
    opt.zero_grad(set_to_none=True)
    mean_loss = float(np.mean(all_gather_list([total])))
    return dict(stage="sft", loss=mean_loss, grad_norm=grad_norm, lr=opt.param_groups[0]["lr"],
                nonfinite=not ok)


# -----------------------------------------------------------------------------
# stage 2: RL, Early-Step-Focus SDE-GRPO — the rollout

class Rollout(NamedTuple):
    """This rank's share of one RL iteration's P x G rollouts."""
    puzzles: list               # the P puzzles of the iteration (the same on every rank)
    mine: list                  # global video indices j on this rank (video j shows puzzle j // G)
    traj: sde.Trajectory        # the stored SDE steps, rows in `mine` order
    videos: np.ndarray          # (len(mine), F, H, W, 3) uint8
    scores: list                # reward.Score per video
    timing: dict                # seconds: rollout, decode, reward


class ScoreRow(NamedTuple):
    """One video's reward, gathered over ranks and sorted by index."""
    index: int                  # global video index j
    signal: float               # what RL trains on: the dense reward, or success (--reward=sparse)
    reward: float               # the dense reward (logged either way)
    success: bool


def concat_trajectories(parts):
    """One sde.Trajectory from per-micro-batch ones (same steps; batch fields concatenated)."""
    fields = []
    for name in sde.Trajectory._fields:
        if name in ("latents", "next_latents", "log_probs"):
            fields.append(torch.cat([getattr(t, name) for t in parts]))
        else:
            fields.append(getattr(parts[0], name))
    return sde.Trajectory(*fields)


def rl_rollout(run, step):
    """Sample, decode and score this rank's share of the P x G rollouts of RL iteration `step`.

    The P puzzles (fresh train-split instances) are the same on every rank; global video j of P*G
    belongs to puzzle j // G and runs on rank j mod world, so a group is spread over the ranks
    (flow_grpo's DistributedKRepeatSampler, scripts/train_wan2_1.py) and its advantage needs the
    gathered rewards. Each video: pure noise, frame 0 = the puzzle image's latent, SDE on steps
    [sde_start, sde_start + K) with the latents and log-probs stored, ODE elsewhere (sde.sample);
    then VAE decode and reward.score.
    """
    cfg, G = run.cfg, run.cfg.group_size
    P = cfg.puzzles_per_step
    batch = make_puzzles(cfg, "train", 30_000_000 + step * P, P)           # RL's own train seeds
    image = encode_images(run, batch)                                       # (P, C, 1, h, w)
    context = run.text.encode([p.prompt for p in batch])
    mine = list(range(run.rank, P * G, run.world))
    of_puzzle = [j // G for j in mine]
    g = sde.generator(run.device, cfg.seed, "rl", step, run.rank)
    lat = latent_shape(cfg)

    def noise_for(rows):                                                    # (b, C, F', h, w)
        return torch.randn((len(rows), *lat), generator=g, device=run.device)

    timing = {}
    gen = E.generate_videos(
        run.dit, run.vae, image[of_puzzle], [context[k] for k in of_puzzle], noise_for,
        text=run.text, frames=cfg.frames, micro_batch=cfg.micro_batch, device=run.device,
        guidance=cfg.cfg_scale, generator=g, timing=timing,
        num_steps=cfg.num_steps, shift=cfg.shift, sde_start=cfg.sde_start, sde_steps=cfg.sde_steps,
        noise_level=cfg.noise_level, sde_type=cfg.sde_type)
    t0 = time.time()
    scores = [reward.score(batch[k], v, weights=cfg.reward_weights)
              for k, v in zip(of_puzzle, gen.videos)]
    timing["reward"] = time.time() - t0
    return Rollout(batch, mine, concat_trajectories(gen.trajectories), gen.videos, scores, timing)


def score_rows(cfg, rollout):
    """All ranks' ScoreRows in global order (P*G of them)."""
    rows = []
    for j, s in zip(rollout.mine, rollout.scores):
        if cfg.reward == "dense":
            signal = s.reward
        else:
            signal = float(s.success)
        rows.append(ScoreRow(j, signal, s.reward, s.success))
    return sorted(all_gather_list(rows))


# -----------------------------------------------------------------------------
# stage 2: the GRPO update on the stored steps

def update_calls(kept, mine, rank, world, micro_batch, K):
    """FSDP bookkeeping of one update: this rank's forward/backward calls and their loss weights.

    kept: the global indices of the update's videos with non-zero advantage (every rank knows
    them all); video j's trajectory is stored on rank j mod world, row mine.index(j) there.
    Returns [(rows, weight)]: each call's rows of this rank's trajectory and the weight its
    per-step loss is multiplied by. FSDP averages gradients over ranks and backward() sums over
    calls, so weight = (videos in the call) * world / (kept videos * K): the gradient is that of
    the mean loss over the update's kept videos and their K stored steps. Every rank makes the
    same number of calls (FSDP's collectives need all ranks): a rank with fewer kept trajectories
    pads with calls on row 0 at weight 0.
    """
    held = [[j for j in kept if j % world == r] for r in range(world)]
    my_rows = [mine.index(j) for j in held[rank]]
    n_calls = max(math.ceil(len(h) / micro_batch) for h in held)
    calls = []
    for c in range(n_calls):
        rows = my_rows[c * micro_batch:(c + 1) * micro_batch]
        if rows:
            calls.append((rows, len(rows) * world / (len(kept) * K)))
        else:
            calls.append(([0], 0.0))                                        # join the collectives
    return calls


def policy_velocity(run, model, x, t, context):
    """v for the policy update: the rollout's guidance, under the run's autocast."""
    cfg = run.cfg
    neg = E.negative_context(run.text, x.shape[0], cfg.cfg_scale)
    with M.autocast(run.device):
        return sde.velocity(model, x, t, context, cfg_scale=cfg.cfg_scale, neg_context=neg,
                            patch_size=run.dit.cfg.patch_size)


@torch.no_grad()
def reference_mean(run, x, x_next, traj, k, context, mask):
    """Mean of the reference policy's step from the same x (for the KL).

    The reference is dit itself with its LoRA adapters switched off (flow_grpo
    scripts/train_wan2_1.py: `disable_adapter()`), or a frozen copy of the initial DiT.
    """
    lora_off = run.ref is run.dit
    if lora_off:
        set_lora(run.dit, False)
    try:
        v = policy_velocity(run, run.ref, x, traj.timesteps[k], context)
    finally:
        if lora_off:
            set_lora(run.dit, True)
    cfg = run.cfg
    _, _, mean, _ = sde.sde_step(x, v, traj.sigmas[k], traj.sigmas_next[k], cfg.noise_level,
                                 sde_type=cfg.sde_type, x_next=x_next, mask=mask)
    return mean


def rl_update(run, rollout, adv, opt):
    """Policy update(s) on the stored SDE steps, groups_per_update groups per optimizer step.

    For each update, each call of update_calls (this rank's kept trajectories) and each stored
    step k: recompute v_theta on (x_k, t_k) with grad, the log-probability of the stored x_{k+1}
    under the policy's Gaussian step (sde.sde_step), the clipped loss (+ beta KL to the
    reference), backward; then one optimizer step (flow_grpo scripts/train_wan2_1.py @74db691).
    Returns a list of stat dicts, one per update ({"skipped": True} where nothing was kept).
    """
    cfg, traj, G = run.cfg, rollout.traj, run.cfg.group_size
    K = traj.latents.shape[1]
    mask = sde.frame_mask(traj.latents.shape[3], device=run.device)
    per_update = cfg.groups_per_update * G
    out = []
    for lo in range(0, cfg.puzzles_per_step * G, per_update):
        kept = [j for j in range(lo, lo + per_update) if adv[j] != 0]
        if not kept:
            out.append(dict(skipped=True))
            continue
        stats = []
        calls = update_calls(kept, rollout.mine, run.rank, run.world, cfg.micro_batch, K)
        for rows, weight in calls:
            a = torch.tensor([adv[rollout.mine[i]] for i in rows], device=run.device)
            context = run.text.encode([rollout.puzzles[rollout.mine[i] // G].prompt for i in rows])
            for k in range(K):
                x, x_next = traj.latents[rows, k], traj.next_latents[rows, k]
                v = policy_velocity(run, run.dit, x, traj.timesteps[k], context)
                _, log_prob, mean, std = sde.sde_step(x, v, traj.sigmas[k], traj.sigmas_next[k],
                                                      cfg.noise_level, sde_type=cfg.sde_type,
                                                      x_next=x_next, mask=mask)
                mean_ref = None
                if cfg.beta > 0:
                    mean_ref = reference_mean(run, x, x_next, traj, k, context, mask)
                loss, st = grpo.policy_loss(log_prob, traj.log_probs[rows, k], a, cfg.clip_range,
                                            beta=cfg.beta, mean=mean, mean_ref=mean_ref, std=std,
                                            mask=mask)
                (loss * weight).backward()
                if weight > 0:
                    row = {name: value.item() for name, value in st.items()}
                    stats.append(row | {"loss": loss.item()})
        grad_norm = clip_gradients(run)
        out.append(dict(grad_norm=grad_norm, stats=stats))
        if finite_everywhere(grad_norm, [s["loss"] for s in stats]):
            opt.step()
        else:
            out[-1]["nonfinite"] = True
        opt.zero_grad(set_to_none=True)
    return out


# -----------------------------------------------------------------------------
# stage 2: one RL iteration

def rl_step(run, step, opt):
    """One RL iteration: rollout -> decode -> reward -> gathered group advantages -> update(s).

    Returns the log row (global numbers: rewards and stats are gathered over ranks).
    """
    cfg = run.cfg
    rollout = rl_rollout(run, step)
    rows = score_rows(cfg, rollout)                                        # P*G, global order
    signal = torch.tensor([r.signal for r in rows], dtype=torch.float64)
    adv, zero_std = grpo.group_advantages(signal, cfg.group_size, global_std=cfg.global_std,
                                          adv_clip_max=cfg.adv_clip_max)
    t0 = time.time()
    updates = rl_update(run, rollout, adv.tolist(), opt)
    rollout.timing["update"] = time.time() - t0
    log = rl_log(cfg, rollout, rows, zero_std, updates, opt.param_groups[0]["lr"])
    log |= {f"time_{k}": round(v, 3) for k, v in rollout.timing.items()}
    if cfg.gif_every and step % cfg.gif_every == 0 and is_master():
        save_rollout_gif(cfg, step, rollout)
    return log


def rl_log(cfg, rollout, rows, zero_std, updates, lr):
    """The RL iteration's log row: loss stats, gradient norm, rewards, success, per domain."""
    stats = [s for u in updates for s in all_gather_list(u.get("stats", []))]
    log = {"stage": "rl"}
    if stats:
        for key in ("loss", "policy_loss", "clipfrac", "approx_kl", "kl", "ratio_mean"):
            log[key] = float(np.mean([s[key] for s in stats]))
    norms = [u["grad_norm"] for u in updates if "grad_norm" in u]
    log["grad_norm"] = float(np.mean(norms)) if norms else 0.0
    log["nonfinite"] = any(u.get("nonfinite") for u in updates)
    dense = np.array([r.reward for r in rows])
    log["reward"] = float(dense.mean())
    log["reward_std"] = float(dense.std())
    log["success"] = float(np.mean([r.success for r in rows]))
    log["zero_std_ratio"] = float(zero_std.float().mean())
    log["lr"] = lr
    G = cfg.group_size
    for d in domains(cfg):                                                  # per domain (the mix)
        sel = [r for r in rows if rollout.puzzles[r.index // G].domain == d]
        if sel:
            log[f"reward_{d}"] = float(np.mean([r.reward for r in sel]))
            log[f"reward_std_{d}"] = float(np.std([r.reward for r in sel]))
            log[f"success_{d}"] = float(np.mean([r.success for r in sel]))
    return log


def save_rollout_gif(cfg, step, rollout):
    """Group 0's videos side by side with each verdict (as far as this rank holds them)."""
    group = [i for i, j in enumerate(rollout.mine) if j // cfg.group_size == 0]
    scores = [rollout.scores[i] for i in group]
    captions = [f"{'OK' if s.success else 'no'} r={s.reward:.2f}" for s in scores]
    path = Path(cfg.out_dir) / "gifs" / f"rl_{step:06d}.gif"
    path.parent.mkdir(parents=True, exist_ok=True)
    strip = puzzles.side_by_side(rollout.videos[group], captions, [s.success for s in scores])
    puzzles.save_gif(path, strip)


# =============================================================================
# the run: models and start point, then one stage loop for SFT and RL
# =============================================================================

TRAIN_SUMMARY = """Train a video model to solve puzzles: stage 0 (tiny VAE warm-up), stage 1 SFT,
stage 2 Early-Step-Focus GRPO, each followed by a held-out evaluation (eval_n puzzles). Writes
out_dir: checkpoints ckpt_<step>/, metrics.jsonl, curves.png, eval_<stage>.json, results.md, GIFs.
Examples: python train.py --config tiny (smoke run); python train.py --config demo;
python train.py --config 5b --dry_run; python train.py --config demo --resume (continue out_dir's
latest intact checkpoint)."""


def main(argv=None):
    """Stage 0 (tiny VAE) -> stage 1 SFT -> evaluation -> stage 2 RL -> evaluation -> table."""
    argv = sys.argv[1:] if argv is None else argv
    if wants_help(argv):
        print(usage("train.py", TRAIN_SUMMARY))
        return None
    try:
        cfg = get_config(argv)
    except ConfigError as e:
        config_exit("train.py", e)
    if cfg.dry_run:
        return dry_run(cfg)
    try:
        run, resume = start_run(cfg)
    except ConfigError as e:
        config_exit("train.py", e)
    except CheckpointError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    start = resume["step"] if resume else 0
    bad = resume["extra"].get("bad_steps", 0) if resume else 0
    results = {}
    stages = (("sft", 0, cfg.sft_steps), ("rl", cfg.sft_steps, cfg.sft_steps + cfg.rl_steps))
    for stage, first, last in stages:
        if last <= first:
            continue
        done = last
        if start < last:
            done, bad = run_stage(run, stage, max(first, start), first, last, resume, bad)
        if done == last and cfg.eval_n:
            results[stage] = evaluate_stage(run, stage)
        if is_master():
            write_curves(cfg, results)
        if done < last or done == cfg.stop_after:
            break
    if results and is_master():
        names = {"sft": "SFT", "rl": "SFT + RL (VideoRLVR)"}
        E.report({names[k]: v for k, v in results.items()}, Path(cfg.out_dir))
    if dist.is_initialized():
        dist.destroy_process_group()
    return results


def run_stage(run, stage, start, first, last, resume, bad):
    """Steps start .. last-1 of a stage that spans global steps [first, last).

    The one loop of SFT and RL: optimizer (restored when resuming inside this stage), learning
    rate, the step, the log line, the NaN guard (3 non-finite steps in a row stop the run),
    checkpoints (every save_every steps, at the stage end, at stop_after). Returns (the global
    step count done, the current count of non-finite steps in a row).
    """
    cfg = run.cfg
    opt = make_optimizer(cfg, run.dit, stage)
    if resume is not None and resume["step"] == start and resume["optimizer"] is not None \
            and resume["extra"].get("stage") == stage:
        load_optimizer(run.dit, opt, resume["optimizer"])
    step_fn = sft_step if stage == "sft" else rl_step
    desc = "stage 1: SFT" if stage == "sft" else "stage 2: RL"
    bar = tqdm(range(start, last), initial=start - first, total=last - first, desc=desc,
               disable=not is_master(), dynamic_ncols=True)
    done = start
    for s in bar:
        stage_step = s - first
        for group in opt.param_groups:
            group["lr"] = get_lr(cfg, stage, stage_step)
        t0 = time.time()
        log = {"step": s, "stage_step": stage_step} | step_fn(run, stage_step, opt)
        log["seconds"] = round(time.time() - t0, 3)
        bad = nan_guard(cfg, s, log, bad)
        if is_master():
            write_log(cfg, stage, stage_step, log, bar)
        done = s + 1
        if done == last or done % cfg.save_every == 0 or done == cfg.stop_after:
            keep = {n for n in (cfg.sft_steps, cfg.sft_steps + cfg.rl_steps) if n > 0}
            save_checkpoint(run, done, opt, dict(stage=stage, bad_steps=bad), keep=keep)
        if done == cfg.stop_after:
            print0(f"stopping after step {done} (--stop_after); continue with --resume")
            break
    bar.close()
    return done, bad


def get_lr(cfg, stage, step):
    """The learning rate of a stage's step.

    SFT: linear warm-up over 5% of the steps, then cosine to 10%. RL: constant, no warm-up
    (flow_grpo config/grpo.py Wan config; DanceGRPO scripts/finetune/finetune_wan_2_1_grpo.sh,
    lr_warmup_steps 0).
    """
    if stage == "rl":
        return cfg.lr
    warm = max(1, cfg.sft_steps // 20)
    if step < warm:
        return cfg.sft_lr * (step + 1) / warm
    frac = (step - warm) / max(1, cfg.sft_steps - warm)
    return cfg.sft_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def make_optimizer(cfg, dit, stage):
    """AdamW (0.9, 0.999), eps 1e-8, weight decay on the trained parameters only.

    As flow_grpo config/base.py and DanceGRPO (--weight_decay 0.0001).
    """
    params = [p for p in dit.parameters() if p.requires_grad]
    lr = cfg.sft_lr if stage == "sft" else cfg.lr
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8,
                             weight_decay=cfg.weight_decay)


def nan_guard(cfg, step, log, bad):
    """Count non-finite steps in a row (their update was skipped); stop at 3. Returns the count."""
    if not log["nonfinite"]:
        return 0
    bad += 1
    print0(f"warning: step {step}: non-finite loss or gradient, update skipped ({bad} in a row)")
    if bad >= 3:
        raise RuntimeError(f"step {step}: the loss or gradient was NaN/inf for {bad} consecutive "
                           f"steps; stopping. Lower the learning rate (sft_lr={cfg.sft_lr}, "
                           f"lr={cfg.lr}) or check the inputs.")
    return bad


LOG_KEYS = ("loss", "reward", "reward_std", "success", "zero_std_ratio", "clipfrac", "approx_kl",
            "grad_norm", "lr")


def write_log(cfg, stage, stage_step, log, bar):
    """Rank 0: append the row to metrics.jsonl, print the log line, update the progress bar."""
    with open(Path(cfg.out_dir) / "metrics.jsonl", "a") as f:
        f.write(json.dumps(log) + "\n")
    cells = [f"{k} {log[k]:.4g}" for k in LOG_KEYS if k in log]
    if stage == "rl" and "loss" not in log:
        cells.append(SKIPPED)
    times = [f"{k[5:]} {v:.2f}s" for k, v in log.items() if k.startswith("time_")]
    tqdm.write(f"{stage} {stage_step:5d} | " + " | ".join(cells + times))
    if "loss" in log:
        bar.set_postfix(stage=stage, loss=f"{log['loss']:.4f}")
    else:
        bar.set_postfix_str(f"stage={stage}, {SKIPPED}")


SKIPPED = "skipped: all groups zero-std"     # an RL iteration whose groups all had equal rewards


def evaluate_stage(run, name):
    """The held-out evaluation after a stage, written to out_dir/eval_{name}.json once.

    A resumed run does not evaluate the same stage twice.
    """
    cfg = run.cfg
    path = Path(cfg.out_dir) / f"eval_{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    gif_dir = Path(cfg.out_dir) / "gifs" / f"eval_{name}"
    res = E.evaluate_config(cfg, run.dit, run.vae, run.text, run.device, gif_dir=gif_dir)
    if is_master():
        payload = json.dumps(res, indent=1)
        M.atomic_write(path, lambda tmp: tmp.write_text(payload))
    return res


def start_run(cfg):
    """Processes, output folder, models, and the start point: -> (Run, resume state or None)."""
    rank, world, device = setup_distributed(cfg)
    check_config(cfg, world)
    out = Path(cfg.out_dir)
    if is_master():
        out.mkdir(parents=True, exist_ok=True)
    print0("config: " + " ".join(f"{k}={v}" for k, v in dataclasses.asdict(cfg).items()))
    print_derived(cfg, world, device)
    torch.manual_seed(cfg.seed + rank)     # global RNG; the method's own draws use sde.generator
    dit, vae, text = build_models(cfg, device)
    resume, resume_from, start = None, None, None
    if cfg.resume:
        resume_from = resume_checkpoint(out)
        resume = load_state(resume_from / "state.pt")
        print0(f"resuming {resume_from} at step {resume['step']}")
        if is_master():
            truncate_metrics(out / "metrics.jsonl", resume["step"])
    if cfg.ckpt:                  # the start weights, also on resume (a LoRA checkpoint: adapters)
        start = resolve_checkpoint(cfg.ckpt)
        check_checkpoint(start)
        print0(f"initialising from {start}")
    sources = [c for c in (start, resume_from) if c is not None]
    has_vae = any((c / "vae.safetensors").exists() for c in sources)
    if not cfg.ckpt_dir and not has_vae:
        prepare_vae(cfg, vae, device)
    if start:                                     # --ckpt from a LoRA run: merged into the base
        load_weights(start, dit, vae, text)
    ref = dit
    if cfg.beta > 0 and not cfg.lora_rank:        # full fine-tuning: the reference is a frozen copy
        ref = copy.deepcopy(dit).requires_grad_(False).eval()      # of the start weights
    if cfg.lora_rank:
        add_lora(dit, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
    if resume_from:                               # the trained weights (or adapters) on top
        load_weights(resume_from, dit, vae, text)
    channels_last(vae)
    dit.gradient_checkpointing = cfg.grad_checkpointing
    models = [dit] if ref is dit else [dit, ref]
    for m in models:
        m.to(device)
        if world > 1:
            shard_model(m, device)
    n_trained = count_parameters(dit, trained=True)
    print0(f"DiT {count_parameters(dit):,} parameters, {n_trained:,} trained")
    return Run(cfg, dit, ref, vae, text, device, rank, world, {}), resume


def print_derived(cfg, world, device):
    """Print what the config implies: latent shape, tokens, videos per step and per rank."""
    lat = latent_shape(cfg)
    tokens = M.tokens_per_video(lat, M.DIT_CONFIGS[cfg.model].patch_size)
    rl_videos = cfg.puzzles_per_step * cfg.group_size
    print0(f"derived: latent (C, F, H, W) = {lat}, {tokens} tokens per video; "
           f"SFT {cfg.sft_batch} videos per step ({cfg.sft_batch // world} per rank); "
           f"RL {cfg.puzzles_per_step} puzzles x {cfg.group_size} = {rl_videos} videos per step "
           f"({rl_videos // world} per rank), "
           f"{cfg.puzzles_per_step // cfg.groups_per_update} optimizer step(s) per RL iteration, "
           f"SDE + backprop on steps [{cfg.sde_start}, {cfg.sde_start + cfg.sde_steps}) of "
           f"{cfg.num_steps}; {world} rank(s) on {device}")


def build_models(cfg, device):
    """-> (dit, vae, text) with text = model.TextEncoder (umT5 + tokenizer + prompt cache).

    With ckpt_dir: the released weights (either layout, model.load_pretrained). Without: a random
    init from cfg.seed, identical on every rank (tiny; its VAE is then warmed up by `warmup_vae`).
    """
    if cfg.ckpt_dir:
        dit, vae, text = M.load_pretrained(cfg.ckpt_dir, dtype=torch.float32, device="cpu")
    else:
        torch.manual_seed(cfg.seed)
        dit = M.WanModel(M.DIT_CONFIGS[cfg.model])
        vae = M.WanVAE(M.VAE_CONFIGS[cfg.model])
        text = M.TextEncoder(M.T5Encoder(M.T5_CONFIGS[cfg.model]).eval(), dit.cfg.text_len)
    vae.requires_grad_(False).eval().to(device)
    text.model.requires_grad_(False).to(device)
    return dit, vae, text


def channels_last(vae):
    """channels_last_3d weights for the VAE's 3-D convolutions on CPU (same math, ~2x faster).

    oneDNN runs the small-channel convolutions faster in that layout (activations follow): tiny
    decode 70 -> 36 ms per 17-frame 128x128 video.
    """
    if next(vae.parameters()).device.type == "cpu":
        for m in vae.modules():
            if isinstance(m, nn.Conv3d):
                m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last_3d)
    return vae


def count_parameters(module, trained=False, lora=False):
    """Number of parameters of a module: all, only trained ones, or only LoRA adapters."""
    total = 0
    for name, p in module.named_parameters():
        if trained and not p.requires_grad:
            continue
        if lora and ".lora_" not in name:
            continue
        total += p.numel()
    return total


# =============================================================================
# plumbing below this line: distributed, LoRA, checkpoints, --dry_run
# =============================================================================

# -----------------------------------------------------------------------------
# distributed: `python train.py` = one process; `torchrun --nproc_per_node=N train.py` = FSDP2

def setup_distributed(cfg):
    """-> (rank, world, device). torchrun sets RANK; NCCL on GPUs, gloo on CPU (the CI test)."""
    want = cfg.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if "RANK" not in os.environ:
        return 0, 1, torch.device(want)
    dist.init_process_group("nccl" if want == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cpu")
    if want == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    return rank, world, device


def is_master():
    """True on rank 0 (or without torch.distributed): the one process that prints and saves."""
    return not dist.is_initialized() or dist.get_rank() == 0


def print0(*args, **kw):
    """Print on rank 0 alone (through tqdm, so progress bars stay intact)."""
    if is_master():
        tqdm.write(" ".join(str(a) for a in args), **kw)


all_gather_list = E.all_gather_list


def clip_gradients(run):
    """Clip the trained parameters' gradient norm to grad_clip; returns the norm before clipping."""
    params = [p for p in run.dit.parameters() if p.requires_grad]
    return float(torch.nn.utils.clip_grad_norm_(params, run.cfg.grad_clip))


def finite_everywhere(grad_norm, losses):
    """True if the gradient norm and every loss are finite on all ranks.

    One all_reduce, so all ranks take the same branch and FSDP stays in step.
    """
    finite = math.isfinite(float(grad_norm)) and all(math.isfinite(x) for x in losses)
    ok = torch.tensor([float(finite)])
    if dist.is_initialized():
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def shard_model(dit, device):
    """FSDP2: one fully_shard unit per DiT block, then the root.

    As Wan-Video/Wan2.2 wan/distributed/fsdp.py wraps blocks; bf16 compute with fp32 gradient
    reduction on GPU. The VAE and text encoder stay unsharded and frozen: they are not trained and
    are small next to the DiT.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mp = MixedPrecisionPolicy()
    if device.type == "cuda":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in dit.blocks:
        fully_shard(block, mp_policy=mp)
    fully_shard(dit, mp_policy=mp)


# -----------------------------------------------------------------------------
# LoRA: low-rank adapters on chosen nn.Linear layers of the DiT blocks, official names kept

def _lora_hook(layer, inputs, out):
    """Forward hook: y = W x + b + (alpha / r) B A x, skipped while the adapter is off."""
    if not layer.lora_on:
        return out
    x = inputs[0].to(layer.lora_A.dtype)
    delta = x @ layer.lora_A.t() @ layer.lora_B.t()
    return out + delta.to(out.dtype) * layer.lora_scale


def add_lora(dit, rank, alpha, targets):
    """Freeze the DiT, then add adapters to every nn.Linear in dit.blocks named in `targets`.

    A layer matches when its name ends with one of `targets` (q,k,v,o = self- and cross-attention;
    ffn.0,ffn.2 = the MLP). It gets A (r, in) Kaiming-uniform and B (out, r) = 0, so training starts
    from the base model (LoRA, Hu et al. 2021, arXiv 2106.09685). The parameters live on the Linear
    itself (`blocks.3.self_attn.q.lora_A`): the base keys keep their official names and still load
    with strict=True; the adapter alone is the `.lora_` keys. Returns the number of adapted layers.
    """
    dit.requires_grad_(False)
    names = [t.strip() for t in targets.split(",") if t.strip()]
    n = 0
    for name, layer in dit.blocks.named_modules():
        if not isinstance(layer, nn.Linear):
            continue
        if not any(name == t or name.endswith("." + t) for t in names):
            continue
        dev = layer.weight.device
        layer.lora_A = nn.Parameter(torch.empty(rank, layer.in_features, device=dev))
        layer.lora_B = nn.Parameter(torch.zeros(layer.out_features, rank, device=dev))
        if dev.type != "meta":
            nn.init.kaiming_uniform_(layer.lora_A, a=math.sqrt(5))
        layer.lora_scale = alpha / rank
        layer.lora_on = True
        layer.register_forward_hook(_lora_hook)
        n += 1
    if n == 0:
        raise ValueError(f"--lora_targets={targets}: no nn.Linear inside the DiT blocks has such "
                         "a name")
    return n


def set_lora(dit, on):
    """Switch every adapter on or off; off = the base model = the RL reference policy."""
    for m in dit.modules():
        if hasattr(m, "lora_on"):
            m.lora_on = on


def merge_lora(state_dict, scale):
    """Fold adapters into a full state dict for export: W <- W + scale B A, lora keys dropped.

    The result has exactly the official key set.
    """
    sd = {k: v for k, v in state_dict.items() if ".lora_" not in k}
    for k, a in state_dict.items():
        if not k.endswith(".lora_A"):
            continue
        base = k[: -len(".lora_A")]
        b = state_dict[base + ".lora_B"]
        w = sd[base + ".weight"]
        sd[base + ".weight"] = (w.float() + scale * (b.float() @ a.float())).to(w.dtype)
    return sd


# -----------------------------------------------------------------------------
# training curves: metrics.jsonl and the held-out results drawn as one PNG with Pillow

CURVES_SIZE = (1200, 800)           # (width, height) of curves.png: 3 x 2 panels of 400 x 400


def curve_panels(rows, results):
    """The panels of curves.png: (title, [(label, colour, [(x, y)])]) from metrics rows."""
    sft = [r for r in rows if r["stage"] == "sft" and "loss" in r]
    rl = [r for r in rows if r["stage"] == "rl"]

    def series(sel, key):
        return [(r["stage_step"], r[key]) for r in sel if key in r and math.isfinite(r[key])]

    reward_hi = [(r["stage_step"], r["reward"] + r["reward_std"]) for r in rl]
    reward_lo = [(r["stage_step"], r["reward"] - r["reward_std"]) for r in rl]
    held_out = [(i, res["overall"]["success"]) for i, res in enumerate(results.values())]
    return [
        ("SFT loss (per step)", [("loss", (31, 119, 180), series(sft, "loss"))]),
        ("RL mean reward +- std", [("mean", (214, 39, 40), series(rl, "reward")),
                                   ("+std", (240, 160, 160), reward_hi),
                                   ("-std", (240, 160, 160), reward_lo)]),
        ("RL success rate of rollouts", [("success", (44, 160, 44), series(rl, "success"))]),
        ("RL zero-std group ratio", [("zero-std", (148, 103, 189), series(rl, "zero_std_ratio"))]),
        ("RL clip fraction", [("clipfrac", (140, 86, 75), series(rl, "clipfrac"))]),
        ("held-out success after each stage", [("SR", (23, 190, 207), held_out)]),
    ]


def draw_panel(draw, box, title, lines, names=None):
    """One panel: frame, title, y range labels, a polyline (or dots) per series."""
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(180, 180, 180))
    draw.text((x0 + 8, y0 + 6), title, fill=(0, 0, 0))
    points = [p for _, _, pts in lines for p in pts]
    left, top, right, bottom = x0 + 50, y0 + 28, x1 - 12, y1 - 30
    draw.rectangle((left, top, right, bottom), outline=(90, 90, 90))
    if not points:
        draw.text((left + 10, top + 10), "no data", fill=(120, 120, 120))
        return
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    xmin, xmax = min(xs), max(xs)
    ymin, ymax = min(ys), max(ys)
    if ymax - ymin < 1e-12:
        ymin, ymax = ymin - 0.5, ymax + 0.5
    if xmax == xmin:
        xmin, xmax = xmin - 0.5, xmax + 0.5

    def at(x, y):
        px = left + (x - xmin) / (xmax - xmin) * (right - left)
        py = bottom - (y - ymin) / (ymax - ymin) * (bottom - top)
        return px, py

    draw.text((x0 + 4, top - 4), f"{ymax:.3g}", fill=(60, 60, 60))
    draw.text((x0 + 4, bottom - 8), f"{ymin:.3g}", fill=(60, 60, 60))
    draw.text((left, bottom + 6), f"{xmin:g}", fill=(60, 60, 60))
    draw.text((right - 30, bottom + 6), f"{xmax:g}", fill=(60, 60, 60))
    for _, colour, pts in lines:
        xy = [at(x, y) for x, y in pts]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        for px, py in xy:
            draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=colour)
    if names:
        for i, name in enumerate(names):
            px, _ = at(i, ymin)
            draw.text((px - 10, bottom + 16), name, fill=(60, 60, 60))


def write_curves(cfg, results):
    """Draw out_dir/curves.png from metrics.jsonl and the held-out results so far (rank 0).

    Six panels: SFT loss; RL mean reward with +-1 std, success rate of the rollouts, zero-std group
    ratio and clip fraction per iteration; held-out success after each evaluated stage.
    """
    path = Path(cfg.out_dir) / "metrics.jsonl"
    rows = []
    if path.exists():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line]
    image = Image.new("RGB", CURVES_SIZE, "white")
    draw = ImageDraw.Draw(image)
    width, height = CURVES_SIZE[0] // 3, CURVES_SIZE[1] // 2
    names = {"sft": "SFT", "rl": "RL"}
    for i, (title, lines) in enumerate(curve_panels(rows, results)):
        x, y = (i % 3) * width, (i // 3) * height
        stage_names = [names[k] for k in results] if i == 5 else None
        draw_panel(draw, (x + 4, y + 4, x + width - 4, y + height - 4), title, lines, stage_names)
    target = Path(cfg.out_dir) / "curves.png"
    M.atomic_write(target, lambda tmp: image.save(tmp, format="PNG"))
    return target


# -----------------------------------------------------------------------------
# checkpoints: written into a temporary folder, renamed into place when complete, then `latest`
# is replaced; a run killed at any moment leaves the previous checkpoint intact.

def rng_state():
    """This process's RNG states as tensors and plain values (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, mt, gauss_next = random.getstate()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return dict(torch=torch.get_rng_state(), cuda=cuda,
                numpy=dict(name=name, keys=torch.from_numpy(keys.astype(np.int64)), pos=int(pos),
                           has_gauss=int(has_gauss), gauss=float(gauss)),
                python=dict(version=version, state=list(mt), gauss_next=gauss_next))


def save_checkpoint(run, step, opt, extra, keep=()):
    """Write out_dir/ckpt_{step:06d}/ and point `latest` at it; all ranks must call.

    dit.safetensors (official key names) or lora.safetensors (adapters only), vae.safetensors +
    t5.safetensors when they are ours (tiny), state.pt (optimizer, step, RNG states of every rank,
    extra; tensors and plain data only), config.json. FSDP state dicts are gathered on every rank.
    Keeps the last two checkpoints and the stage ends in `keep`.
    """
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)
    cfg = run.cfg
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    sd = get_model_state_dict(run.dit, options=opts)
    osd = None                          # an optimizer that has not stepped yet is saved as None
    if opt is not None and opt.state:
        osd = get_optimizer_state_dict(run.dit, opt, options=opts)
    rngs = all_gather_list([rng_state()])
    if is_master():
        out = Path(cfg.out_dir)
        final, tmp = out / f"ckpt_{step:06d}", out / f".ckpt_{step:06d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if cfg.lora_rank:
            adapters = {k: v.contiguous() for k, v in sd.items() if ".lora_" in k}
            save_file(adapters, str(tmp / "lora.safetensors"))
        else:
            save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp / "dit.safetensors"))
        if not cfg.ckpt_dir:            # our own VAE / text encoder: the checkpoint stands alone
            M.save_vae(run.vae, tmp / "vae.safetensors")
            t5 = {k: v.detach().cpu().contiguous() for k, v in run.text.model.state_dict().items()}
            save_file(t5, str(tmp / "t5.safetensors"))
        torch.save(dict(optimizer=osd, step=step, rng=rngs, extra=extra), tmp / "state.pt")
        (tmp / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        M.atomic_write(out / "latest", lambda t: t.write_text(final.name))
        prune_checkpoints(out, keep)
    if dist.is_initialized():
        dist.barrier()


def prune_checkpoints(out, keep):
    """Delete all checkpoints but the last two and the stage ends (`keep`: their step numbers)."""
    ckpts = sorted(p for p in out.glob("ckpt_*") if p.is_dir())
    for p in ckpts[:-2]:
        if int(p.name.split("_")[1]) not in keep:
            shutil.rmtree(p)


def load_state(path):
    """state.pt of a checkpoint, with weights_only=True: tensors and plain data, never code.

    A state.pt that carries pickled Python objects (a shared checkpoint folder could run code on
    the machine that resumes it) is refused with a ValueError.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[0]
        raise ValueError(f"{path}: refused to load: it holds pickled Python objects, not only "
                         f"tensors and plain data (a state.pt of this version never does); "
                         f"{reason}") from None


def load_optimizer(dit, opt, state):
    """Load a full (gathered) optimizer state dict into opt, FSDP-aware."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    set_optimizer_state_dict(dit, opt, state, options=StateDictOptions(full_state_dict=True))


def truncate_metrics(path, step):
    """Drop the metrics rows a killed run wrote after its checkpoint (step >= `step`)."""
    if not path.exists():
        return
    rows = [r for r in path.read_text().splitlines() if r and json.loads(r)["step"] < step]
    M.atomic_write(path, lambda tmp: tmp.write_text("".join(r + "\n" for r in rows)))


def resolve_checkpoint(path):
    """A ckpt_* folder, or a run folder (-> the checkpoint its `latest` file names)."""
    path = Path(path)
    if (path / "latest").exists():
        path = path / (path / "latest").read_text().strip()
    if not (path / "state.pt").exists() or not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: not a checkpoint of ours (expected a ckpt_* folder with "
                                f"state.pt and config.json, or a run folder with a 'latest' file)")
    return path


class CheckpointError(RuntimeError):
    """A damaged checkpoint file (truncated copy, full disk): the message names the file."""


def check_safetensors(path):
    """Raise CheckpointError if `path` is not a complete .safetensors file (header and data)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is truncated: {size} bytes, not even a header")
        n = int.from_bytes(head, "little")
        if 8 + n > size:
            raise CheckpointError(f"{path} is truncated: its header needs {8 + n:,} bytes, the "
                                  f"file has {size:,}")
        try:
            meta = json.loads(f.read(n))
        except ValueError:
            raise CheckpointError(f"{path} is damaged: its header is not valid JSON") from None
    ends = [v["data_offsets"][1] for k, v in meta.items() if k != "__metadata__"]
    expected = 8 + n + max(ends, default=0)
    if size != expected:
        raise CheckpointError(f"{path} is truncated or damaged: {size:,} bytes, its header "
                              f"describes {expected:,} (a partial copy or a full disk?)")


def check_checkpoint(ckpt):
    """Raise CheckpointError naming the first damaged file of a checkpoint folder.

    Cheap: the safetensors headers and the zip directory of state.pt are read, not the weights.
    """
    for path in sorted(ckpt.glob("*.safetensors")):
        check_safetensors(path)
    if not zipfile.is_zipfile(ckpt / "state.pt"):
        raise CheckpointError(f"{ckpt / 'state.pt'} is truncated or damaged: not a complete "
                              f"torch.save archive")


def resume_checkpoint(out):
    """The checkpoint --resume continues from: out's latest, or the newest intact earlier one.

    A damaged latest checkpoint (its files are checked, see check_checkpoint) is named in a printed
    warning and the run falls back to the newest earlier checkpoint whose files are complete.
    """
    latest = resolve_checkpoint(out)
    try:
        check_checkpoint(latest)
        return latest
    except CheckpointError as e:
        damage = e
    earlier = sorted((p for p in Path(out).glob("ckpt_*") if p.is_dir() and p.name < latest.name),
                     reverse=True)
    for ckpt in earlier:
        try:
            check_checkpoint(ckpt)
        except CheckpointError:
            continue
        print0(f"warning: {damage}; resuming from the intact earlier checkpoint {ckpt} instead")
        return ckpt
    raise CheckpointError(f"{damage}; and {out} holds no intact earlier checkpoint to resume from")


def load_lora(ckpt, dit):
    """Load a checkpoint's lora.safetensors into the DiT.

    Onto a model that has adapters (strict on their keys: resuming a LoRA run), or merged into one
    that has none (a LoRA run as the start of another, or evaluated).
    """
    path = ckpt / "lora.safetensors"
    lora = load_file(str(path))
    own = {k for k in dit.state_dict() if ".lora_" in k}
    if own:                                                         # resume a LoRA run
        differ = own ^ set(lora)
        if differ:
            raise KeyError(f"{path}: adapter keys differ from this model's: {sorted(differ)[:5]}")
        dit.load_state_dict(lora, strict=False)
        return
    saved = json.loads((ckpt / "config.json").read_text())             # start from it: merge it in
    merged = merge_lora(dit.state_dict() | lora, saved["lora_alpha"] / saved["lora_rank"])
    dit.load_state_dict(merged, strict=True)


def load_weights(ckpt, dit, vae, text):
    """Load a checkpoint folder's weights into the models.

    The DiT (full, or LoRA adapters: see load_lora), and the VAE (with its latent statistics) and
    the text encoder when present.
    """
    if (ckpt / "dit.safetensors").exists():
        dit.load_state_dict(load_file(str(ckpt / "dit.safetensors")), strict=True)
    if (ckpt / "lora.safetensors").exists():
        load_lora(ckpt, dit)
    if (ckpt / "vae.safetensors").exists():
        M.load_vae(vae, ckpt / "vae.safetensors")
    if (ckpt / "t5.safetensors").exists():
        text.model.load_state_dict(load_file(str(ckpt / "t5.safetensors")), strict=True)
        text.cache.clear()


# -----------------------------------------------------------------------------
# --dry_run: what a configuration costs at full scale, from the real modules on the meta device

def count_flops(fn):
    """FLOPs of one call of fn, counted by torch.utils.flop_counter (works on meta tensors)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


class _FlashAttentionSaves(torch.autograd.Function):
    """Attention as a fused kernel saves it, for counting on meta tensors only.

    A fused attention kernel (FlashAttention on a GPU, torch's flash kernel on CPU) keeps q, k, v,
    the output and a float32 log-sum-exp per query for backward. The meta device falls back to the
    math attention, which would store the (S, S) probabilities.
    """

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)                                           # (B, N, S, D)
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
        return out


def saved_block_bytes(dcfg, tokens, grid):
    """Bytes one DiT block keeps for backward per video.

    bf16 weights (FSDP's gathered dtype), counted on the meta device with saved-tensor hooks:
    distinct storages, not parameters, not the inputs every block shares (the per-token modulation
    e0, the text, RoPE tables).
    """
    from unittest import mock
    with torch.device("meta"):
        block = M.WanAttentionBlock(dcfg).to(torch.bfloat16)
        x = torch.empty(1, tokens, dcfg.dim, requires_grad=True)           # (1, S, C) fp32 stream
        e0 = torch.empty(1, tokens, 6, dcfg.dim, requires_grad=True)       # (1, S, 6, C) fp32
        ctx = torch.empty(1, dcfg.text_len, dcfg.dim, dtype=torch.bfloat16, requires_grad=True)
    cos, sin = M.rope_cos_sin(grid, dcfg.dim // dcfg.num_heads, tokens, torch.device("meta"))
    shared = {t.untyped_storage()._cdata for t in (*block.parameters(), e0, ctx, cos, sin)}
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        if st._cdata not in shared:
            seen[st._cdata] = st.nbytes()
        return t

    def flash(q, k, v, attn_mask=None):
        return _FlashAttentionSaves.apply(q, k, v)
    with mock.patch.object(nn.functional, "scaled_dot_product_attention", flash), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x, e0, ctx, cos, sin, None)
    return sum(seen.values())


# The 5B VAE decoder streams 4 video frames per latent frame, so its working set grows with the
# frame area, not the clip length: 22,900 bytes per pixel of one video (fp32), measured on 5-frame
# clips at 128x128 and 192x192 and extrapolated to 480x480 (5.3 GB; tests/scripts/bench_memory.py,
# README "The memory model, measured"). decode_videos decodes 4 videos per call.
VAE_DECODE_BYTES_PER_PIXEL = 22900


def memory_model(cfg, n_gpus):
    """Bytes per GPU of an RL run of cfg on n_gpus, by component (printed by --dry_run).

    weights      fp32 trained weights and frozen ones (the LoRA base, or the reference copy for
                 beta > 0), sharded by FSDP; + the bf16 copies compute uses: under FSDP two gathered
                 blocks (one prefetched), on one GPU autocast's cache of every trained weight's bf16
                 cast (kept for the forward's duration)
    gradients    fp32, sharded;   optimizer: AdamW's two fp32 moments, sharded
    activations  micro_batch videos x (checkpointing: every block's fp32 input + one block
                 recomputed and backpropagated; else every block's saved tensors + one block's
                 backward), counted on the meta device (saved_block_bytes), + the per-token
                 modulation every block shares and its gradient
    trajectories the stored SDE-step latents of this GPU's rollouts, fp32
    vae          fp32 weights;   vae_decode: the working set of 4 videos (decode_videos' batch)
    text         the umT5 encoder in bf16: build_models keeps it on the device
    Peak = everything persistent + the larger of (activations + gradients) and the decode, which
    happen at different times.
    """
    dcfg, vcfg = M.DIT_CONFIGS[cfg.model], M.VAE_CONFIGS[cfg.model]
    with torch.device("meta"):
        dit, vae, t5 = M.WanModel(dcfg), M.WanVAE(vcfg), M.T5Encoder(M.T5_CONFIGS[cfg.model])
    n_dit = count_parameters(dit)
    block = count_parameters(dit.blocks[0])
    n_train = n_dit
    if cfg.lora_rank:
        add_lora(dit, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
        n_train = count_parameters(dit, lora=True)
    frozen = n_dit if cfg.lora_rank or cfg.beta > 0 else 0
    lat = latent_shape(cfg)                                                 # (C, F', H', W')
    pt, ph, pw = dcfg.patch_size
    grid = (lat[1] // pt, lat[2] // ph, lat[3] // pw)                       # RoPE's (F, H, W) grid
    tokens = M.tokens_per_video(lat, dcfg.patch_size)
    compute_copies = 2 * 2 * block if n_gpus > 1 else 2 * n_train
    weights = (n_train + frozen) * 4 / n_gpus + compute_copies
    saved = saved_block_bytes(dcfg, tokens, grid)
    if n_gpus == 1 and cfg.lora_rank:
        saved += 2 * block          # autocast's bf16 casts of frozen weights, kept for backward
    x_bytes = tokens * dcfg.dim * 4                 # a block's input: the fp32 residual stream
    # the backward of one block: what it saved + its bf16 weight gradients (measured: 1.01x of this
    # at 5B, saved tensors being freed as the gradients appear; bench_memory.py)
    block_peak = saved + 2 * block
    shared = 2 * tokens * 6 * dcfg.dim * 4          # e0 (1, S, 6, C) fp32 and its gradient
    if cfg.grad_checkpointing:
        per_video = dcfg.num_layers * x_bytes + block_peak + shared
    else:
        per_video = (dcfg.num_layers - 1) * saved + block_peak + shared
    pixels = cfg.height * cfg.width
    # one video's decode: the streamed working set + its fp32 output, twice (the chunks, then
    # their concatenation)
    decode_one = VAE_DECODE_BYTES_PER_PIXEL * pixels + 2 * 3 * cfg.frames * pixels * 4
    videos = cfg.puzzles_per_step * cfg.group_size / n_gpus
    mem = dict(weights=weights, gradients=n_train * 4 / n_gpus, optimizer=n_train * 8 / n_gpus,
               activations=cfg.micro_batch * per_video,
               trajectories=videos * cfg.sde_steps * 2 * math.prod(lat) * 4,
               vae=count_parameters(vae) * 4,
               vae_decode=min(4, math.ceil(videos)) * decode_one,
               text=count_parameters(t5) * 2)
    persistent = sum(mem[k] for k in ("weights", "optimizer", "trajectories", "vae", "text"))
    mem["total"] = persistent + max(mem["activations"] + mem["gradients"], mem["vae_decode"])
    mem["per_block"] = dict(saved=saved, peak=block_peak, saved_ckpt=x_bytes,
                            peak_ckpt=x_bytes + block_peak,
                            vae_decode_one=VAE_DECODE_BYTES_PER_PIXEL * pixels)
    return mem


def print_memory(cfg, mem):
    """The memory_model breakdown as one line per GPU, and whether it fits cfg.gpu_mem_gb."""
    GiB = 1024 ** 3
    where = f"FSDP over {cfg.n_gpus} GPUs" if cfg.n_gpus > 1 else "one GPU, no FSDP"
    keys = ("weights", "gradients", "optimizer", "activations", "trajectories", "vae", "vae_decode",
            "text")
    parts = ", ".join(f"{k} {mem[k] / GiB:.1f}" for k in keys)
    verdict = "fits" if mem["total"] <= cfg.gpu_mem_gb * 1e9 * 0.95 else "does NOT fit"
    print(f"memory per GPU ({where}; micro-batch {cfg.micro_batch}, checkpointing "
          f"{'on' if cfg.grad_checkpointing else 'off'}), GiB: {parts}; "
          f"peak ~{mem['total'] / GiB:.0f} GiB: {verdict} a {cfg.gpu_mem_gb:.0f} GB GPU "
          f"(95% usable)")


def dry_run(cfg):
    """What a configuration costs at full scale, without weights.

    Parameter counts, tokens per video, FLOPs per RL iteration (rollout vs update, counted by
    torch.utils.flop_counter on meta tensors), time per iteration at the assumed utilization,
    per-GPU memory under FSDP, and the same for full-step training (K = N): what Early-Step Focus
    saves.
    """
    dcfg = M.DIT_CONFIGS[cfg.model]
    with torch.device("meta"):
        dit = M.WanModel(dcfg)
        vae = M.WanVAE(M.VAE_CONFIGS[cfg.model])
        t5 = M.T5Encoder(M.T5_CONFIGS[cfg.model])
    n_dit = count_parameters(dit)
    n_train = n_dit
    if cfg.lora_rank:
        add_lora(dit, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
        n_train = count_parameters(dit, lora=True)
    lat = (1, *latent_shape(cfg))                                           # (1, C, F', H', W')
    tokens = M.tokens_per_video(lat[1:], dcfg.patch_size)
    with torch.device("meta"):
        x, t = torch.empty(lat), torch.zeros(1, tokens)
        ctx = [torch.empty(dcfg.text_len, dcfg.text_dim)]
        f_dit = count_flops(lambda: dit(x, t, ctx))                         # one forward, one video
        f_dec = count_flops(lambda: vae.decode(torch.empty(lat)))
        f_img = count_flops(lambda: vae.encode(torch.empty(1, 3, 1, cfg.height, cfg.width)))
    n_cfg = 2 if cfg.cfg_scale != 1 else 1
    videos = cfg.puzzles_per_step * cfg.group_size
    # backward = 2 forwards for full fine-tuning (input and weight gradients), ~1 with LoRA (no
    # weight gradient for frozen weights); + 1 forward with gradient checkpointing; + 1 no-grad
    # reference forward if beta > 0.
    backward = 1 if cfg.lora_rank else 2
    per_step_update = f_dit * n_cfg * (1 + backward + cfg.grad_checkpointing + (cfg.beta > 0))
    rollout = videos * (cfg.num_steps * n_cfg * f_dit + f_dec) + cfg.puzzles_per_step * f_img
    peak = cfg.n_gpus * cfg.gpu_tflops * 1e12 * cfg.mfu
    GB = 1024 ** 3
    mem = memory_model(cfg, cfg.n_gpus)
    lora_note = f" (LoRA r{cfg.lora_rank})" if cfg.lora_rank else ""
    print(f"config {cfg.config}: model {cfg.model}, {cfg.frames}x{cfg.height}x{cfg.width} video, "
          f"latent {tuple(lat[1:])}, {tokens:,} tokens per video")
    print(f"parameters: DiT {n_dit:,}, VAE {count_parameters(vae):,}, umT5 "
          f"{count_parameters(t5):,}; trained {n_train:,}{lora_note}")
    print(f"FLOPs: DiT forward {f_dit / 1e12:.2f} TFLOP per video, VAE decode {f_dec / 1e12:.2f} "
          f"TFLOP, image encode {f_img / 1e12:.3f} TFLOP")
    print(f"RL iteration: {cfg.puzzles_per_step} puzzles x {cfg.group_size} = {videos} videos, "
          f"N={cfg.num_steps}, {cfg.n_gpus} GPUs x {cfg.gpu_tflops:.0f} TFLOP/s at {cfg.mfu:.0%} "
          f"utilization")
    rows = []
    for name, k in (("Early-Step Focus", cfg.sde_steps), ("full-step", cfg.num_steps)):
        update = videos * k * per_step_update
        seconds = (rollout + update) / peak
        rows.append((name, k, rollout, update, seconds))
        print(f"  {name:17s} K={k:3d}: rollout {rollout / 1e15:8.1f} PFLOP, update "
              f"{update / 1e15:8.1f} PFLOP, {seconds:7.1f} s per iteration")
    print(f"  Early-Step Focus saves {1 - rows[0][4] / rows[1][4]:.0%} of the time per iteration "
          f"(paper: about 40% less training time)")
    print_memory(cfg, mem)
    return dict(tokens=tokens, n_dit=n_dit, n_train=n_train, f_dit=f_dit, f_dec=f_dec, rows=rows,
                mem_gb=mem["total"] / GB, memory=mem)


if __name__ == "__main__":
    main()
