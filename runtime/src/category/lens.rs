//! Lenses: a forward map `get : A → B` and a backward map `put : A × B' → A'`.
//!
//! Composition is `get_{f;g} = get_g ∘ get_f` and
//! `put_{f;g}(a, c') = put_f(a, put_g(get_f(a), c'))`.

use std::sync::Arc;

type Get<A, B> = Arc<dyn Fn(&A) -> B + Send + Sync>;
type Put<A, B2, A2> = Arc<dyn Fn(&A, &B2) -> A2 + Send + Sync>;

/// A lens `(get : A → B, put : A × B' → A')`.
pub struct Lens<A, B, B2, A2> {
    get: Get<A, B>,
    put: Put<A, B2, A2>,
}

impl<A, B, B2, A2> Clone for Lens<A, B, B2, A2> {
    fn clone(&self) -> Self {
        Lens {
            get: self.get.clone(),
            put: self.put.clone(),
        }
    }
}

impl<A: 'static, B: 'static, B2: 'static, A2: 'static> Lens<A, B, B2, A2> {
    /// A lens from its two maps.
    pub fn new(
        get: impl Fn(&A) -> B + Send + Sync + 'static,
        put: impl Fn(&A, &B2) -> A2 + Send + Sync + 'static,
    ) -> Self {
        Lens {
            get: Arc::new(get),
            put: Arc::new(put),
        }
    }

    /// The forward map.
    pub fn get(&self, a: &A) -> B {
        (self.get)(a)
    }

    /// The backward map.
    pub fn put(&self, a: &A, b: &B2) -> A2 {
        (self.put)(a, b)
    }

    /// Sequential composition `self ; next`.
    pub fn then<C: 'static, C2: 'static>(self, next: Lens<B, C, C2, B2>) -> Lens<A, C, C2, A2> {
        let (f, g) = (self.clone(), next.clone());
        let (f2, g2) = (self, next);
        Lens::new(
            move |a: &A| g.get(&f.get(a)),
            move |a: &A, c: &C2| f2.put(a, &g2.put(&f2.get(a), c)),
        )
    }
}

impl<A: Clone + 'static, A2: Clone + 'static> Lens<A, A, A2, A2> {
    /// The identity lens.
    pub fn identity() -> Self {
        Lens::new(|a: &A| a.clone(), |_: &A, b: &A2| b.clone())
    }
}
