"""Adversarial and false-negative generators for reward.py (issue 10's six principles).

Each cheat generator is parameterised and run on many seeds the other tests do not use (5000+),
at the tiny demo's size (128x128x17, most seeds) and at 480x480x49 (a few): a cheat must fail
(success 0) and score below the ground truth. Each false-negative generator makes a valid video
of the kind a generator model produces (fast, paused or eased motion ending on the last frame,
soft edges, later-frame blur, colour offsets, brightness flicker): it must still succeed.
Run: python -m pytest -q tests/test_reward_adversarial.py
"""
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image, ImageFilter

import puzzles as pz
import reward as rw
from test_reward import noise  # pixel noise of SD 10, the damage test's

SIZES = [(128, 17, 12), (480, 49, 1)]  # height = width, frames, seeds per domain and generator
LEVEL = {("maze", 128): "easy", ("maze", 480): "hard", ("flowfree", 128): "easy",
         ("flowfree", 480): "hard", ("sokoban", 128): "easy", ("sokoban", 480): "hard"}


def puzzles_for(domain, size, n, base=5000):
    return [pz.generate(domain, base + i, **pz.LEVELS[domain][LEVEL[domain, size]]) for i in range(n)]


def render(p, size, frames, states=None):
    return pz.render(replace(p, solution=tuple(states)) if states is not None else p, size, size,
                     frames)


def block(g, cell):
    return (slice(g.y0 + cell[0] * g.cell, g.y0 + (cell[0] + 1) * g.cell),
            slice(g.x0 + cell[1] * g.cell, g.x0 + (cell[1] + 1) * g.cell))


def gaussian(video, sigma, start=0):
    """Gaussian blur (PIL) of frames start.. at sigma px."""
    out = video.copy()
    for f in range(start, len(video)):
        out[f] = np.asarray(Image.fromarray(video[f]).filter(ImageFilter.GaussianBlur(sigma)))
    return out


def retime(p, size, frames, progress):
    """The GT walk shown with progress s_f = progress(f) in unit moves (a 4x finer GT render,
    nearest frame): any pace profile, with the renderer's own sprites and trail."""
    fine = 4 * (frames - 1) + 1
    video = pz.render(p, size, size, fine)
    times = pz.frame_times(p.n_moves, fine)
    pick = [int(np.abs(times - progress(f)).argmin()) for f in range(frames)]
    return video[pick]


def failed(p, video, gt_reward=1.0):
    s = rw.score(p, video)
    return s.success == 0 and s.reward < gt_reward, s


# -----------------------------------------------------------------------------
# principle 1 + 2: maze cheats

def maze_flood(p, size, frames, agent):
    """Trail floods every corridor from the start, one BFS layer per frame (several branches at
    once); the agent hidden ("none"), left on the start ("start") or riding the GT path ("path");
    it appears on the goal at the end."""
    g = pz.geometry(p, size, size)
    video = render(p, size, frames)
    dist = pz.bfs_distances(~p.grid, p.start)
    base = video[0].copy()
    f_c = pz.solve_frames(frames)
    out = np.repeat(video[:1], frames, 0)
    n_layers = max(dist.values())
    for f in range(1, frames):
        layer = n_layers * min(1.0, f / f_c)
        frame = base.copy()
        for cell, d in dist.items():
            if d <= layer:
                ys, xs = block(g, cell)
                frame[ys, xs] = pz.MAZE_COLORS["trail"]
        if agent == "path" or f >= f_c:
            k = min(p.n_moves, int(round(p.n_moves * f / f_c)))
            where = p.solution[k] if f < f_c else p.goal
            pz._stamp(frame, *pz._centre(g, where), pz.AGENT_RADIUS * g.cell, pz.MAZE_COLORS["agent"], True)
        elif agent == "start":
            pz._stamp(frame, *pz._centre(g, p.start), pz.AGENT_RADIUS * g.cell, pz.MAZE_COLORS["agent"], True)
        out[f] = frame
    return out


def freeze_then_jump(video, hold):
    """Frame 0 held for `hold` frames, then the GT's solved end."""
    out = video.copy()
    out[1:hold] = video[0]
    out[hold:] = video[-1]
    return out


def alternate_second_agent(p, video, size, cell):
    """A second agent on `cell`, on every other frame only."""
    g = pz.geometry(p, size, size)
    out = video.copy()
    for f in range(1, len(video), 2):
        pz._stamp(out[f], *pz._centre(g, cell), pz.AGENT_RADIUS * g.cell, pz.MAZE_COLORS["agent"], True)
    return out


def hide_sprite(p, video, size, colour, start, stop, fill):
    """Sprite pixels of `colour` repainted with `fill` in frames start..stop-1."""
    out = video.copy()
    part = out[start:stop]
    mask = (part == colour).all(-1)
    part[mask] = fill
    return out


@pytest.mark.parametrize("size,frames,n", SIZES)
def test_maze_cheats_of_issue_10_fail(size, frames, n):
    rng = np.random.default_rng(size)
    for p in puzzles_for("maze", size, n):
        video = render(p, size, frames)
        for agent in ("none", "start", "path"):
            ok, s = failed(p, maze_flood(p, size, frames, agent))
            # with the agent riding the path, the flood is a (too fast) walk into every branch:
            # it fails on pace and pays only for what fits the budget
            assert ok and (s.reward < 0.5 or agent == "path"), (p.seed, agent, s)
        for hold in (frames // 2, frames - 4, frames - 2):
            ok, s = failed(p, freeze_then_jump(video, hold))
            assert ok and s.reward < 0.75, (p.seed, hold, s)
        far = max((c for c in pz.bfs_distances(~p.grid, p.goal) if c not in p.solution),
                  key=lambda c: pz.bfs_distances(~p.grid, c)[p.solution[0]], default=None)
        if far is not None:
            ok, s = failed(p, alternate_second_agent(p, video, size, far))
            assert ok and "two agents" in s.reason, (p.seed, s)
        hidden = hide_sprite(p, video, size, pz.MAZE_COLORS["agent"], 1, frames - 3,
                             pz.MAZE_COLORS["trail"])
        ok, s = failed(p, hidden)
        assert ok and "not seen" in s.reason, (p.seed, s)
        # the agent hidden for a random stretch longer than MAX_BLIND: credit ends there
        start = int(rng.integers(1, frames // 2))
        hidden = hide_sprite(p, video, size, pz.MAZE_COLORS["agent"], start,
                             start + rw.MAX_BLIND + 1, pz.MAZE_COLORS["trail"])
        ok, s = failed(p, hidden)
        assert ok and "not seen" in s.reason, (p.seed, start, s)


def test_maze_a_walk_is_one_walk_and_precision_enters_the_reward():
    for p in puzzles_for("maze", 128, 12, base=6000):
        video = render(p, 128, 17)
        g = pz.geometry(p, 128, 128)
        # trail painted on every dead end off the path while the agent holds the goal
        off = [c for c in pz.bfs_distances(~p.grid, p.start) if c not in p.solution]
        if not off:
            continue
        painted = video.copy()
        for c in off:
            ys, xs = block(g, c)
            painted[pz.solve_frames(17):, ys, xs] = pz.MAZE_COLORS["trail"]
        s = rw.score(p, painted)
        assert s.success == 0 and s.components["walked"] < 1 and s.reward < 1, s
        assert s.reward == pytest.approx(s.components["walked"] * s.components["conn"], abs=1e-6)


# -----------------------------------------------------------------------------
# principle 1: Sokoban cheats

def soko_hidden_then_solved(p, size, frames, how):
    """Frame 0, then frames 1..F-4 with the player hidden and nothing readable moving, then the GT's
    solved end. how: "erase" (player painted floor), "blur" (middle frames blurred), "smudge" (the
    puzzle held with one floor cell smudged grey per frame)."""
    video = render(p, size, frames)
    g = pz.geometry(p, size, size)
    out = video.copy()
    mid = slice(1, frames - 3)
    if how == "erase":
        out = hide_sprite(p, out, size, pz.SOKO_COLORS["player"], 1, frames - 3, pz.SOKO_COLORS["floor"])
    elif how == "blur":
        hidden = hide_sprite(p, out, size, pz.SOKO_COLORS["player"], 1, frames - 3,
                             pz.SOKO_COLORS["floor"])
        out[mid] = gaussian(hidden[mid], g.cell / 2)
    else:
        floor = [tuple(map(int, c)) for c in np.argwhere(~p.grid) if tuple(c) not in p.boxes
                 and tuple(c) != p.start and tuple(c) not in p.targets]
        for f in range(1, frames - 3):
            out[f] = video[0]
            ys, xs = block(g, floor[f % len(floor)])
            out[f, ys, xs] = 128
    out[frames - 3:] = video[-1]
    return out


def soko_glide(p, size, frames, player_at):
    """Boxes glide in straight lines onto the targets (through whatever is between), the player
    standing at the start or hidden."""
    states = [(p.start, p.boxes), (p.start, p.targets)]
    video = render(p, size, frames, states)
    if player_at == "hidden":
        video = hide_sprite(p, video, size, pz.SOKO_COLORS["player"], 1, frames, pz.SOKO_COLORS["floor"])
    return video


@pytest.mark.parametrize("size,frames,n", SIZES)
def test_sokoban_cheats_of_issue_10_fail(size, frames, n):
    for p in puzzles_for("sokoban", size, n):
        gt = render(p, size, frames)
        for how in ("erase", "blur", "smudge"):
            ok, s = failed(p, soko_hidden_then_solved(p, size, frames, how))
            assert ok and s.reward < 0.5, (p.seed, how, s)
        invisible = hide_sprite(p, gt, size, pz.SOKO_COLORS["player"], 1, frames, pz.SOKO_COLORS["floor"])
        ok, s = failed(p, invisible)
        assert ok, (p.seed, "invisible player", s)
        for player_at in ("start", "hidden"):
            ok, s = failed(p, soko_glide(p, size, frames, player_at))
            assert ok and s.reward < 0.5, (p.seed, player_at, s)
        # boxes drawn on the targets, the player back on its start cell, nothing in between
        jump = render(p, size, frames, [(p.start, p.boxes)] * 3 + [(p.start, p.targets)] * 2)
        ok, s = failed(p, jump)
        assert ok and s.reward < 0.5, (p.seed, "jump", s)


def soko_frame(p, size, player, boxes):
    """One frame of the board with the player at a (fractional) cell; off the board hides it."""
    return pz.render(replace(p, solution=((player, tuple(boxes)),)), size, size, 9)[0]


def soko_unseen_walk(p, size, frames, dest, alpha, n_end):
    """The GT up to its last push, then the player slides in a straight line to `dest` (through
    whatever is between) drawn with opacity alpha (0: erased), and stands on `dest` in the last
    n_end frames."""
    out = render(p, size, frames)
    f_c = pz.solve_frames(frames)
    last, boxes = p.solution[-1]
    a, b = np.array(last, float), np.array(dest, float)
    bare = soko_frame(p, size, (-10.0, -10.0), boxes).astype(np.float32)
    n_slide = frames - n_end - f_c - 1
    for i, f in enumerate(range(f_c + 1, frames - n_end)):
        drawn = soko_frame(p, size, tuple(a + (b - a) * (i + 1) / (n_slide + 1)), boxes)
        out[f] = np.round(bare + alpha * (drawn - bare)).astype(np.uint8)
    out[frames - n_end:] = soko_frame(p, size, dest, boxes)
    return out


@pytest.mark.parametrize("size,frames,n", SIZES)
def test_sokoban_walk_after_the_last_push_must_be_seen_and_legal(size, frames, n):
    """After the boxes are solved the player vanishes (erased, or faint: below SMEAR_MASS) and
    reappears on its start cell or on the free cell farthest from it by a legal walk. Unseen
    frames never widen the walking budget: this must fail whenever the hidden frames are more than
    MAX_BLIND or the legal walk needs more moves than the largest budget of one transition."""
    wins, checked = [], 0
    for p in puzzles_for("sokoban", size, 2 * n, base=5000):
        for dest in walks_home_to_fail(p, frames):
            checked += 1
            for alpha in (0.0, 0.1):  # erased, faint
                s = rw.score(p, soko_unseen_walk(p, size, frames, dest, alpha, 1))
                if s.success:
                    wins.append((p.seed, dest, alpha, s.reason))
    assert checked >= n // 2 and not wins, (checked, wins)


def walks_home_to_fail(p, frames):
    """Destinations of the walk after the last push (the start cell, the free cell farthest away)
    that an unseen walk must not reach: the hidden frames are more than MAX_BLIND, or the legal
    walk needs more moves than one transition's largest budget (else it is a fast but legal walk,
    seen at both ends: nothing to fail)."""
    last, boxes = p.solution[-1]
    free = ~p.grid
    for x in boxes:
        free[x] = False
    dist = pz.bfs_distances(free, last)
    hidden = frames - 2 - pz.solve_frames(frames)
    budget = rw.allowed_moves(p, frames, rw.CATCH_UP)
    return [dest for dest in {p.start, max(dist, key=dist.get)}
            if hidden > rw.MAX_BLIND or dist[dest] > budget]


def test_pixel_noise_does_not_make_an_erased_player_seen():
    """The walk after the last push of the test above, the player erased, under pixel noise of
    SD 10: noise unmixes into a haze of player area on every cell, and a few haze cells must not
    add up to a seen or smeared player (reward._clear_haze). The ground truth under the same noise
    still succeeds."""
    wins, gt_fails, checked = [], [], 0
    for p in puzzles_for("sokoban", 128, 24, base=5000):
        for k in range(3):
            rng = np.random.default_rng(k)
            if not rw.score(p, noise(render(p, 128, 17), rng)).success:
                gt_fails.append((p.seed, k))
            for dest in walks_home_to_fail(p, 17):
                checked += 1
                s = rw.score(p, noise(soko_unseen_walk(p, 128, 17, dest, 0.0, 1), rng))
                if s.success:
                    wins.append((p.seed, k, dest, s.reason))
    assert checked >= 12 and not wins, (checked, wins)
    assert len(gt_fails) <= 1, gt_fails


def test_sokoban_pays_nothing_for_moving_without_progress():
    for p in puzzles_for("sokoban", 128, 12, base=7000):
        free = ~p.grid
        for b in p.boxes:
            free[b] = False
        step = next((c for c in pz._neighbours(p.start, *p.grid.shape) if free[c]), None)
        if step is None:
            continue
        walk = render(p, 128, 17, [(p.start, p.boxes), (step, p.boxes), (p.start, p.boxes)])
        s = rw.score(p, walk)
        assert s.success == 0 and s.reward == 0, s


# -----------------------------------------------------------------------------
# principle 3: FlowFree cheats

def wrong_complete(p):
    """A complete colouring that is wrong: colours of two pipes swapped (endpoints kept)."""
    truth = np.full(p.grid.shape, -1)
    for k, path in enumerate(p.paths):
        for c in path:
            truth[c] = k
    wrong = truth.copy()
    wrong[truth == 0], wrong[truth == 1] = 1, 0
    for k, pair in enumerate(p.endpoints):
        for e in pair:
            wrong[e] = k
    return wrong


def paint_colouring(p, frame, size, colouring):
    """Paint each non-endpoint cell of a frame with its colour (-1: background)."""
    g = pz.geometry(p, size, size)
    out = frame.copy()
    ends = {e for pair in p.endpoints for e in pair}
    for r, c in np.ndindex(*p.grid.shape):
        if (r, c) not in ends:
            ys, xs = block(g, (r, c))
            out[ys, xs] = pz.FLOW_COLORS[colouring[r, c]] if colouring[r, c] >= 0 else pz.FLOW_BG
    return out


@pytest.mark.parametrize("size,frames,n", SIZES)
def test_flowfree_cheats_of_issue_10_fail(size, frames, n):
    for p in puzzles_for("flowfree", size, 2 * n):
        gt = render(p, size, frames)
        wrong = wrong_complete(p)
        # a flashed wrong board in one middle frame, the GT around it
        flashed = gt.copy()
        f = frames // 2
        flashed[f] = paint_colouring(p, gt[f], size, wrong)
        ok, s = failed(p, flashed)
        assert ok and "colour" in s.reason, (p.seed, s)
        # the whole board at once: frame 0 held, then the solution in one frame
        ok, s = failed(p, freeze_then_jump(gt, frames - 4))
        assert ok and s.reward < 0.75, (p.seed, s)
        # the complete but wrong board drawn in one go at the end
        wrong_video = gt.copy()
        wrong_video[1:] = gt[0]
        for f in range(frames // 2, frames):
            wrong_video[f] = paint_colouring(p, gt[0], size, wrong)
        ok, s = failed(p, wrong_video)
        assert ok, (p.seed, s)
        # ... scores below the correct board drawn to 75%
        k = int(0.75 * p.n_moves)
        partial = rw.score(p, render(p, size, frames, p.solution[:k + 1]))
        assert s.reward < partial.reward, (p.seed, s.reward, partial.reward)


# -----------------------------------------------------------------------------
# principle 4: dense rewards are monotone in real progress (the solvers' own solutions)

@pytest.mark.parametrize("domain", pz.DOMAINS)
def test_dense_reward_grows_with_real_progress(domain):
    for p in puzzles_for(domain, 128, 8, base=8000):
        if domain == "sokoban":  # progress counts pushes: cut right after each push
            marks = [i for i in range(1, len(p.solution)) if p.solution[i][1] != p.solution[i - 1][1]]
        else:
            marks = list(range(1, p.n_moves + 1))
        marks = sorted(set(marks[:: max(1, len(marks) // 5)] + [marks[-1]]))
        rewards = [rw.score(p, render(p, 128, 17, p.solution[:k + 1])).reward for k in marks]
        assert all(a < b for a, b in zip(rewards, rewards[1:])), (p.seed, rewards)
        assert rewards[-1] == 1, (p.seed, rewards)


def test_pace_violation_costs_credit_in_proportion():
    for p in puzzles_for("maze", 128, 12, base=9000):
        gt = render(p, 128, 17)
        for hold in (2, 6, 10):  # the whole walk in one frame
            s = rw.score(p, retime(p, 128, 17, lambda f: p.n_moves * np.clip(f - hold, 0, 1)))
            assert s.success == 0 and 0 < s.reward < 1, (p.seed, hold, s)
        assert rw.score(p, gt).reward == 1


def test_invalid_scores_below_valid_at_the_same_progress():
    for p in puzzles_for("maze", 128, 12, base=9500):
        k = 2 * p.n_moves // 3
        states = p.solution[:k + 1]
        video = render(p, 128, 17, states)
        valid = rw.score(p, video)
        hidden = hide_sprite(p, video, 128, pz.MAZE_COLORS["agent"], 3, 3 + rw.MAX_BLIND + 1,
                             pz.MAZE_COLORS["trail"])
        assert rw.score(p, hidden).reward < valid.reward


# -----------------------------------------------------------------------------
# principle 5: bad input

@pytest.mark.parametrize("domain", pz.DOMAINS)
def test_too_few_frames_and_non_finite_and_out_of_range(domain):
    p = puzzles_for(domain, 128, 1)[0]
    video = render(p, 128, 17)
    for n in (1, 2, 3, rw.MIN_FRAMES - 1):
        with pytest.raises(ValueError, match=f"MIN_FRAMES = {rw.MIN_FRAMES}"):
            rw.score(p, np.concatenate([video[:1], video[-1:].repeat(n - 1, 0)]))
    assert rw.score(p, video[:rw.MIN_FRAMES]).reason != ""
    as_float = video.astype(np.float32) / 127.5 - 1
    for bad in (np.nan, np.inf, -np.inf):
        v = as_float.copy()
        v[5:8, 10, 10] = bad
        s = rw.score(p, v)
        assert s.reward == 0 and s.success == 0 and "NaN or inf" in s.reason
    for value in (1.001, -1.0001, 2.0):
        v = as_float.copy()
        v[3, 0, 0, 0] = value
        with pytest.raises(ValueError, match=r"\[-1, 1\]"):
            rw.score(p, v)


# -----------------------------------------------------------------------------
# principle 1, every domain: hold then jump

def plain_floor(p):
    """Free cells frame 0 shows empty (no agent, goal, box, target or endpoint)."""
    taken = {p.start, p.goal, *p.boxes, *p.targets, *(e for pair in p.endpoints for e in pair)}
    return [tuple(map(int, c)) for c in np.argwhere(~p.grid) if tuple(map(int, c)) not in taken]


def hold_then_jump(p, video, size, hold, smudge):
    """Frame 0 held in frames 1..hold, then the GT's solved end from frame hold + 1 on; with smudge,
    one plain floor cell painted grey in each held frame (so no two frames are equal)."""
    out = video.copy()
    out[1:hold + 1] = video[0]
    out[hold + 1:] = video[-1]
    if smudge:
        g, floor = pz.geometry(p, size, size), plain_floor(p)
        for f in range(1, hold + 1):
            ys, xs = block(g, floor[f % len(floor)])
            out[f, ys, xs] = (140, 140, 140)
    return out


@pytest.mark.parametrize("domain", pz.DOMAINS)
@pytest.mark.parametrize("size,frames,n", SIZES)
def test_hold_then_jump_never_succeeds(domain, size, frames, n):
    """Every hold length, with and without smudged cells: a whole solution moved between two
    consecutive frames is never seen solved, however short it is (the catch-up budget is for a
    hold in mid-motion only)."""
    wins = []
    for p in puzzles_for(domain, size, n, base=12000):
        gt = render(p, size, frames)
        for hold in range(1, frames - 1):
            for smudge in (False, True):
                s = rw.score(p, hold_then_jump(p, gt, size, hold, smudge))
                if s.success or s.reward >= 1:
                    wins.append((p.seed, p.n_moves, hold, smudge, s.reward))
    assert not wins, wins


# -----------------------------------------------------------------------------
# principle 6: what a model really generates still passes

def brightness(video, rng):
    out = video.astype(np.float32)
    out[1:] *= rng.uniform(0.8, 1.2, size=(len(video) - 1, 1, 1, 1))
    return np.clip(out, 0, 255).astype(np.uint8)


def offsets(video, rng):
    out = video.astype(np.int16)
    out[1:] += rng.integers(-30, 31, size=(len(video) - 1, 1, 1, 3)).astype(np.int16)
    return np.clip(out, 0, 255).astype(np.uint8)


def offsets_at_limit(video, rng):
    """Later frames shifted by +-30 per channel, random signs (a colour cast, not a grey shift):
    the bright floor and sprites clip at 255 while the walls do not."""
    out = video.astype(np.int16)
    out[1:] += rng.choice(np.array([-30, 30], np.int16), size=(len(video) - 1, 1, 1, 3))
    return np.clip(out, 0, 255).astype(np.uint8)


PACES = {  # progress profiles, in units of the GT's pace: fraction of the moves done at frame f
    "2x": lambda u: np.clip(2 * u, 0, 1),
    "2x, ends on the last frame": lambda u: np.clip(2 * u - 1 / 0.85 + 1, 0, 1),
    "pause, then 2x": lambda u: np.clip(np.where(u < 0.3, 0, 2 * (u - 0.3)), 0, 1),
    "ease in-out at 2x, last frame": lambda u: (lambda t: t * t * (3 - 2 * t))(
        np.clip(2 * u - 1 / 0.85 + 1, 0, 1)),
    "move, pause, move": lambda u: np.clip(np.where(u < 0.25, 2 * u, np.where(u < 0.5, 0.5,
                                                                               0.5 + 2 * (u - 0.5))), 0, 1),
}


@pytest.mark.parametrize("domain", pz.DOMAINS)
@pytest.mark.parametrize("size,frames,n", SIZES)
def test_valid_model_like_videos_still_pass(domain, size, frames, n):
    rng = np.random.default_rng(frames)
    f_c = pz.solve_frames(frames)
    fails = []
    for p in puzzles_for(domain, size, n, base=10000):
        cell = pz.geometry(p, size, size).cell
        gt = render(p, size, frames)
        videos = {"soft edges": gaussian(gt, cell / 6), "later blur": gaussian(gt, cell / 6, 1),
                  "offsets": offsets(gt, rng), "flicker": brightness(gt, rng),
                  "offsets +-30": offsets_at_limit(gt, rng)}
        for name, prof in PACES.items():
            videos[name] = retime(p, size, frames, lambda f: p.n_moves * prof(f / f_c))
        for name, v in videos.items():
            s = rw.score(p, v)
            if not s.success:
                fails.append((p.seed, name, s.reason))
    assert not fails, fails
