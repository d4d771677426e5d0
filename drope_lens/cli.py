"""``drope-lens`` command line: ``drope-lens info SOURCE``, ``run``, ``report``, ``study``.

Building the parser imports nothing heavy (torch, pandas, transformers and TransformerLens are
imported by the command that needs them), so ``--help`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

# torch's CPU ops run on libgomp (OpenMP) threads that, by default, spin between parallel regions
# instead of sleeping. On a CPU that other jobs share, the spinning worker takes the core that the
# main thread needs next: on the 2-core development machine (1-minute load average 3 to 8 from
# other jobs) one Exp 6 batch of 16 passkey prompts took 12-14 s of wall time with spinning workers
# and 3.4-4.7 s with sleeping ones (2.4-3.5 s on one thread). Sleeping workers compute the same
# numbers. libgomp reads the policy once, when torch is first imported, which in a `drope-lens`
# process happens after this line (building the parser imports no torch); a value set by the
# user is kept. See README "Speed on a CPU".
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    # A sleeping worker is woken with a system call for every parallel region (every op of a
    # decoding step). GOMP_SPINCOUNT lets it spin about 0.2 ms first (20,000 spins; libgomp's default
    # without a policy is 300,000, 3 ms) and then sleep, so back-to-back ops find it awake while a
    # worker idle for longer still frees its core. Exp 4/5 (`drope-lens run bos-ablation`, 2-core
    # machine, load 1.2-1.6): 25.9 / 27.0 s wall with it, 33.3 / 29.3 s without (CPU 41-43 s vs
    # 38-40 s). Same numbers. Not set when the user chose a policy (ACTIVE keeps its own spin count).
    os.environ.setdefault("GOMP_SPINCOUNT", "20000")

from .engine.runner import DEVICE_HELP, device_arg, keep_models, resolve_device  # noqa: E402


def model_summary(model) -> dict:
    """What ``drope-lens info`` prints, as a dict."""
    spec = model.lens
    n_params = 0
    for name, param in model.named_parameters(remove_duplicate=False):
        if name.rsplit(".", 1)[-1].lstrip("_").startswith("b_"):
            continue  # TransformerLens's zero biases: not checkpoint parameters
        if spec.tie_word_embeddings and name == "unembed.W_U":
            continue  # shares storage with embed.W_E
        state = getattr(param, "quant_state", None)
        n_params += int(state.shape.numel()) if state is not None else param.numel()
    return {
        "source": spec.source,
        "variant": spec.variant,
        "attention_type": spec.attention_type,
        "softmax_scale": spec.softmax_scale if spec.softmax_scale is not None else f"1/sqrt({spec.d_head})",
        "layers": spec.n_layers,
        "heads": spec.n_heads,
        "kv_heads": spec.n_kv_heads,
        "d_head": spec.d_head,
        "d_model": spec.d_model,
        "d_mlp": spec.d_mlp,
        "vocab": spec.d_vocab,
        "n_ctx": model.cfg.n_ctx,
        "trained_context": spec.max_position_embeddings,
        "rope_theta": spec.rope_theta if spec.rotary else None,
        "tied_embeddings": spec.tie_word_embeddings,
        "dtype": str(model.cfg.dtype).replace("torch.", ""),
        "device": str(model.cfg.device),
        "parameters": n_params,
        "quantization": model.quantization or "none",
        "prepends_bos": model.cfg.default_prepend_bos,
        "family": spec.family,
        "rope_type": spec.rope_scaling.rope_type if spec.rope_scaling is not None else "default",
        "sliding_window": spec.sliding_window,
        "sliding_layers": list(spec.sliding_layers),
    }


def _info(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .model.loading import load_model
    from .model.registry import pairs

    args.device = resolve_device(args.device)
    known = pairs()
    if args.source in known and not Path(args.source).exists():  # a pair name: describe both models
        sources = [known[args.source].rope, known[args.source].drope]
    else:
        sources = [args.source]
    summaries = []
    for source in sources:
        model = load_model(source, dtype=args.dtype, device=args.device, n_ctx=args.n_ctx,
                           quantization=args.quantization, variant=args.variant, revision=args.revision)
        summaries.append(model_summary(model))
        del model
    if args.json:
        print(json.dumps(summaries[0] if len(summaries) == 1 else summaries, indent=2))
        return 0
    width = max(len(k) for k in summaries[0])
    columns = [{k: (f"{v:,}" if k == "parameters" else str(v)) for k, v in s.items()} for s in summaries]
    col_width = max(len(v) for c in columns for v in c.values())
    for key in summaries[0]:
        print(f"{key:<{width}}  " + "  ".join(f"{c[key]:<{col_width}}" for c in columns).rstrip())
    return 0


def _random_checkpoint(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .benchmarks.random_checkpoint import SHAPES, write_drope_twin, write_random_checkpoint, write_tokenizer
    from .measurement.texts import builtin_texts

    out = Path(args.out)
    shape = SHAPES[args.shape]
    nbytes = write_random_checkpoint(out, shape, seed=args.seed)
    write_tokenizer(out, [t.text for t in builtin_texts()], vocab_size=min(shape.vocab, 8000))
    print(f"wrote {out} ({nbytes / 2**20:.1f} MiB of random bf16 weights, shape {args.shape}, "
          "byte-level BPE tokenizer trained on the built-in texts)")
    if args.drope:
        write_drope_twin(out, Path(args.drope), attention_type=args.attention_type)
        print(f"wrote {args.drope} (DroPE twin, attention_type={args.attention_type}, same weights)")
    return 0


def _run_experiment(args: argparse.Namespace) -> int:
    import importlib

    from drope_lens.experiments import CLI_EXPERIMENTS

    from .engine.runner import RunContext

    module = importlib.import_module(f"drope_lens.experiments.{CLI_EXPERIMENTS[args.experiment][0]}")
    return module.run_cli(RunContext.from_args(args))


def _train_toy(args: argparse.Namespace) -> int:
    from .toy.train import run_from_args

    args.device = resolve_device(args.device)
    return run_from_args(args)


def _report(args: argparse.Namespace) -> int:
    from .outputs.report import build_report

    out = build_report(args.results_dir, args.out)
    print(f"report: {out}")
    return 0


#: ``drope-lens study --sizes smoke``: per experiment command, options that shrink it to seconds on
#: the toy pair (a check that every experiment runs and reaches the report, e.g. in tests; its
#: numbers mean nothing). ``--sizes study`` (the default) adds nothing: each experiment's defaults.
SMOKE_SIZES: dict[str, list[str]] = {
    "massive-values": ["--n-texts", "2", "--max-tokens", "48"],
    "disruption": ["--seeds", "2", "--n-identification", "2", "--n-evaluation", "2", "--max-tokens", "48"],
    "knowledge": ["--prompts", "2", "--new-tokens", "3", "--reference-tokens", "48"],
    "bos-ablation": ["--prompts", "2", "--n-reference", "2", "--n-evaluation", "2", "--max-tokens", "48"],
    "layer1-ablation": ["--prompts", "2", "--n-reference", "2", "--n-evaluation", "2", "--max-tokens", "48"],
    "sinks": ["--n-texts", "2", "--max-tokens", "48"],
    "bos-write": ["--n-texts", "2", "--max-tokens", "48"],
    "attention-structure": ["--n-texts", "2", "--max-tokens", "48"],
    "layer-balance": ["--n-texts", "2", "--max-tokens", "48"],
    "context-length": ["--lengths", "200", "--trials", "2", "--max-new-tokens", "3"],
}


def _study(args: argparse.Namespace) -> int:
    """Every experiment of CLI_EXPERIMENTS on one pair, then the report of the results folder."""
    from drope_lens.experiments import CLI_EXPERIMENTS

    from .outputs.report import build_report

    common = ["--out", args.out, "--dtype", args.dtype, "--device", resolve_device(args.device), "--bos", args.bos]
    if args.rope or args.drope:
        common += [arg for flag, value in (("--rope", args.rope), ("--drope", args.drope)) if value for arg in (flag, value)]
    else:
        common += ["--pair", args.pair]
    failed = []
    clock = _StudyClock()
    with keep_models():  # the small models (the toy pair) load once for all ten experiments
        for command in CLI_EXPERIMENTS:
            if command in args.skip:
                continue
            sizes = SMOKE_SIZES.get(command, []) if args.sizes == "smoke" else []
            print(f"== drope-lens run {command} {' '.join(common + sizes)}", flush=True)
            run_args = build_parser().parse_args(["run", command, *common, *sizes])
            try:
                code = run_args.func(run_args)
            except Exception as exc:  # one failing experiment does not lose the others' report
                print(f"drope-lens study: {command} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                code = 1
            if code:
                failed.append(command)
            clock.lap(command)
    out = build_report(args.out, args.report)
    clock.lap("report")
    print(f"report: {out}" + (f"\nfailed experiments: {failed}" if failed else ""))
    clock.print()
    return 1 if failed else 0


class _StudyClock:
    """Wall and CPU time (user + system of this process, all its threads) of each step of ``study``,
    and the machine's 1-minute load average before and after (other jobs slow a shared CPU)."""

    def __init__(self) -> None:
        import time

        self._time = time
        self.load = os.getloadavg()[0]
        self.start = self.last = (time.perf_counter(), time.process_time())
        self.laps: list[tuple[str, float, float]] = []

    def lap(self, name: str) -> None:
        now = (self._time.perf_counter(), self._time.process_time())
        self.laps.append((name, now[0] - self.last[0], now[1] - self.last[1]))
        self.last = now

    def print(self) -> None:
        width = max(len(name) for name, _, _ in self.laps)
        print(f"\nstudy time, seconds (wall, CPU = user + system of this process; 1-minute load average "
              f"{self.load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end):")
        for name, wall, cpu in self.laps:
            print(f"  {name:<{width}}  {wall:8.1f}  {cpu:8.1f}")
        print(f"  {'total':<{width}}  {self.last[0] - self.start[0]:8.1f}  {self.last[1] - self.start[1]:8.1f}")


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line: the command, the argument, what is allowed (no usage dump)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")

    def parse_known_args(self, args=None, namespace=None):
        from drope_lens.engine.options import RENAMED

        for arg in sys.argv[1:] if args is None else args:
            flag = arg.split("=", 1)[0]
            if flag in RENAMED:
                self.error(f"{flag} was renamed: use {RENAMED[flag]} (torchrun takes {flag} for one of its own options)")
        return super().parse_known_args(args, namespace)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="drope-lens", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="load a checkpoint and describe it")
    info.add_argument("source", nargs="?", default="toy",
                      help="checkpoint directory, hub id, bundled:toy/rope, or a pair name (default: toy, both models)")
    info.add_argument("--dtype", default="float32", help="float32 (default), bf16 or fp16")
    info.add_argument("--device", type=device_arg, default="cpu", help="cpu (default), cuda, cuda:N or mps")
    info.add_argument("--n-ctx", type=int, default=None)
    info.add_argument("--quantization", choices=["nf4"], default=None)
    info.add_argument("--variant", choices=["rope", "drope"], default=None)
    info.add_argument("--revision", default=None)
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(func=_info)

    rand = sub.add_parser("random-checkpoint", help="write a Llama-shaped checkpoint of random weights")
    rand.add_argument("out", help="directory to write")
    rand.add_argument("--shape", choices=["tiny", "llama2-7b"], default="tiny")
    rand.add_argument("--seed", type=int, default=0)
    rand.add_argument("--drope", default=None, help="also write a DroPE twin (same weights) here")
    rand.add_argument("--attention-type", default="nope", help="attention_type of the DroPE twin")
    rand.set_defaults(func=_random_checkpoint)

    toy = sub.add_parser("train-toy", help="pretrain a small RoPE Llama, drop rotary, recalibrate (the DroPE recipe), "
                                           "in resumable stages; --evaluate measures issue 20's bars and picks the recipe")
    toy.add_argument("--out", required=True, help="directory for the corpus, tokenizer, checkpoints, training.json")
    from .toy.recipes import add_arguments as _toy_arguments

    _toy_arguments(toy, device=False)
    toy.add_argument("--device", type=device_arg, default=None, help=DEVICE_HELP)
    toy.set_defaults(func=_train_toy)

    run = sub.add_parser("run", help="run an experiment on a RoPE/DroPE pair and save its results")
    run_sub = run.add_subparsers(dest="experiment", required=True)
    import importlib

    from drope_lens.experiments import CLI_EXPERIMENTS
    from drope_lens.engine.options import OPTIONS

    from .engine.runner import add_common_arguments

    for command, (module_name, help_text) in CLI_EXPERIMENTS.items():
        if command in OPTIONS:  # the usual case: options known without importing the experiment
            add_options, takes_texts = OPTIONS[command]
        else:  # an experiment registered elsewhere: its module defines its options
            module = importlib.import_module(f"drope_lens.experiments.{module_name}")
            add_options, takes_texts = module.add_cli_arguments, getattr(module, "CLI_TAKES_TEXTS", True)
        sub_parser = run_sub.add_parser(command, help=help_text)
        add_common_arguments(sub_parser, texts=takes_texts)
        add_options(sub_parser)
        sub_parser.set_defaults(func=_run_experiment)

    report = sub.add_parser("report", help="one offline HTML report of a results folder")
    report.add_argument("results_dir", nargs="?", default="results", help="results root (default: results/)")
    report.add_argument("--out", default="report.html", help="HTML file to write (default: report.html)")
    report.set_defaults(func=_report)

    study = sub.add_parser("study", help="run every experiment on a pair (default: the toy pair), then the report")
    study.add_argument("--pair", default="toy", help="registry name of a RoPE/DroPE pair (default: toy)")
    study.add_argument("--rope", default=None, help="RoPE checkpoint (with --drope, instead of --pair)")
    study.add_argument("--drope", default=None, help="DroPE checkpoint (with --rope, instead of --pair)")
    study.add_argument("--dtype", default="float32")
    study.add_argument("--device", type=device_arg, default=None, help=DEVICE_HELP)
    study.add_argument("--bos", choices=["checkpoint", "always"], default="checkpoint")
    study.add_argument("--out", default="results", help="results root (default: results/)")
    study.add_argument("--report", default="report.html", help="HTML file to write (default: report.html)")
    study.add_argument("--skip", nargs="*", default=[], help="experiment commands not to run")
    study.add_argument("--sizes", choices=["study", "smoke"], default="study",
                       help="study: every experiment at its defaults (the study's sizes; default); smoke: tiny "
                            "sizes that only check that every experiment runs and reaches the report")
    study.set_defaults(func=_study)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``drope-lens`` command; ``argv=None`` (the console script) also makes this process keep
    freed memory for its next tensors (:func:`drope_lens.engine.host_memory.retain_freed_memory`)."""
    args = build_parser().parse_args(argv)
    if argv is None:
        from .engine.host_memory import retain_freed_memory

        retain_freed_memory()
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"drope-lens: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
