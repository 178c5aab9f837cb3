"""`--report-to`: an experiment tracker through accelerate, besides OUTPUT/metrics.jsonl (always written).

    log_with, project_dir = tracker_settings("tensorboard", output)   # for Accelerator(log_with=..., project_dir=...)
    start_trackers(accelerator, report_to, settings)                  # init_trackers("tokensft", config)
    accelerator.log(metrics, step=step)                               # each step (the loop)

Offline by default: TensorBoard writes event files under OUTPUT/tensorboard; wandb runs in
WANDB_MODE=offline (sync later with `wandb sync`) with its files under OUTPUT, unless WANDB_MODE is
set; mlflow logs to a file store, OUTPUT/mlruns, unless MLFLOW_TRACKING_URI is set. A tracker whose
package is missing is a ConfigError naming the pip install.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from tokensft.core.errors import ConfigError

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def tracker_settings(report_to: str, output: Path) -> tuple[str | None, str | None]:
    """(log_with, project_dir) for the Accelerator; (None, None) for --report-to none."""
    if report_to == "none":
        return None, None
    package = PACKAGES[report_to]
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"--report-to {report_to}: {package} is not installed; pip install {package}, "
                          "or use --report-to none (metrics.jsonl is always written)")
    if report_to == "wandb":
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_DIR", str(output))
    if report_to == "mlflow":
        os.environ.setdefault("MLFLOW_TRACKING_URI", (output / "mlruns").resolve().as_uri())
    return report_to, str(output / "tensorboard") if report_to == "tensorboard" else None


def start_trackers(accelerator, report_to: str, settings: dict) -> None:
    """init_trackers with the run's settings as flat scalars (TensorBoard's hparams take no None or lists)."""
    if report_to == "none":
        return
    flat = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in settings.items()}
    accelerator.init_trackers("tokensft", config=flat)
