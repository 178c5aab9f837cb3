"""`tokensft train` under FSDP (configs/accelerate/fsdp.yaml: FSDP2, full shard, decoder layers
wrapped by class) on 2 CPU processes with gloo: it finishes, equals a 1-process run of the same global
batch, resumes exactly from a sharded checkpoint, and its final model loads with from_pretrained.

accelerate 1.15 never selects FSDP on CPU: `Accelerator(cpu=True)` makes the distributed type
MULTI_CPU (state.py `_prepare_backend`), and AcceleratorState switches to FSDP only from the GPU-like
types (its `elif self.distributed_type in [DistributedType.MULTI_GPU, ...]`, no MULTI_CPU), so the
config alone would silently run DDP. torch's FSDP2 itself runs on CPU with gloo. So this file, run as
a script (`accelerate launch --config_file ... tests/test_fsdp.py train ...`), first makes accelerate
take its FSDP path on CPU (`_force_fsdp_on_cpu`), then runs the CLI: what is tested is tokensft's FSDP
path (prepare, no_sync, clip, sharded save_state/load_state, the gathered final save), on CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "fsdp.yaml"
COMMON = ["--objective", "threshold-nll:0.0006", "--max-steps", "5", "--batch-size", "2", "--save-every", "2",
          "--lr", "1e-3", "--seed", "3", "-q"]


def _force_fsdp_on_cpu() -> None:
    """Make accelerate treat a CPU multi-process launch as it treats GPUs (hence take FSDP from the
    launcher's environment), with the process group on gloo and every tensor on the CPU."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    prepare_backend = PartialState._prepare_backend

    def as_gpu(self, cpu=False, sagemaker_dp=False, backend=None):
        backend, kind = prepare_backend(self, cpu, sagemaker_dp, backend)
        return backend, DistributedType.MULTI_GPU if kind == DistributedType.MULTI_CPU else kind

    def on_cpu(self):
        if self.device is None:
            self.device = torch.device("cpu")

    PartialState._prepare_backend, PartialState.set_device = as_gpu, on_cpu
    torch.distributed.init_process_group("gloo")  # accelerate initializes a group only when cpu=False


def launch(data: Path, out: Path, model: Path):
    from conftest import run_processes

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG), "--num_processes", "2",
           __file__, "train", str(data), "--output", str(out), "--model", str(model), *COMMON]
    done = run_processes(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]


def losses(out: Path) -> list[float]:
    return [row["loss"] for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in row]


def test_config_wraps_the_decoder_layers_inside_the_objective_module():
    from accelerate.utils.dataclasses import get_module_class_from_name
    from conftest import make_bpe_tokenizer, make_model
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from tokensft.train.loop import ObjectiveModule

    config = yaml.safe_load(CONFIG.read_text())
    fsdp = config["fsdp_config"]
    assert config["distributed_type"] == "FSDP" and fsdp["fsdp_version"] == 2 and fsdp["fsdp_reshard_after_forward"]
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    module = ObjectiveModule(make_model(make_bpe_tokenizer(), "bpe"), None, "all-targets", 1)
    assert get_module_class_from_name(module, fsdp["fsdp_transformer_layer_cls_to_wrap"]) is LlamaDecoderLayer
    assert getattr(module, "_no_split_modules", None) is None  # why the config must name the class


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_dirs) -> dict[str, Path]:
    """The same 5 steps of global batch 4: 1 process (2 micro-batches of 2), and FSDP on 2 processes."""
    from test_enrich import scored

    from tokensft.cli import main

    tmp = tmp_path_factory.mktemp("fsdp")
    data = scored(tmp, tiny_dirs["bpe"])
    assert main(["train", str(data), "--output", str(tmp / "one"), "--model", str(tiny_dirs["bpe"]),
                 "--grad-accum", "2", *COMMON]) == 0
    launch(data, tmp / "two", tiny_dirs["bpe"])
    return {"data": data, "one": tmp / "one", "two": tmp / "two", "tmp": tmp}


def test_two_fsdp_processes_equal_one_and_save_a_loadable_model(runs):
    from transformers import AutoModelForCausalLM

    one, two = runs["one"], runs["two"]
    a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(losses(two)), torch.tensor(losses(one)), atol=1e-6, rtol=1e-5)
    state = two / "checkpoints" / "step-4" / "state"
    assert (state / "pytorch_model_fsdp_0").is_dir() and (state / "optimizer_0").is_dir()  # sharded (SHARDED_STATE_DICT)
    for name, p in AutoModelForCausalLM.from_pretrained(two).state_dict().items():  # the full weights, not a shard
        torch.testing.assert_close(p, a[name], atol=1e-6, rtol=1e-5)
    step_4 = load_file(two / "checkpoints" / "step-4" / "model.safetensors")  # gathered too
    assert {k: v.shape for k, v in step_4.items()} == {k: v.shape for k, v in a.items()}
    assert json.loads((two / "train_config.json").read_text())["world_size"] == 2


def test_fsdp_resumes_exactly_from_a_sharded_checkpoint(runs, tiny_dirs):
    """A run killed just after its step-2 checkpoint: OUTPUT holds that checkpoint, its config and the
    metrics of steps 1-2. The rerun loads the sharded state and ends on the clean run's weights."""
    two, killed = runs["two"], runs["tmp"] / "killed"
    (killed / "checkpoints").mkdir(parents=True)
    shutil.copytree(two / "checkpoints" / "step-2", killed / "checkpoints" / "step-2")
    shutil.copy(two / "train_config.json", killed)
    (killed / "metrics.jsonl").write_text("".join(line + "\n" for line in (two / "metrics.jsonl").read_text().splitlines()[:2]))
    launch(runs["data"], killed, tiny_dirs["bpe"])
    a, b = load_file(two / "model.safetensors"), load_file(killed / "model.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=0, rtol=0)
    assert losses(killed) == losses(two)


if __name__ == "__main__":  # one rank of `accelerate launch ... tests/test_fsdp.py train ...`
    if not torch.cuda.is_available():
        _force_fsdp_on_cpu()
    from tokensft.cli import main

    sys.exit(main(sys.argv[1:]))
