"""What a user sees on the command line: --help, one-line config errors, the training curves PNG.

Run: python -m pytest tests/test_cli.py -q
"""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import train as T

ROOT = Path(__file__).resolve().parents[1]


def cli(program, *args):
    return subprocess.run([sys.executable, str(ROOT / program), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_help_lists_the_presets_and_every_field_with_type_default_and_comment():
    for program in ("train.py", "eval.py"):
        for flag in ("--help", "-h"):
            p = cli(program, flag)
            assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
            out = p.stdout
            assert out.startswith(f"usage: python {program}")
            for name in T.CONFIGS:
                prefix = f"  --config {name} "
                lines = [line for line in out.splitlines() if line.startswith(prefix)]
                assert len(lines) == 1 and len(lines[0].split()) > 4         # one line, described
            for f in dataclasses.fields(T.TrainConfig):
                assert f"--{f.name}=<" in out, f.name
    out = cli("train.py", "--help").stdout
    line = next(line for line in out.splitlines() if line.startswith("  --sft_batch="))
    assert "<int>" in line and "(default 8)" in line and "videos per optimizer step" in line
    line = next(line for line in out.splitlines() if line.startswith("  --sde_steps="))
    assert "arXiv 2605.15458" in line                                    # a continued comment
    assert "--out_dir=<folder>" in cli("eval.py", "--help").stdout       # eval's own options


def test_config_mistakes_end_in_one_line_and_exit_status_2():
    cases = [("train.py", ["--sft_step=3"],
              "unknown config key --sft_step; did you mean --sft_steps?"),
             ("train.py", ["--config", "nope"], "unknown config 'nope'"),
             ("train.py", ["--config", "tny"], "did you mean --config tiny?"),
             ("train.py", ["--group_size=4.5"], "--group_size=4.5: expected int"),
             ("train.py", ["--frames=16", "--eval_n=0"], "frames must be 4k+1"),
             ("eval.py", ["--config", "tiny", "--eval_step=3"], "did you mean --eval_steps?")]
    for program, args, message in cases:
        p = cli(program, *args)
        assert p.returncode == 2, (args, p.stderr[-2000:])
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1, (args, p.stderr[-2000:])
        assert lines[0].startswith(f"{program}: error: ") and message in lines[0], lines[0]


def test_curves_png_has_the_expected_size_and_is_not_blank(tmp_path):
    rows = [dict(step=i, stage="sft", stage_step=i, loss=1.0 / (i + 1)) for i in range(10)]
    rows += [dict(step=10 + i, stage="rl", stage_step=i, reward=0.1 * i, reward_std=0.05,
                  success=0.05 * i, zero_std_ratio=1 - 0.1 * i, clipfrac=0.01 * i)
             for i in range(5)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = {"sft": {"overall": {"success": 0.4}}, "rl": {"overall": {"success": 0.5}}}
    cfg = T.get_config([f"--out_dir={tmp_path}"])
    path = T.write_curves(cfg, results)
    image = np.asarray(Image.open(path).convert("RGB"))
    assert path == tmp_path / "curves.png"
    assert image.shape == (T.CURVES_SIZE[1], T.CURVES_SIZE[0], 3)
    assert image.std() > 10 and len(np.unique(image.reshape(-1, 3), axis=0)) > 8   # not blank
    for colour in ((31, 119, 180), (214, 39, 40), (44, 160, 44)):        # SFT loss, reward, success
        assert (image == colour).all(axis=2).sum() > 50, colour
