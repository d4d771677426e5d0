"""Session 27 probe: can Exp 4's float64 spectra (320 Gram matrices of 512 x 512, one per text and
layer of a 10 x 512 forward) hide under the forward's GEMMs on a second CUDA stream?

Stand-in forward: the bf16 GEMMs of a Llama-2-7B forward over 5,120 tokens (32 layers of
[5120, 4096] x [4096, 12288 | 4096 | 22016] and [5120, 11008] x [11008, 4096]). Spectra:
drope_lens.measurement.spectrum.symmetric_eigenvalues(method="householder_persistent"), the default.
Medians of CUDA-event timings (ms), each case run `repeat` times after a warm-up.
"""
import statistics
import sys

import torch

from drope_lens.measurement import spectrum

torch.manual_seed(0)
dev = "cuda"
T, D, F, L, TEXTS, N = 5120, 4096, 11008, 32, 10, 512
repeat = int(sys.argv[1]) if len(sys.argv) > 1 else 5
x = torch.randn(T, D, device=dev, dtype=torch.bfloat16)
h = torch.randn(T, F, device=dev, dtype=torch.bfloat16)
w = [torch.randn(D, n, device=dev, dtype=torch.bfloat16) * 0.01 for n in (3 * D, D, 2 * F)]
w_down = torch.randn(F, D, device=dev, dtype=torch.bfloat16) * 0.01
xs = torch.randn(L * TEXTS, N, 256, device=dev, dtype=torch.float64)
grams = xs @ xs.transpose(1, 2)  # rank-256 SPD-ish, like a Gram matrix
side = [torch.cuda.Stream() for _ in range(4)]


def layer():
    for m in w:
        x @ m
    h @ w_down


def gemms(after_layer=None):
    for i in range(L):
        layer()
        if after_layer:
            after_layer(i)


def spectra(batch):
    return spectrum.symmetric_eigenvalues(batch, method="householder_persistent")


def timed(fn):
    times = []
    for k in range(repeat + 1):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        if k:
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def on(stream, fn):
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)


def concurrent():
    main = torch.cuda.current_stream()
    side[0].wait_stream(main)
    with torch.cuda.stream(side[0]):
        spectra(grams)
    gemms()
    main.wait_stream(side[0])


def per_group(groups):
    """The spectra of each group of L / groups layers launched on its own side stream as soon as
    the group's GEMMs are done (what a forward could do: a layer's Gram exists after the layer)."""
    size = L // groups
    main = torch.cuda.current_stream()

    def after(i):
        if (i + 1) % size == 0:
            g = i // size
            s = side[g % len(side)]
            s.wait_stream(main)
            with torch.cuda.stream(s):
                spectra(grams[g * size * TEXTS:(g + 1) * size * TEXTS])

    gemms(after)
    for s in side:
        main.wait_stream(s)


cases = {
    "forward GEMMs alone": gemms,
    "spectra alone (320)": lambda: spectra(grams),
    "spectra alone (160)": lambda: spectra(grams[:160]),
    "spectra alone (80)": lambda: spectra(grams[:80]),
    "sequential: GEMMs then spectra": lambda: (gemms(), spectra(grams)),
    "concurrent: spectra on a side stream from the start": concurrent,
    "per group of 16 layers (2 side launches)": lambda: per_group(2),
    "per group of 8 layers (4 side launches)": lambda: per_group(4),
}
print(torch.cuda.get_device_name(), "repeat", repeat, flush=True)
for name, fn in cases.items():
    print(f"{name:55s} {timed(fn):8.1f} ms", flush=True)
