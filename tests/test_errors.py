"""Bad input raises errors that name the problem."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import drope_lens as dl
from drope_lens.model.checkpoint import CheckpointError


def _copy(path, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(path, target)
    return target


def _edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint directory"):
        dl.load_model(tmp_path / "does-not-exist")


def test_directory_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no config.json"):
        dl.load_model(tmp_path)


def test_non_llama_architecture(checkpoint_factory, tmp_path):
    path = _copy(checkpoint_factory()[0], tmp_path)
    _edit_config(path, architectures=["GPT2LMHeadModel"], model_type="gpt2")
    with pytest.raises(CheckpointError, match=r"unsupported architecture.*GPT2LMHeadModel"):
        dl.load_model(path)


def test_unknown_attention_type(checkpoint_factory, tmp_path):
    path = _copy(checkpoint_factory(attention_type="nope")[0], tmp_path)
    _edit_config(path, attention_type="rope_nope_2")
    with pytest.raises(CheckpointError, match="rope_nope_2") as info:
        dl.load_model(path)
    for allowed in dl.DROPE_ATTENTION_TYPES:
        assert allowed in str(info.value)


def test_config_weight_shape_mismatch(checkpoint_factory, tmp_path):
    path = _copy(checkpoint_factory()[0], tmp_path)
    _edit_config(path, intermediate_size=100)
    with pytest.raises(CheckpointError, match=r"model.layers.0.mlp.gate_proj.weight.*\[128, 64\].*\[100, 64\]"):
        dl.load_model(path)


def test_missing_weight(checkpoint_factory, tmp_path):
    path = _copy(checkpoint_factory()[0], tmp_path)
    tensors = load_file(path / "model.safetensors")
    del tensors["model.layers.1.self_attn.v_proj.weight"]
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="missing weight.*model.layers.1.self_attn.v_proj.weight"):
        dl.load_model(path)


def test_norm_weights_without_a_norm_attention_type(checkpoint_factory, tmp_path):
    path = _copy(checkpoint_factory(attention_type="qk_norm_nope")[0], tmp_path)
    _edit_config(path, attention_type="nope")
    with pytest.raises(CheckpointError, match="unexpected weight.*q_norm"):
        dl.load_model(path)


def test_pickle_weights_are_refused(checkpoint_factory, tmp_path):
    path = _copy(checkpoint_factory()[0], tmp_path)
    tensors = load_file(path / "model.safetensors")
    (path / "model.safetensors").unlink()
    torch.save(tensors, path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pickle.*pytorch_model.bin"):
        dl.load_model(path)


def test_corrupt_safetensors_header(checkpoint_factory, tmp_path):
    path = _copy(checkpoint_factory()[0], tmp_path)
    (path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        dl.load_model(path)


def test_token_id_outside_vocabulary(checkpoint_factory):
    model = dl.load_model(checkpoint_factory()[0])
    with pytest.raises(ValueError, match=r"token id 96 is outside the vocabulary \[0, 96\)"):
        model(torch.tensor([[1, 5, 96]]))
    with pytest.raises(ValueError, match="token id -1"):
        model(torch.tensor([[1, -1]]))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"dtype": "int8"}, "dtype='int8'"),
        ({"quantization": "int4"}, "quantization='int4'"),
        ({"variant": "alibi"}, "variant='alibi'"),
        ({"n_ctx": 0}, "n_ctx=0"),
    ],
)
def test_bad_options(checkpoint_factory, kwargs, match):
    with pytest.raises(ValueError, match=match):
        dl.load_model(checkpoint_factory()[0], **kwargs)


def test_nf4_needs_cuda(checkpoint_factory):
    with pytest.raises(ValueError, match="needs a CUDA device"):
        dl.load_model(checkpoint_factory()[0], quantization="nf4", device="cpu")
