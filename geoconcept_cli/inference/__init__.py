"""Inference: predict, explain and `where` over a gallery, calibrated probabilities and
regions, the factory of ready models from a ``ModelSpec``, and batch runs (``batch/``)."""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .batch.explain import explain_folder as explain_folder
    from .batch.photos import album_of_photos as album_of_photos
    from .batch.photos import albums_of_manifest as albums_of_manifest
    from .batch.photos import explain_photos as explain_photos
    from .batch.photos import predict_photos as predict_photos
    from .batch.predict import predict_folder as predict_folder
    from .calibration_record import stored_geoclip_calibrations as stored_geoclip_calibrations
    from .explainer import Explainer as Explainer
    from .factory import check_request as check_request
    from .factory import load_explainer as load_explainer
    from .factory import load_locator as load_locator
    from .loading import load_photo_explainer as load_photo_explainer
    from .loading import load_predictor as load_predictor
    from .locator import Locator as Locator
    from .predictor import Predictor as Predictor
    from .request import Request as Request
    from .results import Album as Album
    from .results import Candidate as Candidate
    from .results import Explanation as Explanation
    from .results import Prediction as Prediction
    from .results import WhereAnswer as WhereAnswer

__getattr__ = lazy_exports(
    __name__,
    {
        "load_predictor": "loading",
        "load_photo_explainer": "loading",
        "check_request": "factory",
        "load_explainer": "factory",
        "load_locator": "factory",
        "Request": "request",
        "Candidate": "results",
        "Prediction": "results",
        "Explanation": "results",
        "WhereAnswer": "results",
        "Predictor": "predictor",
        "Explainer": "explainer",
        "Locator": "locator",
        "predict_folder": "batch.predict",
        "explain_folder": "batch.explain",
        "explain_photos": "batch.photos",
        "predict_photos": "batch.photos",
        "album_of_photos": "batch.photos",
        "albums_of_manifest": "batch.photos",
        "Album": "results",
        "stored_geoclip_calibrations": "calibration_record",
    },
)
