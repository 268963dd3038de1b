"""The three verifiable puzzle domains of VideoRLVR: generators, independent solvers, renderer.

VideoRLVR ("Video Models Can Reason with Verifiable Rewards", arXiv 2605.15458) trains
Wan2.2-TI2V-5B on Maze, FlowFree and Sokoban: frame 0 shows the puzzle, the video must show a
solution unfolding.
This file makes those puzzles and their ground-truth (GT) videos; reward.py reads videos back.
The paper does not publish its generator or renderer; the choices here are ours, informed by public
related work: VR-Bench (FoundationAgents/VR-Bench, maze levels and block mazes), vbvr-rl
(pufanyi/vbvr-rl, trail line and fixed frame count), gym-sokoban (mpSchrader/gym-sokoban,
reverse-play generation), thomasahle/numberlink (no-self-touch FlowFree generation filters).
No code is taken from them.

  generate(domain, seed, **difficulty) -> Puzzle   deterministic; every instance checked solvable
                                                   by a solver that does not share code with the
                                                   generator
  render(puzzle, height, width, frames) -> (frames, height, width, 3) uint8 GT video
  geometry(puzzle, height, width) -> Geometry      where each grid cell sits in a frame of that size
  split_seeds(split, n, start=0)                   disjoint train/test seeds (and disjoint layouts)
  save_gif(path, video, fps=8), side_by_side(videos, captions, ok)

Conventions. Cells are (row, col) tuples of ints; grids are (R, C) numpy arrays, row 0 at the top.
A unit move is one step of the agent (maze), one pipe cell drawn (FlowFree) or one player step,
push or not (Sokoban). Video shapes: F frames, H x W pixels, 3 channels, uint8.

Run:  python puzzles.py --domain maze --n 4 --out samples/   (GIF per instance + PNG of frame 0)
      python puzzles.py --domain sokoban --level hard --height 480 --width 480 --frames 49
"""
import argparse
import hashlib
import random
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

DOMAINS = ("maze", "flowfree", "sokoban")
DIRS = ((-1, 0), (1, 0), (0, -1), (0, 1))  # up, down, left, right

# Difficulty knobs per domain and their defaults; generate() rejects any other keyword.
#   maze:     rooms = rooms per side of a perfect block maze (grid 2*rooms+1); min_moves > 0:
#             start and goal are a random pair of rooms at least min_moves unit moves apart along
#             the maze; min_moves = 0: they are the two ends of the maze's longest path
#   flowfree: size = grid side, colors = number of endpoint pairs
#   sokoban:  size = room side incl. border walls, boxes, min_pushes = least optimal pushes accepted
KNOBS = {
    "maze": dict(rooms=3, min_moves=0),
    "flowfree": dict(size=5, colors=4),
    "sokoban": dict(size=6, boxes=1, min_pushes=3),
}
# Named levels (our choice, in the size range of VR-Bench's levels, FoundationAgents/VR-Bench
# config/config.yaml, and of gym-sokoban's small rooms). "easy" is the CPU demo scale: a 7x7 maze
# (8-16 moves between a random far pair of rooms: ~2,400 distinct layouts, where the two ends of the
# longest path give only ~200, too few to hold out a test set), a 5x5 flow, a 6x6 room, all of which
# fit 16-px cells in a 128x128 (maze) or 96x96 frame.
LEVELS = {
    "maze": {"easy": dict(rooms=3, min_moves=8), "medium": dict(rooms=5), "hard": dict(rooms=7)},
    "flowfree": {"easy": dict(size=5, colors=4), "medium": dict(size=6, colors=5),
                 "hard": dict(size=7, colors=6)},
    "sokoban": {"easy": dict(size=6, boxes=1, min_pushes=3),
                "medium": dict(size=7, boxes=2, min_pushes=4),
                "hard": dict(size=8, boxes=2, min_pushes=6)},
}

# Train and test come from disjoint seed ranges, and also from disjoint layouts: a layout hashes to
# "test" with probability TEST_SHARE, and generate() resamples until the hash agrees with the seed's
# split. Seeds alone are not enough: a 3x3-room maze has only a few hundred distinct layouts, so two
# different seeds often draw the same one.
TEST_SEED_BASE = 1_000_000_000
TEST_SHARE = 0.25
MAX_ATTEMPTS = 2000  # resampling budget per generate() call before it gives up with a clear error

# Flat palette, far apart in RGB (our rule: >= 80 L2 between classes that can touch), neutral
# backgrounds, no class drawn thinner than 0.3 cell (chroma subsampling and VAE blur eat thin
# lines).
MAZE_COLORS = {"floor": (245, 245, 245), "wall": (40, 40, 40), "goal": (40, 180, 80),
               "agent": (220, 40, 40), "trail": (40, 110, 230)}
FLOW_BG, FLOW_LINE = (25, 25, 25), (90, 90, 90)
# red, blue, yellow, green, orange, cyan, magenta, white
FLOW_COLORS = ((230, 40, 40), (40, 90, 230), (235, 220, 40), (40, 170, 60), (245, 140, 20),
               (40, 210, 220), (220, 50, 200), (240, 240, 240))
SOKO_COLORS = {"floor": (235, 235, 235), "wall": (45, 45, 45), "target": (40, 180, 80),
               "box": (210, 120, 30), "player": (40, 90, 230)}
# Sprite sizes as fractions of the cell side (our choice; the agent disc of radius ~cell/3 follows
# pufanyi/vbvr-rl src/precompute/maze_generator.py). All of them cover the central
# 0.3-cell patch that reward.py reads, including the trail/pipe at a corner (round joins).
AGENT_RADIUS, GOAL_HALF, TRAIL_HALF = 0.33, 0.35, 0.225
ENDPOINT_RADIUS, PIPE_HALF, TINT = 0.38, 0.25, 0.35
TARGET_HALF, BOX_HALF, PLAYER_RADIUS = 0.30, 0.40, 0.33
SOLVE_FRACTION = 0.85  # the solution unfolds over about the first 85% of the frames
                       # (solve_frames), then holds
MIN_CELL = 8           # px; below this the sprites are a couple of pixels and the verifier cannot
                       # read them

PROMPTS = {
    "maze": ("Top-down view of a maze with dark walls on a white floor. The red dot moves one "
             "square at a time along the white corridors, leaving a blue trail, never crossing a "
             "wall, and stops on the green square. Static camera; the maze does not change."),
    "flowfree": ("A Flow puzzle with {colors} pairs of coloured dots on a dark {size}x{size} grid. "
                 "Starting from the dots, draw pipes one colour at a time so that each pair of "
                 "same-coloured dots is connected, pipes never cross, and every square is filled. "
                 "Static camera; the dots do not move."),
    "sokoban": ("Top-down view of a Sokoban room with dark walls. The blue player walks one square "
                "at a time and pushes the {boxes_word} onto the green {targets_word}; a box moves "
                "only when the player pushes it from behind, and nothing passes through walls. "
                "Static camera; walls and targets do not change."),
}


@dataclass(frozen=True, eq=False)
class Puzzle:
    """One instance: everything the renderer and the verifier need (it reads no other state).

    solution holds the states from the puzzle to the solved board, one unit move apart:
      maze      cells (r, c) of the agent, start ... goal
      flowfree  (R, C) int8 colourings, -1 = empty, k = colour k; the first shows only the endpoints
      sokoban   (player, boxes) with boxes a tuple in a fixed order (box i stays box i)
    """
    domain: str
    seed: int
    difficulty: dict       # the knobs used, defaults filled in
    grid: np.ndarray       # (R, C) bool, True = wall (FlowFree: all False)
    prompt: str
    solution: tuple
    start: tuple = None    # maze start / sokoban player start
    goal: tuple = None     # maze goal
    endpoints: tuple = ()  # flowfree: ((a, b), ...) per colour, a before b in row-major order
    paths: tuple = ()      # flowfree: per colour, the GT cells from a to b
    boxes: tuple = ()      # sokoban: initial boxes
    targets: tuple = ()    # sokoban

    @property
    def n_moves(self):
        return len(self.solution) - 1


@dataclass(frozen=True)
class Geometry:
    """Cell (r, c) of the grid is the pixel block [y0 + r*cell, +cell) x [x0 + c*cell, +cell)."""
    rows: int
    cols: int
    cell: int
    y0: int
    x0: int


def _add(a, d):
    return (a[0] + d[0], a[1] + d[1])


def _neighbours(cell, rows, cols):
    r, c = cell
    return [(r + dr, c + dc) for dr, dc in DIRS if 0 <= r + dr < rows and 0 <= c + dc < cols]


def bfs_distances(free, src, limit=None):
    """Walk lengths from src over 4-connected True cells of `free`: {cell: moves}.

    Up to `limit` moves (all if None). src itself is always included, even if not free.
    """
    rows, cols = free.shape
    dist = {src: 0}
    queue = deque([src])
    while queue:
        cur = queue.popleft()
        if limit is None or dist[cur] < limit:
            for nb in _neighbours(cur, rows, cols):
                if free[nb] and nb not in dist:
                    dist[nb] = dist[cur] + 1
                    queue.append(nb)
    return dist


def shortest_path(free, start, goal):
    """BFS over 4-connected True cells of `free`: the cell list start..goal, None if unreachable."""
    rows, cols = free.shape
    parent = {start: None}
    queue = deque([start])
    while queue:
        cur = queue.popleft()
        if cur == goal:
            path = [cur]
            while parent[path[-1]] is not None:
                path.append(parent[path[-1]])
            return path[::-1]
        for nb in _neighbours(cur, rows, cols):
            if free[nb] and nb not in parent:
                parent[nb] = cur
                queue.append(nb)
    return None


# -----------------------------------------------------------------------------
# seeds, splits, layouts

def split_seeds(split, n, start=0):
    """Seeds of `split` ("train" or "test").

    Train is [0, TEST_SEED_BASE), test [TEST_SEED_BASE, ...).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if start < 0 or (split == "train" and start + n > TEST_SEED_BASE):
        raise ValueError(f"train seeds are 0..{TEST_SEED_BASE - 1}; start={start}, n={n} leaves "
                         "that range")
    base = TEST_SEED_BASE if split == "test" else 0
    return range(base + start, base + start + n)


def seed_split(seed):
    return "test" if seed >= TEST_SEED_BASE else "train"


def layout_key(domain, grid, *parts):
    """Bytes identifying what frame 0 shows.

    Walls + start/goal (maze), endpoints (FlowFree), or boxes/targets/player (Sokoban).
    """
    return domain.encode() + np.asarray(grid, dtype=np.uint8).tobytes() + repr(parts).encode()


def layout_split(key):
    """Split a layout belongs to, from a hash of its key.

    Used to keep train/test layouts disjoint.
    """
    h = int.from_bytes(hashlib.sha256(key).digest()[:8], "little")
    return "test" if h < TEST_SHARE * 2 ** 64 else "train"


def puzzle_layout_key(p):
    if p.domain == "maze":
        return layout_key("maze", p.grid, p.start, p.goal)
    if p.domain == "flowfree":
        return layout_key("flowfree", p.grid, p.endpoints)
    return layout_key("sokoban", p.grid, p.start, tuple(sorted(p.boxes)), tuple(sorted(p.targets)))


# -----------------------------------------------------------------------------
# maze: perfect block maze, start/goal at the ends of its longest path, BFS solver

def _carve_maze(rng, rooms):
    """Recursive backtracker (randomised DFS) on the room lattice.

    Rooms sit at odd (r, c); carving the wall cell between two rooms joins them. Gives a spanning
    tree, hence one path between any two cells.
    """
    n = 2 * rooms + 1
    wall = np.ones((n, n), dtype=bool)
    first = (2 * rng.randrange(rooms) + 1, 2 * rng.randrange(rooms) + 1)
    wall[first] = False
    stack = [first]
    while stack:
        r, c = stack[-1]
        options = [(dr, dc) for dr, dc in DIRS
                   if 0 < r + 2 * dr < n and 0 < c + 2 * dc < n and wall[r + 2 * dr, c + 2 * dc]]
        if not options:
            stack.pop()
            continue
        dr, dc = rng.choice(options)
        wall[r + dr, c + dc] = False
        wall[r + 2 * dr, c + 2 * dc] = False
        stack.append((r + 2 * dr, c + 2 * dc))
    return wall


def _farthest(free, src, rng):
    """A free cell at maximal BFS distance from src (ties broken by rng)."""
    dist = bfs_distances(free, src)
    far = max(dist.values())
    return rng.choice(sorted(c for c, d in dist.items() if d == far))


def _make_maze(rng, seed, split, rooms, min_moves):
    if rooms < 2:
        raise ValueError(f"maze rooms must be >= 2 (a 1-room maze has no path), got {rooms}")
    rooms_at = [(r, c) for r in range(1, 2 * rooms, 2) for c in range(1, 2 * rooms, 2)]
    for _ in range(MAX_ATTEMPTS):
        wall = _carve_maze(rng, rooms)
        free = ~wall
        if min_moves > 0:      # start and goal far apart: a random pair of rooms >= min_moves apart
            dist = {a: bfs_distances(free, a) for a in rooms_at}
            pairs = [(a, b) for a in rooms_at for b in rooms_at if dist[a][b] >= min_moves]
            if not pairs:
                continue
            start, goal = rng.choice(pairs)
        else:                  # the two ends of a longest path (tree diameter by double BFS)
            a = _farthest(free, (1, 1), rng)
            b = _farthest(free, a, rng)
            start, goal = (a, b) if rng.random() < 0.5 else (b, a)
        if layout_split(layout_key("maze", wall, start, goal)) != split:
            continue
        path = shortest_path(free, start, goal)  # the solver: plain BFS, independent of the carving
        if path is None or len(path) - 1 < min_moves:
            continue
        return Puzzle("maze", seed, dict(rooms=rooms, min_moves=min_moves), wall, PROMPTS["maze"],
                      tuple(path), start=start, goal=goal)
    raise RuntimeError(f"no maze with rooms={rooms}, min_moves={min_moves} in {MAX_ATTEMPTS} "
                       f"attempts; lower min_moves (the longest path of a {rooms}x{rooms}-room "
                       "maze is finite)")


# -----------------------------------------------------------------------------
# FlowFree: solution-first generation, uniqueness by a count-to-2 solver

def _is_induced_path(cells):
    """True if the cells form an induced path: the no-self-touch rule.

    Consecutive cells are 4-adjacent and no two non-consecutive cells touch (the convention of the
    FlowFree SAT encoding at knosmos.github.io/flowfreer: an endpoint has one same-colour neighbour,
    every other cell two). It also rules out 2x2 blocks of one colour and adjacent same-colour
    endpoints.
    """
    members = set(cells)
    if len(members) != len(cells):
        return False
    for i, (r, c) in enumerate(cells):
        same = sum((r + dr, c + dc) in members for dr, dc in DIRS)
        if same != (1 if i in (0, len(cells) - 1) else 2):
            return False
    return all(abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1 for a, b in zip(cells, cells[1:]))


def _flow_partition(rng, n, k):
    """Cover an n x n grid with k induced paths of >= 3 cells, or None.

    Grow paths one at a time from the empty cell with the fewest empty neighbours (corners and
    pockets first, so no cell is stranded), extending either end through empty cells that touch no
    other cell of the same path, preferring the most constrained next cell (Warnsdorff). Then
    absorb paths shorter than 3 into a neighbour, and merge or split paths until there are exactly
    k. Splitting an induced path gives induced paths; merges are checked.
    """
    empty = {(r, c) for r in range(n) for c in range(n)}
    owner = {}
    paths = []

    def n_empty(cell):
        return sum(nb in empty for nb in _neighbours(cell, n, n))

    while empty:
        first = min(sorted(empty), key=lambda cell: (n_empty(cell), rng.random()))
        idx = len(paths)
        path = deque([first])
        owner[first] = idx
        empty.discard(first)
        want = rng.randint(3, max(3, 2 * n * n // k))
        open_ends = [True, True]
        while len(path) < want and any(open_ends):
            side = rng.choice([s for s in (0, 1) if open_ends[s]])
            end = path[-1] if side == 0 else path[0]
            options = [nb for nb in _neighbours(end, n, n) if nb in empty and
                       all(owner.get(x) != idx or x == end for x in _neighbours(nb, n, n))]
            if not options:
                open_ends[side] = False
                continue
            rng.shuffle(options)
            nxt = min(options, key=n_empty) if rng.random() < 0.7 else options[0]
            path.append(nxt) if side == 0 else path.appendleft(nxt)
            owner[nxt] = idx
            empty.discard(nxt)
        paths.append(list(path))

    def try_merge(i, candidates):
        # join path i to some path j at touching ends, if the union is still an induced path
        for j in candidates:
            for a in (paths[i], paths[i][::-1]):
                for b in (paths[j], paths[j][::-1]):
                    touch = abs(a[-1][0] - b[0][0]) + abs(a[-1][1] - b[0][1]) == 1
                    if touch and _is_induced_path(a + b):
                        paths[i] = a + b
                        del paths[j]
                        return True
        return False

    while any(len(p) < 3 for p in paths):
        i = min(range(len(paths)), key=lambda j: len(paths[j]))
        others = [j for j in range(len(paths)) if j != i]
        rng.shuffle(others)
        if not try_merge(i, others):
            return None
    while len(paths) > k:
        order = list(range(len(paths)))
        rng.shuffle(order)
        if not any(try_merge(i, [j for j in order if j != i]) for i in order):
            return None
    while len(paths) < k:
        long = [i for i, p in enumerate(paths) if len(p) >= 6]
        if not long:
            return None
        i = rng.choice(long)
        cut = rng.randint(3, len(paths[i]) - 3)
        paths.append(paths[i][cut:])
        paths[i] = paths[i][:cut]
    return paths


def count_flow_solutions(size, endpoints, limit=2):
    """Number of FlowFree solutions of a size x size grid with these endpoint pairs, up to `limit`.

    Rules (the no-self-touch convention of _is_induced_path): every cell gets one colour, an
    endpoint has exactly one same-colour neighbour, every other cell exactly two, and each colour
    is one connected set. Those degree rules make each colour a simple path between its endpoints
    plus possibly separate cycles, which the final connectivity test rejects. Search: assign
    colours in row-major order; once a cell's neighbours are all assigned its degree must be
    exact, and a cell whose only unassigned neighbour is the next one forces (or forbids) that
    neighbour's colour. Independent of the generator.
    """
    n_cells = size * size
    colour = [-1] * n_cells
    need = [2] * n_cells
    for k, pair in enumerate(endpoints):
        for r, c in pair:
            colour[r * size + c] = k
            need[r * size + c] = 1
    fixed = [x >= 0 for x in colour]
    nbrs = [[rr * size + cc for rr, cc in _neighbours(divmod(i, size), size, size)]
            for i in range(n_cells)]
    k_colours = len(endpoints)
    found = 0

    def feasible(i, upto):
        # cells > upto are unassigned: the same-colour count must still be able to land exactly
        # on need[i]
        same = sum(colour[j] == colour[i] for j in nbrs[i] if j <= upto)
        free = sum(j > upto for j in nbrs[i])
        return same <= need[i] <= same + free

    def connected():
        for k, (a, _) in enumerate(endpoints):
            start = a[0] * size + a[1]
            seen, stack = {start}, [start]
            while stack:
                for j in nbrs[stack.pop()]:
                    if colour[j] == k and j not in seen:
                        seen.add(j)
                        stack.append(j)
            if len(seen) != colour.count(k):
                return False
        return True

    def search(i):
        nonlocal found
        if i == n_cells:
            found += connected()
            return
        options = [colour[i]] if fixed[i] else range(k_colours)
        if i >= size and not fixed[i]:
            up = i - size  # this cell is the last unassigned neighbour of the one above it
            same = sum(colour[j] == colour[up] for j in nbrs[up] if j < i)
            if same == need[up] - 1:
                options = [colour[up]]
            else:
                options = [x for x in options if x != colour[up]]
        for x in options:
            colour[i] = x
            touched = [j for j in (i, i - 1, i - size) if j >= 0 and (j != i - 1 or i % size)]
            if all(feasible(j, i) for j in touched):
                search(i + 1)
            if found >= limit:
                break
        if not fixed[i]:
            colour[i] = -1

    search(0)
    return found


def _make_flowfree(rng, seed, split, size, colors):
    if not 2 <= colors <= len(FLOW_COLORS) or size < 3 or 3 * colors > size * size:
        raise ValueError(f"flowfree needs size >= 3 and 2 <= colors <= {len(FLOW_COLORS)} with 3 "
                         f"cells per colour; got size={size}, colors={colors}")
    grid = np.zeros((size, size), dtype=bool)
    for _ in range(MAX_ATTEMPTS):
        paths = _flow_partition(rng, size, colors)
        if paths is None:
            continue
        # colour k = the k-th path by its first endpoint in row-major order; paths run from that
        # endpoint
        paths = sorted((p if p[0] < p[-1] else p[::-1] for p in paths), key=lambda p: p[0])
        endpoints = tuple((p[0], p[-1]) for p in paths)
        if layout_split(layout_key("flowfree", grid, endpoints)) != split:
            continue  # cheap test first: the uniqueness count is the expensive part
        if count_flow_solutions(size, endpoints, limit=2) != 1:
            continue
        state = np.full((size, size), -1, dtype=np.int8)
        for k, (a, b) in enumerate(endpoints):
            state[a] = state[b] = k
        states = [state.copy()]
        for k, p in enumerate(paths):  # one colour at a time, each pipe grown from its 1st endpoint
            for cell in p[1:]:
                state[cell] = k
                states.append(state.copy())
        prompt = PROMPTS["flowfree"].format(colors=colors, size=size)
        return Puzzle("flowfree", seed, dict(size=size, colors=colors), grid, prompt, tuple(states),
                      endpoints=endpoints, paths=tuple(tuple(p) for p in paths))
    raise RuntimeError(f"no unique flowfree puzzle with size={size}, colors={colors} in "
                       f"{MAX_ATTEMPTS} attempts")


# -----------------------------------------------------------------------------
# Sokoban: reverse play from the solved state, push-optimal BFS solver

def _sokoban_room(rng, size):
    """Walls with a connected floor carved by a random walk with momentum (in the spirit of
    gym-sokoban's room topology) until 70% of the interior is floor; border cells always wall."""
    wall = np.ones((size, size), dtype=bool)
    pos = (rng.randrange(1, size - 1), rng.randrange(1, size - 1))
    d = rng.choice(DIRS)
    want = int(0.7 * (size - 2) ** 2)
    while (~wall).sum() < want:
        wall[pos] = False
        side = _add(pos, rng.choice(DIRS))
        if rng.random() < 0.2 and 0 < side[0] < size - 1 and 0 < side[1] < size - 1:
            wall[side] = False  # widen now and then, so the room is not all one-cell corridors
        nxt = _add(pos, d)
        if rng.random() < 0.35 or not (0 < nxt[0] < size - 1 and 0 < nxt[1] < size - 1):
            d = rng.choice(DIRS)
        else:
            pos = nxt
    return wall


def _reverse_play(rng, wall, targets, player, steps):
    """Random walk of the player backwards in time from the solved state, or None.

    Moving away from an adjacent box may pull it along (a pull undoes a push, so every state
    reached is solvable). Returns the reached state with all boxes and the player off targets that
    maximises total box displacement times (1 + pull-direction changes), a proxy for pushes that
    need re-positioning (gym-sokoban scores box switches x displacement).
    """
    boxes = list(targets)
    last_dir = [None] * len(boxes)
    turns = 0
    best, best_score = None, 0
    for _ in range(steps):
        d = rng.choice(DIRS)
        nxt = _add(player, d)
        if wall[nxt] or nxt in boxes:
            continue
        behind = (player[0] - d[0], player[1] - d[1])
        if behind in boxes and rng.random() < 0.6:
            i = boxes.index(behind)
            turns += last_dir[i] is not None and last_dir[i] != d
            last_dir[i] = d
            boxes[i] = player
        player = nxt
        if not any(b in targets for b in boxes) and player not in targets:
            shift = sum(abs(b[0] - t[0]) + abs(b[1] - t[1]) for b, t in zip(boxes, targets))
            score = (1 + turns) * shift
            if score > best_score:
                best, best_score = (player, tuple(boxes)), score
    return best


def _reachable(wall, boxes, src):
    """Cells the player can walk to from src without pushing."""
    rows, cols = wall.shape
    seen, stack = {src}, [src]
    while stack:
        for nb in _neighbours(stack.pop(), rows, cols):
            if not wall[nb] and nb not in boxes and nb not in seen:
                seen.add(nb)
                stack.append(nb)
    return seen


def _live_cells(wall, targets):
    """Cells from which a lone box can still be pushed onto some target.

    The reverse closure from the targets (a box at y can come from x = y - d when the player can
    stand at x - d). Boxes elsewhere are dead.
    """
    live, stack = set(targets), list(targets)
    while stack:
        y = stack.pop()
        for d in DIRS:
            x = (y[0] - d[0], y[1] - d[1])
            stand = (x[0] - d[0], x[1] - d[1])
            if x not in live and not wall[x] and not wall[stand]:
                live.add(x)
                stack.append(x)
    return live


def solve_sokoban(wall, player, boxes, targets, max_states=200_000):
    """Push-optimal solution as a list of (box cell, direction) pushes, or None.

    None when unsolvable or over the state budget: such instances are rejected, never waited on.
    BFS over (boxes, canonical player cell = smallest cell of the player's reachable region), so
    states one walk apart are one state; pushes into dead cells (_live_cells) are pruned. Optimal
    in pushes, not in total steps.
    """
    targets = frozenset(targets)
    live = _live_cells(wall, targets)
    start = frozenset(boxes)
    key0 = (start, min(_reachable(wall, start, player)))
    parent = {key0: None}
    queue = deque([key0])
    while queue:
        key = queue.popleft()
        bset, canon = key
        if bset == targets:
            pushes = []
            while parent[key] is not None:
                key, push = parent[key]
                pushes.append(push)
            return pushes[::-1]
        region = _reachable(wall, bset, canon)
        for b in sorted(bset):
            for d in DIRS:
                dest = _add(b, d)
                behind = (b[0] - d[0], b[1] - d[1])
                if behind not in region or wall[dest] or dest in bset or dest not in live:
                    continue
                nb = (bset - {b}) | {dest}
                nkey = (nb, min(_reachable(wall, nb, b)))
                if nkey not in parent:
                    parent[nkey] = (key, (b, d))
                    if len(parent) > max_states:
                        return None
                    queue.append(nkey)
    return None


def sokoban_states(wall, player, boxes, pushes):
    """Expand pushes into unit-move states (player, boxes).

    A shortest walk to behind each box, then the push.
    """
    boxes = list(boxes)
    states = [(player, tuple(boxes))]
    for b, d in pushes:
        free = ~wall.copy()
        for x in boxes:
            free[x] = False
        walk = shortest_path(free, player, (b[0] - d[0], b[1] - d[1]))
        if walk is None:
            raise ValueError(f"push of box {b} towards {d} is not reachable from player {player}")
        for cell in walk[1:]:
            states.append((cell, tuple(boxes)))
        boxes[boxes.index(b)] = _add(b, d)
        player = b
        states.append((player, tuple(boxes)))
    return states


def _make_sokoban(rng, seed, split, size, boxes, min_pushes):
    if size < 5 or boxes < 1:
        raise ValueError(f"sokoban needs size >= 5 (incl. border walls) and boxes >= 1, got "
                         f"size={size}, boxes={boxes}")
    for _ in range(MAX_ATTEMPTS):
        wall = _sokoban_room(rng, size)
        floor = sorted(zip(*np.nonzero(~wall)))
        floor = [(int(r), int(c)) for r, c in floor]
        if len(floor) < 2 * boxes + 3:
            continue
        targets = tuple(sorted(rng.sample(floor, boxes)))
        player = rng.choice([c for c in floor if c not in targets])
        found = _reverse_play(rng, wall, targets, player, steps=10 * len(floor))
        if found is None:
            continue
        player, box_cells = found
        box_cells = tuple(sorted(box_cells))
        if layout_split(layout_key("sokoban", wall, player, box_cells, targets)) != split:
            continue
        pushes = solve_sokoban(wall, player, box_cells, targets)  # forward check + optimal GT
        if pushes is None or len(pushes) < min_pushes:
            continue
        states = sokoban_states(wall, player, box_cells, pushes)
        words = dict(boxes_word="orange box" if boxes == 1 else f"{boxes} orange boxes",
                     targets_word="target" if boxes == 1 else "targets")
        return Puzzle("sokoban", seed, dict(size=size, boxes=boxes, min_pushes=min_pushes), wall,
                      PROMPTS["sokoban"].format(**words), tuple(states), start=player,
                      boxes=box_cells, targets=targets)
    raise RuntimeError(f"no sokoban room with size={size}, boxes={boxes}, "
                       f"min_pushes={min_pushes} in {MAX_ATTEMPTS} attempts; lower min_pushes or "
                       "raise size")


def generate(domain, seed, **difficulty):
    """Deterministic puzzle for (domain, seed, difficulty).

    Knobs and defaults: KNOBS; named sets: LEVELS. Seeds below TEST_SEED_BASE give train layouts,
    seeds above give test layouts (see split_seeds).
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    unknown = set(difficulty) - set(KNOBS[domain])
    if unknown:
        raise ValueError(f"unknown {domain} knob(s) {sorted(unknown)}; allowed: {KNOBS[domain]}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    knobs = {**KNOBS[domain], **difficulty}
    rng = random.Random(f"{domain}|{int(seed)}|{sorted(knobs.items())}")
    split = seed_split(seed)
    if domain == "maze":
        return _make_maze(rng, int(seed), split, **knobs)
    if domain == "flowfree":
        return _make_flowfree(rng, int(seed), split, **knobs)
    return _make_sokoban(rng, int(seed), split, **knobs)


# -----------------------------------------------------------------------------
# rendering

def check_video_size(height, width, frames):
    """Wan2.2 constraints on a video size; ValueError if not met.

    frames = 4k+1 (the causal VAE keeps frame 0 and packs 4 frames per latent), height and width
    multiples of 32 (VAE stride 16 x DiT patch 2).
    """
    if not (isinstance(frames, (int, np.integer)) and frames >= 1 and (frames - 1) % 4 == 0):
        raise ValueError(f"frames must be 4k+1 (1, 5, 9, ..., 49, ...) for the Wan2.2 VAE, got "
                         f"{frames}")
    for name, v in (("height", height), ("width", width)):
        if not (isinstance(v, (int, np.integer)) and v > 0 and v % 32 == 0):
            raise ValueError(f"{name} must be a positive multiple of 32 (VAE stride 16 x patch 2), "
                             f"got {v}")


def geometry(puzzle, height, width):
    """Cell size and offsets for a frame of height x width, the board centred.

    The largest cell that is a multiple of 8 px (integer cells so cell blocks are exact pixel
    blocks; multiples of 8 keep a 7x7 maze at 16 px in 128 px like the tiny demo's VAE cell);
    ValueError if cells would be < MIN_CELL.
    """
    rows, cols = puzzle.grid.shape
    cell = min(height // rows, width // cols) // 8 * 8
    if cell < MIN_CELL:
        raise ValueError(f"a {rows}x{cols} {puzzle.domain} grid does not fit {height}x{width} px "
                         f"with cells of >= {MIN_CELL} px (needs at least "
                         f"{rows * MIN_CELL}x{cols * MIN_CELL})")
    return Geometry(rows, cols, cell, (height - rows * cell) // 2, (width - cols * cell) // 2)


def solve_frames(frames):
    """F_c, the frame at which the solution is complete.

    About 85% of the way (our schedule; a fixed frame count with a completion frame, then a hold,
    as in pufanyi/vbvr-rl src/precompute/maze_generator.py), rounded to a multiple of 4 so the held
    end state starts on a VAE latent boundary (frames 4j+1..4j+4 share one latent frame): the last
    latent frames then show the pure end state, not a blend with the last move. At least one latent
    frame (4 frames) holds when F > 5: 9 -> 4, 17 -> 12, 33 -> 28, 49 -> 40.
    """
    last = frames - 5 if frames > 5 else frames - 1
    return max(1, min(4 * round(SOLVE_FRACTION * (frames - 1) / 4), last))


def frame_times(n_moves, frames):
    """Progress s_f in unit moves shown by frame f.

    s_0 = 0 (the puzzle), then uniform up to n_moves at frame solve_frames(frames), held to the
    end. Sprites sit at path[s], interpolated between cells.
    """
    return np.minimum(np.arange(frames) * (n_moves / solve_frames(frames)), n_moves)


def _centre(g, cell):
    """Pixel-space centre of a (possibly fractional) cell position; pixel i spans [i, i + 1)."""
    return g.y0 + (cell[0] + 0.5) * g.cell, g.x0 + (cell[1] + 0.5) * g.cell


def _stamp(img, cy, cx, half, colour, disc):
    """Draw a filled disc (radius half) or square (half side) at pixel coords (cy, cx), clipped."""
    y0, y1 = max(0, int(cy - half)), min(img.shape[0], int(cy + half) + 2)
    x0, x1 = max(0, int(cx - half)), min(img.shape[1], int(cx + half) + 2)
    yy = np.arange(y0, y1)[:, None] + 0.5 - cy  # (h, 1)
    xx = np.arange(x0, x1)[None, :] + 0.5 - cx  # (1, w)
    if disc:
        mask = yy ** 2 + xx ** 2 <= half ** 2
    else:
        mask = (np.abs(yy) <= half) & (np.abs(xx) <= half)
    img[y0:y1, x0:x1][mask] = colour


def _sweep(g, shape, path, t0, half, cover, rgb=None, colour=None):
    """First time each pixel is covered by a disc of radius `half` (px) moving along `path`.

    The disc moves along the cell centres of `path`, one segment per unit of time starting at t0;
    writes min(cover, t) in place (and `colour` into `rgb` where this path is first) and returns
    the pixel boxes of the segments as (t_start, t_end, y0, y1, x0, x1). A swept disc gives round
    caps and joins, so the pipe/trail covers each visited cell's centre patch even at a corner.

    Segment P -> Q of length c, pixel p: along = (p - P).dir, perp = |(p - P) x dir|. The centre
    P + u*c*dir covers p iff (along - u*c)^2 + perp^2 <= half^2, first at u = (along - h)/c with
    h = sqrt(half^2 - perp^2), clipped to [0, 1] and valid when along + h >= 0 and along - h <= c.
    """
    boxes = []
    c = g.cell
    for k in range(len(path) - 1):
        (py, px), (qy, qx) = _centre(g, path[k]), _centre(g, path[k + 1])
        y0, y1 = max(0, int(min(py, qy) - half) - 1), min(shape[0], int(max(py, qy) + half) + 2)
        x0, x1 = max(0, int(min(px, qx) - half) - 1), min(shape[1], int(max(px, qx) + half) + 2)
        dy, dx = (qy - py) / c, (qx - px) / c
        yy = np.arange(y0, y1)[:, None] + 0.5 - py  # (h, 1)
        xx = np.arange(x0, x1)[None, :] + 0.5 - px  # (1, w)
        along = yy * dy + xx * dx                   # (h, w)
        perp2 = (yy * dx - xx * dy) ** 2            # (h, w)
        h = np.sqrt(np.maximum(half ** 2 - perp2, 0.0))
        ok = (perp2 <= half ** 2) & (along + h >= 0) & (along - h <= c)
        t = np.where(ok, t0 + k + np.clip((along - h) / c, 0.0, 1.0), np.inf)
        first = t < cover[y0:y1, x0:x1]
        cover[y0:y1, x0:x1][first] = t[first]
        if rgb is not None:
            rgb[y0:y1, x0:x1][first] = colour
        boxes.append((t0 + k, t0 + k + 1, y0, y1, x0, x1))
    return boxes


def _background(p, g, height, width, colours):
    """(H, W, 3) frame filled with the floor colour, wall cells painted (maze and Sokoban)."""
    rows, cols, c = g.rows, g.cols, g.cell
    static = np.empty((height, width, 3), dtype=np.uint8)
    static[:] = colours["floor"]
    board = static[g.y0:g.y0 + rows * c, g.x0:g.x0 + cols * c]
    board = board.reshape(rows, c, cols, c, 3)                               # (R, c, C, c, 3)
    board[:] = np.where(p.grid[:, None, :, None, None], colours["wall"], colours["floor"])
    return static


# Each scene is (static, layers, spans, sprites) for one puzzle at geometry g:
#   static   (H, W, 3) what never changes;
#   layers   [(cover time (H, W), colour (3,) or (H, W, 3))], drawn in order where cover time <= s;
#   spans    [(t_start, t_end, y0, y1, x0, x1)] pixel boxes of the layers with their time spans
#            (only those can change between two frames);
#   sprites  s -> [(cy, cx, half, colour, is_disc)] drawn on top at progress s.

def _maze_scene(p, g, height, width):
    static = _background(p, g, height, width, MAZE_COLORS)
    _stamp(static, *_centre(g, p.goal), GOAL_HALF * g.cell, MAZE_COLORS["goal"], disc=False)
    cover = np.full((height, width), np.inf, dtype=np.float32)
    spans = _sweep(g, (height, width), p.solution, 0.0, TRAIL_HALF * g.cell, cover)
    path = np.array(p.solution, dtype=np.float32)  # (L+1, 2)

    def sprites(s):
        return [(*_centre(g, _lerp(path, s)), AGENT_RADIUS * g.cell, MAZE_COLORS["agent"], True)]
    return static, [(cover, np.array(MAZE_COLORS["trail"], np.uint8))], spans, sprites


def _sokoban_scene(p, g, height, width):
    static = _background(p, g, height, width, SOKO_COLORS)
    for t in p.targets:
        _stamp(static, *_centre(g, t), TARGET_HALF * g.cell, SOKO_COLORS["target"], disc=False)
    players = np.array([s[0] for s in p.solution], dtype=np.float32)  # (L+1, 2)
    boxes = np.array([s[1] for s in p.solution], dtype=np.float32)    # (L+1, n_boxes, 2)

    def sprites(s):  # boxes, then the player on top; a pushed box moves in lockstep with the player
        out = [(*_centre(g, b), BOX_HALF * g.cell, SOKO_COLORS["box"], False)
               for b in _lerp(boxes, s)]
        player = _centre(g, _lerp(players, s))
        return out + [(*player, PLAYER_RADIUS * g.cell, SOKO_COLORS["player"], True)]
    return static, [], [], sprites


def _flow_scene(p, g, height, width):
    """Dark board with grid lines, endpoint discs on top; pipes grow one colour at a time.

    Each cell takes a 35% tint of its pipe colour when the pipe head reaches its centre (our design,
    like the tinted cells of the Flow Free app).
    """
    rows, cols, c = g.rows, g.cols, g.cell
    shape = (height, width)
    static = np.empty((height, width, 3), dtype=np.uint8)
    static[:] = FLOW_BG
    lw = max(1, c // 16)  # grid lines ~1/16 cell wide at every cell border, outline included
    line = np.zeros(shape, dtype=bool)
    for i in range(rows + 1):
        y = g.y0 + i * c - lw // 2
        line[max(0, y):min(height, y + lw), g.x0:g.x0 + cols * c] = True
    for j in range(cols + 1):
        x = g.x0 + j * c - lw // 2
        line[g.y0:g.y0 + rows * c, max(0, x):min(width, x + lw)] = True
    static[line] = FLOW_LINE
    tint_t = np.full(shape, np.inf, dtype=np.float32)
    pipe_t = np.full(shape, np.inf, dtype=np.float32)
    tint_rgb = np.zeros((height, width, 3), np.uint8)
    pipe_rgb = np.zeros((height, width, 3), np.uint8)
    spans, t0 = [], 0.0
    for k, path in enumerate(p.paths):
        colour = np.array(FLOW_COLORS[k], dtype=np.float32)
        tint = np.round(TINT * colour + (1 - TINT) * np.array(FLOW_BG)).astype(np.uint8)
        for i, cell in enumerate(path):
            ys = slice(g.y0 + cell[0] * c, g.y0 + (cell[0] + 1) * c)
            xs = slice(g.x0 + cell[1] * c, g.x0 + (cell[1] + 1) * c)
            tint_t[ys, xs] = t0 + i
            tint_rgb[ys, xs] = tint
            spans.append((t0 + i, t0 + i, ys.start, ys.stop, xs.start, xs.stop))
        spans += _sweep(g, shape, path, t0, PIPE_HALF * c, pipe_t, pipe_rgb,
                        colour.astype(np.uint8))
        t0 += len(path) - 1
    tint_t[line] = np.inf
    for k, pair in enumerate(p.endpoints):  # endpoint discs stay on top of every layer
        for cell in pair:
            _stamp(static, *_centre(g, cell), ENDPOINT_RADIUS * c, FLOW_COLORS[k], disc=True)
            _stamp(tint_t, *_centre(g, cell), ENDPOINT_RADIUS * c, np.inf, disc=True)
            _stamp(pipe_t, *_centre(g, cell), ENDPOINT_RADIUS * c, np.inf, disc=True)
    return static, [(tint_t, tint_rgb), (pipe_t, pipe_rgb)], spans, lambda s: []


def _lerp(track, s):
    """Position on a per-move track (L+1, ...) at fractional progress s in [0, L]."""
    k = min(int(s), len(track) - 2) if len(track) > 1 else 0
    u = s - k
    return track[k] if len(track) == 1 else track[k] * (1 - u) + track[k + 1] * u


def render(puzzle, height, width, frames):
    """Ground-truth video (frames, height, width, 3) uint8.

    Frame 0 is the puzzle, the solution unfolds uniformly over the first ~85% of frames
    (frame_times), the end state holds to the last frame.

    Motion is continuous at sub-cell level: the maze agent and Sokoban sprites are interpolated
    between cell centres, the maze trail and FlowFree pipes grow as a swept disc, so several unit
    moves may fall between two frames (tiny demo: 8-16 moves in 17 frames) and the video still
    shows every cell visited.
    Vectorised: only the pixel boxes whose cover time falls in a frame's time step are updated.
    """
    check_video_size(height, width, frames)
    g = geometry(puzzle, height, width)
    if puzzle.domain == "maze":
        static, layers, spans, sprites = _maze_scene(puzzle, g, height, width)
    elif puzzle.domain == "flowfree":
        static, layers, spans, sprites = _flow_scene(puzzle, g, height, width)
    else:
        static, layers, spans, sprites = _sokoban_scene(puzzle, g, height, width)
    times = frame_times(puzzle.n_moves, frames)
    base = static.copy()
    video = np.empty((frames, height, width, 3), dtype=np.uint8)  # (F, H, W, 3)
    prev = -1.0
    for f, s in enumerate(times):
        if f > 0:  # frame 0 is the bare puzzle: nothing drawn yet, even what is covered at time 0
            for t_start, t_end, y0, y1, x0, x1 in spans:
                if t_start <= s and t_end > prev or (t_start == t_end and prev < t_start <= s):
                    region = base[y0:y1, x0:x1]
                    for cover, colour in layers:
                        m = (cover[y0:y1, x0:x1] <= s)[..., None]
                        paint = colour[y0:y1, x0:x1] if colour.ndim == 3 else colour
                        np.copyto(region, paint, where=m)
            prev = s
        video[f] = base
        for cy, cx, half, colour, disc in sprites(s):
            _stamp(video[f], cy, cx, half, colour, disc)
    return video


# -----------------------------------------------------------------------------
# files and command line

def save_gif(path, video, fps=8):
    """Animated GIF of a (F, H, W, 3) uint8 video (Pillow), looping."""
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise ValueError(f"save_gif expects a (F, H, W, 3) uint8 video, got {video.shape} "
                         f"{video.dtype}")
    frames = [Image.fromarray(f) for f in video]
    frames[0].save(path, save_all=True, append_images=frames[1:],
                   duration=int(round(1000 / fps)), loop=0)


def side_by_side(videos, captions, ok):
    """Videos (n, F, H, W, 3) uint8 in one strip (F, H + 16, n (W + 4), 3).

    Each is framed green (ok[i]) or red, with captions[i] written below: a rollout group and its
    verdicts (train.py).
    """
    n, F, H, W, _ = videos.shape
    strip = np.full((F, H + 16, n * (W + 4), 3), 255, np.uint8)
    label = Image.new("RGB", (strip.shape[2], 12), "white")
    for i, (v, text, good) in enumerate(zip(videos, captions, ok)):
        x = i * (W + 4)
        strip[:, :H + 4, x:x + W + 4] = (40, 170, 60) if good else (210, 40, 40)
        strip[:, 2:H + 2, x + 2:x + W + 2] = v
        ImageDraw.Draw(label).text((x + 2, 0), text, fill="black")
    strip[:, H + 4:] = np.asarray(label)[None]
    return strip


if __name__ == "__main__":
    ap = argparse.ArgumentParser(
        description="Generate puzzles and write their GT videos as GIF + frame-0 PNG.")
    ap.add_argument("--domain", choices=DOMAINS, default="maze")
    ap.add_argument("--level", choices=("easy", "medium", "hard"), default="easy")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--split", choices=("train", "test"), default="train")
    ap.add_argument("--start", type=int, default=0, help="first seed index within the split")
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--frames", type=int, default=49)
    ap.add_argument("--fps", type=float, default=8)
    ap.add_argument("--out", default="samples/")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for seed in split_seeds(args.split, args.n, args.start):
        p = generate(args.domain, seed, **LEVELS[args.domain][args.level])
        video = render(p, args.height, args.width, args.frames)
        stem = out / f"{args.domain}_{args.level}_{seed}"
        save_gif(f"{stem}.gif", video, fps=args.fps)
        Image.fromarray(video[0]).save(f"{stem}.png")
        print(f"{stem}.gif  {p.grid.shape[0]}x{p.grid.shape[1]} grid, {p.n_moves} moves  |  {p.prompt}")


# -----------------------------------------------------------------------------
# puzzle batches for the training and evaluation loops (added for train.py / eval.py)

def make_batch(domains, level, split, start, n):
    """Puzzles start .. start+n-1 of a split, the domains taking turns.

    Index i -> domain i mod D, its (i // D)-th seed of that split: deterministic, and the same on
    every rank.
    """
    out = []
    for i in range(start, start + n):
        domain = domains[i % len(domains)]
        seed = split_seeds(split, 1, start=i // len(domains))[0]
        out.append(generate(domain, seed, **LEVELS[domain][level]))
    return out
