from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Idle OpenMP workers sleep instead of spinning (as the drope-lens command sets it): torchrun tests
# run several processes on CI's 2 cores, where a spinning worker takes the core another needs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

# DROPE_LENS_TEST_DEVICE=cuda runs the experiment tests with models on the GPU (the fused-kernel
# path users get there); references stay where the tests build them.
from builders import TEST_DEVICE, reference_model, save_checkpoint, tiny_config  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _models_on_test_device(request, monkeypatch):
    if TEST_DEVICE == "cpu" or request.node.get_closest_marker("gpu"):
        return
    import drope_lens
    import drope_lens.model.loading

    original = drope_lens.model.loading.load_model

    def load_model(*args, **kwargs):
        kwargs.setdefault("device", TEST_DEVICE)
        return original(*args, **kwargs)

    monkeypatch.setattr(drope_lens, "load_model", load_model)
    monkeypatch.setattr(drope_lens.model.loading, "load_model", load_model)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory):
    """Build (and cache) a tiny checkpoint plus its HF reference: factory(**kwargs) -> (path, ref)."""
    cache: dict = {}

    def make(*, attention_type=None, softmax_scale=None, n_kv_heads=4, tie=False, seed=0,
             dtype=torch.float32, prepend_bos=True, **config_overrides):
        key = (attention_type, softmax_scale, n_kv_heads, tie, seed, dtype, prepend_bos,
               tuple(sorted(config_overrides.items())))
        if key not in cache:
            config = tiny_config(num_key_value_heads=n_kv_heads, tie_word_embeddings=tie, **config_overrides)
            ref = reference_model(config, attention_type=attention_type, softmax_scale=softmax_scale, seed=seed)
            directory = tmp_path_factory.mktemp("ckpt")
            save_checkpoint(ref, directory, attention_type=attention_type, softmax_scale=softmax_scale,
                            dtype=dtype, prepend_bos=prepend_bos)
            cache[key] = (directory, ref)
        return cache[key]

    return make


# Session fixture shared by the figure, report and browser tests (a small real toy-pair results folder).
from toy_results import toy_results  # noqa: E402,F401
