"""Cold start: `geoconcept predict photo.jpg --clip-pretrained weights.safetensors` as a new
process against GeoCLIP's own cold start + predict, each in a fresh process, same photo.

No pretrained CLIP weights are obtainable offline, so ours reads a random ViT-L/14 written to
a local safetensors file once (the real path: weights from a file), while GeoCLIP builds its
CLIP randomly and reads no weights at all, which flatters the peer. Both use GeoCLIP's real
MLP, location encoder and 100K gallery (ours from its cache, filled before timing).

    python benchmarks/cold_start.py [--repeats 3] [--photo PATH] [--weights FILE]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import photos

PEER = """
import sys
from geoclip import GeoCLIP
model = GeoCLIP(clip_pretrained=False)
print(model.predict(sys.argv[1], top_k=5))
"""


def random_vit_l14(path: Path) -> None:
    """A random ViT-L/14 in open_clip's layout, written once."""
    import open_clip
    from safetensors.torch import save_file

    model = open_clip.create_model("ViT-L-14")
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(path)


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--photo")
    ap.add_argument("--weights", default="/tmp/geoconcept-bench-vit-l-14.safetensors")
    args = ap.parse_args()
    photo = str(Path(args.photo) if args.photo else photos(1)[0])
    weights = Path(args.weights)
    if not weights.is_file():
        print(f"writing a random ViT-L/14 to {weights} (once)")
        random_vit_l14(weights)
    ours = [sys.executable, "-m", "geoconcept_cli", "predict", photo, "--clip-pretrained",
            str(weights)]  # fmt: skip
    peer = [sys.executable, "-c", PEER, photo]
    timed(ours)  # fills the gallery cache and the page cache: both sides then read warm files
    timed(peer)
    t_ours = statistics.median(timed(ours) for _ in range(args.repeats))
    t_peer = statistics.median(timed(peer) for _ in range(args.repeats))
    print(f"photo: {photo}")
    print(f"geoconcept predict, new process : {t_ours:6.2f} s (median of {args.repeats})")
    print(f"GeoCLIP cold start + predict    : {t_peer:6.2f} s (median of {args.repeats})")
    print(f"speed-up : {t_peer / t_ours:.2f}x  (target >= 5x)")


if __name__ == "__main__":
    main()
