"""The three networks of Wan2.2-TI2V-5B in plain PyTorch, and the loader for the released weights.

- WanModel: the 5B diffusion transformer (DiT) that predicts the flow velocity v ~ eps - x0.
- WanVAE: the Wan2.2 video VAE, 4x16x16 compression to 48 latent channels, causal in time.
- T5Encoder + TextEncoder: the umT5-XXL text encoder, its tokenizer and a prompt-embedding cache.
- load_pretrained(ckpt_dir): all three from a checkpoint folder as released, native or -Diffusers;
  export_diffusers(folder, dit, vae): ours written in the -Diffusers layout.

Notable features (each a place where a port can silently go wrong):
- 3-D RoPE, interleaved (real, imag) pairs split 22/21/21 over (frame, height, width), angles in
  float64.
- adaLN with 6 modulation vectors per block and 2 in the head, computed per token and kept in
  fp32, so that image-to-video can give latent frame 0 the timestep 0 (per-token timesteps).
- q/k RMSNorm across all heads; cross-attention to umT5 text zero-padded to text_len, no mask.
- The VAE streams over time with a causal cache (first frame alone, then chunks): memory stays
  flat in the number of frames, and one-piece processing gives the same numbers.
- Parameter names equal the official checkpoints, so state dicts load with strict=True.

References: Wan (arXiv:2503.20314); github.com/Wan-Video/Wan2.2 @42bf4cfa
wan/modules/{model, vae2_2, t5, tokenizers}.py, wan/configs/wan_ti2v_5B.py; huggingface/diffusers
scripts/convert_wan_to_diffusers.py @58eb52c0 (-Diffusers key names),
src/diffusers/models/transformers/transformer_wan.py and
src/diffusers/models/autoencoders/autoencoder_kl_wan.py (-Diffusers configs). Facts taken from
there, code written anew.

Dimension legend: B batch, C_in latent channels (z_dim), F/H/W latent frames/height/width,
(pt, ph, pw) the DiT patch, (f, h, w) = (F/pt, H/ph, W/pw) token grid, L = f*h*w video tokens,
S >= L padded tokens, C width, N heads, D head dim, Lt = text_len text slots, Lc true text length.

Tests: python -m pytest tests/test_model_*.py -q (against the official code's tensors in
tests/fixtures and against diffusers / transformers); benchmarks: tests/bench_{dit,vae,
model_load}.py, tests/scripts/bench_diffusers.py.
"""
import contextlib
import html
import json
import math
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# -----------------------------------------------------------------------------
# configs: the preset tables are the only place sizes live

@dataclass
class DiTConfig:
    dim: int = 3072                   # transformer width C
    ffn_dim: int = 14336              # FFN hidden width
    freq_dim: int = 256               # sinusoidal timestep embedding size
    num_heads: int = 24               # head dim D = dim // num_heads = 128
    num_layers: int = 30
    in_dim: int = 48                  # latent channels = VAE z_dim
    out_dim: int = 48
    text_len: int = 512               # text slots Lt (umT5 tokens, zero-padded)
    text_dim: int = 4096              # umT5-XXL width
    patch_size: tuple = (1, 2, 2)     # (pt, ph, pw) over the latent grid (F, H, W)
    eps: float = 1e-6


@dataclass
class VAEConfig:
    dim: int = 160                    # encoder base width
    dec_dim: int = 256                # decoder base width (WanVAE_ default; Wan2_2_VAE keeps it)
    z_dim: int = 48                   # latent channels
    dim_mult: tuple = (1, 2, 4, 4)    # width multipliers per stage
    num_res_blocks: int = 2           # per encoder stage; decoder stages have one more
    temperal_downsample: tuple = (False, True, True)   # official spelling; 2 temporal x2 stages


@dataclass
class T5Config:
    vocab: int = 256384
    dim: int = 4096
    dim_attn: int = 4096              # num_heads * head dim
    dim_ffn: int = 10240              # gated-GELU hidden width
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32             # relative-position buckets, one table per layer (umT5)


# "5b" = Wan-Video/Wan2.2 wan/configs/wan_ti2v_5B.py + shared_config.py @42bf4cfa and the
# release's config.json, field for field. "tiny" = CPU-sized, mutually consistent: DiT
# in_dim/out_dim == VAE z_dim, DiT text_dim == T5 dim, T5 vocab == the byte tokenizer's.
# Tiny sizes fit the 2-core CPU demo (train.py --config tiny, 128x128 px, 17 frames): a VAE this
# thin still reconstructs puzzle frames after a ~4-minute warm-up (z 16 learned faster than
# z 48), a DiT reaches ~40% held-out maze success after ~5 minutes of SFT, and text_len 64 holds
# the bytes that tell the prompts apart.
DIT_CONFIGS = {
    "tiny": DiTConfig(dim=256, ffn_dim=1024, num_heads=4, num_layers=2, in_dim=16, out_dim=16,
                      text_len=64, text_dim=64),        # head dim 64 -> RoPE pairs 12/10/10
    "5b": DiTConfig(),
}
VAE_CONFIGS = {
    "tiny": VAEConfig(dim=8, dec_dim=8, z_dim=16, num_res_blocks=1),
    "5b": VAEConfig(),                                   # wan/modules/vae2_2.py Wan2_2_VAE defaults
}
T5_CONFIGS = {
    "tiny": T5Config(vocab=256 + 2, dim=64, dim_attn=64, dim_ffn=128, num_heads=4, num_layers=2),
    "5b": T5Config(),                                    # umt5_xxl() in wan/modules/t5.py
}


# -----------------------------------------------------------------------------
# DiT helpers: time embedding, RoPE, fp32 islands

def sinusoidal_embedding(t, dim):
    """The timestep sinusoid [cos(t w_j), sin(t w_j)], cos half first, in float64.

    w_j = 10000^(-j/(dim/2)) for j < dim/2, as the official sinusoidal_embedding_1d
    (Wan-Video/Wan2.2 wan/modules/model.py @42bf4cfa), which also computes in float64.
    t: (M,) on the 0..1000 scale (not 0..1) -> (M, dim) float64.
    """
    half = dim // 2
    exponents = -torch.arange(half, dtype=torch.float64, device=t.device).div(half)
    freqs = torch.pow(10000, exponents)                                     # (dim/2,)
    angles = torch.outer(t.to(torch.float64), freqs)                        # (M, dim/2)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)         # (M, dim)


def rope_cos_sin(grid, head_dim, seq_len, device):
    """cos, sin of the 3-D RoPE angles of the tokens in row-major (f, h, w) order: 2 x (S, D/2).

    The c = head_dim/2 complex pairs split n_t = c - 2*(c//3), n_h = n_w = c//3 (22/21/21 for
    D = 128) over the frame, height, width axes; each axis has its own ladder
    w_j = theta^(-2j/d_axis), d_axis = 2 * n_axis real dims, theta = 10000 (official
    rope_params(1024, d) with d = 44, 42, 42 in wan/modules/model.py @42bf4cfa). Token (i, j, k)
    (0-based on the patch grid) turns its frame pairs by i*w, height pairs by j*w, width pairs by
    k*w, in float64. Padding tokens (index >= L) get angle 0: unrotated, as officially.
    """
    c = head_dim // 2
    parts = (c - 2 * (c // 3), c // 3, c // 3)
    ladders = []
    for n in parts:
        exponents = torch.arange(0, 2 * n, 2, dtype=torch.float64, device=device) / (2 * n)
        ladders.append(1.0 / torch.pow(10000.0, exponents))                 # (n,)
    inv = torch.cat(ladders)                                                # (D/2,)
    axis_of_pair = [i for i, n in enumerate(parts) for _ in range(n)]
    axis = torch.tensor(axis_of_pair, device=device)                        # (D/2,)
    ranges = [torch.arange(n, dtype=torch.float64, device=device) for n in grid]
    pos = torch.cartesian_prod(*ranges).view(-1, 3)                         # (L, 3)
    angles = pos[:, axis] * inv                                             # (L, D/2)
    angles = F.pad(angles, (0, 0, 0, seq_len - angles.shape[0]))           # (S, D/2)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x, cos, sin):
    """Rotate the interleaved pairs (a, b) = (x[2i], x[2i+1]) of each head by their angle.

    (a, b) -> (a cos - b sin, a sin + b cos), i.e. (a + ib) e^(i angle), as the official rope_apply
    (Wan-Video/Wan2.2 wan/modules/model.py @42bf4cfa), done as one complex64 multiply. The angles'
    cos and sin come from rope_cos_sin in float64; the official code also rotates in float64 (a
    complex128 multiply), which costs 20-50x the time on CPU and differs from this float32
    rotation by ~1e-7 relative (4.8e-7 max abs on unit-variance inputs), far inside the 1e-5
    parity. x (B, S, N, D) -> float32 (B, S, N, D); cos, sin (S, D/2) of any float dtype.
    """
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))       # (B, S, N, D/2) complex
    turn = torch.complex(cos.float(), sin.float())[:, None]               # (S, 1, D/2) complex
    return torch.view_as_real(pairs * turn).flatten(-2)                   # (B, S, N, D)


def layer_norm32(x, weight=None, bias=None, eps=1e-6):
    """LayerNorm over the last dim in fp32, returned in x's dtype (the official WanLayerNorm)."""
    w = None if weight is None else weight.float()
    b = None if bias is None else bias.float()
    return F.layer_norm(x.float(), x.shape[-1:], w, b, eps).type_as(x)


def fp32_island(device):
    """A context with autocast off: the official autocast(dtype=float32) regions.

    Devices without autocast (meta, used by train.py --dry_run to count FLOPs) need nothing
    switched off.
    """
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def linear32(layer, x):
    """An nn.Linear applied in fp32 whatever its weight dtype (the caller disables autocast).

    The official autocast(dtype=float32) islands, made explicit because CPU autocast has no
    float32 mode.
    """
    bias = None if layer.bias is None else layer.bias.float()
    return F.linear(x.float(), layer.weight.float(), bias)


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * weight over the last dim, normalized in fp32 then cast back.

    Used for the DiT q/k norms (across all heads: C channels, not D) and the umT5 norms
    (official WanRMSNorm and T5LayerNorm).
    """

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


# -----------------------------------------------------------------------------
# DiT

class WanAttention(nn.Module):
    """softmax(q k^T / sqrt(D)) v per head, with q/k RMSNorm across heads.

    Self-attention (RoPE, key-padding mask) when context is None, else cross-attention to the
    text (no RoPE, no mask). q, k, v, o stay plain nn.Linear so that train.py can wrap them (LoRA).
    """

    def __init__(self, dim, num_heads, eps):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def forward(self, x, context=None, cos=None, sin=None, key_mask=None):
        kv = x if context is None else context
        q = self.norm_q(self.q(x)).unflatten(2, (self.num_heads, -1))       # (B, S, N, D)
        k = self.norm_k(self.k(kv)).unflatten(2, (self.num_heads, -1))      # (B, S or Lt, N, D)
        v = self.v(kv).unflatten(2, (self.num_heads, -1))                   # (B, S or Lt, N, D)
        if cos is not None:
            q = apply_rope(q, cos, sin)
            k = apply_rope(k, cos, sin)
        # the official flash-attn call computes in the half dtype of the Linear outputs (bf16 under
        # autocast) and in fp32 for fp32 runs: v carries that dtype, q and k are fp32 after RoPE
        q = q.to(v.dtype)
        k = k.to(v.dtype)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                             v.transpose(1, 2), attn_mask=key_mask)  # (B, N, S, D)
        return self.o(out.transpose(1, 2).flatten(2))                       # (B, S, C)


class WanAttentionBlock(nn.Module):
    """norm1 -> self-attn (gated) -> norm3 -> cross-attn (no gate) -> norm2 -> FFN (gated).

    With m0..m5 = modulation + e0 (per token, fp32):
        x = x + SelfAttn(LN(x) * (1 + m1) + m0) * m2
        x = x + CrossAttn(LN_affine(x), text)
        x = x + FFN(LN(x) * (1 + m4) + m3) * m5
    The gated adds promote the residual stream to fp32 under bf16 autocast (official fp32 island,
    WanAttentionBlock.forward in Wan-Video/Wan2.2 wan/modules/model.py @42bf4cfa).
    """

    def __init__(self, cfg):
        super().__init__()
        self.eps = cfg.eps
        self.self_attn = WanAttention(cfg.dim, cfg.num_heads, cfg.eps)
        self.norm3 = nn.LayerNorm(cfg.dim, eps=cfg.eps)                     # the only affine LN
        self.cross_attn = WanAttention(cfg.dim, cfg.num_heads, cfg.eps)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.ffn_dim, cfg.dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, cfg.dim) / cfg.dim ** 0.5)

    def forward(self, x, e0, context, cos, sin, key_mask):
        # Linear inputs go in the weights' dtype: a no-op for fp32 weights (autocast then picks
        # bf16), and bf16 weights (cast on load, or FSDP mixed precision) also run without autocast
        dt = self.norm3.weight.dtype
        m = (self.modulation.float().unsqueeze(0) + e0).unbind(2)           # 6 x (B, S, C) fp32
        h = layer_norm32(x, eps=self.eps).float() * (1 + m[1]) + m[0]
        x = x + self.self_attn(h.to(dt), cos=cos, sin=sin, key_mask=key_mask) * m[2]
        h = layer_norm32(x, self.norm3.weight, self.norm3.bias, self.eps)
        x = x + self.cross_attn(h.to(dt), context)
        h = layer_norm32(x, eps=self.eps).float() * (1 + m[4]) + m[3]
        return x + self.ffn(h.to(dt)) * m[5]                                # (B, S, C)


class Head(nn.Module):
    """out = Linear(LN(x) * (1 + scale) + shift), (shift, scale) = modulation + e, all in fp32.

    e is the time_embedding output (before SiLU and time_projection), not the blocks' e0.
    """

    def __init__(self, cfg):
        super().__init__()
        self.eps = cfg.eps
        self.head = nn.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim ** 0.5)

    def forward(self, x, e):
        with fp32_island(x.device):
            m = self.modulation.float().unsqueeze(0) + e.unsqueeze(2)      # (B, S, 2, C)
            shift, scale = m.unbind(2)                                      # 2 x (B, S, C)
            x = layer_norm32(x.float(), eps=self.eps) * (1 + scale) + shift
            return linear32(self.head, x)                                   # (B, S, pt*ph*pw*C_out)


class WanModel(nn.Module):
    """The Wan2.2 TI2V diffusion transformer: forward(x, t, context, seq_len=None) -> v.

    x: (B, C_in, F, H, W). One shared shape per batch (RL rollouts share a shape), simpler than
       the official list of differently-sized latents.
    t: (B, L) per-token timesteps on the 0..1000 scale (image-to-video: 0 on the tokens of latent
       frame 0), (B, S) including padding tokens, or (B,) one timestep for all tokens of a sample.
    context: list of B tensors (Lc_b, text_dim) of true lengths, or a (B, Lt', text_dim) tensor,
       Lt' <= text_len, whose rows beyond each true length are zero. Zero-padded to text_len here.
    seq_len: optional padded token count S > L; padding tokens are masked as attention keys.
    Returns (B, out_dim, F, H, W) float32. Set model.gradient_checkpointing = True to recompute
    each block in backward. RoPE tables are cached per (grid, device), never in the state dict.
    """

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        head_dim = cfg.dim // cfg.num_heads
        if cfg.dim % cfg.num_heads or head_dim % 2 or head_dim < 6:
            raise ValueError(f"DiTConfig: dim {cfg.dim} / num_heads {cfg.num_heads} must give an "
                             f"even head dim >= 6 for the 3-D RoPE split, got "
                             f"{cfg.dim / cfg.num_heads}")
        self.cfg = cfg
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, cfg.patch_size,
                                         stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim),
                                            nn.GELU(approximate="tanh"),
                                            nn.Linear(cfg.dim, cfg.dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(),
                                            nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 6 * cfg.dim))
        self.blocks = nn.ModuleList(WanAttentionBlock(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)
        self.gradient_checkpointing = False
        self._rope_cache = {}        # (grid, seq_len, device) -> (cos, sin); plain dict: not state
        self.init_weights()

    def init_weights(self):
        """The official init (WanModel.init_weights), a no-op on the meta device.

        Xavier Linears, N(0, .02) embeddings and a zero head: a fresh model predicts v = 0.
        """
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.view(self.cfg.dim, -1))
        embeddings = (self.text_embedding[0], self.text_embedding[2],
                      self.time_embedding[0], self.time_embedding[2])
        for m in embeddings:
            nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)

    def time_embed(self, t):
        """Per-token timesteps t (B, S) -> e (B, S, C) for the head, e0 (B, S, 6, C) for the blocks.

        e = time_embedding(sinusoid(t)), e0 = Linear(SiLU(e)), in fp32 (official island). Per
        token, so that frame 0 can sit at t = 0.
        """
        B, S = t.shape
        emb = sinusoidal_embedding(t.flatten(), self.cfg.freq_dim).float()   # (B*S, freq_dim)
        te, tp = self.time_embedding, self.time_projection
        with fp32_island(t.device):
            e = linear32(te[2], F.silu(linear32(te[0], emb)))              # (B*S, C)
            e = e.unflatten(0, (B, S))                                      # (B, S, C)
            e0 = linear32(tp[1], F.silu(e))                                 # (B, S, 6C)
            e0 = e0.unflatten(2, (6, self.cfg.dim))                         # (B, S, 6, C)
        return e, e0

    def embed_text(self, context, device):
        """context (list of (Lc_b, text_dim) or (B, Lt', text_dim)) -> (B, Lt, C).

        Zero rows pad to text_len BEFORE text_embedding: the pads enter cross-attention as
        text_embedding(0), unmasked, as in the official model (and its training).
        """
        cfg = self.cfg
        for i, c in enumerate(context):
            if c.ndim != 2 or c.shape[1] != cfg.text_dim or c.shape[0] > cfg.text_len:
                raise ValueError(f"context[{i}]: expected (Lc <= text_len={cfg.text_len}, "
                                 f"text_dim={cfg.text_dim}), found {tuple(c.shape)}")
        padded = [F.pad(c.to(device), (0, 0, 0, cfg.text_len - len(c))) for c in context]
        ctx = torch.stack(padded)                                           # (B, Lt, text_dim)
        return self.text_embedding(ctx.to(self.text_embedding[0].weight.dtype))   # (B, Lt, C)

    def _check_input(self, x, context):
        """Raise a ValueError naming the shape when x or context do not fit this model."""
        cfg = self.cfg
        pt, ph, pw = cfg.patch_size
        bad_grid = x.ndim != 5 or x.shape[2] % pt or x.shape[3] % ph or x.shape[4] % pw
        if bad_grid or x.shape[1] != cfg.in_dim:
            raise ValueError(f"x: expected (B, in_dim={cfg.in_dim}, F, H, W) with F, H, W "
                             f"multiples of the patch {cfg.patch_size}, found {tuple(x.shape)}")
        if len(context) != x.shape[0]:
            raise ValueError(f"context: expected {x.shape[0]} entries (one per sample), found "
                             f"{len(context)}")

    def _token_timesteps(self, t, B, L, S):
        """t of shape (B,), (B, L) or (B, S) -> (B, S); padding tokens get t = 0 (unused)."""
        if t.ndim == 1 and t.shape[0] == B:
            return t[:, None].expand(B, S)                                  # (B, S)
        if t.ndim == 2 and t.shape[0] == B and t.shape[1] in (L, S):
            return F.pad(t, (0, S - t.shape[1]))                            # (B, S)
        raise ValueError(f"t: expected ({B},), ({B}, L={L}) or ({B}, S={S}), found "
                         f"{tuple(t.shape)}")

    def forward(self, x, t, context, seq_len=None):
        cfg = self.cfg
        self._check_input(x, context)
        pt, ph, pw = cfg.patch_size
        B = x.shape[0]
        grid = (x.shape[2] // pt, x.shape[3] // ph, x.shape[4] // pw)       # (f, h, w)
        L = math.prod(grid)
        S = L if seq_len is None else int(seq_len)
        if S < L:
            raise ValueError(f"seq_len {S} is smaller than the {L} tokens of grid {grid}")

        # tokens: patchify (a strided Conv3d), flatten (f, h, w) row-major, zero vectors pad to S
        x = self.patch_embedding(x.to(self.patch_embedding.weight.dtype))  # (B, C, f, h, w)
        x = F.pad(x.flatten(2).transpose(1, 2), (0, 0, 0, S - L))          # (B, S, C)

        t = self._token_timesteps(t, B, L, S)                               # (B, S)
        e, e0 = self.time_embed(t)                                          # (B, S, C), (B, S, 6, C)
        context = self.embed_text(context, x.device)                        # (B, Lt, C)
        key = (grid, S, str(x.device))                  # rollouts reuse one shape: one entry
        if key not in self._rope_cache:
            cos, sin = rope_cos_sin(grid, cfg.dim // cfg.num_heads, S, x.device)   # float64
            self._rope_cache[key] = (cos.float(), sin.float())              # what apply_rope uses
        cos, sin = self._rope_cache[key]                                    # 2 x (S, D/2)
        # key-padding mask only when there is padding: keeps SDPA on its fused kernels otherwise
        key_mask = None
        if S != L:
            key_mask = (torch.arange(S, device=x.device) < L).view(1, 1, 1, S)

        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, e0, context, cos, sin, key_mask, use_reentrant=False)
            else:
                x = block(x, e0, context, cos, sin, key_mask)               # (B, S, C)
        x = self.head(x, e)[:, :L]                                          # (B, L, pt*ph*pw*C_out)

        # unpatchify: head features are ordered (pt, ph, pw, c), c fastest
        f, h, w = grid
        x = x.reshape(B, f, h, w, pt, ph, pw, cfg.out_dim)                  # (B, f, h, w, pt, ph, pw, C_out)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)                               # (B, C_out, f, pt, h, ph, w, pw)
        return x.reshape(B, cfg.out_dim, f * pt, h * ph, w * pw).float()    # (B, C_out, F, H, W)


# -----------------------------------------------------------------------------
# VAE building blocks (Wan-Video/Wan2.2 wan/modules/vae2_2.py @42bf4cfa). Streaming: every module
# that looks at earlier frames keeps its state in a `cache` dict (keyed by the module) that lives
# for one encode/decode call. A fresh dict = frame 0.

class CausalConv3d(nn.Conv3d):
    """Conv3d padded 2*p_t frames in front only (causal), p on each spatial side.

    The front frames are the previous chunk's last 2*p_t inputs (zeros for the first chunk), so
    chunk-by-chunk equals one causal conv over the whole clip.
    """

    def __init__(self, cin, cout, kernel, stride=1, padding=0):
        super().__init__(cin, cout, kernel, stride=stride)
        p = (padding,) * 3 if isinstance(padding, int) else padding
        self.time_pad = 2 * p[0]
        self.space_pad = (p[2], p[2], p[1], p[1])

    def forward(self, x, cache):
        if self.time_pad:
            prev = cache.get(self)
            if prev is None:
                prev = x.new_zeros(*x.shape[:2], self.time_pad, *x.shape[3:])
            x = torch.cat([prev, x], 2)                                     # (B, C, pad + T, H, W)
            # clone: keep the last 2*p_t frames, not a view that holds the whole chunk alive
            cache[self] = x[:, :, -self.time_pad:].clone()
        return super().forward(F.pad(x, self.space_pad))


class ChannelRMSNorm(nn.Module):
    """y = x / max(||x||_2 over channels, 1e-12) * sqrt(C) * gamma.

    The official RMS_norm: L2-normalize, no mean-square + eps. gamma is (C, 1, 1, 1) for videos,
    (C, 1, 1) per frame.
    """

    def __init__(self, dim, images=False):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim, *((1, 1) if images else (1, 1, 1))))

    def forward(self, x):
        # = F.normalize(x, dim=1) (x / max(||x||, 1e-12)); rsqrt of the clamped sum of squares is
        # 4x faster on CPU than F.normalize's strided norm over dim 1 (equal to ~1e-7)
        inv_norm = torch.rsqrt(x.square().sum(1, keepdim=True).clamp_min(1e-24))
        return x * inv_norm * (x.shape[1] ** 0.5) * self.gamma


class ResidualBlock(nn.Module):
    """x + CausalConv(SiLU(Norm(CausalConv(SiLU(Norm(x)))))).

    The shortcut is a 1x1x1 causal conv when the widths differ.
    """

    def __init__(self, cin, cout):
        super().__init__()
        # indices as in the official nn.Sequential, so the keys are residual.{0,2,3,6}
        self.residual = nn.Sequential(ChannelRMSNorm(cin), nn.SiLU(),
                                      CausalConv3d(cin, cout, 3, padding=1),
                                      ChannelRMSNorm(cout), nn.SiLU(), nn.Dropout(0.0),
                                      CausalConv3d(cout, cout, 3, padding=1))
        self.shortcut = CausalConv3d(cin, cout, 1) if cin != cout else None

    def forward(self, x, cache):
        r = self.residual
        h = r[2](F.silu(r[0](x)), cache)
        h = r[6](F.silu(r[3](h)), cache)                                    # r[5] is Dropout(0)
        shortcut = x if self.shortcut is None else self.shortcut(x, cache)
        return h + shortcut


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W pixels of each frame (time folded into batch)."""

    def __init__(self, dim):
        super().__init__()
        self.norm = ChannelRMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        B, C, T, H, W = x.shape
        h = x.transpose(1, 2).reshape(B * T, C, H, W)                       # (B*T, C, H, W)
        qkv = self.to_qkv(self.norm(h)).flatten(2).transpose(1, 2)          # (B*T, H*W, 3C)
        q, k, v = qkv.unsqueeze(1).chunk(3, dim=-1)                         # 3 x (B*T, 1, H*W, C)
        h = F.scaled_dot_product_attention(q, k, v).squeeze(1)              # (B*T, H*W, C)
        h = self.proj(h.transpose(1, 2).reshape(B * T, C, H, W))            # (B*T, C, H, W)
        return x + h.reshape(B, T, C, H, W).transpose(1, 2)                 # (B, C, T, H, W)


class Resample(nn.Module):
    """Spatial x2 per frame, with a temporal x2 step when `temporal`.

    up: nearest + 3x3 conv; down: pad right/bottom + stride-2 3x3 conv. Both temporal steps keep
    frame 0 alone:
      down: frames x_0..x_{T-1} -> [x_0] + stride-2 valid conv windows (x0,x1,x2), (x2,x3,x4), ...
      up:   x_0 -> x_0; x_1.. -> causal conv (2 zero frames in front, never sees x_0) to 2C
            channels, split into two frames each (first C channels = the earlier frame).
    This is the official chunk loop's behaviour (vae2_2.py Resample, feat_cache) in closed form.
    """

    def __init__(self, dim, up, temporal):
        super().__init__()
        self.up = up
        self.temporal = temporal
        if up:
            spatial = [nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"),
                       nn.Conv2d(dim, dim, 3, padding=1)]
        else:
            spatial = [nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2)]
        self.resample = nn.Sequential(*spatial)
        if temporal and up:          # to 2C channels, 2 zero frames in front
            self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), padding=(1, 0, 0))
        elif temporal:               # stride 2, no padding
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def _temporal_up(self, x, cache):
        """Each frame after frame 0 becomes two (the causal time_conv's 2C channels, split)."""
        first = self not in cache                       # this chunk holds frame 0
        cache[self] = True
        if first:
            x0, x = x[:, :, :1], x[:, :, 1:]
        else:
            x0 = x[:, :, :0]
        if x.shape[2]:
            x = self.time_conv(x, cache)                                    # (B, 2C, T, H, W)
            x = x.unflatten(1, (2, -1)).permute(0, 2, 3, 1, 4, 5)           # (B, C, T, 2, H, W)
            x = x.flatten(2, 3)                                             # (B, C, 2T, H, W)
        return torch.cat([x0, x], 2)

    def _temporal_down(self, x, cache):
        """Frame 0 alone, then stride-2 windows that start at the previous chunk's last frame."""
        prev = cache.get(self)
        cache[self] = x[:, :, -1:].clone()
        if prev is not None:
            return self.time_conv(torch.cat([prev, x], 2), cache)
        if x.shape[2] > 1:
            return torch.cat([x[:, :, :1], self.time_conv(x, cache)], 2)
        return x

    def forward(self, x, cache):
        if self.up and self.temporal:
            x = self._temporal_up(x, cache)
        B, C, T = x.shape[:3]
        x = self.resample(x.transpose(1, 2).flatten(0, 1))                  # (B*T, C, H', W')
        x = x.unflatten(0, (B, T)).transpose(1, 2)                          # (B, C, T, H', W')
        if not self.up and self.temporal:
            x = self._temporal_down(x, cache)
        return x


def avg_down(x, cout, ft, fs):
    """The parameter-free shortcut of an encoder stage (official AvgDown3D).

    Zero frames in front to a multiple of ft, fold each ft x fs x fs block into channels
    (channel-major), average groups of channels down to cout.
    """
    x = F.pad(x, (0, 0, 0, 0, (-x.shape[2]) % ft, 0))
    B, C, T, H, W = x.shape
    x = x.view(B, C, T // ft, ft, H // fs, fs, W // fs, fs)                 # (B, C, T', ft, H', fs, W', fs)
    x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)                                   # (B, C, ft, fs, fs, T', H', W')
    return x.reshape(B, cout, -1, T // ft, H // fs, W // fs).mean(2)        # (B, cout, T', H', W')


def dup_up(x, cout, ft, fs, first):
    """The parameter-free shortcut of a decoder stage (official DupUp3D).

    Repeat channels, unfold them into ft x fs x fs blocks; the chunk holding frame 0 drops its
    first ft - 1 frames (frame 0 maps to one frame).
    """
    B, C, T, H, W = x.shape
    x = x.repeat_interleave(cout * ft * fs * fs // C, dim=1)                # (B, cout*ft*fs*fs, T, H, W)
    x = x.view(B, cout, ft, fs, fs, T, H, W)                                # (B, cout, ft, fs, fs, T, H, W)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)                                   # (B, cout, T, ft, H, fs, W, fs)
    x = x.reshape(B, cout, T * ft, H * fs, W * fs)
    return x[:, :, ft - 1:] if first else x


def middle_blocks(dim):
    """Residual, per-frame attention, residual: the lowest resolution of encoder and decoder."""
    return nn.ModuleList([ResidualBlock(dim, dim), AttentionBlock(dim), ResidualBlock(dim, dim)])


class DownBlock(nn.Module):
    """Encoder stage (official Down_ResidualBlock).

    Residual blocks and an optional Resample, plus the avg_down(x) shortcut.
    """

    def __init__(self, cin, cout, num_blocks, down, temporal):
        super().__init__()
        layers = [ResidualBlock(cin if i == 0 else cout, cout) for i in range(num_blocks)]
        if down:
            layers.append(Resample(cout, up=False, temporal=temporal))
        self.downsamples = nn.ModuleList(layers)
        self.cout = cout
        self.ft = 2 if temporal else 1
        self.fs = 2 if down else 1

    def forward(self, x, cache):
        h = x
        for m in self.downsamples:
            h = m(h, cache)
        return h + avg_down(x, self.cout, self.ft, self.fs)


class UpBlock(nn.Module):
    """Decoder stage (official Up_ResidualBlock).

    Residual blocks and an optional Resample, plus the dup_up(x) shortcut if it upsamples (the
    last stage has no shortcut at all).
    """

    def __init__(self, cin, cout, num_blocks, up, temporal):
        super().__init__()
        layers = [ResidualBlock(cin if i == 0 else cout, cout) for i in range(num_blocks)]
        if up:
            layers.append(Resample(cout, up=True, temporal=temporal))
        self.upsamples = nn.ModuleList(layers)
        self.up = up
        self.cout = cout
        self.ft = 2 if temporal else 1

    def forward(self, x, cache):
        h = x
        for m in self.upsamples:
            h = m(h, cache)
        if not self.up:
            return h
        first = self not in cache
        cache[self] = True
        return h + dup_up(x, self.cout, self.ft, 2, first)


class Encoder3d(nn.Module):
    """(B, 12, T, H, W) patchified video -> (B, 2*z_dim, 1 + (T-1)/4, H/8, W/8): mu and log-var."""

    def __init__(self, cfg):
        super().__init__()
        dims = [cfg.dim * m for m in (1, *cfg.dim_mult)]         # 5B: 160, 160, 320, 640, 640
        n = len(cfg.dim_mult)
        temporal = list(cfg.temperal_downsample) + [False] * n
        self.conv1 = CausalConv3d(12, dims[0], 3, padding=1)
        self.downsamples = nn.ModuleList(
            DownBlock(dims[i], dims[i + 1], cfg.num_res_blocks, down=i != n - 1,
                      temporal=i != n - 1 and temporal[i])
            for i in range(n))
        self.middle = middle_blocks(dims[-1])
        self.head = nn.Sequential(ChannelRMSNorm(dims[-1]), nn.SiLU(),
                                  CausalConv3d(dims[-1], 2 * cfg.z_dim, 3, padding=1))

    def forward(self, x, cache):
        x = self.conv1(x, cache)
        for stage in self.downsamples:
            x = stage(x, cache)
        x = self.middle[2](self.middle[1](self.middle[0](x, cache)), cache)
        return self.head[2](F.silu(self.head[0](x)), cache)


class Decoder3d(nn.Module):
    """(B, z_dim, T, h, w) -> (B, 12, 4T-3, 8h, 8w) patchified video (before unpatchify)."""

    def __init__(self, cfg):
        super().__init__()
        mults = (cfg.dim_mult[-1], *cfg.dim_mult[::-1])
        dims = [cfg.dec_dim * m for m in mults]            # 5B: 1024, 1024, 1024, 512, 256
        n = len(cfg.dim_mult)
        temporal_up = list(cfg.temperal_downsample)[::-1] + [False] * n
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = middle_blocks(dims[0])
        self.upsamples = nn.ModuleList(
            UpBlock(dims[i], dims[i + 1], cfg.num_res_blocks + 1, up=i != n - 1,
                    temporal=i != n - 1 and temporal_up[i])
            for i in range(n))
        self.head = nn.Sequential(ChannelRMSNorm(dims[-1]), nn.SiLU(),
                                  CausalConv3d(dims[-1], 12, 3, padding=1))

    def forward(self, x, cache):
        x = self.conv1(x, cache)
        x = self.middle[2](self.middle[1](self.middle[0](x, cache)), cache)
        for stage in self.upsamples:
            x = stage(x, cache)
        return self.head[2](F.silu(self.head[0](x)), cache)


def patchify(x):
    """(B, 3, F, H, W) -> (B, 12, F, H/2, W/2); channel = c*4 + r*2 + q.

    q is the row (h) offset and r the column (w) offset (official einops
    'b c f (h q) (w r) -> b (c r q) f h w').
    """
    B, C, T, H, W = x.shape
    x = x.view(B, C, T, H // 2, 2, W // 2, 2)                               # (B, C, T, h, q, w, r)
    x = x.permute(0, 1, 6, 4, 2, 3, 5)                                      # (B, C, r, q, T, h, w)
    return x.reshape(B, C * 4, T, H // 2, W // 2)


def unpatchify(x):
    """Inverse of patchify: (B, 12, F, h, w) -> (B, 3, F, 2h, 2w)."""
    B, C4, T, h, w = x.shape
    x = x.view(B, C4 // 4, 2, 2, T, h, w)                                   # (B, C, r, q, T, h, w)
    x = x.permute(0, 1, 4, 5, 3, 6, 2)                                      # (B, C, T, h, q, w, r)
    return x.reshape(B, C4 // 4, T, h * 2, w * 2)


# the official per-channel latent statistics (Wan-Video/Wan2.2 wan/modules/vae2_2.py @42bf4cfa,
# Wan2_2_VAE.__init__)
WAN22_LATENT_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)
WAN22_LATENT_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)


def _chunk_cuts(T, chunk):
    """Frame boundaries of a streamed pass: [0, 1, 1 + chunk, ..., T].

    Frame 0 alone, then chunks; chunk None = one piece [0, T].
    """
    if chunk is None:
        return [0, T]
    return [0, *range(1, T, chunk), T]


class WanVAE(nn.Module):
    """The Wan2.2 VAE: encode(video) -> normalized latent, decode(latent) -> video in [-1, 1].

    Streams over time (frame 0 alone, then `chunk` frames at a time) through the causal cache, so
    activation memory does not grow with the clip; chunk=None = one piece, same numbers. No
    no_grad, in-place op or detached cache inside: the tiny VAE trains by backprop through encode
    and decode(z, clamp=False). Latents are normalized z = (mu - mean) / std per channel with
    plain attributes, not state (the official .pth has none): the official 48 values when
    z_dim == 48, else 0 / 1; set_latent_stats(mean, std) sets measured ones (save them beside the
    weights).
    """

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder3d(cfg)
        self.conv1 = CausalConv3d(2 * cfg.z_dim, 2 * cfg.z_dim, 1)
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)
        self.decoder = Decoder3d(cfg)
        if cfg.z_dim == len(WAN22_LATENT_MEAN):
            self.set_latent_stats(WAN22_LATENT_MEAN, WAN22_LATENT_STD)
        else:
            self.set_latent_stats([0.0] * cfg.z_dim, [1.0] * cfg.z_dim)

    def set_latent_stats(self, mean, std):
        """Set the z_dim per-channel means and stds of the raw encoder means (mu).

        encode and decode normalize with them.
        """
        mean = [float(v) for v in mean]
        std = [float(v) for v in std]
        z = self.cfg.z_dim
        if len(mean) != z or len(std) != z or min(std) <= 0:
            raise ValueError(f"latent stats: expected {z} means and {z} positive stds, found "
                             f"{len(mean)} and {len(std)} (min std {min(std, default=None)})")
        self.latent_mean = tuple(mean)
        self.latent_std = tuple(std)

    def _stats(self, device):
        """float32 mean and 1/std, (1, z_dim, 1, 1, 1) each: the official scale = [mean, 1/std]."""
        mean = torch.tensor(self.latent_mean, dtype=torch.float32, device=device)
        std = torch.tensor(self.latent_std, dtype=torch.float32, device=device)
        return mean.view(1, -1, 1, 1, 1), 1.0 / std.view(1, -1, 1, 1, 1)

    def encode(self, video, chunk=4):
        """video (B, 3, F, H, W) in [-1, 1] -> latent (B, z_dim, k+1, H/16, W/16), normalized.

        F = 4k+1, H and W multiples of 16. chunk: video frames per step after frame 0 (a multiple
        of 4; the official loop uses 4), or None for one piece. The log-variance half of the
        encoder output is discarded: the latent is the deterministic mean.
        """
        bad_frames = video.ndim != 5 or video.shape[1] != 3 or video.shape[2] % 4 != 1
        if bad_frames or any(n % 16 for n in video.shape[3:]):
            raise ValueError(f"video: expected (B, 3, F, H, W), F = 4k+1 frames, H, W multiples "
                             f"of 16, found {tuple(video.shape)}")
        if chunk is not None and (chunk < 4 or chunk % 4):
            raise ValueError(f"encode chunk: expected a positive multiple of 4 frames or None, "
                             f"found {chunk}")
        cuts = _chunk_cuts(video.shape[2], chunk)
        x = patchify(video.to(self.conv1.weight.dtype))                     # (B, 12, F, H/2, W/2)
        cache = {}
        pieces = [self.encoder(x[:, :, a:b], cache) for a, b in zip(cuts[:-1], cuts[1:])]
        mu = self.conv1(torch.cat(pieces, 2), cache)[:, :self.cfg.z_dim]    # (B, z_dim, k+1, H/16, W/16)
        mean, inv_std = self._stats(mu.device)
        return (mu - mean) * inv_std

    def decode(self, latent, clamp=True, chunk=1):
        """latent (B, z_dim, T, h, w) -> video (B, 3, 4T-3, 16h, 16w).

        Clamped to [-1, 1] unless clamp=False (for training). chunk: latent frames per step
        after frame 0 (the official loop uses 1), or None for one piece.
        """
        if latent.ndim != 5 or latent.shape[1] != self.cfg.z_dim:
            raise ValueError(f"latent: expected (B, z_dim={self.cfg.z_dim}, T, h, w), found "
                             f"{tuple(latent.shape)}")
        if chunk is not None and chunk < 1:
            raise ValueError(f"decode chunk: expected >= 1 latent frames or None, found {chunk}")
        cuts = _chunk_cuts(latent.shape[2], chunk)
        mean, inv_std = self._stats(latent.device)
        cache = {}
        raw = latent.float() / inv_std + mean
        z = self.conv2(raw.to(self.conv2.weight.dtype), cache)
        pieces = [unpatchify(self.decoder(z[:, :, a:b], cache))
                  for a, b in zip(cuts[:-1], cuts[1:])]
        out = torch.cat(pieces, 2)                                          # (B, 3, 4T-3, 16h, 16w)
        return out.clamp(-1, 1) if clamp else out


# -----------------------------------------------------------------------------
# umT5 encoder (Wan-Video/Wan2.2 wan/modules/t5.py @42bf4cfa, umt5_xxl(encoder_only=True))

def relative_position_bucket(length, num_buckets, max_dist=128, device=None):
    """Bidirectional T5 bucket of rel = key - query: (length, length) int64.

    As the official T5RelativeEmbedding._relative_position_bucket, with its float32 log:
    nb = num_buckets/2 buckets per sign, exact ones below e = nb/2, log-spaced ones up to max_dist:
        bucket = nb * [rel > 0] + b(|rel|),   b(n) = n                                   if n < e
                                              b(n) = min(nb - 1, e + floor(ln(n / e)
                                                     / ln(max_dist / e) * (nb - e)))     otherwise
    """
    pos = torch.arange(length, device=device)
    rel = pos[None, :] - pos[:, None]                                       # (Lq, Lk)
    nb = num_buckets // 2
    exact = nb // 2
    n = rel.abs()
    log_ratio = torch.log(n.clamp(min=1).float() / exact) / math.log(max_dist / exact)
    large = exact + (log_ratio * (nb - exact)).long()
    return (rel > 0).long() * nb + torch.where(n < exact, n, large.clamp(max=nb - 1))


class T5Block(nn.Module):
    """Pre-norm umT5 layer with its own relative-position bias.

        x = x + o(softmax(q k^T + bias) v)     (no 1/sqrt(d): T5 folds it into the init)
        x = x + fc2(fc1(h) * GELU_tanh(gate(h))),   h = RMSNorm(x)
    Padded keys get bias = finfo.min (replacing the position bias), softmax in fp32. Dropout is
    left out: the encoder only runs in eval.
    """

    def __init__(self, cfg):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.num_buckets = cfg.num_buckets
        self.norm1 = RMSNorm(cfg.dim)
        self.attn = nn.ModuleDict({n: nn.Linear(cfg.dim, cfg.dim_attn, bias=False) for n in "qkv"})
        self.attn.o = nn.Linear(cfg.dim_attn, cfg.dim, bias=False)
        self.norm2 = RMSNorm(cfg.dim)
        gate = nn.Sequential(nn.Linear(cfg.dim, cfg.dim_ffn, bias=False),
                             nn.GELU(approximate="tanh"))
        self.ffn = nn.ModuleDict(dict(gate=gate,
                                      fc1=nn.Linear(cfg.dim, cfg.dim_ffn, bias=False),
                                      fc2=nn.Linear(cfg.dim_ffn, cfg.dim, bias=False)))
        embedding = nn.Embedding(cfg.num_buckets, cfg.num_heads)
        self.pos_embedding = nn.ModuleDict(dict(embedding=embedding))

    def forward(self, x, mask):
        B, L, _ = x.shape
        buckets = relative_position_bucket(L, self.num_buckets, device=x.device)
        bias = self.pos_embedding.embedding(buckets).permute(2, 0, 1)[None]  # (1, N, L, L)
        bias = bias.to(x.dtype).masked_fill(mask.view(B, 1, 1, L) == 0,
                                            torch.finfo(x.dtype).min)        # (B, N, L, L)
        h = self.norm1(x)
        q, k, v = (self.attn[n](h).unflatten(2, (self.num_heads, -1)) for n in "qkv")  # 3 x (B, L, N, d)
        logits = torch.einsum("binc,bjnc->bnij", q, k) + bias               # (B, N, L, L)
        p = F.softmax(logits.float(), dim=-1).type_as(logits)
        attended = torch.einsum("bnij,bjnc->binc", p, v).flatten(2)          # (B, L, dim_attn)
        x = x + self.attn.o(attended)                                       # (B, L, dim)
        h = self.norm2(x)
        return x + self.ffn.fc2(self.ffn.fc1(h) * self.ffn.gate(h))


class T5Encoder(nn.Module):
    """umT5 encoder: forward(ids (B, L) int64, mask (B, L) 1 = token / 0 = pad) -> (B, L, dim)."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab, cfg.dim)
        self.blocks = nn.ModuleList(T5Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.dim)
        # default init: real weights come from the checkpoint, the tiny encoder is random and frozen

    def forward(self, ids, mask):
        if ids.shape != mask.shape or ids.ndim != 2:
            raise ValueError(f"ids, mask: expected one (B, L) shape, found {tuple(ids.shape)}, "
                             f"{tuple(mask.shape)}")
        x = self.token_embedding(ids)                                       # (B, L, dim)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)


BYTE_PAD = 0        # byte tokenizer ids: 0 pad,
BYTE_EOS = 1        # 1 end of text,
BYTE_OFFSET = 2     # 2 + byte value


def byte_tokenize(prompts, text_len):
    """The tiny config's tokenizer: prompts -> ids, mask (B, text_len) int64.

    UTF-8 bytes + BYTE_OFFSET, then EOS, truncated to text_len (EOS kept last), padded with
    BYTE_PAD. Vocab = 256 + 2.
    """
    rows = []
    for p in prompts:
        body = [b + BYTE_OFFSET for b in p.encode("utf-8")][:text_len - 1]
        rows.append(body + [BYTE_EOS])
    ids = torch.tensor([r + [BYTE_PAD] * (text_len - len(r)) for r in rows], dtype=torch.long)
    mask = torch.tensor([[1] * len(r) + [0] * (text_len - len(r)) for r in rows], dtype=torch.long)
    return ids, mask


class TextEncoder:
    """encode(prompts: list[str]) -> list of (Lc, dim) umT5 features, one per prompt.

    Each is trimmed to its true length (Lc counts the EOS) and left where computed. Each distinct
    prompt is encoded once and cached, so the encoder can leave the GPU once a run's prompts are
    known. tokenizer_file: a HuggingFace tokenizer.json (real umT5, via the optional `tokenizers`
    package); None = byte_tokenize (tiny).
    """

    def __init__(self, model: T5Encoder, text_len: int, tokenizer_file=None):
        self.model = model
        self.text_len = text_len
        self.cache = {}
        self.tokenizer = None
        if tokenizer_file is not None:
            try:
                from tokenizers import Tokenizer
            except ImportError as e:
                raise ImportError("the real umT5 tokenizer needs the `tokenizers` package: "
                                  "pip install tokenizers (or this project's [umt5] extra)") from e
            self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
            pad = self.tokenizer.token_to_id("<pad>")
            self.tokenizer.enable_truncation(text_len)             # counts the </s> it appends
            self.tokenizer.enable_padding(length=text_len, pad_id=0 if pad is None else pad)

    def tokenize(self, prompts):
        """prompts -> ids, mask (B, text_len) int64."""
        if self.tokenizer is None:
            return byte_tokenize(prompts, self.text_len)
        # the official 'whitespace' cleaning: html-unescape twice, collapse whitespace runs, strip
        # (its ftfy.fix_text, which only repairs mojibake, is left out: one dependency fewer)
        clean = [re.sub(r"\s+", " ", html.unescape(html.unescape(p))).strip() for p in prompts]
        enc = self.tokenizer.encode_batch(clean, add_special_tokens=True)
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
        return ids, mask

    @torch.no_grad()
    def encode(self, prompts):
        new = list(dict.fromkeys(p for p in prompts if p not in self.cache))
        if new:
            ids, mask = self.tokenize(new)
            device = self.model.token_embedding.weight.device
            out = self.model(ids.to(device), mask.to(device))                  # (B, text_len, dim)
            for p, o, k in zip(new, out, mask.sum(1).tolist()):
                self.cache[p] = o[:k].clone()
        return [self.cache[p] for p in prompts]


# -----------------------------------------------------------------------------
# checkpoint loading: build on meta, assign memory-mapped tensors file by file, strict key check

NATIVE_DIT = "diffusion_pytorch_model"
NATIVE_VAE = "Wan2.2_VAE.pth"
NATIVE_T5 = "models_t5_umt5-xxl-enc-bf16.pth"
NATIVE_TOKENIZER = "google/umt5-xxl/tokenizer.json"

# native -> -Diffusers names (huggingface/diffusers scripts/convert_wan_to_diffusers.py @58eb52c0;
# transformers' UMT5EncoderModel names for the text encoder). Applied in order with re.sub;
# tests check them against the full-size maps in tests/fixtures/*_native_to_*.json, which the
# fixture generator verified against the diffusers and transformers classes.
DIT_TO_DIFFUSERS = [
    (r"^text_embedding\.0\.", "condition_embedder.text_embedder.linear_1."),
    (r"^text_embedding\.2\.", "condition_embedder.text_embedder.linear_2."),
    (r"^time_embedding\.0\.", "condition_embedder.time_embedder.linear_1."),
    (r"^time_embedding\.2\.", "condition_embedder.time_embedder.linear_2."),
    (r"^time_projection\.1\.", "condition_embedder.time_proj."),
    (r"^head\.modulation$", "scale_shift_table"),
    (r"^head\.head\.", "proj_out."),
    (r"\.modulation$", ".scale_shift_table"),
    (r"\.self_attn\.", ".attn1."),
    (r"\.cross_attn\.", ".attn2."),
    (r"\.attn(\d)\.([qkv])\.", r".attn\1.to_\2."),
    (r"\.attn(\d)\.o\.", r".attn\1.to_out.0."),
    (r"\.norm3\.", ".norm2."),                     # diffusers calls the pre-cross-attn LN norm2
    (r"\.ffn\.0\.", ".ffn.net.0.proj."),
    (r"\.ffn\.2\.", ".ffn.net.2."),
]
VAE_TO_DIFFUSERS = [
    (r"^(en|de)coder\.conv1\.", r"\1coder.conv_in."),
    (r"^conv1\.", "quant_conv."),
    (r"^conv2\.", "post_quant_conv."),
    (r"^(en|de)coder\.middle\.0\.", r"\1coder.mid_block.resnets.0."),
    (r"^(en|de)coder\.middle\.1\.", r"\1coder.mid_block.attentions.0."),
    (r"^(en|de)coder\.middle\.2\.", r"\1coder.mid_block.resnets.1."),
    (r"^(en|de)coder\.head\.0\.", r"\1coder.norm_out."),
    (r"^(en|de)coder\.head\.2\.", r"\1coder.conv_out."),
    (r"^encoder\.downsamples\.(\d+)\.downsamples\.\d+\.(resample|time_conv)",
     r"encoder.down_blocks.\1.downsampler.\2"),
    (r"^encoder\.downsamples\.(\d+)\.downsamples\.", r"encoder.down_blocks.\1.resnets."),
    (r"^decoder\.upsamples\.(\d+)\.upsamples\.\d+\.(resample|time_conv)",
     r"decoder.up_blocks.\1.upsampler.\2"),
    (r"^decoder\.upsamples\.(\d+)\.upsamples\.", r"decoder.up_blocks.\1.resnets."),
    (r"\.residual\.0\.", ".norm1."),
    (r"\.residual\.2\.", ".conv1."),
    (r"\.residual\.3\.", ".norm2."),
    (r"\.residual\.6\.", ".conv2."),
    (r"\.shortcut\.", ".conv_shortcut."),
]
T5_TO_HF = [   # (native gate = wi_0 is the GELU branch, fc1 = wi_1 the linear one)
    (r"^token_embedding\.", "shared."),
    (r"^norm\.", "encoder.final_layer_norm."),
    (r"^blocks\.", "encoder.block."),
    (r"\.norm1\.", ".layer.0.layer_norm."),
    (r"\.attn\.", ".layer.0.SelfAttention."),
    (r"\.norm2\.", ".layer.1.layer_norm."),
    (r"\.pos_embedding\.embedding\.", ".layer.0.SelfAttention.relative_attention_bias."),
    (r"\.ffn\.gate\.0\.", ".layer.1.DenseReluDense.wi_0."),
    (r"\.ffn\.fc1\.", ".layer.1.DenseReluDense.wi_1."),
    (r"\.ffn\.fc2\.", ".layer.1.DenseReluDense.wo."),
]
T5_HF_ALIASES = {"encoder.embed_tokens.weight": "shared.weight"}     # HF ties (and may save) both


def rename_key(key, rules):
    """`key` after each (pattern, replacement) of `rules`, applied in order with re.sub."""
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def _open_weights(path):
    """(shapes {key: shape}, get(key) -> tensor) of a weights file, without reading the data.

    .safetensors through safe_open (memory-mapped), .pth through torch.load(mmap=True,
    weights_only=True).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            f = safe_open(str(path), framework="pt")
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}, f.get_tensor
        sd = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:   # the readers' errors name neither the file nor a truncation
        raise ValueError(f"{path}: cannot read the weights, the file is truncated or corrupt "
                         f"({type(e).__name__}: {e})") from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: expected a state dict (a dict of tensors), found "
                         f"{type(sd).__name__}")
    return {k: tuple(v.shape) for k, v in sd.items()}, sd.__getitem__


def _key_errors(expected, found, file_key, duplicate):
    """{title: rows} of every key problem: missing, unexpected, misshaped, duplicate."""
    missing = []
    misshaped = []
    for k, shape in expected.items():
        fk = file_key[k]
        if fk not in found:
            renamed = f" (as {fk})" if fk != k else ""
            missing.append(f"  {k} {list(shape)}{renamed}")
        elif found[fk][1] != shape:
            path, found_shape, _ = found[fk]
            misshaped.append(f"  {k}: expected {list(shape)}, found {list(found_shape)} in {path}")
    wanted = set(file_key.values())
    unexpected = [f"  {k} {list(s)} in {p}" for k, (p, s, _) in found.items() if k not in wanted]
    return {"missing keys": missing, "unexpected keys": unexpected,
            "misshaped keys": misshaped, "duplicate keys": duplicate}


def load_weights(model, paths, rules=(), aliases=None, dtype=None, device="cpu"):
    """Fill a meta-built `model` from weights files, strictly.

    Every key present, none extra or twice, shapes equal (file keys = rename_key(own key,
    rules)); otherwise a ValueError lists every problem with its file. One file at a time, each
    tensor is cast to `dtype` and moved to `device` straight out of the memory map (no copy when
    neither changes) and the file is released before the next: peak host memory stays near one
    copy of the weights.
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {}                                  # file key -> (path, shape, key inside that file)
    duplicate = []
    for p in paths:
        for k, s in _open_weights(p)[0].items():
            if k in found:
                duplicate.append(f"  {k} in {found[k][0]} and {p}")
            found[k] = (p, s, k)
    for alias, name in (aliases or {}).items():        # a tied duplicate is fine, as is either name
        if alias in found:
            found.setdefault(name, found.pop(alias))
    file_key = {k: rename_key(k, rules) for k in expected}
    errors = _key_errors(expected, found, file_key, duplicate)
    if any(errors.values()):
        files = ", ".join(map(str, paths))
        msg = [f"weights do not fit {type(model).__name__}({model.cfg}) (files: {files})"]
        for title, rows in errors.items():
            if not rows:
                continue
            msg.append(f"{title} ({len(rows)}):")
            msg.extend(rows[:40])
            if len(rows) > 40:
                msg.append(f"  ... {len(rows) - 40} more")
        raise ValueError("\n".join(msg))
    state = {}
    for p in paths:
        get = _open_weights(p)[1]
        for k in expected:
            path, _, inner_key = found[file_key[k]]
            if path == p:
                state[k] = get(inner_key).to(device=device, dtype=dtype)
        del get                                 # unmaps this file unless tensors still view it
    model.load_state_dict(state, strict=True, assign=True)
    return model


def _safetensors_files(folder, stem):
    """stem.safetensors.index.json (sharded) or stem.safetensors (single file) -> list of paths."""
    index, single = folder / f"{stem}.safetensors.index.json", folder / f"{stem}.safetensors"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        for s in shards:
            if not (folder / s).is_file():
                raise FileNotFoundError(f"{folder / s}: shard listed in {index} not found")
        return [folder / s for s in shards]
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"{folder}: no weights, looked for {index.name} and {single.name}")


def _read_json(path):
    """The parsed JSON file at `path`, or a ValueError that names the file."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read the config ({e})") from e


def _require(path, config, key, expected, default=None):
    """Raise a ValueError naming `path` and `key` when config[key] differs from `expected`.

    An absent key counts as `default`. A setting this port does not implement must not load
    silently into the wrong model.
    """
    found = config.get(key, default)
    if isinstance(found, list):
        found = tuple(found)
    if found != expected:
        raise ValueError(f"{path}: {key} = {found!r}, but this port implements only {expected!r}")


# The structure WanTransformer3DModel must have to be the Wan2.2 TI2V DiT (diffusers
# src/diffusers/models/transformers/transformer_wan.py WanTransformer3DModel.__init__ arguments;
# absent keys take diffusers' defaults, listed second)
DIFFUSERS_DIT_FIXED = {
    "qk_norm": ("rms_norm_across_heads", "rms_norm_across_heads"),
    "cross_attn_norm": (True, True),
    "image_dim": (None, None),
    "added_kv_proj_dim": (None, None),
    "pos_embed_seq_len": (None, None),
}
# The umT5 settings T5Encoder hard-codes (transformers models/umt5/configuration_umt5.py names;
# the umt5_xxl() values of Wan-Video/Wan2.2 wan/modules/t5.py @42bf4cfa: max distance 128,
# norm eps 1e-6, gated GELU-tanh FFN)
HF_UMT5_FIXED = {
    "relative_attention_max_distance": (128, 128),
    "layer_norm_epsilon": (1e-6, 1e-6),
    "feed_forward_proj": ("gated-gelu", "gated-gelu"),
}


def dit_config_from_diffusers(path):
    """transformer/config.json of a -Diffusers folder -> DiTConfig.

    diffusers keeps no text_len (the pipeline's max_sequence_length, 512 by default);
    export_diffusers writes ours as "_text_len", a private key diffusers' ConfigMixin skips.
    """
    c = _read_json(path)
    for key, (expected, default) in DIFFUSERS_DIT_FIXED.items():
        _require(path, c, key, expected, default)
    return DiTConfig(dim=c["num_attention_heads"] * c["attention_head_dim"],
                     ffn_dim=c["ffn_dim"],
                     freq_dim=c["freq_dim"],
                     num_heads=c["num_attention_heads"],
                     num_layers=c["num_layers"],
                     in_dim=c["in_channels"],
                     out_dim=c["out_channels"],
                     text_len=c.get("_text_len", 512),
                     text_dim=c["text_dim"],
                     patch_size=tuple(c["patch_size"]),
                     eps=c["eps"])


def vae_config_from_diffusers(path):
    """vae/config.json of a -Diffusers folder -> (VAEConfig, (latents_mean, latents_std) or None).

    "decoder_base_dim": null (or absent) means the decoder has the encoder's width, as in
    diffusers' AutoencoderKLWan.__init__ (models/autoencoders/autoencoder_kl_wan.py).
    """
    c = _read_json(path)
    if not c.get("is_residual", False):
        raise ValueError(f"{path}: not the Wan2.2 VAE (is_residual is not true)")
    _require(path, c, "patch_size", 2)
    _require(path, c, "in_channels", 12, 3)
    _require(path, c, "attn_scales", (), ())
    dec_dim = c.get("decoder_base_dim")
    cfg = VAEConfig(dim=c["base_dim"],
                    dec_dim=c["base_dim"] if dec_dim is None else dec_dim,
                    z_dim=c["z_dim"],
                    dim_mult=tuple(c["dim_mult"]),
                    num_res_blocks=c["num_res_blocks"],
                    temperal_downsample=tuple(c["temperal_downsample"]))
    stats = (c["latents_mean"], c["latents_std"]) if "latents_mean" in c else None
    return cfg, stats


def t5_config_from_hf(path):
    """text_encoder/config.json (transformers UMT5Config) -> T5Config.

    Settings T5Encoder does not implement raise a ValueError naming the key.
    """
    c = _read_json(path)
    for key, (expected, default) in HF_UMT5_FIXED.items():
        _require(path, c, key, expected, default)
    return T5Config(vocab=c["vocab_size"],
                    dim=c["d_model"],
                    dim_attn=c["d_kv"] * c["num_heads"],
                    dim_ffn=c["d_ff"],
                    num_heads=c["num_heads"],
                    num_layers=c["num_layers"],
                    num_buckets=c["relative_attention_num_buckets"])


def _native_dit_config(d):
    """The native release's config.json (official WanModel argument names) -> DiTConfig.

    Fields it lacks keep the 5B values.
    """
    c = _read_json(d / "config.json")
    cfg = DiTConfig(**{f.name: c[f.name] for f in fields(DiTConfig) if f.name in c})
    cfg.patch_size = tuple(cfg.patch_size)
    return cfg


def load_pretrained(ckpt_dir, dtype=torch.float32, device="cpu", text_dtype=torch.bfloat16,
                    dit_cfg=None, vae_cfg=None, t5_cfg=None):
    """A released Wan2.2-TI2V-5B folder, native or -Diffusers -> (WanModel, WanVAE, TextEncoder).

    dtype: the DiT weights (released in fp32; bf16 halves memory); the VAE stays fp32 as in the
    official code; text_dtype: the umT5 weights (shipped in bf16). Configs are read where the
    release has them (native config.json: official field names, missing ones = the 5B values;
    -Diffusers: transformer/, vae/, text_encoder/ config.json, without text_len, so 512), else the
    5B presets; pass dit_cfg / vae_cfg / t5_cfg to override (e.g. for tiny test folders).
    """
    d = Path(ckpt_dir)
    diffusers = (d / "model_index.json").is_file() or (d / "transformer").is_dir()
    native = (d / "config.json").is_file() or list(d.glob(f"{NATIVE_DIT}*.safetensors*"))
    if not diffusers and not native:
        raise FileNotFoundError(
            f"{d} is not a Wan2.2-TI2V-5B checkpoint folder: looked for the native layout "
            f"(config.json, {NATIVE_DIT}.safetensors[.index.json], {NATIVE_VAE}, {NATIVE_T5}, "
            f"{NATIVE_TOKENIZER}) and for the -Diffusers layout (model_index.json, "
            f"transformer/, vae/, text_encoder/, tokenizer/)")
    stats = None
    if diffusers:
        dit_cfg = dit_cfg or dit_config_from_diffusers(d / "transformer" / "config.json")
        found_vae_cfg, stats = vae_config_from_diffusers(d / "vae" / "config.json")
        vae_cfg = vae_cfg or found_vae_cfg
        t5_cfg = t5_cfg or t5_config_from_hf(d / "text_encoder" / "config.json")
        files = (_safetensors_files(d / "transformer", NATIVE_DIT),
                 _safetensors_files(d / "vae", NATIVE_DIT),
                 _safetensors_files(d / "text_encoder", "model"))
        rules = (DIT_TO_DIFFUSERS, VAE_TO_DIFFUSERS, T5_TO_HF)
        tokenizer = d / "tokenizer" / "tokenizer.json"
    else:
        dit_cfg = dit_cfg or _native_dit_config(d)
        vae_cfg = vae_cfg or VAE_CONFIGS["5b"]            # the native release ships no VAE config
        t5_cfg = t5_cfg or T5_CONFIGS["5b"]               # nor a umT5 one
        files = (_safetensors_files(d, NATIVE_DIT), [d / NATIVE_VAE], [d / NATIVE_T5])
        rules = ([], [], [])
        tokenizer = d / NATIVE_TOKENIZER
    if not tokenizer.is_file():
        raise FileNotFoundError(
            f"{tokenizer}: tokenizer not found (the umT5 tokenizer.json of the release)")
    with torch.device("meta"):
        dit, vae, t5 = WanModel(dit_cfg), WanVAE(vae_cfg), T5Encoder(t5_cfg)
    if stats:
        vae.set_latent_stats(*stats)
    load_weights(dit, files[0], rules[0], dtype=dtype, device=device)
    load_weights(vae, files[1], rules[1], dtype=torch.float32, device=device)
    load_weights(t5, files[2], rules[2], aliases=T5_HF_ALIASES, dtype=text_dtype, device=device)
    return dit, vae, TextEncoder(t5.eval(), dit_cfg.text_len, tokenizer_file=tokenizer)


# -----------------------------------------------------------------------------
# export: our weights in the -Diffusers layout, for diffusers' WanPipeline

def _write_component(folder, config, state, rules, stem):
    """config.json and stem.safetensors (keys renamed by `rules`) into `folder`."""
    from safetensors.torch import save_file
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    renamed = {rename_key(k, rules): v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(renamed, str(folder / f"{stem}.safetensors"))


def export_diffusers(folder, dit, vae=None):
    """Write `dit` (and `vae` if given) in the Wan2.2-TI2V-5B-Diffusers layout.

    folder/transformer/ loads with diffusers' WanTransformer3DModel.from_pretrained and
    folder/vae/ with AutoencoderKLWan.from_pretrained (config keys of their __init__ in
    src/diffusers/models/transformers/transformer_wan.py and
    src/diffusers/models/autoencoders/autoencoder_kl_wan.py). Weights keep their dtype (load
    with torch_dtype=... to change it). The text encoder, tokenizer and scheduler are the
    released ones (we never train them): copy text_encoder/, tokenizer/, scheduler/ and
    model_index.json from the base release to make a complete pipeline folder. Our text_len is
    kept as "_text_len" (ignored by diffusers; pass it as the pipeline's max_sequence_length).
    """
    folder = Path(folder)
    cfg = dit.cfg
    dit_config = {
        "_class_name": "WanTransformer3DModel",
        "_text_len": cfg.text_len,
        "patch_size": list(cfg.patch_size),
        "num_attention_heads": cfg.num_heads,
        "attention_head_dim": cfg.dim // cfg.num_heads,
        "in_channels": cfg.in_dim,
        "out_channels": cfg.out_dim,
        "text_dim": cfg.text_dim,
        "freq_dim": cfg.freq_dim,
        "ffn_dim": cfg.ffn_dim,
        "num_layers": cfg.num_layers,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": cfg.eps,
        "image_dim": None,
        "added_kv_proj_dim": None,
        "rope_max_seq_len": 1024,
        "pos_embed_seq_len": None,
    }
    _write_component(folder / "transformer", dit_config, dit.state_dict(), DIT_TO_DIFFUSERS,
                     NATIVE_DIT)
    if vae is None:
        return folder
    v = vae.cfg
    vae_config = {
        "_class_name": "AutoencoderKLWan",
        "base_dim": v.dim,
        "decoder_base_dim": v.dec_dim,
        "z_dim": v.z_dim,
        "dim_mult": list(v.dim_mult),
        "num_res_blocks": v.num_res_blocks,
        "attn_scales": [],
        "temperal_downsample": list(v.temperal_downsample),
        "dropout": 0.0,
        "latents_mean": list(vae.latent_mean),
        "latents_std": list(vae.latent_std),
        "is_residual": True,
        "in_channels": 12,
        "out_channels": 12,
        "patch_size": 2,
        "scale_factor_temporal": 4,
        "scale_factor_spatial": 16,
    }
    _write_component(folder / "vae", vae_config, vae.state_dict(), VAE_TO_DIFFUSERS, NATIVE_DIT)
    return folder


# -----------------------------------------------------------------------------
# helpers for training and evaluation loops: video <-> pixels, latent shapes, decoding in chunks,
# the VAE file with its latent statistics, atomic writes, mixed precision
# (added for train.py / eval.py; nothing above uses them)

def latent_shape(frames, height, width, z_dim):
    """(C, F', H', W') of a frames x height x width video.

    Frame 0 alone, then the VAE's strides 4 x 16 x 16.
    """
    return (z_dim, (frames - 1) // 4 + 1, height // 16, width // 16)


def tokens_per_video(latent, patch_size):
    """DiT tokens of one video: latent (C, F', H', W') cut into patches (pt, ph, pw)."""
    _, f, h, w = latent
    pt, ph, pw = patch_size
    return (f // pt) * (h // ph) * (w // pw)


def to_pixels(video_uint8):
    """(F, H, W, 3) uint8 numpy -> (3, F, H, W) float32 in [-1, 1] (the VAE's input range)."""
    return torch.from_numpy(video_uint8).permute(3, 0, 1, 2).float() / 127.5 - 1


def to_uint8(video):
    """(B, 3, F, H, W) in [-1, 1] -> (B, F, H, W, 3) uint8 numpy, the verifier's input.

    As Wan2.2's save_video: (x + 1) / 2 * 255, here rounded.
    """
    pixels = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 4, 1).cpu().numpy()


def vae_chunks(frames):
    """VAE streaming options for a clip of `frames` frames.

    Short clips run in one piece (about 2x faster on CPU, and the memory is small at that size);
    long ones in the official streaming form (flat memory in the number of frames).
    """
    return dict(chunk=None) if frames <= 33 else {}


def decode_videos(vae, latents, frames, batch=4):
    """(B, C, F', h, w) latents -> (B, F, H, W, 3) uint8 numpy, `batch` videos per VAE call.

    Four at a time: tiny VAE on CPU, 31 instead of 98 ms per video at 32 in one call.
    """
    parts = []
    for i in range(0, len(latents), batch):
        video = vae.decode(latents[i:i + batch], **vae_chunks(frames))   # (b, 3, F, H, W)
        parts.append(to_uint8(video))
    return np.concatenate(parts)


def atomic_write(path, write):
    """Call write(tmp) on a temporary sibling of `path`, then rename it into place.

    A reader (or a run killed mid-write) sees the old file or the new one, never a partial one.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_vae(vae, path, metadata=None):
    """The VAE's weights plus its latent statistics (keys latent_mean, latent_std), atomically."""
    from safetensors.torch import save_file
    sd = {k: v.detach().cpu().contiguous() for k, v in vae.state_dict().items()}
    sd["latent_mean"] = torch.tensor(vae.latent_mean, dtype=torch.float32)
    sd["latent_std"] = torch.tensor(vae.latent_std, dtype=torch.float32)
    atomic_write(path, lambda tmp: save_file(sd, str(tmp), metadata=metadata))


def load_vae(vae, path):
    """Load a file written by save_vae: weights (strict) and latent statistics."""
    from safetensors.torch import load_file
    sd = load_file(str(path))
    if "latent_mean" not in sd or "latent_std" not in sd:
        raise KeyError(f"{path}: no latent_mean / latent_std (not a VAE file written by save_vae)")
    vae.set_latent_stats(sd.pop("latent_mean").tolist(), sd.pop("latent_std").tolist())
    vae.load_state_dict(sd, strict=True)
    return vae


def autocast(device):
    """bf16 autocast on GPU (the model keeps the official fp32 islands inside); CPU runs fp32."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
