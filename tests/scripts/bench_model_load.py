"""Peak host memory of load_pretrained on a synthetic sharded checkpoint of about 1 GB.

python tests/scripts/bench_model_load.py [--gb 1.0] [--shards 4]

Writes a native-layout folder (config.json, diffusion_pytorch_model-0000i-of-0000n.safetensors +
index, tiny random Wan2.2_VAE.pth / umT5 .pth / tokenizer.json) with a DiT sized to ~GB of fp32,
then loads it in a fresh subprocess per case and prints the peak resident memory (VmHWM from
/proc/self/status) as a ratio to the DiT file size, both raw and above the process's baseline
after `import torch, model`. Target: at most 1.15 (one copy of the weights plus little).
Cases: fp32 -> fp32 (tensors assigned straight from the memory map; the pages count as resident
once touched, so the script also touches every weight), fp32 -> bf16 (cast file by file).
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import sys, time, torch
sys.path.insert(0, {root!r})
import model
def status(key):
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024
base = status("VmRSS")
t0 = time.perf_counter()
dit, vae, text = model.load_pretrained({ckpt!r}, dtype=getattr(torch, {dtype!r}), vae_cfg=model.VAE_CONFIGS["tiny"],
                                       t5_cfg=model.T5_CONFIGS["tiny"])
load_s = time.perf_counter() - t0
after_load = status("VmHWM")
# touch every page of every weight
checksum = sum(p.float().sum().item() for p in dit.parameters())
print(base, after_load, status("VmHWM"), load_s, checksum)
"""


def write_checkpoint(folder, gb, shards):
    import torch
    from safetensors.torch import save_file
    import model

    # dim 1536, 6 layers: ~38M params per block + embeddings, scaled by the layer count
    cfg = model.DiTConfig(dim=1536, ffn_dim=6144, num_heads=12, num_layers=1)
    with torch.device("meta"):
        one = sum(p.numel() for p in model.WanModel(cfg).parameters())
        per_block = sum(p.numel() for p in model.WanModel(cfg).blocks[0].parameters())
    cfg.num_layers = max(1, round((gb * 2**30 / 4 - (one - per_block)) / per_block))
    m = model.WanModel(cfg)
    state = {k: v.contiguous() for k, v in m.state_dict().items()}
    keys, weight_map = list(state), {}
    for i in range(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k] for k in keys[i * len(keys) // shards : (i + 1) * len(keys) // shards]}
        save_file(part, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": weight_map})
    )
    (folder / "config.json").write_text(
        json.dumps({"_class_name": "WanModel", **{k: v for k, v in cfg.__dict__.items()}})
    )
    torch.save(model.WanVAE(model.VAE_CONFIGS["tiny"]).state_dict(), folder / model.NATIVE_VAE)
    torch.save(model.T5Encoder(model.T5_CONFIGS["tiny"]).state_dict(), folder / model.NATIVE_T5)
    from tokenizers import Tokenizer, models

    (folder / "google" / "umt5-xxl").mkdir(parents=True)
    Tokenizer(models.WordLevel({"<pad>": 0, "</s>": 1, "<unk>": 2}, unk_token="<unk>")).save(
        str(folder / model.NATIVE_TOKENIZER)
    )
    size = sum(p.stat().st_size for p in folder.glob("diffusion_pytorch_model-*.safetensors"))
    return cfg, size


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--shards", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg, size = write_checkpoint(Path(tmp), args.gb, args.shards)
        print(
            f"DiT checkpoint: {cfg.num_layers} layers of dim {cfg.dim}, {args.shards} shards, "
            f"{size / 2 ** 30:.3f} GiB fp32"
        )
        for dtype in ("float32", "bfloat16"):
            out = subprocess.run(
                [sys.executable, "-c", CHILD.format(root=str(ROOT), ckpt=tmp, dtype=dtype)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            base, after_load, peak, load_s = int(out[0]), int(out[1]), int(out[2]), float(out[3])
            print(
                f"fp32 -> {dtype:8s}: load {load_s:5.2f} s | "
                f"peak RSS after load {after_load / size:.3f} x file "
                f"({(after_load - base) / size:.3f} above baseline) | after touching every weight "
                f"{peak / size:.3f} x ({(peak - base) / size:.3f} above baseline {base / 2 ** 20:.0f} MiB)"
            )


if __name__ == "__main__":
    main()
