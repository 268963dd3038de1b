"""Pixel verifiers for the VideoRLVR puzzles: P/R/F1/success and the dense reward read off a video.

VideoRLVR (arXiv 2605.15458, section 4.3 as quoted in luka-group/VideoRLVR issue #2) scores a generated
puzzle video with symbolic rule checkers and trains on a dense decomposed reward:
  maze      r = R_conn * R_wall
  flowfree  r = 0.15 c1 + 0.35 c2 + 0.30 c3 + 0.20 c4   (four structural terms; our mapping below)
  sokoban   r = 0.5 R_state + 0.5 R_proc
The paper's parser is not public; this one follows the project notes (shared/spec/puzzles.md 3.7, 4.5,
5.6, 7, 8): read the mean colour of each cell's central patch in every frame, classify it against
colour prototypes calibrated on the video's own frame 0 (undoes global colour shifts), then check the
rules on the symbolic sequence. The puzzle supplies geometry and expected layout; nothing else is read.

  score(puzzle, video) -> Score     one video; never raises on bad content, only on bad shape/dtype
  summarize(scores) -> dict         the paper's table: mean P, mean R, F1 of the means, mean SR

Video convention: (F, H, W, 3), channels last. uint8 is read as 0..255; floating point (numpy or torch)
is read as the VAE decoder's [-1, 1] (pass 2 * x - 1 for a [0, 1] video); anything else is a ValueError.
The frame count need not be 4k+1 (a dropped frame is damage, not an error).

Fast motion. With few frames several unit moves can fall between two frames. The verifier reasons about
time explicitly: a change between two frames is legal when some sequence of legal unit moves explains
it and that sequence is not longer than the frame gap allows at up to about twice the GT's pace
(allowed_moves). Teleports, wall crossings and jump cuts exceed it or break connectivity.

Run the tests: python -m pytest -q tests/test_reward.py; speed: python tests/bench_reward.py
"""
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

import puzzles as pz

PATCH = 0.3            # side of the central patch read per cell, as a fraction of the cell (spec 8.3):
                       # inside the thinnest drawn feature (trail 0.45 cell) so clean cells are pure
RATIO = 0.5            # label = nearest prototype only if 2x closer than the runner-up: a patch mixing two
                       # classes keeps the majority label while < 1/3 is foreign, else it is "unknown"
MAX_DIST = 60.0        # ... and within this RGB distance of it (spec 8.3 tau), else "unknown"
FLOW_RATIO = 0.7       # FlowFree has no moving sprites to half-cover a patch, but lossy chroma (JPEG
                       # 4:2:0 at 16-px cells quantises a cell's chroma as one block) moves close hues
                       # (yellow/orange, 83 apart) by different amounts per cell: accept a smaller margin
MIN_SEPARATION = 30.0  # calibrated prototypes closer than this: frame 0 does not show the puzzle
LAYOUT_KEEP = 0.95     # share of wall cells that must still read "wall" at the end (spec 7.3)
REPAINT_SHARE = 0.1    # maze: share of the board's cells that may change at the end in ways the legal
                       # walk does not explain (blur noise) before the reward is zeroed as a repaint
MOVE_SLACK = 2         # unit moves of slack per transition (frame rounding + classification lag)
SIGHTING_WINDOW = 2    # maze: a new trail cell must be near the agent if it is seen within this many
                       # frames (in a smeared stretch where it is not seen, the trail alone decides)
MAX_WALK_STATES = 50_000  # search budget for explaining one Sokoban board change (ms of CPU)
FLOW_WEIGHTS = (0.15, 0.35, 0.30, 0.20)  # endpoints, connectivity, validity, coverage (paper weights,
                                         # the order is our inference, spec 7.2)
SOKOBAN_WEIGHTS = (0.5, 0.5)             # state, process (paper: lambda_state = lambda_proc = 0.5)
UNKNOWN = -1
NEVER = 1 << 30        # "first frame" of a cell that is never visited

MAZE_CLASSES = ("floor", "wall", "goal", "agent", "trail")
SOKO_CLASSES = ("floor", "wall", "target", "box", "player")
M_FLOOR, M_WALL, M_GOAL, M_AGENT, M_TRAIL = range(5)
S_FLOOR, S_WALL, S_TARGET, S_BOX, S_PLAYER = range(5)


@dataclass
class Score:
    """One video's verdict. precision is None when nothing was predicted (the paper's table skips such
    samples in the P mean, spec 6); f1 is then 0. reward is the dense reward in [0, 1]."""
    precision: float | None
    recall: float
    f1: float
    success: int
    reward: float
    components: dict = field(default_factory=dict)
    reason: str = "ok"


# -----------------------------------------------------------------------------
# pixels -> per-cell labels

def _as_video(video):
    """(F, H, W, 3) uint8 or float numpy array; torch tensors are moved to CPU numpy once."""
    if hasattr(video, "detach"):  # torch.Tensor, without importing torch here
        v = video.detach()
        video = (v.float() if v.is_floating_point() else v).cpu().numpy()
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or video.shape[0] < 1:
        raise ValueError(f"video must have shape (F, H, W, 3) with channels last and F >= 1, got {video.shape} "
                         "(a VAE output (3, F, H, W) needs .permute(1, 2, 3, 0))")
    if video.dtype != np.uint8 and not np.issubdtype(video.dtype, np.floating):
        raise ValueError(f"video dtype must be uint8 (0..255) or float ([-1, 1]), got {video.dtype}")
    return video


def _cell_means(video, g):
    """Mean RGB (0..255) of each cell's central patch in every frame: (F, R, C, 3) float32.

    Gathers the patch rows first (one contiguous copy), sums them, then sums the patch columns: about
    3 ms for 49 x 480 x 480, where a mean over the strided 6-d view costs 5x more.
    """
    n_frames = video.shape[0]
    rows, cols, c = g.rows, g.cols, g.cell
    lo = int(round(c * (1 - PATCH) / 2))
    p = c - 2 * lo
    ys = (g.y0 + np.arange(rows)[:, None] * c + np.arange(lo, lo + p)[None, :]).ravel()   # (R*p,)
    floating = video.dtype != np.uint8
    acc = np.float32 if floating else (np.uint16 if p <= 257 else np.uint32)
    a = video[:, ys, g.x0:g.x0 + cols * c]                                 # (F, R*p, C*c, 3)
    a = a.reshape(n_frames, rows, p, cols * c * 3).sum(axis=2, dtype=acc)  # (F, R, C*c*3)
    a = a.reshape(n_frames, rows, cols, c, 3)[:, :, :, lo:lo + p]          # (F, R, C, p, 3)
    means = a.sum(axis=3, dtype=np.float32) / (p * p)                     # (F, R, C, 3)
    if floating:  # [-1, 1] -> [0, 255]; means of values in [-1, 1] stay in it, so this checks the range
        finite = means[np.isfinite(means)]
        if finite.size and (finite.min() < -1.5 or finite.max() > 1.5):
            raise ValueError(f"float video must be in [-1, 1] (VAE decoder output); its cell means span "
                             f"[{finite.min():.3g}, {finite.max():.3g}]. Pass uint8 for 0..255 data")
        means = (np.clip(means, -1, 1) + 1) * 127.5
    return means


def _classify(means, protos, ratio):
    """Nearest prototype per cell with the ratio / MAX_DIST rejection: (F, R, C) int, UNKNOWN if unsure."""
    d = np.sqrt(((means[..., None, :] - protos) ** 2).sum(-1))  # (F, R, C, K)
    two = np.partition(d, 1, axis=-1)                            # [..., 0] best, [..., 1] runner-up
    best = d.argmin(-1)
    ok = (two[..., 0] <= ratio * two[..., 1]) & (two[..., 0] <= MAX_DIST)  # NaN compares False
    return np.where(ok, best, UNKNOWN)


def _calibrate(m0, expect, palette):
    """Prototypes from frame 0: the median colour of the cells whose class frame 0 must show; classes
    absent from frame 0 (the maze trail) get their palette colour through a per-channel affine fit
    (gain, offset) of palette -> observed over the present classes (spec 8.3, step 3)."""
    k = len(palette)
    observed = np.zeros((k, 3), dtype=np.float32)
    present = np.zeros(k, dtype=bool)
    for i in range(k):
        cells = m0[expect == i]
        if len(cells):
            observed[i], present[i] = np.median(cells, axis=0), True
    protos = observed.copy()
    if not present.all():
        x, y = palette[present], observed[present]
        for ch in range(3):
            if np.ptp(x[:, ch]) > 0:
                gain, offset = np.polyfit(x[:, ch], y[:, ch], 1)
            else:
                gain, offset = 1.0, float(np.mean(y[:, ch] - x[:, ch]))
            protos[~present, ch] = np.clip(gain * palette[~present, ch] + offset, 0, 255)
    return protos


def _frame0(p, g, video, palette, expect, ratio=RATIO):
    """Labels of every frame, or (None, reason) when frame 0 is not the puzzle (reward-hacking guard:
    frame 0 must match the conditioning puzzle; garbage such as black or noise fails here)."""
    means = _cell_means(video, g)
    if not np.isfinite(means[0]).all():
        return None, "frame 0 has non-finite pixels"
    protos = _calibrate(means[0], expect, palette)
    d = np.sqrt(((protos[:, None] - protos[None]) ** 2).sum(-1)) + np.eye(len(protos)) * 1e9
    if d.min() < MIN_SEPARATION:
        return None, (f"frame 0 does not show the puzzle: its class colours are not separable "
                      f"(closest pair {d.min():.0f} apart in RGB, need {MIN_SEPARATION:.0f})")
    labels = _classify(means, protos, ratio)
    bad = np.argwhere(labels[0] != expect)
    if len(bad):
        r, c = bad[0]
        return None, (f"frame 0 does not match the puzzle: {len(bad)} cell(s) differ, first at ({r}, {c}) "
                      f"expected class {expect[r, c]}, found {labels[0, r, c]}")
    return labels, None


def _next_known(labels):
    """For each frame, the cell's next label that is not UNKNOWN (UNKNOWN after the last one): (F, R, C)."""
    nxt = np.full_like(labels, UNKNOWN)
    for f in range(len(labels) - 2, -1, -1):
        nxt[f] = np.where(labels[f + 1] != UNKNOWN, labels[f + 1], nxt[f + 1])
    return nxt


def _final(labels, n=3):
    """Per-cell label agreed by >= 2 of the last 3 frames (majority vote, spec 8.4), else UNKNOWN."""
    last = labels[-n:]
    if len(last) < 3:
        return last[-1]
    a, b, c = last
    return np.where((a == b) | (a == c), a, np.where(b == c, b, UNKNOWN))


def allowed_moves(puzzle, n_frames, gap):
    """Most unit moves a legal video may make across `gap` frames: the GT pace (n_moves over the first
    pz.solve_frames(n_frames) frames) with one extra frame of time (one dropped frame is fine) plus
    MOVE_SLACK."""
    return int(puzzle.n_moves / pz.solve_frames(n_frames) * (gap + 1)) + MOVE_SLACK


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
    """First frame each cell is visited, (R, C) int (NEVER if not): the first frame f where it reads
    trail or agent and its next clear reading (skipping "unknown" frames, e.g. the agent half over it)
    is not floor again, backdated over the unknown frames just before f (a half-covered or smeared cell
    is already being visited). The trail persists, so this orders cells by when the trail reaches them,
    even when several cells are crossed between two frames."""
    seen_now = (labels == M_TRAIL) | (labels == M_AGENT)                   # (F, R, C)
    steady = seen_now & (_next_known(labels) != M_FLOOR)
    first = np.where(steady.any(0), steady.argmax(0), NEVER)                # (R, C)
    for f in range(len(labels) - 1, 0, -1):
        first[(first == f) & (labels[f - 1] == UNKNOWN)] = f - 1
    first[start] = 0
    return first


def _maze_events(p, labels, first, n_agents, doubled):
    """Violations of a legal walk as (frame, why), and the agent track [(frame, cell)] from the frames
    that show exactly one agent. Checked: no wall cell visited; the visited set stays 4-connected as it
    grows (a skipped cell is a teleport) and grows by at most allowed_moves cells per frame gap (a jump
    cut); each new cell is within allowed_moves of the agent when it is seen within SIGHTING_WINDOW
    frames (no trail painted away from the agent); the agent's successive cells are joined by a walk
    over visited cells within allowed_moves; never two agents in two frames. n_agents (F,) agents per
    frame, doubled (F-1,) two or more agents in frames f and f+1 (the caller's gate uses them too)."""
    n_frames = len(labels)
    events = [(int(first[r, c]), f"crossed the wall at ({r}, {c})") for r, c in np.argwhere(p.grid & (first < NEVER))]
    two = np.nonzero(doubled)[0]
    if len(two):
        events.append((int(two[0]), f"two agents at frame {two[0]}"))
    track = [(int(f), tuple(int(x) for x in np.argwhere(labels[f] == M_AGENT)[0]))
             for f in np.nonzero(n_agents == 1)[0]]
    track_frames = np.array([f for f, _ in track])

    visited = np.zeros(p.grid.shape, dtype=bool)
    visited[p.start] = True
    last_growth = 0
    for f in np.unique(first[(first > 0) & (first < NEVER)]):
        new = first == f
        grown = visited | new
        # the old set is connected, so only the new cells need a flood: from those touching it
        cells = {(int(r), int(c)) for r, c in np.argwhere(new)}
        reached = [x for x in cells if any(visited[nb] for nb in pz._neighbours(x, *p.grid.shape))]
        stack, reached = list(reached), set(reached)
        while stack:
            for nb in pz._neighbours(stack.pop(), *p.grid.shape):
                if nb in cells and nb not in reached:
                    reached.add(nb)
                    stack.append(nb)
        if cells - reached:
            events.append((int(f), f"teleport: cell {min(cells - reached)} appeared at frame {f} "
                                   "not connected to the visited cells"))
        if new.sum() > allowed_moves(p, n_frames, f - last_growth):
            events.append((int(f), f"{int(new.sum())} cells visited within {f - last_growth} frame(s) at frame {f}"))
        nearest = int(np.abs(track_frames - f).argmin()) if len(track) else None
        if nearest is not None and abs(track[nearest][0] - f) <= SIGHTING_WINDOW:
            # the trail is drawn by the agent: new cells lie within reach of where it is seen
            fa, a = track[nearest]
            near = pz.bfs_distances(grown | (first <= fa), a, allowed_moves(p, n_frames, abs(int(f) - fa)))
            far = [tuple(int(x) for x in c) for c in np.argwhere(new) if tuple(int(x) for x in c) not in near]
            if far:
                events.append((int(f), f"trail appeared at {far[0]} in frame {f}, away from the agent at {a}"))
        visited, last_growth = grown, f

    for (fa, a), (fb, b) in zip(track, track[1:]):
        if a != b:
            walkable = first <= fb
            walkable[a] = walkable[b] = True
            if b not in pz.bfs_distances(walkable, a, allowed_moves(p, n_frames, fb - fa)):
                events.append((int(fb), f"agent jumped from {a} to {b} in {fb - fa} frame(s)"))
                break
    return events, track


def _score_maze(p, g, video):
    """Maze: P/R over path cells, SR = a legal walk start -> goal, r = R_conn * R_wall (spec 3.7, 7.2).

    Visits come from _maze_visits, violations from _maze_events; the earliest violation ends the legal
    prefix. SR also needs no violation, the agent to end, and stay, on the goal, walls kept
    (LAYOUT_KEEP) and no repaint: at most REPAINT_SHARE of the cells may end up changed other than by
    trail/agent on legally visited cells; a single agent: r is scaled by the share of frames not showing
    two agents (reward-hacking guards, spec 7.3; the three gates multiply r).
      P = |V & S*| / |V|, R = |V & S*| / |S*|, V = visited cells minus start, S* = GT path minus start
      R_conn = share of S* reachable from start through cells visited before the first violation
      R_wall = (1 - w)^2, w = share of V that are walls
      legal  = share of V visited before the first violation (cells reached by a teleport, or painted
               away from the agent once the path is done, would otherwise cost nothing)
    """
    palette = np.array([pz.MAZE_COLORS[k] for k in MAZE_CLASSES], dtype=np.float32)
    expect = np.where(p.grid, M_WALL, M_FLOOR)
    expect[p.goal], expect[p.start] = M_GOAL, M_AGENT
    zero = dict(conn=0.0, wall=0.0, legal=0.0, layout=0.0, repaint=0.0, single_agent=0.0)
    labels, why = _frame0(p, g, video, palette, expect)
    if labels is None:
        return _failed(zero, why)
    first = _maze_visits(labels, p.start)
    n_agents = (labels == M_AGENT).sum((1, 2))                               # (F,)
    doubled = (n_agents[:-1] >= 2) & (n_agents[1:] >= 2)                    # (F-1,) two agents twice in a row
    events, track = _maze_events(p, labels, first, n_agents, doubled)
    # single-agent gate (spec 7.3): the share of frame pairs not showing two agents twice in a row
    single = 1.0 - float(doubled.mean()) if len(labels) > 1 else 1.0

    cut = min((f for f, _ in events), default=NEVER)
    legal = (first < cut) & ~p.grid
    end = _final(labels)
    walls_kept = float((end[p.grid] == M_WALL).mean())
    layout = float(walls_kept >= LAYOUT_KEEP)
    # changes the legal walk explains: trail or agent on a cell it visited; anything else is a repaint
    explained = (end == expect) | (legal & ((end == M_TRAIL) | (end == M_AGENT)))
    repainted = int((~explained).sum())
    repaint = float(repainted <= REPAINT_SHARE * p.grid.size)
    on_goal = bool(track) and track[-1][1] == p.goal and end[p.goal] == M_AGENT

    gt = set(p.solution[1:])
    pred = {(int(r), int(c)) for r, c in np.argwhere(first < NEVER)} - {p.start}
    precision, recall, f1 = _prf(len(pred & gt), len(pred), len(gt))
    conn = len(gt & set(pz.bfs_distances(legal, p.start))) / len(gt)
    wall = float(1 - sum(p.grid[c] for c in pred) / max(1, len(pred))) ** 2
    lawful = sum(bool(legal[c]) for c in pred) / len(pred) if pred else 0.0
    reward = conn * wall * lawful * layout * repaint * single

    if events:
        reason = min(events)[1]
    elif not pred:
        reason = "nothing moved: the agent never left the start (static video?)"
    elif not layout:
        reason = f"layout changed: only {walls_kept:.0%} of the wall cells still read as wall at the end"
    elif not repaint:
        reason = f"wholesale repaint: {repainted} cells changed in ways the legal walk does not explain"
    elif not on_goal:
        reason = "the agent does not end on the goal"
    else:
        reason = "ok"
    comps = dict(conn=conn, wall=wall, legal=lawful, layout=layout, repaint=repaint, single_agent=single, first_frame=1.0)
    return Score(precision, recall, f1, int(reason == "ok"), float(reward), comps, reason)


# -----------------------------------------------------------------------------
# FlowFree

def _score_flowfree(p, g, video, weights):
    """FlowFree: cell colouring of the final frames vs the solution (spec 4.5, 7.2).

    Final colouring = majority of the last 3 frames. N = non-endpoint cells.
      P = correct / coloured cells of N, R = correct / |N| (endpoints excluded: they are given)
      SR = every cell coloured, endpoints keep their colour, each colour one simple path (connected,
           endpoints with 1 same-colour neighbour, other cells 2: no branch, no self-touch, no loop),
           and no cell ever changes colour once drawn (checked over all frames, steady for 2 frames)
      c1 endpoints    = share of endpoints with their colour and exactly 1 same-colour neighbour
      c2 connectivity = share of colours whose two endpoints are joined through same-colour cells
      c3 validity     = share of N coloured with exactly 2 same-colour neighbours (over |N|, not over
                        the coloured cells, so colouring one cell well is not worth 30%)
      c4 coverage     = share of N coloured
    A static video scores 0 on all four (endpoints have no same-colour neighbour yet).
    """
    k = len(p.endpoints)
    palette = np.array((pz.FLOW_BG,) + pz.FLOW_COLORS[:k], dtype=np.float32)
    size = p.grid.shape[0]
    expect = np.zeros((size, size), dtype=int)
    for i, (a, b) in enumerate(p.endpoints):
        expect[a] = expect[b] = i + 1
    zero = dict(endpoints=0.0, connectivity=0.0, validity=0.0, coverage=0.0)
    labels, why = _frame0(p, g, video, palette, expect, FLOW_RATIO)
    if labels is None:
        return _failed(zero, why)

    steady = np.where(labels[:-1] == labels[1:], labels[:-1], UNKNOWN) if len(labels) > 1 else labels  # (F-1, R, C)
    painted = steady >= 1
    first = np.where(painted.any(0), painted.argmax(0), 0)                  # (R, C)
    colour0 = np.take_along_axis(steady, first[None], 0)[0]                 # (R, C)
    later = np.arange(len(steady))[:, None, None] > first
    recolour = painted.any(0) & ((steady != UNKNOWN) & (steady != colour0) & later).any(0)

    final = _final(labels)
    same = np.zeros((size, size), dtype=int)  # same-colour coloured neighbours
    for dr, dc in pz.DIRS:
        shifted = np.full((size + 2, size + 2), UNKNOWN)
        shifted[1:-1, 1:-1] = final
        nb = shifted[1 + dr:1 + dr + size, 1 + dc:1 + dc + size]
        same += (nb == final) & (final >= 1)
    is_end = expect >= 1
    n_cells = ~is_end
    coloured = final >= 1
    ends_ok = [final[e] == i + 1 and same[e] == 1 for i, pair in enumerate(p.endpoints) for e in pair]
    joined = [bool(final[a] == i + 1 and final[b] == i + 1 and b in pz.bfs_distances(final == i + 1, a))
              for i, (a, b) in enumerate(p.endpoints)]
    c1 = float(np.mean(ends_ok))
    c2 = float(np.mean(joined))
    c3 = float((n_cells & coloured & (same == 2)).sum() / n_cells.sum())
    c4 = float((n_cells & coloured).sum() / n_cells.sum())
    reward = float(np.dot(weights, (c1, c2, c3, c4)))

    truth = np.full((size, size), UNKNOWN)
    for i, path in enumerate(p.paths):
        for cell in path:
            truth[cell] = i + 1
    precision, recall, f1 = _prf(int((n_cells & (final == truth)).sum()), int((n_cells & coloured).sum()),
                                 int(n_cells.sum()))
    single = [len(pz.bfs_distances(final == i + 1, a)) == (final == i + 1).sum() for i, (a, _) in enumerate(p.endpoints)]
    if not (n_cells & coloured).any():
        reason = "nothing drawn: no pipe cell coloured (static video?)"
    elif recolour.any():
        r, c = np.argwhere(recolour)[0]
        reason = f"cell ({r}, {c}) changed colour after it was drawn"
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
    comps = dict(endpoints=c1, connectivity=c2, validity=c3, coverage=c4, first_frame=1.0)
    return Score(precision, recall, f1, int(reason == "ok"), reward, comps, reason)


# -----------------------------------------------------------------------------
# Sokoban

def _sokoban_walk(wall, a, b, limit, known=frozenset()):
    """Pushes (box cell before, box cell after) of a legal unit-move sequence of at most `limit` moves
    from state a to state b (states: (player, frozenset of boxes)), or None if there is none.

    Of all such sequences it returns one with the fewest pushes: pushes nobody saw are not invented
    (the shortest walk may push a box out and back where the video walked around it). Among those it
    prefers pushes in `known` (the GT's): when sprites sit between cells for many frames, two routes
    can explain the same change and the pixels cannot tell which was taken. A move steps onto
    free floor, or into a box that slides one cell onto free floor (no chains, no pulls). Search: one
    layer per move count, each state kept with its fewest pushes; stops early once the lower bound
    (each moved box needs its Manhattan shift in pushes) is met, or after MAX_WALK_STATES states.
    """
    moved_from, moved_to = a[1] - b[1], b[1] - a[1]
    if len(moved_from) != len(moved_to):
        return None
    bound = sum(min(abs(x[0] - y[0]) + abs(x[1] - y[1]) for y in moved_to) for x in moved_from)
    if bound > limit:
        return None  # prunes far teleports without a search
    layers = [{a: ((0, 0), None, None)}]  # per move count: state -> ((pushes, non-GT pushes), parent, push)
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
                cost = (n_push + (push is not None), n_new + (push is not None and push not in known))
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
    pushes, state = [], b
    for t in range(found, 0, -1):
        _, state, push = layers[t][state]
        if push:
            pushes.append(push)
    return pushes[::-1]


def _sokoban_frames(p, labels):
    """Per-frame violations as (frame, why), and the runs of clear boards [first frame, last frame,
    (player, frozenset of boxes)]. A frame is clear when every floor cell reads clearly (frames with
    sprites between cells are skipped) and it shows one player and all boxes. Violations that need one
    frame only (sprites never cover a cell they are not on): a box or player read inside a wall; a clear
    frame with one player but a box missing or extra (the player walked onto a box, or a box is between
    cells while the player stands still: in a push both move in lockstep, so mid-push the player is not
    clear either). Over two frames: a target reading as floor, two players."""
    n_boxes = len(p.boxes)
    is_target = np.zeros(p.grid.shape, dtype=bool)
    for t in p.targets:
        is_target[t] = True
    events = []
    in_wall = p.grid & ((labels == S_BOX) | (labels == S_PLAYER))             # (F, R, C)
    if in_wall.any():
        f, r, c = np.argwhere(in_wall)[0]
        events.append((int(f), f"box or player inside the wall at ({r}, {c}), frame {f}"))
    lost = is_target & (labels == S_FLOOR)
    lost = lost[:-1] & lost[1:]
    if lost.any():
        f, r, c = np.argwhere(lost)[0]
        events.append((int(f), f"target at ({r}, {c}) disappeared at frame {f}"))
    n_player = (labels == S_PLAYER).sum((1, 2))                              # (F,)
    n_box = (labels == S_BOX).sum((1, 2))                                    # (F,)
    two = np.nonzero((n_player[:-1] >= 2) & (n_player[1:] >= 2))[0]
    if len(two):
        events.append((int(two[0]), f"two players at frame {two[0]}"))
    floor_ok = np.where(is_target, labels >= S_TARGET, (labels == S_FLOOR) | (labels >= S_BOX))
    clear = (floor_ok | p.grid).all((1, 2))                                  # (F,)
    odd = np.nonzero(clear & (n_player == 1) & (n_box != n_boxes))[0]
    if len(odd):
        f = int(odd[0])
        events.append((f, f"{n_box[f]} boxes visible at frame {f}, expected {n_boxes}, the player standing "
                          "clear (a box vanished, moved by itself, or the player walked onto it)"))
    runs = []
    for f in np.nonzero(clear & (n_player == 1) & (n_box == n_boxes))[0]:
        player = tuple(int(x) for x in np.argwhere(labels[f] == S_PLAYER)[0])
        state = (player, frozenset(tuple(int(x) for x in b) for b in np.argwhere(labels[f] == S_BOX)))
        if runs and runs[-1][2] == state:
            runs[-1][1] = int(f)
        else:
            runs.append([int(f), int(f), state])
    return events, runs


def _score_sokoban(p, g, video, weights):
    """Sokoban: board states per frame, legal transitions, pushes vs GT pushes (spec 5.6, 7.2).

    Violations and clear boards come from _sokoban_frames. Between successive distinct boards there must
    be a legal unit-move sequence no longer than allowed_moves for the frame gap (_sokoban_walk).
      P = |pushes & GT pushes| / |pushes|, R = ... / |GT pushes| (multisets of (from, to) box cells)
      R_proc = legal transitions before the first violation / all transitions (0 if nothing moved)
      R_state = share of boxes on targets in the last board reached legally
      SR = no violation, the last board has every box on a target and is seen in the last 3 frames
    """
    palette = np.array([pz.SOKO_COLORS[k] for k in SOKO_CLASSES], dtype=np.float32)
    expect = np.where(p.grid, S_WALL, S_FLOOR)
    for t in p.targets:
        expect[t] = S_TARGET
    for b in p.boxes:
        expect[b] = S_BOX
    expect[p.start] = S_PLAYER
    zero = dict(state=0.0, proc=0.0, layout=0.0)
    labels, why = _frame0(p, g, video, palette, expect)
    if labels is None:
        return _failed(zero, why)
    n_frames = len(labels)
    targets = frozenset(p.targets)
    events, runs = _sokoban_frames(p, labels)

    gt_pushes = Counter((s[1][i], t[1][i]) for s, t in zip(p.solution, p.solution[1:])
                        for i in range(len(p.boxes)) if s[1][i] != t[1][i])
    pushes, n_legal, reached = [], 0, runs[0][2] if runs else None
    cut = min((f for f, _ in events), default=NEVER)
    for (_, fa, a), (fb, _, b) in zip(runs, runs[1:]):
        if fb >= cut:
            break
        budget = allowed_moves(p, n_frames, fb - fa)
        step = _sokoban_walk(p.grid, a, b, budget, frozenset(gt_pushes))
        if step is None:
            events.append((fb, f"illegal change between frames {fa} and {fb}: no legal move sequence of "
                               f"<= {budget} moves leads from one board to the next"))
            break
        pushes += step
        n_legal += 1
        reached = b
    n_trans = len(runs) - 1

    got = Counter(pushes)
    precision, recall, f1 = _prf(sum((got & gt_pushes).values()), sum(got.values()), sum(gt_pushes.values()))
    r_state = len(reached[1] & targets) / len(targets) if reached and n_trans > 0 else 0.0
    r_proc = n_legal / n_trans if n_trans > 0 else 0.0
    layout = float((_final(labels)[p.grid] == S_WALL).mean() >= LAYOUT_KEEP)
    reward = (weights[0] * r_state + weights[1] * r_proc) * layout

    if events:
        reason = min(events)[1]
    elif n_trans <= 0:
        reason = "nothing moved: the board never changes (static video?)"
    elif not layout:
        reason = "layout changed: walls do not read as wall at the end"
    elif runs[-1][2][1] != targets:
        reason = f"{len(targets - runs[-1][2][1])} box(es) not on a target at the end"
    elif runs[-1][1] < n_frames - 3:
        reason = "the solved board is not held to the end"
    else:
        reason = "ok"
    comps = dict(state=float(r_state), proc=float(r_proc), layout=layout, first_frame=1.0)
    return Score(precision, recall, f1, int(reason == "ok"), float(reward), comps, reason)


# -----------------------------------------------------------------------------
# entry points

def score(puzzle, video, flow_weights=FLOW_WEIGHTS, sokoban_weights=SOKOBAN_WEIGHTS):
    """Score one video of `puzzle`: P, R, F1, success (0/1), dense reward in [0, 1], its components and
    the reason success failed ("ok" if it did not). Raises ValueError only for a wrong shape or dtype,
    or a frame too small for the grid; any content (black, noise, a frozen frame 0) gets a Score."""
    video = _as_video(video)
    g = pz.geometry(puzzle, video.shape[1], video.shape[2])
    if puzzle.domain == "maze":
        return _score_maze(puzzle, g, video)
    if puzzle.domain == "flowfree":
        return _score_flowfree(puzzle, g, video, flow_weights)
    if puzzle.domain == "sokoban":
        return _score_sokoban(puzzle, g, video, sokoban_weights)
    raise ValueError(f"unknown puzzle domain {puzzle.domain!r}; expected one of {pz.DOMAINS}")


def summarize(scores):
    """Aggregate like the paper's table (spec 6): P = mean of defined per-sample P, R = mean R,
    F1 = 2PR/(P+R) of those means, SR = mean success; plus f1_mean (mean per-sample F1), mean reward.
    P (and F1) are nan when no sample defines P; everything is nan for an empty list."""
    scores = list(scores)
    defined = [s.precision for s in scores if s.precision is not None]
    nan = float("nan")
    prec = float(np.mean(defined)) if defined else nan
    rec = float(np.mean([s.recall for s in scores])) if scores else nan
    f1 = nan if np.isnan(prec) or np.isnan(rec) else (2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0)
    return dict(n=len(scores), precision=prec, recall=rec, f1=f1,
                success=float(np.mean([s.success for s in scores])) if scores else nan,
                f1_mean=float(np.mean([s.f1 for s in scores])) if scores else nan,
                reward=float(np.mean([s.reward for s in scores])) if scores else nan)
