"""The first thing to run on a GPU: the 5B path at full shapes with random weights (no download).

    python tests/scripts/gpu_check.py [--json gpu_check.json]     # one GPU, under 8 minutes
    python tests/scripts/gpu_check.py --small                     # the same code, tiny shapes, CPU

Wan2.2-TI2V-5B shapes (model.py "5b" presets), 480x480x49 videos = 2,925 tokens, fp32 weights under
bf16 autocast with the official fp32 islands (train.py's single-GPU path). It measures:
  dit_forward      one no-grad DiT forward (a rollout step)
  dit_fwd_bwd      forward + backward with gradient checkpointing (an update step); model FLOPs = 3
  x
                   forward (the recomputed forward is not counted, the usual MFU convention)
  vae_decode       one 49-frame VAE decode; text_encode: the umT5 encoder on one prompt
  rl_*             one complete RL iteration of the `5b` preset at a reduced group (--puzzles x
  --group):
                   rollout with the Early-Step-Focus SDE window, decode, reward, update (random
                   non-zero advantages: random weights earn reward 0, and the update's full cost is
                   what is timed)
  parity           the first update's importance ratio exp(logp_update - logp_rollout) per denoising
  step:
                   mean, max |ratio - 1| and clip fraction. On-policy it must be 1: the ratio then
                   only measures how differently the rollout and the update computed the same
                   velocity.
Each timed row stands next to train.py --dry_run's prediction for the same setting (time at the dry
run's assumed MFU, memory from its memory model) and the measured / predicted ratio. Prints one
table, writes it as JSON. --small runs all of it on CPU at the tiny shapes
(tests/test_gpu_check.py), where TFLOP/s and MFU are printed but mean nothing.
"""

import argparse
import contextlib
import io
import json
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import model as M  # noqa: E402
from bench_memory import reset_peak, rss  # noqa: E402

# dense bf16 peak per GPU, TFLOP/s (vendor datasheets, without sparsity)
BF16_PEAK = {
    "H200": 989.0,
    "H100": 989.0,
    "H800": 989.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "B200": 2250.0,
    "GH200": 989.0,
}


def train_py_api():
    """Every use of train.py's internals, in one place: adapt this function alone when train.py's
    internal API changes. -> namespace of config(), prepare(), predictions(), rl_iteration()."""
    import train as T

    def config(small, puzzles, group, lora):
        if small:
            base = [
                "--config",
                "tiny",
                "--num_steps=4",
                "--sde_steps=2",
                "--frames=9",
                "--height=64",
                "--width=64",
            ] + (["--lora_rank=4"] if lora else [])
        else:
            base = ["--config", "5b_lora" if lora else "5b"]
        cfg = T.get_config(
            base
            + [
                f"--puzzles_per_step={puzzles}",
                f"--group_size={group}",
                f"--groups_per_update={puzzles}",
                "--micro_batch=1",
                "--gif_every=0",
                "--n_gpus=1",
                "--grad_checkpointing",
                "--beta=0.0",
            ]
        )
        return cfg, T.latent_shape(cfg)

    def prepare(dit, cfg):
        """LoRA adapters on the random DiT when the preset trains them."""
        if cfg.lora_rank:
            T.add_lora(dit, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
        return dit

    def predictions(cfg):
        with contextlib.redirect_stdout(io.StringIO()):
            dry = T.dry_run(cfg)
        return dry

    def rl_iteration(cfg, dit, vae, text, device, seed=0):
        """rollout -> decode -> reward -> random advantages -> update, with bf16 autocast exactly
        where train.py puts it (the DiT calls; model.autocast is a no-op on CPU, so it is switched
        on here). -> (phase times, the first update's per-call stats, K, rewards)."""
        opt = T.make_optimizer(cfg, dit, "rl")
        run = T.Run(cfg, dit, dit, vae, text, device)
        fp32_autocast, M.autocast = M.autocast, bf16
        try:
            rollout = T.rl_rollout(run, 0)
            adv = torch.randn(len(rollout.mine), generator=torch.Generator().manual_seed(seed))
            t0 = time.perf_counter()
            updates = T.rl_update(run, rollout, adv.tolist(), opt)
            sync(device)
            timing = rollout.timing | {"update": time.perf_counter() - t0}
        finally:
            M.autocast = fp32_autocast
        K = rollout.traj.latents.shape[1]
        return timing, updates[0]["stats"], K, [s.reward for s in rollout.scores]

    return SimpleNamespace(
        config=config, prepare=prepare, predictions=predictions, rl_iteration=rl_iteration
    )


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def peak_memory(device, out):
    """out['peak'] = peak bytes allocated (CUDA) or resident (CPU) above the start, during the
    block; out['seconds'] = its wall time."""
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss()[0]
        reset_peak()
    t0 = time.perf_counter()
    yield
    sync(device)
    out["seconds"] = time.perf_counter() - t0
    if device.type == "cuda":
        out["peak"] = torch.cuda.max_memory_allocated() - base
        out["peak_total"] = torch.cuda.max_memory_allocated()
    else:
        out["peak"] = rss()[1] - base
        out["peak_total"] = rss()[1]


def build(cfg, device):
    """Random models at cfg's shapes, built straight on the device (fast init, no host copy). The
    DiT head is zero-initialised officially (v = 0, no gradient below it): give it small random
    weights."""
    with torch.device(device):
        torch.manual_seed(0)
        dit = M.WanModel(M.DIT_CONFIGS[cfg.model])
        torch.nn.init.normal_(dit.head.head.weight, std=0.02)
        vae = M.WanVAE(M.VAE_CONFIGS[cfg.model]).eval().requires_grad_(False)
        t5 = M.T5Encoder(M.T5_CONFIGS[cfg.model]).eval().requires_grad_(False)
    t5 = t5.to(torch.bfloat16) if device.type == "cuda" else t5  # umT5 ships in bf16
    dit.gradient_checkpointing = cfg.grad_checkpointing
    return dit, vae, M.TextEncoder(t5, dit.cfg.text_len)


def bf16(device):
    """bf16 autocast on either device: train.py enables it on CUDA, the CPU run asks for it here."""
    return torch.autocast(device.type, dtype=torch.bfloat16)


def time_dit(dit, lat, device, grad, out):
    """One DiT forward (no grad) or forward + backward (checkpointed) on a (1, *lat) latent, timed
    after a warm-up call."""
    x = torch.randn(1, *lat, device=device)
    t = torch.full((1,), 700.0, device=device)
    ctx = [torch.randn(dit.cfg.text_len, dit.cfg.text_dim, device=device)]

    def call():
        with bf16(device), torch.set_grad_enabled(grad):
            v = dit(x, t, ctx)
            if grad:
                v.square().mean().backward()

    call()
    dit.zero_grad(set_to_none=True)
    with peak_memory(device, out):
        call()
    dit.zero_grad(set_to_none=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="tiny shapes on CPU (the test)")
    ap.add_argument("--puzzles", type=int, default=1)
    ap.add_argument("--group", type=int, default=2, help="rollouts per puzzle in the RL iteration")
    ap.add_argument(
        "--peak_tflops", type=float, default=0.0, help="bf16 peak; 0 = from the GPU's name"
    )
    ap.add_argument(
        "--lora",
        action="store_true",
        help="the 5b_lora preset: r32 adapters, fits an 80 GB GPU (the full fine-tuning "
        "default needs ~120 GB: the AdamW step of the RL iteration)",
    )
    ap.add_argument("--json", default="gpu_check.json")
    args = ap.parse_args(argv)
    device = torch.device("cpu" if args.small or not torch.cuda.is_available() else "cuda")
    api = train_py_api()
    cfg, lat = api.config(args.small, args.puzzles, args.group, args.lora)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or next((v for k, v in BF16_PEAK.items() if k in name), cfg.gpu_tflops)
    dry = api.predictions(cfg)
    mem = dry["memory"]
    rows, t_all = {}, time.perf_counter()
    dit, vae, text = build(cfg, device)
    api.prepare(dit, cfg)
    n_dit = sum(p.numel() for p in dit.parameters())
    f = dry["f_dit"]
    assumed = cfg.gpu_tflops * 1e12 * cfg.mfu  # the dry run's FLOP/s
    # the DiT alone: fp32 weights; forward + backward adds fp32 gradients, autocast's bf16 copies of
    # the trained weights and the checkpointed activations (memory_model's one-GPU terms)
    # model FLOPs of forward + backward: 3 forwards, 2 with LoRA (no gradients of frozen weights)
    f_fb = f * (2 if cfg.lora_rank else 3)
    for key, grad, flops, pred_mem in (
        ("dit_forward", False, f, 0.0),
        ("dit_fwd_bwd", True, f_fb, mem["gradients"] + 2 * dry["n_train"] + mem["activations"]),
    ):
        rows[key] = dict(
            flops=flops,
            pred_seconds=(flops + f * (grad and cfg.grad_checkpointing)) / assumed,
            pred_peak=pred_mem or None,
        )
        time_dit(dit, lat, device, grad, rows[key])
    z = torch.randn(1, *lat, device=device)
    rows["vae_decode"] = dict(
        flops=dry["f_dec"],
        pred_seconds=dry["f_dec"] / assumed,
        pred_peak=mem["per_block"]["vae_decode_one"],
    )
    with torch.no_grad(), peak_memory(device, rows["vae_decode"]):
        vae.decode(z)
    rows["text_encode"] = dict(pred_peak=None)
    with peak_memory(device, rows["text_encode"]):
        text.encode(["Draw the path of the agent through the maze to the green goal."])
    with peak_memory(device, rows.setdefault("rl_iteration", {})):
        timing, stats, K, rewards = api.rl_iteration(cfg, dit, vae, text, device)
    videos = cfg.puzzles_per_step * cfg.group_size
    pred = dict(
        rollout=videos * cfg.num_steps * f / assumed,
        decode=videos * dry["f_dec"] / assumed,
        update=dry["rows"][0][3] / assumed,
    )
    for k, v in timing.items():
        rows[f"rl_{k}"] = dict(seconds=v, pred_seconds=pred.get(k))
    rows["rl_iteration"]["pred_seconds"] = dry["rows"][0][4]
    parity = [
        dict(
            step=k,
            ratio_mean=float(sum(s["ratio_mean"] for s in stats[k::K]) / len(stats[k::K])),
            max_abs_ratio_minus_1=max(s["ratio_max_dev"] for s in stats[k::K]),
            clipfrac=float(sum(s["clipfrac"] for s in stats[k::K]) / len(stats[k::K])),
        )
        for k in range(K)
    ]
    result = dict(
        device=name,
        small=args.small,
        peak_tflops=peak,
        dry_run_mfu=cfg.mfu,
        shapes=dict(latent=list(lat), tokens=dry["tokens"], dit_params=n_dit),
        rows=rows,
        parity=parity,
        clip_range=cfg.clip_range,
        rewards=rewards,
        total_seconds=time.perf_counter() - t_all,
    )
    for r in rows.values():
        if "flops" in r:
            r["tflops_per_s"] = r["flops"] / r["seconds"] / 1e12
            r["mfu"] = r["tflops_per_s"] / peak
    print_table(result)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.json}")
    return result


def print_table(res):
    GB = 1024**3
    shapes, mode = res["shapes"], "--small, tiny shapes" if res["small"] else "5B shapes"
    print(
        f"gpu_check on {res['device']} ({mode}): latent {tuple(shapes['latent'])}, "
        f"{shapes['tokens']:,} tokens, DiT {shapes['dit_params']:,} parameters, "
        f"bf16 peak {res['peak_tflops']:.0f} TFLOP/s, dry run assumes MFU {res['dry_run_mfu']:.0%}"
    )
    print(
        f"{'':14s} {'time s':>9s} {'dry run s':>9s} {'ratio':>6s} {'TFLOP/s':>8s} {'MFU':>6s} "
        f"{'peak GiB':>8s} {'dryrun GiB':>10s} {'ratio':>6s}"
    )
    for key, r in res["rows"].items():
        cells = [f"{key:14s}", f"{r['seconds']:9.3g}"]
        ps, pm = r.get("pred_seconds"), r.get("pred_peak")
        cells += [f"{ps:9.3g}", f"{r['seconds'] / ps:6.3g}"] if ps else [f"{'':9s}", f"{'':6s}"]
        cells += (
            [f"{r['tflops_per_s']:8.3g}", f"{r['mfu']:6.1%}"]
            if "flops" in r
            else [f"{'':8s}", f"{'':6s}"]
        )
        cells += [f"{r['peak'] / GB:8.3g}"] if "peak" in r else [f"{'':8s}"]
        cells += [f"{pm / GB:10.3g}", f"{r['peak'] / pm:6.3g}"] if pm and "peak" in r else []
        print(" ".join(cells))
    print(f"on-policy parity of the first update (clip range {res['clip_range']:g}):")
    for p in res["parity"]:
        print(
            f"  step {p['step']:2d}: ratio mean {p['ratio_mean']:.8f}, max |ratio - 1| "
            f"{p['max_abs_ratio_minus_1']:.3e}, clip fraction {p['clipfrac']:.3f}"
        )
    print(f"total {res['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
