#!/usr/bin/env python3
"""Reference transcriptions of six matrix-aware optimizers, in numpy.

Each `run_*` function below transcribes, one tensor operation per line and in
the source's order, the default code path of one reference optimizer on a
single 2-D parameter [rows, cols]:

  muon, muon_bf16  torch.optim.Muon (PyTorch 2.x)  torch/optim/_muon.py
                   `_single_tensor_muon`, `_zeropower_via_newtonschulz`, `_adjust_lr`
  adafactor        torch.optim.Adafactor           torch/optim/_adafactor.py
                   `_single_tensor_adafactor` (foreach=None: the for-loop path)
  soap             pytorch_optimizer.SOAP          pytorch_optimizer/optimizer/soap.py
  shampoo          pytorch_optimizer.Shampoo       pytorch_optimizer/optimizer/shampoo.py
  sm3              pytorch_optimizer.SM3           pytorch_optimizer/optimizer/sm3.py
  came             pytorch_optimizer.CAME          pytorch_optimizer/optimizer/came.py
  galore           pytorch_optimizer.GaLore        pytorch_optimizer/optimizer/galore.py, galore_utils.py
                   (projection_type 'std')
  frugal           FRUGAL, the authors' GaloreAdamW  frugal/adamw.py, proj_optimizer_templates.py,
                   galore_projector.py (SVD projection, signSGD on the rest)
  (+ BaseOptimizer.debias / apply_weight_decay, pytorch_optimizer/base/optimizer.py)

Versions. torch 2.15 as recorded in the golden vectors. Muon: the revision of
torch/optim/_muon.py whose Newton-Schulz loop is torch.addmm (pytorch/pytorch
b5ee4d7a797023e11507aea90811559872ce8ff6), which the bfloat16 vectors
reproduce to the last bit; a later revision (098e03f9) puts it behind
`use_addmm` and computes `b * gram + c * gram @ gram` unfused instead.
Adafactor: torch/optim/_adafactor.py (051d6a09bb159a48ac11006c454c0c979511d0f3).
pytorch-optimizer 4.1.0 as recorded; the source read is kozistr/pytorch_optimizer
at commit 7a076d2f8f09735e82f9ec1d2d389ec2526bbdbb (3.9.x), plus the later
Shampoo (`compute_power_svd(pre_cond, 2 * order)`). Where 4.1.0 behaves
differently from that source, the 4.1.0 behaviour is what is transcribed
here, as pinned down by the golden vectors:
  * SOAP: the first call only builds the statistics and Q (no update); the
    Adam step k = step - 1 drives both the bias corrections and the QR
    refresh (k % precondition_frequency == 0);
  * Shampoo: both factors accumulate the gradient itself (L += G G^T,
    R += G^T G), inverse 4th roots, computed in the parameter's dtype;
  * Muon (case `muon`, patched to run Newton-Schulz in the parameter dtype):
    x = G / (||G||_F + eps); the library's bfloat16 path uses
    G / max(||G||_F, eps).

Precision: every array is kept in the case's dtype (float32 or float64) and
numpy rounds each elementwise operation to it, as torch does; a Python-float
scalar meeting an array is rounded to the array's dtype. Reductions are not
in torch's summation order (a few ulps). Two places run in another dtype, as
in the references:
  * Muon's library default (case muon_bf16): Newton-Schulz in bfloat16,
    emulated by rounding every tensor result to bfloat16 (matmuls and addmm
    accumulate in float32 and round once);
  * SOAP: the QR of the power iteration runs in float32 and is cast back.
Float32 LAPACK (ssyevd, sgeqrf, sgesdd) comes from scipy when it is
installed (numpy's linalg computes float32 input in float64).

SOAP is not reproducible bit for bit: its step-1 eigenbasis of the larger
factor has a null space (rank min(rows, cols)) whose basis is whatever the
reference's LAPACK returned, and every later step depends on it; and its QR
runs in float32, so LAPACK rounding differences reach the float64 run at
~5e-9. `--soap-basis-from-ref` reads the reference's null-space basis back
from its step-2 output (a diagnostic of everything else).

Usage:
  python3 scripts/references/matrix_optim.py CASE.json [CASE.json ...]
  python3 scripts/references/matrix_optim.py --all [DIR]
  (add --soap-basis-from-ref to use the reference's SOAP null-space basis)
DIR defaults to /work/shared/golden/matrix (or shared/golden/matrix next to
the repository). Prints, per case, the max abs error over all steps and
elements and whether every element is within the tolerance of that folder's
README.md.
"""

import json
import math
import os
import sys

import numpy as np

try:  # float32 LAPACK (sgesdd, sgeqrf/sorgqr), as torch calls it
    import scipy.linalg as _sla
except Exception:  # pragma: no cover
    _sla = None


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def sc(x, dt):
    """A Python scalar as torch uses it against a tensor of dtype dt."""
    return dt.type(x)


def lerp(a, b, w):
    """torch.lerp(a, b, w) (two-sided formula)."""
    dt = a.dtype
    w = sc(w, dt)
    if abs(float(w)) < 0.5:
        return a + w * (b - a)
    return b - (b - a) * (sc(1.0, dt) - w)


def fro(x):
    """torch.linalg.vector_norm / Tensor.norm() of the whole tensor, in its dtype."""
    return np.sqrt(np.sum(x.astype(np.float64) ** 2)).astype(x.dtype) if x.dtype == np.float32 \
        else np.sqrt(np.sum(x * x))


def to_bf16(x):
    """Round float32 values to bfloat16 (round to nearest, ties to even); result held in float32."""
    x = np.asarray(x, dtype=np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    rounding = ((u >> 16) & 1) + 0x7FFF
    u = ((u + rounding) >> 16) << 16
    return (u & 0xFFFFFFFF).astype(np.uint32).view(np.float32)


def svd32(m):
    """torch.linalg.svd(m.to(float32), full_matrices=False): u, s, vh in float32."""
    m32 = np.asarray(m, dtype=np.float32)
    if _sla is not None:
        u, s, vh = _sla.svd(m32, full_matrices=False, lapack_driver='gesdd', check_finite=False)
        return u.astype(np.float32), s.astype(np.float32), vh.astype(np.float32)
    u, s, vh = np.linalg.svd(m32.astype(np.float64), full_matrices=False)
    return u.astype(np.float32), s.astype(np.float32), vh.astype(np.float32)


def qr32(m):
    """torch.linalg.qr(m.to(float32)) (mode 'reduced'): q in float32."""
    m32 = np.asarray(m, dtype=np.float32)
    if _sla is not None:
        q, _ = _sla.qr(m32, mode='economic', check_finite=False)
        return q.astype(np.float32)
    q, _ = np.linalg.qr(m32.astype(np.float64))
    return q.astype(np.float32)


# ---------------------------------------------------------------------------
# torch.optim.Muon  (torch/optim/_muon.py)
# ---------------------------------------------------------------------------

MUON_DEFAULTS = dict(lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
                     a=3.4445, b=-4.7750, c=2.0315, eps=1e-7, ns_steps=5,
                     adjust_lr_fn=None)


def ns_native(grad, a, b, c, ns_steps, eps):
    """`_zeropower_via_newtonschulz` with every operation in grad's dtype (case muon)."""
    dt = grad.dtype
    x = grad.copy()
    transposed = grad.shape[0] > grad.shape[1]
    if transposed:
        x = x.T
    x = x / (fro(x) + sc(eps, dt))   # the patched reference: ||G||_F + eps
    for _ in range(ns_steps):
        gram = x @ x.T
        gram_update = sc(b, dt) * gram + sc(c, dt) * (gram @ gram)
        x = sc(a, dt) * x + gram_update @ x
    if transposed:
        x = x.T
    return x


def ns_bf16(grad, a, b, c, ns_steps, eps, use_addmm=True):
    """`_zeropower_via_newtonschulz` as shipped: ortho_grad = grad.bfloat16(), bf16 throughout.

    use_addmm=True: gram_update = addmm(gram, gram, gram, beta=b, alpha=c) and
    x = addmm(x, gram_update, x, beta=a), each rounded once (what the vectors match);
    use_addmm=False: the unfused `b * gram + c * gram @ gram` of the later source.
    """
    bf = to_bf16
    f32 = np.float32
    x = bf(grad.astype(f32))
    transposed = grad.shape[0] > grad.shape[1]
    if transposed:
        x = x.T
    nrm = bf(np.sqrt(np.sum(x.astype(np.float64) ** 2)).astype(f32))
    nrm = bf(max(nrm, f32(eps)))  # ortho_grad.norm().clamp(min=eps), a bf16 scalar
    x = bf(x / nrm)
    for _ in range(ns_steps):
        gram = bf(x @ x.T)
        if use_addmm:
            # torch.addmm(gram, gram, gram, beta=b, alpha=c): one rounding of b*gram + c*(gram@gram)
            gram_update = bf(f32(b) * gram + f32(c) * (gram @ gram))
            x = bf(f32(a) * x + gram_update @ x)
        else:
            # b * gram + c * gram @ gram  parses as  b*gram + ((c*gram) @ gram)
            gram_update = bf(bf(f32(b) * gram) + bf(bf(f32(c) * gram) @ gram))
            x = bf(bf(f32(a) * x) + bf(gram_update @ x))
    if transposed:
        x = x.T
    return x


def run_muon(p, grads, h, bf16=False):
    h = {**MUON_DEFAULTS, **h}
    dt = p.dtype
    lr, wd, mom = h['lr'], h['weight_decay'], h['momentum']
    buf = np.zeros_like(p)
    out = []
    for g in grads:
        buf = lerp(buf, g, 1 - mom)
        update = lerp(g, buf, mom) if h['nesterov'] else buf
        ns = ns_bf16 if bf16 else ns_native
        update = ns(update, h['a'], h['b'], h['c'], int(h['ns_steps']), h['eps']).astype(dt)
        A, B = p.shape
        fn = h['adjust_lr_fn']
        if fn is None or fn == 'original':
            ratio = math.sqrt(max(1, A / B))
        elif fn == 'match_rms_adamw':
            ratio = 0.2 * math.sqrt(max(A, B))
        else:
            ratio = 1.0
        adjusted_lr = lr * ratio
        p = p * sc(1 - lr * wd, dt)
        p = p + sc(-adjusted_lr, dt) * update
        out.append(p.copy())
    return out


# ---------------------------------------------------------------------------
# torch.optim.Adafactor  (torch/optim/_adafactor.py, _single_tensor_adafactor)
# ---------------------------------------------------------------------------

ADAFACTOR_DEFAULTS = dict(lr=1e-2, beta2_decay=-0.8, eps1=None, eps2=1e-3, d=1.0,
                          weight_decay=0.0, maximize=False)


def run_adafactor(p, grads, h):
    h = {**ADAFACTOR_DEFAULTS, **h}
    dt = p.dtype
    lr, decay, eps2, d, wd = h['lr'], h['beta2_decay'], h['eps2'], h['d'], h['weight_decay']
    eps1 = h['eps1'] if h['eps1'] is not None else float(np.finfo(dt).eps)
    rows, cols = p.shape
    row_var = np.zeros((rows, 1), dt)
    col_var = np.zeros((1, cols), dt)
    step = 0.0
    out = []
    for g in grads:
        if h['maximize']:
            g = -g
        step += 1
        one_minus_beta2_t = step ** decay
        rho_t = min(lr, 1 / (step ** 0.5))
        alpha = max(eps2, float(fro(p)) / (p.size ** 0.5)) * rho_t
        if wd != 0:
            p = p * sc(1 - lr * wd, dt)
        row_mean = np.sqrt(np.sum(g * g, axis=-1, keepdims=True)) ** 2 / sc(cols, dt)
        row_var = lerp(row_var, row_mean, one_minus_beta2_t)
        col_mean = np.sqrt(np.sum(g * g, axis=-2, keepdims=True)) ** 2 / sc(rows, dt)
        col_var = lerp(col_var, col_mean, one_minus_beta2_t)
        var_estimate = row_var @ col_var
        var_estimate = var_estimate / np.maximum(np.mean(row_var, axis=-2, keepdims=True), sc(eps1, dt))
        update = sc(1, dt) / np.sqrt(np.maximum(var_estimate, sc(eps1 * eps1, dt)))
        update = update * g
        denom = max(1.0, float(fro(update)) / ((update.size ** 0.5) * d))
        p = p + sc(-alpha / denom, dt) * update
        out.append(p.copy())
    return out


# ---------------------------------------------------------------------------
# pytorch_optimizer.SOAP  (pytorch_optimizer/optimizer/soap.py)
# ---------------------------------------------------------------------------

SOAP_DEFAULTS = dict(lr=3e-3, beta1=0.95, beta2=0.95, shampoo_beta=None, weight_decay=1e-2,
                     precondition_frequency=10, max_precondition_dim=10000, correct_bias=True,
                     normalize_gradient=False, eps=1e-8)


def soap_eigh(m):
    """get_orthogonal_matrix: eigh(m + 1e-30 I) (ascending), columns flipped to descending order.

    Eigenvectors of a repeated eigenvalue (the null space of a rank-deficient factor) are
    whatever the LAPACK in use returns; see ALGORITHMS notes: SOAP depends on that choice.
    """
    dt = m.dtype
    a = m + sc(1e-30, dt) * np.eye(m.shape[0], dtype=dt)
    if dt == np.float32 and _sla is not None:
        _, q = _sla.eigh(a, driver='evd', check_finite=False)  # ssyevd, as torch on CPU
    else:
        _, q = np.linalg.eigh(a)
    return np.ascontiguousarray(q[:, ::-1]).astype(dt)


def run_soap(p, grads, h, eigh_fn=None, qr_fn=None):
    """`qr_fn` replaces the reference's float32 QR (lensopt factors in float64)."""
    h = {**SOAP_DEFAULTS, **h}
    dt = p.dtype
    beta1, beta2 = h['beta1'], h['beta2']
    shampoo_beta = h['shampoo_beta'] if h['shampoo_beta'] is not None else beta2
    freq, maxdim = int(h['precondition_frequency']), int(h['max_precondition_dim'])
    eigh_fn = eigh_fn or soap_eigh
    qr_fn = qr_fn or qr32
    rows, cols = p.shape
    exp_avg = np.zeros_like(p)
    exp_avg_sq = np.zeros_like(p)
    GG = [np.zeros((n, n), dt) if n <= maxdim else None for n in (rows, cols)]
    Q = None

    def project(x, back=False):
        # for each factor: tensordot(x, Q_i, dims=[[0], [0]]) (forward) or [[0], [1]] (backward);
        # a skipped factor (dim > max_precondition_dim) just rotates the axes
        for q in Q:
            x = np.tensordot(x, q.T if back else q, axes=([0], [0])) if q is not None else np.moveaxis(x, 0, -1)
        return x

    def update_pre_conditioner(g, adam_step):
        nonlocal Q, exp_avg_sq
        w = 1.0 - shampoo_beta
        if GG[0] is not None:
            GG[0] = lerp(GG[0], g @ g.T, w)       # tensordot over every dim but 0
        if GG[1] is not None:
            GG[1] = lerp(GG[1], g.T @ g, w)       # tensordot over every dim but 1
        if Q is None:
            Q = [eigh_fn(m) if m is not None else None for m in GG]
        if adam_step > 0 and adam_step % freq == 0:
            # get_orthogonal_matrix_qr: one power iteration per factor, QR in float32
            new_q = []
            for ind, (m, o) in enumerate(zip(GG, Q)):
                if m is None:
                    new_q.append(None)
                    continue
                est_eig = np.diag(o.T @ m @ o)
                sort_idx = np.argsort(-est_eig, kind='stable')       # argsort(descending=True)
                exp_avg_sq = np.take(exp_avg_sq, sort_idx, axis=ind)  # index_select(ind, sort_idx)
                power_iter = m @ o[:, sort_idx]
                new_q.append(qr_fn(power_iter).astype(dt))
            Q = new_q

    out = []
    step = 0
    for t, g in enumerate(grads):
        step += 1
        if step == 1:
            # first call: state created, statistics from g, Q = eigh; no parameter update
            update_pre_conditioner(g, 0)
            out.append(p.copy())
            continue
        k = step - 1   # Adam step: the bias corrections and the refresh schedule count from the 2nd call
        step_size = h['lr']
        if h['correct_bias']:
            bias_correction1 = 1.0 - math.pow(beta1, k)
            bias_correction2_sq = math.sqrt(1.0 - math.pow(beta2, k))
            step_size *= bias_correction2_sq / bias_correction1
        grad_projected = project(g)
        exp_avg = exp_avg * sc(beta1, dt) + sc(1.0 - beta1, dt) * g
        exp_avg_sq = exp_avg_sq * sc(beta2, dt) + sc(1.0 - beta2, dt) * (grad_projected * grad_projected)
        de_nom = np.sqrt(exp_avg_sq) + sc(h['eps'], dt)
        exp_avg_projected = project(exp_avg)
        norm_grad = project(exp_avg_projected / de_nom, back=True)
        if h['normalize_gradient']:
            norm_grad = norm_grad / (np.sqrt(np.mean(norm_grad * norm_grad)) + sc(h['eps'], dt))
        p = p + sc(-step_size, dt) * norm_grad
        p = p * sc(1.0 - h['weight_decay'] * h['lr'], dt)      # decoupled, after the update
        update_pre_conditioner(g, k)
        out.append(p.copy())
    return out


def soap_basis_from_reference(p0, grads, params_after, h, seed=0):
    """Diagnostic: an `eigh_fn` whose null-space eigenvectors are the reference's own.

    At step 1 the larger factor (cols x cols when rows < cols) has rank min(rows, cols), so
    eigh's basis of its null space is arbitrary and LAPACK-specific. The step-2 update is
    P1 - P2/(1 - lr wd) = lr_step * QL f(QL^T G2 QR) QR^T with f elementwise, so the
    reference's null-space basis (up to order and signs, which do not matter) can be read
    back from params_after[1]: a sign-constrained orthogonal Procrustes fit, then refined.
    Only for the default path (correct_bias, no normalize_gradient) and rows != cols.
    """
    h = {**SOAP_DEFAULTS, **h}
    f64 = np.float64
    p0 = p0.astype(f64)
    g1, g2 = grads[0].astype(f64), grads[1].astype(f64)
    p1, p2 = np.asarray(params_after[0], f64), np.asarray(params_after[1], f64)
    rows, cols = p0.shape
    if rows == cols:
        return None
    b1, b2, eps = h['beta1'], h['beta2'], h['eps']
    sb = h['shampoo_beta'] if h['shampoo_beta'] is not None else b2
    QL = soap_eigh((1 - sb) * g1 @ g1.T)
    QR = soap_eigh((1 - sb) * g1.T @ g1)
    step_size = h['lr'] * math.sqrt(1 - b2) / (1 - b1)
    N = (p1 - p2 / (1 - h['lr'] * h['weight_decay'])) / step_size
    X = QL.T @ N @ QR
    Y = QL.T @ g2 @ QR
    k = min(rows, cols)
    if rows < cols:
        X, Y = X[:, k:], Y[:, k:]
    else:
        X, Y = X[k:, :].T, Y[k:, :].T
    f = lambda P: (1 - b1) * P / (np.sqrt((1 - b2) * P * P) + eps)
    n = X.shape[1]
    rng = np.random.default_rng(seed)
    best = None
    level = (1 - b1) / math.sqrt(1 - b2)      # |f(P)| for |P| >> eps
    for _ in range(2000):                     # stage 1: X O has entries +-level
        O, _ = np.linalg.qr(rng.standard_normal((n, n)))
        for _ in range(100):
            u, _, vt = np.linalg.svd(X.T @ (level * np.sign(X @ O)))
            O = u @ vt
        res = np.abs(np.abs(X @ O) - level).max()
        if best is None or res < best[0]:
            best = (res, O)
        if res < 1e-3 * level:
            break
    O = best[1]
    for _ in range(500):                      # stage 2: the exact model X = f(Y O) O^T
        u, _, vt = np.linalg.svd(X.T @ f(Y @ O))
        O = u @ vt
    null = (QR[:, k:] if rows < cols else QL[:, k:]) @ O
    big = cols if rows < cols else rows

    def eigh_fn(m):
        q = soap_eigh(m)
        if m.shape[0] == big:
            q = q.copy()
            q[:, k:] = null.astype(q.dtype)
        return q
    return eigh_fn


# ---------------------------------------------------------------------------
# pytorch_optimizer.GaLore  (pytorch_optimizer/optimizer/galore.py, galore_utils.py)
# ---------------------------------------------------------------------------

GALORE_DEFAULTS = dict(lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-6,
                       rank=128, update_proj_gap=50, scale=1.0)


def galore_svd_reference(g):
    """GaLoreProjector.get_orthogonal_matrix: torch.linalg.svd of the float32 gradient
    (full_matrices=False), LAPACK's signs; cast back to the parameter's dtype."""
    u, s, vh = svd32(g)
    return u.astype(g.dtype), s, vh.astype(g.dtype)


def canonical_signs(vectors):
    """Each column with its entry of largest magnitude positive (lensopt's convention)."""
    lead = vectors[np.argmax(np.abs(vectors), axis=0), np.arange(vectors.shape[1])]
    return vectors * np.where(lead < 0, -1.0, 1.0)


def galore_svd_canonical(g):
    """The SVD in float64 with each singular vector's largest entry positive (lensopt's choice)."""
    u, s, vh = np.linalg.svd(np.asarray(g, np.float64), full_matrices=False)
    return canonical_signs(u), s, canonical_signs(vh.T).T


def run_galore(p, grads, h, svd_fn=None):
    """The `std` projection: right (G Vh_r^T) when rows >= cols, else left (U_r^T G);
    the projector refreshed at the first step and every update_proj_gap steps; AdamW
    state in the low-rank space; decoupled weight decay after the step."""
    h = {**GALORE_DEFAULTS, **h}
    dt = p.dtype
    svd_fn = svd_fn or galore_svd_reference
    beta1, beta2, rank, gap = h['beta1'], h['beta2'], int(h['rank']), int(h['update_proj_gap'])
    ortho = exp_avg = exp_avg_sq = None
    out = []
    for step, g in enumerate(grads, start=1):
        step_size = h['lr'] * math.sqrt(1.0 - math.pow(beta2, step)) / (1.0 - math.pow(beta1, step))
        is_right = g.shape[0] >= g.shape[1]
        if ortho is None or step % gap == 0:
            u, _, vh = svd_fn(g)
            ortho = (vh[:rank, :] if is_right else u[:, :rank]).astype(dt)
        low = g @ ortho.T if is_right else ortho.T @ g
        if exp_avg is None:
            exp_avg, exp_avg_sq = np.zeros_like(low), np.zeros_like(low)
        exp_avg = exp_avg * sc(beta1, dt) + sc(1.0 - beta1, dt) * low
        exp_avg_sq = exp_avg_sq * sc(beta2, dt) + sc(1.0 - beta2, dt) * low * low
        norm_grad = exp_avg / (np.sqrt(exp_avg_sq) + sc(h['eps'], dt))
        back = norm_grad @ ortho if norm_grad.shape[0] >= norm_grad.shape[1] else ortho @ norm_grad
        back = back * sc(h['scale'], dt)
        p = p + sc(-step_size, dt) * back
        p = p * sc(1.0 - h['weight_decay'] * h['lr'], dt)
        out.append(p.copy())
    return out


# ---------------------------------------------------------------------------
# FRUGAL (the authors' code, frugal/adamw.py GaloreAdamW + proj_optimizer_templates.py
# GaloreOptimizer + galore_projector.py GaLoreProjector; proj_side 'std', proj_type 'svd',
# inactive_update_rule 'sign_sgd')
# ---------------------------------------------------------------------------

FRUGAL_DEFAULTS = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, rank=128,
                       update_gap=200, proj_params_lr_scale=1.0, inactive_lr_scale=1.0,
                       correct_bias=True, reset_statistics=True)


def run_frugal(p, grads, h, svd_fn=None):
    """`rank` stands for the reference's round(density * side). The projector is refreshed
    when the state's step count is a multiple of update_gap (from the first step), and
    with reset_statistics the moments and the step count restart then; weight decay
    comes first; HF-style Adam (denominator sqrt(v)/sqrt(bc2) + eps)."""
    h = {**FRUGAL_DEFAULTS, **h}
    dt = p.dtype
    svd_fn = svd_fn or galore_svd_reference
    beta1, beta2, rank, gap = h['beta1'], h['beta2'], int(h['rank']), int(h['update_gap'])
    ortho = exp_avg = exp_avg_sq = None
    step = None
    out = []
    for g in grads:
        is_right = g.shape[0] >= g.shape[1]
        if step is None or step % gap == 0:            # _update_states_if_necessary
            u, _, vh = svd_fn(g)
            ortho = (vh[:rank, :] if is_right else u[:, :rank]).astype(dt)
            if step is None or h['reset_statistics']:
                low_shape = (g @ ortho.T if is_right else ortho.T @ g).shape
                exp_avg, exp_avg_sq = np.zeros(low_shape, dt), np.zeros(low_shape, dt)
                step = 0
        p = p * sc(1.0 - h['lr'] * h['weight_decay'], dt)
        step += 1
        down = g @ ortho.T if is_right else ortho.T @ g
        up = (lambda x: x @ ortho) if is_right else (lambda x: ortho @ x)
        active_lr = h['lr'] * h['proj_params_lr_scale']
        exp_avg = exp_avg * sc(beta1, dt) + sc(1.0 - beta1, dt) * down
        exp_avg_sq = exp_avg_sq * sc(beta2, dt) + sc(1.0 - beta2, dt) * down * down
        denom = np.sqrt(exp_avg_sq)
        step_size = active_lr
        if h['correct_bias']:
            step_size = active_lr / (1.0 - beta1 ** step)
            denom = denom / sc(math.sqrt(1.0 - beta2 ** step), dt)
        denom = denom + sc(h['eps'], dt)
        update = up(exp_avg / denom * sc(-step_size, dt))
        inactive = g - up(down)
        inactive_lr = h['lr'] * h['proj_params_lr_scale'] * h['inactive_lr_scale']
        update = update + sc(-inactive_lr, dt) * np.sign(inactive)
        p = p + update
        out.append(p.copy())
    return out


# ---------------------------------------------------------------------------
# pytorch_optimizer.Shampoo  (pytorch_optimizer/optimizer/shampoo.py)
# ---------------------------------------------------------------------------

SHAMPOO_DEFAULTS = dict(lr=1e-3, momentum=0.0, weight_decay=0.0, weight_decouple=False,
                        fixed_decay=False, preconditioning_compute_steps=1, matrix_eps=1e-6)


def inverse_root(m, root):
    """m^(-1/root) by SVD, u diag(s^(-1/root)) vh, in m's own dtype."""
    if m.dtype == np.float32:
        u, s, vh = svd32(m)
    else:
        u, s, vh = np.linalg.svd(m, full_matrices=False)
    s = s ** m.dtype.type(-1.0 / root)
    return (u @ np.diag(s)) @ vh


def run_shampoo(p, grads, h):
    h = {**SHAMPOO_DEFAULTS, **h}
    dt = p.dtype
    lr, mom, wd = h['lr'], h['momentum'], h['weight_decay']
    every = int(h['preconditioning_compute_steps'])
    rows, cols = p.shape
    order = 2
    pre = [sc(h['matrix_eps'], dt) * np.eye(n, dtype=dt) for n in (rows, cols)]
    inv = [np.zeros((n, n), dt) for n in (rows, cols)]
    buf = None
    step = 0
    out = []
    for g in grads:
        if step == 0 and mom > 0.0:
            buf = g.copy()                      # momentum_buffer = grad.clone() at state creation
        step += 1
        grad = g.copy()
        if mom > 0.0:
            grad = lerp(grad, buf, mom)         # grad.lerp_(momentum_buffer, weight=momentum)
        if h['weight_decouple']:
            p = p * sc(1.0 - wd * (1.0 if h['fixed_decay'] else lr), dt)
        elif wd > 0.0:
            grad = grad + sc(wd, dt) * p
        # statistics of the (momentum/weight-decayed) gradient itself, for every dim
        pre[0] = pre[0] + grad @ grad.T
        pre[1] = pre[1] + grad.T @ grad
        if step % every == 0:
            inv[0] = inverse_root(pre[0], 2 * order)   # inverse 4th roots for a matrix
            inv[1] = inverse_root(pre[1], 2 * order)
        grad = (inv[0] @ grad) @ inv[1]
        buf = grad
        p = p + sc(-lr, dt) * grad
        out.append(p.copy())
    return out


# ---------------------------------------------------------------------------
# pytorch_optimizer.SM3  (pytorch_optimizer/optimizer/sm3.py), dense path
# ---------------------------------------------------------------------------

SM3_DEFAULTS = dict(lr=1e-1, momentum=0.0, beta=0.0, eps=1e-30)


def run_sm3(p, grads, h):
    h = {**SM3_DEFAULTS, **h}
    dt = p.dtype
    lr, mom, beta, eps = h['lr'], h['momentum'], h['beta'], h['eps']
    rows, cols = p.shape
    acc0 = np.zeros((rows, 1), dt)
    acc1 = np.zeros((1, cols), dt)
    m = np.zeros_like(p)
    out = []
    for g in grads:
        update = np.minimum(acc0, acc1)                 # broadcast to [rows, cols]
        if beta > 0.0:
            update = update * sc(beta, dt)
        update = update + sc(1.0 - beta, dt) * (g * g)  # addcmul_
        nu0 = np.max(update, axis=1, keepdims=True)
        nu1 = np.max(update, axis=0, keepdims=True)
        if beta > 0.0:
            acc0 = np.maximum(acc0, nu0)
            acc1 = np.maximum(acc1, nu1)
        else:
            acc0, acc1 = nu0, nu1
        update = (sc(1, dt) / np.sqrt(update + sc(eps, dt))) * g
        if mom > 0.0:
            m = m * sc(mom, dt) + sc(1.0 - mom, dt) * update
            update = m
        p = p + sc(-lr, dt) * update
        out.append(p.copy())
    return out


# ---------------------------------------------------------------------------
# pytorch_optimizer.CAME  (pytorch_optimizer/optimizer/came.py)
# ---------------------------------------------------------------------------

CAME_DEFAULTS = dict(lr=2e-4, beta1=0.9, beta2=0.999, beta3=0.9999, weight_decay=0.0,
                     weight_decouple=True, fixed_decay=False, clip_threshold=1.0,
                     ams_bound=False, eps1=1e-30, eps2=1e-16)


def came_rms(x):
    return fro(x) / x.dtype.type(math.sqrt(x.size))


def came_approx(row, col):
    """approximate_sq_grad: rsqrt(row / mean(row))[:, None] * rsqrt(col)[None, :]."""
    dt = row.dtype
    r = (sc(1, dt) / np.sqrt(row / np.mean(row, axis=-1, keepdims=True)))[:, None]
    c = (sc(1, dt) / np.sqrt(col))[None, :]
    return r * c


def run_came(p, grads, h):
    h = {**CAME_DEFAULTS, **h}
    dt = p.dtype
    b1, b2, b3 = h['beta1'], h['beta2'], h['beta3']
    rows, cols = p.shape
    exp_avg = np.zeros_like(p)
    sq_row, sq_col = np.zeros(rows, dt), np.zeros(cols, dt)
    res_row, res_col = np.zeros(rows, dt), np.zeros(cols, dt)
    sq_hat = np.zeros_like(p)
    out = []
    for g in grads:
        update = g * g + sc(h['eps1'], dt)
        sq_row = sq_row * sc(b2, dt) + sc(1.0 - b2, dt) * np.mean(update, axis=-1)
        sq_col = sq_col * sc(b2, dt) + sc(1.0 - b2, dt) * np.mean(update, axis=-2)
        update = came_approx(sq_row, sq_col)
        if h['ams_bound']:
            sq_hat = np.maximum(sq_hat, sc(1, dt) / update)
            update = sc(1, dt) / np.sqrt(sq_hat / sc(b2, dt))
        update = update * g
        update = update / max(came_rms(update) / sc(h['clip_threshold'], dt), sc(1.0, dt))
        exp_avg = exp_avg * sc(b1, dt) + sc(1.0 - b1, dt) * update
        res = update - exp_avg
        res = res * res + sc(h['eps2'], dt)
        res_row = res_row * sc(b3, dt) + sc(1.0 - b3, dt) * np.mean(res, axis=-1)
        res_col = res_col * sc(b3, dt) + sc(1.0 - b3, dt) * np.mean(res, axis=-2)
        update = came_approx(res_row, res_col)
        update = update * exp_avg
        if h['weight_decouple']:
            p = p * sc(1.0 - h['weight_decay'] * (1.0 if h['fixed_decay'] else h['lr']), dt)
        elif h['weight_decay'] > 0.0:
            pass  # grad.add_(p, alpha=wd) after its last use: no effect on this step
        update = update * sc(h['lr'], dt)
        p = p + (-update)
        out.append(p.copy())
    return out


# ---------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------

RUNNERS = {
    'muon': lambda p, g, h: run_muon(p, g, h, bf16=False),
    'muon_bf16': lambda p, g, h: run_muon(p, g, h, bf16=True),
    'adafactor': run_adafactor,
    'soap': run_soap,
    'shampoo': run_shampoo,
    'sm3': run_sm3,
    'came': run_came,
    'galore': run_galore,
    'frugal': run_frugal,
}


def tolerance(case, dtype):
    """(atol, rtol, informative_only) from shared/golden/matrix/README.md."""
    if dtype == 'float64':
        return 1e-10, 1e-8, False
    if case == 'muon_bf16':
        return 2e-3, 1e-2, False
    if case == 'soap':
        return 1e-5, 1e-4, True
    return 1e-5, 1e-4, False


def split_hyper(h):
    """Hypers as the case lists them; Adafactor's eps tuple is split as eps1, eps2."""
    h = dict(h)
    if 'eps' in h and isinstance(h['eps'], (list, tuple)):
        h['eps1'], h['eps2'] = h.pop('eps')
    return h


def run_case(path, soap_basis_from_ref=False):
    with open(path) as f:
        d = json.load(f)
    case, dtname = d['case'], d['dtype']
    dt = np.dtype(np.float32 if dtname == 'float32' else np.float64)
    p0 = np.array(d['p0'], dtype=dt)
    grads = [np.array(g, dtype=dt) for g in d['grads']]
    hyper = split_hyper(d['lensopt']['hyper'])
    note = ''
    if case == 'soap' and soap_basis_from_ref:
        fn = soap_basis_from_reference(p0, grads, d['params_after'], hyper)
        ours = run_soap(p0, grads, hyper, eigh_fn=fn)
        note = '  [null-space basis read back from the reference]'
    else:
        ours = RUNNERS[case](p0, grads, hyper)
    atol, rtol, info = tolerance(case, dtname)
    max_err, ok, worst_step, n_bad = 0.0, True, 0, 0
    for t, (o, r) in enumerate(zip(ours, d['params_after'])):
        r = np.array(r, dtype=np.float64)
        err = np.abs(o.astype(np.float64) - r)
        if err.max() > max_err:
            max_err, worst_step = float(err.max()), t + 1
        bad = err > atol + rtol * np.abs(r)
        n_bad += int(bad.sum())
        ok &= not bad.any()
    verdict = ('PASS' if ok else f'FAIL ({n_bad} elements out of tolerance)') + \
        (' (informative only)' if info else '')
    print(f'{os.path.basename(path):20s} max_abs_err={max_err:.3e} (step {worst_step})  {verdict}{note}')
    return ok or info


def main(argv):
    argv = list(argv)
    basis = '--soap-basis-from-ref' in argv
    argv = [a for a in argv if a != '--soap-basis-from-ref']
    if not argv:
        print(__doc__)
        return 2
    if argv[0] == '--all':
        here = os.path.dirname(os.path.abspath(__file__))
        cands = argv[1:] or ['/work/shared/golden/matrix',
                             os.path.join(here, '..', '..', 'shared', 'golden', 'matrix')]
        folder = next(c for c in cands if os.path.isdir(c))
        paths = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith('.json'))
    else:
        paths = argv
    results = [run_case(pth, basis) for pth in paths]
    return 0 if all(results) else 1


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
