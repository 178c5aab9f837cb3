"""The training stage: weighted, masked or soft-target SFT from a scored (and enriched) dataset.

    objectives   the catalogue: every objective's spec, formula, source and defaults (no torch)
    losses       their math, one pure function each
    chunked      per-target terms from the lm_head in checkpointed chunks (never [B, T, V] logits)
    loss         one micro-batch's loss, normalized over the whole optimizer step
    data         checks, split, order, padded micro-batches; config: TrainConfig
    weighting    the --weight column: which, checked (finite, non-negative), its tensor
    loop         `tokensft train`, on accelerate; step: one step's batches, counts, metrics, evaluation;
                 checkpoints, progress; output: what OUTPUT may be, its lock
    interop      the same loss inside transformers.Trainer or TRL's SFTTrainer

It reads the dataset through `tokensft.core` and never imports `tokensft.preprocess`. Other
stages (the sweep) enter through this package's names, `train`, `TrainConfig`, `parse_objective`,
each imported only when asked for: the config and the catalogue need no torch.
"""

_DOORS = {"train": "tokensft.train.loop", "TrainConfig": "tokensft.train.config",
          "parse_objective": "tokensft.train.objectives"}


def __getattr__(name: str):
    if name in _DOORS:
        import importlib

        return getattr(importlib.import_module(_DOORS[name]), name)
    raise AttributeError(name)


__all__ = sorted(_DOORS)
