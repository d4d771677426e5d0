"""Streaming attention statistics against independent attention weights and the hook_pattern path.

References: Hugging Face ``LlamaForCausalLM`` eager attention weights (``output_attentions=True``,
float32) for RoPE; for DroPE, attention computed here by hand (no rotary, float64) from the HF
reference's q/k projections. The statistics of those patterns are computed here with plain loops.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

import drope_lens as dl
from drope_lens.measurement import attention_stats_triton
from drope_lens.measurement.attention_stats import attention_stats, stats_from_pattern
from drope_lens.hooks import capture_attention_stats

ROWS = [[1, 5, 9, 17, 33, 40, 2, 61, 70, 88, 12, 3, 44, 45, 46, 90, 91, 7, 8, 20],
        [1, 44, 45, 46, 7, 8, 20, 21, 22, 23, 60, 61, 62]]
WINDOW, MAX_DISTANCE = 3, 8
FIELDS = ("sink_score", "entropy", "local_mass", "local_mass_no_bos", "distance", "received")


def _left_padded(pad: int):
    length = max(map(len, ROWS))
    tokens = torch.tensor([[pad] * (length - len(r)) + r for r in ROWS])
    mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in ROWS])
    return tokens, mask


def loop_statistics(pattern: torch.Tensor, start: int, end: int) -> dict[str, torch.Tensor]:
    """Statistics of one row's ``[head, T, T]`` pattern, by plain loops over query positions."""
    n_heads = pattern.shape[0]
    p = pattern.double()
    out = {name: torch.zeros(n_heads, dtype=torch.float64) for name in FIELDS[:4]}
    out["distance"] = torch.zeros(n_heads, MAX_DISTANCE, dtype=torch.float64)
    out["received"] = torch.zeros(n_heads, p.shape[-1], dtype=torch.float64)
    rows = list(range(start + 1, end))
    for h in range(n_heads):
        for t in rows:
            row = p[h, t]
            out["sink_score"][h] += row[start]
            out["entropy"][h] -= sum(float(x) * math.log(float(x)) for x in row if x > 0)
            for d in range(WINDOW):
                if t - d >= 0:
                    out["local_mass"][h] += row[t - d]
                    if t - d != start:
                        out["local_mass_no_bos"][h] += row[t - d]
            for d in range(MAX_DISTANCE):
                if t - d >= 0:
                    out["distance"][h, d] += row[t - d]
            out["received"][h] += row
    for name in FIELDS[:5]:
        out[name] /= len(rows)
    return out


def assert_matches(stats, references: list[dict], starts: list[int], atol=1e-5):
    for b, ref in enumerate(references):
        for name in FIELDS:
            got = getattr(stats, name)[b].double().cpu()
            torch.testing.assert_close(got, ref[name], rtol=0, atol=atol, msg=f"row {b} {name}")
        assert int(stats.n_queries[b]) == len(ROWS[b]) - 1


def _capture(model, tokens, mask, **kwargs):
    store: dict = {}
    hooks = capture_attention_stats(store, model, window=WINDOW, max_distance=MAX_DISTANCE, received=True,
                                    attention_mask=mask, **kwargs)
    with torch.inference_mode():
        model.run_with_hooks(tokens, attention_mask=mask, return_type=None, fwd_hooks=hooks)
    return store


def test_rope_statistics_match_hf_eager_attention(checkpoint_factory):
    path, ref = checkpoint_factory(n_kv_heads=2)  # grouped-query attention
    model = dl.load_model(path)
    tokens, mask = _left_padded(model.tokenizer.pad_token_id)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # HF needs the rows' own positions under left padding
    with torch.no_grad():
        attentions = ref(tokens, attention_mask=mask, position_ids=positions, output_attentions=True).attentions
    store = _capture(model, tokens, mask)
    starts = [tokens.shape[1] - len(r) for r in ROWS]
    for layer, pattern in enumerate(attentions):
        references = [loop_statistics(pattern[b], starts[b], tokens.shape[1]) for b in range(len(ROWS))]
        assert_matches(store[layer], references, starts)


@pytest.mark.parametrize("attention_type,softmax_scale", [("nope", None), ("qk_norm_nope", 0.07)])
def test_drope_statistics_match_a_hand_written_no_rotary_attention(checkpoint_factory, attention_type, softmax_scale):
    path, ref = checkpoint_factory(attention_type=attention_type, softmax_scale=softmax_scale, n_kv_heads=2)
    model = dl.load_model(path)
    tokens = torch.tensor([ROWS[0]])
    captured, handles = {}, []
    for layer, block in enumerate(ref.model.layers):
        for name in ("q_proj", "k_proj"):  # for q/k-norm variants the outputs are post-norm (upstream order)
            def hook(mod, inp, out, key=(layer, name[0])):
                captured[key] = out[0].detach().double()
            handles.append(getattr(block.self_attn, name).register_forward_hook(hook))
    with torch.no_grad():
        ref(tokens)
    for handle in handles:
        handle.remove()
    n_heads, n_kv, d_head = 4, 2, 16
    scale = softmax_scale if softmax_scale is not None else 1 / math.sqrt(d_head)
    store = _capture(model, tokens, None)
    for layer in range(ref.config.num_hidden_layers):
        q = captured[(layer, "q")].reshape(-1, n_heads, d_head)
        k = captured[(layer, "k")].reshape(-1, n_kv, d_head).repeat_interleave(n_heads // n_kv, dim=1)
        scores = torch.einsum("thd,shd->hts", q, k) * scale
        causal = torch.ones(len(q), len(q), dtype=torch.bool).tril()
        pattern = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
        assert_matches(store[layer], [loop_statistics(pattern, 0, len(q))], [0])


STREAMING_CASES = [
    pytest.param(None, None, 2, torch.float32, "left", id="rope-gqa-fp32-left"),
    pytest.param(None, None, 4, torch.bfloat16, None, id="rope-bf16"),
    pytest.param("nope", 0.07, 2, torch.bfloat16, "left", id="drope-scale-gqa-bf16-left"),
    pytest.param("nope", None, 4, torch.float32, "right", id="drope-fp32-right"),
    pytest.param("qk_norm_nope", None, 2, torch.float32, None, id="drope-qknorm-gqa-fp32"),
    pytest.param("qk_norm_nope", 0.07, 4, torch.bfloat16, "left", id="drope-qknorm-scale-bf16-left"),
]


def _streaming_vs_pattern(checkpoint_factory, attention_type, softmax_scale, n_kv, dtype, padding, backend):
    path, _ = checkpoint_factory(attention_type=attention_type, softmax_scale=softmax_scale, n_kv_heads=n_kv)
    device = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"
    model = dl.load_model(path, dtype=dtype, device=device)
    pad = model.tokenizer.pad_token_id
    if padding == "left":
        tokens, mask = _left_padded(pad)
    elif padding == "right":
        length = max(map(len, ROWS))
        tokens = torch.tensor([r + [pad] * (length - len(r)) for r in ROWS])
        mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in ROWS])
    else:
        tokens, mask = torch.tensor([ROWS[0], ROWS[0][::-1]]), None
    patterns: dict = {}
    hooks = [(f"blocks.{layer}.attn.hook_pattern", lambda x, hook: patterns.__setitem__(hook.layer(), x.clone()))
             for layer in range(model.cfg.n_layers)]
    streamed: dict = {}
    hooks += capture_attention_stats(streamed, model, window=WINDOW, max_distance=MAX_DISTANCE, received=True,
                                     attention_mask=mask, backend=backend)
    tokens, mask = tokens.to(device), (mask.to(device) if mask is not None else None)
    with torch.inference_mode():
        model.run_with_hooks(tokens, attention_mask=mask, return_type=None, fwd_hooks=hooks)
    for layer in range(model.cfg.n_layers):
        want = stats_from_pattern(patterns[layer], attention_mask=mask, window=WINDOW, max_distance=MAX_DISTANCE,
                                  received=True)
        for name in FIELDS + ("n_queries",):
            torch.testing.assert_close(getattr(streamed[layer], name).double(), getattr(want, name).double(),
                                       rtol=0, atol=1e-5, msg=f"layer {layer} {name}")


@pytest.mark.parametrize("attention_type,softmax_scale,n_kv,dtype,padding", STREAMING_CASES)
def test_streaming_equals_hook_pattern_path(checkpoint_factory, attention_type, softmax_scale, n_kv, dtype, padding):
    _streaming_vs_pattern(checkpoint_factory, attention_type, softmax_scale, n_kv, dtype, padding, "torch")


def _triton_installed() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
needs_triton = pytest.mark.skipif(
    not (INTERPRET or torch.cuda.is_available()) or attention_stats_triton._kernels() is None,
    reason="needs CUDA and Triton, or TRITON_INTERPRET=1 with Triton installed (see the next test)",
)


@pytest.fixture
def triton_backend():
    return None


@pytest.mark.skipif(INTERPRET or torch.cuda.is_available() or not _triton_installed(),
                    reason="the Triton tests run directly on CUDA or under TRITON_INTERPRET=1")
def test_triton_kernels_under_the_interpreter():
    """Triton is installed but there is no GPU: run the Triton tests through its interpreter (the
    interpreter must be chosen before Triton is first imported, hence a subprocess)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__,
                             "-k", "triton and not interpreter"], env=env, capture_output=True, text=True,
                            cwd=os.path.dirname(__file__), timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout.splitlines()[-1], result.stdout[-1000:]


# the interpreter runs each program in Python: one case there, three on a GPU
@needs_triton
@pytest.mark.parametrize("attention_type,softmax_scale,n_kv,dtype,padding",
                         [STREAMING_CASES[2]] if INTERPRET else [STREAMING_CASES[0], STREAMING_CASES[2], STREAMING_CASES[5]])
def test_triton_kernel_equals_hook_pattern_path(checkpoint_factory, triton_backend, attention_type, softmax_scale,
                                                n_kv, dtype, padding):
    if dtype == torch.bfloat16 and not torch.cuda.is_available():
        dtype = torch.float32  # the interpreter's bf16 dot is not the GPU's; it checks the float32 arithmetic
    _streaming_vs_pattern(checkpoint_factory, attention_type, softmax_scale, n_kv, dtype, padding, "triton")


@needs_triton
def test_triton_online_entropy_keeps_precision_with_huge_scores(triton_backend):
    """DroPE-like scores (|s| ~ 1e4, nearly one-hot rows): the online entropy stays within 1e-5 of
    a float64 computation (``lse - sum p s`` in float32 would be off by ~|s| * 6e-8 ~ 1e-3)."""
    gen = torch.Generator().manual_seed(3)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n = 70 if INTERPRET else 150
    q = (torch.randn(1, n, 2, 16, generator=gen) * 30).to(device)
    k = (torch.randn(1, n, 2, 16, generator=gen) * 30).to(device)
    for scale in (3.0, 0.01):
        got = attention_stats_triton.attention_stats(q, k, scale, window=4, max_distance=20, received=True,
                                                      sliding_window=40)
        scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) * scale
        index = torch.arange(n, device=device)
        visible = (index[None, :] <= index[:, None]) & (index[:, None] - index[None, :] < 40)
        pattern = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
        plogp = torch.where(pattern > 0, pattern * pattern.clamp(min=1e-300).log(), torch.zeros_like(pattern))
        entropy = -plogp.sum(-1)[..., 1:].mean(-1)
        assert float(scores.abs().max()) > 1e4 or scale < 1
        torch.testing.assert_close(got.entropy.double(), entropy, rtol=0, atol=1e-5)
        # the other statistics are probabilities of single keys: as exact as float32 scores allow
        want = stats_from_pattern(pattern, window=4, max_distance=20, received=True)
        for name in FIELDS:
            torch.testing.assert_close(getattr(got, name).double(), getattr(want, name).double(), rtol=0,
                                       atol=1e-3 if scale > 1 else 1e-5, msg=name)


def _float64_pattern(q, k, scale, start, end, offset, sliding):
    """Softmax of float64 scores by hand (rows that see no key, e.g. padding, stay all zero)."""
    rep = q.shape[2] // k.shape[2]
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double().repeat_interleave(rep, dim=2)) * scale
    rows = torch.arange(q.shape[1], device=q.device)[:, None] + offset
    keys = torch.arange(k.shape[1], device=q.device)[None, :]
    visible = (keys <= rows) & (rows - keys < sliding)
    visible = visible[None] & (keys >= start[:, None, None]) & (keys < end[:, None, None])  # [batch, q, k]
    pattern = torch.softmax(scores.masked_fill(~visible[:, None], float("-inf")), dim=-1)
    return torch.nan_to_num(pattern, nan=0.0)


# the default tiles (long and short sequences' settings), and small tiles (several whole tiles per
# block; d_head 24: padded D). With small tiles the 20 distances gathered span two key tiles, so
# whole (unmasked) tiles hold some of them: in every block of the causal case, and with a window of
# 80 (not of 40) under a KV cache.
WHOLE_TILE_CASES = [
    pytest.param("CONFIG", 16, 300, 300, None, id="default-tiles-causal"),
    pytest.param("CONFIG", 16, 300, 220, 100, id="default-tiles-window-kvcache"),
    pytest.param("SHORT_CONFIG", 16, 300, 300, None, id="short-sequence-tiles-causal"),
    pytest.param("SHORT_CONFIG", 16, 300, 220, 100, id="short-sequence-tiles-window-kvcache"),
    pytest.param((32, 16, 4, 2), 24, 120, 120, None, id="small-tiles-causal"),
    pytest.param((32, 16, 4, 2), 24, 120, 90, 40, id="small-tiles-window-kvcache"),
    pytest.param((32, 16, 4, 2), 24, 120, 90, 80, id="small-tiles-wide-window-kvcache"),
]


@needs_triton
@pytest.mark.parametrize("config,d_head,n_k,n_q,sliding", WHOLE_TILE_CASES)
def test_triton_whole_tiles_match_float64_attention(triton_backend, monkeypatch, config, d_head, n_k, n_q, sliding):
    """Long enough rows that most key (query) tiles are seen whole and skip the masks: the statistics
    still equal those of a float64 softmax, with left and right padding, grouped-query heads, a
    sliding window and queries that are the last ``n_q`` of the keys (KV cache)."""
    chosen = (getattr(attention_stats_triton, config) if isinstance(config, str)
              else attention_stats_triton.KernelConfig(*config))
    monkeypatch.setattr(attention_stats_triton, "config_for", lambda n_queries: chosen)
    gen = torch.Generator().manual_seed(5)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtypes = [torch.float32, torch.bfloat16] if device == "cuda" else [torch.float32]
    left, right = n_k // 8, n_k - 10
    mask = torch.ones(3, n_k, dtype=torch.long)
    mask[1, :left] = 0  # left padding
    mask[2, right:] = 0  # right padding
    start = torch.tensor([0, left, 0], device=device)
    end = torch.tensor([n_k, n_k, right], device=device)
    for dtype in dtypes:
        q = (torch.randn(3, n_q, 2, d_head, generator=gen) * 2).to(device, dtype)
        k = (torch.randn(3, n_k, 1, d_head, generator=gen) * 2).to(device, dtype)
        got = attention_stats_triton.attention_stats(q, k, 0.3, attention_mask=mask.to(device), window=4,
                                                      max_distance=20, received=True, sliding_window=sliding)
        pattern = _float64_pattern(q, k, 0.3, start, end, n_k - n_q, sliding or n_k + 1)
        want = stats_from_pattern(pattern, attention_mask=mask.to(device), window=4, max_distance=20, received=True)
        for name in FIELDS + ("n_queries",):
            torch.testing.assert_close(getattr(got, name).double(), getattr(want, name).double(), rtol=0,
                                       atol=1e-5, msg=f"{dtype} {name}")


def test_chunking_and_sliding_window_do_not_change_the_result():
    gen = torch.Generator().manual_seed(4)
    q, k = torch.randn(2, 40, 4, 8, generator=gen) * 2, torch.randn(2, 40, 2, 8, generator=gen) * 2
    whole = attention_stats(q, k, 0.5, received=True, window=4, max_distance=12, sliding_window=7)
    blocks = attention_stats(q, k, 0.5, received=True, window=4, max_distance=12, sliding_window=7, block_bytes=1)
    for name in FIELDS:
        torch.testing.assert_close(getattr(whole, name), getattr(blocks, name), rtol=0, atol=1e-5)
    # the window hides keys 7 or more positions back: nothing at distances >= 7, BOS unseen late
    assert float(whole.distance[..., 7:].abs().max()) == 0.0
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k.repeat_interleave(2, dim=2)) * 0.5
    index = torch.arange(40)
    visible = (index[None, :] <= index[:, None]) & (index[:, None] - index[None, :] < 7)
    pattern = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    want = stats_from_pattern(pattern, window=4, max_distance=12, received=True)
    for name in FIELDS:
        torch.testing.assert_close(getattr(whole, name), getattr(want, name), rtol=0, atol=1e-5)


def test_kv_cache_generation_measures_new_queries_against_cached_keys(checkpoint_factory):
    path, _ = checkpoint_factory(attention_type="nope")
    model = dl.load_model(path)
    prompt = torch.tensor([ROWS[0][:8]])
    store: dict = {}
    hooks = capture_attention_stats(store, model, layers=[1], window=WINDOW, max_distance=MAX_DISTANCE)
    with model.hooks(fwd_hooks=hooks):
        out = model.generate(prompt, max_new_tokens=3, do_sample=False, use_past_kv_cache=True, verbose=False)
    # the last forward saw one query (the 10th token) and 10 keys
    patterns: dict = {}
    with torch.inference_mode():
        model.run_with_hooks(out[:, :10], return_type=None,
                             fwd_hooks=[("blocks.1.attn.hook_pattern", lambda x, hook: patterns.setdefault(1, x))])
    last = patterns[1][0, :, 9]  # [head, key]
    torch.testing.assert_close(store[1].sink_score[0], last[:, 0], rtol=0, atol=1e-5)
    assert int(store[1].n_queries[0]) == 1


def test_bad_parameters_are_named(checkpoint_factory):
    path, _ = checkpoint_factory()
    model = dl.load_model(path)
    with pytest.raises(ValueError, match="window=0"):
        capture_attention_stats({}, model, window=0)
    with pytest.raises(ValueError, match="max_distance=-1"):
        capture_attention_stats({}, model, max_distance=-1)
    with pytest.raises(ValueError, match=r"layers \[7\]"):
        capture_attention_stats({}, model, layers=[7])
    with pytest.raises(ValueError, match="contiguous"):
        attention_stats(torch.zeros(1, 4, 1, 2), torch.zeros(1, 4, 1, 2), 1.0,
                        attention_mask=torch.tensor([[1, 0, 1, 1]]))


def test_short_sequences_use_their_own_kernel_settings():
    """Up to SHORT_QUERIES queries the kernels run with SHORT_CONFIG (faster at the study's 512
    tokens), above it with CONFIG (faster at 32k)."""
    from drope_lens.measurement import attention_stats_triton as triton_stats

    limit = triton_stats.SHORT_QUERIES
    assert triton_stats.config_for(512) is triton_stats.SHORT_CONFIG
    assert triton_stats.config_for(limit) is triton_stats.SHORT_CONFIG
    assert triton_stats.config_for(limit + 1) is triton_stats.CONFIG
