"""Read a Llama-family checkpoint's ``config.json`` into a validated :class:`CheckpointSpec`.

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


def _rope_theta(config: dict[str, Any], path: str) -> float:
    """rope_theta from either config convention; any RoPE scaling other than 'default' is refused."""
    params = config.get("rope_parameters")
    for field in ("rope_parameters", "rope_scaling"):
        value = config.get(field)
        if isinstance(value, dict) and value.get("rope_type", value.get("type", "default")) != "default":
            raise CheckpointError(
                f"{path}: {field}={value!r} is not supported; drope_lens implements plain RoPE "
                "('default'), as used by Llama-2 and SmolLM."
            )
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    return float(config.get("rope_theta", 10000.0))


def detect_variant(config: dict[str, Any]) -> Variant:
    """``"drope"`` if the config marks a DroPE checkpoint, else ``"rope"``.

    A DroPE checkpoint is recognised by ``model_type == "llama_drope"``, an ``attention_type``
    field, or an architecture name containing ``DroPE``.
    """
    architectures = config.get("architectures") or []
    if config.get("model_type") == "llama_drope":
        return "drope"
    if config.get("attention_type") is not None:
        return "drope"
    if any("drope" in str(a).lower() for a in architectures):
        return "drope"
    return "rope"


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
    Llama-architecture causal LM drope_lens can reproduce exactly.
    """
    where = path or source
    architectures = list(config.get("architectures") or [])
    model_type = str(config.get("model_type", ""))
    architecture = next((a for a in architectures if a in LLAMA_ARCHITECTURES), None)
    if architecture is None:
        if model_type in LLAMA_MODEL_TYPES and not architectures:
            architecture = "LlamaForCausalLM"
        else:
            raise CheckpointError(
                f"{where}: unsupported architecture (architectures={architectures}, "
                f"model_type={model_type!r}). drope_lens loads Llama-architecture causal LMs "
                f"(architectures {list(LLAMA_ARCHITECTURES)}, model_type {list(LLAMA_MODEL_TYPES)})."
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
        raise CheckpointError(f"{where}: hidden_act={act!r} is not supported (Llama uses 'silu').")
    for flag in ("attention_bias", "mlp_bias"):
        if config.get(flag):
            raise CheckpointError(f"{where}: {flag}=true is not supported (Llama has no biases).")
    required = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    missing = [k for k in required if config.get(k) is None]
    if missing:
        raise CheckpointError(f"{where}: config.json lacks required field(s) {missing}.")

    d_model = int(config["hidden_size"])
    n_heads = int(config["num_attention_heads"])
    n_kv_heads = int(_first(config, "num_key_value_heads", default=n_heads))
    d_head = int(_first(config, "head_dim", default=d_model // n_heads))
    if n_heads % n_kv_heads:
        raise CheckpointError(
            f"{where}: num_attention_heads={n_heads} is not a multiple of num_key_value_heads={n_kv_heads}."
        )
    if d_head % 2:
        raise CheckpointError(f"{where}: head_dim={d_head} must be even for rotary embeddings.")

    softmax_scale = config.get("softmax_scale")
    if softmax_scale is not None:
        softmax_scale = float(softmax_scale)
        if not math.isfinite(softmax_scale) or softmax_scale <= 0:
            raise CheckpointError(f"{where}: softmax_scale={softmax_scale!r} must be a positive number.")

    bos = config.get("bos_token_id")
    spec = CheckpointSpec(
        source=source,
        variant=detected,
        attention_type=attention_type,  # type: ignore[arg-type]
        softmax_scale=softmax_scale,
        n_layers=int(config["num_hidden_layers"]),
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        d_head=d_head,
        d_mlp=int(config["intermediate_size"]),
        d_vocab=int(config["vocab_size"]),
        eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_theta=_rope_theta(config, where),
        max_position_embeddings=int(config.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        architecture=architecture,
        model_type=model_type,
        bos_token_id=int(bos) if isinstance(bos, int) else None,
        revision=revision,
        path=path,
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
