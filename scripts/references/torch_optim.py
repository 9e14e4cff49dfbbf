#!/usr/bin/env python3
"""Reference vectors for seven optimizers, transcribed from their sources.

    python3 scripts/references/torch_optim.py [--out tests/golden_extra]

Writes `<name>.json` (float64) and `<name>.f32.json` (float32) for
nadam, radam, adamax, adadelta, rprop (torch.optim, the single-tensor path
`_single_tensor_<name>`) and yogi, qhadam (pytorch-optimizer). Pure Python,
standard library only: no PyTorch is run. Each optimizer below is a
step-by-step transcription of its reference, one tensor operation per line,
with the source line it stands for in a `--` comment.

Precision model (what torch computes on CPU):
- float64 case: every tensor operation in f64.
- float32 case: inputs rounded to f32; every elementwise tensor operation is
  rounded to f32 (`r32`). Python-float scalars (bias corrections, step sizes)
  are computed in f64 and rounded to f32 where they meet a float32 tensor.
  Doing one operation in f64 and rounding to f32 gives the f32 result for
  + - * / sqrt (53 >= 2 * 24 + 2), so r32(a op b) is the f32 operation.
- Where ATen's vectorized CPU kernels use a fused multiply-add, so does this
  file: `lerp` (fmadd(w, end - self, self), or fmadd(w - 1, end - self, end)
  for |w| >= 0.5) and `add(other, alpha=a)` (fmadd(other, a, self)).
  `addcmul` is self + (value * t1) * t2 and `addcdiv` self + (value * t1) / t2,
  as ATen's CPU kernels write them. (ATen runs the last n % (2 * vector width)
  elements through the scalar lambda; where the compiler does not contract it,
  those differ from these by at most an ulp per operation.)
- 0-dim or 1-element float32 state tensors (NAdam's mu_product, QHAdam's beta
  weights) are float32 in both cases, as the references create them.
"""

import argparse
import json
import math
import os
import random
import struct
from fractions import Fraction

GENERATOR = "scripts/references/torch_optim.py (pure-Python transcription; no PyTorch run)"
N = 37
STEPS = 5
BASE_SEED = 20241130


# ----------------------------------------------------------------------------
# Arithmetic
# ----------------------------------------------------------------------------

def r32(x):
    """Round a Python float to the nearest float32 (ties to even)."""
    return struct.unpack('f', struct.pack('f', x))[0]


def _f32_bits(x):
    return struct.unpack('I', struct.pack('f', x))[0]


def _f32_from_bits(b):
    return struct.unpack('f', struct.pack('I', b & 0xFFFFFFFF))[0]


def _f32_next(x, up):
    """The float32 next to float32 x, towards +inf (up) or -inf."""
    if x == 0.0:
        tiny = _f32_from_bits(1)
        return tiny if up else -tiny
    b = _f32_bits(x)
    if (x > 0) == up:
        return _f32_from_bits(b + 1)
    return _f32_from_bits(b - 1)


def _round_fraction_f32(q):
    """Correctly rounded float32 of an exact rational q (no double rounding)."""
    f = r32(float(q))
    if math.isinf(f):
        return f
    best = f
    for c in (_f32_next(f, False), _f32_next(f, True)):
        if math.isinf(c):
            continue
        dc, db = abs(Fraction(c) - q), abs(Fraction(best) - q)
        if dc < db or (dc == db and (_f32_bits(c) & 1) == 0):
            best = c
    return best


def _fdiv(x, y):
    """IEEE 754 division (x / 0 is +-inf, 0 / 0 is NaN)."""
    if y == 0.0:
        if x == 0.0 or math.isnan(x):
            return math.nan
        return math.copysign(math.inf, x) * math.copysign(1.0, y)
    return x / y


def _sign(x):
    """torch.sign: 1, -1, or x itself for +-0 and NaN."""
    if x > 0:
        return 1.0
    if x < 0:
        return -1.0
    return x


class Tensors:
    """Elementwise tensor operations of one dtype on lists of Python floats."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.R = r32 if dtype == "float32" else (lambda x: x)

    def S(self, s):
        """A Python scalar meeting a tensor: converted to the tensor's dtype."""
        return self.R(float(s))

    def fma(self, a, b, c):
        """a * b + c with one rounding (vec::fmadd)."""
        if not all(math.isfinite(v) for v in (a, b, c)):
            return self.R(a * b + c)
        q = Fraction(a) * Fraction(b) + Fraction(c)
        if self.dtype == "float32":
            return _round_fraction_f32(q)
        return float(q)

    def full(self, n, value):
        return [self.S(value)] * n

    def add(self, a, b, alpha=None):
        if alpha is None:
            return [self.R(x + y) for x, y in zip(a, b)]
        al = self.S(alpha)
        return [self.fma(y, al, x) for x, y in zip(a, b)]

    def sub(self, a, b):
        return [self.R(x - y) for x, y in zip(a, b)]

    def mul(self, a, b):
        return [self.R(x * y) for x, y in zip(a, b)]

    def div(self, a, b):
        return [self.R(_fdiv(x, y)) for x, y in zip(a, b)]

    def add_s(self, a, s):
        s = self.S(s)
        return [self.R(x + s) for x in a]

    def rsub_s(self, s, a):
        s = self.S(s)
        return [self.R(s - x) for x in a]

    def mul_s(self, a, s):
        s = self.S(s)
        return [self.R(x * s) for x in a]

    def div_s(self, a, s):
        s = self.S(s)
        return [self.R(_fdiv(x, s)) for x in a]

    def sqrt(self, a):
        return [self.R(math.sqrt(x)) if x >= 0 else (x if x == 0 else math.nan) for x in a]

    def reciprocal(self, a):
        return [self.R(_fdiv(1.0, x)) for x in a]

    def abs(self, a):
        return [abs(x) for x in a]

    def sign(self, a):
        return [_sign(x) for x in a]

    def maximum(self, a, b):
        return [x if math.isnan(x) else (y if math.isnan(y) else max(x, y)) for x, y in zip(a, b)]

    def clamp(self, a, lo, hi):
        lo, hi = self.S(lo), self.S(hi)
        return [x if math.isnan(x) else min(max(x, lo), hi) for x in a]

    def lerp(self, a, b, w):
        w = self.S(w)
        out = []
        for x, y in zip(a, b):
            diff = self.R(y - x)
            if abs(w) < 0.5:
                out.append(self.fma(w, diff, x))
            else:
                out.append(self.fma(self.R(w - 1.0), diff, y))
        return out

    def addcmul(self, a, t1, t2, value=1.0):
        v = self.S(value)
        return [self.R(x + self.R(self.R(v * y) * z)) for x, y, z in zip(a, t1, t2)]

    def addcdiv(self, a, t1, t2, value=1.0):
        v = self.S(value)
        return [self.R(x + self.R(_fdiv(self.R(v * y), z))) for x, y, z in zip(a, t1, t2)]


# ----------------------------------------------------------------------------
# torch.optim (single-tensor paths)
# ----------------------------------------------------------------------------

def nadam(A, p0, grads, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
          momentum_decay=4e-3, decoupled_weight_decay=False):
    """-- torch/optim/nadam.py _single_tensor_nadam (maximize=False, capturable=False, differentiable=False)."""
    beta1, beta2 = betas
    param = list(p0)
    exp_avg = A.full(len(p0), 0.0)                      # -- state["exp_avg"] = torch.zeros_like(p)
    exp_avg_sq = A.full(len(p0), 0.0)                   # -- state["exp_avg_sq"] = torch.zeros_like(p)
    step_t = 0.0                                        # -- state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
    mu_product = r32(1.0)                               # -- state["mu_product"] = torch.tensor(1.0, dtype=_get_scalar_dtype()): float32
    history = []
    for g in grads:
        grad = list(g)
        step_t += 1                                     # -- step_t += 1
        step = step_t                                   # -- step = _get_value(step_t)
        bias_correction2 = 1 - beta2 ** step            # -- bias_correction2 = 1 - beta2**step
        if weight_decay != 0:                           # -- if weight_decay != 0:
            if decoupled_weight_decay:
                param = A.mul_s(param, 1 - lr * weight_decay)      # -- param.mul_(1 - lr * weight_decay)
            else:
                grad = A.add(grad, param, alpha=weight_decay)      # -- grad = grad.add(param, alpha=weight_decay)
        mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))             # -- mu = ...
        mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * momentum_decay)))  # -- mu_next = ...
        mu_product = r32(mu_product * r32(mu))          # -- mu_product *= mu  (float32 0-dim tensor)
        exp_avg = A.lerp(exp_avg, grad, 1 - beta1)      # -- exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq = A.mul_s(exp_avg_sq, beta2)         # -- exp_avg_sq.mul_(beta2)
        exp_avg_sq = A.addcmul(exp_avg_sq, grad, grad, value=1 - beta2)  # -- .addcmul_(grad, grad, value=1 - beta2)
        denom = A.div_s(exp_avg_sq, bias_correction2)   # -- denom = exp_avg_sq.div(bias_correction2)
        denom = A.sqrt(denom)                           # -- .sqrt()
        mu_product_next = mu_product * mu_next          # -- mu_product_next = _get_value(mu_product) * mu_next
        denom = A.add_s(denom, eps)                     # -- denom.add_(eps)
        param = A.addcdiv(param, grad, denom, value=(-lr * (1.0 - mu) / (1.0 - mu_product)))  # -- param.addcdiv_(grad, denom, value=...)
        param = A.addcdiv(param, exp_avg, denom, value=(-lr * mu_next) / (1.0 - mu_product_next))  # -- param.addcdiv_(exp_avg, denom, value=...)
        history.append(list(param))
    return history


def radam(A, p0, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
          decoupled_weight_decay=False):
    """-- torch/optim/radam.py _single_tensor_radam (maximize=False, capturable=False, differentiable=False)."""
    beta1, beta2 = betas
    param = list(p0)
    exp_avg = A.full(len(p0), 0.0)                      # -- state["exp_avg"] = torch.zeros_like(p)
    exp_avg_sq = A.full(len(p0), 0.0)                   # -- state["exp_avg_sq"] = torch.zeros_like(p)
    step_t = 0.0                                        # -- state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
    history = []
    for g in grads:
        grad = list(g)
        step_t += 1                                     # -- step_t += 1
        step = step_t                                   # -- step = _get_value(step_t)
        if weight_decay != 0:                           # -- if weight_decay != 0:
            if decoupled_weight_decay:
                param = A.mul_s(param, 1 - lr * weight_decay)      # -- param.mul_(1 - lr * weight_decay)
            else:
                grad = A.add(grad, param, alpha=weight_decay)      # -- grad = grad.add(param, alpha=weight_decay)
        exp_avg = A.lerp(exp_avg, grad, 1 - beta1)      # -- exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq = A.mul_s(exp_avg_sq, beta2)         # -- exp_avg_sq.mul_(beta2)
        exp_avg_sq = A.addcmul(exp_avg_sq, grad, grad, value=1 - beta2)  # -- .addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1 ** step            # -- bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2 ** step            # -- bias_correction2 = 1 - beta2**step
        bias_corrected_exp_avg = A.div_s(exp_avg, bias_correction1)  # -- bias_corrected_exp_avg = exp_avg / bias_correction1
        rho_inf = 2 / (1 - beta2) - 1                   # -- rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * step * (beta2 ** step) / bias_correction2  # -- rho_t = ...

        def _compute_rect():                            # -- def _compute_rect():
            return ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5

        def _compute_adaptive_lr():                     # -- def _compute_adaptive_lr():
            exp_avg_sq_sqrt = A.sqrt(exp_avg_sq)        # -- exp_avg_sq_sqrt = exp_avg_sq.sqrt()
            exp_avg_sq_sqrt = A.add_s(exp_avg_sq_sqrt, eps)  # -- exp_avg_sq_sqrt = exp_avg_sq_sqrt.add_(eps)
            # -- return (bias_correction2**0.5) / exp_avg_sq_sqrt
            #    float / Tensor is Tensor.__rtruediv__: self.reciprocal() * other
            return A.mul_s(A.reciprocal(exp_avg_sq_sqrt), bias_correction2 ** 0.5)

        if rho_t > 5.0:                                 # -- if rho_t > 5.0:
            update = A.mul_s(bias_corrected_exp_avg, lr)          # -- bias_corrected_exp_avg * lr
            update = A.mul(update, _compute_adaptive_lr())        # -- * _compute_adaptive_lr()
            update = A.mul_s(update, _compute_rect())             # -- * _compute_rect()
            param = A.add(param, update, alpha=-1.0)              # -- param.add_(..., alpha=-1.0)
        else:
            update = A.mul_s(bias_corrected_exp_avg, lr)          # -- bias_corrected_exp_avg * lr
            param = A.add(param, update, alpha=-1.0)              # -- param.add_(..., alpha=-1.0)
        history.append(list(param))
    return history


def adamax(A, p0, grads, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    """-- torch/optim/adamax.py _single_tensor_adamax (maximize=False, capturable=False, differentiable=False)."""
    beta1, beta2 = betas
    param = list(p0)
    exp_avg = A.full(len(p0), 0.0)                      # -- state["exp_avg"] = torch.zeros_like(p)
    exp_inf = A.full(len(p0), 0.0)                      # -- state["exp_inf"] = torch.zeros_like(p)
    step_t = 0.0                                        # -- state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
    history = []
    for g in grads:
        grad = list(g)
        step_t += 1                                     # -- step_t += 1
        if weight_decay != 0:                           # -- if weight_decay != 0:
            grad = A.add(grad, param, alpha=weight_decay)  # -- grad = grad.add(param, alpha=weight_decay)
        exp_avg = A.lerp(exp_avg, grad, 1 - beta1)      # -- exp_avg.lerp_(grad, 1 - beta1)
        scaled = A.mul_s(exp_inf, beta2)                # -- exp_inf.mul_(beta2)
        bound = A.add_s(A.abs(grad), eps)               # -- grad.abs().add_(eps)
        exp_inf = A.maximum(scaled, bound)              # -- torch.maximum(..., ..., out=exp_inf)
        bias_correction = 1 - beta1 ** step_t           # -- bias_correction = 1 - beta1 ** _get_value(step_t)
        clr = lr / bias_correction                      # -- clr = lr / bias_correction
        param = A.addcdiv(param, exp_avg, exp_inf, value=-clr)  # -- param.addcdiv_(exp_avg, exp_inf, value=-clr)
        history.append(list(param))
    return history


def adadelta(A, p0, grads, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0):
    """-- torch/optim/adadelta.py _single_tensor_adadelta (maximize=False, capturable=False, differentiable=False)."""
    param = list(p0)
    square_avg = A.full(len(p0), 0.0)                   # -- state["square_avg"] = torch.zeros_like(p)
    acc_delta = A.full(len(p0), 0.0)                    # -- state["acc_delta"] = torch.zeros_like(p)
    history = []
    for g in grads:
        grad = list(g)
        if weight_decay != 0:                           # -- if weight_decay != 0:
            grad = A.add(grad, param, alpha=weight_decay)  # -- grad = grad.add(param, alpha=weight_decay)
        square_avg = A.mul_s(square_avg, rho)           # -- square_avg.mul_(rho)
        square_avg = A.addcmul(square_avg, grad, grad, value=1 - rho)  # -- .addcmul_(grad, grad, value=1 - rho)
        std = A.add_s(square_avg, eps)                  # -- std = square_avg.add(eps)
        std = A.sqrt(std)                               # -- .sqrt_()
        delta = A.add_s(acc_delta, eps)                 # -- delta = acc_delta.add(eps)
        delta = A.sqrt(delta)                           # -- .sqrt_()
        delta = A.div(delta, std)                       # -- delta.div_(std)
        delta = A.mul(delta, grad)                      # -- .mul_(grad)
        acc_delta = A.mul_s(acc_delta, rho)             # -- acc_delta.mul_(rho)
        acc_delta = A.addcmul(acc_delta, delta, delta, value=1 - rho)  # -- .addcmul_(delta, delta, value=1 - rho)
        param = A.add(param, delta, alpha=-lr)          # -- param.add_(delta, alpha=-lr)
        history.append(list(param))
    return history


def rprop(A, p0, grads, lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50)):
    """-- torch/optim/rprop.py _single_tensor_rprop (maximize=False, capturable=False, differentiable=False)."""
    etaminus, etaplus = etas
    step_size_min, step_size_max = step_sizes
    param = list(p0)
    prev = A.full(len(p0), 0.0)                         # -- state["prev"] = torch.zeros_like(p)
    step_size = A.full(len(p0), lr)                     # -- state["step_size"] = torch.full_like(grad, lr)
    history = []
    for g in grads:
        grad = list(g)
        sign = A.sign(A.mul(grad, prev))                # -- sign = grad.mul(prev).sign()
        sign = [A.S(etaplus) if s > 0 else s for s in sign]     # -- sign[sign.gt(0)] = etaplus
        sign = [A.S(etaminus) if s < 0 else s for s in sign]    # -- sign[sign.lt(0)] = etaminus
        sign = [1.0 if s == 0 else s for s in sign]             # -- sign[sign.eq(0)] = 1
        step_size = A.mul(step_size, sign)              # -- step_size.mul_(sign)
        step_size = A.clamp(step_size, step_size_min, step_size_max)  # -- .clamp_(step_size_min, step_size_max)
        grad = list(grad)                               # -- grad = grad.clone(memory_format=torch.preserve_format)
        grad = [0.0 if s == A.S(etaminus) else x for s, x in zip(sign, grad)]  # -- grad[sign.eq(etaminus)] = 0
        param = A.addcmul(param, A.sign(grad), step_size, value=-1)  # -- param.addcmul_(grad.sign(), step_size, value=-1)
        prev = list(grad)                               # -- prev.copy_(grad)
        history.append(list(param))
    return history


# ----------------------------------------------------------------------------
# pytorch-optimizer (kozistr/pytorch_optimizer)
# ----------------------------------------------------------------------------

def _apply_weight_decay(A, p, grad, lr, weight_decay, weight_decouple, fixed_decay):
    """-- pytorch_optimizer/base/optimizer.py BaseOptimizer.apply_weight_decay (ratio=None)."""
    if weight_decouple:                                 # -- if weight_decouple:
        p = A.mul_s(p, 1.0 - weight_decay * (1.0 if fixed_decay else lr) * 1.0)  # -- p.mul_(1.0 - weight_decay * (...) * 1.0)
    elif weight_decay > 0.0 and grad is not None:       # -- elif weight_decay > 0.0 and grad is not None:
        grad = A.add(grad, p, alpha=weight_decay)       # -- grad.add_(p, alpha=weight_decay)
    return p, grad


def yogi(A, p0, grads, lr=1e-2, betas=(0.9, 0.999), initial_accumulator=1e-6, weight_decay=0.0,
         weight_decouple=True, fixed_decay=False, eps=1e-3):
    """-- pytorch_optimizer/optimizer/yogi.py Yogi.step (maximize=False, adam_debias=False)."""
    beta1, beta2 = betas
    param = list(p0)
    exp_avg = A.full(len(p0), initial_accumulator)      # -- state['exp_avg'] = torch.full_like(grad, initial_accumulator)
    exp_avg_sq = A.full(len(p0), initial_accumulator)   # -- state['exp_avg_sq'] = torch.full_like(grad, initial_accumulator)
    group_step = 0                                      # -- group['step'] = 0
    history = []
    for g in grads:
        grad = list(g)
        group_step += 1                                 # -- group['step'] += 1
        bias_correction1 = 1.0 - math.pow(beta1, group_step)             # -- self.debias(beta1, group['step'])
        bias_correction2_sq = math.sqrt(1.0 - math.pow(beta2, group_step))  # -- math.sqrt(self.debias(beta2, group['step']))
        step_size = lr / bias_correction1               # -- apply_adam_debias(adam_debias=False, ...): lr / bias_correction1
        param, grad = _apply_weight_decay(A, param, grad, lr, weight_decay, weight_decouple, fixed_decay)  # -- self.apply_weight_decay(...)
        grad_p2 = A.mul(grad, grad)                     # -- grad_p2 = grad.mul(grad)
        exp_avg = A.mul_s(exp_avg, beta1)               # -- exp_avg.mul_(beta1)
        exp_avg = A.add(exp_avg, grad, alpha=1.0 - beta1)  # -- .add_(grad, alpha=1.0 - beta1)
        direction = A.sign(A.sub(exp_avg_sq, grad_p2))  # -- (exp_avg_sq - grad_p2).sign_()
        exp_avg_sq = A.addcmul(exp_avg_sq, direction, grad_p2, value=-(1.0 - beta2))  # -- exp_avg_sq.addcmul_(..., grad_p2, value=-(1.0 - beta2))
        de_nom = A.sqrt(exp_avg_sq)                     # -- de_nom = exp_avg_sq.sqrt()
        de_nom = A.div_s(de_nom, bias_correction2_sq)   # -- .div_(bias_correction2_sq)
        de_nom = A.add_s(de_nom, eps)                   # -- .add_(group['eps'])
        param = A.addcdiv(param, exp_avg, de_nom, value=-step_size)  # -- p.addcdiv_(exp_avg, de_nom, value=-step_size)
        history.append(list(param))
    return history


def qhadam(A, p0, grads, lr=1e-3, betas=(0.9, 0.999), nus=(1.0, 1.0), weight_decay=0.0,
           weight_decouple=False, fixed_decay=False, eps=1e-8):
    """-- pytorch_optimizer/optimizer/qhadam.py QHAdam.step (maximize=False, real parameters)."""
    beta1, beta2 = betas
    nu1, nu2 = nus
    param = list(p0)
    beta1_weight = 0.0                                  # -- state['beta1_weight'] = torch.zeros((1,), dtype=torch.float32)
    beta2_weight = 0.0                                  # -- state['beta2_weight'] = torch.zeros((1,), dtype=torch.float32)
    exp_avg = A.full(len(p0), 0.0)                      # -- state['exp_avg'] = torch.zeros_like(p)
    exp_avg_sq = A.full(len(p0), 0.0)                   # -- state['exp_avg_sq'] = torch.zeros_like(p)
    history = []
    for g in grads:
        grad = list(g)
        param, grad = _apply_weight_decay(A, param, grad, lr, weight_decay, weight_decouple, fixed_decay)  # -- self.apply_weight_decay(...)
        beta1_weight = r32(beta1_weight * r32(beta1))   # -- beta1_weight.mul_(beta1)  (float32 tensor)
        beta1_weight = r32(beta1_weight + 1.0)          # -- .add_(1.0)
        beta2_weight = r32(beta2_weight * r32(beta2))   # -- beta2_weight.mul_(beta2)
        beta2_weight = r32(beta2_weight + 1.0)          # -- .add_(1.0)
        beta1_adj = r32(1.0 - r32(1.0 / beta1_weight))  # -- beta1_adj = 1.0 - (1.0 / beta1_weight)  (reciprocal, rsub; float32)
        beta2_adj = r32(1.0 - r32(1.0 / beta2_weight))  # -- beta2_adj = 1.0 - (1.0 / beta2_weight)
        grad_p2 = A.mul(grad, grad)                     # -- grad_p2 = grad.pow(2)
        exp_avg = A.mul_s(exp_avg, beta1_adj)           # -- exp_avg.mul_(beta1_adj)
        exp_avg = A.add(exp_avg, A.mul_s(grad, r32(1.0 - beta1_adj)))  # -- .add_((1.0 - beta1_adj) * grad)
        exp_avg_sq = A.mul_s(exp_avg_sq, beta2_adj)     # -- exp_avg_sq.mul_(beta2_adj)
        exp_avg_sq = A.add(exp_avg_sq, A.rsub_s(1.0, A.mul_s(grad_p2, beta2_adj)))  # -- .add_(1.0 - beta2_adj * grad_p2)
        avg_grad = A.mul_s(exp_avg, nu1)                # -- avg_grad = exp_avg.mul(nu1)
        if nu1 != 1.0:                                  # -- if nu1 != 1.0:
            avg_grad = A.add(avg_grad, grad, alpha=1.0 - nu1)  # -- avg_grad.add_(grad, alpha=1.0 - nu1)
        avg_grad_rms = A.mul_s(exp_avg_sq, nu2)         # -- avg_grad_rms = exp_avg_sq.mul(nu2)
        if nu2 != 1.0:                                  # -- if nu2 != 1.0:
            avg_grad_rms = A.add(avg_grad_rms, grad_p2, alpha=1.0 - nu2)  # -- avg_grad_rms.add_(grad_p2, alpha=1.0 - nu2)
        avg_grad_rms = A.sqrt(avg_grad_rms)             # -- avg_grad_rms.sqrt_()
        avg_grad_rms = A.add_s(avg_grad_rms, eps)       # -- .add_(group['eps'])
        param = A.addcdiv(param, avg_grad, avg_grad_rms, value=-lr)  # -- p.addcdiv_(avg_grad, avg_grad_rms, value=-group['lr'])
        history.append(list(param))
    return history


# ----------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------

# name, reference, transcription, reference-named hyperparameters, lensopt names, steps
CASES = [
    ("nadam", "torch.optim.NAdam, transcribed from torch/optim/nadam.py _single_tensor_nadam", nadam,
     {"lr": 0.01, "betas": (0.85, 0.99), "eps": 1e-6, "weight_decay": 0.1, "momentum_decay": 0.01},
     STEPS),
    # RAdam's rectification needs rho_t > 5, which no beta2 reaches before step 6 (rho_t < t):
    # this case runs 8 steps so that steps 6-8 take the rectified branch.
    ("radam", "torch.optim.RAdam, transcribed from torch/optim/radam.py _single_tensor_radam", radam,
     {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1},
     8),
    # beta1 = 0.3: lerp's weight 0.7 takes ATen's second formula.
    ("adamax", "torch.optim.Adamax, transcribed from torch/optim/adamax.py _single_tensor_adamax", adamax,
     {"lr": 0.01, "betas": (0.3, 0.95), "eps": 1e-6, "weight_decay": 0.1},
     STEPS),
    ("adadelta", "torch.optim.Adadelta, transcribed from torch/optim/adadelta.py _single_tensor_adadelta", adadelta,
     {"lr": 0.5, "rho": 0.8, "eps": 1e-5, "weight_decay": 0.1},
     STEPS),
    # Step-size bounds that both clamps reach, visibly in the parameters, within 5 steps.
    ("rprop", "torch.optim.Rprop, transcribed from torch/optim/rprop.py _single_tensor_rprop", rprop,
     {"lr": 0.01, "etas": (0.4, 1.3), "step_sizes": (3e-3, 0.02)},
     STEPS),
    # Decoupled weight decay (the reference's default); a larger initial accumulator so
    # that sign(v - g^2) takes both signs.
    ("yogi", "pytorch_optimizer.Yogi, transcribed from pytorch_optimizer/optimizer/yogi.py Yogi.step", yogi,
     {"lr": 0.02, "betas": (0.8, 0.95), "initial_accumulator": 0.05, "weight_decay": 0.1,
      "weight_decouple": True, "eps": 1e-3},
     STEPS),
    # nus != 1 takes both `if nu != 1.0` branches; coupled L2 (the reference's default).
    ("qhadam", "pytorch_optimizer.QHAdam, transcribed from pytorch_optimizer/optimizer/qhadam.py QHAdam.step", qhadam,
     {"lr": 0.01, "betas": (0.8, 0.95), "nus": (0.7, 0.9), "weight_decay": 0.1, "weight_decouple": False,
      "eps": 1e-8},
     STEPS),
]

SPLIT = {"betas": ("beta1", "beta2"), "nus": ("nu1", "nu2"), "etas": ("etaminus", "etaplus"),
         "step_sizes": ("step_size_min", "step_size_max")}


def canonical(hyper):
    out = {}
    for k, v in hyper.items():
        if k in SPLIT:
            for name, value in zip(SPLIT[k], v):
                out[name] = float(value)
        elif isinstance(v, bool):
            out[k] = v
        else:
            out[k] = float(v)
    return out


def inputs(seed, steps):
    rng = random.Random(seed)
    p0 = [rng.gauss(0.0, 1.0) for _ in range(N)]
    grads = [[0.5 * rng.gauss(0.0, 1.0) for _ in range(N)] for _ in range(steps)]
    for t in range(steps):
        grads[t][7] = 0.0
    grads[2][11] = 0.0
    return p0, grads


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "..", "tests", "golden_extra"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for index, (name, reference, fn, hyper, steps) in enumerate(CASES):
        seed = BASE_SEED + index
        p0, grads = inputs(seed, steps)
        for dtype, suffix in (("float64", ""), ("float32", ".f32")):
            A = Tensors(dtype)
            p = [A.R(x) for x in p0]
            gs = [[A.R(x) for x in row] for row in grads]
            after = fn(A, p, gs, **hyper)
            case = {
                "case": name,
                "reference": reference,
                "generator": GENERATOR,
                "dtype": dtype,
                "n": N,
                "steps": steps,
                "seed": seed,
                "rng": "random.Random(seed): p0 = gauss(0, 1) [n]; grads = 0.5 * gauss(0, 1) [steps][n], "
                       "row by row; then grads[t][7] = 0 for every t and grads[2][11] = 0",
                "special_elements": {"grad_zero_all_steps_index": 7, "grad_zero_step3_index": 11},
                "hyperparams": {k: (list(v) if isinstance(v, tuple) else v) for k, v in hyper.items()},
                "p0": p,
                "grads": gs,
                "params_after": after,
                "lensopt": {"rule": "examples/rules/%s.lo" % name, "hyper": canonical(hyper)},
            }
            path = os.path.join(args.out, name + suffix + ".json")
            with open(path, "w") as f:
                json.dump(case, f, indent=1)
                f.write("\n")
            print("wrote", os.path.normpath(path))


if __name__ == "__main__":
    main()
