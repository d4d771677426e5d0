"""Float32 CPU products through oneDNN (drope_lens.model.cpu_matmul): when they are used, and that
they compute F.linear's product up to float32 rounding."""

import pytest
import torch
import torch.nn.functional as F

from drope_lens.model import cpu_matmul

needs_op = pytest.mark.skipif(cpu_matmul._OP is None or not torch.backends.mkldnn.is_available(),
                              reason="this torch build has no oneDNN matmul op")


@pytest.fixture
def spy(monkeypatch):
    """Counts the calls that reach oneDNN (and still computes them with the real op)."""
    calls = []
    real = cpu_matmul._OP

    def op(*args):
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(cpu_matmul, "_OP", op)
    monkeypatch.setattr(cpu_matmul, "_failed", False)
    return calls


@needs_op
@pytest.mark.parametrize("shape,d_in,d_out", [((3, 700, 64), 64, 96), ((2100, 48), 48, 4007), ((2, 1100, 256), 256, 704)])
def test_large_products_go_through_onednn_and_match_f_linear(spy, shape, d_in, d_out):
    torch.manual_seed(0)
    x, w, b = torch.randn(*shape[:-1], d_in), torch.randn(d_out, d_in), torch.randn(d_out)
    with torch.inference_mode():
        got, want = cpu_matmul.linear(x, w, b), F.linear(x, w, b)
    assert len(spy) == 1 and got.shape == want.shape
    # float32 sums of d_in products in another order: within a few ulps of the largest partial sums
    scale = (x.abs() @ w.abs().T + b.abs()).max()
    assert (got - want).abs().max() <= 8 * d_in ** 0.5 * torch.finfo(torch.float32).eps * scale


@needs_op
def test_small_products_autograd_and_other_dtypes_stay_on_f_linear(spy):
    w = torch.randn(32, 16)
    small = torch.randn(cpu_matmul.MIN_ROWS - 1, 16)
    assert torch.equal(cpu_matmul.linear(small, w), F.linear(small, w))
    big = torch.randn(4 * cpu_matmul.MIN_ROWS, 16)
    assert torch.equal(cpu_matmul.linear(big.double(), w.double()), F.linear(big.double(), w.double()))
    trained = w.clone().requires_grad_()
    # an autograd graph is recorded: F.linear (the oneDNN op registers no autograd kernel, and
    # backpropagating through it silently gives no gradient)
    out = cpu_matmul.linear(big, trained)
    out.sum().backward()
    assert trained.grad is not None
    torch.testing.assert_close(trained.grad, big.sum(0).expand(32, -1), rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        cpu_matmul.linear(big, trained)  # no graph: oneDNN
    assert spy == [big.shape]


@needs_op
@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # torch.backends.mkldnn.flags says it
def test_disabled_is_f_linear_bit_for_bit(spy, monkeypatch):
    monkeypatch.setattr(cpu_matmul, "ENABLED", False)
    x, w = torch.randn(2500, 64), torch.randn(128, 64)
    with torch.inference_mode():
        assert torch.equal(cpu_matmul.linear(x, w), F.linear(x, w))
    monkeypatch.setattr(cpu_matmul, "ENABLED", True)
    with torch.inference_mode(), torch.backends.mkldnn.flags(enabled=False):  # torch's own switch is obeyed
        assert torch.equal(cpu_matmul.linear(x, w), F.linear(x, w))
    assert spy == []


def test_an_op_that_fails_falls_back_once_with_a_warning(monkeypatch):
    def broken(*args):
        raise RuntimeError("no kernel for this layout")

    monkeypatch.setattr(cpu_matmul, "_OP", broken)
    monkeypatch.setattr(cpu_matmul, "_failed", False)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    x, w = torch.randn(cpu_matmul.MIN_ROWS, 8), torch.randn(4, 8)
    with torch.inference_mode():
        with pytest.warns(UserWarning, match="oneDNN matmul unavailable"):
            assert torch.equal(cpu_matmul.linear(x, w), F.linear(x, w))
        assert cpu_matmul._failed and not cpu_matmul.usable(x, w, None)


@needs_op
@pytest.mark.parametrize("attention_type", [None, "nope"])
def test_model_logits_are_as_close_to_transformers_as_with_f_linear(checkpoint_factory, spy, monkeypatch, attention_type):
    """The whole forward with its products on oneDNN, against the transformers reference model:
    no farther from it than the same forward with every product on F.linear (MKL, as transformers)."""
    import drope_lens as dl

    monkeypatch.setattr(cpu_matmul, "MIN_ROWS", 64)  # the tests' model is small: its 120 rows go to oneDNN too
    directory, reference = checkpoint_factory(attention_type=attention_type)
    model = dl.load_model(directory, device="cpu", dtype="float32")
    tokens = torch.randint(0, model.cfg.d_vocab, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        theirs = reference(tokens).logits
        fast = model(tokens)
        assert len(spy) == 7 * model.cfg.n_layers + 1  # q, k, v, o, gate, up, down per layer; the unembedding
        monkeypatch.setattr(cpu_matmul, "ENABLED", False)
        plain = model(tokens)
    fast_error, plain_error = (fast - theirs).abs().max(), (plain - theirs).abs().max()
    assert fast_error <= 2 * plain_error + 1e-6 and fast_error < 1e-4, (fast_error, plain_error)
