#!/usr/bin/env python3
"""Reference vectors for seven pytorch-optimizer optimizers, without PyTorch.

Each `run_*` function below is a step-by-step transcription of the default
code path of one pytorch-optimizer class (kozistr/pytorch_optimizer, read at
commit 7a076d2f8f09735e82f9ec1d2d389ec2526bbdbb), one tensor operation per
line in the source's order; the comment above each function names the file.
The transcriptions are written out here, not imported: nothing of PyTorch or
pytorch-optimizer is needed (standard library only).

Precision. Every case is written twice:
  * `<name>.json`: float64 arithmetic throughout;
  * `<name>.f32.json`: inputs rounded to float32, and every elementwise
    tensor operation rounded to float32 (`r32`), as torch computes on
    float32 tensors. Python-float scalars (bias corrections, step sizes)
    stay float64 until they meet a tensor, where they are rounded to
    float32 first, as torch casts a Python scalar to the tensor's dtype.
    Sums are correctly rounded (math.fsum, then rounded to the dtype);
    torch's cascade summation can differ from that by a few ulps.
    torch.lerp is PyTorch's two-sided formula with a fused multiply-add
    (what its vectorised CPU kernel computes).

Inputs: n = 37, steps = 5, random.Random(20241200 + index): p0 ~ N(0, 1),
then grads ~ 0.5 * N(0, 1) row by row (random.gauss); grads[t][7] = 0 for
every t and grads[2][11] = 0.

Usage: python3 scripts/references/pytorch_optimizer.py [OUT_DIR]
(OUT_DIR defaults to tests/golden_extra next to this script's project).
"""

import json
import math
import os
import random
import struct
import sys
from fractions import Fraction

REPO = "kozistr/pytorch_optimizer"
COMMIT = "7a076d2f8f09735e82f9ec1d2d389ec2526bbdbb"
GENERATOR = "scripts/references/pytorch_optimizer.py (pure-Python transcription; no PyTorch run)"
N = 37
STEPS = 5
SEED_BASE = 20241200


def r32(x):
    """Round a Python float to the nearest float32 (ties to even)."""
    return struct.unpack('f', struct.pack('f', x))[0]


# ---------------------------------------------------------------------------
# A tiny tensor library: 1-D tensors are Python lists, 0-dim tensors Python
# floats. `F32` selects float32 rounding of every operation's result.
# ---------------------------------------------------------------------------

F32 = False


def rnd(x):
    return r32(x) if F32 else x


def scalar(s):
    """A Python scalar meeting a tensor: cast to the tensor's dtype."""
    return rnd(float(s))


def _map2(f, a, b):
    if isinstance(a, list) and isinstance(b, list):
        return [f(x, y) for x, y in zip(a, b)]
    if isinstance(a, list):
        return [f(x, b) for x in a]
    if isinstance(b, list):
        return [f(a, y) for y in b]
    return f(a, b)


def _map1(f, a):
    return [f(x) for x in a] if isinstance(a, list) else f(a)


def _operand(b):
    # A Python scalar operand is cast to the dtype; a tensor already is.
    return b if isinstance(b, list) else rnd(b)


def mul(a, b):
    return _map2(lambda x, y: rnd(x * y), a, _operand(b))


def div(a, b):
    return _map2(lambda x, y: rnd(x / y) if y != 0 else _div0(x, y), a, _operand(b))


def _div0(x, y):
    if x == 0 or x != x:
        return math.nan
    return math.copysign(math.inf, x) * math.copysign(1.0, y)


def add(a, b, alpha=1.0):
    """torch.add(a, b, alpha=alpha): a + alpha * b."""
    b = _operand(b)
    if alpha == 1.0:
        return _map2(lambda x, y: rnd(x + y), a, b)
    al = scalar(alpha)
    return _map2(lambda x, y: rnd(x + rnd(al * y)), a, b)


def sub(a, b):
    return _map2(lambda x, y: rnd(x - y), a, _operand(b))


def addcmul(a, t1, t2, value=1.0):
    """torch.addcmul: a + value * t1 * t2."""
    v = scalar(value)
    return [rnd(x + rnd(rnd(v * y) * z)) for x, y, z in zip(a, t1, t2)]


def addcdiv(a, t1, t2, value=1.0):
    """torch.addcdiv: a + value * t1 / t2."""
    v = scalar(value)
    return [rnd(x + rnd(rnd(v * y) / z)) for x, y, z in zip(a, t1, t2)]


def sqrt(a):
    return _map1(lambda x: rnd(math.sqrt(x)), a)


def pow2(a):
    return _map1(lambda x: rnd(x * x), a)


def clamp_min(a, lo):
    lo = scalar(lo)
    return _map1(lambda x: x if x != x else max(x, lo), a)


def clamp_max(a, hi):
    hi = scalar(hi)
    return _map1(lambda x: x if x != x else min(x, hi), a)


def minimum(a, b):
    return [x if (x != x or x <= y) else y for x, y in zip(a, b)]


def sign(a):
    return [(1.0 if x > 0 else -1.0 if x < 0 else x) for x in a]


def _fma(x, y, z):
    return rnd(float(Fraction(x) * Fraction(y) + Fraction(z)))


def lerp(a, b, weight):
    """torch.lerp(a, b, weight) with a Python-scalar weight (CPU kernel)."""
    w = scalar(weight)
    out = []
    for x, y in zip(a, b):
        d = rnd(y - x)
        if abs(w) < 0.5:
            out.append(_fma(w, d, x))
        else:
            out.append(_fma(rnd(w - 1.0), d, y))
    return out


def tsum(a):
    """Tensor.sum() -> 0-dim tensor (correctly rounded sum)."""
    return rnd(math.fsum(a))


def tmean(a):
    """Tensor.mean() -> 0-dim tensor."""
    return rnd(tsum(a) / len(a))


def full_like(a, value):
    return [scalar(value)] * len(a)


def zeros_like(a):
    return [0.0] * len(a)


# BaseOptimizer helpers (pytorch_optimizer/base/optimizer.py), transcribed.

def debias(beta, step):
    return 1.0 - math.pow(beta, step)


def debias_beta(beta, step):
    beta_n = math.pow(beta, step)
    return (beta_n - beta) / (beta_n - 1.0)


def apply_weight_decay(p, grad, lr, weight_decay, weight_decouple, fixed_decay):
    """BaseOptimizer.apply_weight_decay; returns (p, grad)."""
    if weight_decouple:
        p = mul(p, 1.0 - weight_decay * (1.0 if fixed_decay else lr))
    elif weight_decay > 0.0 and grad is not None:
        grad = add(grad, p, alpha=weight_decay)
    return p, grad


def apply_weight_decay_foreach(p, grad, lr, weight_decay, weight_decouple, fixed_decay):
    """BaseOptimizer.apply_weight_decay_foreach (one tensor); returns (p, grad)."""
    if weight_decay == 0.0:
        return p, grad
    if not weight_decouple:
        grad = add(grad, p, alpha=weight_decay)
        return p, grad
    factor = 1.0 - weight_decay if fixed_decay else 1.0 - weight_decay * lr
    p = mul(p, factor)
    return p, grad


def get_stable_adamw_rms(grad, exp_avg_sq, eps=1e-16):
    """BaseOptimizer.get_stable_adamw_rms: a Python float (`.item()`)."""
    x = pow2(grad)
    x = div(x, clamp_min(exp_avg_sq, eps))
    x = tmean(x)
    x = sqrt(x)
    x = max(x, scalar(1.0))
    return x


# ---------------------------------------------------------------------------
# The optimizers. Each takes p0, the gradient rows and the hyperparameters
# (reference names, betas as a tuple) and returns p after every step. The
# gradient is a fresh tensor every step (in-place changes do not carry).
# ---------------------------------------------------------------------------

# pytorch_optimizer/optimizer/adopt.py: ADOPT, _step_foreach (foreach=None on
# CPU resolves to foreach: can_use_foreach does not look at the device).
def run_adopt(p0, grads, lr=1e-3, betas=(0.9, 0.9999), weight_decay=0.0, weight_decouple=False,
              fixed_decay=False, eps=1e-6):
    clip_lambda = lambda step: math.pow(step, 0.25)  # noqa: E731  (the default)
    p = list(p0)
    exp_avg = zeros_like(p)
    exp_avg_sq = zeros_like(p)
    out = []
    for step in range(1, len(grads) + 1):
        grad = list(grads[step - 1])
        beta1, beta2 = betas
        p, grad = apply_weight_decay_foreach(p, grad, lr, weight_decay, weight_decouple, fixed_decay)
        if step == 1:
            exp_avg_sq = addcmul(exp_avg_sq, grad, grad)
            out.append(list(p))
            continue
        de_nom = sqrt(exp_avg_sq)
        de_nom = clamp_min(de_nom, eps)
        normed_grad = div(grad, de_nom)
        clip = clip_lambda(step)
        normed_grad = clamp_min(normed_grad, -clip)
        normed_grad = clamp_max(normed_grad, clip)
        exp_avg = lerp(exp_avg, normed_grad, 1.0 - beta1)
        p = add(p, exp_avg, alpha=-lr)
        exp_avg_sq = mul(exp_avg_sq, beta2)
        exp_avg_sq = addcmul(exp_avg_sq, grad, grad, value=1.0 - beta2)
        out.append(list(p))
    return out


# pytorch_optimizer/optimizer/laprop.py: LaProp.step (centered=False,
# ams_bound=False, not cautious).
def run_laprop(p0, grads, lr=4e-4, betas=(0.9, 0.999), weight_decay=0.0, weight_decouple=True,
               fixed_decay=False, eps=1e-15):
    p = list(p0)
    exp_avg = zeros_like(p)
    exp_avg_sq = zeros_like(p)
    exp_avg_lr_1 = 0.0
    exp_avg_lr_2 = 0.0
    out = []
    for step in range(1, len(grads) + 1):
        grad = list(grads[step - 1])
        beta1, beta2 = betas
        bias_correction2_sq = math.sqrt(debias(beta2, step))
        exp_avg_sq = mul(exp_avg_sq, beta2)
        exp_avg_sq = addcmul(exp_avg_sq, grad, grad, value=1.0 - beta2)
        exp_avg_lr_1 = exp_avg_lr_1 * beta1 + (1.0 - beta1) * lr
        exp_avg_lr_2 = exp_avg_lr_2 * beta2 + (1.0 - beta2)  # kept by the reference, never read
        bias_correction1 = exp_avg_lr_1 / lr if lr != 0.0 else 1.0
        step_size = 1.0 / bias_correction1
        # apply_ams_bound(ams_bound=False): (exp_avg_sq + 1e-15).sqrt_().add_(eps)
        de_nom = add(exp_avg_sq, 1e-15)
        de_nom = sqrt(de_nom)
        de_nom = add(de_nom, eps)
        de_nom = div(de_nom, bias_correction2_sq)
        exp_avg = mul(exp_avg, beta1)
        exp_avg = addcdiv(exp_avg, grad, de_nom, value=(1.0 - beta1) * lr)
        p = add(p, exp_avg, alpha=-step_size)
        p, grad = apply_weight_decay(p, grad, lr, weight_decay, weight_decouple, fixed_decay)
        out.append(list(p))
    return out


# pytorch_optimizer/optimizer/ademamix.py: AdEMAMix.step (not cautious,
# no stable_adamw).
def run_ademamix(p0, grads, lr=1e-3, betas=(0.9, 0.999, 0.9999), weight_decay=0.0, weight_decouple=False,
                 fixed_decay=False, alpha=5.0, t_alpha_beta3=None, eps=1e-8):
    def schedule_alpha(t_alpha_beta3, step, alpha):
        return alpha if t_alpha_beta3 is None else min(step * alpha / t_alpha_beta3, alpha)

    def schedule_beta3(t_alpha_beta3, step, beta1, beta3):
        if t_alpha_beta3 is None:
            return beta3
        log_beta1, log_beta3 = math.log(beta1), math.log(beta3)
        return min(
            math.exp(
                log_beta1 * log_beta3 / ((1.0 - step / t_alpha_beta3) * log_beta3 + (step / t_alpha_beta3) * log_beta1)
            ),
            beta3,
        )

    p = list(p0)
    exp_avg = zeros_like(p)
    exp_avg_sq = zeros_like(p)
    exp_avg_slow = zeros_like(p)
    out = []
    for step in range(1, len(grads) + 1):
        grad = list(grads[step - 1])
        beta1, beta2, beta3 = betas
        bias_correction1 = debias(beta1, step)
        bias_correction2_sq = math.sqrt(debias(beta2, step))
        step_size = lr / bias_correction1
        alpha_t = schedule_alpha(t_alpha_beta3, step, alpha)
        beta3_t = schedule_beta3(t_alpha_beta3, step, beta1, beta3)
        p, grad = apply_weight_decay(p, grad, lr, weight_decay, weight_decouple, fixed_decay)
        exp_avg = mul(exp_avg, beta1)
        exp_avg = add(exp_avg, grad, alpha=1.0 - beta1)
        exp_avg_sq = mul(exp_avg_sq, beta2)
        exp_avg_sq = addcmul(exp_avg_sq, grad, grad, value=1.0 - beta2)
        exp_avg_slow = mul(exp_avg_slow, beta3_t)
        exp_avg_slow = add(exp_avg_slow, grad, alpha=1.0 - beta3_t)
        de_nom = sqrt(exp_avg_sq)
        de_nom = div(de_nom, bias_correction2_sq)
        de_nom = add(de_nom, eps)
        update = list(exp_avg)
        update = add(update, exp_avg_slow, alpha=alpha_t)
        update = div(update, de_nom)
        p = add(p, update, alpha=-step_size)
        out.append(list(p))
    return out


# pytorch_optimizer/optimizer/adamod.py: AdaMod.step (adam_debias=False).
def run_adamod(p0, grads, lr=1e-3, betas=(0.9, 0.99, 0.9999), weight_decay=0.0, weight_decouple=True,
               fixed_decay=False, eps=1e-8):
    p = list(p0)
    exp_avg = zeros_like(p)
    exp_avg_sq = zeros_like(p)
    exp_avg_lr = zeros_like(p)
    out = []
    for step in range(1, len(grads) + 1):
        grad = list(grads[step - 1])
        beta1, beta2, beta3 = betas
        bias_correction1 = debias(beta1, step)
        bias_correction2_sq = math.sqrt(debias(beta2, step))
        step_size = lr * bias_correction2_sq / bias_correction1  # apply_adam_debias(False, ...)
        p, grad = apply_weight_decay(p, grad, lr, weight_decay, weight_decouple, fixed_decay)
        exp_avg = mul(exp_avg, beta1)
        exp_avg = add(exp_avg, grad, alpha=1.0 - beta1)
        exp_avg_sq = mul(exp_avg_sq, beta2)
        exp_avg_sq = addcmul(exp_avg_sq, grad, grad, value=1.0 - beta2)
        de_nom = sqrt(exp_avg_sq)
        de_nom = add(de_nom, eps)
        update = full_like(de_nom, step_size)
        update = div(update, de_nom)
        exp_avg_lr = mul(exp_avg_lr, beta3)
        exp_avg_lr = add(exp_avg_lr, update, alpha=1.0 - beta3)
        update = minimum(update, exp_avg_lr)
        update = mul(update, exp_avg)
        p = add(p, [-u for u in update])
        out.append(list(p))
    return out


# pytorch_optimizer/optimizer/tiger.py: Tiger._step_foreach (foreach=None on
# CPU resolves to foreach).
def run_tiger(p0, grads, lr=1e-3, beta=0.965, weight_decay=0.01, weight_decouple=True, fixed_decay=False):
    p = list(p0)
    exp_avg = zeros_like(p)
    out = []
    for step in range(1, len(grads) + 1):
        grad = list(grads[step - 1])
        p, grad = apply_weight_decay_foreach(p, grad, lr, weight_decay, weight_decouple, fixed_decay)
        exp_avg = lerp(exp_avg, grad, 1.0 - beta)
        updates = sign(exp_avg)
        p = add(p, updates, alpha=-lr)
        out.append(list(p))
    return out


# pytorch_optimizer/optimizer/novograd.py: NovoGrad.init_group and .step
# (adam_debias=False).
def run_novograd(p0, grads, lr=1e-3, betas=(0.95, 0.98), weight_decay=0.0, weight_decouple=False,
                 fixed_decay=False, grad_averaging=False, eps=1e-8):
    p = list(p0)
    moments = None
    grads_ema = None
    out = []
    for step in range(1, len(grads) + 1):
        grad = list(grads[step - 1])
        # init_group
        grad_p2 = tsum(pow2(grad))
        if moments is None:
            moments = add(div(grad, add(sqrt(grad_p2), eps)), mul(p, weight_decay))
            grads_ema = grad_p2
        # step
        beta1, beta2 = betas
        bias_correction1 = debias(beta1, step)
        bias_correction2_sq = math.sqrt(debias(beta2, step))
        step_size = lr * bias_correction2_sq / bias_correction1  # apply_adam_debias(False, ...)
        grads_ema = mul(grads_ema, beta2)
        grads_ema = add(grads_ema, tsum(pow2(grad)), alpha=1.0 - beta2)
        de_nom = sqrt(grads_ema)
        de_nom = add(de_nom, eps)
        grad = div(grad, de_nom)
        p, grad = apply_weight_decay(p, grad, lr, weight_decay, weight_decouple, fixed_decay)
        if grad_averaging:
            grad = mul(grad, 1.0 - beta1)
        moments = mul(moments, beta1)
        moments = add(moments, grad)
        p = add(p, moments, alpha=-step_size)
        out.append(list(p))
    return out


# pytorch_optimizer/optimizer/adamw.py: StableAdamW._step_foreach
# (foreach=None on CPU resolves to foreach; float32/float64 parameters, so
# no Kahan compensation).
def run_stableadamw(p0, grads, lr=1e-3, betas=(0.9, 0.99), weight_decay=1e-2, weight_decouple=True, eps=1e-8):
    p = list(p0)
    exp_avg = zeros_like(p)
    exp_avg_sq = zeros_like(p)
    out = []
    for step in range(1, len(grads) + 1):
        grad = list(grads[step - 1])
        beta1, beta2 = betas
        beta1_comp = 1.0 - debias_beta(beta1, step)
        beta2_hat = debias_beta(beta2, step)
        eps_p2 = math.pow(eps, 2)
        step_size = -lr / get_stable_adamw_rms(grad, exp_avg_sq, eps=eps_p2)
        if weight_decay != 0.0 and weight_decouple:
            wd_step_size = 1.0 + weight_decay * step_size
            p = mul(p, wd_step_size)
        exp_avg = lerp(exp_avg, grad, beta1_comp)
        exp_avg_sq = mul(exp_avg_sq, beta2_hat)
        exp_avg_sq = addcmul(exp_avg_sq, grad, grad, value=1.0 - beta2_hat)
        de_nom = sqrt(exp_avg_sq)
        de_nom = add(de_nom, eps)
        p = addcdiv(p, exp_avg, de_nom, value=step_size)
        out.append(list(p))
    return out


# ---------------------------------------------------------------------------
# Cases: (name, class, source file, function, reference kwargs, canonical
# lensopt hyperparameters, notes).
# ---------------------------------------------------------------------------

CASES = [
    ("adopt", "ADOPT", "adopt.py", run_adopt,
     dict(lr=1e-2, betas=(0.9, 0.999), weight_decay=0.1),
     dict(lr=1e-2, beta1=0.9, beta2=0.999, weight_decay=0.1),
     "foreach path (the default on CPU); weight_decouple=False (default): L2 decay added to g, which v sees; "
     "clip_lambda default step**0.25; step 1 only seeds exp_avg_sq."),
    ("laprop", "LaProp", "laprop.py", run_laprop,
     dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1),
     dict(lr=1e-2, beta1=0.9, beta2=0.99, weight_decay=0.1),
     "centered=False, ams_bound=False (defaults); weight_decouple=True (default): p *= 1 - lr*wd after the update."),
    ("ademamix", "AdEMAMix", "ademamix.py", run_ademamix,
     dict(lr=1e-2, betas=(0.9, 0.99, 0.95), weight_decay=0.1, alpha=5.0),
     dict(lr=1e-2, beta1=0.9, beta2=0.99, beta3=0.95, weight_decay=0.1, alpha=5.0),
     "t_alpha_beta3=None (default, no schedule); weight_decouple=False (default): L2 decay added to g."),
    ("adamod", "AdaMod", "adamod.py", run_adamod,
     dict(lr=1e-2, betas=(0.9, 0.99, 0.6), weight_decay=0.1),
     dict(lr=1e-2, beta1=0.9, beta2=0.99, beta3=0.6, weight_decay=0.1),
     "beta3=0.6 so the bound min(step, EMA(step)) takes both sides; weight_decouple=True (default)."),
    ("tiger", "Tiger", "tiger.py", run_tiger,
     dict(lr=1e-2, beta=0.9, weight_decay=0.1),
     dict(lr=1e-2, beta=0.9, weight_decay=0.1),
     "foreach path (the default on CPU): momentum by lerp; weight_decouple=True (default)."),
    ("novograd", "NovoGrad", "novograd.py", run_novograd,
     dict(lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1),
     dict(lr=1e-2, beta1=0.9, beta2=0.95, weight_decay=0.1),
     "state initialised from the first gradient (moments = g/(||g|| + eps) + wd*p, grads_ema = sum(g^2)); "
     "weight_decouple=False (default): L2 decay added to the normalised g; grad_averaging=False (default)."),
    ("stableadamw", "StableAdamW", "adamw.py", run_stableadamw,
     dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1),
     dict(lr=1e-2, beta1=0.9, beta2=0.99, weight_decay=0.1),
     "foreach path (the default on CPU): the RMS uses exp_avg_sq before the step's update; kahan_sum only "
     "acts on float16/bfloat16 parameters; weight_decouple=True (default)."),
]


def make_inputs(seed):
    rng = random.Random(seed)
    p0 = [rng.gauss(0.0, 1.0) for _ in range(N)]
    grads = [[0.5 * rng.gauss(0.0, 1.0) for _ in range(N)] for _ in range(STEPS)]
    for row in grads:
        row[7] = 0.0
    grads[2][11] = 0.0
    return p0, grads


def jsonable(x):
    if isinstance(x, tuple):
        return list(x)
    return x


def main():
    global F32
    here = os.path.dirname(os.path.abspath(__file__))
    args = sys.argv[1:]
    if any(a.startswith("-") for a in args) or len(args) > 1:
        print("usage: pytorch_optimizer.py [OUT_DIR]  (default: tests/golden_extra)")
        sys.exit(0 if args in (["-h"], ["--help"]) else 2)
    out_dir = args[0] if args else os.path.join(here, "..", "..", "tests", "golden_extra")
    os.makedirs(out_dir, exist_ok=True)
    for index, (name, cls, src, fn, kwargs, hyper, notes) in enumerate(CASES):
        seed = SEED_BASE + index
        p0, grads = make_inputs(seed)
        for dtype in ("float64", "float32"):
            F32 = dtype == "float32"
            if F32:
                p0_d = [r32(x) for x in p0]
                grads_d = [[r32(x) for x in row] for row in grads]
            else:
                p0_d, grads_d = p0, grads
            params_after = fn(p0_d, grads_d, **kwargs)
            case = {
                "case": name,
                "reference": "pytorch_optimizer.%s, transcribed from pytorch_optimizer/optimizer/%s" % (cls, src),
                "reference_source": "https://github.com/%s/blob/%s/pytorch_optimizer/optimizer/%s" % (REPO, COMMIT, src),
                "generator": GENERATOR,
                "algorithm": cls,
                "hyperparams": {k: jsonable(v) for k, v in kwargs.items()},
                "notes": notes,
                "dtype": dtype,
                "n": N,
                "steps": STEPS,
                "seed": seed,
                "rng": "random.Random(seed): p0 = [gauss(0, 1)] * n, then grads = [[0.5 * gauss(0, 1)] * n] * steps; "
                       "float32 files round these to float32",
                "special_elements": {"grad_zero_all_steps_index": 7, "grad_zero_step3_index": 11},
                "p0": p0_d,
                "grads": grads_d,
                "protocol": "for t in 0..steps-1: p.grad = grads[t] (fresh tensor); opt.step(); record p.",
                "params_after": params_after,
                "lensopt": {"rule": "examples/rules/%s.lo" % name, "hyper": hyper},
            }
            suffix = ".f32.json" if F32 else ".json"
            with open(os.path.join(out_dir, name + suffix), "w") as f:
                json.dump(case, f, indent=1)
                f.write("\n")
    F32 = False


if __name__ == "__main__":
    main()
