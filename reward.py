"""Pixel verifiers for the VideoRLVR puzzles: P/R/F1/success and the dense reward read off a video.

VideoRLVR (arXiv 2605.15458, section 4.3, quoted in luka-group/VideoRLVR issue #2) scores a
generated puzzle video with symbolic rule checkers and trains on a dense decomposed reward:
  maze      r = R_conn * R_wall
  flowfree  r = 0.15 c1 + 0.35 c2 + 0.30 c3 + 0.20 c4   (four structural terms; our mapping below)
  sokoban   r = 0.5 R_state + 0.5 R_proc
The paper's parser is not public; this one is our design. It reads the mean colour of each cell's
central patch in every frame and classifies it against colour prototypes calibrated on the video's
own frame 0 and re-fitted on every frame from the cells that never change (walls, floor,
endpoints), so global colour offsets and brightness flicker are undone. Moving sprites (maze agent,
Sokoban player and boxes) are read from 4 x 4 block means per cell, unmixed into class weights, so
a sprite between two cells, blurred or smeared over frames shows as area split over the cells.
The puzzle supplies geometry and expected layout; nothing else is read.

  score(puzzle, video) -> Score     one video; raises only on bad shape, dtype, range or frame count
                                    (weights="code": the official code's reward weights)
  summarize(scores) -> dict         the paper's table: mean P, mean R, F1 of the means, mean SR

Video convention: (F, H, W, 3), channels last, F >= MIN_FRAMES. uint8 is read as 0..255; floating
point (numpy or torch) as the VAE decoder's [-1, 1] (pass 2 * x - 1 for a [0, 1] video). A float
video with NaN or inf scores 0 with that reason; one outside [-1, 1] is a ValueError.

What a video must show (our rules; they are the verifier's contract with the policy):
  - Success must be seen. A frame is readable when its board reads clearly and the agent (player)
    is visible. Only readable frames support a move; the frames between two readable ones never
    widen the move budget, and more than MAX_BLIND unreadable frames in a row end the trajectory.
  - Pace. Between two successive readable frames at most allowed_moves(puzzle, F, 1) unit moves:
    MAX_PACE times the ground truth's mean pace plus MOVE_SLACK (CATCH_UP frames' worth right after
    a short hold or unreadable frames in mid-motion, never more; a hold from frame 0 or a longer
    pause gets one frame's worth: see _catch_up). A faster change is not a cheat but cannot be
    verified: only the part within the budget earns credit, and success needs none over.
  - Maze: the trail is one walk of the agent. Each new trail cell must lie on the walk between two
    sightings of the agent (or where it was seen), the walk goes over trail cells only, and its
    length must fit the budget.
  - FlowFree: every readable frame is a legal partial drawing: endpoints keep their colour, each
    new cell joins the cells of its colour drawn before, no cell has three same-colour neighbours,
    no cell changes colour or is erased, and at most the budget of new cells appears per frame.
  - Sokoban: every readable board follows from the previous one by legal unit moves within the
    budget, pushes or not (the player's walk is legal to the last frame); a box between two cells
    needs the player on its axis (a pusher in push position); nothing reads inside a wall. A
    player smeared over cells still counts as seen, for walking only; an absent or faint one not.
The earliest violation ends the trajectory: the dense reward is computed from what was seen before.

Run the tests: python -m pytest -q tests/test_reward*.py
speed: python tests/scripts/bench_reward.py
verdicts unchanged by a refactor: python tests/scripts/verdicts.py --save / --check FILE
"""
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

import puzzles as pz

MIN_FRAMES = 9         # frame 0, >= 4 frames of motion and the held end (the README's minimum)
PATCH = 0.3            # side of the central patch read per cell, as a fraction of the cell: inside
                       # the thinnest drawn feature (trail 0.45 cell) so clean cells are pure
PATCH_PIXELS = 48      # ... read from >= this many of its pixels (all of a smaller patch): pixel
                       # noise of sigma 10 averages to 1.4
CALIB_PATCH = 0.47     # frame 0's class colours: every pixel of a central square this wide (as
                       # many pixels of the cell's parity as fit), inside the smallest sprite (a
                       # disc of radius 0.33 cell holds a square of 0.47): a class shown on one
                       # cell (a box, the player) gets its colour from 2-3x the pixels of PATCH
SAMPLES = 4            # sprite reading: SAMPLES x SAMPLES blocks tiling each cell (cells are
                       # multiples of 8 px, so blocks are whole pixels)
BLOCK_PIXELS = 16      # ... each block's mean read from >= this many of its pixels (all of a
                       # smaller block): pixel noise of sigma 10 averages to 2.5
RATIO = 0.5            # label = nearest prototype only if 2x closer than the runner-up: a patch
                       # mixing two classes keeps the majority label while < 1/3 is foreign
MAX_DIST = 75.0        # ... and within this RGB distance of it, else "unknown" (a trail patch
                       # blurred at sigma = cell/6 keeps about 75% trail: 62 from the trail colour)
FLOW_RATIO = 0.7       # FlowFree has no moving sprites to half-cover a patch, but lossy chroma
                       # (JPEG 4:2:0 at 16-px cells quantises a cell's chroma as one block) moves
                       # close hues (yellow/orange, 83 apart) by different amounts per cell
MIN_SEPARATION = 30.0  # calibrated prototypes closer than this: frame 0 does not show the puzzle
GAIN_RANGE = (0.6, 1.5)   # per-frame colour re-fit: gain and offset limits per channel (flicker of
OFFSET_RANGE = 90.0       # +-20% and offsets of +-30 are well inside; a fit outside is not trusted)
LAYOUT_KEEP = 0.95     # share of wall cells that must still read "wall" at the end
REPAINT_SHARE = 0.1    # maze: share of the board's cells that may change at the end in ways the
                       # legal walk does not explain (blur noise) before the reward is zeroed
MAX_BLIND = 4          # unreadable frames bridged in a row (one VAE latent frame: the Wan2.2 VAE
                       # decodes 4 frames per latent, which can smear a fast sprite away); one more
                       # ends the trajectory
MAX_PACE = 2.9         # moves per frame between two readable frames, in units of the GT's mean
                       # pace, plus MOVE_SLACK: 2x the pace eased in and out peaks at 3x (integer
                       # moves: int(2.9 pace) + 2 >= 3 pace at every pace the puzzles have)
CATCH_UP = 2           # after a held frame (_still) or unreadable frames the next may catch up this
                       # many frames' worth, never more (a decoded latent frame may hold or smear
                       # the picture for up to 4 frames, then jump; "freeze then jump" still fails)
HOLD_MAX = 3           # ... but only mid-motion: the state changed after frame 0, at most this many
                       # frames before (a latent frame's 4 frames: one change, 3 held). A pause
                       # longer than that, or a hold from the start, ends at rest: one frame's
                       # worth (_catch_up)
MOVE_SLACK = 2         # unit moves of slack per transition (frame rounding; a smeared sprite read
                       # one cell off)
UNREAD_SHARE = 0.15    # a board with more unknown cells than this share (and than 3) is unreadable
SPRITE_MIN = 0.07      # a cell holds sprite area when it has >= this share of the sprite's frame-0
                       # area (a sprite smeared over 5 cells leaves ~0.15 in each)
PEAK_SHARE = 0.3       # ... and >= this share of the frame's largest sprite area
SEEN_MASS = (0.3, 1.8)     # a sprite is seen when its total area is within this range of frame 0's
IN_WALL = 0.4          # sprite area in a wall cell that shows the sprite passing through it (a
                       # sprite halfway into the wall shows 0.5; JPEG specks stay below)
SECOND_MASS = 0.5      # area of a second blob that counts as a second agent / player
HAZE_SIGMAS = 4.0      # a cell's sprite area below this many noise SDs of its frame is haze (0)
SMEAR_MASS = 0.15      # Sokoban: total area (free cells above the blob floor) of a player seen
                       # smeared over cells, not on one (a VAE latent frame averages 4 frames of
                       # a fast walk: 0.23 seen); an erased or fainter player is not seen at all
MAX_WALK_STATES = 50_000  # search budget for explaining one Sokoban board change (ms of CPU)
SOLVE_STATES = 20_000  # search budget of the push solver that measures Sokoban progress
FLOW_WEIGHTS = (0.15, 0.35, 0.30, 0.20)  # endpoints, connectivity, validity, coverage (the paper's
                                         # weights; the order of the terms is our inference)
SOKOBAN_WEIGHTS = (0.5, 0.5)             # state, process (paper: lambda_state = lambda_proc = 0.5)
# Named weight sets for score(..., weights=NAME). The official code weights the terms differently
# from the paper (public issue luka-group/VideoRLVR#2): Sokoban 0.3 * final + 0.7 * process;
# FlowFree 0.50 * path_validity + 0.20 * ep_pres + 0.20 * color_conn + 0.10 * a fourth term,
# mapped onto our order (endpoints, connectivity, validity, coverage). That the fourth term is
# coverage is our inference: the issue names only the first three.
REWARD_WEIGHTS = {
    "paper": dict(flow=FLOW_WEIGHTS, sokoban=SOKOBAN_WEIGHTS),  # arXiv 2605.15458, section 4.3
    "code": dict(flow=(0.20, 0.20, 0.50, 0.10), sokoban=(0.3, 0.7)),
}
UNKNOWN = -1
NEVER = 1 << 30        # "first frame" of a cell that is never visited

MAZE_CLASSES = ("floor", "wall", "goal", "agent", "trail")
SOKO_CLASSES = ("floor", "wall", "target", "box", "player")
M_FLOOR, M_WALL, M_GOAL, M_AGENT, M_TRAIL = range(5)
S_FLOOR, S_WALL, S_TARGET, S_BOX, S_PLAYER = range(5)


@dataclass
class Score:
    """One video's verdict.

    precision is None when nothing was predicted (such samples are skipped in the P mean, as the
    paper's table behaves); f1 is then 0. reward is the dense reward in [0, 1].
    """
    precision: float | None
    recall: float
    f1: float
    success: int
    reward: float
    components: dict = field(default_factory=dict)
    reason: str = "ok"


# -----------------------------------------------------------------------------
# input checks, pixels -> per-cell readings

def _as_video(video):
    """(F, H, W, 3) uint8 or float numpy array; torch tensors are moved to CPU numpy once."""
    if hasattr(video, "detach"):  # torch.Tensor, without importing torch here
        v = video.detach()
        video = (v.float() if v.is_floating_point() else v).cpu().numpy()
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or video.shape[0] < 1:
        raise ValueError(f"video must have shape (F, H, W, 3) with channels last and F >= 1, got "
                         f"{video.shape} (a VAE output (3, F, H, W) needs .permute(1, 2, 3, 0))")
    if video.dtype != np.uint8 and not np.issubdtype(video.dtype, np.floating):
        raise ValueError(f"video dtype must be uint8 (0..255) or float ([-1, 1]), got "
                         f"{video.dtype}")
    if video.shape[0] < MIN_FRAMES:
        raise ValueError(f"video has {video.shape[0]} frames; the verifier needs at least "
                         f"MIN_FRAMES = {MIN_FRAMES} (frame 0, the motion, the held end state)")
    return video


def _non_finite(video):
    """Reason string if a float video holds NaN or inf, else None; ValueError outside [-1, 1].

    No tolerance: -1 and 1 are exact in every float format, so rounding a value inside [-1, 1]
    (float64 -> float32 -> bfloat16) never leaves it; a value outside comes from an unclamped
    decoder or a 0..255 video passed as float.
    """
    if video.dtype == np.uint8:
        return None
    lo, hi = float(np.min(video)), float(np.max(video))  # NaN propagates through min and max
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "the video holds NaN or inf values"
    if lo < -1 or hi > 1:
        raise ValueError(f"float video must be in [-1, 1] (VAE decoder output); it spans "
                         f"[{lo:.4g}, {hi:.4g}]. Clamp it, or pass uint8 for 0..255 data")
    return None


def _to_255(a):
    """Pixel values of a uint8 or [-1, 1] float array as float32 0..255."""
    if a.dtype == np.uint8:
        return a.astype(np.float32)
    return (a.astype(np.float32) + 1) * 127.5


def _row_sums(video, starts, step, count, x0, width, dtype):
    """Sum of the strided row views video[:, s : s + count * step : step, x0 : x0 + width] over
    the first rows s in `starts`: (F, count, width, 3) in dtype.

    Each view is the same row of `count` cells (or blocks) at once, read in place: no gather copy,
    one pass of adds per row (numpy reduces strided axes several times slower).
    """
    views = [video[:, s:s + count * step:step, x0:x0 + width] for s in starts]
    return _sum_views(views, dtype)                                          # (F, count, width, 3)


def _sum_views(views, dtype):
    """Elementwise sum of same-shape array views in dtype: the first two added in one pass."""
    if len(views) == 1:
        return views[0].astype(dtype)
    out = np.add(views[0], views[1], dtype=dtype)
    for view in views[2:]:
        out += view
    return out


def _sum_dtype(video, n_pixels):
    """Accumulator for sums of n_pixels pixel values: exact integers for uint8, else float32."""
    if video.dtype != np.uint8:
        return np.float32
    return np.uint16 if n_pixels * 255 < 1 << 16 else np.uint32


def _cell_means(video, g):
    """Mean RGB (0..255) of each cell's central patch in every frame: (F, R, C, 3) float32.

    A p x p patch is read from n = ceil(PATCH_PIXELS / p) evenly spaced rows (all p if fewer) and
    all its columns: a regular subsample of >= PATCH_PIXELS pixels (e.g. 32-px cells: 10-px
    patches, every 2nd row, 50 of 100 pixels; 16-px cells: all 16). The patches of all cells are
    summed over those rows as strided views of the patch columns only (each (F, R, C, p, 3), read
    in place), then over their p columns (one einsum); uint8 sums are exact integers.
    """
    n_frames = video.shape[0]
    rows, cols, c = g.rows, g.cols, g.cell
    lo = int(round(c * (1 - PATCH) / 2))
    p = c - 2 * lo
    n = min(p, -(-PATCH_PIXELS // p))                                        # patch rows read
    picks = lo + ((np.arange(n) + 0.5) * p / n).astype(int)                  # (n,)
    acc = _sum_dtype(video, n * p)
    views = []
    for s in g.y0 + picks:
        view = video[:, s:s + rows * c:c, g.x0:g.x0 + cols * c]             # (F, R, C*c, 3)
        view = view.reshape(n_frames, rows, cols, c, 3)[:, :, :, lo:lo + p]  # (F, R, C, p, 3)
        views.append(view)
    a = _sum_views(views, acc)                                               # (F, R, C, p, 3)
    sums = np.einsum("frcpk->frck", a)                                       # (F, R, C, 3)
    means = sums.astype(np.float32) / (n * p)
    if video.dtype != np.uint8:
        means = (means + 1) * 127.5
    return means


def _samples(video, g):
    """Mean colour (0..255) of SAMPLES x SAMPLES blocks tiling each cell: (F, R*S, C*S, 3) float32.

    A block of side b px is read from k = ceil(BLOCK_PIXELS / b) evenly spaced pixel rows (all b
    rows if fewer) and all its columns: a regular subsample of >= BLOCK_PIXELS pixels, so the
    pixel noise averages away (e.g. 32-px cells: 8-px blocks, rows 2 and 6 of each, 16 of 64
    pixels). Since the unmixing in _sprite_area is linear, the weight of a block mean is the mean
    weight of its pixels. Rows are summed as strided row views (_row_sums), the block's columns by
    one einsum over the (blocks, columns, 3) view; uint8 sums are exact integers.
    """
    n_frames, side = video.shape[0], g.cell // SAMPLES
    rows, cols = g.rows * SAMPLES, g.cols * SAMPLES
    k = min(side, -(-BLOCK_PIXELS // side))                                  # pixel rows per block
    picks = ((np.arange(k) + 0.5) * side / k).astype(int)                    # (k,)
    acc = _sum_dtype(video, k * side)
    a = _row_sums(video, g.y0 + picks, side, rows, g.x0, cols * side, acc)   # (F, R*S, C*S*b, 3)
    a = a.reshape(-1, side, 3)                                               # (F*R*S*C*S, b, 3)
    out = np.divide(np.einsum("nbc->nc", a), side * k, dtype=np.float32)    # (F*R*S*C*S, 3)
    out = out.reshape(n_frames, rows, cols, 3)                               # (F, R*S, C*S, 3)
    return (out + 1) * 127.5 if video.dtype != np.uint8 else out


def _barycentric(protos, tetra):
    """Per frame, the (4, 4) inverse that maps [x, 1] to the weights of the 4 classes of tetra."""
    m = np.ones((len(protos), 4, 4), np.float64)
    m[:, :3, :] = protos[:, list(tetra)].transpose(0, 2, 1)                  # columns: classes
    try:
        inverse = np.linalg.inv(m)                                           # (F, 4, 4)
    except np.linalg.LinAlgError:  # four coplanar colours: the least-squares weights
        inverse = np.linalg.pinv(m)
    return inverse.astype(np.float32)


def _weights(x, row):
    """Weight of one class in the blocks x (F, ..., 3), unmixed by its barycentric row (F, 4) (the
    class's row of _barycentric over the 4 classes of a tetra).

    Weights outside [-0.3, 1.3] mean the block is not such a mix and count 0; above 1 count 1.
    """
    n_frames = len(x)
    w = np.matmul(x.reshape(n_frames, -1, 3), row[:, :3, None])[..., 0]     # (F, N)
    w += row[:, 3:]
    w = w.reshape(x.shape[:-1])                                              # (F, ...)
    w[(w < -0.3) | (w > 1.3)] = 0
    return np.minimum(w, 1, out=w)


def _block_mean(w):
    """Mean over each cell's SAMPLES x SAMPLES blocks of (F, R*S, C*S) values: (F, R, C)."""
    n_frames, height, width = w.shape
    rows, cols = height // SAMPLES, width // SAMPLES
    w = w.reshape(n_frames, rows, SAMPLES, width)                            # (F, R, S, C*S)
    by_rows = _sum_views([w[:, :, j] for j in range(SAMPLES)], w.dtype)      # (F, R, C*S)
    by_rows = by_rows.reshape(n_frames, rows, cols, SAMPLES)                 # (F, R, C, S)
    out = _sum_views([by_rows[..., j] for j in range(SAMPLES)], w.dtype)     # (F, R, C)
    return out / (SAMPLES * SAMPLES)


def _sprite_area(samples, protos, sprites, tetras, special, ref):
    """Area of each sprite class in each cell, in units of its frame-0 area: (len, F, R, C).

    Four class colours span 3-d colour space, so a block that mixes them has unique barycentric
    weights x = sum_k w_k p_k, sum_k w_k = 1 (our design). Blocks use tetras[0] (e.g. floor, wall,
    trail, agent in the maze): blur, soft edges and a sprite smeared over frames give fractional
    weights that add up to about the sprite's area, and a blurred wall-floor edge has none. A
    cell's area is the mean weight of its blocks, clipped at 0 only then, so pixel noise averages
    out instead of adding up. On the `special` cells (the maze goal, Sokoban targets) a fifth class
    shows in the middle: there only the central 2 x 2 blocks are read, with tetras[1] (that class
    instead of the wall), scaled by the whole-cell / central ratio of the sprite in frame 0.
    Areas are divided by the sprite's frame-0 area on its cell ref[i], then cleared of the haze
    that pixel noise leaves (_clear_haze). protos (F, K, 3) per frame; samples (F, R*S, C*S, 3)
    block means (_samples); special (R, C) bool.
    """
    n_frames, height, width = samples.shape[:3]
    rows, cols = height // SAMPLES, width // SAMPLES
    blocks = samples.reshape(n_frames, rows, SAMPLES, cols, SAMPLES, 3)
    mid = slice(SAMPLES // 2 - 1, SAMPLES // 2 + 1)
    sr, sc = np.nonzero(special)                                             # (n,) each
    centres = blocks[:, sr, :, sc][:, :, mid, mid]                           # (n, F, 2, 2, 3)
    centres = np.moveaxis(centres, 0, 1)                                     # (F, n, 2, 2, 3)
    inverse = [_barycentric(protos, tetra) for tetra in tetras]               # 2 x (F, 4, 4)
    out = []
    for s, (r, c) in zip(sprites, ref):
        row = inverse[0][:, tetras[0].index(s)]                              # (F, 4)
        w = _weights(samples, row)                                           # (F, R*S, C*S)
        mean = _block_mean(w)                                                # (F, R, C)
        var = _block_mean(w * w) - mean * mean                               # (F, R, C)
        block_sd = np.sqrt(np.maximum(_median(var.reshape(n_frames, -1).T), 0)
                           * SAMPLES ** 2 / (SAMPLES ** 2 - 1))              # (F,)
        area = np.maximum(mean, 0)
        noise = np.broadcast_to(block_sd[:, None, None] / SAMPLES, area.shape).copy()  # (F, R, C)
        if len(sr):
            row1 = inverse[1][:, tetras[1].index(s)]                         # (F, 4)
            centre = _weights(centres, row1).mean(axis=(2, 3))               # (F, n)
            whole = area[0, r, c]
            inner = _weights(blocks[:1, r:r + 1, mid, c:c + 1, mid], row[:1]).mean()  # frame 0
            scale = whole / inner if inner > 0.05 else 1.0
            area[:, sr, sc] = np.maximum(centre, 0) * scale
            gain = _noise_gain(row1) / _noise_gain(row)                      # (F,)
            noise[:, sr, sc] = (block_sd * gain * scale / 2)[:, None]        # a mean of 2 x 2
        unit = max(float(area[0, r, c]), 0.02)
        noise /= unit
        out.append(_clear_haze(area / unit, noise))
    return np.stack(out)                                                     # (len, F, R, C)


def _noise_gain(row):
    """Per frame, how much a unit of colour noise (the same SD in R, G and B) moves a class weight
    unmixed by its barycentric row (F, 4): the norm of the row's colour part, (F,)."""
    return np.maximum(np.sqrt((row[:, :3] * row[:, :3]).sum(-1)), 1e-9)


def _clear_haze(area, noise):
    """Sprite area (F, R, C) with the haze of pixel noise set to 0: cells below HAZE_SIGMAS times
    their noise SD `noise` (F, R, C).

    Pixel noise unmixes into a small area on every cell, a haze that blob thresholds alone cannot
    tell from a faint sprite: at 128 px, noise of SD 10 per pixel gives cells an SD of ~0.045 of a
    player's area, and a blob of a few haze cells adds up to a "seen" player (our measurement).
    The noise is read per frame from the spread of block weights inside each cell: its median over
    the cells is the block SD (most cells hold no sprite edge; a blurred wall-floor edge has no
    sprite weight), and a cell's area is a mean of S^2 blocks (on special cells 2 x 2 blocks,
    unmixed with another tetra: _noise_gain). A clean frame has SD 0 and keeps all of its area.
    Our design.
    """
    return np.where(area >= HAZE_SIGMAS * noise, area, 0.0).astype(np.float32)


def _distances(means, protos, classes=None):
    """RGB distance of each cell's mean to each prototype, class-major: (K, F, R, C) float32.

    means (F, R, C, 3); protos (F, K, 3): one prototype set per frame. With `classes`, only
    those prototypes, (k, F, R, C). Channels are taken as planes so that every step runs over
    whole frames.
    """
    if classes is not None:
        protos = protos[:, list(classes)]
    m = np.moveaxis(means, -1, 0).copy()                                     # (3, F, R, C)
    p = protos.transpose(2, 1, 0)[..., None, None]                           # (3, K, F, 1, 1)
    d = (m[0] - p[0]) ** 2                                                   # (K, F, R, C)
    d += (m[1] - p[1]) ** 2
    d += (m[2] - p[2]) ** 2
    return np.sqrt(d, out=d)


def _classify(d, ratio):
    """Nearest prototype per cell with the ratio / MAX_DIST rejection: (F, R, C), UNKNOWN if unsure.

    d (K, F, R, C): distances to the prototypes (_distances).
    """
    first = d[0].copy()                                                      # (F, R, C) nearest
    second = np.full(first.shape, np.inf, np.float32)                        # runner-up
    best = np.zeros(first.shape, np.intp)                                    # nearest class
    for k in range(1, len(d)):  # ties keep the lower class, as argmin
        closer = d[k] < first
        second = np.where(closer, first, np.minimum(second, d[k]))
        first = np.where(closer, d[k], first)
        best[closer] = k
    ok = (first <= ratio * second) & (first <= MAX_DIST)                     # NaN compares False
    return np.where(ok, best, UNKNOWN)


def _calibration_means(frame, g):
    """Mean RGB (0..255) of each cell's central CALIB_PATCH square in one frame: (R, C, 3).

    All of its pixels are read (frame 0 only): a prototype measured on a single cell, as the
    player's or a lone box's, must not carry the noise of a few pixels into every later frame's
    unmixing. The square is centred: its side has the cell's parity.
    """
    c = g.cell
    p = int(CALIB_PATCH * c)
    p = max(1, p - (c - p) % 2)                                              # parity of c
    lo = (c - p) // 2
    board = frame[g.y0:g.y0 + g.rows * c, g.x0:g.x0 + g.cols * c]           # (R*c, C*c, 3)
    board = board.reshape(g.rows, c, g.cols, c, 3)[:, lo:lo + p, :, lo:lo + p]  # (R, p, C, p, 3)
    acc = np.uint32 if frame.dtype == np.uint8 else np.float32
    sums = board.sum(axis=1, dtype=acc).sum(axis=2)                          # (R, C, 3)
    means = sums.astype(np.float32) / (p * p)
    return means if frame.dtype == np.uint8 else (means + 1) * 127.5


def _calibrate(m0, expect, palette):
    """Prototypes from frame 0.

    The median colour of the cells whose class frame 0 must show; classes absent from frame 0 (the
    maze trail) get their palette colour through a per-channel affine fit (gain, offset) of palette
    -> observed over the present classes (our design).
    """
    k = len(palette)
    observed = np.zeros((k, 3), dtype=np.float32)
    present = np.zeros(k, dtype=bool)
    for i in range(k):
        cells = m0[expect == i]
        if len(cells):
            observed[i], present[i] = _median(cells), True
    protos = observed.copy()
    if not present.all():
        x = palette[present].astype(np.float64)                              # (n, 3)
        y = observed[present].astype(np.float64)
        dx, dy = x - x.mean(0), y - y.mean(0)
        var = (dx * dx).sum(0)                                               # (3,) per channel
        spread = np.ptp(x, axis=0) > 0
        gain = np.where(spread, (dx * dy).sum(0) / np.where(spread, var, 1), 1.0)  # least squares
        offset = y.mean(0) - gain * x.mean(0)
        protos[~present] = np.clip(gain * palette[~present] + offset, 0, 255)
    return protos


def _median(x):
    """np.median(x, axis=0), the same values, without its per-call overhead (~60 us a call)."""
    s = np.sort(x, axis=0)
    half = len(s) // 2
    return s[half] if len(s) % 2 else (s[half - 1] + s[half]) / 2


def _refit(means, expect, protos0, static):
    """Per-frame prototypes (F, K, 3): frame 0's, mapped by a per-channel gain and offset per frame.

    The fit uses the cells whose frame-0 class is in `static` (walls, floor, endpoints) and that
    still read as that class in the frame (a trail or sprite covering them is left out); two rounds.
    With one grey level only the offset is fitted. Fits outside GAIN_RANGE / OFFSET_RANGE are not
    trusted and fall back to frame 0's prototypes (our design: colour drift on later frames).
    """
    n_frames = len(means)
    ref = np.flatnonzero(np.any([expect == k for k in static], axis=0))
    ref = ref[np.linspace(0, len(ref) - 1, min(len(ref), 96)).astype(int)]  # <= 96 cells suffice
    y = means.reshape(len(means), -1, 3)[:, ref]                             # (F, N, 3)
    e = expect.ravel()[ref]                                                  # (N,)
    x = protos0[e]                                                           # (N, 3)
    xs = np.broadcast_to(x, y.shape)                                         # (F, N, 3)
    terms = np.concatenate([np.ones_like(y[..., :1]), xs, y, xs * xs, xs * y], -1)  # (F, N, 13)
    planes = np.moveaxis(y, -1, 0)[:, :, None, :].copy()                     # (3, F, 1, N)
    gain = np.ones((n_frames, 1, 3), np.float32)
    offset = np.zeros((n_frames, 1, 3), np.float32)
    for _ in range(2):
        protos = gain * protos0[None] + offset                               # (F, K, 3)
        p = protos.transpose(2, 0, 1)[..., None]                             # (3, F, K, 1)
        d = (planes[0] - p[0]) ** 2                                          # (F, K, N)
        d += (planes[1] - p[1]) ** 2
        d += (planes[2] - p[2]) ** 2
        w = (d.argmin(1) == e[None]).astype(np.float32)                      # (F, N) in the fit
        sums = w[:, None] @ terms                                            # (F, 1, 13)
        n, sx, sy, sxx, sxy = sums[..., :1], *np.split(sums[..., 1:], 4, -1)
        den = n * sxx - sx * sx
        spread = den > (n * n * 400)                     # grey levels >= ~20 apart in this channel
        g_new = np.where(spread, (n * sxy - sx * sy) / np.where(spread, den, 1), 1.0)
        o_new = (sy - g_new * sx) / np.maximum(n, 1)
        trust = ((n >= 2) & (g_new >= GAIN_RANGE[0]) & (g_new <= GAIN_RANGE[1])
                 & (np.abs(o_new) <= OFFSET_RANGE))
        gain = np.where(trust, g_new, 1.0).astype(np.float32)
        offset = np.where(trust, o_new, 0.0).astype(np.float32)
    gain[0], offset[0] = 1.0, 0.0
    return np.clip(gain * protos0[None] + offset, 0, 255)


def _observe_absent(means, labels, protos, expect):
    """Prototypes of classes frame 0 cannot show (the maze trail), observed where the video shows
    them: per frame, the mean colour of the cells labelled that class, once >= 2 cells are; until
    then the fitted prototype. In place on protos (F, K, 3); returns it.
    """
    for k in range(protos.shape[1]):
        if (expect == k).any():
            continue
        mask = (labels == k).reshape(len(labels), 1, -1).astype(np.float32)  # (F, 1, R*C)
        n = mask.sum(-1)                                                     # (F, 1)
        sums = mask @ means.reshape(len(means), -1, 3)                       # (F, 1, 3)
        protos[:, k] = np.where(n >= 2, sums[:, 0] / np.maximum(n, 1), protos[:, k])
    return protos


def _frame0(g, video, palette, expect, static, ratio=RATIO):
    """(labels (F, R, C), per-frame prototypes (F, K, 3)), or (None, reason) if frame 0 is not the
    puzzle.

    Reward-hacking guard: frame 0 must match the conditioning puzzle; garbage such as black or
    noise fails here.
    """
    means = _cell_means(video, g)
    protos0 = _calibrate(_calibration_means(video[0], g), expect, palette)
    d = np.sqrt(((protos0[:, None] - protos0[None]) ** 2).sum(-1)) + np.eye(len(protos0)) * 1e9
    if d.min() < MIN_SEPARATION:
        return None, (f"frame 0 does not show the puzzle: its class colours are not separable "
                      f"(closest pair {d.min():.0f} apart in RGB, need {MIN_SEPARATION:.0f})")
    protos = _refit(means, expect, protos0, static)
    d = _distances(means, protos)                                            # (K, F, R, C)
    labels = _classify(d, ratio)
    absent = [k for k in range(len(palette)) if not (expect == k).any()]
    if absent:
        protos = _observe_absent(means, labels, protos, expect)
        d[absent] = _distances(means, protos, absent)  # only their prototypes moved
        labels = _classify(d, ratio)
    bad = np.argwhere(labels[0] != expect)
    if len(bad):
        r, c = bad[0]
        return None, (f"frame 0 does not match the puzzle: {len(bad)} cell(s) differ, first at "
                      f"({r}, {c}) expected class {expect[r, c]}, found {labels[0, r, c]}")
    return labels, protos


def _next_known(labels):
    """For each frame, the cell's next label that is not UNKNOWN (UNKNOWN after it): (F, R, C)."""
    nxt = np.full_like(labels, UNKNOWN)
    for f in range(len(labels) - 2, -1, -1):
        nxt[f] = np.where(labels[f + 1] != UNKNOWN, labels[f + 1], nxt[f + 1])
    return nxt


def _final(labels, n=3):
    """Per-cell label agreed by >= 2 of the last 3 frames (majority vote), else UNKNOWN."""
    last = labels[-n:]
    if len(last) < 3:
        return last[-1]
    a, b, c = last
    return np.where((a == b) | (a == c), a, np.where(b == c, b, UNKNOWN))


def _still(labels, *areas):
    """(F,) bool: frame f shows what frame f - 1 showed (same labels, sprite areas within 0.2 of a
    sprite in total): a held picture, as a decoded latent frame may hold it. Frame 0: False."""
    same = (labels[1:] == labels[:-1]).all((1, 2))
    for area in areas:
        same &= np.abs(area[1:] - area[:-1]).sum((1, 2)) < 0.2
    return np.concatenate([[False], same])


def _blind_cut(readable):
    """First frame of the first run of more than MAX_BLIND unreadable frames (NEVER if none).

    A run that reaches the last frame also counts: the end state must be seen.
    """
    run = 0
    for f in range(1, len(readable)):
        run = 0 if readable[f] else run + 1
        if run > MAX_BLIND:
            return f - run + 1
    return NEVER


def _blobs(area):
    """Sprite blobs of every frame: per frame (main cells, main mass, second blob's mass, argmax
    cell), a list of F tuples.

    area (F, R, C) sprite area per cell in units of its frame-0 area; blobs are 4-connected groups
    of cells with >= SPRITE_MIN and >= PEAK_SHARE of the frame's largest area (colour errors along
    a trail leave specks far below a sprite's peak). The main blob is the heaviest; a second blob
    of SECOND_MASS or more is a second sprite (scattered specks of noise are not).
    """
    n_frames = len(area)
    fs, rs, cs = np.nonzero(area >= _blob_floor(area)[:, None, None])        # (n,) each
    hot = [{} for _ in range(n_frames)]  # per frame: {cell: area}
    for f, r, c, a in zip(fs.tolist(), rs.tolist(), cs.tolist(), area[fs, rs, cs].tolist()):
        hot[f][(r, c)] = a
    return [_components(cells) for cells in hot]


def _blob_floor(area):
    """Per frame, the least area of a blob cell: SPRITE_MIN, or PEAK_SHARE of the frame's largest
    area if more; (F,) in area's dtype. area (F, R, C)."""
    largest = area.reshape(len(area), -1).max(1).astype(np.float64)          # (F,)
    return np.maximum(SPRITE_MIN, PEAK_SHARE * largest).astype(area.dtype)


def _components(hot):
    """(main cells, main mass, second mass, argmax cell) of the 4-connected groups of the cells
    in hot {cell: area} (emptied): the heaviest group, and the heaviest of the others."""
    area = dict(hot)
    best, best_mass, second = set(), 0.0, 0.0
    while hot:
        start, mass = hot.popitem()
        comp, stack = {start}, [start]
        while stack:
            r, c = stack.pop()
            for nb in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if nb in hot:
                    mass += hot.pop(nb)
                    comp.add(nb)
                    stack.append(nb)
        if mass > best_mass:
            best, best_mass, second = comp, mass, best_mass
        else:
            second = max(second, mass)
    peak = max(best, key=area.get) if best else None
    return best, best_mass, second, peak


def _catch_up(held, gap, f_change, fa):
    """Frames' worth of motion the transition out of readable frame fa may carry (the gap).

    CATCH_UP in mid-motion, as when a decoded latent frame holds or smears a moving picture:
      - fa was held (a still picture) and the state last changed at readable frame f_change > 0
        (0 if it never changed), at most HOLD_MAX frames before fa;
      - or unreadable frames follow fa (gap) and fa either is such a short hold or shows a change
        itself (fa == f_change; frame 0 counts: motion may start unseen right after it).
    Else 1: a video held from frame 0 or paused longer starts again from rest, and a 2x-paced walk
    never moves a whole solution between two frames (our design). Unreadable frames are capped by
    MAX_BLIND and never add to the budget beyond CATCH_UP.
    """
    moving = f_change > 0 and fa - f_change <= HOLD_MAX
    if (held and moving) or (gap and (moving or fa == f_change)):
        return CATCH_UP
    return 1


def allowed_moves(puzzle, n_frames, gap=1):
    """Most unit moves a legal video may make between two readable frames, `gap` frames' worth.

    MAX_PACE times the GT pace (n_moves over the first pz.solve_frames(n_frames) frames) per frame,
    plus MOVE_SLACK. The verifier calls it with gap = 1, or CATCH_UP right after a short hold in
    mid-motion (_catch_up): unreadable frames in between never widen the budget (our design: an
    unseen frame is no evidence of motion).
    """
    pace = puzzle.n_moves / pz.solve_frames(n_frames)
    return int(MAX_PACE * pace * gap) + MOVE_SLACK


def _first(events):
    """Why of the earliest event (frame, why, ...); at the same frame a named violation goes before
    "not seen" (a frame showing two agents is also unreadable)."""
    return min(events, key=lambda e: (e[0], "not seen" in e[1], e[1]))[1]


def _prf(tp, n_pred, n_true):
    precision = tp / n_pred if n_pred else None
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else 0.0
    return precision, recall, f1


def _failed(components, reason):
    return Score(None, 0.0, 0.0, 0, 0.0, {**components, "first_frame": 0.0}, reason)


# -----------------------------------------------------------------------------
# maze

def _maze_visits(labels, start):
    """First frame each cell is visited, (R, C) int (NEVER if not).

    The first frame f where it reads trail or agent and its next clear reading (skipping "unknown"
    frames, e.g. the agent half over it) is not floor again, backdated over the unknown frames just
    before f (a half-covered or smeared cell is already being visited). The trail persists, so this
    orders cells by when the trail reaches them, even when several are crossed between two frames.
    """
    seen_now = (labels == M_TRAIL) | (labels == M_AGENT)                   # (F, R, C)
    steady = seen_now & (_next_known(labels) != M_FLOOR)
    first = np.where(steady.any(0), steady.argmax(0), NEVER)                # (R, C)
    for f in range(len(labels) - 1, 0, -1):
        first[(first == f) & (labels[f - 1] == UNKNOWN)] = f - 1
    first[start] = 0
    return first


def _open_neighbours(free):
    """{free cell: its free 4-neighbours, in pz._neighbours' order} of a (R, C) bool grid."""
    cells = set(map(tuple, np.argwhere(free).tolist()))
    return {x: [nb for nb in pz._neighbours(x, *free.shape) if nb in cells] for x in cells}


def _maze_tree(around, root):
    """BFS tree of the free cells from root: (parent, depth) dicts. around: _open_neighbours.

    puzzles.py builds perfect mazes (a spanning tree of the rooms), so this tree is the maze itself
    and tree paths are the only paths; in a maze with loops it would overestimate walk lengths.
    """
    parent, depth = {root: None}, {root: 0}
    frontier = [root]
    while frontier:
        nxt = []
        for cur in frontier:
            for nb in around[cur]:
                if nb not in parent:
                    parent[nb], depth[nb] = cur, depth[cur] + 1
                    nxt.append(nb)
        frontier = nxt
    return parent, depth


def _reached(around, cells, root):
    """The cells of the set `cells` 4-connected to root through `cells` (root included)."""
    reached, stack = {root}, [root]
    while stack:
        for nb in around[stack.pop()]:
            if nb in cells and nb not in reached:
                reached.add(nb)
                stack.append(nb)
    return reached


def _subtree(tree, terminals):
    """Cells of the smallest subtree holding all terminals: what a walk visiting them must cover.

    Lifts the deepest terminal to its parent until all meet; the cells passed are the union of
    the tree paths between the terminals.
    """
    parent, depth = tree
    frontier, cells = set(terminals), set(terminals)
    while len(frontier) > 1:
        x = max(frontier, key=depth.get)
        frontier.discard(x)
        frontier.add(parent[x])
        cells.add(parent[x])
    return cells


def _maze_sightings(p, labels, area):
    """Per frame: the agent's candidate cells (None if not seen), its blob, readable, two agents.

    Candidates are the free cells of the agent's blob with >= 1/2 of its peak area, the
    heaviest first (a smeared agent can be anywhere along its smear).

    A frame is readable when one agent is seen (one blob of SEEN_MASS of its frame-0 area) and
    at most UNREAD_SHARE (and 3) of the free cells away from it (not in or next to its blob, where
    a moving, smeared agent leaves mixed cells) read "unknown".
    """
    n_frames = len(labels)
    free = ~p.grid
    unknown = (labels == UNKNOWN) & free                                     # (F, R, C)
    max_unknown = max(3, UNREAD_SHARE * free.sum())
    cells = [None] * n_frames
    blobs = [set() for _ in range(n_frames)]
    one = np.zeros(n_frames, dtype=bool)                                     # one agent seen
    two = np.zeros(n_frames, dtype=bool)
    near = np.zeros(labels.shape, dtype=bool)                                # (F, R, C) its blob
    for f, (main, mass, other, peak) in enumerate(_blobs(area)):
        blobs[f] = main
        seen = SEEN_MASS[0] <= mass <= SEEN_MASS[1]
        two[f] = mass >= SEEN_MASS[0] and other >= SECOND_MASS
        if seen and not two[f]:
            for x in main:
                near[f][x] = True
            cells[f] = sorted((x for x in main if free[x] and area[f][x] >= 0.5 * area[f][peak]),
                              key=lambda x: -area[f][x])
            one[f] = bool(cells[f])
    near |= _dilate(near)                                                    # ... and next to it
    readable = one & ((unknown & ~near).sum((1, 2)) <= max_unknown)
    return cells, blobs, readable, two


def _maze_walk(p, around, first, cells, blobs, readable, still, cut, n_frames):
    """Follow the agent from sighting to sighting; (credited cells, events, last sighting).

    Between successive readable frames fa < fb (agent at a, then b) the agent walks the tree path
    a -> b: its new trail cells (first visited in (fa, fb]) are seen walked when they lie on that
    path, next to a or b, or where the agent's blob was seen in fa or fb (a dead end it stepped
    into). Other new
    trail cells are trail off the walk: never credited ("away from the agent"). The walk covering
    the credited cells has 2 * edges - d(a, b) moves and may cross only trail cells (a cell on it
    with no trail by fb + 1 is a teleport, which ends the trajectory). A walk over the budget is a
    pace violation: only the share budget / moves of its cells, nearest to a, is credited. Events
    are (frame, why, ends the trajectory). around: _open_neighbours(~p.grid).
    """
    tree = _maze_tree(around, p.start)
    budgets = {gap: allowed_moves(p, n_frames, gap) for gap in (1, CATCH_UP)}
    credited, events = {p.start}, []
    by_frame = {}
    for r, c in np.argwhere((first > 0) & (first < NEVER) & ~p.grid):
        by_frame.setdefault(int(first[r, c]), []).append((int(r), int(c)))
    fa, a, f_change = 0, p.start, 0
    for fb in range(1, min(cut, n_frames)):
        if not readable[fb]:
            continue
        new = [x for f in range(fa + 1, fb + 1) for x in by_frame.get(f, []) if x in tree[0]]
        best = None
        for where in cells[fb]:  # the agent may be anywhere in its (smeared) blob: the best fit
            path = _subtree(tree, [a, where])
            beside = set(around[a] + around[where])
            seen = [x for x in new if x in path or x in beside or x in blobs[fb] or x in blobs[fa]]
            walk = _subtree(tree, seen + [a, where])
            moves = 2 * (len(walk) - 1) - (len(path) - 1)
            gap = [x for x in walk - {a, where} if first[x] > fb + 1]
            key = (bool(gap), len(new) - len(seen), moves)
            if best is None or key < best[0]:
                best = (key, where, seen, moves, gap)
        _, b, seen, moves, gap = best
        if gap:
            events.append((fb, f"teleport: the agent went from {a} (frame {fa}) to {b} (frame "
                               f"{fb}) over {min(gap)}, which shows no trail", True))
            break
        budget = budgets[_catch_up(still[fa], fb > fa + 1, f_change, fa)]
        if new or b != a:
            f_change = fb
        off = sorted(set(new) - set(seen))
        if off:
            events.append((fb, f"trail appeared at {off[0]} in frame {fb}, away from the agent "
                               f"(seen at {a} and then {b})", False))
        if moves <= budget:
            credited.update(seen)
        else:
            near = sorted(seen, key=lambda x: len(_subtree(tree, [a, x])))
            credited.update(near[:len(seen) * budget // moves])
            events.append((fb, f"{len(seen)} cells visited within 1 frame at frame {fb}: the walk "
                               f"needs {moves} moves, at most {budget} are seen", False))
        fa, a = fb, b
    return credited, events, (fa, a)


def _score_maze(p, g, video):
    """Maze: P/R over path cells, SR = one seen, legal walk start -> goal, r = R_conn * R_wall.

    Labels from the patches, the agent from the samples (_maze_sightings), visits from
    _maze_visits, the walk from _maze_walk. Violations: a wall cell with trail or agent area, two
    agents in a frame, a teleport, more than MAX_BLIND frames without the agent (these end the
    trajectory), and pace overruns (credit in proportion). SR also needs the agent last seen on the
    goal in one of the last MAX_BLIND + 1 frames, walls kept (LAYOUT_KEEP) and no repaint (at most
    REPAINT_SHARE of the cells changed other than by trail or agent on visited cells).
      P = |V & S*| / |V|, R = |V & S*| / |S*|, V = visited cells - start, S* = GT path - start
      R_conn = share of S* reachable from start through credited cells (the seen, paced walk)
      R_wall = (1 - w)^2, w = share of V that are walls
      walked = share of V credited to the walk (trail off the walk costs this precision)
      r = R_conn * R_wall * walked * layout * repaint * single (share of frames with one agent)
    R_conn * R_wall is the paper's form (arXiv 2605.15458, section 4.3); the component definitions
    and the gates are our design.
    """
    palette = np.array([pz.MAZE_COLORS[k] for k in MAZE_CLASSES], dtype=np.float32)
    expect = np.where(p.grid, M_WALL, M_FLOOR)
    expect[p.goal], expect[p.start] = M_GOAL, M_AGENT
    zero = dict(conn=0.0, wall=0.0, walked=0.0, layout=0.0, repaint=0.0, single_agent=0.0)
    labels, protos = _frame0(g, video, palette, expect, (M_FLOOR, M_WALL))
    if labels is None:
        return _failed(zero, protos)
    n_frames = len(labels)
    tetras = ((M_FLOOR, M_WALL, M_TRAIL, M_AGENT), (M_FLOOR, M_GOAL, M_TRAIL, M_AGENT))
    area = _sprite_area(_samples(video, g), protos, (M_AGENT,), tetras, expect == M_GOAL,
                        [p.start])[0]                                          # (F, R, C)
    first = _maze_visits(labels, p.start)
    cells, blobs, readable, two = _maze_sightings(p, labels, area)

    events = []
    cut = _blind_cut(readable)
    if cut < NEVER:
        events.append((cut, f"the agent is not seen (or the board not read) in more than "
                            f"{MAX_BLIND} frames in a row from frame {cut}", True))
    for r, c in np.argwhere(p.grid & (first < NEVER)):
        events.append((int(first[r, c]), f"crossed the wall at ({r}, {c})", True))
    in_wall = np.argwhere((area >= IN_WALL) & p.grid[None])
    if len(in_wall):
        f, r, c = in_wall[0]
        events.append((int(f), f"crossed the wall at ({r}, {c}): agent inside it, frame {f}", True))
    if two.any():
        f = int(np.argmax(two))
        events.append((f, f"two agents at frame {f}", True))
    cut = min([cut] + [f for f, _, ends in events if ends])
    still = _still(labels, area)
    around = _open_neighbours(~p.grid)
    credited, walk_events, (f_last, a_last) = _maze_walk(p, around, first, cells, blobs, readable,
                                                         still, cut, n_frames)
    events += walk_events
    single = 1.0 - float(two[1:].mean())

    end = _final(labels)
    walls_kept = float((end[p.grid] == M_WALL).mean())
    layout = float(walls_kept >= LAYOUT_KEEP)
    visited = (first < NEVER) & ~p.grid
    explained = (end == expect) | (visited & ((end == M_TRAIL) | (end == M_AGENT)))
    repainted = int((~explained).sum())
    repaint = float(repainted <= REPAINT_SHARE * p.grid.size)
    on_goal = a_last == p.goal and f_last >= n_frames - 1 - MAX_BLIND

    gt = set(p.solution[1:])
    pred = {(int(r), int(c)) for r, c in np.argwhere(first < NEVER)} - {p.start}
    precision, recall, f1 = _prf(len(pred & gt), len(pred), len(gt))
    conn = len(gt & _reached(around, credited, p.start)) / len(gt)
    wall = float(1 - sum(p.grid[c] for c in pred) / max(1, len(pred))) ** 2
    walked = len(pred & credited) / len(pred) if pred else 0.0
    reward = conn * wall * walked * layout * repaint * single

    if events:
        reason = _first(events)
    elif not pred:
        reason = "nothing moved: the agent never left the start (static video?)"
    elif not layout:
        reason = (f"layout changed: only {walls_kept:.0%} of the wall cells still read as wall "
                  "at the end")
    elif not repaint:
        reason = (f"wholesale repaint: {repainted} cells changed in ways the legal walk does not "
                  "explain")
    elif not on_goal or conn < 1:
        reason = "the agent does not end on the goal"
    else:
        reason = "ok"
    comps = dict(conn=conn, wall=wall, walked=walked, layout=layout, repaint=repaint,
                 single_agent=single, first_frame=1.0)
    return Score(precision, recall, f1, int(reason == "ok"), float(reward), comps, reason)


# -----------------------------------------------------------------------------
# FlowFree

def _same_neighbours(colouring):
    """Same-colour coloured 4-neighbours per cell of (..., R, C) colourings (labels >= 1 count)."""
    rows, cols = colouring.shape[-2:]
    pad = np.full(colouring.shape[:-2] + (rows + 2, cols + 2), UNKNOWN)
    pad[..., 1:-1, 1:-1] = colouring
    same = np.zeros(colouring.shape, dtype=int)
    for dr, dc in pz.DIRS:
        nb = pad[..., 1 + dr:1 + dr + rows, 1 + dc:1 + dc + cols]
        same += (nb == colouring) & (colouring >= 1)
    return same


def _dilate(mask):
    """Cells of (..., R, C) bool masks with a True 4-neighbour."""
    out = np.zeros_like(mask)
    out[..., 1:, :] |= mask[..., :-1, :]
    out[..., :-1, :] |= mask[..., 1:, :]
    out[..., :, 1:] |= mask[..., :, :-1]
    out[..., :, :-1] |= mask[..., :, 1:]
    return out


def _flow_process(p, labels, expect):
    """What every readable frame of a FlowFree video must show (our rules; see the module text).

    Returns (readable (F,) bool, events [(frame, why, ends trajectory)], pace credit in [0, 1]).
    A cell's colour is its first reading steady over 2 frames. Checked in each readable frame: an
    endpoint reads another colour; a cell reads a colour other than its own (a crossing, a flashed
    wrong board); a drawn cell is erased (steady background again); a cell has three same-colour
    neighbours (an endpoint two): a branch or self-touch. Between readable frames: the newly drawn
    cells of each colour join that colour's cells drawn before (growth from the endpoints), and
    at most allowed_moves(..., 1) of them (CATCH_UP frames' worth after a still frame); pace
    credit = seen moves within budget / all moves. A cell first read on the last frame is growth of
    that frame.
    """
    n_frames, size = len(labels), p.grid.shape[0]
    readable = (labels == UNKNOWN).sum((1, 2)) <= max(3, UNREAD_SHARE * size * size)
    readable[0] = True
    steady = np.where(labels[:-1] == labels[1:], labels[:-1], UNKNOWN)      # (F-1, R, C)
    painted = steady >= 1
    first = np.where(painted.any(0), painted.argmax(0), NEVER)              # (R, C)
    colour = np.take_along_axis(steady, np.minimum(first, n_frames - 2)[None], 0)[0]
    colour = np.where(first < NEVER, colour, UNKNOWN)                       # (R, C)
    last = (first == NEVER) & (labels[-1] >= 1)  # drawn on the last frame: it counts at the end,
    first = np.where(last, n_frames - 1, first)  # so it is growth of that frame (a flash of the
    colour = np.where(last, labels[-1], colour)  # solved board on the last frame is a jump)
    frames = np.arange(n_frames)[:, None, None]
    drawn = labels >= 1
    bad = {
        "an endpoint changed colour": (expect >= 1) & (labels != UNKNOWN) & (labels != expect),
        "a cell changed colour after it was drawn (a crossing or a flashed board)":
            drawn & (colour >= 1) & (labels != colour),
        "a drawn cell was erased": np.concatenate([steady == 0, np.zeros_like(steady[:1], bool)])
            & (frames > first),
        "a pipe branches or touches itself: not a simple path":
            drawn & (_same_neighbours(labels) > np.where(expect >= 1, 1, 2)),
    }
    events = []
    for why, mask in bad.items():
        hit = np.nonzero(mask.any((1, 2)) & readable)[0]
        if len(hit):
            r, c = np.argwhere(mask[hit[0]])[0]
            events.append((int(hit[0]), f"{why}: cell ({r}, {c}), frame {hit[0]}", True))
    grown = expect >= 1
    still = _still(labels)
    fa, seen, over, f_change = 0, 0, 0, 0
    for fb in np.nonzero(readable)[0][1:]:
        new = (first > fa) & (first <= fb) & (expect < 1)
        n_new = int(new.sum())
        budget = allowed_moves(p, n_frames, _catch_up(still[fa], fb > fa + 1, f_change, fa))
        if n_new:
            f_change = fb
        seen, over = seen + min(n_new, budget), over + max(0, n_new - budget)
        if n_new > budget:
            events.append((int(fb), f"{n_new} cells drawn within 1 frame at frame {fb}, at most "
                                    f"{budget} are seen", False))
        same = (colour[None] == np.arange(1, len(p.endpoints) + 1)[:, None, None])  # (k, R, C)
        reach = grown & same
        for _ in range(n_new):
            grow = new & same & _dilate(reach) & ~reach
            if not grow.any():
                break
            reach |= grow
        loose = new & ~reach.any(0)
        if loose.any():
            r, c = np.argwhere(loose)[0]
            events.append((int(fb), f"pipe cell ({r}, {c}) of colour {colour[r, c] - 1} in frame "
                                    f"{fb} is not on a simple path grown from its endpoints", True))
        grown |= new
        fa = fb
    pace = seen / (seen + over) if seen + over else 1.0
    return readable, events, pace


def _last_known(labels):
    """Per cell, the last label of the frames that is not UNKNOWN (UNKNOWN if none): (R, C)."""
    out = np.full(labels.shape[1:], UNKNOWN)
    for frame in labels:
        out = np.where(frame != UNKNOWN, frame, out)
    return out


def _score_flowfree(p, g, video, weights):
    """FlowFree: the drawing process (_flow_process) and the colouring it ends on.

    The colouring is each cell's last clear reading in the readable frames before the trajectory
    ends (a blind run, or the first violation that ends it), so a cell drawn on the last frame
    counts. N = non-endpoint cells.
      P = correct / coloured cells of N, R = correct / |N| (endpoints excluded: they are given)
      SR = no violation, every cell coloured, endpoints keep their colour, each colour one simple
           path (connected, endpoints with 1 same-colour neighbour, other cells 2)
      c1 endpoints    = share of endpoints with their colour and exactly 1 same-colour neighbour
      c2 connectivity = share of colours whose two endpoints are joined through same-colour cells
      c3 validity     = share of N coloured with exactly 2 same-colour neighbours
      c4 coverage     = share of N coloured
      r = (w . c) * P * pace
    The default weights are the paper's (arXiv 2605.15458, section 4.3; REWARD_WEIGHTS also holds
    the official code's); the mapping of the terms and the factors P (a complete but wrong board
    cannot outscore a correct partial one: the puzzle has one solution, so P against the GT is P
    against every solution) and pace are our design.
    A static video scores 0 on all four (endpoints have no same-colour neighbour yet).
    """
    k = len(p.endpoints)
    palette = np.array((pz.FLOW_BG,) + pz.FLOW_COLORS[:k], dtype=np.float32)
    size = p.grid.shape[0]
    expect = np.zeros((size, size), dtype=int)
    for i, (a, b) in enumerate(p.endpoints):
        expect[a] = expect[b] = i + 1
    zero = dict(endpoints=0.0, connectivity=0.0, validity=0.0, coverage=0.0, pace=0.0)
    labels, protos = _frame0(g, video, palette, expect, tuple(range(k + 1)), FLOW_RATIO)
    if labels is None:
        return _failed(zero, protos)
    readable, events, pace = _flow_process(p, labels, expect)
    cut = _blind_cut(readable)
    if cut < NEVER:
        events.append((cut, f"the board is not read in more than {MAX_BLIND} frames in a row "
                            f"from frame {cut}", True))
    cut = min([cut] + [f for f, _, ends in events if ends])
    keep = readable & (np.arange(len(labels)) < cut)
    final = _last_known(labels[keep])

    same = _same_neighbours(final)
    n_cells = expect < 1
    coloured = final >= 1
    ends_ok = [final[e] == i + 1 and same[e] == 1
               for i, pair in enumerate(p.endpoints) for e in pair]
    joined = [bool(final[a] == i + 1 and final[b] == i + 1
                   and b in pz.bfs_distances(final == i + 1, a))
              for i, (a, b) in enumerate(p.endpoints)]
    terms = (float(np.mean(ends_ok)), float(np.mean(joined)),
             float((n_cells & coloured & (same == 2)).sum() / n_cells.sum()),
             float((n_cells & coloured).sum() / n_cells.sum()))

    truth = np.full((size, size), UNKNOWN)
    for i, path in enumerate(p.paths):
        for cell in path:
            truth[cell] = i + 1
    precision, recall, f1 = _prf(int((n_cells & (final == truth)).sum()),
                                 int((n_cells & coloured).sum()), int(n_cells.sum()))
    reward = float(np.dot(weights, terms)) * (precision or 0.0) * pace
    single = [len(pz.bfs_distances(final == i + 1, a)) == (final == i + 1).sum()
              for i, (a, _) in enumerate(p.endpoints)]
    if events:
        reason = _first(events)
    elif not (n_cells & coloured).any():
        reason = "nothing drawn: no pipe cell coloured (static video?)"
    elif not coloured.all():
        reason = f"{int((~coloured).sum())} cell(s) not coloured at the end"
    elif not all(final[e] == i + 1 for i, pair in enumerate(p.endpoints) for e in pair):
        reason = "an endpoint lost its colour"
    elif not (all(ends_ok) and all(joined) and all(single) and (same[n_cells] == 2).all()):
        bad = [i for i in range(k) if not (joined[i] and single[i])]
        reason = (f"colour {bad[0]} is not one simple path between its endpoints" if bad else
                  "a pipe branches or touches itself")
    else:
        reason = "ok"
    comps = dict(endpoints=terms[0], connectivity=terms[1], validity=terms[2], coverage=terms[3],
                 pace=pace, first_frame=1.0)
    return Score(precision, recall, f1, int(reason == "ok"), reward, comps, reason)


# -----------------------------------------------------------------------------
# Sokoban

def _sokoban_walk(wall, a, b, limit, known=frozenset()):
    """Pushes of a legal unit-move sequence of at most `limit` moves from state a to state b.

    States are (player, frozenset of boxes); returns (pushes [(box cell before, after)], moves
    from the first push to the end: 0 without a push), or None if there is no such sequence.

    Of all such sequences it returns one with the fewest pushes: pushes nobody saw are not invented
    (the shortest walk may push a box out and back where the video walked around it). Among those it
    prefers pushes in `known` (the GT's): when sprites sit between cells for many frames, two routes
    can explain the same change and the pixels cannot tell which was taken. A move steps onto
    free floor, or into a box that slides one cell onto free floor (no chains, no pulls). Search:
    one layer per move count, each state kept with its fewest pushes; stops early once the lower
    bound (each moved box needs its Manhattan shift in pushes) is met, or after MAX_WALK_STATES
    states.
    """
    moved_from, moved_to = a[1] - b[1], b[1] - a[1]
    if len(moved_from) != len(moved_to):
        return None
    bound = sum(min(abs(x[0] - y[0]) + abs(x[1] - y[1]) for y in moved_to) for x in moved_from)
    if bound > limit:
        return None  # prunes far teleports without a search
    # per move count: state -> ((pushes, non-GT pushes), parent, push)
    layers = [{a: ((0, 0), None, None)}]
    found, work = None, 0
    for t in range(1, limit + 1):
        layer = {}
        for state, ((n_push, n_new), _, _) in layers[-1].items():
            player, boxes = state
            for d in pz.DIRS:
                step = pz._add(player, d)
                if wall[step]:
                    continue
                push, new = None, (step, boxes)
                if step in boxes:
                    dest = pz._add(step, d)
                    if wall[dest] or dest in boxes:
                        continue
                    push, new = (step, dest), (step, (boxes - {step}) | {dest})
                pushed = push is not None
                cost = (n_push + pushed, n_new + (pushed and push not in known))
                if new not in layer or layer[new][0] > cost:
                    layer[new] = (cost, state, push)
        layers.append(layer)
        if b in layer and (found is None or layer[b][0] < layers[found][b][0]):
            found = t
        work += len(layer)
        if found is not None and layers[found][b][0] == (bound, 0) or work > MAX_WALK_STATES:
            break
    if found is None:
        return None
    pushes, state, first_push = [], b, found + 1
    for t in range(found, 0, -1):
        _, state, push = layers[t][state]
        if push:
            pushes.append(push)
            first_push = t
    return pushes[::-1], found - first_push + 1


def _pusher_ok(main, box_area, box, boxes):
    """False if the box at `box` is between two cells (box area split with a free neighbour) and
    the player's blob `main` is not within one cell of that axis line: behind the box, under it (a
    smeared push) or ahead of it (a smeared player may show a cell to the side). A push moves
    player and box in lockstep (our design; the walk search between boards rules out pulls).
    """
    for nb in pz._neighbours(box, *box_area.shape):
        if nb in boxes or box_area[nb] < SPRITE_MIN or box_area[box] >= 0.8:
            continue
        d = np.subtract(nb, box)
        line = {tuple(np.subtract(box, d)), box, nb, tuple(np.add(nb, d))}
        if not any(abs(x[0] - y[0]) + abs(x[1] - y[1]) <= 1 for x in line for y in main):
            return False
    return True


def _sokoban_frames(p, labels, player_area, box_area):
    """Per frame: the board (player, frozenset of boxes) or None, violations (frame, why, ends) and
    the player's other candidate cells.

    A frame is readable (has a board) when one player is seen (SEEN_MASS of its frame-0 area) and
    the boxes snap to distinct cells (the n cells with the most box area, each >= 0.25 of a box,
    and no further cell with 0.8 of one: a box too many); the player stands on the heaviest cell of
    its blob that is not a box cell. The other free cells of the blob with >= 1/2 of that cell's
    area are candidates too (a player smeared along a push can be anywhere along its smear; the
    transition search takes the first that explains the change, as the maze walk does).
    A board with player None: the boxes read at rest and the player is seen smeared, not on one
    cell (its free cells above the blob floor of _blobs total SMEAR_MASS of its frame-0 area or
    more, but no blob holds SEEN_MASS: a sprite smeared over a latent frame's 4 frames). It is
    evidence that the player is there and moving, not of where: it supports a walk only
    (_score_sokoban). A player absent or faint (less area in total) gives no board at all.
    Violations: player or box area >= IN_WALL inside a wall cell (a sprite between two cells
    across a wall has passed it); two players; a box between two cells with no pusher in push
    position; a target reading floor in two frames running.
    """
    n_frames, n_boxes = len(labels), len(p.boxes)
    is_target = np.zeros(p.grid.shape, dtype=bool)
    for t in p.targets:
        is_target[t] = True
    events = []
    in_wall = p.grid[None] & ((player_area >= IN_WALL) | (box_area >= IN_WALL))  # (F, R, C)
    if in_wall.any():
        f, r, c = np.argwhere(in_wall)[0]
        events.append((int(f), f"box or player inside the wall at ({r}, {c}), frame {f}", True))
    lost = is_target & (labels == S_FLOOR)
    lost = lost[:-1] & lost[1:]
    if lost.any():
        f, r, c = np.argwhere(lost)[0]
        events.append((int(f), f"target at ({r}, {c}) disappeared at frame {f}", True))
    floor = _blob_floor(player_area)                                         # (F,)
    on_floor = (player_area >= floor[:, None, None]) & ~p.grid[None]         # (F, R, C)
    total = np.where(on_floor, player_area, 0.0).sum((1, 2))                 # (F,)
    smeared = (total >= SMEAR_MASS) & (total <= SEEN_MASS[1])
    boards = [None] * n_frames
    boards[0] = (p.start, frozenset(p.boxes))
    others = [[] for _ in range(n_frames)]
    free_box = np.where(p.grid, 0.0, box_area)                                  # (F, R, C)
    player_blobs = _blobs(player_area)
    for f in range(1, n_frames):
        main, mass, other, peak = player_blobs[f]
        if mass >= SEEN_MASS[0] and other >= SECOND_MASS:
            events.append((f, f"two players at frame {f}", True))
            break
        order = np.argsort(-free_box[f], axis=None)
        cells = [tuple(int(x) for x in np.unravel_index(i, p.grid.shape)) for i in order[:n_boxes]]
        extra = free_box[f].ravel()[order[n_boxes]]
        if extra >= 0.8 or min(box_area[f][x] for x in cells) < 0.25:
            continue
        if not SEEN_MASS[0] <= mass <= SEEN_MASS[1]:
            if smeared[f] and all(box_area[f][x] >= 0.8 for x in cells):
                boards[f] = (None, frozenset(cells))  # boxes at rest, the player seen smeared
            continue
        spots = sorted((x for x in main if x not in cells and not p.grid[x]),
                       key=lambda x: -player_area[f][x])
        if not spots:
            continue
        peak = spots[0]
        moving = [b for b in cells if not _pusher_ok(main, box_area[f], b, cells)]
        if moving:
            events.append((f, f"box at {moving[0]} moves without a pusher in push position "
                              f"(moved by itself), frame {f}", True))
            break
        boards[f] = (peak, frozenset(cells))
        others[f] = [x for x in spots[1:] if player_area[f][x] >= 0.5 * player_area[f][peak]]
    return boards, events, others


def _sokoban_step(wall, reached, board, others, limit, caps, known):
    """(board, (pushes, moves from the first push)) of the first reading that a legal walk explains.

    The readings are `board`, then the same boxes with the player on each cell of `others`; a walk
    explains one when it has at most `limit` moves, at most caps[0] of them from its first push on
    and at most caps[1] pushes (_sokoban_walk). (board, None) if none does.
    """
    for player in [board[0]] + list(others):
        reading = (player, board[1])
        step = _sokoban_walk(wall, reached, reading, limit, known)
        if step is not None and step[1] <= caps[0] and len(step[0]) <= caps[1]:
            return reading, step
    return board, None


def _target_mask(p):
    """(R, C) bool: the Sokoban targets."""
    mask = np.zeros(p.grid.shape, dtype=bool)
    for t in p.targets:
        mask[t] = True
    return mask


@lru_cache(maxsize=4096)
def _pushes_left(wall_bytes, shape, player, boxes, targets):
    """Optimal pushes from a board to the solution (pz.solve_sokoban), None if none is found."""
    wall = np.frombuffer(wall_bytes, dtype=bool).reshape(shape)
    pushes = pz.solve_sokoban(wall, player, boxes, targets, max_states=SOLVE_STATES)
    return None if pushes is None else len(pushes)


def _sokoban_progress(p, board):
    """Share of the optimal pushes done: 1 - pushes left from `board` / pushes from the start.

    0 if the board is further away than the start or dead (no solution found). Our design for
    R_proc: it grows with every push that brings the solution closer and with nothing else.
    """
    gt = [(s[0], frozenset(s[1])) for s in p.solution]
    n_gt = sum(a[1] != b[1] for a, b in zip(gt, gt[1:]))
    if board in gt:
        done = sum(a[1] != b[1] for a, b in zip(gt, gt[1:gt.index(board) + 1]))
        return done / n_gt
    left = _pushes_left(p.grid.tobytes(), p.grid.shape, board[0], tuple(sorted(board[1])),
                        tuple(sorted(p.targets)))
    return 0.0 if left is None else max(0.0, 1 - left / n_gt)


def _score_sokoban(p, g, video, weights):
    """Sokoban: boards per readable frame, legal transitions, pushes vs GT pushes.

    Boards and one-frame violations come from _sokoban_frames. Between successive boards there must
    be a legal unit-move sequence (_sokoban_walk) of at most allowed_moves(..., 1) moves from its
    first push on, and at most MAX_PACE times the GT pace in pushes (no slack: a push is what
    counts, and a short solution must not fit the slack of one frame). The same budget holds for
    a walk that pushes nothing, after the last push too: the player's walk is one legal walk on
    the floor through the whole video, as the maze agent's. Frames between two boards that show
    the boxes at rest where they were and the player smeared (seen, not on one cell) add one
    frame's budget each for walking only. A frame where the player is not seen (absent, faint)
    or the boxes do not read at rest supports no move and never widens the budget; more than
    MAX_BLIND such frames in a row end the trajectory.
      P = |pushes & GT pushes| / |pushes|, R = ... / |GT pushes| (multisets of (from, to) box cells)
      R_state = share of boxes on targets in the last board reached legally
      R_proc = share of the optimal pushes done by that board (_sokoban_progress)
      SR = no violation, the last board is seen in one of the last MAX_BLIND + 1 frames and has
           every box on a target
    The default weights are the paper's (arXiv 2605.15458, section 4.3; REWARD_WEIGHTS["code"]
    are the official code's 0.3 / 0.7); R_state follows its boxes-on-target form, R_proc as
    progress is our design (no credit for moving without progress).
    """
    palette = np.array([pz.SOKO_COLORS[k] for k in SOKO_CLASSES], dtype=np.float32)
    expect = np.where(p.grid, S_WALL, S_FLOOR)
    for t in p.targets:
        expect[t] = S_TARGET
    for b in p.boxes:
        expect[b] = S_BOX
    expect[p.start] = S_PLAYER
    zero = dict(state=0.0, proc=0.0, layout=0.0)
    labels, protos = _frame0(g, video, palette, expect, (S_FLOOR, S_WALL))
    if labels is None:
        return _failed(zero, protos)
    n_frames = len(labels)
    tetras = ((S_FLOOR, S_WALL, S_BOX, S_PLAYER), (S_FLOOR, S_TARGET, S_BOX, S_PLAYER))
    player_area, box_area = _sprite_area(_samples(video, g), protos, (S_PLAYER, S_BOX), tetras,
                                         _target_mask(p), [p.start, p.boxes[0]])
    targets = frozenset(p.targets)
    boards, events, others = _sokoban_frames(p, labels, player_area, box_area)
    max_pushes = int(np.ceil(MAX_PACE * p.n_moves / pz.solve_frames(n_frames)))
    still = _still(labels, player_area, box_area)
    held = False
    gt_pushes = Counter((s[1][i], t[1][i]) for s, t in zip(p.solution, p.solution[1:])
                        for i in range(len(p.boxes)) if s[1][i] != t[1][i])
    pushes, n_trans, reached, f_last, n_still, run = [], 0, boards[0], 0, 0, 0
    f_change = 0  # the frame of the last board change
    cut = min([NEVER] + [f for f, _, _ in events])
    for f in range(1, min(cut, n_frames)):
        board = boards[f]
        if board is None or (board[0] is None and board[1] != reached[1]):
            run += 1
            if run > MAX_BLIND:
                events.append((f - run + 1, f"the player or the boxes are not seen in more than "
                                            f"{MAX_BLIND} frames in a row from frame {f - run + 1}",
                               True))
                break
            continue
        run = 0
        if board[0] is None:  # boxes where they were, the player smeared: it may walk, not push
            n_still += 1
            continue
        catch_up = _catch_up(still[f_last] or held, f > f_last + 1, f_change, f_last)
        budget = allowed_moves(p, n_frames, catch_up)
        held = board == reached  # the board did not change since the last one
        if board != reached:
            limit = allowed_moves(p, n_frames, max(catch_up, 1 + n_still))
            board, step = _sokoban_step(p.grid, reached, board, others[f], limit,
                                        (budget, max_pushes), frozenset(gt_pushes))
            if step is None:
                events.append((f, f"illegal change between frames {f_last} and {f}: no legal "
                                  f"move sequence of <= {limit} moves (<= {budget} from the "
                                  f"first push on, <= {max_pushes} pushes) leads from one board "
                                  "to the next", True))
                break
            pushes += step[0]
            n_trans += 1
            reached, f_change = board, f
        f_last, n_still = f, 0

    got = Counter(pushes)
    precision, recall, f1 = _prf(sum((got & gt_pushes).values()), sum(got.values()),
                                 sum(gt_pushes.values()))
    r_state = len(reached[1] & targets) / len(targets)
    r_proc = _sokoban_progress(p, reached)
    layout = float((_final(labels)[p.grid] == S_WALL).mean() >= LAYOUT_KEEP)
    reward = (weights[0] * r_state + weights[1] * r_proc) * layout

    if events:
        reason = _first(events)
    elif n_trans <= 0:
        reason = "nothing moved: the board never changes (static video?)"
    elif not layout:
        reason = "layout changed: walls do not read as wall at the end"
    elif reached[1] != targets:
        reason = f"{len(targets - reached[1])} box(es) not on a target at the end"
    elif f_last < n_frames - 1 - MAX_BLIND:
        reason = "the solved board is not seen at the end"
    else:
        reason = "ok"
    comps = dict(state=float(r_state), proc=float(r_proc), layout=layout, first_frame=1.0)
    return Score(precision, recall, f1, int(reason == "ok"), float(reward), comps, reason)


# -----------------------------------------------------------------------------
# entry points

def score(puzzle, video, flow_weights=None, sokoban_weights=None, weights="paper"):
    """Score one video of `puzzle`.

    Returns P, R, F1, success (0/1), the dense reward in [0, 1], its components and the reason
    success failed ("ok" if it did not). Raises ValueError for a wrong shape or dtype, fewer than
    MIN_FRAMES frames, a float video outside [-1, 1], a frame too small for the grid, or an
    unknown `weights` name; any content (black, noise, a frozen frame 0, NaN) gets a Score.
    weights names a set of REWARD_WEIGHTS ("paper" or "code"); flow_weights (4 terms) and
    sokoban_weights (state, process), when given, override that set's. Only the reward depends on
    the weights: success, P, R and F1 do not.
    """
    if weights not in REWARD_WEIGHTS:
        raise ValueError(f"unknown reward weights {weights!r}; expected one of "
                         f"{sorted(REWARD_WEIGHTS)}")
    named = REWARD_WEIGHTS[weights]
    flow_weights = named["flow"] if flow_weights is None else flow_weights
    sokoban_weights = named["sokoban"] if sokoban_weights is None else sokoban_weights
    video = _as_video(video)
    g = pz.geometry(puzzle, video.shape[1], video.shape[2])
    if puzzle.domain not in pz.DOMAINS:
        raise ValueError(f"unknown puzzle domain {puzzle.domain!r}; expected one of {pz.DOMAINS}")
    why = _non_finite(video)
    if why is not None:
        return _failed({}, why)
    if puzzle.domain == "maze":
        return _score_maze(puzzle, g, video)
    if puzzle.domain == "flowfree":
        return _score_flowfree(puzzle, g, video, flow_weights)
    return _score_sokoban(puzzle, g, video, sokoban_weights)


def summarize(scores):
    """Aggregate like the paper's table.

    P = mean of defined per-sample P, R = mean R, F1 = 2PR/(P+R) of those means, SR = mean success;
    plus f1_mean (mean per-sample F1) and the mean reward. P (and F1) are nan when no sample defines
    P; everything is nan for an empty list.
    """
    scores = list(scores)
    nan = float("nan")
    if not scores:
        return dict(n=0, precision=nan, recall=nan, f1=nan, success=nan, f1_mean=nan, reward=nan)
    defined = [s.precision for s in scores if s.precision is not None]
    prec = float(np.mean(defined)) if defined else nan
    rec = float(np.mean([s.recall for s in scores]))
    if np.isnan(prec):
        f1 = nan
    else:
        f1 = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
    return dict(n=len(scores), precision=prec, recall=rec, f1=f1,
                success=float(np.mean([s.success for s in scores])),
                f1_mean=float(np.mean([s.f1 for s in scores])),
                reward=float(np.mean([s.reward for s in scores])))
