"""`serve --runtime onnx` against the torch server: warm POST /predict p50, and memory.

Three real servers (`geoconcept serve` subprocesses on free local ports), all pretrained
GeoCLIP's real head and 100K gallery with the same random ViT-L/14 (no CLIP weights are
obtainable offline): the torch server reads it from a safetensors file; the ONNX servers
(fp32, and INT8 with --runtime onnx-int8) from GeoCLIP's bundle of those weights
(common.geoclip_bundle, written once). The same photo is posted to each in turn, so all see
the same machine state; then each server's resident memory (VmRSS) and its peak (VmHWM) are
read from /proc.

    python benchmarks/onnx_serve.py [--requests 20] [--photo PATH] [--weights FILE]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import httpx
from common import (
    ONNX_BUNDLE,
    VIT_L14,
    free_port,
    geoclip_bundle,
    photos,
    random_vit_l14,
    start_server,
)


def memory_mb(pid: int) -> tuple[float, float]:
    """(resident, peak resident) MB of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status if ":" in line)
    rss, peak = (int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))
    return rss, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20, help="timed requests per server")
    ap.add_argument("--photo")
    ap.add_argument("--weights", type=Path, default=VIT_L14)
    ap.add_argument("--bundle", type=Path, default=ONNX_BUNDLE)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    photo = Path(args.photo) if args.photo else photos(1)[0]
    weights = random_vit_l14(args.weights)
    bundle = geoclip_bundle(weights, args.bundle)
    options = {
        "torch": ["--clip-pretrained", str(weights)],
        "onnx": ["--checkpoint", str(bundle), "--runtime", "onnx"],
        "onnx-int8": ["--checkpoint", str(bundle), "--runtime", "onnx-int8"],
    }
    servers, ports = {}, {}
    try:
        for name, opts in options.items():  # one at a time: loading competes for the cores
            ports[name] = free_port()
            servers[name] = start_server(opts, ports[name])
        files = {"image": (photo.name, photo.read_bytes(), "image/jpeg")}
        times: dict[str, list[float]] = {name: [] for name in options}
        with httpx.Client() as http:
            for i in range(args.requests + 1):  # the first round warms up
                for name in options:
                    t = time.perf_counter()
                    http.post(f"http://127.0.0.1:{ports[name]}/predict", files=files,
                              timeout=600).raise_for_status()  # fmt: skip
                    if i:
                        times[name].append(time.perf_counter() - t)
        memory = {name: memory_mb(server.pid) for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.terminate()
            server.wait(timeout=60)
    p50 = {name: statistics.median(t) for name, t in times.items()}
    print(f"photo: {photo}  ({args.requests} requests each, interleaved)")
    for name in options:
        rss, peak = memory[name]
        print(f"{name:9s} POST /predict p50 {p50[name] * 1000:7.1f} ms   resident {rss:7.0f} MB "
              f"(peak {peak:7.0f} MB)")  # fmt: skip
    for name in ("onnx", "onnx-int8"):
        print(f"{name} / torch p50: {p50[name] / p50['torch']:.3f}x  (target <= 0.8x)")


if __name__ == "__main__":
    main()
