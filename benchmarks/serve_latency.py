"""`geoconcept serve` over HTTP against the same explain in process, and 8 clients against 1.

A real server (a `geoconcept serve` subprocess on a free local port) with a random ViT-L/14
(no CLIP weights are obtainable offline), GeoCLIP's real head and 100K gallery. The peer is
`Explainer.explain` of the same photo in this process, warm, alternated with the requests
(each side idles while the other works).

    python benchmarks/serve_latency.py [--requests 20] [--photo PATH] [--checkpoint RUN]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from common import default_device, free_port, photos, start_server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20, help="timed requests per measure")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--photo")
    ap.add_argument("--checkpoint")
    ap.add_argument("--clip-pretrained", default="none")
    ap.add_argument("--device", default=default_device())
    args = ap.parse_args()
    photo = Path(args.photo) if args.photo else photos(1)[0]
    data = photo.read_bytes()
    warnings.simplefilter("ignore")
    print(f"photo: {photo}  device: {args.device}")

    port = free_port()
    options = ["--clip-pretrained", args.clip_pretrained, "--device", args.device]
    if args.checkpoint:
        options += ["--checkpoint", args.checkpoint]
    server = start_server(options, port)  # loads (and caches) everything before we time anything
    try:
        from geoconcept_cli import ModelSpec, load_explainer

        explainer = load_explainer(ModelSpec(checkpoint=args.checkpoint, device=args.device,
                                             clip_pretrained=args.clip_pretrained))  # fmt: skip
        url = f"http://127.0.0.1:{port}/explain"
        files = {"image": (photo.name, data, "image/jpeg")}

        def request(http: httpx.Client) -> float:
            t = time.perf_counter()
            http.post(url, files=files, timeout=600).raise_for_status()
            return time.perf_counter() - t

        def in_process() -> float:
            t = time.perf_counter()
            explainer.explain(photo)
            return time.perf_counter() - t

        local, remote = [], []
        with httpx.Client() as http:
            in_process(), request(http)  # warm-up
            for _ in range(args.requests):  # alternated: both see the same machine state
                local.append(in_process())
                remote.append(request(http))

        def client_run(n: int) -> None:
            with httpx.Client() as http:
                for _ in range(n):
                    request(http)

        per_client = max(1, args.requests // 4)
        total = per_client * args.clients
        t = time.perf_counter()
        client_run(total)
        serial = total / (time.perf_counter() - t)
        t = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(client_run, [per_client] * args.clients))
        concurrent = total / (time.perf_counter() - t)
    finally:
        server.terminate()
        server.wait(timeout=60)

    p50_local, p50_http = statistics.median(local), statistics.median(remote)
    print(f"in-process explain p50 : {p50_local * 1000:8.1f} ms ({args.requests} runs)")
    print(f"POST /explain p50      : {p50_http * 1000:8.1f} ms ({args.requests} requests)")
    print(f"serial throughput      : {serial:8.2f} requests/s ({total} requests, 1 client)")
    print(f"concurrent throughput  : {concurrent:8.2f} requests/s ({total} requests, "
          f"{args.clients} clients)")  # fmt: skip
    print(f"ratio HTTP / in-process p50 : {p50_http / p50_local:.3f}x  (target <= 1.15x)")
    print(
        f"ratio {args.clients} clients / serial    : {concurrent / serial:.3f}x  (target >= 1.0x)"
    )


if __name__ == "__main__":
    main()
