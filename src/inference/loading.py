"""Load a trained model for evaluation or inference: its run config and its weights.

A training run writes `<run>/config.yaml` (resolved, vocabulary size filled in) and `<run>/checkpoints/step_*/`, so
`--ckpt <run>/checkpoints/step_00000480` alone is enough: the config is found two folders up. A config given
explicitly (`--config`) wins; overrides apply on top.
"""
import os

from src.config import load_config
from src.errors import UserError
from src.weights.checkpoint import init_from_checkpoint


def run_config_for(ckpt_path):
    """The config.yaml of the run that wrote `ckpt_path` (a step directory), the model_config.yaml inside a
    converted released checkpoint (python -m src.weights.convert), or None."""
    converted = os.path.join(os.path.abspath(ckpt_path), "model_config.yaml")
    if os.path.isfile(converted):
        return converted
    candidate = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(ckpt_path))), "config.yaml")
    return candidate if os.path.isfile(candidate) else None


def resolve_config(ckpt_path=None, config_path=None, overrides=()):
    path = config_path or (run_config_for(ckpt_path) if ckpt_path else None)
    if not path:
        raise UserError(f"no config for checkpoint {ckpt_path}: pass --config (the run's config.yaml or a run "
                        "config)")
    cfg = load_config(path, list(overrides))
    from src.engine.parallel import check_device_support  # tensor parallelism on CPU: refused before any model
    check_device_support(cfg.parallel, cfg.run.device)
    if cfg.model.text.vocab_size <= 0:
        from src.data.tokenizer import Tokenizer
        cfg = cfg.with_updates({"model.text.vocab_size": Tokenizer(cfg.data.vocab, cfg.data.lower_case).vocab_size})
    return cfg


def load_trained_model(cfg, ckpt_path, allow_missing=False):
    """Build the model of `cfg` in eval mode and load its weights (optimizer state in the checkpoint is ignored)."""
    from src.models.opt import build_model
    model = build_model(cfg.model)
    if ckpt_path:
        init_from_checkpoint(model, ckpt_path, allow_missing)
    model.set_train(False)
    return model


def load_vq(ckpt_path, config_path=None):
    """A trained VQVAE in eval mode: weights from a checkpoint (a step directory), config from `config_path` or the
    run folder that holds the checkpoint (`<run>/config.yaml`)."""
    from src.models.vq import build_vq
    path = config_path or run_config_for(ckpt_path)
    if not path:
        raise UserError(f"no config for VQ checkpoint {ckpt_path}: pass the run's config.yaml (--vq_config)")
    vq = build_vq(load_config(path).vq)
    init_from_checkpoint(vq, ckpt_path)
    vq.set_train(False)
    return vq
