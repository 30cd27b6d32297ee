"""Shared helpers of the benchmarks: timing, photo discovery, device choice, a random
ViT-L/14 and GeoCLIP's ONNX bundle of it, and `geoconcept serve` subprocesses."""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
IM2GPS = ROOT.parent / "shared" / "data" / "im2gps3k"


def median_time(fn, repeats: int, warmup: int = 1, sync: bool = False) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    return median_times({"fn": fn}, repeats, warmup, sync)["fn"]


def median_times(fns: dict, repeats: int, warmup: int = 1, sync: bool = False) -> dict:
    """Median wall time of each ``fns[name]()``, the runs interleaved (one of each in turn), so
    that a slow spell of the machine falls on all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if sync:
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if sync:
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(t) for name, t in times.items()}


def photos(
    n: int, folder: Path = IM2GPS / "images", tmp: Path = Path("/tmp/geoconcept-bench-photos")
) -> list[Path]:
    """``n`` photos of ``folder`` (Im2GPS3k's by default), its first ones repeated if it holds
    fewer (as on a GPU machine that gets part of them), or generated 340x256 JPEGs where the
    folder is absent."""
    if folder.is_dir():
        files = sorted(folder.resolve().iterdir())
        return [files[i % len(files)] for i in range(n)]
    import numpy as np
    from PIL import Image

    tmp.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        path = tmp / f"{i:05d}.jpg"
        if not path.exists():
            Image.fromarray(rng.integers(0, 255, (256, 340, 3), dtype=np.uint8)).save(path)
        out.append(path)
    return out


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


VIT_L14 = Path("/tmp/geoconcept-bench-vit-l-14.safetensors")
ONNX_BUNDLE = Path("/tmp/geoconcept-bench-onnx")


def random_vit_l14(path: Path = VIT_L14) -> Path:
    """A random ViT-L/14 in open_clip's layout (no CLIP weights are obtainable offline),
    written once."""
    if not path.is_file():
        import open_clip
        from safetensors.torch import save_file

        print(f"writing a random ViT-L/14 to {path} (once)")
        model = open_clip.create_model("ViT-L-14")
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        tmp.replace(path)
    return path


def geoclip_bundle(weights: Path, bundle: Path = ONNX_BUNDLE) -> Path:
    """Pretrained GeoCLIP's ONNX bundle (fp32 and INT8) with the CLIP ``weights``, written once
    (again where an older export lacks the graphs' explanation outputs)."""
    config = bundle / "onnx" / "runtime.json"
    if not config.is_file() or '"outputs"' not in config.read_text() or not (
            bundle / "onnx" / "model.int8.onnx").is_file():  # fmt: skip
        print(f"exporting GeoCLIP with {weights} to {bundle} (once)")
        subprocess.run([sys.executable, "-m", "geoconcept_cli", "export", "--onnx", "--quantize",
                        "int8", "--out", str(bundle), "--clip-pretrained", str(weights)],
                       check=True)  # fmt: skip
    return bundle


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(options: list[str], port: int) -> subprocess.Popen:
    """`geoconcept serve --port PORT OPTIONS` as a subprocess, returned once /healthz answers."""
    import httpx

    cmd = [sys.executable, "-m", "geoconcept_cli", "serve", "--port", str(port), *options]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 900
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).raise_for_status()
            return proc
        except httpx.TransportError:
            if proc.poll() is not None:
                sys.exit(f"serve exited: {proc.stderr.read() if proc.stderr else ''}")
            if time.monotonic() > deadline:
                sys.exit("serve did not come up in 15 minutes")
            time.sleep(0.5)
