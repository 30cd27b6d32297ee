"""Concept-set ablations: geography-driven vs generic vocabulary vs random vs none.

The generic set is a list of everyday visual words written for this project (no place
knowledge in it); the random set has as many unit vectors as the geography-driven set, drawn
in CLIP's text space (same k, no meaning). ``run_grid`` trains one model per set on the same
features and evaluates them side by side with pretrained GeoCLIP.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..concepts.set import default_concepts_path, load_concepts
from ..data.features import check_features_clip
from ..io.artifacts import atomic_path, write_json
from ..model.checkpoints import run_checkpoint
from ..model.clip import ClipBackbone, load_clip
from ..model.clip_id import ClipId
from ..model.concept_embeddings import (
    DEFAULT_TEMPLATES,
    encode_concepts,
    save_concept_embeddings,
)
from ..model.spec import ModelSpec
from ..runtime.progress import Log, quiet
from ..training.config import TrainConfig
from ..training.loop import train
from .scores import evaluate, markdown_table

GENERIC_VOCABULARY = tuple(
    """
    person man woman child baby crowd face hand hair hat shirt dress jacket shoe bag glasses
    dog cat bird horse cow sheep fish insect butterfly duck chicken pig rabbit
    tree flower grass leaf plant bush branch wood log rock stone sand dirt mud water wave
    sky cloud sun moon star rain snow ice fog smoke fire light shadow night sunset sunrise
    car truck bus bicycle motorcycle train boat ship airplane wheel tire road street path
    bridge tunnel sign pole wire fence wall door window roof floor stairs ceiling column
    house building tower church castle shop store restaurant cafe office school hospital
    room kitchen bedroom bathroom table chair bed sofa desk shelf lamp clock mirror picture
    painting poster screen television computer phone camera book paper box bottle cup glass
    plate bowl spoon fork knife food bread fruit apple banana orange vegetable cake pizza
    ball toy game sport field court pool beach park garden playground yard lawn farm
    mountain hill valley river lake sea ocean island forest desert field meadow cliff cave
    city town village street market square crowd traffic parking lot highway sidewalk
    statue monument fountain bench umbrella flag banner balloon kite tent
    red orange yellow green blue purple pink brown black white gray gold silver
    big small tall short long round square bright dark old new wet dry hot cold
    metal plastic glass concrete brick tile fabric leather paper cardboard
    circle line stripe dot pattern texture shape letter number word text logo
    morning afternoon evening winter summer spring autumn
    indoor outdoor close-up landscape portrait aerial view panorama
    key lock rope chain hook nail tool hammer ladder bucket basket barrel pot pan jar can
    candle lantern torch battery cable pipe tube hose valve switch button handle knob
    carpet curtain pillow blanket towel sheet mat rug vase frame basket sculpture
    guitar piano drum violin microphone speaker headphones radio ticket coin card
    ring necklace watch bracelet earring belt scarf glove sock boot sandal
    tractor crane bulldozer van taxi scooter skateboard helicopter rocket
    puddle pond stream waterfall shore horizon dust crack hole corner edge
    """.split()
)


def generic_set() -> list[str]:
    """The generic vocabulary without repeats, in its written order."""
    return list(dict.fromkeys(GENERIC_VOCABULARY))


def make_concept_sets(
    concepts_parquet: str | Path, clip: ClipBackbone, out_dir: str | Path, seed: int = 0
) -> dict[str, Path | None]:
    """Write the basis files of every set; returns {name: embeddings path or None}."""
    out_dir = Path(out_dir)
    geo = load_concepts(concepts_parquet)["concept"].tolist()
    generic = generic_set()
    base = {**clip.identity.as_meta(), "templates": list(DEFAULT_TEMPLATES)}
    gen = torch.Generator().manual_seed(seed)
    sets = {
        "geography": (geo, encode_concepts(geo, clip)),
        "generic": (generic, encode_concepts(generic, clip)),
        "random": ([f"random {i}" for i in range(len(geo))],
                   F.normalize(torch.randn(len(geo), clip.embed_dim, generator=gen), dim=1)),
    }  # fmt: skip
    paths: dict[str, Path | None] = {}
    for name, (names, emb) in sets.items():
        meta = {**base, "concepts": names, "categories": ["generic"] * len(names),
                "subcategories": [name] * len(names)}  # fmt: skip
        paths[name] = save_concept_embeddings(out_dir / f"{name}.safetensors", emb, meta)
    paths["none"] = None
    return paths


def run_grid(
    train_features: str | Path,
    test_features: str | Path,
    sets: dict[str, Path | None],
    out_dir: str | Path,
    base: TrainConfig,
    spec: ModelSpec = ModelSpec(),
    log: Log = quiet,
) -> dict[str, Any]:
    """Train one model per concept set (finished runs are skipped) and evaluate them all over
    ``spec``'s gallery, beside pretrained GeoCLIP. ``log`` is told of each run."""
    out_dir = Path(out_dir)
    runs = {}
    for name, emb in sets.items():
        cfg = replace(base, features=str(train_features), out=str(out_dir / name),
                      concepts=str(emb) if emb else None)  # fmt: skip
        last = train(cfg, resume=run_checkpoint(cfg.out) is not None) or {}
        runs[name] = out_dir / name
        log(f"{'already trained' if last.get('loss') is None else 'trained'}: {name}")
    models = [replace(spec, checkpoint=None), *(replace(spec, checkpoint=r) for r in runs.values())]
    result = evaluate(test_features, models).summary
    result["models"] = {
        {str(v): k for k, v in runs.items()}.get(name, name): row
        for name, row in result["models"].items()
    }
    write_json(out_dir / "ablation.json", result, sort_keys=False)  # thresholds in order
    with atomic_path(out_dir / "ablation.md") as tmp:
        tmp.write_text(markdown_table(result) + "\n")
    return result


def ablate(train_features: str | Path, test_features: str | Path, out: str | Path,
           config: TrainConfig, spec: ModelSpec = ModelSpec(), concepts: str | Path | None = None,
           log: Log = quiet) -> dict[str, Any]:  # fmt: skip
    """`geoconcept ablate`: the geography-driven ``concepts`` (default: the shipped set), a
    generic vocabulary and a random basis of the same size, each embedded with ``spec``'s
    CLIP, and no concepts, each trained on ``train_features`` with ``config``'s options and
    evaluated on ``test_features`` (see ``run_grid``)."""
    clip_id = ClipId.of(spec.clip_model, spec.clip_pretrained)
    for folder in (train_features, test_features):  # before minutes of concept embedding
        check_features_clip(folder, clip_id)
    clip = load_clip(spec.clip_model, spec.clip_pretrained, spec.device)
    sets = make_concept_sets(concepts or default_concepts_path(), clip, Path(out) / "concept_sets")
    device = "cuda" if spec.device.startswith("cuda") else "cpu"
    return run_grid(train_features, test_features, sets, out, replace(config, device=device),
                    spec, log)  # fmt: skip
