"""Per-head attention of RoPE and DroPE side by side, drawn with circuitsvis, offline.

:func:`attention_heads` runs both models on the same tokens, reads the real post-softmax
attention of one layer (``blocks.{layer}.attn.hook_pattern`` through ``run_with_cache``: after
rotary for RoPE, in float32 as drope_lens computes it) and renders circuitsvis
``AttentionHeads`` for each model next to each other. The circuitsvis JavaScript bundle that
ships in the circuitsvis package (``circuitsvis/dist/cdn/iife.js``) is inlined once per page, so
the HTML works without a network, in a browser and in Jupyter.

Long inputs -- the declared policy: circuitsvis draws ``T x T`` cells per head, which stalls a
browser beyond a few hundred tokens. The models always run on the whole text (so the patterns are
the ones the full context produces); the view shows a window of positions ``[start, stop)``, the
same for queries and keys. ``window=(start, stop)`` chooses it; without one, texts of at most
``max_tokens`` (default :data:`MAX_VIEW_TOKENS`) tokens are shown whole and longer ones show their
first ``max_tokens`` positions (BOS included). A window wider than ``max_tokens`` is an error.
The attention mass that rows of the window put on keys before it (not drawn) is reported.
"""

from __future__ import annotations

import html
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from jaxtyping import Float, Int

from .figures import COLORS, LABELS

#: Widest window shown by default (tokens); see the module docstring for the policy.
MAX_VIEW_TOKENS = 128


def circuitsvis_bundle() -> str:
    """The circuitsvis browser bundle shipped in the installed package, safe to inline in ``<script>``.

    Only the package's file is read: circuitsvis is located, not imported (its ``__init__`` imports
    every widget module and ``importlib_metadata``, none of which the bundle needs)."""
    import importlib.util

    spec = importlib.util.find_spec("circuitsvis")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("circuitsvis is not installed; the attention views inline its JavaScript bundle "
                                  "(pip install circuitsvis).")
    path = Path(list(spec.submodule_search_locations)[0]) / "dist" / "cdn" / "iife.js"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the circuitsvis package has no bundled JavaScript; reinstall circuitsvis.")
    text = path.read_text(encoding="utf-8")
    text = "\n".join(line for line in text.splitlines() if not line.startswith("//# sourceMappingURL"))
    return text.replace("</script", "<\\/script")


def attention_pattern(model, tokens: Int[torch.Tensor, "1 pos"], layer: int) -> Float[torch.Tensor, "head q_pos k_pos"]:
    """The model's real attention of ``layer`` (``hook_pattern``), float32, on the CPU."""
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer={layer}: the model has layers 0..{model.cfg.n_layers - 1}.")
    name = f"blocks.{layer}.attn.hook_pattern"
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=name, stop_at_layer=layer + 1)
    return cache[name][0].float().cpu()


@dataclass
class AttentionView:
    """Both models' attention of one layer on one text, ready to render (``_repr_html_``, :meth:`save`)."""

    layer: int
    tokens: list[str]  #: the tokens shown (the window)
    window: tuple[int, int]
    n_tokens: int  #: tokens of the whole text
    patterns: dict[str, np.ndarray]  #: variant -> [head, q, k] float32 within the window
    sources: dict[str, str]
    outside_mass: dict[str, float]  #: variant -> mean row mass on keys before the window
    note: str = ""
    heads: Optional[Sequence[int]] = None
    ids: dict[str, str] = field(default_factory=dict)

    def fragment(self, bundle: bool = True) -> str:
        """HTML of the two views (with the circuitsvis bundle inlined unless ``bundle=False``)."""
        columns = []
        scripts = []
        heads = list(self.heads) if self.heads is not None else list(range(next(iter(self.patterns.values())).shape[0]))
        for variant, pattern in self.patterns.items():
            element = self.ids.setdefault(variant, f"circuits-vis-{variant}-{uuid.uuid4().hex[:10]}")
            props = {
                "attention": np.round(pattern[heads], 5).tolist(),
                "tokens": self.tokens,
                "attentionHeadNames": [f"L{self.layer}H{h}" for h in heads],
                "maxValue": 1.0, "minValue": 0.0, "maskUpperTri": True,
                "positiveColor": COLORS.get(variant, "#444444"),
            }
            payload = json.dumps(props).replace("</", "<\\/")
            title = f"{LABELS.get(variant, variant)} — {self.sources.get(variant, '')}, layer {self.layer}"
            columns.append(f"<div class='dl-attn-col' style='flex:1;min-width:380px'><h3 style='color:"
                           f"{COLORS.get(variant, '#444')}'>{html.escape(title)}</h3><div id='{element}'></div></div>")
            scripts.append(f"CircuitsVis.render({json.dumps(element)}, CircuitsVis.AttentionHeads, {payload});")
        out = (f"<div class='dl-attn'><p style='font-size:13px;color:#555'>{html.escape(self.note)}</p>"
               f"<div style='display:flex;gap:24px;flex-wrap:wrap'>{''.join(columns)}</div></div>")
        if bundle:
            out += f"<script>{circuitsvis_bundle()}</script>"
        return out + "<script>" + "\n".join(scripts) + "</script>"

    def to_html(self) -> str:
        """A standalone HTML page (opens offline)."""
        return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
                f"<title>attention layer {self.layer}: RoPE vs DroPE</title></head>"
                "<body style='font-family:Helvetica,Arial,sans-serif;margin:20px'>"
                + self.fragment(bundle=True) + "</body></html>")

    def _repr_html_(self) -> str:  # Jupyter
        return self.fragment(bundle=True)

    def save(self, path: Union[str, Path]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_html(), encoding="utf-8")
        return path


def _window(n: int, window: Optional[tuple[int, int]], max_tokens: int,
            ran_on: str = "the whole text") -> tuple[tuple[int, int], str]:
    """The positions to draw and a note saying which; ``ran_on``: what the models ran on."""
    if window is None:
        if n <= max_tokens:
            return (0, n), f"all {n} tokens shown."
        return (0, max_tokens), (f"tokens 0..{max_tokens - 1} of {n} shown (policy: pass "
                                 f"window=(start, stop) to choose others; the models ran on {ran_on}).")
    start, stop = window
    if not (0 <= start < stop <= n):
        raise ValueError(f"window={window}: need 0 <= start < stop <= {n} (the text's tokens).")
    if stop - start > max_tokens:
        raise ValueError(f"window={window} spans {stop - start} tokens, more than max_tokens={max_tokens}; "
                         "circuitsvis draws T x T cells per head and stalls browsers on wide windows. "
                         "Pass a narrower window or a larger max_tokens.")
    return (start, stop), f"tokens {start}..{stop - 1} of {n} shown (the models ran on {ran_on})."


def attention_heads(
    rope,
    drope,
    text: str,
    layer: int,
    *,
    window: Optional[tuple[int, int]] = None,
    max_tokens: int = MAX_VIEW_TOKENS,
    heads: Optional[Sequence[int]] = None,
    prepend_bos: Optional[bool] = None,
    truncate: bool = False,
) -> AttentionView:
    """circuitsvis ``AttentionHeads`` of ``layer`` for the RoPE and the DroPE model on ``text``, side by side.

    Both models must tokenise ``text`` identically (a pair shares its tokenizer). ``heads``: a
    subset of head indices to draw (default all). ``prepend_bos``: as the models' defaults unless given.
    A text longer than a model's ``n_ctx`` is an error unless ``truncate=True`` (then cut, and said so).
    """
    from drope_lens.measurement.tokens import model_name, model_variant

    tokens = []
    for model in (rope, drope):
        ids = model.to_tokens(text, prepend_bos=prepend_bos if prepend_bos is not None else model.cfg.default_prepend_bos,
                              truncate=False)
        tokens.append(ids.cpu())
    if tokens[0].shape != tokens[1].shape or not torch.equal(tokens[0], tokens[1]):
        raise ValueError("the two models tokenise the text differently; a RoPE/DroPE pair must share its tokenizer.")
    n, cut = int(tokens[0].shape[1]), ""
    limit = min(rope.cfg.n_ctx, drope.cfg.n_ctx)
    if n > limit:
        if not truncate:
            raise ValueError(f"the text has {n} tokens, more than the models' n_ctx={limit}; pass truncate=True, "
                             "a shorter text, or models loaded with a larger n_ctx.")
        tokens = [t[:, :limit] for t in tokens]
        cut, n = f"The text has {n} tokens, more than n_ctx={limit}: the models ran on its first {limit} only; ", limit
    ran_on = f"those {n} tokens" if cut else "the whole text"
    if cut and window is None and n <= max_tokens:
        (start, stop), note = (0, n), f"all {n} are shown."
    else:
        (start, stop), note = _window(n, window, max_tokens, ran_on)
    note = cut + note
    strings = rope.to_str_tokens(tokens[0][0])
    patterns, sources, outside = {}, {}, {}
    for model in (rope, drope):
        variant = model_variant(model)
        full = attention_pattern(model, tokens[0], layer).numpy()  # [head, q, k]
        patterns[variant] = full[:, start:stop, start:stop]
        outside[variant] = float(full[:, start:stop, :start].sum(-1).mean()) if start > 0 else 0.0
        sources[variant] = model_name(model)
    if start > 0:
        note += " Row mass on keys before the window (not drawn), mean over heads and rows: " + ", ".join(
            f"{LABELS.get(v, v)} {m:.3f}" for v, m in outside.items()) + "."
    if heads is not None:
        n_heads = next(iter(patterns.values())).shape[0]
        bad = [h for h in heads if not 0 <= h < n_heads]
        if bad:
            raise ValueError(f"heads={list(heads)}: {bad} out of range 0..{n_heads - 1}.")
    return AttentionView(layer, [str(s) for s in strings[start:stop]], (start, stop), n, patterns, sources, outside,
                         note=f"Layer {layer}, real post-softmax attention (hook_pattern, float32). " + note,
                         heads=list(heads) if heads is not None else None)
