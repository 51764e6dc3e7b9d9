"""The trained model as an MLflow Model: a pyfunc that embeds clips, optionally registered.

``mlflow.pyfunc.load_model(uri).predict({"video": frames, "audio": samples})`` returns the
``audio``, ``video`` and ``fused`` embeddings of a batch of clip rows (the arrays avray's data
plane yields: uint8 frames ``[N, T, H, W, 3]`` and float32 mono samples ``[N, S]``, or the
feature arrays of feature shards). The model carries avray's checkpoint (weights and config)
and avray's code, so it loads wherever MLflow and torch are installed.

Not ``mlflow.pytorch``'s flavour: its pyfunc calls the module on one tensor and wants one
tensor back; avray's model takes two streams and returns three embeddings.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np

from avray.checkpoint import STATE_FILE
from avray.config import Config
from avray.models.outputs import MODALITIES
from avray.tracking import redact

PACKAGE = Path(__file__).resolve().parents[1]  # avray's code, which the model carries
ARTIFACT = "model"  # the MLflow Model's name in its run


class ClipEmbedder:
    """Embeds clips with an avray checkpoint (on CPU, or the first GPU)."""

    def __init__(self, checkpoint: str | Path):
        import torch

        from avray.models import load_model

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model, _ = load_model(checkpoint)
        self.model = model.to(self.device)

    def predict(self, model_input, params=None) -> dict[str, np.ndarray]:
        import torch

        video = torch.as_tensor(np.asarray(model_input["video"])).to(self.device)
        audio = torch.as_tensor(np.asarray(model_input["audio"])).to(self.device)
        with torch.inference_mode():
            outputs = self.model(video, audio)
        return {name: outputs[name].float().cpu().numpy() for name in MODALITIES}


def _load_pyfunc(data_path: str) -> ClipEmbedder:
    """MLflow's ``loader_module`` entry point: ``data_path`` is the logged checkpoint."""
    return ClipEmbedder(data_path)


def example_inputs(cfg: Config, clips: int = 2) -> dict[str, np.ndarray]:
    """Zero-valued model inputs of the checkpoint's shapes, for the signature."""
    if cfg.model.inputs == "features":
        return {name: np.zeros((clips, *shape), np.float32) for name, shape in cfg.model.feature_shapes().items()}
    data = cfg.data
    return {
        "video": np.zeros((clips, data.num_frames, data.frame_size, data.frame_size, 3), np.uint8),
        "audio": np.zeros((clips, data.num_samples), np.float32),
    }


def log_model(uri: str, run_id: str, checkpoint: str | Path, cfg: Config, register_as: str | None = None) -> str:
    """Log the checkpoint as an MLflow Model, artifact ``model`` of run ``run_id`` in the store
    ``uri`` (and register it as ``register_as``); returns the model's ``runs:/`` URI. Through a
    client, not MLflow's process-wide fluent state, as the rest of avray's tracking."""
    import torch
    from mlflow.models import infer_signature

    from avray.models import load_model

    model, _ = load_model(checkpoint)
    inputs = example_inputs(cfg)
    with torch.inference_mode():
        outputs = model(*(torch.as_tensor(inputs[name]) for name in ("video", "audio")))
    signature = infer_signature(inputs, {name: outputs[name].float().numpy() for name in MODALITIES})
    client = mlflow.MlflowClient(tracking_uri=uri)
    with tempfile.TemporaryDirectory() as folder:
        saved = Path(folder) / ARTIFACT
        mlflow.pyfunc.save_model(
            str(saved),
            loader_module=__name__,
            data_path=str(checkpoint),
            code_paths=[str(PACKAGE)],
            signature=signature,
            # Listed, not inferred: inference imports the model in a subprocess, slowly.
            pip_requirements=[
                f"mlflow=={mlflow.__version__}",
                f"torch=={torch.__version__.split('+')[0]}",
                "torchaudio",
                "numpy",
                "pyyaml",
            ],
        )
        client.log_artifacts(run_id, str(saved), ARTIFACT)
    model_uri = f"runs:/{run_id}/{ARTIFACT}"
    if register_as:
        if not client.search_registered_models(filter_string=f"name = '{register_as}'"):
            client.create_registered_model(register_as)
        client.create_model_version(register_as, source=model_uri, run_id=run_id)
    return model_uri


def fetch_registered(uri: str) -> Path:
    """The checkpoint folder inside registered model ``models:/NAME/VERSION`` of the store that
    ``MLFLOW_TRACKING_URI`` names, downloaded to a temporary folder (removed when the process
    exits)."""
    import atexit
    import shutil

    from avray.data.sources import SourceError

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # before avray's console starts
    local = Path(tempfile.mkdtemp(prefix="avray-model-"))
    atexit.register(shutil.rmtree, local, ignore_errors=True)
    try:
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(local)))
    except Exception as err:  # noqa: BLE001 - MLflow's errors quote the request URL, password included
        raise SourceError(
            f"cannot fetch {uri} from MLflow at {redact(mlflow.get_tracking_uri())}: "
            f"{redact(str(err)).splitlines()[0]} (set MLFLOW_TRACKING_URI to the store it was registered in)"
        ) from None
    found = sorted(folder.rglob(STATE_FILE))
    if not found:
        raise SourceError(f"{uri} is not an avray model: no {STATE_FILE} in its artifacts")
    return found[0].parent
