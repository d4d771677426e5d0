"""The HookedTransformer that drope_lens builds for RoPE and DroPE checkpoints (Llama, Qwen2, Mistral)."""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from jaxtyping import Float, Int
from transformer_lens import HookedTransformer
from transformer_lens.components import Embed, Unembed
from transformer_lens.config.hooked_transformer_config import HookedTransformerConfig

from .attention import (
    AttentionSettings,
    Backend,
    LensAttention,
    LensGroupedQueryAttention,
)
from .block import LensTransformerBlock
from .checkpoint import CheckpointSpec
from .cpu_matmul import linear as dense
from .mlp import LensGatedMLP
from .norm import LensRMSNorm


def attention_settings(spec: CheckpointSpec, layer: int = 0) -> AttentionSettings:
    """The attention settings of ``layer`` (layers differ only in their sliding window)."""
    return AttentionSettings(
        rotary=spec.rotary,
        rope_theta=spec.rope_theta,
        norm_q=spec.norm_q,
        norm_k=spec.norm_k,
        has_norm_weights=spec.has_qk_norm_weights,
        scale=spec.attn_scale,
        rope_scaling=spec.rope_scaling,
        sliding_window=spec.window(layer),
    )


def build_config(
    spec: CheckpointSpec, *, dtype: torch.dtype, device: str, n_ctx: int, prepends_bos: bool
) -> HookedTransformerConfig:
    """A HookedTransformerConfig for the checkpoint (no weight processing, no init)."""
    name = spec.source.rstrip("/").split("/")[-1]
    return HookedTransformerConfig(
        model_name=name,
        d_model=spec.d_model,
        d_head=spec.d_head,
        n_heads=spec.n_heads,
        d_mlp=spec.d_mlp,
        n_layers=spec.n_layers,
        n_ctx=n_ctx,
        d_vocab=spec.d_vocab,
        act_fn="silu",
        eps=spec.eps,
        normalization_type="RMS",
        final_rms=True,
        gated_mlp=True,
        # "rotary" means "no additive position embedding"; whether q/k rotate is the attention's call.
        positional_embedding_type="rotary",
        rotary_dim=spec.d_head,
        rotary_base=spec.rope_theta,
        rotary_adjacent_pairs=False,
        n_key_value_heads=spec.n_kv_heads if spec.grouped_query else None,
        attn_scale=1.0 / spec.attn_scale,
        original_architecture="LlamaForCausalLM",
        tokenizer_prepends_bos=prepends_bos,
        default_prepend_bos=prepends_bos,
        dtype=dtype,
        device=device,
        init_weights=False,
    )


class DropeLensTransformer(HookedTransformer):
    """A ``HookedTransformer`` for a RoPE or DroPE checkpoint of a supported family.

    Every family (Llama, Llama-3, SmolLM, Qwen2, Mistral) gets the same modules and hook names.

    Differences from stock TransformerLens: attention and MLP modules are drope_lens's (see
    :mod:`drope_lens.model.attention`), token ids are checked against the vocabulary before embedding,
    the tokenizer keeps the checkpoint's own BOS behaviour, and ``lens`` holds the
    :class:`~drope_lens.model.checkpoint.CheckpointSpec` (variant, attention type, softmax scale,
    source). Everything else (hooks, ``run_with_cache``, ``generate``, ``ActivationCache``) is
    TransformerLens's.
    """

    lens: CheckpointSpec
    quantization: Optional[str] = None
    position_offset: int = 0

    def __init__(self, cfg: HookedTransformerConfig, spec: CheckpointSpec, tokenizer=None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            super().__init__(cfg, tokenizer=tokenizer, move_to_device=False)
        self.lens = spec
        self._warned_rope_length = False
        self.embed.__class__ = CheckedEmbed  # same parameters, checked forward
        self.embed.source = spec.source
        attention_class = LensGroupedQueryAttention if spec.grouped_query else LensAttention
        for index, block in enumerate(self.blocks):
            block.__class__ = LensTransformerBlock  # same parameters and hooks, ln1 computed once
            settings = attention_settings(spec, index)
            block.attn = attention_class(self.cfg, "global", index)  # the window lives in settings
            block.attn.init_lens(settings)
            block.mlp = LensGatedMLP(self.cfg)
            for norm in (block.ln1, block.ln2):
                norm.__class__ = LensRMSNorm  # same parameters and hooks, fused CUDA path
        self.ln_final.__class__ = LensRMSNorm
        self.unembed.__class__ = LensUnembed  # same parameters and hooks
        self.setup()  # rebuild the hook dictionary with the new modules

    # -- variant ---------------------------------------------------------------------------
    @property
    def variant(self) -> str:
        """``"rope"`` or ``"drope"``."""
        return self.lens.variant

    def set_attention_backend(self, backend: Backend) -> None:
        """``"auto"`` (SDPA unless scores/pattern are hooked), ``"sdpa"`` or ``"explicit"``."""
        if backend not in ("auto", "sdpa", "explicit"):
            raise ValueError(f"backend={backend!r}: allowed values are 'auto', 'sdpa', 'explicit'.")
        for block in self.blocks:
            block.attn.backend = backend

    def set_fused_kernels(self, enabled: bool) -> None:
        """Use (the default) or bypass the fused CUDA kernels of :mod:`drope_lens.model.fused` for
        RMSNorm, the SiLU gate and rotary. They apply only on CUDA outside autograd and compute
        the same roundings as the eager code; bypassing them is for comparisons and debugging."""
        for module in self.modules():
            if hasattr(type(module), "fused_kernels"):
                module.fused_kernels = bool(enabled)

    # -- tokenizer: keep the checkpoint's BOS behaviour -----------------------------------
    def set_tokenizer(self, tokenizer, default_padding_side=None):  # type: ignore[override]
        """Attach ``tokenizer`` as the checkpoint defines it.

        Stock TransformerLens re-creates Llama-family tokenizers with ``add_bos_token=True``;
        here the tokenizer is kept as saved, and ``cfg.default_prepend_bos`` follows whether it
        prepends BOS itself (Llama-2: yes; SmolLM: no).
        """
        if default_padding_side not in ("left", "right", None):
            raise ValueError(f"default_padding_side={default_padding_side!r}: use 'left', 'right' or None.")
        self.tokenizer = tokenizer
        if default_padding_side is not None:
            tokenizer.padding_side = default_padding_side
        if tokenizer.padding_side is None:
            tokenizer.padding_side = "right"
        prepends = len(tokenizer.encode("")) > 0
        self.cfg.tokenizer_prepends_bos = prepends
        self.cfg.default_prepend_bos = prepends
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token

    # -- forward: absolute positions, RoPE length warning ------------------------------------
    def forward(self, *args, **kwargs):  # type: ignore[override]
        """TransformerLens's forward, recording ``position_offset`` (the KV-cache length).

        Position-targeted hooks in :mod:`drope_lens.hooks` read ``model.position_offset`` to act
        on absolute positions: it is 0 for a plain forward and the number of cached tokens while
        generating with ``use_past_kv_cache=True`` (TransformerLens's ``generate`` calls
        ``forward`` with embeddings, so this is the one place every path passes through).
        """
        cache = kwargs.get("past_kv_cache", args[10] if len(args) > 10 else None)
        offset = cache[0].past_keys.shape[1] if cache is not None else 0
        self.position_offset = offset
        inputs = kwargs.get("input", args[0] if args else None)
        if self.lens.rotary and not self._warned_rope_length and isinstance(inputs, torch.Tensor):
            length = offset + (inputs.shape[1] if inputs.ndim >= 2 else inputs.shape[0])
            if length > self.lens.max_position_embeddings:
                self._warned_rope_length = True
                warnings.warn(
                    f"{self.lens.source}: {length} tokens exceed the RoPE model's trained context of "
                    f"{self.lens.max_position_embeddings}; rotary angles are extrapolated (this is "
                    "allowed, it is an experiment).",
                    stacklevel=2,
                )
        return super().forward(*args, **kwargs)

    def to_tokens(self, input, prepend_bos=None, padding_side=None, move_to_device=True, truncate=True):  # type: ignore[override]
        """TransformerLens's ``to_tokens``, but truncation to ``n_ctx`` is announced, never silent.

        ``n_ctx`` defaults to the checkpoint's trained context; long-context experiments pass
        ``truncate=False`` or load with a larger ``n_ctx``.
        """
        tokens = super().to_tokens(input, prepend_bos, padding_side, move_to_device, truncate=False)
        if truncate and tokens.shape[-1] > self.cfg.n_ctx:
            warnings.warn(
                f"{tokens.shape[-1]} tokens truncated to n_ctx={self.cfg.n_ctx}; pass truncate=False, or "
                "load_model(..., n_ctx=...), to keep them all.",
                stacklevel=2,
            )
            tokens = super().to_tokens(input, prepend_bos, padding_side, move_to_device, truncate=True)
        return tokens

    def input_to_embed(self, input, *args, **kwargs):  # type: ignore[override]
        if isinstance(input, (str, list)) and self.tokenizer is None:
            raise ValueError(f"{self.lens.source} was loaded without a tokenizer; pass token ids instead of text.")
        return super().input_to_embed(input, *args, **kwargs)


class CheckedEmbed(Embed):
    """Token embedding that names out-of-vocabulary ids instead of failing inside an index op
    (an IndexError on CPU, a device-side assert that kills the CUDA context on GPU)."""

    source: str = "the model"

    def forward(self, tokens: Int[torch.Tensor, "batch pos"]) -> Float[torch.Tensor, "batch pos d_model"]:
        if tokens.numel():
            low, high = int(tokens.min()), int(tokens.max())
            if low < 0 or high >= self.cfg.d_vocab:
                bad = high if high >= self.cfg.d_vocab else low
                raise ValueError(
                    f"token id {bad} is outside the vocabulary [0, {self.cfg.d_vocab}) of {self.source}; "
                    "check that the tokenizer matches the model."
                )
        return super().forward(tokens)


class LensUnembed(Unembed):
    """TransformerLens ``Unembed`` (``F.linear`` with the ``[vocab, d_model]`` weight, as HF's
    ``lm_head``) whose float32 CPU product may go through oneDNN (:mod:`drope_lens.model.cpu_matmul`)."""

    def forward(self, residual: Float[torch.Tensor, "batch pos d_model"]) -> Float[torch.Tensor, "batch pos d_vocab_out"]:  # type: ignore[override]
        residual = self.hook_in(residual)
        return self.hook_out(dense(residual, self.W_U.T.contiguous(), self.b_U))


def is_drope(model: HookedTransformer) -> bool:
    """True if ``model`` runs attention without rotary position embeddings."""
    spec = getattr(model, "lens", None)
    if spec is None:
        raise TypeError("is_drope() needs a model loaded by drope_lens (load_model/load_pair/to_drope).")
    return spec.variant == "drope"
