from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from builders import reference_model, save_checkpoint, tiny_config  # noqa: E402

torch.set_num_threads(2)


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
