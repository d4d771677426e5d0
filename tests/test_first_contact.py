"""What a new user meets first (issue 18): startup time, one-line errors, defaults of the Python API."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from drope_lens.cli import main

HEAVY = ("torch", "transformers", "transformer_lens", "pandas")


def _seconds(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - start


def test_the_cli_parser_and_the_package_import_nothing_heavy():
    """`import drope_lens` and building every command's parser (what --help and argument errors
    do) load none of torch, transformers, TransformerLens or pandas; `dl.load_model` still works."""
    code = ("import sys, drope_lens as dl; from drope_lens.cli import build_parser; build_parser(); "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules)); "
            "print(dl.load_model.__module__, sorted(m for m in ('torch', 'transformer_lens') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.splitlines()
    assert out == ["[]", "drope_lens.loading ['torch', 'transformer_lens']"]


def test_help_and_argument_errors_under_a_second_and_import_no_slower_than_transformer_lens():
    help_s = min(_seconds("from drope_lens.cli import main; import sys; sys.argv = ['drope-lens', '--help']\n"
                          "try:\n    main()\nexcept SystemExit:\n    pass") for _ in range(2))
    error_s = _seconds("from drope_lens.cli import main\ntry:\n    main(['run', 'disruption', '--bogus'])\n"
                       "except SystemExit:\n    pass")
    ours = _seconds("import drope_lens")
    theirs = _seconds("import transformer_lens")
    print(f"--help {help_s:.2f} s, argument error {error_s:.2f} s; import drope_lens {ours:.2f} s vs "
          f"import transformer_lens {theirs:.2f} s (ratio {ours / theirs:.3f})")
    assert help_s < 1.0 and error_s < 1.0
    assert ours / theirs <= 1.0


def _one_line_error(capsys, argv) -> str:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    return lines[0]


def test_a_device_that_does_not_exist_is_one_line_naming_it(capsys, tmp_path):
    line = _one_line_error(capsys, ["run", "massive-values", "--device", "banana", "--out", str(tmp_path)])
    assert "--device" in line and "'banana'" in line and "cpu, cuda, cuda:N" in line


@pytest.mark.skipif(torch.version.cuda is not None, reason="needs a torch built without CUDA")
@pytest.mark.parametrize("command", [["info"], ["run", "massive-values"]])
def test_cuda_on_a_cpu_only_torch_is_one_line(capsys, tmp_path, command):
    line = _one_line_error(capsys, [*command, "--device", "cuda", *(["--out", str(tmp_path)] if len(command) > 1 else [])])
    assert line.startswith("drope-lens: error: --device cuda:") and "without CUDA" in line and "--device cpu" in line


def test_a_texts_file_that_is_not_utf8_is_named(capsys, tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("Stra\u00dfe ab\u00dc".encode("latin-1"))
    line = _one_line_error(capsys, ["run", "massive-values", "--texts", str(bad), "--out", str(tmp_path / "r"),
                                    "--device", "cpu"])
    assert str(bad) in line and "not UTF-8" in line and "0xdf" in line
