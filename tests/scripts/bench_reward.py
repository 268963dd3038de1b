"""Speed of puzzles.py and reward.py on one CPU thread; prints numbers, asserts nothing.

Targets: score a 49-frame 480x480 uint8 video in <= 20 ms median and <= 100 ms worst case
(issue 10; the worst over several puzzles and repeats), render one in <= 50 ms (issue 2), and report
generation throughput per domain and difficulty level.
Run: python tests/scripts/bench_reward.py [--repeats 15] [--seeds 40]
"""
import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")  # one core, set before numpy loads its BLAS

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import puzzles as pz  # noqa: E402
import reward as rw  # noqa: E402


def times_ms(fn, repeats):
    """Wall times of `repeats` calls after one warm-up call, in ms."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * np.array(times)


def median_ms(fn, repeats):
    return float(np.median(times_ms(fn, repeats)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--seeds", type=int, default=40)
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, 1 thread, medians of {args.repeats} runs")

    print("\nscore, 49 frames x 480 x 480 uint8, medium and hard puzzles of 4 seeds each "
          "(targets: median <= 20 ms, worst <= 100 ms)")
    print(f"{'domain':9s} {'median':>8s} {'worst':>8s} {'f32 med':>8s} {'render':>8s}")
    for domain in pz.DOMAINS:
        all_u8, all_f32, renders = [], [], []
        for level in ("medium", "hard"):
            for seed in range(4):
                p = pz.generate(domain, seed, **pz.LEVELS[domain][level])
                video = pz.render(p, 480, 480, 49)
                assert rw.score(p, video).success == 1
                all_u8.append(times_ms(lambda: rw.score(p, video), args.repeats))
                if seed == 0:
                    as_float = video.astype(np.float32) / 127.5 - 1
                    all_f32.append(times_ms(lambda: rw.score(p, as_float), args.repeats))
                    renders.append(times_ms(lambda: pz.render(p, 480, 480, 49), args.repeats))
        u8 = np.concatenate(all_u8)
        print(f"{domain:9s} {np.median(u8):6.1f}ms {u8.max():6.1f}ms "
              f"{np.median(np.concatenate(all_f32)):6.1f}ms {np.median(np.concatenate(renders)):6.1f}ms")

    print("\nscore + render at the tiny CPU-demo scale (16-px cells)")
    for domain, size, frames in (("maze", 128, 17), ("maze", 128, 33), ("flowfree", 96, 17), ("sokoban", 96, 17)):
        p = pz.generate(domain, 0)
        video = pz.render(p, size, size, frames)
        print(f"{domain:9s} easy    {size}x{size}x{frames:<3d} score {median_ms(lambda: rw.score(p, video), args.repeats):5.2f} ms"
              f"  render {median_ms(lambda: pz.render(p, size, size, frames), args.repeats):5.2f} ms")

    print(f"\ngeneration throughput ({args.seeds} train seeds per row)")
    print(f"{'domain':9s} {'level':7s} {'knobs':40s} {'inst/s':>8s} {'median':>8s} {'max':>8s} {'moves':>6s}")
    for domain in pz.DOMAINS:
        for level, knobs in pz.LEVELS[domain].items():
            times, moves = [], []
            for seed in range(args.seeds):
                t = time.perf_counter()
                p = pz.generate(domain, seed, **knobs)
                times.append(time.perf_counter() - t)
                moves.append(p.n_moves)
            print(f"{domain:9s} {level:7s} {str(knobs):40s} {len(times) / sum(times):8.0f} "
                  f"{1e3 * np.median(times):6.1f}ms {1e3 * max(times):6.1f}ms {np.mean(moves):6.1f}")


if __name__ == "__main__":
    main()
