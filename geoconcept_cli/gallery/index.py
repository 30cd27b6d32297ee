"""Galleries of millions of points: compact cached embeddings and a faiss index of places.

From ``INDEX_MIN_ROWS`` rows an exact product over the whole gallery per photo is too slow on
a CPU (1M x 512 float32 is 2 GB to read), and a float32 copy of 5M rows does not fit 8 GB. So
the gallery is encoded in chunks straight into a float16 safetensors file that is memory-mapped,
never loaded whole, and its distinct places go into a faiss index: a projection on the
gallery's ``PROJECTED_DIM`` principal directions (uncentred, so inner products are kept, not
shifted), stored with 8-bit scalar quantisation (128 bytes a place). A query scans that, and its
``CANDIDATES`` best are re-scored exactly from the float16 embeddings. (An IVF index probes only
some lists: photos whose similarities are flat, as with random features, lost a quarter of their
top-1s at 200K points.) Both files are cache entries under the gallery's key (coordinates +
encoder weights) and count in the cache's LRU bound.

The softmax over all gallery rows needs every logit, which is what the index avoids computing:
the probabilities of an indexed gallery are normalised over the retrieved candidates (each place
weighted by its copies, as the exact softmax weights it), and the JSON says so.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

from ..errors import GeoconceptError
from ..io.artifacts import atomic_path, default_cache_dir
from .store import (
    cache_limit_bytes,
    distinct_places,
    encode_locations,
    gallery_key,
    prune_gallery_cache,
)

if TYPE_CHECKING:
    import faiss

    from ..model.concept_head import RetrievalHead

INDEX_MIN_ROWS = 200_000  # from here on the gallery is indexed; GeoCLIP's 100K stays exact
PROJECTED_DIM = 128  # principal directions the index scans in
CANDIDATES = 1024  # places the index returns per photo, re-scored exactly (recall: README)
SAMPLE = 20_000  # places the projection and the quantiser are fitted on
CHUNK = 65_536  # rows encoded, quantised or added per step: bounded memory
INDEX_KIND = f"pca{PROJECTED_DIM}-sq8"  # in the file name: another index, another cache entry
EMB_FORMAT = "geoconcept-gallery-f16/1"


def is_large(gps: torch.Tensor) -> bool:
    """Whether a gallery of these coordinates is served by an index rather than exactly."""
    return len(gps) >= INDEX_MIN_ROWS


def refuse_large(gps: torch.Tensor, what: str) -> None:
    """One-line refusal of a command that scores photos against every row of a large gallery."""
    if is_large(gps):
        raise GeoconceptError(
            f"{what} scores every gallery point; this gallery has {len(gps):,} (from "
            f"{INDEX_MIN_ROWS:,} a gallery is indexed, which predict and explain use): "
            "use a smaller --gallery"
        )


class GalleryIndex:
    """A faiss index of a gallery's distinct places, whose candidates are re-scored exactly."""

    def __init__(self, index: faiss.Index, emb: npt.NDArray[np.float16],
                 places: torch.Tensor, copies: torch.Tensor):  # fmt: skip
        self.index = index
        self.emb = emb  # (N, D) float16, memory-mapped
        self.places = places  # gallery rows, one per place, ascending
        self.copies = copies  # rows holding each place
        self.log_copies = copies.double().log()

    @torch.no_grad()
    def topk(self, img: torch.Tensor, k: int, scale: float, temperature: float,
             allowed: torch.Tensor | None = None, prior: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """The k best places of unit image embeddings (B, D) as (probabilities, gallery rows),
        each (B, k); probabilities are softmaxed over the retrieved candidates only. With
        ``allowed`` (N,) gallery rows, only places among them are searched (a faiss ID
        selector: the scan skips the others). ``prior`` (N,) log-weights are added to the
        retrieved candidates' tempered logits (the scan itself ranks by the photo alone)."""
        inside = None if allowed is None else allowed.cpu()[self.places].numpy()
        k = max(1, min(k, len(self.places) if inside is None else int(inside.sum())))
        q = np.ascontiguousarray(img.detach().float().cpu().numpy())
        _, found = self.index.search(q, max(CANDIDATES, k), **self._selecting(inside))
        probs, rows = [], []
        for qi, hits in zip(img.detach().float().cpu(), found, strict=True):
            # ascending places are ascending rows: the memory map is read in order
            cand = torch.from_numpy(np.sort(hits[hits >= 0]))
            place_rows = self.places[cand]
            emb = torch.from_numpy(self.emb[place_rows.numpy()].astype(np.float32))
            z = (scale * (emb @ qi)).double() / temperature
            if prior is not None:
                z = z + prior.cpu()[place_rows].double()
            lse = torch.logsumexp(z + self.log_copies[cand], dim=0)
            top = z.topk(min(k, len(z)))
            probs.append((top.values - lse).exp().float())
            rows.append(place_rows[top.indices])
        return torch.stack(probs), torch.stack(rows)

    @staticmethod
    def _selecting(inside: npt.NDArray[np.bool_] | None) -> dict[str, Any]:
        """faiss search parameters that scan only the ``inside`` places (all for None)."""
        if inside is None:
            return {}
        import faiss

        bits = np.packbits(inside, bitorder="little")
        selector = faiss.IDSelectorBitmap(len(inside), faiss.swig_ptr(bits))
        inner = faiss.SearchParameters()
        inner.sel = selector
        params = faiss.SearchParametersPreTransform()
        params.index_params = inner
        # faiss holds raw pointers to the bits, the selector and the inner parameters
        params.__dict__["keep"] = (bits, selector, inner)
        return {"params": params}

    def note(self) -> str:
        """What an indexed gallery's probabilities are normalised over."""
        n = min(CANDIDATES, len(self.places))
        return (f"the {n} places the index retrieved, of {len(self.places):,}; not the "
                "whole gallery")  # fmt: skip


def indexed_gallery(
    gps: torch.Tensor,
    head: RetrievalHead,
    cache_dir: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, GalleryIndex]:
    """The float16 embeddings (memory-mapped) and the index of a large gallery under ``head``,
    each computed once per (gallery, weights) pair and cached; ``progress(n, total)`` counts
    the rows encoded."""
    import faiss

    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    key = gallery_key(gps, head)
    emb_path = cache_dir / "gallery" / f"{key}.f16.safetensors"
    index_path = cache_dir / "gallery" / f"{key}.{INDEX_KIND}.faiss"
    limit = cache_limit_bytes()
    emb = _read_embeddings(emb_path, len(gps))
    if emb is None:
        with atomic_path(emb_path) as tmp:
            _write_embeddings(tmp, gps, head, progress)
        emb = _read_embeddings(emb_path, len(gps))
        assert emb is not None  # just written
        index_path.unlink(missing_ok=True)  # built from other embeddings
    places, copies = distinct_places(gps)
    index = None
    if index_path.is_file():
        with contextlib.suppress(Exception):  # unreadable: rebuilt below
            index = faiss.read_index(str(index_path))
    if index is None or index.ntotal != len(places) or index.d != emb.shape[1]:
        index = build_index(emb, places.numpy())
        with atomic_path(index_path) as tmp:
            faiss.write_index(index, str(tmp))
    for path in (emb_path, index_path):
        with contextlib.suppress(OSError):  # a read-only shared cache is still a cache
            os.utime(path)  # recently used: the last entry pruning removes
    prune_gallery_cache(emb_path.parent, limit, keep=emb_path)
    return torch.from_numpy(emb), GalleryIndex(index, emb, places, copies)


def build_index(emb: npt.NDArray[np.float16], places: npt.NDArray[np.int64]) -> faiss.Index:
    """The inner-product index of the ``places`` rows of ``emb`` (its ids are positions in
    ``places``): their projection on the top principal directions of a sample (uncentred),
    quantised to 8 bits a dimension."""
    import faiss

    d = emb.shape[1]
    rng = np.random.default_rng(0)
    sample = emb[np.sort(rng.choice(places, min(len(places), SAMPLE), replace=False))]
    sample = sample.astype(np.float32)
    dim = min(PROJECTED_DIM, *sample.shape)
    directions = np.linalg.svd(sample, full_matrices=False)[2][:dim]
    projection = faiss.LinearTransform(d, dim, False)
    faiss.copy_array_to_vector(np.ascontiguousarray(directions, dtype=np.float32).ravel(),
                               projection.A)  # fmt: skip
    projection.is_trained = True
    quantised = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit,
                                           faiss.METRIC_INNER_PRODUCT)  # fmt: skip
    index = faiss.IndexPreTransform(projection, quantised)
    index.train(sample)
    for s in range(0, len(places), CHUNK):
        index.add(emb[places[s : s + CHUNK]].astype(np.float32))
    return index


def _write_embeddings(path: Path, gps: torch.Tensor, head: RetrievalHead,
                      progress: Callable[[int, int], None] | None) -> None:  # fmt: skip
    """A safetensors file of float16 ``embeddings`` (N, D) and float32 ``gps`` (N, 2), filled
    chunk by chunk so that no float32 copy of the gallery is ever held."""
    first = encode_locations(gps[:CHUNK], head)
    n, d = len(gps), first.shape[1]
    emb_bytes = n * d * 2
    header: dict[str, Any] = {
        "__metadata__": {"format": EMB_FORMAT},
        "embeddings": {"dtype": "F16", "shape": [n, d], "data_offsets": [0, emb_bytes]},
        "gps": {"dtype": "F32", "shape": [n, 2], "data_offsets": [emb_bytes, emb_bytes + n * 8]},
    }
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    start = 8 + len(text)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        f.truncate(start + emb_bytes + n * 8)
    out = np.memmap(path, dtype=np.float16, mode="r+", offset=start, shape=(n, d))
    for s in range(0, n, CHUNK):
        chunk = first if s == 0 else encode_locations(gps[s : s + CHUNK], head)
        out[s : s + len(chunk)] = chunk.numpy().astype(np.float16)
        if progress:
            progress(len(chunk), n)
    out.flush()
    del out
    coords = np.memmap(path, dtype=np.float32, mode="r+", offset=start + emb_bytes, shape=(n, 2))
    coords[:] = gps.numpy()
    coords.flush()


def _read_embeddings(path: Path, rows: int) -> npt.NDArray[np.float16] | None:
    """The memory-mapped (rows, D) float16 embeddings of ``path``, or None where the file is
    missing, unreadable or of another shape (then it is recomputed)."""
    try:
        with path.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        entry = header["embeddings"]
        n, d = entry["shape"]
        begin, end = entry["data_offsets"]
        if entry["dtype"] != "F16" or n != rows or end - begin != n * d * 2:
            return None
        if path.stat().st_size < 8 + size + header["gps"]["data_offsets"][1]:
            return None  # truncated
        with path.open("rb") as f:
            # copy-on-write: torch gets a writable array, and nothing is ever written back
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        # a query reads ~1,000 scattered rows: no readahead of the pages around each (which
        # would cost time and, over many queries, map the whole file into the RSS)
        mapped.madvise(mmap.MADV_RANDOM)
        emb = np.frombuffer(mapped, dtype=np.float16, count=n * d, offset=8 + size + begin)
        return emb.reshape(n, d)
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None
