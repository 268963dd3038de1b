"""Teach Wan2.2-TI2V-5B (or its tiny CPU stand-in) to solve puzzles: SFT, then Early-Step-Focus GRPO.

The recipe of VideoRLVR ("Video Models Can Reason with Verifiable Rewards", arXiv 2605.15458):
  stage 0  (tiny only) a short autoencoder warm-up of the randomly initialised tiny VAE on rendered
           puzzle videos: the stand-in for the real model's pretrained VAE, cached under .cache/.
  stage 1  SFT: the flow-matching loss on ground-truth solution videos (latent frame 0 = the puzzle
           image, clean, timestep 0), as DiffSynth-Studio trains Wan2.2-TI2V-5B.
  stage 2  RL: groups of G rollouts per puzzle with SDE noise and stored log-probabilities on the
           first K of N denoising steps only (Early-Step Focus), plain ODE after; VAE decode; the
           pixel verifiers of reward.py score each video; group-relative advantages; the clipped
           policy loss (+ KL to the reference policy) recomputed on the stored steps (grpo.py).
The method's facts and defaults, with sources: ../shared/spec/rl.md section 6 (copied into the
docstrings and comments below where they are used).

Run:
  python train.py --config tiny                       # CPU demo: VAE warm-up, SFT, RL, SFT-vs-RL table
  python train.py --config 5b_lora --ckpt_dir=Wan2.2-TI2V-5B          # one 80 GB GPU, LoRA
  torchrun --standalone --nproc_per_node=8 train.py --config 5b --ckpt_dir=Wan2.2-TI2V-5B  # FSDP2
  python train.py --config 5b --dry_run --n_gpus=8     # parameters, memory, FLOPs, time; no weights
  python train.py --config tiny --resume               # continue out_dir's latest checkpoint exactly
Any field of TrainConfig can be overridden with --key=value (or --key value; a bare --flag sets a
bool), unknown keys are an error.
"""
import copy
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from ast import literal_eval
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from safetensors.torch import load_file, save_file
from tqdm import tqdm

import grpo
import model as M
import puzzles
import reward
import sde

ROOT = Path(__file__).resolve().parent


# -----------------------------------------------------------------------------
# config: a dataclass of defaults, named presets, typed --key=value overrides

@dataclass
class TrainConfig:
    config: str = "tiny"           # the preset these values start from (--config NAME)
    # model and weights
    model: str = "tiny"            # preset name in model.py DIT_CONFIGS / VAE_CONFIGS / T5_CONFIGS
    ckpt_dir: str = ""             # official Wan2.2-TI2V-5B folder (native or -Diffusers); "" = random init
    ckpt: str = ""                 # a checkpoint of ours to start from / evaluate: ckpt_* folder, or a run folder (its latest)
    out_dir: str = "runs/tiny"     # everything a run writes: checkpoints, metrics.jsonl, GIFs, tables
    resume: bool = False           # continue out_dir's latest checkpoint (weights, optimizer, step, RNG)
    device: str = "auto"           # auto: cuda if available, else cpu
    seed: int = 0
    # puzzles and video geometry
    domains: str = "maze"          # comma-separated subset of maze,flowfree,sokoban, mixed round-robin
    level: str = "easy"            # puzzles.LEVELS difficulty per domain
    height: int = 128
    width: int = 128
    frames: int = 17               # 4k+1; latent frames = (frames - 1) / 4 + 1
    # stage 0: tiny VAE warm-up (only for a randomly initialised VAE; skipped with ckpt_dir)
    vae_steps: int = 0
    vae_batch: int = 4
    vae_lr: float = 2e-3
    # stage 1: SFT
    sft_steps: int = 0
    sft_batch: int = 8             # videos per optimizer step, across all ranks
    sft_lr: float = 1e-4
    sft_shift: float = 5.0         # shift of the SFT sigma sampling (sde.sft_noising)
    # stage 2: RL
    rl_steps: int = 0
    puzzles_per_step: int = 4      # P distinct puzzles per RL iteration, across all ranks
    group_size: int = 8            # G rollouts per puzzle (rl.md 6: DanceGRPO/Pref-GRPO use 8)
    groups_per_update: int = 4     # optimizer step after this many groups (P / this = updates per iteration)
    num_steps: int = 20            # N rollout denoising steps (rl.md 6: Flow-GRPO Wan, DanceGRPO Wan)
    sde_steps: int = 10            # K: SDE + backprop on steps [sde_start, sde_start + K) (rl.md 6: K = N/2)
    sde_start: int = 0             # Early-Step Focus: the window starts at the noisiest step
    noise_level: float = 0.7       # a in sigma_t = a sqrt(sigma / (1 - sigma)) (flow_grpo config/base.py)
    sde_type: str = "sde"          # sde (Flow-GRPO), cps, dance (sde.sde_step)
    shift: float = 5.0             # sigma shift of the rollout grid (Wan2.2 TI2V sample_shift)
    cfg_scale: float = 1.0         # classifier-free guidance in rollout and update (1 = off, rl.md 6 item 6)
    clip_range: float = 1e-3       # PPO ratio clip (flow_grpo Wan config with LoRA; 1e-4 for full FT)
    beta: float = 0.0              # KL weight to the reference policy (flow_grpo Wan: 0.004; 0 = no reference)
    adv_clip_max: float = 5.0      # advantages clipped to +-5 (flow_grpo config/base.py)
    global_std: bool = False       # std over the whole batch instead of per group (flow_grpo SD3 configs)
    lr: float = 1e-4               # RL learning rate (flow_grpo Wan LoRA: 1e-4, constant, no warm-up)
    weight_decay: float = 1e-4     # AdamW (0.9, 0.999), eps 1e-8 (flow_grpo config/base.py)
    grad_clip: float = 1.0
    reward: str = "dense"          # dense: reward.py's decomposed reward; sparse: success only (ablation)
    # LoRA (rank 0 = train all DiT weights)
    lora_rank: int = 0
    lora_alpha: float = 64.0
    lora_targets: str = "q,k,v,o"  # nn.Linear names inside the DiT blocks (self- and cross-attention)
    # systems
    grad_checkpointing: bool = False
    micro_batch: int = 8           # videos per DiT forward in rollouts and in the update
    latent_cache: int = 0          # SFT: keep up to this many encoded videos (repeated tiny layouts); 0 = off
    # evaluation (eval.py; the tiny run evaluates after SFT and after RL)
    eval_n: int = 0                # held-out test puzzles per evaluation (0 = none)
    eval_steps: int = 20           # ODE steps of the evaluation sampler
    eval_shift: float = 5.0
    eval_cfg: float = 1.0
    eval_unipc: bool = False       # Wan2.2's flow UniPC solver instead of Euler (deterministic either way)
    # logging and checkpoints
    save_every: int = 100          # steps between checkpoints (and one at the end of each stage)
    gif_every: int = 25            # RL steps between rollout-group GIFs (0 = never)
    stop_after: int = 0            # stop (after checkpointing) once this global step is done; 0 = run all
    cache_dir: str = ".cache"      # the tiny VAE warm-up cache (relative to this file)
    # --dry_run: estimates at full scale without weights
    dry_run: bool = False
    n_gpus: int = 8
    gpu_tflops: float = 989.0      # dense bf16 peak per GPU (H100 SXM)
    mfu: float = 0.35              # assumed model-FLOPs utilization
    gpu_mem_gb: float = 80.0       # GPU memory (decimal GB) the dry run checks its estimate against


CONFIGS = {  # each entry is a complete, runnable run; values override the TrainConfig defaults
    # CPU demo (2 cores, ~15 min): 3x3-room mazes at 16 px per cell (one VAE latent cell per maze cell),
    # 128x128, 17 frames = 5 latent frames, 80 DiT tokens. Stage 0 ~4 min (cached), SFT 1,200 x 16 videos
    # ~5 min, RL 24 iterations x 128 rollouts ~5 min (rollout shift 2: the K = 5 SDE steps reach sigma 0.5).
    # RL lr and batch were chosen on 512 validation mazes (train split, unseen), not on the test split.
    "tiny": dict(
        model="tiny", out_dir="runs/tiny", domains="maze", level="easy", height=128, width=128, frames=17,
        vae_steps=400, vae_batch=4, vae_lr=2e-3, sft_steps=1200, sft_batch=16, sft_lr=1e-3, latent_cache=4096,
        rl_steps=24, puzzles_per_step=16, group_size=8, groups_per_update=16, num_steps=10, sde_steps=5, shift=2.0,
        lr=5e-5, clip_range=1e-3, eval_n=256, eval_steps=10, micro_batch=32, save_every=200, gif_every=10),
    # Wan2.2-TI2V-5B, all DiT weights under FSDP2 (rl.md 6). SFT: ~5 epochs over the paper's 30,000
    # training videos (4,700 x 32; RL started from "SFT Epoch 5"), lr 1e-5 (DiffSynth TI2V full
    # fine-tuning). RL: 480x480x49 = 2,925 tokens per video, N = 20 (Flow-GRPO Wan), K = N/2 (Early-Step
    # Focus, inferred from the ~40% saving), G = 8, 4 puzzles x 8 = 32 videos per iteration, 2 optimizer
    # steps per iteration (flow_grpo README: grad_acc = batches / 2), clip 1e-4 and lr 1e-5 for full
    # fine-tuning (DanceGRPO, MixGRPO), shift 3 at <= 480p (Wan2.2 textimage2video.py), no CFG (flow_grpo
    # README: RL distils CFG), evaluation with the Wan default of 50 steps.
    "5b": dict(
        model="5b", out_dir="runs/5b", domains="maze,flowfree,sokoban", level="medium", height=480, width=480,
        frames=49, sft_steps=4700, sft_batch=32, sft_lr=1e-5, sft_shift=3.0, rl_steps=200, puzzles_per_step=4,
        group_size=8, groups_per_update=2, num_steps=20, sde_steps=10, shift=3.0, noise_level=0.7, clip_range=1e-4,
        beta=0.0, lr=1e-5, grad_checkpointing=True, micro_batch=1, eval_n=300, eval_steps=50, eval_shift=3.0,
        save_every=100),
    # the same with LoRA r32 / alpha 64 on q,k,v,o (flow_grpo Wan config; DiffSynth TI2V LoRA: lr 1e-4):
    # the reference policy is the adapter switched off, so beta = 0.004 costs one no-grad forward per step.
    "5b_lora": dict(
        model="5b", out_dir="runs/5b_lora", domains="maze,flowfree,sokoban", level="medium", height=480,
        width=480, frames=49, sft_steps=4700, sft_batch=32, sft_lr=1e-4, sft_shift=3.0, rl_steps=200,
        puzzles_per_step=4, group_size=8, groups_per_update=2, num_steps=20, sde_steps=10, shift=3.0,
        clip_range=1e-3, beta=0.004, lr=1e-4, lora_rank=32, lora_alpha=64.0, grad_checkpointing=True,
        micro_batch=1, eval_n=300, eval_steps=50, eval_shift=3.0, save_every=100),
}

# One GPU, no FSDP (README "Full scale on one GPU"; memory from --dry_run's memory_model, measured
# per block and for the VAE decoder by tests/scripts/bench_memory.py): LoRA on one 80 GB GPU
# (~54 GiB), and full fine-tuning on one 141 GB H200 (~101 GiB: fp32 weights, gradients, AdamW and
# autocast's bf16 copies are 84 GiB of it). The 8-GPU recipe; an RL iteration takes ~8x as long.
CONFIGS["5b_lora_1gpu"] = dict(CONFIGS["5b_lora"], out_dir="runs/5b_lora_1gpu", n_gpus=1,
                               gpu_mem_gb=80.0)
CONFIGS["5b_1gpu"] = dict(CONFIGS["5b"], out_dir="runs/5b_1gpu", n_gpus=1, gpu_mem_gb=141.0)

def get_config(argv, base=None):
    """--config NAME picks a preset (or `base`, a saved config dict, e.g. a checkpoint's), then
    --key=value / --key value / --flag override single fields, type-checked against the defaults
    (like nanoGPT's configurator, without exec)."""
    pairs, args = [], list(argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r}: use --key=value")
        key, eq, val = arg[2:].partition("=")
        if not eq:                                                    # --key value, or a bare --flag
            val = args.pop(0) if args and not args[0].startswith("--") else None
        pairs.append((key, val))
    preset = dict(pairs).get("config") or "tiny"
    if base is not None:
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        cfg = TrainConfig(**{k: v for k, v in base.items() if k in known})
    elif preset in CONFIGS:
        cfg = TrainConfig(config=preset, **CONFIGS[preset])
    else:
        raise ValueError(f"unknown config {preset!r}; presets: {', '.join(CONFIGS)}")
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    for key, val in pairs:
        if key == "config":
            continue
        if key not in fields:
            raise ValueError(f"unknown config key --{key}; known keys: {', '.join(fields)}")
        old = getattr(cfg, key)
        if val is None:
            if not isinstance(old, bool):
                raise ValueError(f"--{key} needs a value (--{key}=...)")
            new = True
        elif isinstance(old, str):
            new = val
        else:
            try:
                new = literal_eval(val)
            except (ValueError, SyntaxError):
                raise ValueError(f"--{key}={val}: not a valid {type(old).__name__}") from None
            if isinstance(old, float) and type(new) is int:
                new = float(new)
            if type(new) is not type(old):
                raise ValueError(f"--{key}={val}: expected {type(old).__name__}, got {type(new).__name__}")
        setattr(cfg, key, new)
    return cfg


def check_config(cfg, world):
    """Errors for settings that cannot work, before anything expensive happens."""
    bad = [d for d in domains(cfg) if d not in puzzles.DOMAINS]
    if bad:
        raise ValueError(f"--domains: unknown {bad}; choose from {puzzles.DOMAINS}")
    if cfg.frames % 4 != 1 or cfg.height % 32 or cfg.width % 32:
        raise ValueError(f"video {cfg.frames}x{cfg.height}x{cfg.width}: frames must be 4k+1 and height/width "
                         "multiples of 32 (VAE stride 4x16x16 times the DiT patch 1x2x2)")
    if not 0 <= cfg.sde_start <= cfg.sde_start + cfg.sde_steps <= cfg.num_steps:
        raise ValueError(f"SDE window [{cfg.sde_start}, {cfg.sde_start + cfg.sde_steps}) must lie in [0, {cfg.num_steps})")
    if cfg.rl_steps and cfg.sde_steps == 0:
        raise ValueError("--sde_steps=0 leaves RL nothing to train: K must be >= 1")
    if cfg.puzzles_per_step % cfg.groups_per_update:
        raise ValueError(f"puzzles_per_step {cfg.puzzles_per_step} must be a multiple of groups_per_update {cfg.groups_per_update}")
    if cfg.sft_steps and cfg.sft_batch % world:
        raise ValueError(f"sft_batch {cfg.sft_batch} must be a multiple of the {world} ranks")
    if cfg.reward not in ("dense", "sparse"):
        raise ValueError(f"--reward={cfg.reward}: dense or sparse")
    if cfg.model not in M.DIT_CONFIGS:
        raise ValueError(f"--model={cfg.model}: presets {list(M.DIT_CONFIGS)}")


def domains(cfg):
    return [d.strip() for d in cfg.domains.split(",") if d.strip()]


# -----------------------------------------------------------------------------
# distributed: `python train.py` = one process; `torchrun --nproc_per_node=N train.py` = FSDP2 over N

def setup_distributed(cfg):
    """-> (rank, world, device). torchrun sets RANK; NCCL on GPUs, gloo on CPU (the CI test)."""
    want = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if "RANK" not in os.environ:
        return 0, 1, torch.device(want)
    dist.init_process_group("nccl" if want == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if want == "cuda" else torch.device("cpu")
    if want == "cuda":
        torch.cuda.set_device(device)
    return rank, world, device


def is_master():
    return not dist.is_initialized() or dist.get_rank() == 0


def print0(*args, **kw):                # rank 0 alone prints (through tqdm, so bars stay intact)
    if is_master():
        tqdm.write(" ".join(str(a) for a in args), **kw)


def all_gather_list(values):
    """Concatenate a per-rank python list over ranks, in rank order (gather for rewards and scores)."""
    if not dist.is_initialized():
        return list(values)
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, list(values))
    return [v for part in out for v in part]


def finite_everywhere(grad_norm, stats):
    """True if the gradient norm and every loss of this update are finite on all ranks (one
    all_reduce, so all ranks take the same branch and FSDP stays in step)."""
    ok = torch.tensor([float(math.isfinite(float(grad_norm)) and all(math.isfinite(s["loss"]) for s in stats))])
    if dist.is_initialized():
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def shard_model(dit, device):
    """FSDP2: one fully_shard unit per DiT block, then the root (as wan/distributed/fsdp.py wraps
    blocks); bf16 compute with fp32 gradient reduction on GPU. The VAE and text encoder stay
    unsharded and frozen: they are not trained and are small next to the DiT."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if device.type == "cuda" else MixedPrecisionPolicy()
    for block in dit.blocks:
        fully_shard(block, mp_policy=mp)
    fully_shard(dit, mp_policy=mp)


def autocast(device):
    """bf16 autocast on GPU (the model keeps the official fp32 islands inside); CPU runs fp32."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


# -----------------------------------------------------------------------------
# LoRA: low-rank adapters on chosen nn.Linear layers of the DiT blocks, official names kept

def _lora_hook(layer, inputs, out):
    """Forward hook: y = W x + b + (alpha / r) B A x, skipped while the adapter is off (reference policy)."""
    if not layer.lora_on:
        return out
    return out + (inputs[0].to(layer.lora_A.dtype) @ layer.lora_A.t() @ layer.lora_B.t()).to(out.dtype) * layer.lora_scale


def add_lora(dit, rank, alpha, targets):
    """Freeze the DiT, then give every nn.Linear in dit.blocks whose name ends with one of `targets`
    (q,k,v,o = self- and cross-attention; ffn.0,ffn.2 = the MLP) A (r, in) Kaiming-uniform and
    B (out, r) = 0, so training starts from the base model (LoRA, Hu et al. 2021, arXiv 2106.09685).
    The parameters live on the Linear itself (`blocks.3.self_attn.q.lora_A`): the base keys keep their
    official names and still load with strict=True; the adapter alone is the `.lora_` keys."""
    dit.requires_grad_(False)
    names = [t.strip() for t in targets.split(",") if t.strip()]
    n = 0
    for name, layer in dit.blocks.named_modules():
        if isinstance(layer, nn.Linear) and any(name == t or name.endswith("." + t) for t in names):
            dev = layer.weight.device
            layer.lora_A = nn.Parameter(torch.empty(rank, layer.in_features, device=dev))
            layer.lora_B = nn.Parameter(torch.zeros(layer.out_features, rank, device=dev))
            if dev.type != "meta":
                nn.init.kaiming_uniform_(layer.lora_A, a=math.sqrt(5))
            layer.lora_scale, layer.lora_on = alpha / rank, True
            layer.register_forward_hook(_lora_hook)
            n += 1
    if n == 0:
        raise ValueError(f"--lora_targets={targets}: no nn.Linear inside the DiT blocks has such a name")
    return n


def set_lora(dit, on):
    """Switch every adapter on or off; off = the base model = the RL reference policy (flow_grpo)."""
    for m in dit.modules():
        if hasattr(m, "lora_on"):
            m.lora_on = on


def merge_lora(state_dict, scale):
    """Fold adapters into a full state dict for export: W <- W + scale B A, lora keys dropped.
    The result has exactly the official key set."""
    sd = {k: v for k, v in state_dict.items() if ".lora_" not in k}
    for k, a in state_dict.items():
        if k.endswith(".lora_A"):
            base = k[: -len(".lora_A")]
            b = state_dict[base + ".lora_B"]
            sd[base + ".weight"] = (sd[base + ".weight"].float() + scale * (b.float() @ a.float())).to(sd[base + ".weight"].dtype)
    return sd


# -----------------------------------------------------------------------------
# models: the DiT (trained), the VAE and the umT5 text encoder (frozen)

def build_models(cfg, device):
    """-> (dit, vae, text) with text = model.TextEncoder (umT5 + tokenizer + prompt cache).
    With ckpt_dir: the released weights (either layout, model.load_pretrained). Without: a random
    init from cfg.seed, identical on every rank (tiny; its VAE is then warmed up by `warmup_vae`)."""
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
    """On CPU, oneDNN runs the VAE's small-channel 3-D convolutions about 2x faster with channels_last_3d
    weights (activations follow): tiny decode 70 -> 36 ms per 17-frame 128x128 video. Same math."""
    if next(vae.parameters()).device.type == "cpu":
        for m in vae.modules():
            if isinstance(m, nn.Conv3d):
                m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last_3d)
    return vae


def to_pixels(video_uint8):
    """(F, H, W, 3) uint8 -> (3, F, H, W) float32 in [-1, 1] (the VAE's input range)."""
    return torch.from_numpy(video_uint8).permute(3, 0, 1, 2).float() / 127.5 - 1


def to_uint8(video):
    """(B, 3, F, H, W) in [-1, 1] -> (B, F, H, W, 3) uint8 numpy, the verifier's input (as Wan's save_video:
    (x + 1) / 2 * 255, here rounded)."""
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()


def make_puzzles(cfg, split, start, n):
    """Puzzles start .. start+n-1 of a split, the chosen domains taking turns (index i -> domain
    i mod D, its (i // D)-th seed of that split): deterministic, and the same on every rank."""
    doms = domains(cfg)
    out = []
    for i in range(start, start + n):
        d = doms[i % len(doms)]
        seed = puzzles.split_seeds(split, 1, start=i // len(doms))[0]
        out.append(puzzles.generate(d, seed, **puzzles.LEVELS[d][cfg.level]))
    return out


def latent_shape(cfg, z_dim):
    """(C, F', H', W') of a cfg.frames x height x width video: frame 0 alone, then VAE strides 4x16x16."""
    return (z_dim, (cfg.frames - 1) // 4 + 1, cfg.height // 16, cfg.width // 16)


def vae_chunks(cfg):
    """Short clips run through the VAE in one piece (about 2x faster on CPU, and the memory is small at
    that size); long ones in the official streaming form (flat memory in the number of frames)."""
    return dict(chunk=None) if cfg.frames <= 33 else {}


def decode_videos(vae, latents, cfg, batch=4):
    """(B, C, F', h, w) -> (B, F, H, W, 3) uint8, 4 videos per call: tiny, CPU: 31 vs 98 ms/video at 32."""
    return np.concatenate([to_uint8(vae.decode(latents[i:i + batch], **vae_chunks(cfg))) for i in range(0, len(latents), batch)])


@torch.no_grad()
def encode_puzzles(vae, batch, cfg, device, frames=None, cache=None):
    """Render puzzles and VAE-encode them: (B, C, F', H/16, W/16). frames=1: the conditioning image
    (frame 0 alone, whose latent equals latent frame 0 of the whole video: the VAE is causal).
    cache: a dict {(layout, frames): latent} filled up to cfg.latent_cache entries. The ground-truth
    video is a function of the layout (unique solutions), and the tiny mazes repeat: SFT encodes
    each distinct one once."""
    frames = cfg.frames if frames is None else frames
    keys = [(puzzles.puzzle_layout_key(p), frames) for p in batch]
    todo = [i for i, k in enumerate(keys) if cache is None or k not in cache]
    new = {}
    for i in range(0, len(todo), cfg.micro_batch):
        part = todo[i:i + cfg.micro_batch]
        x = torch.stack([to_pixels(puzzles.render(batch[j], cfg.height, cfg.width, frames)) for j in part]).to(device)
        new.update(zip(part, vae.encode(x, **vae_chunks(cfg))))
    if cache is not None:
        for j, z in new.items():
            if len(cache) < cfg.latent_cache:
                cache[keys[j]] = z
    return torch.stack([new[i] if i in new else cache[k] for i, k in enumerate(keys)])


def generator(device, *keys):
    """A torch.Generator seeded from integers (seed, stage, step, rank, ...): every random draw of the
    run is a function of where it happens, so a resumed run draws exactly what the original would."""
    g = torch.Generator(device=device)
    g.manual_seed(int.from_bytes(hashlib.sha256(repr(keys).encode()).digest()[:8], "little") >> 1)
    return g


def warmup_vae(cfg, vae, device):
    """Stage 0 (tiny only): train the randomly initialised VAE as an autoencoder on rendered puzzle
    videos of the run's domains, level and size: the stand-in for Wan2.2's pretrained VAE. Cached under
    cache_dir, keyed by everything that affects it, so later runs and tests reuse it.

        loss = sum w (y - x)^2 / sum w + 4 sum w' (pool(y) - pool(x))^2 / sum w',   y = decode(encode(x))
        w = (1 + 5 s) * (2 on frame 0),   pool = 8x8 px means (stride 4),   w' = pool(w)
    s = the pixel's saturation (max - min channel, in [0, 1]): agent, goal, trail, pipes and boxes are
    saturated, floor and walls grey; a plain MSE is dominated by the grey areas and blurs the sprites
    away. Frame 0 is the conditioning image, encoded alone. The pooled term asks for each region's mean
    colour, which is what the verifier reads: without it the agent on the green goal decoded as a brown
    that is neither (GT test mazes still verifying after a round trip: 0% / 5% for seeds 0 / 1; 77%).
    Full clips at the run's frame count: a VAE trained on shorter clips broke on longer ones. Adam,
    20 warm-up steps, linear decay. Then the per-channel mean and std of the encoder output become
    the latent normalization (as Wan2.2 ships its 48 measured values): the DiT sees unit-scale latents."""
    key = json.dumps(dict(vae=dataclasses.asdict(vae.cfg), domains=domains(cfg), level=cfg.level, size=(cfg.frames, cfg.height, cfg.width),
                          steps=cfg.vae_steps, batch=cfg.vae_batch, lr=cfg.vae_lr, seed=cfg.seed, version=3), sort_keys=True)
    path = ROOT / cfg.cache_dir / f"vae_{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"
    if not path.exists() and is_master():
        t0 = time.time()
        torch.manual_seed(cfg.seed)
        vae.set_latent_stats([0.0] * vae.cfg.z_dim, [1.0] * vae.cfg.z_dim)   # raw latents while training
        vae.train().requires_grad_(True)
        opt = torch.optim.Adam(vae.parameters(), lr=cfg.vae_lr)
        bar = tqdm(range(cfg.vae_steps), desc="stage 0: VAE warm-up", disable=not is_master(), dynamic_ncols=True)
        for step in bar:
            for group in opt.param_groups:                                     # warm-up, then linear decay
                group["lr"] = cfg.vae_lr * min(1.0, (step + 1) / 20) * (1 - step / cfg.vae_steps)
            batch = make_puzzles(cfg, "train", 10_000_000 + step * cfg.vae_batch, cfg.vae_batch)  # own seeds
            x = torch.stack([to_pixels(puzzles.render(p, cfg.height, cfg.width, cfg.frames)) for p in batch]).to(device)
            w = 1 + 5 * (x.amax(1, keepdim=True) - x.amin(1, keepdim=True)) / 2     # (B, 1, F, H, W)
            w[:, :, :1] *= 2
            y = vae.decode(vae.encode(x, chunk=None), clamp=False, chunk=None)          # (B, 3, F, H, W)
            pool = lambda t: nn.functional.avg_pool3d(t, (1, 8, 8), stride=(1, 4, 4))  # 8x8 px means
            loss = (w * (y - x).square()).sum() / w.sum() + 4 * (pool(w) * (pool(y) - pool(x)).square()).sum() / pool(w).sum()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        vae.eval().requires_grad_(False)
        with torch.no_grad():                                                  # measured latent statistics
            z = encode_puzzles(vae, make_puzzles(cfg, "train", 20_000_000, 32), cfg, device)   # raw: stats 0 / 1
            mean, std = z.mean(dim=(0, 2, 3, 4)), z.std(dim=(0, 2, 3, 4)).clamp_min(1e-3)
            test = make_puzzles(cfg, "test", 0, 64)                            # does a round trip still verify?
            ok = sum(reward.score(p, v).success for p, v in zip(test, decode_videos(vae, encode_puzzles(vae, test, cfg, device), cfg)))
        sd = {k: v.detach().cpu().contiguous() for k, v in vae.state_dict().items()}
        sd["latent_mean"], sd["latent_std"] = mean.cpu(), std.cpu()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file(sd, str(tmp), metadata={"key": key})
        os.replace(tmp, path)
        print0(f"stage 0: VAE warm-up {cfg.vae_steps} steps in {time.time() - t0:.0f}s, final loss {loss.item():.5f}; "
               f"{ok} of {len(test)} ground-truth test videos still verify after an encode-decode round trip; cached at {path}")
    if dist.is_initialized():
        dist.barrier()
    sd = load_file(str(path))
    vae.set_latent_stats(sd.pop("latent_mean").tolist(), sd.pop("latent_std").tolist())
    vae.load_state_dict(sd)
    vae.eval().requires_grad_(False).to(device)
    return path


# -----------------------------------------------------------------------------
# stage 1: SFT with the flow-matching loss

def sft_step(cfg, step, dit, vae, text, opt, device, rank, world, cache=None):
    """One optimizer step on sft_batch ground-truth videos (sft_batch / world per rank), rendered
    from fresh train-split puzzles and VAE-encoded on the fly:
        x_sigma = (1 - sigma) x0 + sigma eps on latent frames 1.. (frame 0 clean, timestep 0),
        loss = w(sigma) * mean (v_theta(x_sigma) - (eps - x0))^2 over frames 1..   (sde.sft_loss)
    Returns the log row (the loss averaged over ranks); a non-finite loss or gradient skips the update."""
    per_rank = cfg.sft_batch // world
    batch = make_puzzles(cfg, "train", step * cfg.sft_batch + rank * per_rank, per_rank)
    x0 = encode_puzzles(vae, batch, cfg, device, cache=cache)           # (b, C, F', h, w)
    context = text.encode([p.prompt for p in batch])
    noised = sde.sft_noising(x0, generator=generator(device, cfg.seed, "sft", step, rank), shift=cfg.sft_shift, patch_size=dit.cfg.patch_size)
    total = 0.0
    for i in range(0, per_rank, cfg.micro_batch):                       # backward sums: scale by the share
        sl = slice(i, i + cfg.micro_batch)
        part = sde.SFTBatch(noised.x_t[sl], noised.target[sl], noised.t[sl], noised.mask, noised.sigma[sl], noised.weight[sl])
        with autocast(device):
            v = dit(part.x_t, part.t, context[sl])
        loss = sde.sft_loss(v, part) * (part.x_t.shape[0] / per_rank)
        loss.backward()
        total += loss.item()
    grad_norm = float(torch.nn.utils.clip_grad_norm_([p for p in dit.parameters() if p.requires_grad], cfg.grad_clip))
    ok = finite_everywhere(grad_norm, [{"loss": total}])
    if ok:
        opt.step()
    opt.zero_grad(set_to_none=True)
    return dict(stage="sft", loss=float(np.mean(all_gather_list([total]))), grad_norm=grad_norm,
                lr=opt.param_groups[0]["lr"], nonfinite=not ok)


# -----------------------------------------------------------------------------
# stage 2: RL, Early-Step-Focus SDE-GRPO

def rl_rollout(cfg, step, dit, vae, text, device, rank, world):
    """Sample, decode and score this rank's share of the P x G rollouts of RL iteration `step`.

    The P puzzles (fresh train-split instances) are the same on every rank; global video j of P*G
    belongs to puzzle j // G and runs on rank j mod world, so a group is spread over the ranks
    (Flow-GRPO's k-repeat sampler) and its advantage needs the gathered rewards. Each video: pure
    noise, frame 0 = the puzzle image's latent, SDE on steps [sde_start, sde_start + K) with the
    latents and log-probs stored, ODE elsewhere (sde.sample); then VAE decode and reward.score."""
    P, G = cfg.puzzles_per_step, cfg.group_size
    batch = make_puzzles(cfg, "train", 30_000_000 + step * P, P)        # RL draws its own train seeds
    image = encode_puzzles(vae, batch, cfg, device, frames=1)           # (P, C, 1, h, w)
    context = text.encode([p.prompt for p in batch])
    mine = list(range(rank, P * G, world))
    g = generator(device, cfg.seed, "rl", step, rank)
    timing, trajs, finals = {}, [], []
    t0 = time.time()
    for i in range(0, len(mine), cfg.micro_batch):
        js = mine[i:i + cfg.micro_batch]
        pz = [j // G for j in js]
        noise = torch.randn((len(js), *latent_shape(cfg, vae.cfg.z_dim)), generator=g, device=device)
        with autocast(device):
            x0, traj = sde.sample(dit, noise, [context[k] for k in pz], image_latent=image[pz], num_steps=cfg.num_steps,
                                  shift=cfg.shift, sde_start=cfg.sde_start, sde_steps=cfg.sde_steps,
                                  noise_level=cfg.noise_level, sde_type=cfg.sde_type, cfg_scale=cfg.cfg_scale,
                                  neg_context=negative_context(cfg, text, len(js)), generator=g, patch_size=dit.cfg.patch_size)
        trajs.append(traj)
        finals.append(x0)
    timing["rollout"] = time.time() - t0
    t0 = time.time()
    with torch.no_grad():
        videos = decode_videos(vae, torch.cat(finals), cfg)                   # (n, F, H, W, 3)
    timing["decode"] = time.time() - t0
    t0 = time.time()
    scores = [reward.score(batch[j // G], v) for j, v in zip(mine, videos)]
    timing["reward"] = time.time() - t0
    traj = sde.Trajectory(*(torch.cat([getattr(t, f) for t in trajs]) if f in ("latents", "next_latents", "log_probs")
                            else getattr(trajs[0], f) for f in sde.Trajectory._fields))
    return batch, mine, traj, videos, scores, timing


def negative_context(cfg, text, n):
    """The unconditional branch of CFG: the empty prompt (encoded once, cached; Wan2.2's sampler uses its
    long sample_neg_prompt instead). None without CFG (cfg_scale 1, the RL default: rl.md 6 item 6)."""
    return text.encode([""] * n) if cfg.cfg_scale != 1 else None


def rl_update(cfg, dit, ref, text, batch, mine, traj, adv, opt, device, world):
    """Policy update on the stored SDE steps, grouped as configured: for each update u (groups_per_update
    groups), for each micro-batch of this rank's trajectories with non-zero advantage and each stored
    step k: recompute v_theta on (x_k, t_k) with grad, log p_theta(x_{k+1} | x_k) (sde.sde_step with the
    stored x_{k+1}), the clipped loss (+ beta KL to the reference), backward; then one optimizer step.
    Loss scaling: FSDP averages gradients over ranks and backward() sums over calls, so each call's
    loss is weighted (videos in it) * world / (videos in the update across ranks * K): the gradient of
    the mean over the update's videos and steps. Every rank makes the same number of forward/backward
    calls (FSDP collectives), padding with zero-weight calls where it has fewer kept trajectories.
    Returns a list of stat dicts (one per update)."""
    P, G, K = cfg.puzzles_per_step, cfg.group_size, traj.latents.shape[1]
    mask = sde.frame_mask(traj.latents.shape[3], device=device)
    n_updates = P // cfg.groups_per_update
    out = []
    for u in range(n_updates):
        lo, hi = u * cfg.groups_per_update * G, (u + 1) * cfg.groups_per_update * G
        keep_all = [j for j in range(lo, hi) if adv[j] != 0]               # every rank knows every rank's share
        n_global = len(keep_all)
        if n_global == 0:
            out.append(dict(skipped=True))
            continue
        per_rank = [[j for j in keep_all if j % world == r] for r in range(world)]
        mine_kept = [mine.index(j) for j in per_rank[dist.get_rank() if dist.is_initialized() else 0]]
        n_calls = max(math.ceil(len(p) / cfg.micro_batch) for p in per_rank)
        stats = []
        for c in range(n_calls):
            idx = mine_kept[c * cfg.micro_batch:(c + 1) * cfg.micro_batch]
            weight = len(idx) * world / (n_global * K)
            if not idx:                                                      # FSDP: join the collectives
                idx, weight = [0], 0.0
            a = torch.tensor([adv[mine[i]] for i in idx], device=device)
            ctx = text.encode([batch[mine[i] // G].prompt for i in idx])
            for k in range(K):
                x, x_next = traj.latents[idx, k], traj.next_latents[idx, k]
                with autocast(device):
                    v = sde.velocity(dit, x, traj.timesteps[k], ctx, cfg_scale=cfg.cfg_scale,
                                     neg_context=negative_context(cfg, text, len(idx)), patch_size=dit.cfg.patch_size)
                _, log_prob, mean, std = sde.sde_step(x, v, traj.sigmas[k], traj.sigmas_next[k], cfg.noise_level,
                                                      sde_type=cfg.sde_type, x_next=x_next, mask=mask)
                mean_ref = reference_mean(cfg, dit, ref, x, x_next, traj, k, ctx, text, mask, device) if cfg.beta > 0 else None
                loss, st = grpo.policy_loss(log_prob, traj.log_probs[idx, k], a, cfg.clip_range, beta=cfg.beta,
                                            mean=mean, mean_ref=mean_ref, std=std, mask=mask)
                (loss * weight).backward()
                if weight > 0:
                    stats.append({k2: v2.item() for k2, v2 in st.items()} | {"loss": loss.item()})
        grad_norm = torch.nn.utils.clip_grad_norm_([p for p in dit.parameters() if p.requires_grad], cfg.grad_clip)
        out.append(dict(grad_norm=float(grad_norm), stats=stats))
        if finite_everywhere(grad_norm, stats):
            opt.step()
        else:
            out[-1]["nonfinite"] = True
        opt.zero_grad(set_to_none=True)
    return out


@torch.no_grad()
def reference_mean(cfg, dit, ref, x, x_next, traj, k, ctx, text, mask, device):
    """Mean of the reference policy's step from the same x (for the KL): ref is dit itself with its
    LoRA adapters switched off (flow_grpo: `disable_adapter()`), or a frozen copy of the initial DiT."""
    if ref is dit:
        set_lora(dit, False)
    try:
        with autocast(device):
            v = sde.velocity(ref, x, traj.timesteps[k], ctx, cfg_scale=cfg.cfg_scale,
                             neg_context=negative_context(cfg, text, x.shape[0]), patch_size=dit.cfg.patch_size)
    finally:
        if ref is dit:
            set_lora(dit, True)
    return sde.sde_step(x, v, traj.sigmas[k], traj.sigmas_next[k], cfg.noise_level, sde_type=cfg.sde_type,
                        x_next=x_next, mask=mask)[2]


def rl_step(cfg, step, dit, ref, vae, text, opt, device, rank, world):
    """One RL iteration: rollout -> decode -> reward -> gathered group advantages -> update(s).
    Returns the log row (global numbers: rewards and stats are gathered over ranks)."""
    P, G = cfg.puzzles_per_step, cfg.group_size
    batch, mine, traj, videos, scores, timing = rl_rollout(cfg, step, dit, vae, text, device, rank, world)
    # the training signal: dense decomposed reward, or success only (the sparse ablation)
    mine_rows = [(j, s.reward if cfg.reward == "dense" else float(s.success), s.reward, s.success)
                 for j, s in zip(mine, scores)]
    rows = sorted(all_gather_list(mine_rows))                           # (P*G) in global order
    signal = torch.tensor([r[1] for r in rows], dtype=torch.float64)
    adv, zero_std = grpo.group_advantages(signal, G, global_std=cfg.global_std, adv_clip_max=cfg.adv_clip_max)
    t0 = time.time()
    updates = rl_update(cfg, dit, ref, text, batch, mine, traj, adv.tolist(), opt, device, world)
    timing["update"] = time.time() - t0
    stats = [s for u in updates for s in all_gather_list(u.get("stats", []))]
    log = {"stage": "rl"}
    if stats:
        log |= {k: float(np.mean([s[k] for s in stats])) for k in ("loss", "policy_loss", "clipfrac", "approx_kl", "kl", "ratio_mean")}
    norms = [u["grad_norm"] for u in updates if "grad_norm" in u]
    log["grad_norm"] = float(np.mean(norms)) if norms else 0.0
    log["nonfinite"] = any(u.get("nonfinite") for u in updates)
    dense = np.array([r[2] for r in rows])
    log |= {"reward": float(dense.mean()), "reward_std": float(dense.std()), "success": float(np.mean([r[3] for r in rows])),
            "zero_std_ratio": float(zero_std.float().mean()), "lr": opt.param_groups[0]["lr"]}
    for d in domains(cfg):                                              # per domain (the puzzles mix)
        sel = [r for r in rows if batch[r[0] // G].domain == d]
        if sel:
            log[f"reward_{d}"] = float(np.mean([r[2] for r in sel]))
            log[f"reward_std_{d}"] = float(np.std([r[2] for r in sel]))
            log[f"success_{d}"] = float(np.mean([r[3] for r in sel]))
    log |= {f"time_{k}": round(v, 3) for k, v in timing.items()}
    if cfg.gif_every and step % cfg.gif_every == 0 and is_master():
        group = [i for i, j in enumerate(mine) if j // G == 0]             # group 0, as far as this rank holds it
        path = Path(cfg.out_dir) / "gifs" / f"rl_{step:06d}.gif"
        path.parent.mkdir(parents=True, exist_ok=True)
        puzzles.save_gif(path, puzzles.side_by_side(videos[group], [f"{'OK' if scores[i].success else 'no'} r={scores[i].reward:.2f}"
                                                                    for i in group], [scores[i].success for i in group]))
    return log


# -----------------------------------------------------------------------------
# checkpoints: written into a temporary folder, renamed into place when complete, then `latest` is
# replaced; a run killed at any moment leaves the previous checkpoint intact.

def rng_state():
    return dict(torch=torch.get_rng_state(), numpy=np.random.get_state(), python=random.getstate(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])


def write_text_atomic(path, text):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(cfg, step, dit, vae, text, opt, extra, keep=()):
    """out_dir/ckpt_{step:06d}/: dit.safetensors (official key names) or lora.safetensors (adapters
    only), vae.safetensors + t5.safetensors when they are ours (tiny), state.pt (optimizer, step, RNG
    states of every rank, extra), config.json. All ranks must call (FSDP state-dict gathers)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    sd = get_model_state_dict(dit, options=opts)
    # an optimizer that has not stepped yet (every group filtered so far) is saved as None = fresh
    osd = get_optimizer_state_dict(dit, opt, options=opts) if opt is not None and opt.state else None
    rngs = all_gather_list([rng_state()])
    if is_master():
        out = Path(cfg.out_dir)
        final, tmp = out / f"ckpt_{step:06d}", out / f".ckpt_{step:06d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if cfg.lora_rank:
            save_file({k: v.contiguous() for k, v in sd.items() if ".lora_" in k}, str(tmp / "lora.safetensors"))
        else:
            save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp / "dit.safetensors"))
        if not cfg.ckpt_dir:                       # our own VAE / text encoder: keep the checkpoint stand-alone
            vsd = {k: v.detach().cpu().contiguous() for k, v in vae.state_dict().items()}
            vsd["latent_mean"], vsd["latent_std"] = torch.tensor(vae.latent_mean), torch.tensor(vae.latent_std)
            save_file(vsd, str(tmp / "vae.safetensors"))
            save_file({k: v.detach().cpu().contiguous() for k, v in text.model.state_dict().items()}, str(tmp / "t5.safetensors"))
        torch.save(dict(optimizer=osd, step=step, rng=rngs, extra=extra), tmp / "state.pt")
        (tmp / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        write_text_atomic(out / "latest", final.name)
        ckpts = sorted(p for p in out.glob("ckpt_*") if p.is_dir())
        for p in ckpts[:-2]:                                           # keep the last two + stage ends
            if int(p.name.split("_")[1]) not in keep:
                shutil.rmtree(p)
    if dist.is_initialized():
        dist.barrier()


def resolve_checkpoint(path):
    """A ckpt_* folder, or a run folder (-> the checkpoint its `latest` file names)."""
    path = Path(path)
    if (path / "latest").exists():
        path = path / (path / "latest").read_text().strip()
    if not (path / "state.pt").exists() or not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: not a checkpoint of ours (expected a ckpt_* folder with state.pt and "
                                f"config.json, or a run folder with a 'latest' file)")
    return path


def load_weights(ckpt, dit, vae, text):
    """Load a checkpoint folder's weights: the DiT (full, or LoRA adapters: onto this model's adapters,
    strict on their keys, or merged into its base weights), and the VAE / text encoder when present."""
    if (ckpt / "dit.safetensors").exists():
        dit.load_state_dict(load_file(str(ckpt / "dit.safetensors")), strict=True)
    if (ckpt / "lora.safetensors").exists():
        lora = load_file(str(ckpt / "lora.safetensors"))
        if any(".lora_" in k for k in dit.state_dict()):               # resume a LoRA run
            missing = {k for k in dit.state_dict() if ".lora_" in k} ^ set(lora)
            if missing:
                raise KeyError(f"{ckpt / 'lora.safetensors'}: adapter keys differ from this model's: {sorted(missing)[:5]}")
            dit.load_state_dict(lora, strict=False)
        else:                                                         # start from a LoRA run: merge it in
            saved = json.loads((ckpt / "config.json").read_text())
            dit.load_state_dict(merge_lora(dit.state_dict() | lora, saved["lora_alpha"] / saved["lora_rank"]), strict=True)
    if (ckpt / "vae.safetensors").exists():
        sd = load_file(str(ckpt / "vae.safetensors"))
        vae.set_latent_stats(sd.pop("latent_mean").tolist(), sd.pop("latent_std").tolist())
        vae.load_state_dict(sd, strict=True)
    if (ckpt / "t5.safetensors").exists():
        text.model.load_state_dict(load_file(str(ckpt / "t5.safetensors")), strict=True)
        text.cache.clear()


# -----------------------------------------------------------------------------
# --dry_run: what a configuration costs at full scale, from the real modules on the meta device

class _FlashAttentionSaves(torch.autograd.Function):
    """Counting only (meta tensors): what a fused attention kernel (FlashAttention on a GPU, torch's
    flash kernel on CPU) keeps for backward: q, k, v, the output and a float32 log-sum-exp per
    query. The meta device falls back to the math attention, which would store the (S, S)
    probabilities."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)                                           # (B, N, S, D)
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
        return out


def saved_block_bytes(dcfg, tokens, grid):
    """Bytes one DiT block keeps for backward per video (bf16 weights, FSDP's gathered dtype),
    counted on the meta device with saved-tensor hooks: distinct storages, not parameters, not the
    inputs every block shares (the per-token modulation e0, the text, RoPE tables)."""
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
    """Bytes per GPU of an RL run of cfg on n_gpus, by component (printed by --dry_run):
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
    happen at different times."""
    dcfg, vcfg = M.DIT_CONFIGS[cfg.model], M.VAE_CONFIGS[cfg.model]
    with torch.device("meta"):
        dit, vae, t5 = M.WanModel(dcfg), M.WanVAE(vcfg), M.T5Encoder(M.T5_CONFIGS[cfg.model])
    n_dit = sum(p.numel() for p in dit.parameters())
    block = sum(p.numel() for p in dit.blocks[0].parameters())
    n_train = n_dit
    if cfg.lora_rank:
        add_lora(dit, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
        n_train = sum(p.numel() for n, p in dit.named_parameters() if ".lora_" in n)
    frozen = n_dit if cfg.lora_rank or cfg.beta > 0 else 0
    lat = latent_shape(cfg, vcfg.z_dim)
    pt, ph, pw = dcfg.patch_size
    grid = (lat[1] // pt, lat[2] // ph, lat[3] // pw)
    tokens = math.prod(grid)
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
    # one video's decode: the streamed working set + its fp32 output, twice (the chunks, then their cat)
    decode_one = VAE_DECODE_BYTES_PER_PIXEL * pixels + 2 * 3 * cfg.frames * pixels * 4
    videos = cfg.puzzles_per_step * cfg.group_size / n_gpus
    mem = dict(weights=weights, gradients=n_train * 4 / n_gpus, optimizer=n_train * 8 / n_gpus,
               activations=cfg.micro_batch * per_video,
               trajectories=videos * cfg.sde_steps * 2 * math.prod(lat) * 4,
               vae=sum(p.numel() for p in vae.parameters()) * 4,
               vae_decode=min(4, math.ceil(videos)) * decode_one,
               text=sum(p.numel() for p in t5.parameters()) * 2)
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
    """Parameter counts, tokens per video, FLOPs per RL iteration (rollout vs update, counted by
    torch.utils.flop_counter on meta tensors: no weights), time per iteration at the assumed utilization,
    per-GPU memory under FSDP, and the same for full-step training (K = N): what Early-Step Focus saves."""
    from torch.utils.flop_counter import FlopCounterMode
    dcfg, vcfg = M.DIT_CONFIGS[cfg.model], M.VAE_CONFIGS[cfg.model]
    with torch.device("meta"):
        dit, vae, t5 = M.WanModel(dcfg), M.WanVAE(vcfg), M.T5Encoder(M.T5_CONFIGS[cfg.model])
    n_dit = sum(p.numel() for p in dit.parameters())
    n_lora = add_lora(dit, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets) and sum(
        p.numel() for n, p in dit.named_parameters() if ".lora_" in n) if cfg.lora_rank else 0
    n_train = n_lora or n_dit
    lat = (1, *latent_shape(cfg, vcfg.z_dim))
    pt, ph, pw = dcfg.patch_size
    tokens = lat[2] // pt * (lat[3] // ph) * (lat[4] // pw)

    def flops(fn):
        with FlopCounterMode(display=False) as fc:
            fn()
        return fc.get_total_flops()
    with torch.device("meta"):
        x, t = torch.empty(lat), torch.zeros(1, tokens)
        ctx = [torch.empty(dcfg.text_len, dcfg.text_dim)]
        f_dit = flops(lambda: dit(x, t, ctx))                                  # one forward, one video
        f_dec = flops(lambda: vae.decode(torch.empty(lat)))
        f_img = flops(lambda: vae.encode(torch.empty(1, 3, 1, cfg.height, cfg.width)))
    n_cfg = 2 if cfg.cfg_scale != 1 else 1
    videos = cfg.puzzles_per_step * cfg.group_size
    # backward = 2 forwards for full fine-tuning (input and weight gradients), ~1 with LoRA (no weight gradient
    # for frozen weights); + 1 forward with gradient checkpointing; + 1 no-grad reference forward if beta > 0.
    per_step_update = f_dit * n_cfg * (1 + (1 if cfg.lora_rank else 2) + cfg.grad_checkpointing + (cfg.beta > 0))

    def iteration(k):                                                       # -> (rollout, update) FLOPs
        return videos * (cfg.num_steps * n_cfg * f_dit + f_dec) + cfg.puzzles_per_step * f_img, videos * k * per_step_update
    peak = cfg.n_gpus * cfg.gpu_tflops * 1e12 * cfg.mfu
    GB = 1024 ** 3
    mem = memory_model(cfg, cfg.n_gpus)
    print(f"config {cfg.config}: model {cfg.model}, {cfg.frames}x{cfg.height}x{cfg.width} video, "
          f"latent {tuple(lat[1:])}, {tokens:,} tokens per video")
    print(f"parameters: DiT {n_dit:,}, VAE {sum(p.numel() for p in vae.parameters()):,}, umT5 "
          f"{sum(p.numel() for p in t5.parameters()):,}; trained {n_train:,}" + (f" (LoRA r{cfg.lora_rank})" if cfg.lora_rank else ""))
    print(f"FLOPs: DiT forward {f_dit / 1e12:.2f} TFLOP per video, VAE decode {f_dec / 1e12:.2f} TFLOP, "
          f"image encode {f_img / 1e12:.3f} TFLOP")
    print(f"RL iteration: {cfg.puzzles_per_step} puzzles x {cfg.group_size} = {videos} videos, N={cfg.num_steps}, "
          f"{cfg.n_gpus} GPUs x {cfg.gpu_tflops:.0f} TFLOP/s at {cfg.mfu:.0%} utilization")
    rows = []
    for name, k in (("Early-Step Focus", cfg.sde_steps), ("full-step", cfg.num_steps)):
        ro, up = iteration(k)
        rows.append((name, k, ro, up, (ro + up) / peak))
        print(f"  {name:17s} K={k:3d}: rollout {ro / 1e15:8.1f} PFLOP, update {up / 1e15:8.1f} PFLOP, "
              f"{(ro + up) / peak:7.1f} s per iteration")
    print(f"  Early-Step Focus saves {1 - rows[0][4] / rows[1][4]:.0%} of the time per iteration "
          f"(paper: about 40% less training time)")
    print_memory(cfg, mem)
    return dict(tokens=tokens, n_dit=n_dit, n_train=n_train, f_dit=f_dit, f_dec=f_dec, rows=rows,
                mem_gb=mem["total"] / GB, memory=mem)


# -----------------------------------------------------------------------------
# main: stage 0 (tiny VAE) -> stage 1 SFT -> evaluation -> stage 2 RL -> evaluation -> table

def get_lr(cfg, stage, step):
    """SFT: linear warm-up over 5% of the steps, then cosine to 10%. RL: constant, no warm-up
    (flow_grpo Wan config; DanceGRPO lr_warmup_steps 0)."""
    if stage == "rl":
        return cfg.lr
    warm = max(1, cfg.sft_steps // 20)
    if step < warm:
        return cfg.sft_lr * (step + 1) / warm
    frac = (step - warm) / max(1, cfg.sft_steps - warm)
    return cfg.sft_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def make_optimizer(cfg, dit, stage):
    """AdamW (0.9, 0.999), eps 1e-8, weight decay 1e-4 on the trained parameters only (flow_grpo
    config/base.py; DanceGRPO --weight_decay 0.0001)."""
    params = [p for p in dit.parameters() if p.requires_grad]
    lr = cfg.sft_lr if stage == "sft" else cfg.lr
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay)


def main(argv=None):
    cfg = get_config(sys.argv[1:] if argv is None else argv)
    if cfg.dry_run:
        return dry_run(cfg)
    rank, world, device = setup_distributed(cfg)
    check_config(cfg, world)
    if cfg.rl_steps and (cfg.puzzles_per_step * cfg.group_size) % world:
        raise ValueError(f"P x G = {cfg.puzzles_per_step * cfg.group_size} videos must split evenly over {world} ranks")
    out = Path(cfg.out_dir)
    if is_master():
        out.mkdir(parents=True, exist_ok=True)
    print0("config: " + " ".join(f"{k}={v}" for k, v in dataclasses.asdict(cfg).items()))
    lat = latent_shape(cfg, M.VAE_CONFIGS[cfg.model].z_dim)
    tokens = lat[1] * (lat[2] // 2) * (lat[3] // 2)
    print0(f"derived: latent (C, F, H, W) = {lat}, {tokens} tokens per video; SFT {cfg.sft_batch} videos per step "
           f"({cfg.sft_batch // world} per rank); RL {cfg.puzzles_per_step} puzzles x {cfg.group_size} = "
           f"{cfg.puzzles_per_step * cfg.group_size} videos per step ({cfg.puzzles_per_step * cfg.group_size // world} "
           f"per rank), {cfg.puzzles_per_step // cfg.groups_per_update} optimizer step(s) per RL iteration, "
           f"SDE + backprop on steps [{cfg.sde_start}, {cfg.sde_start + cfg.sde_steps}) of {cfg.num_steps}; {world} rank(s) on {device}")
    torch.manual_seed(cfg.seed + rank)      # global RNG; the method's own draws use `generator`

    dit, vae, text = build_models(cfg, device)
    start, extra, resume_state, init = 0, {}, None, None
    if cfg.resume:
        init = resolve_checkpoint(out)
        resume_state = torch.load(init / "state.pt", map_location="cpu", weights_only=False)
        start, extra = resume_state["step"], resume_state["extra"]
        print0(f"resuming {init} at step {start}")
    elif cfg.ckpt:
        init = resolve_checkpoint(cfg.ckpt)
        print0(f"initialising from {init}")
    if not cfg.ckpt_dir and not (init and (init / "vae.safetensors").exists()):
        if cfg.vae_steps:
            warmup_vae(cfg, vae, device)
        else:
            print0("warning: the VAE is randomly initialised (vae_steps=0 and no ckpt_dir): videos will be noise")
    if cfg.lora_rank and cfg.resume:                      # resume: adapters first, then their weights
        add_lora(dit, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
    if init:                                              # --ckpt from a LoRA run: merged into the base
        load_weights(init, dit, vae, text)
    if cfg.lora_rank and not cfg.resume:
        add_lora(dit, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
    channels_last(vae)
    ref = dit
    if cfg.beta > 0 and not cfg.lora_rank:               # full fine-tuning: the reference is a frozen copy
        ref = copy.deepcopy(dit).requires_grad_(False).eval()
    dit.gradient_checkpointing = cfg.grad_checkpointing
    for m in (dit,) if ref is dit else (dit, ref):
        m.to(device)
        if world > 1:
            shard_model(m, device)
    print0(f"DiT {sum(p.numel() for p in dit.parameters()):,} parameters, "
           f"{sum(p.numel() for p in dit.parameters() if p.requires_grad):,} trained")

    total = cfg.sft_steps + cfg.rl_steps
    stage_ends = {s for s in (cfg.sft_steps, total) if s > 0}
    metrics = out / "metrics.jsonl"
    if is_master() and cfg.resume and metrics.exists():   # drop rows a killed run wrote after its checkpoint
        rows = [r for r in metrics.read_text().splitlines() if r and json.loads(r)["step"] < start]
        write_text_atomic(metrics, "".join(r + "\n" for r in rows))
    import eval as E            # eval.py imports this file (config, models); imported here, not at the top
    results = {}
    if cfg.eval_n and cfg.sft_steps and start >= cfg.sft_steps:
        results["sft"] = E.evaluate_stage(cfg, "sft", dit, vae, text, device)
    opt, opt_stage, bad, latents = None, None, extra.get("bad_steps", 0), {}
    bar = tqdm(range(start, total), initial=start, total=total, disable=not is_master(), desc="train", dynamic_ncols=True)
    for s in bar:
        stage = "sft" if s < cfg.sft_steps else "rl"
        if stage != opt_stage:
            opt, opt_stage = make_optimizer(cfg, dit, stage), stage
            if resume_state is not None and resume_state["step"] == s and resume_state["optimizer"] is not None \
                    and extra.get("stage") == stage:
                from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
                set_optimizer_state_dict(dit, opt, resume_state["optimizer"], options=StateDictOptions(full_state_dict=True))
        stage_step = s if stage == "sft" else s - cfg.sft_steps
        for group in opt.param_groups:
            group["lr"] = get_lr(cfg, stage, stage_step)
        t0 = time.time()
        if stage == "sft":
            log = sft_step(cfg, stage_step, dit, vae, text, opt, device, rank, world, latents)
        else:
            log = rl_step(cfg, stage_step, dit, ref, vae, text, opt, device, rank, world)
        log = {"step": s, "stage_step": stage_step} | log | {"seconds": round(time.time() - t0, 3)}
        bad = bad + 1 if log["nonfinite"] else 0
        if bad:
            print0(f"warning: step {s}: non-finite loss or gradient, update skipped ({bad} in a row)")
            if bad >= 3:
                raise RuntimeError(f"step {s}: the loss or gradient was NaN/inf for {bad} consecutive steps; stopping. "
                                   f"Lower the learning rate (sft_lr={cfg.sft_lr}, lr={cfg.lr}) or check the inputs.")
        if is_master():
            with open(metrics, "a") as f:
                f.write(json.dumps(log) + "\n")
            keys = ("loss", "reward", "reward_std", "success", "zero_std_ratio", "clipfrac", "approx_kl", "grad_norm", "lr")
            tqdm.write(f"{stage} {stage_step:5d} | " + " | ".join(f"{k} {log[k]:.4g}" for k in keys if k in log)
                       + "".join(f" | {k[5:]} {v:.2f}s" for k, v in log.items() if k.startswith("time_")))
            bar.set_postfix(stage=stage, loss=f"{log.get('loss', float('nan')):.4f}")
        done = s + 1
        if done in stage_ends or done % cfg.save_every == 0 or done == cfg.stop_after:
            save_checkpoint(cfg, done, dit, vae, text, opt, dict(stage=stage, bad_steps=bad), keep=stage_ends)
        if cfg.eval_n and done in stage_ends:
            results[stage] = E.evaluate_stage(cfg, stage, dit, vae, text, device)
        if done == cfg.stop_after:
            print0(f"stopping after step {done} (--stop_after); continue with --resume")
            break
    bar.close()
    if results and is_master():
        E.report({("SFT" if k == "sft" else "SFT + RL (VideoRLVR)"): v for k, v in results.items()}, out)
    if dist.is_initialized():
        dist.destroy_process_group()
    return results


if __name__ == "__main__":
    main()
