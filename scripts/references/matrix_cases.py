#!/usr/bin/env python3
"""Writes lensopt's own matrix cases (tests/golden_extra/matrix/*.json) from
the transcriptions in matrix_optim.py: shapes with rows > cols, the code
paths the shared golden runs leave at their defaults (momentum, weight
decay, AMS bound...), in float64 and float32, five steps, a zero gradient
row at step 3 (SOAP: square shapes, whose statistics have no null space at
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
]

# Steps per case where not the default five (SOAP's refreshes need more).
STEPS = {'soap_square': 9, 'soap_options': 7}


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
}


def main():
    out_dir = os.path.join('tests', 'golden_extra', 'matrix')
    os.makedirs(out_dir, exist_ok=True)
    for k, (stem, name, shape, hyper) in enumerate(CASES):
        rng = np.random.default_rng(2026 + k)
        p0 = rng.standard_normal(shape)
        grads = [rng.standard_normal(shape) * (0.5 + 0.5 * t) for t in range(STEPS.get(stem, 5))]
        grads[2][1, :] = 0.0
        for dtname, dt in (('float64', np.float64), ('float32', np.float32)):
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
                'lensopt': {'optimizer': name, 'hyper': hyper},
            }
            suffix = '' if dtname == 'float64' else '.f32'
            with open(os.path.join(out_dir, stem + suffix + '.json'), 'w') as f:
                json.dump(case, f)
    print('wrote', len(CASES) * 2, 'cases to', out_dir)


if __name__ == '__main__':
    main()
