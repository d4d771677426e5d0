"""Every ``drope-lens`` command works as written under ``torchrun``.

torchrun's parser (``torch.distributed.run.get_args_parser``) reads the whole command line, the
script's arguments included, and takes abbreviations of its own options there: before the rename,
``torchrun ... -m drope_lens.cli run context-length --n 4`` stopped with "ambiguous option: --n
could match --nnodes, --nproc-per-node, ...". The list of torchrun's options is read from the
installed torch, so an option a future torch adds that collides with ours fails here.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
SCRIPT = ["-m", "drope_lens.cli"]


def _torchrun_parser() -> argparse.ArgumentParser:
    from torch.distributed.run import get_args_parser

    return get_args_parser()


def _torchrun_options() -> list[str]:
    return [s for action in _torchrun_parser()._actions for s in action.option_strings]


def _our_options():
    """(command path, option string) for every option of every ``drope-lens`` (sub)command."""
    from drope_lens.cli import build_parser

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, [*path, name])
            else:
                for option in action.option_strings:
                    yield path, option

    return list(walk(build_parser(), []))


def _torchrun_reads(argv: list[str]) -> argparse.Namespace:
    """torchrun's parse of ``argv`` (its arguments after the word ``torchrun``); an argparse
    error becomes an AssertionError that quotes it."""

    class Raising(argparse.ArgumentParser):
        def error(self, message):
            raise AssertionError(f"torchrun {' '.join(argv)}: {message}")

    parser = _torchrun_parser()
    parser.__class__ = Raising  # same options, errors raised instead of exiting
    return parser.parse_args(argv)


def test_no_option_is_claimed_by_torchrun():
    torchrun = _torchrun_options()
    ours = _our_options()
    assert len(ours) > 100 and ("--trials" in {o for _, o in ours})  # the walk reached every command
    # torchrun's parser claims an option that equals or abbreviates one of its own; -h/--help is the
    # one exception argparse leaves to the script (the script's own --help), checked below as well
    collisions = sorted({(" ".join(path), option, tuple(t for t in torchrun if t.startswith(option)))
                         for path, option in ours if option not in ("-h", "--help")
                         and any(t.startswith(option) for t in torchrun)})
    assert not collisions, f"options torchrun would claim (rename them, see options.RENAMED): {collisions}"
    # and what the installed torchrun really does: every option reaches the script unchanged
    for path, option in ours:
        argv = ["--standalone", "--nproc-per-node", "2", *SCRIPT, *path, option, "1"]
        parsed = _torchrun_reads(argv)
        assert (parsed.module, parsed.training_script, parsed.training_script_args) == (
            True, "drope_lens.cli", [*path, option, "1"]), argv


def test_the_old_spelling_names_the_new_one(capsys):
    from drope_lens.cli import main
    from drope_lens.engine.options import RENAMED

    assert set(RENAMED) == {"--n"}
    for argv in (["run", "context-length", "--n", "3"], ["run", "knowledge", "--n=3"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "--n was renamed" in err and "--trials (context-length)" in err and "--prompts (knowledge" in err
    with pytest.raises(AssertionError, match="ambiguous option: --n could match"):  # why it was renamed
        _torchrun_reads([*SCRIPT, "run", "context-length", "--n", "3"])


def _readme_torchrun_commands() -> list[list[str]]:
    """Each ``torchrun`` command of the README's code blocks (continuation lines joined), as the
    arguments after the word ``torchrun``."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    commands = []
    for line in "\n".join(blocks).replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if "torchrun" in words:
            commands.append(words[words.index("torchrun") + 1:])
    return commands


def test_readme_torchrun_commands_parse_as_written():
    from drope_lens.cli import build_parser

    commands = _readme_torchrun_commands()
    assert len(commands) >= 3  # one machine, SLURM, CPU
    for argv in commands:
        parsed = _torchrun_reads(argv)
        assert parsed.module and parsed.training_script == "drope_lens.cli", argv
        args = build_parser().parse_args(parsed.training_script_args)  # exits (SystemExit) if refused
        assert args.command == "run", argv


def test_readme_cpu_command_runs_as_written(tmp_path):
    """The README's CPU line, launched as written (``torchrun`` is ``python -m torch.distributed.run``,
    its entry point) in an empty folder, writes what one process writes (one CPU thread, as each
    torchrun worker)."""
    from drope_lens.cli import main

    (argv,) = [c for c in _readme_torchrun_commands() if "cpu" in c]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    (tmp_path / "two").mkdir()
    launch = subprocess.run([sys.executable, "-m", "torch.distributed.run", *argv], cwd=tmp_path / "two",
                            capture_output=True, text=True, timeout=300, env=env)
    assert launch.returncode == 0, f"{launch.stdout[-3000:]}\n{launch.stderr[-5000:]}"
    assert launch.stdout.count("Passkey accuracy") == 1  # rank 0 alone prints

    script_args = _torchrun_reads(argv).training_script_args
    out_index = script_args.index("--out") + 1
    one_args = [*script_args[:out_index], str(tmp_path / "one" / script_args[out_index]), *script_args[out_index + 1:]]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(one_args) == 0
    finally:
        torch.set_num_threads(threads)
    (two,) = (tmp_path / "two" / "results" / "context_length").iterdir()
    (one,) = (tmp_path / "one" / "results" / "context_length").iterdir()
    assert one.name == two.name
    got, want = pd.read_parquet(two / "data.parquet"), pd.read_parquet(one / "data.parquet")
    assert len(want) > 0 and got.equals(want), got.compare(want) if got.shape == want.shape else (got.shape, want.shape)
