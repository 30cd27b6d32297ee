"""geoconcept: interpretable worldwide image geo-localization on top of GeoCLIP.

The package is a library first; the ``geoconcept`` command (``cli/``) and ``geoconcept serve``
(``serving/``) parse requests, call it and render what it returns. Its API, here::

    from geoconcept_cli import ModelSpec, Request, load_explainer
    explainer = load_explainer(ModelSpec(checkpoint="runs/concepts"))  # None: GeoCLIP
    answer = explainer.explain("photo.jpg", Request(check=True))  # an Explanation
    answer.to_json()  # what `geoconcept explain photo.jpg --json --check` prints

or, from a bundle of ``export --onnx``, with no torch loaded::

    from geoconcept_cli import ModelSpec, load_photo_explainer
    spec = ModelSpec(checkpoint="models/concepts", runtime="onnx")
    load_photo_explainer(spec).explain("photo.jpg")  # the same Explanation

and one function per stage: ``embed_images``, ``embed_concept_set``, ``train``, ``evaluate``,
``calibrate``, ``export_model`` (and ``predict_folder``, ``explain_folder``, ``ablate``,
``make_atlas``, ``probe_locations``, ``serve``). Names are imported on first use, so
``geoconcept --help`` does not pay for torch.
"""

from typing import TYPE_CHECKING

from ._lazy import lazy_exports
from ._version import __version__
from .errors import GeoconceptError

if TYPE_CHECKING:
    from .data.embedding import EmbedOptions as EmbedOptions
    from .data.embedding import embed_images as embed_images
    from .data.manifests import subset_manifest as subset_manifest
    from .evaluation.ablations import ablate as ablate
    from .evaluation.atlas import make_atlas as make_atlas
    from .evaluation.calibration_fit import calibrate as calibrate
    from .evaluation.downstream import probe_locations as probe_locations
    from .evaluation.scores import evaluate as evaluate
    from .export.bundle import export_model as export_model
    from .inference.batch.explain import explain_folder as explain_folder
    from .inference.batch.photos import explain_photos as explain_photos
    from .inference.batch.predict import predict_folder as predict_folder
    from .inference.explainer import Explainer as Explainer
    from .inference.factory import load_explainer as load_explainer
    from .inference.factory import load_locator as load_locator
    from .inference.factory import load_predictor as load_predictor
    from .inference.loading import load_photo_explainer as load_photo_explainer
    from .inference.locator import Locator as Locator
    from .inference.predictor import Predictor as Predictor
    from .inference.request import Request as Request
    from .inference.results import Candidate as Candidate
    from .inference.results import Explanation as Explanation
    from .inference.results import Prediction as Prediction
    from .inference.results import WhereAnswer as WhereAnswer
    from .model.concept_embeddings import embed_concept_set as embed_concept_set
    from .model.spec import ModelSpec as ModelSpec
    from .model.spec import StoredFeatures as StoredFeatures
    from .runtime.launch import Workers as Workers
    from .serving.http import serve as serve
    from .serving.photo_answers import Photo as Photo
    from .serving.service import GeoService as GeoService
    from .training.config import TrainConfig as TrainConfig
    from .training.loop import train as train

__getattr__ = lazy_exports(
    __name__,
    {
        "ModelSpec": "model.spec",
        "StoredFeatures": "model.spec",
        "Request": "inference.request",
        "Workers": "runtime.launch",
        "load_explainer": "inference.factory",
        "load_locator": "inference.factory",
        "load_predictor": "inference.factory",
        "load_photo_explainer": "inference.loading",
        "Predictor": "inference.predictor",
        "Explainer": "inference.explainer",
        "Locator": "inference.locator",
        "Candidate": "inference.results",
        "Explanation": "inference.results",
        "Prediction": "inference.results",
        "WhereAnswer": "inference.results",
        "predict_folder": "inference.batch.predict",
        "explain_folder": "inference.batch.explain",
        "explain_photos": "inference.batch.photos",
        "GeoService": "serving.service",
        "Photo": "serving.photo_answers",
        "serve": "serving.http",
        "EmbedOptions": "data.embedding",
        "embed_images": "data.embedding",
        "subset_manifest": "data.manifests",
        "embed_concept_set": "model.concept_embeddings",
        "TrainConfig": "training.config",
        "train": "training.loop",
        "evaluate": "evaluation.scores",
        "calibrate": "evaluation.calibration_fit",
        "ablate": "evaluation.ablations",
        "make_atlas": "evaluation.atlas",
        "probe_locations": "evaluation.downstream",
        "export_model": "export.bundle",
    },
)
__all__ = [
    "Candidate",
    "EmbedOptions",
    "Explainer",
    "Explanation",
    "GeoService",
    "GeoconceptError",
    "Locator",
    "ModelSpec",
    "Photo",
    "Prediction",
    "Predictor",
    "Request",
    "StoredFeatures",
    "TrainConfig",
    "WhereAnswer",
    "Workers",
    "__version__",
    "ablate",
    "calibrate",
    "embed_concept_set",
    "embed_images",
    "evaluate",
    "explain_folder",
    "explain_photos",
    "export_model",
    "load_explainer",
    "load_locator",
    "load_photo_explainer",
    "load_predictor",
    "make_atlas",
    "predict_folder",
    "probe_locations",
    "serve",
    "subset_manifest",
    "train",
]
