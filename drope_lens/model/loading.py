"""``load_model``: a RoPE or DroPE checkpoint (Llama, Qwen2, Mistral) as a faithful HookedTransformer.

Data path: checkpoint directory (or hub id, downloaded to the local cache first) ->
``config.json`` -> :class:`CheckpointSpec` -> model skeleton on the ``meta`` device -> weights
streamed one tensor at a time from safetensors, each checked by name and shape and placed
directly on the target device as a view of its checkpoint layout. No checkpoint code runs
(no ``trust_remote_code``), no pickle is read, no weight processing is applied.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional, Union

import torch
import torch.nn as nn

from .checkpoint import CheckpointError, CheckpointSpec, Variant, parse_config, read_config
from .transformer import DropeLensTransformer, build_config
from .placement import plan_placement
from .safetensors_stream import index_checkpoint, read_tensors_prefetched

logger = logging.getLogger(__name__)

Quantization = Optional[Literal["nf4"]]
_DTYPE_NAMES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def resolve_dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    """``torch.float32``/``"fp32"``/``"bf16"``/... -> a floating torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            raise ValueError(f"dtype={dtype}: use float32, bfloat16 or float16.")
        return dtype
    try:
        return _DTYPE_NAMES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"dtype={dtype!r}: allowed names are {sorted(_DTYPE_NAMES)}.") from None


def resolve_source(source: Union[str, os.PathLike], revision: Optional[str] = None) -> Path:
    """A local checkpoint directory for ``source``: a directory, a bundled name
    (``bundled:toy/rope``), or a hub id fetched to the cache."""
    text = os.fspath(source)
    if text.startswith("bundled:"):
        from .bundled import resolve

        return resolve(text)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path}: is a file; pass the checkpoint directory that holds config.json.")
        return path
    parts = text.split("/")
    is_hub_id = len(parts) == 2 and all(parts) and not text.startswith((".", "~"))
    if not is_hub_id:
        raise FileNotFoundError(
            f"{text}: no such checkpoint directory (and not a hub id of the form 'owner/name')."
        )
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            repo_id=text,
            revision=revision,
            allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"],
        )
    except Exception as exc:  # network, auth, missing repo: say what failed and how to fix it
        raise FileNotFoundError(
            f"{text}: not a local directory, and downloading it from the hub failed ({exc}). "
            "Download the checkpoint yourself and pass its directory."
        ) from exc
    return Path(local)


def load_tokenizer(directory: Path):
    """The checkpoint's own tokenizer, or None (with a warning) when it ships none.

    ``AutoTokenizer`` is tried first (it honours ``tokenizer_config.json``); for DroPE configs
    whose ``model_type`` transformers does not know, ``tokenizer.json`` is read directly. Remote
    tokenizer code is never executed.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    has_files = any((directory / f).exists() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"))
    if not has_files:
        logger.warning("%s: no tokenizer files; the model accepts token ids only.", directory)
        return None
    try:
        return AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False)
    except Exception as first_error:  # unknown model_type (llama_drope) etc.
        if (directory / "tokenizer.json").exists():
            return PreTrainedTokenizerFast.from_pretrained(str(directory))
        raise CheckpointError(f"{directory}: could not load the tokenizer ({first_error}).") from first_error


# ---------------------------------------------------------------------------------------------
# Weight mapping: checkpoint (HF names, shared by Llama/Qwen2/Mistral, [out, in] layout) ->
# TransformerLens parameters.
# Every TL weight is a view of the checkpoint tensor: see drope_lens.model.linear.
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightTarget:
    """Where one checkpoint tensor goes: module path, parameter name, expected shape, and view."""

    module: str
    param: str
    shape: tuple[int, ...]
    view: Callable[[torch.Tensor], torch.Tensor]
    unview: Callable[[torch.Tensor], torch.Tensor]  # TransformerLens parameter -> checkpoint tensor
    linear: bool  # an nn.Linear weight (quantised under nf4)
    optional: bool = False  # may be absent from the checkpoint (then filled as upstream initialises it)
    fill: float = 0.0  # the value an absent optional tensor gets


def weight_targets(spec: CheckpointSpec) -> dict[str, WeightTarget]:
    """The expected checkpoint tensors and where each goes.

    q/k/v biases (Qwen2; Llama with ``attention_bias``) go to TransformerLens's ``b_Q``/``b_K``/
    ``b_V`` (``_b_K``/``_b_V`` under grouped-query attention) as ``[head, d_head]`` views, an
    ``o_proj`` bias to ``b_O``. For ``q_norm_nope``/``k_norm_nope`` the unused norm's weight is
    optional: upstream saves both norms, but a checkpoint without the unused one is complete
    (an absent one is filled with ones, ``nn.RMSNorm``'s initial weight, as upstream creates it).
    """
    n, nkv, h, m, f, v = spec.n_heads, spec.n_kv_heads, spec.d_head, spec.d_model, spec.d_mlp, spec.d_vocab
    kv = "_" if spec.grouped_query else ""

    def heads_in(count: int) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda w: w.view(count, h, m).permute(0, 2, 1)  # [(n h), m] -> [n, m, h]

    def heads_out(count: int) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda w: w.permute(0, 2, 1).reshape(count * h, m)  # [n, m, h] -> [(n h), m]

    def heads_bias(count: int) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda b: b.view(count, h)  # [(n h)] -> [n, h]

    flat: Callable[[torch.Tensor], torch.Tensor] = lambda b: b.reshape(-1)
    identity: Callable[[torch.Tensor], torch.Tensor] = lambda w: w
    transpose: Callable[[torch.Tensor], torch.Tensor] = lambda w: w.T
    vector = lambda module, param, length: WeightTarget(module, param, (length,), identity, identity, False)  # noqa: E731
    targets = {
        "model.embed_tokens.weight": WeightTarget("embed", "W_E", (v, m), identity, identity, False),
        "model.norm.weight": vector("ln_final", "w", m),
    }
    if not spec.tie_word_embeddings:
        targets["lm_head.weight"] = WeightTarget("unembed", "W_U", (v, m), transpose, transpose, False)
    for layer in range(spec.n_layers):
        hf, tl = f"model.layers.{layer}", f"blocks.{layer}"
        targets.update({
            f"{hf}.input_layernorm.weight": vector(f"{tl}.ln1", "w", m),
            f"{hf}.post_attention_layernorm.weight": vector(f"{tl}.ln2", "w", m),
            f"{hf}.self_attn.q_proj.weight": WeightTarget(f"{tl}.attn", "W_Q", (n * h, m), heads_in(n), heads_out(n), True),
            f"{hf}.self_attn.k_proj.weight": WeightTarget(
                f"{tl}.attn", f"{kv}W_K", (nkv * h, m), heads_in(nkv), heads_out(nkv), True),
            f"{hf}.self_attn.v_proj.weight": WeightTarget(
                f"{tl}.attn", f"{kv}W_V", (nkv * h, m), heads_in(nkv), heads_out(nkv), True),
            f"{hf}.self_attn.o_proj.weight": WeightTarget(
                f"{tl}.attn", "W_O", (m, n * h), lambda w: w.view(m, n, h).permute(1, 2, 0),
                lambda w: w.permute(2, 0, 1).reshape(m, n * h), True,
            ),
            f"{hf}.mlp.gate_proj.weight": WeightTarget(f"{tl}.mlp", "W_gate", (f, m), transpose, transpose, True),
            f"{hf}.mlp.up_proj.weight": WeightTarget(f"{tl}.mlp", "W_in", (f, m), transpose, transpose, True),
            f"{hf}.mlp.down_proj.weight": WeightTarget(f"{tl}.mlp", "W_out", (m, f), transpose, transpose, True),
        })
        if spec.qkv_bias:
            for proj, param, count in (("q", "b_Q", n), ("k", f"{kv}b_K", nkv), ("v", f"{kv}b_V", nkv)):
                targets[f"{hf}.self_attn.{proj}_proj.bias"] = WeightTarget(
                    f"{tl}.attn", param, (count * h,), heads_bias(count), flat, False)
        if spec.o_bias:
            targets[f"{hf}.self_attn.o_proj.bias"] = vector(f"{tl}.attn", "b_O", m)
        if spec.has_qk_norm_weights:
            for norm, length in (("q_norm", n * h), ("k_norm", nkv * h)):
                unused = norm == spec.unused_norm
                targets[f"{hf}.self_attn.{norm}.weight"] = WeightTarget(
                    f"{tl}.attn.{norm}", "w", (length,), identity, identity, False, optional=unused, fill=1.0)
    return targets


_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


def _place(
    model: nn.Module,
    target: WeightTarget,
    tensor: torch.Tensor,
    *,
    device: torch.device,
    dtype: torch.dtype,
    quantization: Quantization,
    requires_grad: bool,
) -> None:
    module = model.get_submodule(target.module)
    if quantization == "nf4" and target.linear:
        import bitsandbytes as bnb

        param: nn.Parameter = bnb.nn.Params4bit(
            tensor.to(dtype), requires_grad=False, quant_type="nf4", compress_statistics=True, blocksize=64
        ).to(device)
    else:
        on_device = tensor.to(device=device)
        on_device = on_device.to(dtype) if on_device.dtype != dtype else on_device
        param = nn.Parameter(target.view(on_device), requires_grad=requires_grad)
    module._parameters[target.param] = param


def _materialise_remaining(model: nn.Module, device_for: Callable[[str], torch.device], dtype: torch.dtype,
                           requires_grad: bool) -> None:
    """Zero-fill parameters the checkpoint has no tensor for (TL's biases) and rebuild buffers,
    each on its module's device (``device_for(module path)``).

    These biases stay frozen at zero even with ``requires_grad``: the checkpoint has none, so
    training them would make a model that no checkpoint can hold. Biases the checkpoint does
    hold (Qwen2's q/k/v) were loaded before this and are left alone."""
    for path, module in model.named_modules():
        device = device_for(path)
        for name, param in list(module._parameters.items()):
            if param is not None and param.is_meta:
                if not name.lstrip("_").startswith("b_"):
                    raise CheckpointError(f"internal: parameter {name} of {type(module).__name__} was not loaded.")
                module._parameters[name] = nn.Parameter(
                    torch.zeros(param.shape, dtype=dtype, device=device), requires_grad=False
                )
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.is_meta:
                if name == "IGNORE":
                    module._buffers[name] = torch.tensor(-torch.inf, device=device)
                else:
                    module._buffers[name] = torch.empty(buf.shape, dtype=buf.dtype, device=device)


def load_model(
    source: Union[str, os.PathLike],
    *,
    dtype: Union[str, torch.dtype] = torch.float32,
    device: Union[str, torch.device] = "cpu",
    n_ctx: Optional[int] = None,
    quantization: Quantization = None,
    variant: Optional[Variant] = None,
    revision: Optional[str] = None,
    requires_grad: bool = False,
    n_devices: int = 1,
) -> DropeLensTransformer:
    """Load a RoPE or DroPE checkpoint (Llama, Llama-3, SmolLM, Qwen2, Mistral) as a :class:`DropeLensTransformer`.

    Args:
        source: checkpoint directory (``config.json``, ``*.safetensors`` [+ index], tokenizer
            files) or a hub id such as ``"SakanaAI/Llama-2-7b-hf-DroPE"`` (downloaded first).
        dtype: parameter and activation dtype (``torch.float32``, ``"bf16"``, ``"fp16"``). Attention
            scores and softmax are float32 whatever this is. With ``quantization="nf4"`` it is the
            compute dtype (float32 becomes bfloat16).
        device: where the weights go; they are streamed there one tensor at a time.
        n_ctx: the context length the tokenizer truncates strings to (default: the checkpoint's
            ``max_position_embeddings``). Token tensors of any length run; nothing is sized by it.
        quantization: ``None`` or ``"nf4"`` (bitsandbytes 4-bit NF4, double quantisation, CUDA).
        variant: ``"rope"``/``"drope"`` to override what the config says.
        revision: hub revision (branch, tag or commit) when ``source`` is a hub id.
        requires_grad: whether parameters require grad (False: analysis; True: training).
        n_devices: GPUs to split the layers over, starting at ``device`` (see
            :mod:`drope_lens.model.placement`); under ``torchrun`` a bare ``"cuda"`` is this rank's GPU.
    """
    directory = resolve_source(source, revision)
    config = read_config(directory)
    spec = parse_config(config, source=os.fspath(source), variant=variant, path=str(directory), revision=revision)
    torch_dtype = resolve_dtype(dtype)
    placement = plan_placement(device, n_devices, spec.n_layers)
    target_device = placement.base
    if quantization not in (None, "nf4"):
        raise ValueError(f"quantization={quantization!r}: allowed values are None and 'nf4'.")
    if quantization == "nf4":
        if target_device.type != "cuda":
            raise ValueError("quantization='nf4' needs a CUDA device (bitsandbytes 4-bit kernels); pass device='cuda'.")
        if torch_dtype == torch.float32:
            torch_dtype = torch.bfloat16
        if requires_grad:
            raise ValueError("quantization='nf4' loads frozen weights; requires_grad=True is not supported.")
    if n_ctx is not None and n_ctx <= 0:
        raise ValueError(f"n_ctx={n_ctx}: must be a positive number of tokens.")

    entries = index_checkpoint(directory)
    targets = weight_targets(spec)
    missing = [name for name, target in targets.items() if name not in entries and not target.optional]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CheckpointError(f"{directory}: missing weight(s) {shown} (config attention_type={spec.attention_type!r}).")
    unexpected = [
        name for name in entries
        if name not in targets and not name.endswith(_IGNORED_SUFFIXES)
        and not (spec.tie_word_embeddings and name == "lm_head.weight")
    ]
    if unexpected:
        raise CheckpointError(
            f"{directory}: unexpected weight(s) {unexpected[:5]} for a {spec.variant} checkpoint with "
            f"attention_type={spec.attention_type!r}; the config and the weights disagree."
        )
    absent = [name for name in targets if name not in entries]  # optional ones only, by now
    for name, target in targets.items():
        if name in absent:
            continue
        if entries[name].shape != target.shape:
            raise CheckpointError(
                f"{directory}: weight {name} has shape {list(entries[name].shape)} but config.json "
                f"implies {list(target.shape)}."
            )

    tokenizer = load_tokenizer(directory)
    prepends_bos = bool(tokenizer is not None and len(tokenizer.encode("")) > 0)
    cfg = build_config(
        spec,
        dtype=torch_dtype,
        device=str(target_device),
        n_ctx=n_ctx or spec.max_position_embeddings,
        prepends_bos=prepends_bos,
    )
    cfg.n_devices = n_devices  # TransformerLens moves the residual to each block's device
    with torch.device("meta"):
        model = DropeLensTransformer(cfg, spec, tokenizer=tokenizer)

    ordered = sorted((entries[name] for name in targets if name in entries), key=lambda e: (str(e.file), e.start))
    for entry, tensor in read_tensors_prefetched(ordered):  # reads overlap placement
        _place(
            model, targets[entry.name], tensor,
            device=placement.device_for(targets[entry.name].module), dtype=torch_dtype, quantization=quantization,
            requires_grad=requires_grad,
        )
        del tensor
    for name in absent:
        target = targets[name]
        _place(model, target, torch.full(target.shape, target.fill), device=placement.device_for(target.module),
               dtype=torch_dtype,
               quantization=quantization, requires_grad=requires_grad)
    if spec.tie_word_embeddings:
        # shared storage on one device; a copy on the last GPU when the layers are split
        model.unembed._parameters["W_U"] = nn.Parameter(model.embed.W_E.T.to(placement.device_for("unembed")),
                                                        requires_grad=requires_grad)
    _materialise_remaining(model, placement.device_for, torch_dtype, requires_grad)
    if quantization == "nf4":
        model.cfg.load_in_4bit = True
    model.quantization = quantization
    model.eval()
    return model
