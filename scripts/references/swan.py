#!/usr/bin/env python3
"""SWAN (Ma et al. 2024, "SWAN: SGD with Normalization and Whitening") from
the paper's equations, in numpy, and the cases lensopt checks its `swan`
rule against (tests/golden_extra/matrix/swan_*.json). Per step, on a 2-D
gradient G of shape [m, n]:

    GradNorm(G)      = (G - mean_row(G)) / sqrt(var_row(G) + eps)   row by row
    GradWhitening(G) = (G G^T + eps I)^(-1/2) G
    p <- p - lr * GradWhitening(GradNorm(G))

on G with m <= n, and on G^T (the result transposed back) when m > n, so
that the rows normalised are the long ones and G G^T is not singular.

with the inverse square root from the symmetric eigendecomposition, in
float64 (the float32 cases round the inputs and results only). The script
also checks the paper's invariants: every row of GradNorm(G) has mean 0 and
variance 1, and the whitened matrix W has orthonormal rows (W W^T = I). Run from the repository root:

    python3 scripts/references/swan.py
"""

import json
import os

import numpy as np


def inv_sqrt(s):
    lam, q = np.linalg.eigh((s + s.T) / 2)
    return (q * lam ** -0.5) @ q.T


def grad_norm(g, eps):
    c = g - g.mean(axis=1, keepdims=True)
    return c / np.sqrt((c * c).mean(axis=1, keepdims=True) + eps)


def whiten(x, eps):
    m = x.shape[0]
    return inv_sqrt(x @ x.T + eps * np.eye(m)) @ x


def swan_direction(g, eps):
    # The operators act on the matrix with rows <= cols (transposed otherwise).
    if g.shape[0] <= g.shape[1]:
        return whiten(grad_norm(g, eps), eps)
    return whiten(grad_norm(g.T, eps), eps).T


def run(p, grads, lr, eps):
    out = []
    for g in grads:
        p = p - lr * swan_direction(g, eps)
        out.append(p.copy())
    return out


def main():
    out_dir = os.path.join('tests', 'golden_extra', 'matrix')
    os.makedirs(out_dir, exist_ok=True)
    for k, (stem, shape) in enumerate([('swan_wide', (12, 20)), ('swan_tall', (20, 12))]):
        rng = np.random.default_rng(77 + k)
        p0 = rng.standard_normal(shape)
        grads = [rng.standard_normal(shape) * (1 + t) for t in range(4)]
        grads[2][1, :] = 0.0   # a zero row: GradNorm leaves it at 0
        lr, eps = 0.01, 1e-8
        # The paper's invariants, on the first gradient.
        g0 = grads[0] if shape[0] <= shape[1] else grads[0].T
        x = grad_norm(g0, eps)
        assert np.allclose(x.mean(axis=1), 0, atol=1e-12)
        assert np.allclose((x * x).mean(axis=1), 1, atol=1e-6)
        w = whiten(x, eps)
        assert np.allclose(w @ w.T, np.eye(min(shape)), atol=1e-6)
        after = run(p0, grads, lr, eps)
        for dtname in ('float64', 'float32'):
            rnd = (lambda a: a) if dtname == 'float64' else (lambda a: a.astype(np.float32).astype(np.float64))
            case = {
                'case': stem,
                'reference': 'scripts/references/swan.py (the paper\'s equations, float64)',
                'dtype': dtname,
                'shape': list(shape),
                'n': int(np.prod(shape)),
                'steps': len(grads),
                'p0': rnd(p0).tolist(),
                'grads': [rnd(g).tolist() for g in grads],
                'params_after': [rnd(a).tolist() for a in after],
                'lensopt': {'optimizer': 'swan', 'hyper': {'lr': lr, 'eps': eps}},
            }
            suffix = '' if dtname == 'float64' else '.f32'
            with open(os.path.join(out_dir, stem + suffix + '.json'), 'w') as f:
                json.dump(case, f)
    print('wrote 4 SWAN cases to', out_dir)


if __name__ == '__main__':
    main()
