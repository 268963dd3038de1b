"""Record reward.score's verdicts on a broad set of videos, or check them against a record.

For speed work on reward.py: record before, check after each change. The set covers every domain
at 128x128x17 and 480x480x49 (uint8, plus float [-1, 1] for some): the ground truth, partial
solutions, damaged copies (noise, blur, JPEG, colour shift, VAE-like smear), valid model-like
variants (fast, paused, eased, offsets, flicker, soft edges) and the cheats of
tests/test_reward_adversarial.py. A verdict is (success, reason, reward, precision, recall, F1);
the check wants success and reason equal and the numbers within --tol.
Run: python tests/scripts/verdicts.py --save /tmp/verdicts.json   (before)
     python tests/scripts/verdicts.py --check /tmp/verdicts.json  (after; exits 1 on a change)
"""
import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
import puzzles as pz  # noqa: E402
import reward as rw  # noqa: E402
import test_reward as tr  # noqa: E402
import test_reward_adversarial as ta  # noqa: E402

SIZES = {128: (17, "easy", 6), 480: (49, "hard", 2)}  # size: frames, level, seeds per domain


def common(p, size, frames, rng):
    """Videos every domain gets: GT, partial, damaged, model-like, hold-then-jump."""
    gt = ta.render(p, size, frames)
    cell = pz.geometry(p, size, size).cell
    f_c = pz.solve_frames(frames)
    out = {"gt": gt, "gt float": gt.astype(np.float32) / 127.5 - 1}
    for share in (0.3, 0.6, 0.9):
        k = max(1, int(share * (len(p.solution) - 1)))
        out[f"partial {share}"] = ta.render(p, size, frames, p.solution[:k + 1])
    for name, damage in tr.DAMAGES.items():
        out[f"damage {name}"] = damage(gt, np.random.default_rng(int(rng.integers(1 << 30))))
    out["vae-like"] = tr.vae_like(gt, rng, cell)
    out["soft edges"] = ta.gaussian(gt, cell / 6)
    out["offsets"] = ta.offsets(gt, rng)
    out["flicker"] = ta.brightness(gt, rng)
    for name, prof in ta.PACES.items():
        out[name] = ta.retime(p, size, frames, lambda f: p.n_moves * prof(f / f_c))
    out["freeze then jump"] = ta.freeze_then_jump(gt, frames - 4)
    for hold in (1, frames // 2):
        out[f"hold {hold} then jump"] = ta.hold_then_jump(p, gt, size, hold, True)
    return out


def cheats(p, size, frames):
    """The domain's cheats from test_reward_adversarial.py."""
    gt = ta.render(p, size, frames)
    out = {}
    if p.domain == "maze":
        for agent in ("none", "start", "path"):
            out[f"flood {agent}"] = ta.maze_flood(p, size, frames, agent)
        out["hidden agent"] = ta.hide_sprite(p, gt, size, pz.MAZE_COLORS["agent"], 1, frames - 3,
                                             pz.MAZE_COLORS["trail"])
    elif p.domain == "sokoban":
        for how in ("erase", "blur", "smudge"):
            out[f"hidden then solved {how}"] = ta.soko_hidden_then_solved(p, size, frames, how)
        for player_at in ("start", "hidden"):
            out[f"glide {player_at}"] = ta.soko_glide(p, size, frames, player_at)
        for alpha in (0.0, 1.0):
            out[f"walk home {alpha}"] = ta.soko_unseen_walk(p, size, frames, p.start, alpha, 1)
    else:
        wrong = ta.wrong_complete(p)
        flashed = gt.copy()
        flashed[frames // 2] = ta.paint_colouring(p, gt[frames // 2], size, wrong)
        out["flashed wrong board"] = flashed
        late = gt.copy()
        late[1:] = gt[0]
        for f in range(frames // 2, frames):
            late[f] = ta.paint_colouring(p, gt[0], size, wrong)
        out["wrong board"] = late
    return out


def verdicts():
    """{key: [success, reason, reward, precision, recall, f1]} over the whole set, and the time."""
    record, spent = {}, 0.0
    for domain in pz.DOMAINS:
        for size, (frames, level, n) in SIZES.items():
            for seed in range(n):
                p = pz.generate(domain, 20000 + seed, **pz.LEVELS[domain][level])
                rng = np.random.default_rng(seed)
                videos = {**common(p, size, frames, rng), **cheats(p, size, frames)}
                for name, video in videos.items():
                    t = time.perf_counter()
                    s = rw.score(p, video)
                    spent += time.perf_counter() - t
                    record[f"{domain} {size} {seed} {name}"] = [
                        s.success, s.reason, s.reward, s.precision, s.recall, s.f1]
    return record, spent


def compare(old, new, tol):
    """Lines describing every verdict that changed."""
    out = [f"missing: {k}" for k in old if k not in new]
    for key, a in old.items():
        b = new.get(key)
        if b is None:
            continue
        same = a[:2] == b[:2] and all(
            (x is None and y is None) or (x is not None and y is not None and abs(x - y) <= tol)
            for x, y in zip(a[2:], b[2:]))
        if not same:
            out.append(f"{key}: {a} -> {b}")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--save", help="write the verdicts to this JSON file")
    ap.add_argument("--check", help="compare the verdicts with this JSON file")
    ap.add_argument("--tol", type=float, default=1e-6, help="tolerance on reward, P, R, F1")
    args = ap.parse_args()
    record, spent = verdicts()
    print(f"{len(record)} videos scored in {spent:.1f} s "
          f"({sum(v[0] for v in record.values())} succeed)")
    if args.save:
        Path(args.save).write_text(json.dumps(record, indent=0))
        print(f"saved to {args.save}")
    if args.check:
        changed = compare(json.loads(Path(args.check).read_text()), record, args.tol)
        print("\n".join(changed) if changed else f"all verdicts equal to {args.check}")
        sys.exit(1 if changed else 0)


if __name__ == "__main__":
    main()
