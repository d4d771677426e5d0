"""Blocked Householder tridiagonalisation of a batch of symmetric float64 matrices (LAPACK ``dsytrd``).

The per-column methods of :mod:`drope_lens.measurement.spectrum` read AND write the whole trailing
block for every column (a rank-2 update per column). LAPACK's blocked form (``dlatrd`` panels +
``dsyr2k``) only READS it per column: within a panel of ``block`` columns the trailing block stays
as it was at the panel's start, each column's matrix-vector product is taken with that block and
corrected with the panel's vectors (``A_now = A_start - V W^T - W V^T``), and the block is written
once per panel by one rank-2``block`` update (a batched GEMM). Per column: one batched
matrix-vector product (``bmm``, [batch, m, m] x [batch, m, 1]) plus small vector work; the whole
reduction is captured as one CUDA graph by :func:`drope_lens.measurement.spectrum._graphed`.
Householder vectors as in :func:`drope_lens.measurement.spectrum.tridiagonalize`
(``H x = alpha e1``, ``v = x - alpha e1``, ``tau = 2 / v.v``); both triangles are kept.
"""

from __future__ import annotations

import torch
from jaxtyping import Float

from drope_lens.measurement.householder import reflector

#: Columns per panel (the trailing block is rewritten once per panel); 16 was fastest of 16/32/64 on an H200.
BLOCK = 16


def tridiagonalize_blocked(
    a: Float[torch.Tensor, "batch n n"], *, copy: bool = True, block: int | None = None,
) -> tuple[Float[torch.Tensor, "batch n"], Float[torch.Tensor, "batch n_minus_1"]]:
    """Diagonal ``d`` and off-diagonal ``e`` of a tridiagonal matrix orthogonally similar to each
    symmetric matrix of ``a`` (float64; both triangles read). ``copy=False`` overwrites a float64
    ``a`` with intermediate values; ``block``: columns per panel (default :data:`BLOCK`)."""
    block = BLOCK if block is None else int(block)
    if block < 1:
        raise ValueError(f"block={block}: need >= 1 columns per panel.")
    a = a.double().clone() if copy or a.dtype != torch.float64 else a
    batch, n, _ = a.shape
    if n <= 2:
        d = a.diagonal(dim1=1, dim2=2).clone()
        return d, (a[:, 1:, 0].clone() if n == 2 else a.new_zeros(batch, 0))
    diagonal, alphas = [], []
    for start in range(0, n - 2, block):
        width = min(block, n - 2 - start)
        m0 = n - start
        panel = a[:, start:, start:]  # the block at the panel's start (rows/columns relative to `start`)
        v_all = a.new_zeros(batch, m0, width)
        w_all = a.new_zeros(batch, m0, width)
        for i in range(width):
            column = panel[:, i:, i]
            if i:  # the column of the current matrix: A_start - V W^T - W V^T
                column = (column - torch.bmm(v_all[:, i:, :i], w_all[:, i, :i, None]).squeeze(-1)
                          - torch.bmm(w_all[:, i:, :i], v_all[:, i, :i, None]).squeeze(-1))
            diagonal.append(column[:, 0])
            x = column[:, 1:]
            alpha, v, tau = reflector(x)  # H x = alpha e1
            y = torch.bmm(panel[:, i + 1 :, i + 1 :], v[:, :, None])  # [batch, m, 1]: A_start v
            if i:
                v_prev, w_prev = v_all[:, i + 1 :, :i], w_all[:, i + 1 :, :i]
                y = y - torch.bmm(v_prev, torch.bmm(w_prev.mT, v[:, :, None])) \
                      - torch.bmm(w_prev, torch.bmm(v_prev.mT, v[:, :, None]))
            p = y.squeeze(-1) * tau[:, None]  # tau A_now v
            w = torch.addcmul(p, v, (p * v).sum(dim=1, keepdim=True) * tau[:, None], value=-0.5)
            v_all[:, i + 1 :, i] = v
            w_all[:, i + 1 :, i] = w
            alphas.append(alpha)
        trailing = panel[:, width:, width:]  # A <- A - V W^T - W V^T beyond the panel, one GEMM
        left = torch.cat((v_all[:, width:], w_all[:, width:]), dim=-1)
        right = torch.cat((w_all[:, width:], v_all[:, width:]), dim=-1)
        trailing.baddbmm_(left, right.mT, alpha=-1.0)
    diagonal += [a[:, n - 2, n - 2], a[:, n - 1, n - 1]]
    alphas.append(a[:, n - 1, n - 2])
    return torch.stack(diagonal, dim=1), torch.stack(alphas, dim=1)
