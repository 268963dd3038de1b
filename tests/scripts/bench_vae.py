"""Tiny-VAE decode memory and time vs the number of frames, and encode+decode times for planning.

python tests/scripts/bench_vae.py [--size 128] [--repeats 3] [--threads N]

Each measurement runs in a fresh subprocess so that VmHWM (peak resident memory, /proc/self/status)
belongs to it alone; "peak above baseline" subtracts the resident memory measured just before the
call (model and input built, one warm-up run done, VmHWM reset through /proc/self/clear_refs, glibc
told to return large freed buffers at once; times come from a second process with the default
allocator). The streamed decode (one latent frame per step, as the
official code) should stay flat in the number of frames, apart from the output video itself; the
one-piece decode (chunk=None) is shown for contrast. Times: median and min over --repeats runs after
one warm-up; on a shared machine use --threads 1 (two threads on two busy cores spin-wait on each other).
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import sys, time, statistics, torch
sys.path.insert(0, {root!r})
if {threads}:
    torch.set_num_threads({threads})
import model
def status(key):
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024
torch.manual_seed(0)
vae = model.WanVAE(model.VAE_CONFIGS["tiny"]).eval()
frames, size, chunk, mode, repeats = {frames}, {size}, {chunk}, {mode!r}, {repeats}
video = torch.rand(1, 3, frames, size, size) * 2 - 1
latent = torch.randn(1, vae.cfg.z_dim, (frames - 1) // 4 + 1, size // 16, size // 16)
def run():
    if mode == "decode":
        with torch.no_grad():
            return vae.decode(latent, chunk=chunk)
    if mode == "encode+decode":
        with torch.no_grad():
            return vae.decode(vae.encode(video, chunk=chunk and 4 * chunk), chunk=chunk)
    # one training step of the autoencoder: encode, unclamped decode, MSE, backward
    loss = (vae.decode(vae.encode(video, chunk=chunk and 4 * chunk), clamp=False, chunk=chunk) - video).square().mean()
    loss.backward()
    return loss
out = run()                               # warm-up: kernels, allocator, libraries
out_bytes = out.numel() * out.element_size()
del out
base = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
out = run()
peak = status("VmHWM") - base
del out
times = []
for _ in range(repeats):
    t0 = time.perf_counter()
    run()
    times.append(time.perf_counter() - t0)
print(peak, out_bytes, statistics.median(times), min(times))
"""


def measure(frames, size, chunk, mode, repeats, threads):
    """-> (peak MiB above baseline, output MiB, median s, min s), from two fresh processes: memory with
    glibc returning every large freed buffer at once (so resident memory follows the live tensors,
    not what the allocator keeps), times with the default allocator (the setting above is slower).
    """
    code = CHILD.format(
        root=str(ROOT),
        frames=frames,
        size=size,
        chunk=chunk,
        mode=mode,
        repeats=repeats,
        threads=threads,
    )
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    mem = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    return int(mem[0]) / 2**20, int(mem[1]) / 2**20, float(out[2]), float(out[3])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args()
    s, r, th = args.size, args.repeats, args.threads
    print(f"tiny VAE (VAE_CONFIGS['tiny']), {s}x{s} px, batch 1, float32")
    for chunk, label in (
        (1, "streamed, 1 latent frame per step"),
        (None, "one piece (chunk=None)"),
    ):
        print(f"decode, {label}:")
        for frames in (5, 17, 33, 65):
            peak, out_mb, sec, best = measure(frames, s, chunk, "decode", r, th)
            print(
                f"  {frames:3d} frames: peak above baseline {peak:7.1f} MiB (output video {out_mb:5.1f} MiB, "
                f"rest {peak - out_mb:7.1f} MiB) | median {sec:6.3f} s, min {best:6.3f} s"
            )
    for chunk in (1, None):
        peak, _, sec, best = measure(33, s, chunk, "encode+decode", r, th)
        print(
            f"encode+decode (1, 3, 33, {s}, {s}), chunk {chunk}: median {sec:.3f} s, min {best:.3f} s, "
            f"peak {peak:.1f} MiB"
        )
    for chunk in (1, None):
        peak, _, sec, best = measure(17, s, chunk, "train", r, th)
        print(
            f"autoencoder train step (1, 3, 17, {s}, {s}) fwd+bwd, chunk {chunk}: median {sec:.3f} s, "
            f"min {best:.3f} s, peak {peak:.1f} MiB"
        )


if __name__ == "__main__":
    main()
