"""The model card (``README.md``) of an exported model, written from its ``config.json``."""

from __future__ import annotations

from typing import Any

from ..geo.distance import THRESHOLDS_KM


# ------------------------------------------------------------------------------ model card
def model_card(config: dict[str, Any], name: str) -> str:
    """README.md of a bundle: what the model is, its data and figures, use, limits, privacy."""
    clip, training = config["clip"], config["training"]
    concept_aware = config["kind"] == "concept"
    model_opt = clip.get("model") if not clip.get("config") else f"<your {clip.get('model')}.json>"
    lines = [
        f"# geoconcept model: {name}",
        "",
        ("A **concept-aware** image geo-localization head (concept-aware image-GPS alignment, "
         "arXiv 2509.01910) on GeoCLIP: it predicts where a photo was taken by retrieval over a "
         "GPS gallery, and explains each prediction in the concepts listed in `concepts.json`."
         if concept_aware else
         "A **plain GeoCLIP** head (image MLP and location encoder) retrained by geoconcept: it "
         "predicts where a photo was taken by retrieval over a GPS gallery. It has no concept "
         "axes; `geoconcept explain` explains it zero-shot."),
        "",
        "## Use",
        "",
        "```bash",
        f"geoconcept explain photo.jpg --checkpoint {name} --clip-model {model_opt} "
        f"--clip-pretrained {clip.get('pretrained')}",
        f"geoconcept evaluate FEATURES {name}",
        "```",
        "",
        f"The image features must come from CLIP `{clip.get('model')}` with weights "
        f"`{clip.get('pretrained')}`" + (f" (model config sha256 `{clip['config']}`)"
                                         if clip.get("config") else "")
        + "; geoconcept refuses others. Loading this folder runs no code: weights are "
        "safetensors, everything else JSON.",
        "",
        _image_mlp_line(config["image_mlp"]),
        "",
        "## Training",
        "",
        *_training_lines(config, training),
        "",
        "## Evaluation",
        "",
        *_evaluation_lines(config.get("evaluation")),
        "",
        "## Intended use and limits",
        "",
        "- Coarse, worldwide localisation of outdoor photos: the answer is always one of the "
        "gallery's points (GeoCLIP's 100K by default), so it is never finer than the gallery and "
        "is not street-level or address-level localisation.",
        "- Accuracy holds for photos like the training data (geotagged Flickr-style photos); "
        "indoor scenes, close-ups, screenshots and regions rare in that data are located far "
        "less reliably. " + _calibration_line(config.get("calibration")),
        "- The explanations decompose *this model's* score exactly; they say what the model "
        "used, not what is true of the place. `--check` tests them against random concepts.",
        "",
        "## Privacy",
        "",
        "Locating a photo can reveal where a person lives, works or travels. Do not use this "
        "model to locate people, or photos of people, without their consent; check the law "
        "that applies to you before processing others' photos.",
        "",
        "## Files",
        "",
        "- `model.safetensors`: the weights; `config.json`: backbone, concept-set hash, "
        "training options, evaluation and the weights' sha256 (checked on load)",
        *(["- `concepts.json`: the concept names, categories and subcategories"]
          if concept_aware else []),
        *(["- `calibration.json`: the temperature and confidence-region threshold, valid for "
           "this model, its gallery and its CLIP backbone"] if config.get("calibration")
          else []),
        f"- made by geoconcept {config['geoconcept_version']} (format `{config['format']}`)",
        "",
    ]  # fmt: skip
    return "\n".join(lines)


def _image_mlp_line(record: dict[str, Any]) -> str:
    """Where the image MLP's weights started: GeoCLIP's (ViT-L/14 only) or fresh."""
    start = ("GeoCLIP's pretrained one" if record["init"] == "geoclip" else
             "a fresh, seeded one of GeoCLIP's shape (GeoCLIP's own exists for ViT-L/14's "
             "768-d features only)")  # fmt: skip
    return (
        f"Image MLP: {record['width']} -> 768 -> 512, trained from {start}; GeoCLIP's "
        "pretrained location encoder is its location branch's start."
    )


def _calibration_line(cal: dict[str, Any] | None) -> str:
    if not cal:
        return "The probabilities are uncalibrated (`geoconcept calibrate` fits them)."
    return (
        f"The probabilities are calibrated (temperature {cal['temperature']:.3g}, fitted "
        f"on {cal['photos']} held-out photos), and each prediction comes with a "
        f"{1 - cal['alpha']:.0%} confidence region (the truth within {cal['radius_km']:g} "
        "km of one of its places), for photos like the calibration ones."
    )


def _training_lines(config: dict[str, Any], training: dict[str, Any]) -> list[str]:
    features = config.get("features") or {}
    step, total = config.get("step"), config.get("total_steps")
    lines = [
        f"- Image features: `{training.get('features')}`, {features.get('rows', '?')} photos "
        f"(sha256 of their ids `{str(features.get('ids_sha256', '?'))[:16]}`)",
        f"- Steps: {step} of {total}" + (" (**unfinished run**)" if step and total
                                          and step < total else ""),
        "- Options: " + ", ".join(f"{k} {training[k]}" for k in (
            "epochs", "batch_size", "lr", "queue_size", "divergence", "lambda_div",
            "train_location", "seed") if k in training),
    ]  # fmt: skip
    if config.get("concept_set"):
        cs = config["concept_set"]
        lines.append(f"- Concept set: {cs['count']} concepts (sha256 `{cs['sha256'][:16]}`), "
                     f"basis `{training.get('concepts')}`")  # fmt: skip
    return lines


def _evaluation_lines(evaluation: dict[str, Any] | None) -> list[str]:
    if not evaluation:
        return [
            "No evaluation of this run was given or found in its folder. `geoconcept evaluate "
            "FEATURES RUN --json-out RUN/eval.json`, then export again (or `export --figures "
            "FILE`), adds the figures here."
        ]
    rows = {"this model": evaluation["model"], **evaluation.get("baselines", {})}
    if evaluation.get("ceiling"):
        rows["gallery ceiling"] = evaluation["ceiling"]
    head = "| model | " + " | ".join(f"{t} km" for t in THRESHOLDS_KM) + " | median km |"
    lines = [f"Top-1 accuracy (%) within each distance, from `{evaluation['file']}` "
             f"({int(evaluation['model'].get('n', 0))} photos):", "", head,
             "|---" * (len(THRESHOLDS_KM) + 2) + "|"]  # fmt: skip
    for name, r in rows.items():
        cells = " | ".join(f"{r[f'{t}km']:.1f}" for t in THRESHOLDS_KM)
        median = f"{r['median_km']:.1f}" if "median_km" in r else ""
        lines.append(f"| {name} | {cells} | {median} |")
    return lines
