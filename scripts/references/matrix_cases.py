#!/usr/bin/env python3
"""Writes lensopt's own matrix cases (tests/golden_extra/matrix/*.json) from
the transcriptions in matrix_optim.py: shapes with rows > cols, the code
paths the shared golden runs leave at their defaults (momentum, weight
decay, AMS bound...), in float64 and float32, five steps, a zero gradient
row at step 3 (GaLore and FRUGAL: with lensopt's signs of singular vectors, and with
the reference's float32 SVD where the projector is not refreshed; SOAP: square shapes, whose statistics have no null space at
step 1, so the eigenbases are unique up to signs the update does not see;
QR in float64, as lensopt takes it). Run from the repository root:

    python3 scripts/references/matrix_cases.py
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import matrix_optim as ref  # noqa: E402

CASES = [
    # (file stem, catalog name, shape, hyperparameters)
    ('muon_tall', 'muon', (20, 12), dict(lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True)),
    ('muon_plain', 'muon', (12, 20), dict(lr=0.05, weight_decay=0.0, momentum=0.9, nesterov=False, ns_steps=3)),
    ('adafactor_tall', 'adafactor', (20, 12), dict(lr=0.01, weight_decay=0.01)),
    ('sm3_momentum', 'sm3', (20, 12), dict(lr=0.1, momentum=0.9, beta=0.5)),
    ('came_ams', 'came', (20, 12), dict(lr=2e-4, ams_bound=True, weight_decay=0.01)),
    ('shampoo_momentum', 'shampoo', (20, 12), dict(lr=0.01, momentum=0.5, weight_decay=0.01,
                                                   preconditioning_compute_steps=2)),
    ('shampoo_decoupled', 'shampoo', (12, 20), dict(lr=0.01, weight_decay=0.01, weight_decouple=True)),
    ('soap_square', 'soap', (16, 16), dict(lr=0.003, beta1=0.95, beta2=0.95, precondition_frequency=2)),
    ('soap_options', 'soap', (12, 12), dict(lr=0.01, beta1=0.9, beta2=0.99, shampoo_beta=0.8,
                                            weight_decay=0.0, precondition_frequency=1,
                                            correct_bias=False, normalize_gradient=True)),
    ('galore_wide', 'galore', (12, 20), dict(lr=0.01, rank=4, update_proj_gap=2)),
    ('galore_tall', 'galore', (20, 12), dict(lr=0.01, beta2=0.99, rank=5, update_proj_gap=3,
                                            weight_decay=0.1, scale=0.25)),
    ('galore_reference', 'galore_reference', (16, 16), dict(lr=0.01, rank=6, update_proj_gap=50)),
    ('frugal_wide', 'frugal', (12, 20), dict(lr=0.01, rank=3, update_gap=3, weight_decay=0.1)),
    ('frugal_tall', 'frugal', (20, 12), dict(lr=0.02, rank=4, update_gap=2, inactive_lr_scale=0.1,
                                            proj_params_lr_scale=0.5, reset_statistics=False,
                                            correct_bias=False)),
]

# Steps per case where not the default five (SOAP's refreshes need more).
STEPS = {'soap_square': 9, 'soap_options': 7, 'galore_wide': 7, 'galore_tall': 7,
         'frugal_wide': 7, 'frugal_tall': 7}


def qr64(m):
    """The QR's Q computed in float64 (lensopt's choice; the reference casts to float32)."""
    return np.linalg.qr(np.asarray(m, dtype=np.float64))[0]

RUN = {
    'muon': lambda p, g, h: ref.run_muon(p, g, h, bf16=False),
    'adafactor': ref.run_adafactor,
    'sm3': ref.run_sm3,
    'came': ref.run_came,
    'shampoo': ref.run_shampoo,
    'soap': lambda p, g, h: ref.run_soap(p, g, h, qr_fn=qr64),
    # GaLore's projector signs matter once it is refreshed (the moments carry over):
    # with lensopt's convention (and float64), and with the reference's own SVD
    # (float32, LAPACK's signs) where the projector is never refreshed.
    'galore': lambda p, g, h: ref.run_galore(p, g, h, svd_fn=ref.galore_svd_canonical),
    'galore_reference': ref.run_galore,
    'frugal': lambda p, g, h: ref.run_frugal(p, g, h, svd_fn=ref.galore_svd_canonical),
}
# The catalog rule each runner checks.
CATALOG = {'galore_reference': 'galore'}
# The reference's SVD runs in float32 whatever the parameter's dtype, so its
# float64 run carries float32 error (~1e-7): only its float32 run is a case.
DTYPES = {'galore_reference': ('float32',)}


def main():
    out_dir = os.path.join('tests', 'golden_extra', 'matrix')
    os.makedirs(out_dir, exist_ok=True)
    for k, (stem, name, shape, hyper) in enumerate(CASES):
        rng = np.random.default_rng(2026 + k)
        p0 = rng.standard_normal(shape)
        grads = [rng.standard_normal(shape) * (0.5 + 0.5 * t) for t in range(STEPS.get(stem, 5))]
        grads[2][1, :] = 0.0
        for dtname, dt in (('float64', np.float64), ('float32', np.float32)):
            if dtname not in DTYPES.get(stem, ('float64', 'float32')):
                continue
            p = p0.astype(dt)
            gs = [g.astype(dt) for g in grads]
            after = RUN[name](p, gs, dict(hyper))
            case = {
                'case': stem,
                'reference': 'scripts/references/matrix_optim.py (%s)' % name,
                'dtype': dtname,
                'shape': list(shape),
                'n': int(np.prod(shape)),
                'steps': len(gs),
                'p0': p.astype(np.float64).tolist(),
                'grads': [g.astype(np.float64).tolist() for g in gs],
                'params_after': [a.astype(np.float64).tolist() for a in after],
                'lensopt': {'optimizer': CATALOG.get(name, name), 'hyper': hyper},
            }
            suffix = '' if dtname == 'float64' else '.f32'
            with open(os.path.join(out_dir, stem + suffix + '.json'), 'w') as f:
                json.dump(case, f)
    print('wrote', sum(len(DTYPES.get(c[0], 'ab')) for c in CASES), 'cases to', out_dir)


if __name__ == '__main__':
    main()
