"""Per-head attention statistics computed from q and k, never holding a ``[T, T]`` matrix per head.

The statistics are those of the model's real attention: post-rotary q and k (``hook_rot_q`` /
``hook_rot_k``), the layer's multiplier ``scale`` on q.k (``1/sqrt(d_head)`` or the checkpoint's
``softmax_scale``), the causal mask, an optional sliding window, padding excluded, float32
scores and softmax in every model dtype (as :mod:`drope_lens.model.attention` computes them).

Definitions, per (batch row, head). Positions count from the row's first real token (position 0,
"BOS"); the statistics average over the row's query positions t >= 1 (``n_queries`` of them):

* ``sink_score``: mean over t >= 1 of the attention on the key at position 0 (a probability);
* ``entropy``: mean over t >= 1 of the row entropy ``-sum_j p[t, j] ln p[t, j]`` (nats);
* ``local_mass``: mean over t >= 1 of the attention on the ``window`` most recent keys the query
  sees, its own key included (distances 0 .. window-1); ``local_mass_no_bos`` is the same with the
  key at position 0 left out of that window (it is in it for t < window);
* ``distance``: ``[max_distance]``, entry d = mean over t >= 1 of ``p[t, t - d]`` (0 where
  t - d < 0), so ``local_mass == distance[:window].sum()`` when ``window <= max_distance``;
* ``received`` (optional): ``[key]``, attention received by each key position, summed over the
  query positions t >= 1 (padding keys receive 0).

Padding: ``attention_mask`` ``[batch, key]`` (1 = real token) must mark one contiguous run of
real tokens per row (left or right padding). Queries may be the last ``q_len`` keys (KV cache).

:func:`attention_stats` is the chunked PyTorch path (any device): it processes blocks of query
rows, each with its full key range, so each row's softmax is exact in one pass and memory is
``O(block * T)``. :mod:`drope_lens.measurement.attention_stats_triton` computes the same on CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

import torch
from jaxtyping import Float, Int

DEFAULT_WINDOW = 5
DEFAULT_MAX_DISTANCE = 50
#: Bytes of float32 scores one query block may hold (all heads and rows of the batch together).
DEFAULT_BLOCK_BYTES = 256 * 2**20


@dataclass
class AttentionStats:
    """Statistics of one layer's attention, float32, one row per batch element (see module doc)."""

    sink_score: Float[torch.Tensor, "batch head"]
    entropy: Float[torch.Tensor, "batch head"]
    local_mass: Float[torch.Tensor, "batch head"]
    local_mass_no_bos: Float[torch.Tensor, "batch head"]
    distance: Float[torch.Tensor, "batch head max_distance"]
    n_queries: Int[torch.Tensor, "batch"]
    received: Optional[Float[torch.Tensor, "batch head key"]] = None

    def to(self, device) -> "AttentionStats":
        return AttentionStats(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name).to(device))
                                 for f in fields(self)})


def check_parameters(window: int, max_distance: int) -> None:
    """Errors naming a bad ``window`` or ``max_distance``."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window={window!r}: the local window must be an integer >= 1 (keys).")
    if isinstance(max_distance, bool) or not isinstance(max_distance, int) or max_distance < 1:
        raise ValueError(f"max_distance={max_distance!r}: must be an integer >= 1 (distances 0..max_distance-1).")


def key_spans(
    attention_mask: Optional[torch.Tensor], batch: int, n_keys: int, device: torch.device
) -> tuple[Int[torch.Tensor, "batch"], Int[torch.Tensor, "batch"]]:
    """``(start, end)`` per row: keys ``start .. end-1`` are real tokens (position 0 at ``start``).

    Raises if a mask row is not one contiguous run of ones (neither left nor right padding).
    """
    if attention_mask is None:
        start = torch.zeros(batch, dtype=torch.long, device=device)
        return start, torch.full((batch,), n_keys, dtype=torch.long, device=device)
    mask = attention_mask.to(device).bool()
    if mask.shape != (batch, n_keys):
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)}; expected [batch, key] = {(batch, n_keys)}.")
    index = torch.arange(n_keys, device=device)
    count = mask.sum(dim=1)
    start = torch.where(mask, index, n_keys).amin(dim=1)
    end = torch.where(mask, index + 1, 0).amax(dim=1)
    if bool(((end - start) != count).any()):
        raise ValueError("attention_mask rows must be one contiguous run of real tokens (left or right padding).")
    start = torch.where(count > 0, start, torch.zeros_like(start))
    return start, torch.where(count > 0, end, torch.zeros_like(end))


def attention_stats(
    q: Float[torch.Tensor, "batch q_pos head d_head"],
    k: Float[torch.Tensor, "batch k_pos kv_head d_head"],
    scale: float,
    *,
    attention_mask: Optional[Int[torch.Tensor, "batch k_pos"]] = None,
    window: int = DEFAULT_WINDOW,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    received: bool = False,
    sliding_window: Optional[int] = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> AttentionStats:
    """Attention statistics of one layer from post-rotary ``q`` and ``k`` (chunked PyTorch path).

    ``q`` holds the last ``q_pos`` of the ``k_pos`` key positions (``q_pos == k_pos`` without a KV
    cache). Grouped-query ``k`` (fewer heads) serves ``head // (head / kv_head)`` as in the model.
    ``sliding_window`` W: a query sees only keys less than W positions back. Query blocks are sized
    so that their float32 scores stay under ``block_bytes``.
    """
    check_parameters(window, max_distance)
    batch, n_q, n_heads, d_head = q.shape
    n_k, n_kv = k.shape[1], k.shape[2]
    if k.shape[0] != batch or k.shape[3] != d_head or n_heads % n_kv or n_k < n_q:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} do not fit [batch, pos, head, d_head].")
    device, rep, offset = q.device, n_heads // n_kv, n_k - n_q
    start, end = key_spans(attention_mask, batch, n_k, device)
    n_gather = max(window, max_distance)
    kf = k.float().permute(0, 2, 3, 1)[:, :, None]  # [batch, kv, 1, d_head, key]
    keys = torch.arange(n_k, device=device)

    sink = torch.zeros(batch, n_heads, device=device)
    entropy = torch.zeros_like(sink)
    local = torch.zeros_like(sink)
    local_no_bos = torch.zeros_like(sink)
    distance = torch.zeros(batch, n_heads, max_distance, device=device)
    got = torch.zeros(batch, n_heads, n_k, device=device) if received else None
    n_rows = torch.zeros(batch, dtype=torch.long, device=device)

    block = max(1, min(n_q, block_bytes // max(1, 4 * 4 * batch * n_heads * n_k)))
    for q0 in range(0, n_q, block):
        q1 = min(n_q, q0 + block)
        n_vis = offset + q1  # keys any query of this block can see (causal)
        rows = torch.arange(offset + q0, offset + q1, device=device)  # absolute query indices
        qb = q[:, q0:q1].float().permute(0, 2, 1, 3).reshape(batch, n_kv, rep, q1 - q0, d_head)
        scores = torch.matmul(qb, kf[..., :n_vis]).reshape(batch, n_heads, q1 - q0, n_vis) * scale
        vis = keys[None, None, :n_vis] <= rows[None, :, None]  # [1, rows, key]
        vis = vis & (keys[None, None, :n_vis] >= start[:, None, None]) & (keys[None, None, :n_vis] < end[:, None, None])
        if sliding_window is not None:
            vis = vis & (rows[None, :, None] - keys[None, None, :n_vis] < sliding_window)
        used = (rows[None, :] >= start[:, None] + 1) & (rows[None, :] < end[:, None])  # [batch, rows]: t >= 1
        scores = scores.masked_fill(~vis[:, None], float("-inf"))
        lse = torch.logsumexp(scores, dim=-1, keepdim=True)
        # rows not measured (position 0, padding) are zeroed: exp of their scores may overflow
        p = torch.where(used[:, None, :, None], torch.exp(scores - lse), torch.zeros((), device=device))
        weight = used[:, None, :].float()  # [batch, 1, rows]
        plogp = torch.where(p > 0, p * (scores - lse), torch.zeros_like(p))
        entropy += (-plogp.sum(dim=-1) * weight).sum(dim=-1)
        bos_index = start[:, None, None, None].expand(batch, n_heads, q1 - q0, 1).clamp(max=n_vis - 1)
        sink += (p.gather(-1, bos_index)[..., 0] * weight).sum(dim=-1)
        back = rows[:, None] - torch.arange(n_gather, device=device)[None, :]  # [rows, d]: key index t - d
        inside = back >= 0
        near = p.gather(-1, back.clamp(min=0)[None, None].expand(batch, n_heads, -1, -1))
        near = near * inside[None, None] * weight[..., None]  # [batch, head, rows, d]
        distance += near[..., :max_distance].sum(dim=2)
        in_window = near[..., :window]
        local += in_window.sum(dim=(2, 3))
        is_bos = (back[None, :, :window] == start[:, None, None])[:, None]  # [batch, 1, rows, window]
        local_no_bos += (in_window * ~is_bos).sum(dim=(2, 3))
        if got is not None:
            got[..., :n_vis] += (p * weight[..., None]).sum(dim=2)
        n_rows += used.sum(dim=1)
    denominator = n_rows.clamp(min=1).float()[:, None]
    return AttentionStats(
        sink_score=sink / denominator, entropy=entropy / denominator, local_mass=local / denominator,
        local_mass_no_bos=local_no_bos / denominator, distance=distance / denominator[..., None],
        n_queries=n_rows, received=got,
    )


def stats_from_pattern(
    pattern: Float[torch.Tensor, "batch head q_pos k_pos"],
    *,
    attention_mask: Optional[Int[torch.Tensor, "batch k_pos"]] = None,
    window: int = DEFAULT_WINDOW,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    received: bool = False,
) -> AttentionStats:
    """The same statistics from a materialised post-softmax ``pattern`` (e.g. ``hook_pattern``).

    O(T^2) memory: for checking the streaming paths and for short inputs only.
    """
    check_parameters(window, max_distance)
    batch, n_heads, n_q, n_k = pattern.shape
    device, offset = pattern.device, n_k - n_q
    p = pattern.float()
    start, end = key_spans(attention_mask, batch, n_k, device)
    rows = torch.arange(offset, n_k, device=device)
    used = ((rows[None, :] >= start[:, None] + 1) & (rows[None, :] < end[:, None])).float()  # [batch, rows]
    n_rows = used.sum(dim=1)
    den = n_rows.clamp(min=1)[:, None]
    mean_rows = lambda x: (x * used[:, None]).sum(dim=-1) / den  # noqa: E731  [b, h, rows] -> [b, h]
    plogp = torch.where(p > 0, p * p.clamp(min=1e-45).log(), torch.zeros_like(p))
    bos = p.gather(-1, start[:, None, None, None].expand(batch, n_heads, n_q, 1))[..., 0]  # [batch, head, rows]
    dist = torch.zeros(batch, n_heads, max(window, max_distance), device=device)
    for d in range(dist.shape[-1]):
        diag = torch.diagonal(p, offset=offset - d, dim1=-2, dim2=-1)  # p[t, t-d] for t >= d
        if diag.shape[-1]:
            dist[..., d] = (diag * used[:, None, n_q - diag.shape[-1]:]).sum(dim=-1) / den
    bos_in_window = (rows[None, :] - start[:, None] < window).float() * used  # [batch, rows]
    local = dist[..., :window].sum(dim=-1)
    local_no_bos = local - (bos * bos_in_window[:, None]).sum(dim=-1) / den
    got = (p * used[:, None, :, None]).sum(dim=2) if received else None
    return AttentionStats(
        sink_score=mean_rows(bos), entropy=mean_rows(-plogp.sum(dim=-1)),
        local_mass=local, local_mass_no_bos=local_no_bos,
        distance=dist[..., :max_distance], n_queries=n_rows.long(), received=got,
    )
