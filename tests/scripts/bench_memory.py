"""The dry run's memory model, measured on CPU: one full-width Wan2.2-TI2V-5B DiT block and the 5B
VAE decoder, peak resident memory next to `train.py --dry_run`'s per-block and per-component
predictions.

python tests/scripts/bench_memory.py [--only block,block_ckpt,vae] [--threads 2]

Each measurement runs in a fresh subprocess. Peak memory is the kernel's own high-water mark (VmHWM
of /proc/self/status, reset through /proc/self/clear_refs just before the measured call) minus the
resident memory right before it, with glibc's mmap threshold fixed at 64 KiB
(MALLOC_MMAP_THRESHOLD_) so that every large tensor is returned to the kernel when freed: the number
is the live tensors' peak, not what the allocator happens to keep.

- block / block_ckpt: one DiT block (dim 3072, ffn 14336, 24 heads) at 2,925 tokens (a 480x480x49
  video), bf16 weights as FSDP2's bf16 MixedPrecisionPolicy gathers them, inputs as a block sees
  them inside the stack (fp32 residual stream and per-token modulation, bf16 text), forward then
  backward, without and with torch.utils.checkpoint. This CPU has no bf16 matrix units: torch's bf16
  GEMM runs at ~0.4 GFLOP/s here (a block's backward would take hours), so matrix products of bf16
  tensors are computed in fp32 in small tiles and written into the bf16 result (`Bf16MatmulInFp32`):
  every tensor autograd saves or frees is the real one, of the real dtype and shape; the tiles add
  at most ~48 MiB. Attention runs torch's own CPU flash kernel in bf16 (it saves q, k, v, out and
  the log-sum-exp, as FlashAttention does on a GPU).
- vae: the 5B decoder (fp32, as officially) streaming a 5-frame clip (latent frame 0, then one chunk
of
  4 frames) at two small sizes; the working set of a chunk grows with the pixel area, so a straight
  line through the two points extrapolates to 480x480 (a full-size decode is 18.5 MFLOP per output
  pixel, too slow for this CPU).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import model as M  # noqa: E402
import train as T  # noqa: E402

MiB = 2**20
TILE = 4 * 2**20  # elements per fp32 tile (16 MiB)


def rss():
    """(current, peak) resident set size in bytes (VmRSS, VmHWM)."""
    info = dict(
        line.split(":", 1)
        for line in Path("/proc/self/status").read_text().splitlines()
        if ":" in line
    )
    return int(info["VmRSS"].split()[0]) * 1024, int(info["VmHWM"].split()[0]) * 1024


def reset_peak():
    """Set the kernel's high-water mark back to the current resident size (Linux clear_refs = 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def mm_in_fp32(a, b, bias=None):
    """a (M, K) @ b (K, N) (+ bias) as bf16, computed in fp32 tiles of <= TILE elements per
    operand."""
    out = torch.empty(a.shape[0], b.shape[1], dtype=torch.bfloat16)
    rows, cols = max(1, TILE // a.shape[1]), max(1, TILE // b.shape[0])
    for i in range(0, a.shape[0], rows):
        ai = a[i : i + rows].float()
        for j in range(0, b.shape[1], cols):
            tile = ai @ b[:, j : j + cols].float()
            if bias is not None:
                tile += bias[..., j : j + cols].float()
            out[i : i + rows, j : j + cols] = tile
    return out


class Bf16MatmulInFp32(TorchDispatchMode):
    """Run aten mm / addmm / bmm on bf16 tensors through `mm_in_fp32` (same result dtype and
    shape)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if not tensors or any(t.dtype != torch.bfloat16 for t in tensors):
            return func(*args, **kwargs)
        if func is torch.ops.aten.mm.default:
            return mm_in_fp32(args[0], args[1])
        if func is torch.ops.aten.addmm.default and not kwargs:
            return mm_in_fp32(args[1], args[2], args[0])
        if func is torch.ops.aten.bmm.default:
            return torch.stack([mm_in_fp32(a, b) for a, b in zip(args[0], args[1])])
        return func(*args, **kwargs)


def measure_block(ckpt):
    """Peak above the inputs of one 5B block's forward and forward+backward, bf16 weights."""
    cfg = M.DIT_CONFIGS["5b"]
    grid, S = (13, 15, 15), 13 * 15 * 15  # 480x480x49 -> latent 13x30x30 -> 2,925 tokens
    torch.manual_seed(0)
    block = M.WanAttentionBlock(cfg).to(torch.bfloat16)
    x = torch.randn(1, S, cfg.dim, requires_grad=True)  # (B, S, C) fp32 residual stream
    e0 = (0.1 * torch.randn(1, S, 6, cfg.dim)).requires_grad_()  # (B, S, 6, C) fp32 modulation
    ctx = torch.randn(
        1, cfg.text_len, cfg.dim, dtype=torch.bfloat16, requires_grad=True
    )  # (B, Lt, C)
    cos, sin = M.rope_cos_sin(grid, cfg.dim // cfg.num_heads, S, torch.device("cpu"))
    grad_out = torch.randn(1, S, cfg.dim)
    base = rss()[0]
    reset_peak()
    t0 = time.time()
    with Bf16MatmulInFp32():
        if ckpt:
            y = torch.utils.checkpoint.checkpoint(
                block, x, e0, ctx, cos, sin, None, use_reentrant=False
            )
        else:
            y = block(x, e0, ctx, cos, sin, None)
        after_fwd, fwd_peak = rss()
        t_fwd = time.time() - t0
        y.backward(grad_out)
    total_peak = rss()[1]
    grads = sum(p.numel() * p.element_size() for p in block.parameters())
    inputs_grad = sum(t.numel() * t.element_size() for t in (x, e0, ctx))
    return dict(
        what="block_ckpt" if ckpt else "block",
        tokens=S,
        saved_after_forward=after_fwd - base,
        forward_peak=fwd_peak - base,
        peak=total_peak - base,
        param_grads=grads,
        input_grads=inputs_grad,
        seconds_forward=round(t_fwd, 1),
        seconds=round(time.time() - t0, 1),
    )


def measure_vae(size):
    """Peak of a 5-frame decode (latent frames 1 + 1) by the 5B decoder at size x size pixels,
    fp32."""
    torch.manual_seed(0)
    vae = M.WanVAE(M.VAE_CONFIGS["5b"]).eval().requires_grad_(False)
    z = torch.randn(1, 48, 2, size // 16, size // 16)
    base = rss()[0]
    reset_peak()
    t0 = time.time()
    with torch.no_grad():
        video = vae.decode(z)  # (1, 3, 5, size, size), streamed chunk=1
    return dict(
        what=f"vae_{size}",
        pixels=size * size,
        frames=video.shape[2],
        peak=rss()[1] - base,
        output=video.numel() * 4,
        seconds=round(time.time() - t0, 1),
    )


def measure_stack():
    """Resident memory after the forward of 1..4 checkpointed blocks (dim 1024, 2,925 tokens): the
    per-block growth is what checkpointing keeps per block (its fp32 output), separated from the
    one-time cost of a first forward (thread pools, kernels) that a single-block run includes."""
    cfg = M.DiTConfig(dim=1024, ffn_dim=4096, num_heads=8, num_layers=4)
    S = 13 * 15 * 15
    torch.manual_seed(0)
    blocks = [M.WanAttentionBlock(cfg).to(torch.bfloat16) for _ in range(4)]
    x = torch.randn(1, S, cfg.dim, requires_grad=True)
    e0 = (0.1 * torch.randn(1, S, 6, cfg.dim)).requires_grad_()
    ctx = torch.randn(1, cfg.text_len, cfg.dim, dtype=torch.bfloat16, requires_grad=True)
    cos, sin = M.rope_cos_sin((13, 15, 15), cfg.dim // cfg.num_heads, S, torch.device("cpu"))
    base, after = rss()[0], []
    with Bf16MatmulInFp32():
        h = x
        for b in blocks:
            h = torch.utils.checkpoint.checkpoint(
                b, h, e0, ctx, cos, sin, None, use_reentrant=False
            )
            after.append(rss()[0] - base)
    return dict(
        what="stack",
        after_each_block=after,
        per_block=(after[-1] - after[0]) / 3,
        block_input=S * cfg.dim * 4,
    )


def child(what):
    if what == "stack":
        return measure_stack()
    if what in ("block", "block_ckpt"):
        return measure_block(what == "block_ckpt")
    return measure_vae(int(what.split("_")[1]))


def run_child(what, threads):
    env = dict(
        os.environ,
        MALLOC_MMAP_THRESHOLD_="65536",
        MALLOC_TRIM_THRESHOLD_="0",
        OMP_NUM_THREADS=str(threads),
    )
    p = subprocess.run(
        [sys.executable, __file__, "--child", what], env=env, capture_output=True, text=True
    )
    if p.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="block,block_ckpt,stack,vae_128,vae_192")
    ap.add_argument(
        "--load", default="", help="print the comparison for a --json file of measurements"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", default="")
    ap.add_argument("--json", default="", help="also write the measurements here")
    args = ap.parse_args()
    if args.child:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        print(json.dumps(child(args.child)))
        return
    if args.load:
        report(json.loads(Path(args.load).read_text()))
        return
    res = {}
    for what in args.only.split(","):
        res[what] = run_child(what, args.threads)
        print(json.dumps(res[what]), flush=True)
    report(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


def report(res):
    """Print measured vs predicted: the dry run's memory model now (train.memory_model, bf16 weights
    as FSDP2 gathers them) and before this measurement (its former per-token guesses, kept here to
    compare: (14 C + 3 ffn) bf16 values per token saved per block, (10 C + 2 ffn) for a checkpointed
    block's recompute, and no VAE decode term)."""
    cfg = T.get_config(["--config", "5b"])
    pred = T.memory_model(cfg, 8)["per_block"]
    d, S = M.DIT_CONFIGS["5b"], 13 * 15 * 15
    old = dict(
        saved=S * (14 * d.dim + 3 * d.ffn_dim) * 2,
        saved_ckpt=S * d.dim * 4,
        peak_ckpt=S * d.dim * 4 + S * (10 * d.dim + 2 * d.ffn_dim) * 2,
    )
    print(
        f"\n{'one 5B block, 2,925 tokens, bf16':48s} {'measured':>10s} {'dry run':>10s} "
        f"{'ratio':>6s} "
        f"{'before':>10s} {'ratio':>6s}"
    )

    def row(name, measured, key, predicted=None):
        p = pred[key] if predicted is None else predicted
        line = f"{name:48s} {measured / MiB:6.0f} MiB {p / MiB:6.0f} MiB {measured / p:6.2f}"
        if key in old:
            line += f" {old[key] / MiB:6.0f} MiB {measured / old[key]:6.2f}"
        print(line)

    if "block" in res:
        r = res["block"]
        row("saved for backward (no checkpointing)", r["saved_after_forward"], "saved")
        row("forward+backward peak (no checkpointing)", r["peak"], "peak")
    if "block_ckpt" in res:
        r = res["block_ckpt"]
        row("kept after forward, checkpointed (single run)", r["saved_after_forward"], "saved_ckpt")
        row("forward+backward peak (checkpointing)", r["peak"], "peak_ckpt")
    if "stack" in res:
        r = res["stack"]
        print(
            f"checkpointed stack (dim 1024): resident after each block "
            f"{[round(a / MiB) for a in r['after_each_block']]} MiB: "
            f"{r['per_block'] / MiB:.1f} MiB "
            f"per block vs its fp32 input {r['block_input'] / MiB:.1f} MiB "
            f"({r['per_block'] / r['block_input']:.2f}x); the rest of a single run is a one-time "
            f"cost"
        )
    sizes = sorted(int(k.split("_")[1]) for k in res if k.startswith("vae_"))
    if len(sizes) >= 2:
        (a, pa), (b, pb) = [(s * s, res[f"vae_{s}"]["peak"]) for s in sizes[:2]]
        slope = (pb - pa) / (b - a)
        at480 = pa + slope * (480 * 480 - a)
        for s in sizes:
            print(
                f"VAE decode, 5 frames at {s}x{s}: peak {res[f'vae_{s}']['peak'] / MiB:.0f} MiB "
                f"({res[f'vae_{s}']['seconds']} s)"
            )
        print(
            f"VAE decode working set at 480x480, one video: {at480 / MiB:.0f} MiB extrapolated "
            f"({pa / MiB:.0f} MiB + {slope:.0f} B per pixel beyond {a}); "
            f"dry run {pred['vae_decode_one'] / MiB:.0f} MiB "
            f"({T.VAE_DECODE_BYTES_PER_PIXEL} B per pixel), before: not modelled (0)"
        )


if __name__ == "__main__":
    main()
