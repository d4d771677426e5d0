"""The study report: one self-contained, offline HTML file from a results folder.

``drope-lens report RESULTS_DIR --out report.html`` (or :func:`build_report`) reads
``RESULTS_DIR/<experiment>/<run-id>/{data.parquet, meta.json}`` for every experiment of
:data:`SECTIONS`, and writes, per experiment found: its figures, its summary tables and the run's
metadata (models, revisions and fingerprints, dtype, quantisation, package versions, commit);
then the reproduction table (the study's headline numbers next to ours, see
:mod:`drope_lens.outputs.reproduction`); and the list of experiments missing from the folder. plotly.js
is inlined once, so the file opens offline.

A new experiment plugs in with one :func:`register` call (or one entry in :data:`SECTIONS`):
its result-folder name, title, CLI command, figure functions, summary-table function and
headline function.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import pandas as pd
import plotly.graph_objects as go

from . import figures as F
from . import reproduction as R
from .figures import ResultsError, SchemaError, read_run

Meta = dict[str, Any]
#: Bootstrap resamples for Exp 2's confidence intervals (as ``drope-lens run disruption`` prints them).
BOOTSTRAP = 10_000
FigureFn = Callable[[pd.DataFrame, Meta], go.Figure]
TablesFn = Callable[[pd.DataFrame, Meta], list[tuple[str, pd.DataFrame]]]


class ReportError(ResultsError):
    """The results folder cannot be made into a report (missing, empty, not a results folder)."""


@dataclass(frozen=True)
class Section:
    """How one experiment appears in the report."""

    name: str  #: the experiment's folder under the results root (its RunStore experiment name)
    title: str
    command: str  #: ``drope-lens run <command>`` writes it
    figures: tuple[FigureFn, ...]
    tables: Optional[TablesFn] = None  #: default: its headline numbers, key x variant
    headline: Optional[Callable[[pd.DataFrame], pd.DataFrame]] = None
    columns: tuple[str, ...] = field(default=("model", "variant"))


# ------------------------------------------------------------------------------------------
# Model shape for the Exp 1 head x dim figure: read from the checkpoint's config.json
# ------------------------------------------------------------------------------------------
def model_shape(meta: Meta) -> dict[str, Any]:
    """d_head, n_heads and rope_theta of the run's first model, from meta or its local config.json.

    Never downloads: bundled and local checkpoints are read; hub ids only from the local cache.
    Empty when none can be read (the figure then says the frequency is not marked).
    """
    for model in meta.get("models", []):
        if "d_head" in model:
            return {"d_head": model["d_head"], "n_heads": model.get("n_heads"), "rope_theta": model.get("rope_theta")}
        config = _local_config(model.get("source"), model.get("revision"))
        if config:
            n_heads = config.get("num_attention_heads")
            d_head = config.get("head_dim") or (config["hidden_size"] // n_heads if n_heads else None)
            return {"d_head": d_head, "n_heads": n_heads, "rope_theta": config.get("rope_theta", 10_000.0)}
    return {}


def _local_config(source: Optional[str], revision: Optional[str]) -> Optional[dict]:
    if not source:
        return None
    try:
        if source.startswith("bundled:") or Path(source).is_dir():
            from ..model.loading import resolve_source

            return json.loads((resolve_source(source) / "config.json").read_text())
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "config.json", revision=revision)
        return json.loads(Path(cached).read_text()) if isinstance(cached, str) else None
    except Exception:  # unreadable: the figure goes without frequency marks
        return None


# ------------------------------------------------------------------------------------------
# Summary tables
# ------------------------------------------------------------------------------------------
def _massive_tables(df: pd.DataFrame, meta: Meta) -> list[tuple[str, pd.DataFrame]]:
    from drope_lens.experiments.massive_values import compare, dim_locations, totals

    out = [("Massive entries, total over layers (mean ± std over texts)", totals(df))]
    if {"rope", "drope"} <= set(df.variant):
        out.append(("RoPE vs DroPE (change_pct = (DroPE − RoPE) / RoPE)", compare(df)))
    d_head = model_shape(meta).get("d_head")
    if d_head:
        out.append((f"Where massive dims sit (f = dim mod {d_head // 2}; low-frequency half f ≥ {d_head // 4})",
                    dim_locations(df, d_head)))
    return out


def _disruption_tables(df: pd.DataFrame, meta: Meta) -> list[tuple[str, pd.DataFrame]]:
    from drope_lens.experiments.disruption import statistics, summary

    return [("Perplexity over evaluation texts (random: mean ± std over seeds)", summary(df)),
            ("Paired tests and bootstrap 95% CIs over evaluation texts",
             statistics(df, n_bootstrap=BOOTSTRAP).set_index("variant").T
             .reset_index().rename(columns={"index": "statistic"}))]


def _knowledge_tables(df: pd.DataFrame, meta: Meta) -> list[tuple[str, pd.DataFrame]]:
    df = df.assign(correct_logit=df["correct_logit"].astype(float),
                   correct_generation=df["correct_generation"].astype(float))  # NaN: not scored that way
    g = df.groupby(["variant", "task", "condition"])
    table = pd.DataFrame({"n": g.size(), "logit_accuracy_pct": 100 * g["correct_logit"].mean(),
                          "generation_accuracy_pct": 100 * g["correct_generation"].mean(),
                          "unparseable": g["unparseable"].sum()}).reset_index()
    out = [("Accuracy per task and condition (unparseable generations count as wrong)", table)]
    if (df["condition"] == "baseline").any() and (df["condition"] != "baseline").any():
        from drope_lens.experiments.knowledge import category_table

        out.append(("The study's headline per category: degradation (%) = mean over the category's tasks of "
                    "(baseline - condition) / baseline, 95% bootstrap CI over items; ratio = contextual / "
                    "parametric. The package's written reviews are not IMDB: they count as a contextual task "
                    "of their own name", category_table(df, n_bootstrap=BOOTSTRAP)))
    return out


def _ablation_tables(df: pd.DataFrame, meta: Meta) -> list[tuple[str, pd.DataFrame]]:
    df = df[df["ppl"].notna()]
    g = df.groupby(["variant", "condition"], sort=False)["ppl"]
    table = g.agg(n_texts="count", mean_ppl="mean", std_ppl="std").reset_index()
    base = table[table.condition == "baseline"].set_index("variant")["mean_ppl"]
    table["ratio_to_baseline"] = table["mean_ppl"] / table["variant"].map(base)
    return [("Perplexity per condition (mean over texts)", table)]


def _headline_table(section: "Section") -> TablesFn:
    def tables(df: pd.DataFrame, meta: Meta) -> list[tuple[str, pd.DataFrame]]:
        rows = section.headline(df) if section.headline else pd.DataFrame()
        if rows.empty:
            return []
        wide = rows.pivot_table(index="key", columns="variant", values="value", sort=False).reset_index()
        return [("Headline numbers", wide)]
    return tables


def _context_tables(df: pd.DataFrame, meta: Meta) -> list[tuple[str, pd.DataFrame]]:
    """One accuracy table per prompt format (formats are never averaged together)."""
    from drope_lens.experiments.context_length import compare

    lengths = sorted(int(x) for x in df["length"].unique())
    out = []
    for fmt in dict.fromkeys(df["format"]):
        table = compare(df[df.format == fmt]).drop(columns="format")
        skipped = [x for x in lengths if x not in set(table["length"])]
        if skipped:  # e.g. RULER below its template's length: say so instead of leaving a gap
            filler = {c: "not run (prompt template longer than the length)" for c in table.columns if c != "length"}
            table = pd.concat([table, pd.DataFrame([{"length": x, **filler} for x in skipped])])
            table = table.sort_values("length").reset_index(drop=True)
        out.append((f"Passkey accuracy, {fmt} format (exact match over trials, Wilson 95% interval)", table))
    return out


def _per_layer_table(columns: tuple[str, ...]) -> TablesFn:
    def tables(df: pd.DataFrame, meta: Meta) -> list[tuple[str, pd.DataFrame]]:
        present = [c for c in columns if c in df.columns]
        table = df.groupby(["variant", "layer"])[present].mean().reset_index()
        return [("Per layer (mean over texts" + (" and heads" if "head" in df.columns else "") + ")", table)]
    return tables


def _layer_category_tables(df: pd.DataFrame, meta: Meta) -> list[tuple[str, pd.DataFrame]]:
    """Sinks / BOS write: spike layer under each rule (and the max-write layer) as categories:
    mode and distribution over texts, never a mean; plus each rule on the model's mean profile."""
    from ..measurement.analysis import SPIKE_RULES, compare_layers, layer_label, layer_summary, spike_table

    table = F._spike_table(df)
    columns = [f"spike_layer_{r}" for r in SPIKE_RULES] if len(table) else []
    if "write" in df.columns:
        means = df.groupby(["model", "variant", "sample", "layer"])["write"].mean().reset_index()
        best = (means.loc[means.groupby(["model", "variant", "sample"])["write"].idxmax()]
                .rename(columns={"layer": "max_write_layer"})[["model", "variant", "sample", "max_write_layer"]])
        table = best.merge(table, on=["model", "variant", "sample"]) if len(table) else best
        columns = ["max_write_layer", *columns]
    if not columns:
        return []
    out = [("Layers are categories: mode (distribution over texts; none = no spike). Spike rules: argmax of the "
            "BOS ratio (the study's), first_above 2, jump (the block that raises ||resid[0]|| most)",
            compare_layers(layer_summary(table, columns)))]
    if "bos_ratio" in df.columns:
        values = [c for c in ("bos_ratio", "bos_norm", "bos_norm_pre") if c in df.columns]
        profile = (df[df["bos_ratio"].notna()].groupby(["model", "variant", "sample", "layer"])[values].first()
                   .groupby(["model", "variant", "layer"]).mean().reset_index())
        layers = spike_table(profile, keys=("model", "variant"))
        for rule in SPIKE_RULES:
            layers[f"spike_layer_{rule}"] = [layer_label(v) for v in layers[f"spike_layer_{rule}"]]
        out.append(("Spike layer of each model's mean profile over texts (what the ablations use)",
                    layers.drop(columns="model")))
    return out


def _with_layer_categories(tables: Optional[TablesFn], headline: Optional[Callable] = None) -> TablesFn:
    """``tables`` (default: the headline numbers from ``headline``) followed by the layer categories."""
    def combined(df: pd.DataFrame, meta: Meta) -> list[tuple[str, pd.DataFrame]]:
        base = tables or _headline_table(Section("", "", "", (), headline=headline))
        return base(df, meta) + _layer_category_tables(df, meta)
    return combined


SECTIONS: dict[str, Section] = {}


def register(section: Section) -> Section:
    """Add (or replace) an experiment's section of the report."""
    SECTIONS[section.name] = section
    return section


register(Section("massive_values", "Exp 1 — Massive values in Q, K, V", "massive-values",
                 (lambda df, m: F.massive_counts(df),
                  lambda df, m: F.massive_dims(df, **{k: v for k, v in model_shape(m).items() if v})),
                 _massive_tables, R.headline_massive_values, F.MASSIVE_COLUMNS))
register(Section("disruption", "Exp 2 — Disrupting massive Q/K dims (perplexity)", "disruption",
                 (lambda df, m: F.disruption(df, n_bootstrap=BOOTSTRAP),), _disruption_tables, R.headline_disruption, F.DISRUPTION_COLUMNS))
register(Section("knowledge", "Exp 3 — Parametric vs contextual knowledge under disruption", "knowledge",
                 (lambda df, m: F.knowledge(df),), _knowledge_tables, R.headline_knowledge, F.KNOWLEDGE_COLUMNS))
register(Section("sinks", "Exp 4 — Attention sinks, BOS norm, representation entropy", "sinks",
                 (lambda df, m: F.sinks(df),),
                 _with_layer_categories(_per_layer_table(("sink_score", "bos_norm", "bos_ratio", "repr_entropy"))),
                 R.headline_sinks, F.SINKS_COLUMNS))
register(Section("bos_ablation", "Exp 4-5 — BOS-MLP and BOS-V ablations", "bos-ablation",
                 (lambda df, m: F.ablation(df, "Exp 4-5 BOS ablations", "bos_ablation"),), _ablation_tables,
                 R.headline_ablation, F.ABLATION_COLUMNS))
register(Section("bos_write", "Exp 5 — BOS value write", "bos-write", (lambda df, m: F.bos_write(df),),
                 _with_layer_categories(None, R.headline_bos_write), R.headline_bos_write,
                 ("model", "variant", "sample", "layer")))
register(Section("layer1_ablation", "Exp 6 — Layer-1 ablation", "layer1-ablation",
                 (lambda df, m: F.ablation(df, "Exp 6 layer-1 ablation", "layer1_ablation"),), _ablation_tables,
                 R.headline_ablation, F.ABLATION_COLUMNS))
register(Section("attention_structure", "Exp 7 — Attention pattern structure", "attention-structure",
                 (lambda df, m: F.attention_structure(df),), _per_layer_table(("sink_score", "entropy", "local_mass")),
                 R.headline_attention_structure, F.ATTENTION_COLUMNS))
register(Section("layer_balance", "Exp 8-9 — Layer-1 content and cross-layer balance", "layer-balance",
                 (lambda df, m: F.layer_balance(df),),
                 _per_layer_table(("attn_norm", "mlp_norm", "attn_fraction", "q_norm", "k_norm")),
                 R.headline_layer_balance, F.BALANCE_COLUMNS))
register(Section("context_length", "Exp 10 — Context length: passkey accuracy and error types", "context-length",
                 (lambda df, m: F.context_length(df), lambda df, m: F.context_errors(df)), _context_tables,
                 R.headline_context_length, F.CONTEXT_COLUMNS))


# ------------------------------------------------------------------------------------------
# Finding runs
# ------------------------------------------------------------------------------------------
@dataclass
class Run:
    directory: Path
    data: pd.DataFrame
    meta: Meta


@dataclass
class Inventory:
    """What a results folder holds, per experiment."""

    root: Path
    runs: dict[str, list[Run]]  #: finished runs, newest first
    unfinished: dict[str, list[Path]]
    unknown: list[Path]  #: folders that hold runs of experiments the report has no section for

    @property
    def missing(self) -> list[Section]:
        return [s for name, s in SECTIONS.items() if name not in self.runs]


def _canonical(name: str) -> str:
    return name.replace("-", "_")


def scan(root: Union[str, Path]) -> Inventory:
    """Finished and unfinished runs under ``root/<experiment>/<run-id>/``; named errors when there are none."""
    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"{root}: no such results folder.")
    if (root / "meta.json").is_file() or (root / "parts").is_dir():
        raise ReportError(f"{root}: this is one run's directory; pass the results root that holds "
                          f"<experiment>/<run-id>/ folders (here probably {root.parent.parent}).")
    runs: dict[str, list[Run]] = {}
    unfinished: dict[str, list[Path]] = {}
    unknown: list[Path] = []
    for exp_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        name = _canonical(exp_dir.name)
        for run_dir in sorted(p for p in exp_dir.iterdir() if p.is_dir()):
            if (run_dir / "data.parquet").is_file() and (run_dir / "meta.json").is_file():
                if name not in SECTIONS:
                    unknown.append(run_dir)
                    continue
                data, meta = read_run(run_dir)
                if _canonical(str(meta.get("experiment", name))) != name:
                    raise ReportError(f"{run_dir}/meta.json says experiment {meta.get('experiment')!r} but the run "
                                      f"sits under {exp_dir.name}/; move it to {meta.get('experiment')}/.")
                runs.setdefault(name, []).append(Run(run_dir, data, meta))
            elif (run_dir / "parts").is_dir():
                unfinished.setdefault(name, []).append(run_dir)
    if not runs:
        found = sorted(p.name for p in root.iterdir())[:10]
        raise ReportError(
            f"{root}: no finished result runs (expected {root}/<experiment>/<run-id>/data.parquet and meta.json, "
            f"for experiments {sorted(SECTIONS)}; found {found or 'nothing'}"
            + (f"; unknown experiments: {[str(p) for p in unknown]}" if unknown else "")
            + (f"; unfinished runs: {[str(p) for ps in unfinished.values() for p in ps]}" if unfinished else "")
            + "). Run `drope-lens study` or `drope-lens run <experiment>` first.")
    for name in runs:
        runs[name].sort(key=lambda r: str(r.meta.get("finished_at", "")), reverse=True)
    return Inventory(root, runs, unfinished, unknown)


# ------------------------------------------------------------------------------------------
# HTML
# ------------------------------------------------------------------------------------------
CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1400px;margin:24px auto;padding:0 16px;color:#222}
h1{margin-bottom:4px} h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:40px}
table.dl{border-collapse:collapse;font-size:13px;margin:8px 0 18px} table.dl td,table.dl th{border:1px solid #ddd;padding:3px 7px;text-align:right}
table.dl th{background:#f3f3f3} table.dl td:first-child,table.dl th:first-child{text-align:left}
.note{color:#555;font-size:13px} .missing{color:#a33} .rope{color:#0072B2;font-weight:600} .drope{color:#D55E00;font-weight:600}
details{margin:6px 0 14px} table.dl td{vertical-align:top}
.tablewrap{overflow-x:auto}
table.repro td:nth-child(2){min-width:200px;text-align:left} table.repro td:nth-child(9),table.repro td:nth-child(10){min-width:220px;font-size:11px;text-align:left}
table.repro-absent td:nth-child(2){min-width:200px;text-align:left} table.repro-absent td:nth-child(6),table.repro-absent td:nth-child(7){min-width:220px;font-size:11px;text-align:left} pre{background:#f7f7f7;padding:8px;font-size:12px;overflow-x:auto}
"""


def _table(frame: pd.DataFrame) -> str:
    return ("<div class='tablewrap'>" + frame.to_html(index=False, classes="dl", border=0, na_rep="—",
                                                       float_format=lambda x: f"{x:.6g}", escape=True) + "</div>")


def _figure_html(fig: go.Figure, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config={"responsive": True})


def _meta_html(run: Run) -> str:
    meta = run.meta
    models = pd.DataFrame(meta.get("models", []))
    if "fingerprint" in models.columns:
        models["fingerprint"] = [f[:16] if isinstance(f, str) else f for f in models["fingerprint"]]
    packages = ", ".join(f"{k} {v}" for k, v in (meta.get("packages") or {}).items() if v)
    rest = {k: v for k, v in meta.items() if k not in ("models", "packages")}
    return (f"<p class='note'>run <code>{html.escape(str(run.directory))}</code>, finished "
            f"{html.escape(str(meta.get('finished_at', '?')))}, drope_lens commit "
            f"<code>{html.escape(str(meta.get('git_commit')))}</code>; packages: {html.escape(packages)}</p>"
            + (_table(models) if len(models) else "<p class='missing'>meta.json names no models.</p>")
            + "<details><summary>full meta.json (configuration, texts, seeds)</summary><pre>"
            + html.escape(json.dumps(rest, indent=1, default=str)) + "</pre></details>")


def _section_html(section: Section, runs: list[Run], index: int) -> tuple[str, pd.DataFrame]:
    run = runs[0]
    df = F.require(run.data, section.columns, section.name)
    parts = [f"<h2 id='{section.name}'>{html.escape(section.title)}</h2>"]
    if len(runs) > 1:
        others = ", ".join(html.escape(r.directory.name) for r in runs[1:])
        parts.append(f"<p class='note'>newest of {len(runs)} runs shown; others: {others}</p>")
    for i, make in enumerate(section.figures):
        parts.append(_figure_html(make(df, run.meta), f"fig-{section.name}-{i}"))
    tables = section.tables or _headline_table(section)
    for title, frame in tables(df, run.meta):
        parts.append(f"<h4>{html.escape(title)}</h4>" + _table(frame))
    parts.append("<h4>Run metadata</h4>" + _meta_html(run))
    headline = section.headline(df) if section.headline else pd.DataFrame(columns=["key", "variant", "value"])
    return "\n".join(parts), headline


def _run_models(inventory: Inventory) -> dict[str, list[str]]:
    """Experiment -> the model sources of its (newest) run, from meta.json."""
    return {name: [m.get("source", "?") for m in runs[0].meta.get("models", [])]
            for name, runs in inventory.runs.items()}


def _reproduction_html(table: pd.DataFrame, inventory: Inventory) -> str:
    ours_models = sorted({s for sources in _run_models(inventory).values() for s in sources})
    shown = table.drop(columns=["key"])
    shown["ratio"] = [f"{x:.3g}" if x == x else (R.DIFFERENT_MODEL if m == R.DIFFERENT_MODEL else "—")
                      for x, m in zip(shown["ratio"], shown["models"])]
    run = shown[shown.status != "not run"].drop(columns=["models"])  # the ratio cell says "different model"
    absent = shown[shown.status == "not run"].drop(columns=["ours", "ratio", "models", "status"])
    different = (shown.loc[shown.status != "not run", "models"] == R.DIFFERENT_MODEL).any()
    study = R.study_models()
    out = ("<h2 id='reproduction'>Reproduction table</h2>"
           f"<p class='note'>The study's headline numbers ({html.escape(study['rope'])} vs "
           f"{html.escape(study['drope'])}) next to ours, from the runs of this folder, on "
           f"<b>{html.escape(', '.join(ours_models))}</b>. "
           + ("<b>These are not the study's models: the columns are shown side by side and no ratio is "
              "given (\"different model\").</b> " if different else "Ratio = ours / study. ")
           + "Every source cited ships with drope_lens: <code>drope_lens/data/study/</code> holds METHODS.md "
           "(the write-up of the study) and the study's result files, with their original names, sizes and "
           "SHA-256 in <code>PROVENANCE.json</code>; the numbers themselves are in "
           "<code>drope_lens/data/study_numbers.json</code>. <i>flaw</i>: where METHODS.md says the original "
           "measurement was flawed, so a difference is expected.</p>")
    out += _table(run).replace('class="dataframe dl"', 'class="dataframe dl repro"', 1) if len(run) else ""
    if len(absent):
        out += (f"<details><summary>The study's {len(absent)} numbers for experiments not in this folder "
                f"({html.escape(', '.join(dict.fromkeys(absent.experiment)))})</summary>"
                + _table(absent).replace('class="dataframe dl"', 'class="dataframe dl repro-absent"', 1) + "</details>")
    return out


def build_report(results_dir: Union[str, Path], out: Union[str, Path], title: str = "drope_lens report") -> Path:
    """Write the report of ``results_dir`` to ``out`` (one offline HTML file); return ``out``."""
    from plotly.offline import get_plotlyjs

    inventory = scan(results_dir)
    body, headlines = [], {}
    for index, (name, section) in enumerate(SECTIONS.items()):
        if name in inventory.runs:
            text, headline = _section_html(section, inventory.runs[name], index)
            body.append(text)
            headlines[name] = headline
    table = R.reproduction_table(headlines, models=_run_models(inventory))
    contents = []
    for name, section in SECTIONS.items():
        if name in inventory.runs:
            run = inventory.runs[name][0]
            contents.append(f"<li><a href='#{name}'>{html.escape(section.title)}</a> — run "
                            f"<code>{html.escape(run.directory.name)}</code></li>")
        else:
            extra = " (unfinished run present: rerun to finish it)" if name in inventory.unfinished else ""
            contents.append(f"<li class='missing'>missing: {html.escape(section.title)} — "
                            f"<code>drope-lens run {section.command}</code>{extra}</li>")
    unknown = "".join(f"<li class='note'>not shown (no report section for it): <code>{html.escape(str(p))}</code></li>"
                      for p in inventory.unknown)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{CSS}</style>
<script type="text/javascript">{get_plotlyjs()}</script></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="note">Results folder <code>{html.escape(str(inventory.root))}</code>; written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}.
<span class="rope">RoPE</span> and <span class="drope">DroPE</span> keep these colours in every figure; hover a point for its exact values.</p>
<h2>Contents</h2>
<p class="note">{len(inventory.runs)} of {len(SECTIONS)} experiments present, {len(inventory.missing)} missing.</p>
<ul id="contents">{''.join(contents)}{unknown}<li><a href="#reproduction">Reproduction table</a></li></ul>
{''.join(body)}
{_reproduction_html(table, inventory)}
</body></html>
"""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


__all__ = ["ReportError", "SchemaError", "SECTIONS", "Section", "build_report", "model_shape", "register", "scan"]
