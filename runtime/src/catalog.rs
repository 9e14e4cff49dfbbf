//! The catalog: the field's optimizers, each written in the DSL.
//!
//! Each entry follows its reference implementation's conventions (named in
//! its doc comment) so that it reproduces that implementation's numbers:
//! the golden cases under `tests/golden` check every one of them in f64 and
//! f32. Hyperparameter names and defaults are the references' (with
//! `betas` split into `beta1`, `beta2`, `beta3`).
//!
//! Conventions used throughout: "L2" decay adds `weight_decay * p` to the
//! gradient; "decoupled" decay scales `p` by `1 - lr * weight_decay` first.
//! Extra inputs: `h` is a Hessian-diagonal estimate, `ghat` a gradient
//! on labels sampled from the model (SophiaG).

use crate::optimizer::{DynOptimizer, Optimizer};

crate::optimizer! {
    /// SGD with momentum, dampening, Nesterov momentum and L2 weight decay,
    /// as `torch.optim.SGD` (Sutskever et al. 2013 for Nesterov's form).
    /// The momentum buffer takes the gradient itself on the first step.
    pub SGD {
        hyper lr = 1e-3, momentum = 0.0, dampening = 0.0, weight_decay = 0.0, nesterov = false;
        state buf = 0;
        update {
            let d = g + weight_decay * p;
            buf = select(momentum == 0, buf, select(t == 1, d, momentum * buf + (1 - dampening) * d));
            let step = select(nesterov, d + momentum * buf, buf);
            p = p - lr * select(momentum == 0, d, step);
        }
    }
}

crate::optimizer! {
    /// Adam (Kingma & Ba 2015) with AMSGrad (Reddi et al. 2018) and L2 weight
    /// decay, as `torch.optim.Adam`: eps is added after the bias-corrected root.
    pub Adam {
        hyper lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0, amsgrad = false;
        // States m, v and vmax come with the prelude's `scale_by_adam`.
        update { p = p - lr * scale_by_adam(g + weight_decay * p); }
    }
}

crate::optimizer! {
    /// AdamW (Loshchilov & Hutter 2019): Adam with decoupled weight decay,
    /// as `torch.optim.AdamW`.
    pub AdamW {
        hyper lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 1e-2, amsgrad = false;
        update {
            p = p * (1 - lr * weight_decay);
            p = p - lr * scale_by_adam(g);
        }
    }
}

crate::optimizer! {
    /// RMSprop (Hinton, Coursera lecture 6e), centered variant (Graves 2013),
    /// with momentum and L2 weight decay, as `torch.optim.RMSprop`.
    pub RMSprop {
        hyper lr = 1e-2, alpha = 0.99, eps = 1e-8, weight_decay = 0.0, momentum = 0.0, centered = false;
        state v = 0, gbar = 0, buf = 0;
        update {
            let gw = g + weight_decay * p;
            v = alpha * v + (1 - alpha) * gw * gw;
            gbar = select(centered, gbar + (1 - alpha) * (gw - gbar), gbar);
            let den = sqrt(select(centered, v - gbar * gbar, v)) + eps;
            buf = select(momentum > 0, momentum * buf + gw / den, buf);
            p = p - lr * select(momentum > 0, buf, gw / den);
        }
    }
}

crate::optimizer! {
    /// Adagrad (Duchi et al. 2011) with learning-rate decay and L2 weight
    /// decay, as `torch.optim.Adagrad`.
    pub Adagrad {
        hyper lr = 1e-2, lr_decay = 0.0, weight_decay = 0.0, initial_accumulator_value = 0.0, eps = 1e-10;
        state acc = initial_accumulator_value;
        update {
            let gw = g + weight_decay * p;
            acc = acc + gw * gw;
            let clr = lr / (1 + (t - 1) * lr_decay);
            p = p - clr * gw / (sqrt(acc) + eps);
        }
    }
}

crate::optimizer! {
    /// Lion (Chen et al. 2023, "Symbolic Discovery of Optimization
    /// Algorithms") with decoupled weight decay and the cautious mask
    /// (Liang et al. 2024), as pytorch-optimizer's `Lion`.
    pub Lion {
        hyper lr = 1e-4, beta1 = 0.9, beta2 = 0.99, weight_decay = 0.0, cautious = false;
        update {
            p = p * (1 - lr * weight_decay);
            let u = scale_by_lion(g);
            let agree = u * g > 0;
            let masked = select(agree, u * (numel() / (count(agree) + 1)), 0);
            p = p - lr * select(cautious, masked, u);
        }
    }
}

crate::optimizer! {
    /// Adan (Xie et al. 2022, "Adaptive Nesterov Momentum Algorithm"), as
    /// pytorch-optimizer's `Adan`: proximal weight decay `p / (1 + lr * wd)`
    /// by default, decoupled with `weight_decouple` (the official code's
    /// `no_prox`), optional global gradient-norm clipping `max_grad_norm`.
    pub Adan {
        hyper lr = 1e-3, beta1 = 0.98, beta2 = 0.92, beta3 = 0.99, eps = 1e-8, weight_decay = 0.0,
              weight_decouple = false, no_prox = false, max_grad_norm = 0.0;
        state m = 0, n = 0, v = 0, gprev = 0;
        update {
            let clip = select(max_grad_norm > 0, min(1, max_grad_norm / (global_norm(g) + eps)), 1);
            let gc = g * clip;
            let d = select(t == 1, 0, gc - gprev);
            m = beta1 * m + (1 - beta1) * gc;
            n = beta2 * n + (1 - beta2) * d;
            let z = gc + beta2 * d;
            v = beta3 * v + (1 - beta3) * z * z;
            let den = sqrt(v) / sqrt(1 - beta3 ^ t) + eps;
            let decoupled = weight_decouple || no_prox;
            p = select(decoupled, p * (1 - lr * weight_decay), p);
            p = p - lr / (1 - beta1 ^ t) * m / den - lr * beta2 / (1 - beta2 ^ t) * n / den;
            p = select(decoupled, p, p / (1 + lr * weight_decay));
            gprev = gc;
        }
    }
}

crate::optimizer! {
    /// AdaBelief (Zhuang et al. 2020): the second moment tracks the
    /// "belief" (g - m)^2, as pytorch-optimizer's `AdaBelief`: eps is added
    /// into the stored state at every step and again outside the root.
    pub AdaBelief {
        hyper lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-16, weight_decay = 0.0;
        state m = 0, s = 0;
        update {
            p = p * (1 - lr * weight_decay);
            m = beta1 * m + (1 - beta1) * g;
            let belief = g - m;
            s = beta2 * s + (1 - beta2) * belief * belief + eps;
            p = p - lr / (1 - beta1 ^ t) * m / (sqrt(s) / sqrt(1 - beta2 ^ t) + eps);
        }
    }
}

crate::optimizer! {
    /// diffGrad (Dubey et al. 2019): Adam's step scaled by the friction
    /// sigmoid(|g_prev - g|), as pytorch-optimizer's `DiffGrad` (a hidden
    /// 1e-15 inside the root; eps is not bias-corrected).
    pub DiffGrad {
        hyper lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
        state m = 0, v = 0, gprev = 0;
        update {
            p = p * (1 - lr * weight_decay);
            m = beta1 * m + (1 - beta1) * g;
            v = beta2 * v + (1 - beta2) * g * g;
            let friction = sigmoid(abs(gprev - g));
            gprev = g;
            p = p - lr * sqrt(1 - beta2 ^ t) / (1 - beta1 ^ t) * friction * m / (sqrt(v + 1e-15) + eps);
        }
    }
}

crate::optimizer! {
    /// Grams (Cao et al. 2024, "Gradient Descent with Adaptive Momentum
    /// Scaling"): Adam's magnitude with the gradient's sign, as
    /// pytorch-optimizer's `Grams`.
    pub Grams {
        hyper lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-6, weight_decay = 0.0;
        state m = 0, v = 0;
        update {
            m = beta1 * m + (1 - beta1) * g;
            v = beta2 * v + (1 - beta2) * g * g;
            let u = abs(m / (1 - beta1 ^ t) / (sqrt(v) / sqrt(1 - beta2 ^ t) + eps)) * sign(g);
            p = p * (1 - lr * weight_decay);
            p = p - lr * u;
        }
    }
}

crate::optimizer! {
    /// signSGD and Signum (Bernstein et al. 2018): the sign of the momentum
    /// (of the gradient when `momentum` is 0), as pytorch-optimizer's `SignSGD`.
    pub Signum {
        hyper lr = 1e-3, momentum = 0.9, weight_decay = 0.0;
        state buf = 0;
        update {
            p = p * (1 - lr * weight_decay);
            buf = momentum * buf + (1 - momentum) * g;
            p = p - lr * sign(buf);
        }
    }
}

crate::optimizer! {
    /// Sophia with a Hutchinson Hessian estimate (Liu et al. 2023,
    /// "Sophia: A Scalable Stochastic Second-order Optimizer"), as
    /// pytorch-optimizer's `SophiaH`: the caller supplies the Hessian
    /// diagonal `h` every `update_period` steps; the EMA is refreshed
    /// exactly at the steps where `h` is present, before it is used.
    pub SophiaH {
        hyper lr = 6e-2, beta1 = 0.96, beta2 = 0.99, rho = 1e-2, eps = 1e-12, weight_decay = 0.0,
              update_period = 10;
        input h?;
        state m = 0, hbar = 0;
        update {
            p = p * (1 - lr * weight_decay);
            m = beta1 * m + (1 - beta1) * g;
            hbar = select(present(h), beta2 * hbar + (1 - beta2) * h, hbar);
            p = p - lr * clamp(m / max(hbar, eps), -rho, rho);
        }
    }
}

crate::optimizer! {
    /// AdaHessian (Yao et al. 2021): Adam whose second moment tracks the
    /// Hessian diagonal `h`, raised to `hessian_power`, as pytorch-optimizer's
    /// `AdaHessian` (decoupled weight decay, no spatial averaging).
    pub AdaHessian {
        hyper lr = 1e-1, beta1 = 0.9, beta2 = 0.999, eps = 1e-16, weight_decay = 0.0, hessian_power = 1.0;
        input h?;
        state m = 0, v = 0;
        update {
            p = p * (1 - lr * weight_decay);
            m = beta1 * m + (1 - beta1) * g;
            v = select(present(h), beta2 * v + (1 - beta2) * h * h, v);
            let den = (v / (1 - beta2 ^ t)) ^ (hessian_power / 2) + eps;
            p = p - lr / (1 - beta1 ^ t) * m / den;
        }
    }
}

crate::optimizer! {
    /// Cautious AdamW (Liang et al. 2024, "Cautious Optimizers"), as timm's
    /// `cadamw`: the momentum is masked where it disagrees with the gradient
    /// and rescaled by the mask's mean (at least 1e-3), per tensor.
    pub CAdamW {
        hyper lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 1e-2;
        state m = 0, v = 0;
        update {
            p = p * (1 - lr * weight_decay);
            m = beta1 * m + (1 - beta1) * g;
            v = beta2 * v + (1 - beta2) * g * g;
            let agree = m * g > 0;
            let masked = select(agree, m / max(count(agree) / numel(), 1e-3), 0);
            p = p - lr / (1 - beta1 ^ t) * masked / (sqrt(v) / sqrt(1 - beta2 ^ t) + eps);
        }
    }
}

crate::optimizer! {
    /// SophiaG (Liu et al. 2023), as the official Sophia code: a clipped
    /// sign step scaled by a Gauss-Newton-Bartlett Hessian EMA, which is
    /// refreshed *after* the parameter update from `ghat`, the gradient on
    /// labels sampled from the model (so step 1 runs with h = 0).
    pub SophiaG {
        hyper lr = 1e-4, beta1 = 0.965, beta2 = 0.99, rho = 0.04, weight_decay = 0.1, bs = 5120;
        input ghat?;
        state m = 0, h = 0;
        update {
            p = p * (1 - lr * weight_decay);
            m = beta1 * m + (1 - beta1) * g;
            p = p - lr * sign(m) * min(abs(m) / (rho * bs * h + 1e-15), 1);
            h = select(present(ghat), beta2 * h + (1 - beta2) * ghat * ghat, h);
        }
    }
}

crate::optimizer! {
    /// LAMB (You et al. 2020, "Large Batch Optimization for Deep Learning"):
    /// Adam's direction plus decoupled decay, scaled per tensor by the trust
    /// ratio ||p|| / ||r|| (1 when either norm is 0), with phi the identity.
    pub Lamb {
        hyper lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-6, weight_decay = 0.01;
        state m = 0, v = 0;
        update {
            m = beta1 * m + (1 - beta1) * g;
            v = beta2 * v + (1 - beta2) * g * g;
            let r = m / (1 - beta1 ^ t) / (sqrt(v / (1 - beta2 ^ t)) + eps) + weight_decay * p;
            let pn = norm(p);
            let rn = norm(r);
            let trust = select(pn > 0 && rn > 0, pn / rn, 1);
            p = p - lr * trust * r;
        }
    }
}

crate::optimizer! {
    /// Muon (Jordan et al. 2024): Nesterov momentum, orthogonalised by five
    /// quintic Newton-Schulz steps, as `torch.optim.Muon`: the momentum
    /// buffer by `lerp`, `x = u / (‖u‖_F + eps)` (transposed when rows >
    /// cols), the step scaled by `sqrt(max(1, rows / cols))` (the
    /// reference's default `adjust_lr_fn`), decoupled weight decay. The
    /// iteration runs in the parameter's type; `ns_bf16 = true` runs it in
    /// bfloat16 as the reference's default does (`x / max(‖x‖, eps)`, every
    /// product rounded). A matrix rule: tensors of rank 2 or more.
    pub Muon {
        hyper lr = 1e-3, weight_decay = 0.1, momentum = 0.95, nesterov = true, ns_steps = 5,
              a = 3.4445, b = -4.775, c = 2.0315, eps = 1e-7, ns_bf16 = false;
        state buf = 0;
        update {
            buf = lerp(buf, g, 1 - momentum);
            let u = select(nesterov, lerp(g, buf, momentum), buf);
            let x = select(ns_bf16, bf16(bf16(u) / bf16(max(bf16(norm(bf16(u))), eps))), u / (norm(u) + eps));
            repeat ns_steps {
                x = select(ns_bf16, newton_schulz_step_bf16(x, a, b, c), newton_schulz_step(x, a, b, c));
            }
            p = p * (1 - lr * weight_decay);
            p = p - lr * sqrt(max(1, rows() / cols())) * x;
        }
    }
}

crate::optimizer! {
    /// Adafactor (Shazeer & Stern 2018) as `torch.optim.Adafactor`: the
    /// second moment factored into row and column means of `g²` (state
    /// `rows + cols`, not `rows × cols`), decay `t ^ beta2_decay`, relative
    /// step `max(eps2, rms(p)) · min(lr, 1/sqrt(t))`, update clipping `d`,
    /// decoupled weight decay. `eps1 = 0` (the default) stands for the
    /// element type's machine epsilon, as the reference's `None`.
    pub Adafactor {
        hyper lr = 1e-2, beta2_decay = -0.8, eps1 = 0.0, eps2 = 1e-3, d = 1.0,
              weight_decay = 0.0, maximize = false;
        state row vr = 0;
        state col vc = 0;
        update {
            let gm = select(maximize, -g, g);
            let e1 = select(eps1 == 0, machine_eps(), eps1);
            let decay = t ^ beta2_decay;
            let alpha = max(eps2, norm(p) / sqrt(numel())) * min(lr, 1 / sqrt(t));
            p = p * (1 - lr * weight_decay);
            vr = lerp(vr, mean_rows(gm * gm), decay);
            vc = lerp(vc, mean_cols(gm * gm), decay);
            let u = rsqrt(max(vr * vc / max(mean(vr), e1), e1 * e1)) * gm;
            let denom = max(1, norm(u) / (sqrt(numel()) * d));
            p = p - alpha / denom * u;
        }
    }
}

crate::optimizer! {
    /// SM3 (Anil et al. 2019), dense form, as `pytorch_optimizer.SM3`: row
    /// and column accumulators (the cover sets of a matrix), each the
    /// largest `ν` along its row or column, `ν = min(row, col) + g²`
    /// (with `beta > 0`: a running maximum of `beta · min + (1 - beta) g²`).
    pub SM3 {
        hyper lr = 1e-1, momentum = 0.0, beta = 0.0, eps = 1e-30;
        state row acc_rows = 0;
        state col acc_cols = 0;
        state m = 0;
        update {
            let cover = min(acc_rows, acc_cols);
            let nu = select(beta > 0, cover * beta, cover) + (1 - beta) * (g * g);
            acc_rows = select(beta > 0, max(acc_rows, max_abs_rows(nu)), max_abs_rows(nu));
            acc_cols = select(beta > 0, max(acc_cols, max_abs_cols(nu)), max_abs_cols(nu));
            let u = rsqrt(nu + eps) * g;
            m = select(momentum > 0, m * momentum + (1 - momentum) * u, m);
            p = p - lr * select(momentum > 0, m, u);
        }
    }
}

crate::optimizer! {
    /// CAME (Luo et al. 2023, "Confidence-guided Adaptive Memory Efficient
    /// Optimization") as `pytorch_optimizer.CAME`: Adafactor's factored
    /// second moment, update clipping, momentum, and the factored
    /// instability `(u - m)²` scaling the step; decoupled weight decay.
    pub CAME {
        hyper lr = 2e-4, beta1 = 0.9, beta2 = 0.999, beta3 = 0.9999, weight_decay = 0.0,
              weight_decouple = true, fixed_decay = false, clip_threshold = 1.0,
              ams_bound = false, eps1 = 1e-30, eps2 = 1e-16;
        state m = 0, sq_hat = 0;
        state row vr = 0, rr = 0;
        state col vc = 0, rc = 0;
        update {
            let sq = g * g + eps1;
            vr = vr * beta2 + (1 - beta2) * mean_rows(sq);
            vc = vc * beta2 + (1 - beta2) * mean_cols(sq);
            let approx = rsqrt(vr / mean(vr)) * rsqrt(vc);
            sq_hat = select(ams_bound, max(sq_hat, 1 / approx), sq_hat);
            let raw = select(ams_bound, rsqrt(sq_hat / beta2), approx) * g;
            let u = raw / max(norm(raw) / sqrt(numel()) / clip_threshold, 1);
            m = m * beta1 + (1 - beta1) * u;
            let res = (u - m) * (u - m) + eps2;
            rr = rr * beta3 + (1 - beta3) * mean_rows(res);
            rc = rc * beta3 + (1 - beta3) * mean_cols(res);
            let step = rsqrt(rr / mean(rr)) * rsqrt(rc) * m;
            p = select(weight_decouple, p * (1 - weight_decay * select(fixed_decay, 1, lr)), p);
            p = p - step * lr;
        }
    }
}

crate::optimizer! {
    /// Shampoo (Gupta et al. 2018) for a matrix, as `pytorch_optimizer.Shampoo`:
    /// left and right statistics `L += G Gᵀ`, `R += Gᵀ G` (from
    /// `matrix_eps · I`), their inverse fourth roots refreshed every
    /// `preconditioning_compute_steps` steps (zero until the first refresh),
    /// the step `L^-1/4 G R^-1/4`; momentum mixes in the last preconditioned
    /// step, weight decay is L2 or decoupled.
    pub Shampoo {
        hyper lr = 1e-3, momentum = 0.0, weight_decay = 0.0, weight_decouple = false,
              fixed_decay = false, preconditioning_compute_steps = 1, matrix_eps = 1e-6;
        state buf = 0;
        state left = matrix_eps * eye_rows(), right = matrix_eps * eye_cols();
        state left_root = 0 * eye_rows(), right_root = 0 * eye_cols();
        update {
            let gm = select(momentum > 0, lerp(g, select(t == 1, g, buf), momentum), g);
            p = select(weight_decouple, p * (1 - weight_decay * select(fixed_decay, 1, lr)), p);
            let gd = select(!weight_decouple && weight_decay > 0, gm + weight_decay * p, gm);
            left = left + gd @ transpose(gd);
            right = right + transpose(gd) @ gd;
            every preconditioning_compute_steps {
                left_root = sym_pow(left, -0.25);
                right_root = sym_pow(right, -0.25);
            }
            buf = left_root @ gd @ right_root;
            p = p - lr * buf;
        }
    }
}

crate::optimizer! {
    /// SOAP (Vyas et al. 2024, "SOAP: Improving and Stabilizing Shampoo
    /// using Adam") as `pytorch_optimizer.SOAP`: Adam run in the eigenbasis
    /// of Shampoo's statistics `L = lerp(L, G Gᵀ, 1 - shampoo_beta)` and
    /// `R = lerp(R, Gᵀ G, 1 - shampoo_beta)`, the first moment kept in the
    /// parameter's basis, decoupled weight decay after the step. The first
    /// step only gathers the statistics and takes their eigenbases; the
    /// Adam step `k = t - 1` drives the bias corrections, and every
    /// `precondition_frequency` Adam steps the bases are refreshed by one
    /// power iteration and a QR, the second moment reordered with them.
    /// `shampoo_beta < 0` (the default) stands for `beta2`, as the
    /// reference's `None`. The factorisations run in f64 (the reference
    /// takes its QR in f32).
    pub SOAP {
        hyper lr = 3e-3, beta1 = 0.95, beta2 = 0.95, shampoo_beta = -1.0, weight_decay = 1e-2,
              precondition_frequency = 10, correct_bias = true, normalize_gradient = false,
              eps = 1e-8;
        state m = 0, v = 0;
        state left = 0 * eye_rows(), right = 0 * eye_cols();
        state q_left = eye_rows(), q_right = eye_cols();
        update {
            let first = t == 1;
            let k = t - 1;
            let sb = select(shampoo_beta < 0, beta2, shampoo_beta);
            let m_new = beta1 * m + (1 - beta1) * g;
            let gp = transpose(q_left) @ g @ q_right;
            let v_new = beta2 * v + (1 - beta2) * (gp * gp);
            let mp = transpose(q_left) @ m_new @ q_right;
            let n = q_left @ (mp / (sqrt(v_new) + eps)) @ transpose(q_right);
            let dir = select(normalize_gradient, n / (sqrt(mean(n * n)) + eps), n);
            let step_size = lr * select(correct_bias, sqrt(1 - beta2 ^ k) / (1 - beta1 ^ k), 1);
            p = select(first, p, (p - step_size * dir) * (1 - weight_decay * lr));
            m = select(first, m, m_new);
            left = lerp(left, g @ transpose(g), 1 - sb);
            right = lerp(right, transpose(g) @ g, 1 - sb);
            let refresh = k > 0 && k - precondition_frequency * floor(k / precondition_frequency) == 0;
            let order_left = sort_perm(sum_cols(q_left * (left @ q_left)));
            let order_right = sort_perm(sum_cols(q_right * (right @ q_right)));
            v = select(first, v, select(refresh, transpose(order_left) @ v_new @ order_right, v_new));
            q_left = select(first, eigenbasis(left), select(refresh, qr(left @ q_left @ order_left), q_left));
            q_right = select(first, eigenbasis(right), select(refresh, qr(right @ q_right @ order_right), q_right));
        }
    }
}

crate::optimizer! {
    /// GaLore (Zhao et al. 2024, "GaLore: Memory-Efficient LLM Training by
    /// Gradient Low-Rank Projection") as `pytorch_optimizer.GaLore` with its
    /// default `std` projection: the gradient, taken as `short × long`
    /// (`wide`), is projected on its leading `rank` left singular vectors
    /// (refreshed at the first step and every `update_proj_gap` steps),
    /// AdamW runs in that `rank × long` space, and the step is projected
    /// back, scaled by `scale`; decoupled weight decay. State: the projector
    /// and two `rank × long` moments, not `rows × cols`. The singular
    /// vectors come from the eigenbasis of `W Wᵀ` in f64, with fixed signs
    /// (the reference takes LAPACK's SVD in f32, whose signs are its own).
    pub GaLore {
        hyper lr = 1e-3, beta1 = 0.9, beta2 = 0.999, weight_decay = 0.0, eps = 1e-6,
              rank = 128, update_proj_gap = 50, scale = 1.0;
        axis low = rank;
        state [short, low] proj = 0;
        state [low, long] m = 0, v = 0;
        update {
            let w = wide(g);
            let refresh = t == 1 || t - update_proj_gap * floor(t / update_proj_gap) == 0;
            proj = select(refresh, lead_cols(eigenbasis(w @ transpose(w))), proj);
            let r = transpose(proj) @ w;
            m = beta1 * m + (1 - beta1) * r;
            v = beta2 * v + (1 - beta2) * r * r;
            let step_size = lr * sqrt(1 - beta2 ^ t) / (1 - beta1 ^ t);
            let back = unwide(proj @ (m / (sqrt(v) + eps))) * scale;
            p = (p - step_size * back) * (1 - weight_decay * lr);
        }
    }
}

crate::optimizer! {
    /// FRUGAL (Zmushko et al. 2025, "FRUGAL: Memory-Efficient Optimization
    /// by Reducing State Overhead for Scalable Training") with its SVD
    /// projection and AdamW as the state-full part, as the authors'
    /// `GaloreAdamW`: the gradient's leading `rank` singular directions
    /// (taken as GaLore does, on the `short × long` view) get AdamW with
    /// state, the rest of the gradient a state-free signSGD step of
    /// `lr · proj_params_lr_scale · inactive_lr_scale`. The projector is
    /// refreshed every `update_gap` steps (from the first), and with
    /// `reset_statistics` the moments and their step count restart then.
    /// The reference's density `ρ` is `rank = round(ρ · min(rows, cols))`.
    pub FRUGAL {
        hyper lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.01,
              rank = 128, update_gap = 200, proj_params_lr_scale = 1.0,
              inactive_lr_scale = 1.0, correct_bias = true, reset_statistics = true;
        axis low = rank;
        state [short, low] proj = 0;
        state [low, long] m = 0, v = 0;
        state scalar k = 0;
        update {
            let w = wide(g);
            let refresh = update_gap * floor((t - 1) / update_gap) == t - 1;
            proj = select(refresh, lead_cols(eigenbasis(w @ transpose(w))), proj);
            let reset = refresh && reset_statistics;
            k = select(reset, 0, k) + 1;
            let down = transpose(proj) @ w;
            m = beta1 * select(reset, 0, m) + (1 - beta1) * down;
            v = beta2 * select(reset, 0, v) + (1 - beta2) * down * down;
            let active_lr = lr * proj_params_lr_scale;
            let bc1 = select(correct_bias, 1 - beta1 ^ k, 1);
            let bc2 = select(correct_bias, sqrt(1 - beta2 ^ k), 1);
            let stateful = unwide(proj @ (m / (sqrt(v) / bc2 + eps) * -(active_lr / bc1)));
            let rest = g - unwide(proj @ down);
            let free = -(active_lr * inactive_lr_scale) * sign(rest);
            p = p * (1 - lr * weight_decay) + (stateful + free);
        }
    }
}

crate::optimizer! {
    /// Muon on matrices and AdamW on every other tensor, as the Muon authors
    /// train: one rule that chooses by `ndim()` (so a vector is taken as a
    /// `1 × n` matrix and given AdamW's step). Matrices follow `Muon` with
    /// `lr`, `weight_decay`, `momentum`...; vectors and scalars follow
    /// `torch.optim.AdamW` with `adam_lr`, `beta1`, `beta2`, `adam_eps`,
    /// `adam_weight_decay`. Each tensor keeps the state of its own half
    /// (the other half's stays at its initial value).
    pub MuonAdamW {
        hyper lr = 0.02, weight_decay = 0.01, momentum = 0.95, nesterov = true, ns_steps = 5,
              a = 3.4445, b = -4.775, c = 2.0315, eps = 1e-7,
              adam_lr = 1e-3, beta1 = 0.9, beta2 = 0.999, adam_eps = 1e-8, adam_weight_decay = 0.01;
        state buf = 0, m = 0, v = 0;
        update {
            let matrix = ndim() >= 2;
            let muon_buf = lerp(buf, g, 1 - momentum);
            let u = select(nesterov, lerp(g, muon_buf, momentum), muon_buf);
            let x = u / (norm(u) + eps);
            repeat ns_steps {
                x = newton_schulz_step(x, a, b, c);
            }
            let muon_p = p * (1 - lr * weight_decay) - lr * sqrt(max(1, rows() / cols())) * x;
            let adam_m = beta1 * m + (1 - beta1) * g;
            let adam_v = beta2 * v + (1 - beta2) * g * g;
            let denom = sqrt(adam_v) / sqrt(1 - beta2 ^ t) + adam_eps;
            let adam_p = p * (1 - adam_lr * adam_weight_decay) - adam_lr / (1 - beta1 ^ t) * adam_m / denom;
            buf = select(matrix, muon_buf, buf);
            m = select(matrix, m, adam_m);
            v = select(matrix, v, adam_v);
            p = select(matrix, muon_p, adam_p);
        }
    }
}

crate::optimizer! {
    /// SWAN (Ma et al. 2024, "SWAN: SGD with Normalization and Whitening"):
    /// no optimizer state; on the matrix taken with rows ≤ cols (transposed
    /// otherwise, as Muon), the gradient is standardised row by row
    /// (`GradNorm`: each row centred and divided by its standard deviation),
    /// then whitened (`GradWhitening`: `(G Gᵀ)^-1/2 G`), and applied as an
    /// SGD step. `eps` keeps a constant row and a singular Gram matrix finite.
    pub SWAN {
        hyper lr = 1e-3, eps = 1e-8;
        update {
            let few_rows = rows() <= cols();
            let by_rows = (g - mean_rows(g)) / sqrt(mean_rows((g - mean_rows(g)) ^ 2) + eps);
            let by_cols = (g - mean_cols(g)) / sqrt(mean_cols((g - mean_cols(g)) ^ 2) + eps);
            let white = select(
                few_rows,
                sym_pow(by_rows @ transpose(by_rows) + eps * eye_rows(), -0.5) @ by_rows,
                by_cols @ sym_pow(transpose(by_cols) @ by_cols + eps * eye_cols(), -0.5)
            );
            p = p - lr * white;
        }
    }
}

/// One catalog entry: its name, how to get its optimizer, and its DSL text.
struct Entry {
    name: &'static str,
    make: fn() -> DynOptimizer,
    source: &'static str,
}

fn dynamic<O: Optimizer + Default>() -> DynOptimizer {
    DynOptimizer::from_rule(O::default().rule())
}

const ENTRIES: &[Entry] = &[
    Entry {
        name: "sgd",
        make: dynamic::<SGD>,
        source: SGD::SOURCE,
    },
    Entry {
        name: "adam",
        make: dynamic::<Adam>,
        source: Adam::SOURCE,
    },
    Entry {
        name: "adamw",
        make: dynamic::<AdamW>,
        source: AdamW::SOURCE,
    },
    Entry {
        name: "rmsprop",
        make: dynamic::<RMSprop>,
        source: RMSprop::SOURCE,
    },
    Entry {
        name: "adagrad",
        make: dynamic::<Adagrad>,
        source: Adagrad::SOURCE,
    },
    Entry {
        name: "lion",
        make: dynamic::<Lion>,
        source: Lion::SOURCE,
    },
    Entry {
        name: "adan",
        make: dynamic::<Adan>,
        source: Adan::SOURCE,
    },
    Entry {
        name: "adabelief",
        make: dynamic::<AdaBelief>,
        source: AdaBelief::SOURCE,
    },
    Entry {
        name: "diffgrad",
        make: dynamic::<DiffGrad>,
        source: DiffGrad::SOURCE,
    },
    Entry {
        name: "grams",
        make: dynamic::<Grams>,
        source: Grams::SOURCE,
    },
    Entry {
        name: "signum",
        make: dynamic::<Signum>,
        source: Signum::SOURCE,
    },
    Entry {
        name: "sophiah",
        make: dynamic::<SophiaH>,
        source: SophiaH::SOURCE,
    },
    Entry {
        name: "adahessian",
        make: dynamic::<AdaHessian>,
        source: AdaHessian::SOURCE,
    },
    Entry {
        name: "cadamw",
        make: dynamic::<CAdamW>,
        source: CAdamW::SOURCE,
    },
    Entry {
        name: "sophiag",
        make: dynamic::<SophiaG>,
        source: SophiaG::SOURCE,
    },
    Entry {
        name: "lamb",
        make: dynamic::<Lamb>,
        source: Lamb::SOURCE,
    },
];

/// The matrix rules (tensors of rank 2 or more; run on the matrix evaluator).
const MATRIX_ENTRIES: &[Entry] = &[
    Entry {
        name: "muon",
        make: dynamic::<Muon>,
        source: Muon::SOURCE,
    },
    Entry {
        name: "adafactor",
        make: dynamic::<Adafactor>,
        source: Adafactor::SOURCE,
    },
    Entry {
        name: "sm3",
        make: dynamic::<SM3>,
        source: SM3::SOURCE,
    },
    Entry {
        name: "came",
        make: dynamic::<CAME>,
        source: CAME::SOURCE,
    },
    Entry {
        name: "shampoo",
        make: dynamic::<Shampoo>,
        source: Shampoo::SOURCE,
    },
    Entry {
        name: "swan",
        make: dynamic::<SWAN>,
        source: SWAN::SOURCE,
    },
    Entry {
        name: "soap",
        make: dynamic::<SOAP>,
        source: SOAP::SOURCE,
    },
    Entry {
        name: "galore",
        make: dynamic::<GaLore>,
        source: GaLore::SOURCE,
    },
    Entry {
        name: "frugal",
        make: dynamic::<FRUGAL>,
        source: FRUGAL::SOURCE,
    },
    Entry {
        name: "muon_adamw",
        make: dynamic::<MuonAdamW>,
        source: MuonAdamW::SOURCE,
    },
];

fn all_entries() -> impl Iterator<Item = &'static Entry> {
    ENTRIES.iter().chain(MATRIX_ENTRIES)
}

/// The names of the catalog's element-wise rules (those every backend
/// compiles to kernels: the CPU JIT, PTX), in catalog order.
pub fn names() -> Vec<&'static str> {
    ENTRIES.iter().map(|e| e.name).collect()
}

/// The names of the catalog's matrix rules (Muon, Adafactor...), which see
/// a tensor as a matrix and run on the matrix evaluator.
pub fn matrix_names() -> Vec<&'static str> {
    MATRIX_ENTRIES.iter().map(|e| e.name).collect()
}

/// Every name in the catalog: the element-wise rules, then the matrix rules.
pub fn all_names() -> Vec<&'static str> {
    all_entries().map(|e| e.name).collect()
}

/// The string-valued options of a catalog rule's reference that the rule
/// implements, each with the one value it follows (`galore` is GaLore's
/// `std` projection). A case may name them; `case::check_option` refuses
/// any other value.
pub fn fixed_options(name: &str) -> &'static [(&'static str, &'static str)] {
    match name {
        "galore" => &[("projection_type", "std")],
        "frugal" => &[
            ("proj_side", "std"),
            ("proj_type", "svd"),
            ("inactive_update_rule", "sign_sgd"),
        ],
        "soap" => &[("data_format", "channels_first")],
        _ => &[],
    }
}

/// The DSL text of the catalog optimizer called `name`.
pub fn source(name: &str) -> Option<&'static str> {
    all_entries().find(|e| e.name == name).map(|e| e.source)
}

/// The catalog optimizer called `name` (lower case), with its default hyperparameters.
pub fn get(name: &str) -> Option<DynOptimizer> {
    all_entries().find(|e| e.name == name).map(|e| (e.make)())
}
