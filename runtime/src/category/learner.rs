//! Learners (Fong, Spivak and Tuyéras, "Backprop as Functor"): a parameter
//! space P, an implementation `I : P × A → B`, an update `U : P × A × B → P`
//! and a request `r : P × A × B → A`, over real vectors.
//!
//! Composition `(P, I, U, r) ; (Q, J, V, s)` has parameters `P × Q` and
//! `(I.J)(p, q, a) = J(q, I(p, a))`,
//! `(U.V)(p, q, a, c) = (U(p, a, s(q, I(p, a), c)), V(q, I(p, a), c))`,
//! `(r.s)(p, q, a, c) = r(p, a, s(q, I(p, a), c))`.
//! The functor `L_{eps,e}` sends a parametrised differentiable map `I` to
//! `U_I = p - eps ∇_p E_I` and, for `e = (x - y)^2 / 2`, `r_I = a - ∇_a E_I`,
//! with `E_I(p, a, b) = Σ_j e(I_j(p, a), b_j)`.

use crate::diagram::plan::Model;
use crate::loss::LearningRate;
use ndarray::{concatenate, s, Array1, Array2, Axis};
use std::sync::{Arc, Mutex};

type Vector = Array1<f64>;
type Map2 = Arc<dyn Fn(&Vector, &Vector) -> Vector + Send + Sync>;
type Map3 = Arc<dyn Fn(&Vector, &Vector, &Vector) -> Vector + Send + Sync>;

/// A learner `A → B` with parameters `p`.
#[derive(Clone)]
pub struct Learner {
    /// The current parameters.
    pub p: Vector,
    /// Dimensions of A and B.
    pub dims: (usize, usize),
    implement: Map2,
    update: Map3,
    request: Map3,
}

impl Learner {
    /// A learner from its maps; `dims` are the dimensions of A and B.
    pub fn new(
        p: Vector,
        dims: (usize, usize),
        implement: impl Fn(&Vector, &Vector) -> Vector + Send + Sync + 'static,
        update: impl Fn(&Vector, &Vector, &Vector) -> Vector + Send + Sync + 'static,
        request: impl Fn(&Vector, &Vector, &Vector) -> Vector + Send + Sync + 'static,
    ) -> Self {
        Learner {
            p,
            dims,
            implement: Arc::new(implement),
            update: Arc::new(update),
            request: Arc::new(request),
        }
    }

    /// `I(p, a)`.
    pub fn implement(&self, p: &Vector, a: &Vector) -> Vector {
        (self.implement)(p, a)
    }

    /// `U(p, a, b)`.
    pub fn update(&self, p: &Vector, a: &Vector, b: &Vector) -> Vector {
        (self.update)(p, a, b)
    }

    /// `r(p, a, b)`.
    pub fn request(&self, p: &Vector, a: &Vector, b: &Vector) -> Vector {
        (self.request)(p, a, b)
    }

    /// One training step on `(a, b)`: the parameters become `U(p, a, b)`.
    pub fn train(&mut self, a: &Vector, b: &Vector) {
        self.p = self.update(&self.p, a, b);
    }

    /// Sequential composition `self ; next` (parameters `P × Q`, concatenated).
    pub fn then(self, next: Learner) -> Learner {
        let k = self.p.len();
        let split = move |pq: &Vector| (pq.slice(s![..k]).to_owned(), pq.slice(s![k..]).to_owned());
        let (f, g) = (self.clone(), next.clone());
        let implement = {
            let (f, g) = (f.clone(), g.clone());
            move |pq: &Vector, a: &Vector| {
                let (p, q) = split(pq);
                g.implement(&q, &f.implement(&p, a))
            }
        };
        let update = {
            let (f, g) = (f.clone(), g.clone());
            move |pq: &Vector, a: &Vector, c: &Vector| {
                let (p, q) = split(pq);
                let b = f.implement(&p, a);
                let p2 = f.update(&p, a, &g.request(&q, &b, c));
                let q2 = g.update(&q, &b, c);
                concatenate(Axis(0), &[p2.view(), q2.view()]).expect("vectors")
            }
        };
        let request = move |pq: &Vector, a: &Vector, c: &Vector| {
            let (p, q) = split(pq);
            let b = f.implement(&p, a);
            f.request(&p, a, &g.request(&q, &b, c))
        };
        let p = concatenate(Axis(0), &[self.p.view(), next.p.view()]).expect("vectors");
        Learner::new(p, (self.dims.0, next.dims.1), implement, update, request)
    }

    /// Parallel composition `self ⊗ other`: `A × A' → B × B'`.
    pub fn beside(self, other: Learner) -> Learner {
        let k = self.p.len();
        let (da, db) = self.dims;
        let split_p =
            move |pq: &Vector| (pq.slice(s![..k]).to_owned(), pq.slice(s![k..]).to_owned());
        let split_a =
            move |a: &Vector| (a.slice(s![..da]).to_owned(), a.slice(s![da..]).to_owned());
        let split_b =
            move |b: &Vector| (b.slice(s![..db]).to_owned(), b.slice(s![db..]).to_owned());
        let join =
            |x: Vector, y: Vector| concatenate(Axis(0), &[x.view(), y.view()]).expect("vectors");
        let (f, g) = (self.clone(), other.clone());
        let implement = {
            let (f, g) = (f.clone(), g.clone());
            move |pq: &Vector, a: &Vector| {
                let ((p, q), (a1, a2)) = (split_p(pq), split_a(a));
                join(f.implement(&p, &a1), g.implement(&q, &a2))
            }
        };
        let update = {
            let (f, g) = (f.clone(), g.clone());
            move |pq: &Vector, a: &Vector, b: &Vector| {
                let ((p, q), (a1, a2), (b1, b2)) = (split_p(pq), split_a(a), split_b(b));
                join(f.update(&p, &a1, &b1), g.update(&q, &a2, &b2))
            }
        };
        let request = move |pq: &Vector, a: &Vector, b: &Vector| {
            let ((p, q), (a1, a2), (b1, b2)) = (split_p(pq), split_a(a), split_b(b));
            join(f.request(&p, &a1, &b1), g.request(&q, &a2, &b2))
        };
        let p = join(self.p.clone(), other.p.clone());
        Learner::new(
            p,
            (self.dims.0 + other.dims.0, self.dims.1 + other.dims.1),
            implement,
            update,
            request,
        )
    }

    /// The functor `L_{eps,e}` with `e(x, y) = (x - y)^2 / 2`, applied to a
    /// compiled diagram with one input and one output wire: gradient descent
    /// with step `eps` on the parameters, and `a - ∇_a E` as the request.
    pub fn from_model(model: Model<f64>, eps: f64) -> Learner {
        let dims = (
            model.dom().first().map_or(0, |s| s.iter().product()),
            model.cod().first().map_or(0, |s| s.iter().product()),
        );
        let p = Array1::from(model.flat_params());
        let model = Arc::new(Mutex::new(model));
        // Gradients of E(p, a, b) = |I(p, a) - b|^2 / 2 with respect to p and a.
        let gradients = {
            let model = model.clone();
            move |p: &Vector, a: &Vector, b: &Vector| -> (Vector, Vector) {
                let mut m = model.lock().expect("model lock");
                m.set_flat_params(p.as_slice().expect("contiguous"));
                let x = Array2::from_shape_vec((1, a.len()), a.to_vec()).expect("one example");
                let y = m
                    .predict(&x)
                    .expect("the learner's dimensions match the model");
                let target = Array2::from_shape_vec((1, b.len()), b.to_vec()).expect("one example");
                let da = m.backward(&[y - target]).expect("one output wire");
                (Array1::from(m.flat_grads()), da[0].row(0).to_owned())
            }
        };
        let implement = {
            let model = model.clone();
            move |p: &Vector, a: &Vector| {
                let mut m = model.lock().expect("model lock");
                m.set_flat_params(p.as_slice().expect("contiguous"));
                let x = Array2::from_shape_vec((1, a.len()), a.to_vec()).expect("one example");
                m.predict(&x).expect("dimensions match").row(0).to_owned()
            }
        };
        let update = {
            let gradients = gradients.clone();
            move |p: &Vector, a: &Vector, b: &Vector| {
                let (gp, _) = gradients(p, a, b);
                // The learning-rate lens: alpha = -eps scales the gradient.
                p + &(gp * LearningRate::Descent(eps).factor())
            }
        };
        let request = move |p: &Vector, a: &Vector, b: &Vector| {
            let (_, ga) = gradients(p, a, b);
            a - &ga
        };
        Learner::new(p, dims, implement, update, request)
    }
}
