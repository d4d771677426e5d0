"""The Exp 3 sweep against Hugging Face doing the same work with HF forward hooks (see
:mod:`.generation_bench`, part ``sweep``).

420 prompts (cities 200, sports 100, reviews 100, passkey 20) x 3 conditions (baseline,
topk_mean_q_k pre-rotary, massive_zero), logit scoring at the last prompt position plus 20 greedy
new tokens (stop at EOS). Ours: :func:`drope_lens.engine.tasks.task_rows` with the
conditions mixed in batches. HF: per condition, ``generate`` over the same prompts in batches of
the same size (left padding), the condition as forward hooks on ``q_proj``/``k_proj`` (the
pre-rotary projections, what ``hook_q``/``hook_k`` see), prefill logits from ``output_scores``.
Conditions are prepared once (not timed) and shared.
"""

from __future__ import annotations

from typing import Optional

import torch

CONDITIONS = ("baseline", "topk_mean_q_k", "massive_zero")
TASKS = ("cities", "sports", "reviews", "passkey")
BATCH = 16


class _HFTopkMean:
    """Forward hook on q_proj/k_proj: in the prefill, per row and head, the top-1 dim (norm over the
    row's real tokens) replaced by its mean over them, at them; decode steps untouched."""

    def __init__(self, d_head: int):
        self.d_head = d_head
        self.valid = None  # [batch, T] bool, set per batch

    def __call__(self, module, inputs, output):
        if output.shape[1] == 1:
            return output
        b, t, width = output.shape
        x = output.view(b, t, width // self.d_head, self.d_head)
        valid = self.valid[:, :, None, None].float()
        count = valid.sum(1).clamp(min=1)
        xf = x.float() * valid
        norms = (xf.square().sum(1) / count).sqrt()
        chosen = torch.zeros_like(norms, dtype=torch.bool).scatter_(-1, norms.argmax(-1, keepdim=True), True)[:, None]
        mean = (xf.sum(1, keepdim=True) / count[:, None]).to(x.dtype)
        return torch.where(chosen & (valid > 0), mean, x).view(b, t, width)


class _HFZeroColumns:
    def __init__(self, mask: torch.Tensor):
        self.columns = mask.flatten().nonzero().flatten()

    def __call__(self, module, inputs, output):
        if self.columns.device != output.device:  # once: no host-to-device copy per call
            self.columns = self.columns.to(output.device)
        output = output.clone()
        output[..., self.columns] = 0.0
        return output


def _hf_run(hf, model, rows, condition, prepared, score_ids):
    """HF generate over ``rows`` (token lists) under ``condition``; returns first-step scores."""
    layers = hf.model.layers
    handles, topk = [], None
    if condition == "topk_mean_q_k":
        topk = _HFTopkMean(model.cfg.d_head)
        for layer in layers:
            handles += [layer.self_attn.q_proj.register_forward_hook(topk),
                        layer.self_attn.k_proj.register_forward_hook(topk)]
    elif condition == "massive_zero":
        for tensor, proj in (("q", "q_proj"), ("k", "k_proj")):
            for index, mask in prepared.massive_masks[tensor].items():
                if mask.any():
                    handles.append(getattr(layers[index].self_attn, proj).register_forward_hook(_HFZeroColumns(mask)))
    eos = model.tokenizer.eos_token_id
    out = []
    try:
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
        for start in range(0, len(order), BATCH):
            chunk = [rows[i] for i in order[start:start + BATCH]]
            length = max(map(len, chunk))
            tokens = torch.tensor([[eos] * (length - len(r)) + r for r in chunk], device=hf.device)
            mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in chunk], device=hf.device)
            if topk is not None:
                topk.valid = mask.bool()
            with torch.inference_mode():
                result = hf.generate(tokens, attention_mask=mask, max_new_tokens=20, do_sample=False,
                                     pad_token_id=eos, eos_token_id=eos, output_scores=True,
                                     return_dict_in_generate=True)
            out.append(result.scores[0][:, score_ids].float().cpu())
    finally:
        for handle in handles:
            handle.remove()
    return out


def sweep_part(model, hf, repeat: int = 1, prompts: Optional[int] = None) -> dict:
    """Times the sweep (module docstring). ``prompts``: an evenly spaced subset of that many of the
    420 prompts (every task keeps its share), for a run that must end within minutes; None: all."""
    from drope_lens.engine.tasks import task_rows
    from drope_lens.measurement.analysis import prepare_conditions
    from drope_lens.measurement.generation import prompt_ids
    from drope_lens.measurement.scoring import answer_token_ids
    from drope_lens.measurement.tasks import load_task
    from drope_lens.measurement.texts import builtin_texts

    from .timing import cuda_median

    import time

    begin = time.perf_counter()

    def say(what: str) -> None:
        print(f"  [sweep +{time.perf_counter() - begin:.0f} s] {what}", flush=True)

    items = [item for task in TASKS for item in load_task(task)]
    if prompts is not None:
        if not 1 <= prompts <= len(items):
            raise ValueError(f"prompts={prompts}: allowed 1..{len(items)}.")
        items = [items[round(i * len(items) / prompts)] for i in range(prompts)]
    prepared = prepare_conditions(model, CONDITIONS, builtin_texts()[:3], max_tokens=512)
    choice_ids = sorted({i for c in {it.choices for it in items if it.choices} for i in answer_token_ids(model.tokenizer, c)})
    say(f"conditions prepared on 3 texts x 512 tokens")
    rows = prompt_ids(model, [it.prompt for it in items])
    lengths = sorted(map(len, rows))
    say(f"prompt tokens: min {lengths[0]}, median {lengths[len(lengths) // 2]}, max {lengths[-1]}")

    def ours(subset=None):
        chosen = items if subset is None else items[:subset]
        out = task_rows(model, chosen, prepared.conditions, new_tokens=20, batch_size=BATCH, show_progress=False)
        say(f"ours: {len(chosen)} prompts x {len(CONDITIONS)} conditions done")
        return out

    def theirs(subset=None):
        chosen = rows if subset is None else rows[:subset]
        out = []
        for c in CONDITIONS:
            out.append(_hf_run(hf, model, chosen, c, prepared, choice_ids))
            say(f"HF: {len(chosen)} prompts under {c} done")
        return out

    say(f"{len(items)} prompts x {len(CONDITIONS)} conditions; warm-up on {2 * BATCH} prompts")
    ours(2 * BATCH), theirs(2 * BATCH)  # warm-up (kernels, caches) on two batches, not the whole sweep
    t_hf, _ = cuda_median(theirs, repeat)
    say(f"HF {t_hf:.2f} s (median of {repeat})")
    t_ours, df = cuda_median(ours, repeat)
    say(f"ours {t_ours:.2f} s (median of {repeat})")
    accuracy = df.groupby(["task", "condition"])["correct"].mean().round(3).to_dict()
    result = {"prompts": len(items), "conditions": list(CONDITIONS), "batch_size": BATCH, "hf_s": t_hf,
              "ours_s": t_ours, "ratio": t_ours / t_hf, "repeat": repeat,
              "ours_accuracy": {f"{k[0]}/{k[1]}": v for k, v in accuracy.items()}}
    print(f"Exp 3 sweep {len(items)} prompts x {len(CONDITIONS)} conditions: ours {t_ours:.2f} s, "
          f"HF {t_hf:.2f} s, ratio {t_ours / t_hf:.2f}", flush=True)
    return result
