"""`tokensft train --report-to`: what a tracker writes, read back. TensorBoard's event files hold,
step by step, the same numbers as metrics.jsonl (as float32, TensorBoard's scalar type) and the
run's settings as hparams; a tracker whose package is missing is one line naming the install.

wandb and mlflow are not in the test extra, so only their missing-package error is checked here:
wandb is 16 more packages (21 MB of wheels, a Go service started per run) and since 0.31 has no
Python reader of its offline .wandb files; mlflow is 59 packages (127 MB: a web server, scikit-learn).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from test_train import enriched, train_cli  # noqa: F401  (enriched: a fixture)
from test_train_settings import metrics

from tokensft.train import trackers

pytest.importorskip("tensorboard", reason="the test extra installs tensorboard: pip install -e .[test]")


def read_events(directory: Path):
    """TensorBoard's own reader over one run directory (the event files directly in it)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def hparams_of(root: Path) -> dict:
    """The hparams (session start info) of the one event file under `root` that holds them."""
    from google.protobuf.json_format import MessageToDict
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    found = []
    for directory in sorted({p.parent for p in root.rglob("events.out.tfevents.*")}):
        try:
            content = read_events(directory).PluginTagToContent("hparams")
        except KeyError:  # this event file holds no hparams (the scalars' own file)
            continue
        for data in content.values():
            info = HParamsPluginData.FromString(data)
            if info.HasField("session_start_info"):
                found.append(MessageToDict(info.session_start_info)["hparams"])
    assert len(found) == 1, found
    return found[0]


def test_tensorboard_scalars_equal_metrics_jsonl_step_by_step(enriched, tiny_dirs, tmp_path):  # noqa: F811
    out = tmp_path / "ckpt"
    assert train_cli(enriched, out, tiny_dirs["bpe"], "--max-steps", "3", "--batch-size", "2", "--lr", "1e-3",
                     "--mask", "top-frac:0.5", "--report-to", "tensorboard") == 0
    rows = metrics(out)
    assert [row["step"] for row in rows] == [1, 2, 3]
    run = out / "tensorboard" / "tokensft"  # accelerate: project_dir / the project name of init_trackers
    scalars = read_events(run)
    numeric = {k for row in rows for k, v in row.items() if isinstance(v, (int, float))}
    assert {"loss", "lr", "grad_norm", "mean_p", "kept_fraction"} <= numeric
    assert set(scalars.Tags()["scalars"]) == numeric  # every number of metrics.jsonl, nothing else
    for tag in sorted(numeric):
        logged = [(e.step, e.value) for e in scalars.Scalars(tag)]
        expected = [(row["step"], float(np.float32(row[tag]))) for row in rows if tag in row]
        assert logged == expected, tag  # the same step, the same number (exactly, at float32)
    assert len({e.value for e in scalars.Scalars("loss")}) == 3  # three distinct steps, not one value repeated

    hparams = hparams_of(out / "tensorboard")
    config = json.loads((out / "train_config.json").read_text())  # the resolved settings, as the run saved them
    config.pop("world_size")
    expected = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in config.items()}
    assert {k: hparams[k] for k in expected} == expected and set(hparams) == {*expected, "overwrite"}
    assert hparams["weight"] == "None" and hparams["report_to"] == "tensorboard"  # None: its str (hparams take scalars)


@pytest.mark.parametrize("report_to", ["tensorboard", "wandb", "mlflow"])
def test_a_missing_tracker_is_one_line_naming_the_install(enriched, tiny_dirs, tmp_path, capsys, monkeypatch,  # noqa: F811
                                                          report_to):
    # trackers looks its package up by importlib.util.find_spec: make that one lookup find nothing
    monkeypatch.setattr(trackers, "importlib", SimpleNamespace(util=SimpleNamespace(find_spec=lambda name: None)))
    assert train_cli(enriched, tmp_path / "x", tiny_dirs["bpe"], "--report-to", report_to) == 2
    err = capsys.readouterr().err
    assert f"--report-to {report_to}" in err and f"pip install {report_to}" in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()
