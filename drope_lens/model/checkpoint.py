"""Read a checkpoint's ``config.json`` (Llama, Qwen2 or Mistral family) into a :class:`CheckpointSpec`.

Nothing here touches weights or executes checkpoint code: the config is parsed as plain JSON,
so DroPE checkpoints whose ``auto_map`` points at remote code load without
``trust_remote_code``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, Optional

Variant = Literal["rope", "drope"]
AttentionType = Literal["rope", "nope", "qk_norm_nope", "q_norm_nope", "k_norm_nope"]

#: DroPE attention types as upstream (SakanaAI/DroPE) names them.
DROPE_ATTENTION_TYPES: tuple[str, ...] = ("nope", "qk_norm_nope", "q_norm_nope", "k_norm_nope")
LLAMA_ARCHITECTURES = ("LlamaForCausalLM", "DroPELlamaForCausalLM")
LLAMA_MODEL_TYPES = ("llama", "llama_drope")


@dataclass(frozen=True)
class Family:
    """One model family: its ``transformers`` architecture/model type and the DroPE names.

    The DroPE names follow upstream SakanaAI/DroPE's factory (``custom_models/drope.py``):
    architecture ``f"DroPE{architecture}"``, model type ``f"{model_type}_drope"``. Upstream builds
    DroPE classes for Llama and Qwen2; Mistral's names apply the same rule (upstream has none).
    """

    name: str
    architecture: str
    model_type: str
    qkv_bias: bool  # q/k/v projections always carry biases (Qwen2)

    @property
    def drope_architecture(self) -> str:
        return f"DroPE{self.architecture}"

    @property
    def drope_model_type(self) -> str:
        return f"{self.model_type}_drope"


FAMILIES: dict[str, Family] = {
    "llama": Family("llama", "LlamaForCausalLM", "llama", qkv_bias=False),
    "qwen2": Family("qwen2", "Qwen2ForCausalLM", "qwen2", qkv_bias=True),
    "mistral": Family("mistral", "MistralForCausalLM", "mistral", qkv_bias=False),
}
#: Every architecture name drope_lens loads (RoPE and DroPE).
SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(
    name for f in FAMILIES.values() for name in (f.architecture, f.drope_architecture)
)
#: Every ``model_type`` drope_lens loads (RoPE and DroPE).
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(
    name for f in FAMILIES.values() for name in (f.model_type, f.drope_model_type)
)


@dataclass(frozen=True)
class RopeScaling:
    """Llama-3's RoPE frequency adjustment (``rope_type: "llama3"``), as ``transformers`` reads it.

    Wavelengths longer than ``original_max_position_embeddings / low_freq_factor`` are divided by
    ``factor``, shorter than ``original_max_position_embeddings / high_freq_factor`` kept, and
    those in between interpolated (``transformers.modeling_rope_utils._compute_llama3_parameters``).
    """

    rope_type: Literal["llama3"]
    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


class CheckpointError(ValueError):
    """A checkpoint that drope_lens cannot load faithfully; the message says what and why."""


@dataclass(frozen=True)
class CheckpointSpec:
    """Everything drope_lens needs to know about a Llama-family checkpoint.

    ``variant`` says whether attention applies rotary position embeddings (``"rope"``) or not
    (``"drope"``). ``attention_type`` is ``"rope"`` for RoPE models and one of
    :data:`DROPE_ATTENTION_TYPES` for DroPE models; the ``*_norm_*`` types put an RMSNorm over
    the full ``n_heads * d_head`` query (and/or key) projection before the head split.
    ``softmax_scale`` replaces ``1/sqrt(d_head)`` when set.
    """

    source: str
    variant: Variant
    attention_type: AttentionType
    softmax_scale: Optional[float]
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    architecture: str
    model_type: str
    bos_token_id: Optional[int] = None
    revision: Optional[str] = None
    path: Optional[str] = None
    family: str = "llama"
    qkv_bias: bool = False  # q/k/v projections have biases (Qwen2; Llama with attention_bias)
    o_bias: bool = False  # o_proj has a bias (Llama with attention_bias)
    rope_scaling: Optional[RopeScaling] = None
    sliding_window: Optional[int] = None  # keys visible to a query: itself and window - 1 before it
    sliding_layers: tuple[int, ...] = ()  # layers that use ``sliding_window`` (the rest see all keys)
    extra_config: tuple[tuple[str, Any], ...] = ()  # family fields written back by save_model

    @property
    def rotary(self) -> bool:
        """Whether attention rotates q and k (True for RoPE models)."""
        return self.variant == "rope"

    @property
    def norm_q(self) -> bool:
        """Whether a full-width RMSNorm is applied to the query projection."""
        return self.attention_type in ("qk_norm_nope", "q_norm_nope")

    @property
    def norm_k(self) -> bool:
        """Whether a full-width RMSNorm is applied to the key projection."""
        return self.attention_type in ("qk_norm_nope", "k_norm_nope")

    @property
    def has_qk_norm_weights(self) -> bool:
        """Upstream creates both q_norm and k_norm for every ``*_norm_nope`` type."""
        return self.attention_type in ("qk_norm_nope", "q_norm_nope", "k_norm_nope")

    @property
    def unused_norm(self) -> Optional[str]:
        """``"q_norm"``/``"k_norm"``: the norm a ``k_norm_nope``/``q_norm_nope`` checkpoint saves
        but never applies (it may be absent from the weights)."""
        return {"q_norm_nope": "k_norm", "k_norm_nope": "q_norm"}.get(self.attention_type)

    def window(self, layer: int) -> Optional[int]:
        """The sliding window of ``layer`` (None: every earlier key is visible)."""
        return self.sliding_window if layer in self.sliding_layers else None

    @property
    def grouped_query(self) -> bool:
        return self.n_kv_heads != self.n_heads

    @property
    def attn_scale(self) -> float:
        """Multiplier applied to q.k before the softmax."""
        return self.softmax_scale if self.softmax_scale is not None else 1.0 / math.sqrt(self.d_head)

    def with_variant(self, variant: Variant) -> "CheckpointSpec":
        """The same checkpoint read as another variant (used by ``variant=`` and ``to_drope``)."""
        if variant == self.variant:
            return self
        if variant == "drope":
            return replace(self, variant="drope", attention_type="nope")
        # DroPE weights forced to run with rotary: keep their q/k norms (they are weights).
        return replace(self, variant="rope")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _first(config: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if key in config and config[key] is not None:
            return config[key]
    return default


_LLAMA3_FIELDS = ("factor", "low_freq_factor", "high_freq_factor")


def _rope(config: dict[str, Any], path: str) -> tuple[float, Optional[RopeScaling]]:
    """``(rope_theta, scaling)`` from either config convention.

    ``transformers`` >= 5 writes ``rope_parameters: {"rope_type", "rope_theta", ...}``; older
    versions write a top-level ``rope_theta`` and ``rope_scaling: {"rope_type" or "type", ...}``
    (``None`` when unscaled). Both are read; ``rope_parameters`` wins where both are set, as in
    ``transformers``' ``standardize_rope_params``. Types other than ``"default"`` and
    ``"llama3"`` are refused.
    """
    params = config.get("rope_parameters")
    if not isinstance(params, dict) or not params:
        params = config.get("rope_scaling") if isinstance(config.get("rope_scaling"), dict) else {}
        field = "rope_scaling"
    else:
        field = "rope_parameters"
    if any(isinstance(value, dict) for value in params.values()):
        raise CheckpointError(
            f"{path}: {field} holds per-layer-type RoPE parameters ({sorted(params)}); drope_lens "
            "supports one RoPE for every layer."
        )
    theta = params.get("rope_theta", config.get("rope_theta"))
    theta = float(theta) if theta is not None else 10000.0
    if not (math.isfinite(theta) and theta > 0):
        raise CheckpointError(f"{path}: rope_theta={theta!r} must be a positive number.")
    partial = params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1, 1.0):
        raise CheckpointError(f"{path}: partial_rotary_factor={partial!r} is not supported (only 1.0).")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise CheckpointError(
            f"{path}: {field} rope_type={rope_type!r} is not supported; allowed RoPE types are "
            "'default' (Llama-2, SmolLM, Qwen2, Mistral) and 'llama3' (Llama-3.1/3.2)."
        )
    missing = [key for key in _LLAMA3_FIELDS if params.get(key) is None]
    if missing:
        raise CheckpointError(f"{path}: {field} of rope_type 'llama3' lacks {missing}.")
    # transformers: a top-level original_max_position_embeddings takes priority, then the one in
    # the RoPE dict, then max_position_embeddings.
    original = config.get("original_max_position_embeddings") or params.get("original_max_position_embeddings") \
        or config.get("max_position_embeddings")
    if original is None:
        raise CheckpointError(f"{path}: rope_type 'llama3' needs original_max_position_embeddings.")
    scaling = RopeScaling(
        rope_type="llama3",
        factor=float(params["factor"]),
        low_freq_factor=float(params["low_freq_factor"]),
        high_freq_factor=float(params["high_freq_factor"]),
        original_max_position_embeddings=int(original),
    )
    if not scaling.factor > 0 or not scaling.high_freq_factor > scaling.low_freq_factor > 0:
        raise CheckpointError(
            f"{path}: llama3 RoPE parameters {params!r} need factor > 0 and high_freq_factor > low_freq_factor > 0."
        )
    return theta, scaling


def _rope_theta(config: dict[str, Any], path: str) -> float:
    """rope_theta from either config convention (see :func:`_rope`)."""
    return _rope(config, path)[0]


def detect_family(config: dict[str, Any]) -> Optional[Family]:
    """The :class:`Family` named by ``architectures`` (RoPE or DroPE name) or, failing that,
    ``model_type``; None when neither names a supported family."""
    for architecture in config.get("architectures") or []:
        for family in FAMILIES.values():
            if architecture in (family.architecture, family.drope_architecture):
                return family
    if config.get("architectures"):
        return None
    model_type = str(config.get("model_type", ""))
    for family in FAMILIES.values():
        if model_type in (family.model_type, family.drope_model_type):
            return family
    return None


def detect_variant(config: dict[str, Any]) -> Variant:
    """``"drope"`` if the config marks a DroPE checkpoint, else ``"rope"``.

    A DroPE checkpoint is recognised as upstream SakanaAI/DroPE saves one: a ``model_type``
    ending in ``_drope`` (``llama_drope``, ``qwen2_drope``), an ``attention_type`` field, or an
    architecture name containing ``DroPE`` (``DroPELlamaForCausalLM``, ``DroPEQwen2ForCausalLM``).
    """
    architectures = config.get("architectures") or []
    if str(config.get("model_type", "")).endswith("_drope"):
        return "drope"
    if config.get("attention_type") is not None:
        return "drope"
    if any("drope" in str(a).lower() for a in architectures):
        return "drope"
    return "rope"


def _positive_int(config: dict[str, Any], field: str, where: str) -> Optional[int]:
    value = config.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CheckpointError(f"{where}: {field}={value!r} must be a positive integer or null.")
    return value


def _sliding(family: Family, config: dict[str, Any], n_layers: int, where: str) -> tuple[Optional[int], tuple[int, ...]]:
    """``(window, layers that use it)`` as ``transformers`` builds the family's masks.

    Mistral: ``sliding_window`` (null: none) applies to every layer. Qwen2: only with
    ``use_sliding_window``; the layers are those ``layer_types`` marks ``"sliding_attention"``,
    or by default layers ``>= max_window_layers``. Llama has no sliding window.
    """
    # transformers' config classes default sliding_window to 4096 when config.json lacks the field
    config = {"sliding_window": 4096, **config}
    if family.name == "mistral":
        window = _positive_int(config, "sliding_window", where)
        return (window, tuple(range(n_layers))) if window is not None else (None, ())
    if family.name == "qwen2":
        if not config.get("use_sliding_window", False):
            return None, ()
        window = _positive_int(config, "sliding_window", where)
        if window is None:
            return None, ()
        layer_types = config.get("layer_types")
        if layer_types is not None:
            if len(layer_types) < n_layers:
                raise CheckpointError(f"{where}: layer_types has {len(layer_types)} entries for {n_layers} layers.")
            layers = tuple(i for i in range(n_layers) if layer_types[i] == "sliding_attention")
        else:
            first = int(config.get("max_window_layers", 28))
            layers = tuple(range(first, n_layers))
        return (window, layers) if layers else (None, ())
    return None, ()


def parse_config(
    config: dict[str, Any],
    *,
    source: str,
    variant: Optional[Variant] = None,
    path: Optional[str] = None,
    revision: Optional[str] = None,
) -> CheckpointSpec:
    """Validate a parsed ``config.json`` and turn it into a :class:`CheckpointSpec`.

    Raises :class:`CheckpointError` naming the offending field for anything that is not a
    supported causal LM (:data:`SUPPORTED_ARCHITECTURES`) drope_lens can reproduce exactly.
    """
    where = path or source
    architectures = list(config.get("architectures") or [])
    model_type = str(config.get("model_type", ""))
    family = detect_family(config)
    if family is None:
        raise CheckpointError(
            f"{where}: unsupported architecture (architectures={architectures}, "
            f"model_type={model_type!r}). drope_lens loads these families: "
            + "; ".join(
                f"{f.name} (architectures {f.architecture}, {f.drope_architecture}; model_type "
                f"{f.model_type!r}, {f.drope_model_type!r})" for f in FAMILIES.values()
            ) + "."
        )
    architecture = next(
        (a for a in architectures if a in (family.architecture, family.drope_architecture)), family.architecture
    )
    if variant is not None and variant not in ("rope", "drope"):
        raise CheckpointError(f"variant={variant!r}: allowed values are 'rope', 'drope' or None.")

    detected = detect_variant(config)
    attention_type: str
    if detected == "drope":
        attention_type = str(config.get("attention_type") or "nope")
        if attention_type not in DROPE_ATTENTION_TYPES:
            raise CheckpointError(
                f"{where}: unknown attention_type {attention_type!r}; allowed DroPE attention "
                f"types are {list(DROPE_ATTENTION_TYPES)}."
            )
    else:
        attention_type = "rope"

    act = config.get("hidden_act", "silu")
    if act != "silu":
        raise CheckpointError(f"{where}: hidden_act={act!r} is not supported ({family.name} uses 'silu').")
    if config.get("mlp_bias"):
        raise CheckpointError(f"{where}: mlp_bias=true is not supported (the MLP of {family.architecture} has no biases).")
    attention_bias = bool(config.get("attention_bias", False)) and family.name == "llama"
    if config.get("attention_bias") and family.name != "llama":
        raise CheckpointError(f"{where}: attention_bias=true is not supported for {family.architecture}.")
    required = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    missing = [k for k in required if config.get(k) is None]
    if missing:
        raise CheckpointError(f"{where}: config.json lacks required field(s) {missing}.")

    d_model = int(config["hidden_size"])
    n_heads = int(config["num_attention_heads"])
    n_layers = int(config["num_hidden_layers"])
    n_kv_heads = int(_first(config, "num_key_value_heads", default=n_heads))
    d_head = int(_first(config, "head_dim", default=d_model // n_heads))
    if n_heads % n_kv_heads:
        raise CheckpointError(
            f"{where}: num_attention_heads={n_heads} is not a multiple of num_key_value_heads={n_kv_heads}."
        )
    if d_head % 2:
        raise CheckpointError(f"{where}: head_dim={d_head} must be even for rotary embeddings.")

    # Upstream (custom_models/attention.py, ``from_source``) sets each DroPE attention's
    # ``scaling`` (the multiplier of q.k) to ``config.softmax_scale`` when the config has that
    # field; a RoPE architecture never reads it.
    softmax_scale = config.get("softmax_scale") if detected == "drope" else None
    if softmax_scale is not None:
        if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)):
            raise CheckpointError(f"{where}: softmax_scale={softmax_scale!r} must be a positive number.")
        softmax_scale = float(softmax_scale)
        if not math.isfinite(softmax_scale) or softmax_scale <= 0:
            raise CheckpointError(f"{where}: softmax_scale={softmax_scale!r} must be a positive number.")

    theta, scaling = _rope(config, where)
    window, sliding_layers = _sliding(family, config, n_layers, where)
    extra: dict[str, Any] = {}
    if family.name == "qwen2":
        fields = ("use_sliding_window", "sliding_window", "max_window_layers", "layer_types")
        extra = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in fields}
    elif family.name == "mistral":
        extra = {"sliding_window": window}
    bos = config.get("bos_token_id")
    spec = CheckpointSpec(
        source=source,
        variant=detected,
        attention_type=attention_type,  # type: ignore[arg-type]
        softmax_scale=softmax_scale,
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        d_head=d_head,
        d_mlp=int(config["intermediate_size"]),
        d_vocab=int(config["vocab_size"]),
        eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        max_position_embeddings=int(config.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        architecture=architecture,
        model_type=model_type,
        bos_token_id=int(bos) if isinstance(bos, int) else None,
        revision=revision,
        path=path,
        family=family.name,
        qkv_bias=family.qkv_bias or attention_bias,
        o_bias=attention_bias,
        rope_scaling=scaling,
        sliding_window=window,
        sliding_layers=sliding_layers,
        extra_config=tuple(sorted(extra.items())),
    )
    if variant is not None:
        spec = spec.with_variant(variant)
    return spec


def read_config(directory: Path) -> dict[str, Any]:
    """Load ``directory/config.json`` as plain JSON, with errors that name the file."""
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(
            f"{directory}: no config.json. A checkpoint directory needs config.json, the "
            "safetensors weights (and model.safetensors.index.json when sharded) and tokenizer files."
        )
    try:
        return json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_path}: not valid JSON ({exc}).") from exc
