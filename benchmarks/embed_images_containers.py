"""embed-images from archives (zip, tar + manifest, WebDataset shards, msgpack shards) against
the same photos as files in a folder, measured in one run. Target: >= 0.95x.

The default model is the tests' tiny CLIP, so decoding and reading dominate: the strictest
case for the archive readers (with ViT-L/14 on a CPU the forward hides them entirely).

    python benchmarks/embed_images_containers.py [--n 1000] [--model ViT-L-14] [--repeats 7]
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import tempfile
import warnings
import zipfile
from functools import partial
from pathlib import Path

import msgpack
import pandas as pd
from common import ROOT, default_device, median_times, photos


def pack(files: list[Path], root: Path) -> dict[str, tuple[list[Path], list[Path]]]:
    """The same photos as a folder, a zip, a tar, msgpack and WebDataset shards:
    {kind: (sources, images)} for ``read_sources``."""
    names = [f"{i:06d}.jpg" for i in range(len(files))]
    data = [f.read_bytes() for f in files]
    (root / "folder").mkdir()
    for name, raw in zip(names, data, strict=True):
        (root / "folder" / name).write_bytes(raw)
    manifest = root / "manifest.csv"
    pd.DataFrame({"id": names, "lat": 10.0, "lon": 20.0}).to_csv(manifest, index=False)
    with zipfile.ZipFile(root / "photos.zip", "w") as zf:  # JPEGs are stored, as zips do
        for name, raw in zip(names, data, strict=True):
            zf.writestr(name, raw, zipfile.ZIP_STORED)
    with tarfile.open(root / "photos.tar", "w") as tf:
        for name, raw in zip(names, data, strict=True):
            _add(tf, name, raw)
    shards, msgs = [], []
    for s in range(0, len(names), 256):
        shards.append(root / f"wds-{s:06d}.tar")
        msgs.append(root / f"shard_{s:06d}.msg")
        with tarfile.open(shards[-1], "w") as tf, open(msgs[-1], "wb") as f:
            for name, raw in zip(names[s : s + 256], data[s : s + 256], strict=True):
                _add(tf, name, raw)
                _add(tf, name.replace(".jpg", ".json"), json.dumps({"lat": 10, "lon": 20}).encode())
                f.write(msgpack.packb({"id": name, "image": raw}))
    return {
        "folder": ([manifest], [root / "folder"]),
        "zip": ([manifest], [root / "photos.zip"]),
        "tar": ([manifest], [root / "photos.tar"]),
        "webdataset": (shards, []),
        "msgpack": ([manifest], msgs),
    }


def _add(tf: tarfile.TarFile, name: str, raw: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(raw)
    tf.addfile(info, io.BytesIO(raw))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="photos")
    ap.add_argument("--model", default=str(ROOT / "tests" / "data" / "tiny-clip-768.json"))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default=default_device())
    args = ap.parse_args()
    warnings.simplefilter("ignore")

    from geoconcept_cli.data.embedding import EmbedOptions, embed_shards
    from geoconcept_cli.data.features import feature_summary
    from geoconcept_cli.data.manifests import read_sources
    from geoconcept_cli.model.clip import load_clip

    clip = load_clip(args.model, "none", args.device)
    with tempfile.TemporaryDirectory() as tmp:
        kinds = pack(photos(args.n), Path(tmp))
        runs = iter(range(1_000_000))

        def run(kind: str) -> Path:
            out = Path(tmp) / f"out-{next(runs)}"
            m = read_sources(*kinds[kind])  # indexing the archive is part of the cost
            embed_shards(m, out, clip, EmbedOptions(args.batch_size, 4096, args.workers))
            return out

        for kind in kinds:  # warm-up, and a check that every photo is read
            embedded = len(feature_summary(run(kind))[1])
            if embedded != args.n:
                raise SystemExit(f"{kind}: only {embedded} of {args.n} photos embedded")
        times = median_times({kind: partial(run, kind) for kind in kinds}, args.repeats,
                             warmup=0)  # fmt: skip
    print(f"{Path(args.model).name}, device {args.device}, {args.n} photos, batch "
          f"{args.batch_size}, {args.workers} workers, median of {args.repeats}")  # fmt: skip
    for kind, t in times.items():
        ratio = times["folder"] / t
        print(
            f"{kind:10s}: {args.n / t:8.1f} images/s   {ratio:.2f}x the folder"
            + ("" if kind == "folder" else "  (target >= 0.95x)")
        )


if __name__ == "__main__":
    main()
