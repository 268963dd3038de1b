"""Speed and memory of model.py next to diffusers on the same weights and inputs.

python tests/scripts/bench_diffusers.py                  # speed: tiny DiT forward, tiny VAE decode
python tests/scripts/bench_diffusers.py --memory         # + one full-width 5B block fwd+bwd peak

Needs the test extra (pip install .[test]). Our tiny-preset DiT and VAE get random weights, are
written with model.export_diffusers and loaded by diffusers' from_pretrained, so both sides run
the same numbers. Each measurement alternates ours and theirs (--repeats rounds, median per side)
at 1 and 2 threads and prints the time ratio ours / diffusers (< 1: ours is faster). The machine
may be shared: run it when little else runs, and repeat.

--memory runs each implementation's full-width Wan2.2-TI2V-5B block (dim 3072, 24 heads, FFN
14336) forward + backward on --tokens tokens with per-token timesteps in a fresh subprocess and
prints the peak resident memory above the process's state after building the block (ru_maxrss).
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import model  # noqa: E402


def randomize_(module, seed):
    """Non-degenerate random weights (the default inits zero the DiT head)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return module


def timed(fn, repeats):
    """Median seconds of `repeats` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def alternate(ours, theirs, repeats):
    """Median times of ours and theirs, measured in alternating rounds (shared-machine noise hits
    both sides alike)."""
    ours(), theirs()
    a, b = [], []
    for _ in range(repeats):
        a.append(timed(ours, 1))
        b.append(timed(theirs, 1))
    return statistics.median(a), statistics.median(b)


def tiny_pair(folder):
    """Our tiny DiT and VAE (random weights) and diffusers' copies loaded from their export."""
    import diffusers
    torch.manual_seed(0)
    dit = randomize_(model.WanModel(model.DIT_CONFIGS["tiny"]), 1).eval()
    vae = randomize_(model.WanVAE(model.VAE_CONFIGS["tiny"]), 2).eval()
    with torch.no_grad():                 # RMS gammas near 1, as trained ones are
        for name, p in vae.named_parameters():
            if name.endswith("gamma"):
                p.add_(1.0)
    model.export_diffusers(folder, dit, vae)
    their_dit = diffusers.WanTransformer3DModel.from_pretrained(folder / "transformer").eval()
    their_vae = diffusers.AutoencoderKLWan.from_pretrained(folder / "vae").eval()
    return dit, vae, their_dit, their_vae


def bench_speed(repeats):
    folder = Path(tempfile.mkdtemp())
    dit, vae, their_dit, their_vae = tiny_pair(folder)
    cfg = dit.cfg
    g = torch.Generator().manual_seed(3)
    # batch 8 of latents (16, 5, 16, 16): 5 x 8 x 8 = 320 tokens
    x = torch.randn(8, cfg.in_dim, 5, 16, 16, generator=g)
    tokens = 5 * 8 * 8
    t = torch.full((8, tokens), 937.0)
    t[:, :64] = 0.0                                                  # TI2V: frame 0 clean
    context = torch.randn(8, cfg.text_len, cfg.text_dim, generator=g)
    latent = torch.randn(1, vae.cfg.z_dim, 5, 8, 8, generator=g)     # 17 frames, 128 x 128
    mean = torch.tensor(vae.latent_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.latent_std).view(1, -1, 1, 1, 1)

    def ours_dit():
        return dit(x, t, context)

    def theirs_dit():
        return their_dit(x, timestep=t, encoder_hidden_states=context, return_dict=False)[0]

    def ours_vae():
        return vae.decode(latent)

    def theirs_vae():
        return their_vae.decode(latent * std + mean).sample

    with torch.no_grad():
        diff_dit = (ours_dit() - theirs_dit()).abs().max().item()
        diff_vae = (ours_vae() - theirs_vae()).abs().max().item()
        print(f"same weights and inputs: DiT max abs diff {diff_dit:.1e} (diffusers' float32 "
              f"sinusoid), VAE decode {diff_vae:.1e}")
        for threads in (1, 2):
            torch.set_num_threads(threads)
            rows = (("DiT forward, B=8, 320 tokens", ours_dit, theirs_dit),
                    ("VAE decode, 5 latent frames -> 17 x 128 x 128", ours_vae, theirs_vae))
            for name, ours, theirs in rows:
                a, b = alternate(ours, theirs, repeats)
                print(f"threads {threads}  {name:46s} ours {a * 1e3:8.1f} ms  diffusers "
                      f"{b * 1e3:8.1f} ms  ratio {a / b:.2f}")


def block_memory(impl, tokens, threads):
    """Peak RSS (MiB) of one full-width block forward + backward above the built state."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = model.DIT_CONFIGS["5b"]
    grid = (tokens // 64, 8, 8)
    x = torch.randn(1, tokens, cfg.dim, requires_grad=True)
    e0 = torch.randn(1, tokens, 6, cfg.dim) * 0.1
    text = torch.randn(1, cfg.text_len, cfg.dim)
    if impl == "ours":
        block = model.WanAttentionBlock(cfg)
        cos, sin = model.rope_cos_sin(grid, cfg.dim // cfg.num_heads, tokens, x.device)
        cos, sin = cos.float(), sin.float()

        def step():
            return block(x, e0, text, cos, sin, None)
    else:
        from diffusers.models.transformers.transformer_wan import (WanRotaryPosEmbed,
                                                                    WanTransformerBlock)
        block = WanTransformerBlock(cfg.dim, cfg.ffn_dim, cfg.num_heads, "rms_norm_across_heads",
                                    True, cfg.eps)
        rope = WanRotaryPosEmbed(cfg.dim // cfg.num_heads, cfg.patch_size, 1024)
        rotary = rope(torch.empty(1, 1, grid[0], 2 * grid[1], 2 * grid[2]))

        def step():
            return block(x, text, e0, rotary)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    step().square().mean().backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"impl": impl, "peak_above_built_mib": round(peak - base), "peak_mib": round(peak),
            "seconds": round(seconds, 2)}


def bench_memory(tokens, threads):
    for impl in ("ours", "diffusers"):
        out = subprocess.run([sys.executable, __file__, "--_block", impl, "--tokens", str(tokens),
                              "--threads", str(threads)], capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(out.stderr)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"5B block fwd+bwd, {tokens} tokens, {threads} threads: {r['impl']:9s} peak "
              f"{r['peak_mib']} MiB, {r['peak_above_built_mib']} MiB above the built block, "
              f"{r['seconds']} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--_block", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._block:
        print(json.dumps(block_memory(args._block, args.tokens, args.threads)))
        return
    bench_speed(args.repeats)
    if args.memory:
        bench_memory(args.tokens, args.threads)


if __name__ == "__main__":
    main()
