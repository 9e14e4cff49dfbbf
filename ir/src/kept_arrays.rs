//! Arrays kept from one matrix step for the next, per thread.
//!
//! A fresh array of megabytes comes from the system as untouched pages,
//! and each page faults on its first write; for the matrix evaluator's
//! intermediates that cost more than the arithmetic filling them (Adafactor
//! on a 4096 × 1024 tensor: 20 ms a step with fresh arrays, 8 ms with
//! reused ones). Finished arrays are kept here instead, and the next array
//! of at most their length reuses one.
//!
//! Bounds: a thread keeps at most [`KEPT`] arrays and [`KEPT_BYTES`] bytes
//! (the smallest go first); arrays under [`SMALLEST`] elements are left to
//! the allocator. [`release`] gives a thread's arrays back.

use std::any::Any;
use std::cell::RefCell;

/// At most this many arrays are kept per thread...
pub const KEPT: usize = 16;
/// ...holding at most this many bytes.
pub const KEPT_BYTES: usize = 1 << 31;
/// Arrays of fewer elements are not kept.
pub const SMALLEST: usize = 1 << 15;

thread_local! {
    /// Kept arrays (each a `Vec` of some element type) and their bytes.
    static KEPT_ARRAYS: RefCell<Vec<(usize, Box<dyn Any>)>> = const { RefCell::new(Vec::new()) };
}

/// An empty vector with room for `n` values: the smallest kept one that is
/// large enough, or a new one.
pub fn with_capacity<F: 'static>(n: usize) -> Vec<F> {
    if n >= SMALLEST {
        if let Some(mut v) = take::<F>(n) {
            v.clear();
            return v;
        }
    }
    Vec::with_capacity(n)
}

/// The smallest kept array of `F` with room for `n` values, as it was kept.
fn take<F: 'static>(n: usize) -> Option<Vec<F>> {
    let found = KEPT_ARRAYS.with(|kept| {
        let mut kept = kept.borrow_mut();
        let best = kept
            .iter()
            .enumerate()
            .filter_map(|(i, (bytes, array))| {
                let v = array.downcast_ref::<Vec<F>>()?;
                (v.capacity() >= n).then_some((*bytes, i))
            })
            .min();
        best.map(|(_, i)| kept.swap_remove(i).1)
    });
    found.and_then(|array| array.downcast::<Vec<F>>().ok().map(|v| *v))
}

/// `n` default values, in a kept array when one is large enough.
pub fn filled<F: Copy + Default + 'static>(n: usize) -> Vec<F> {
    let mut v = with_capacity(n);
    v.resize(n, F::default());
    v
}

/// `n` values to be overwritten, every one, by the caller: a kept array's
/// old values where one is large enough (no pass to clear them), default
/// values otherwise.
pub fn overwritten<F: Copy + Default + 'static>(n: usize) -> Vec<F> {
    reused(n).unwrap_or_else(|| vec![F::default(); n])
}

/// A kept array of `n` values, its old ones (lengthened with defaults if it
/// was shorter), when one is large enough: for a caller that overwrites
/// every value.
pub fn reused<F: Copy + Default + 'static>(n: usize) -> Option<Vec<F>> {
    if n < SMALLEST {
        return None;
    }
    let mut v = take::<F>(n)?;
    v.truncate(n);
    v.resize(n, F::default());
    Some(v)
}

/// Keeps `v` for a later array on this thread (within the bounds).
pub fn keep<F: 'static>(v: Vec<F>) {
    if v.capacity() < SMALLEST {
        return;
    }
    let bytes = v.capacity().saturating_mul(std::mem::size_of::<F>().max(1));
    KEPT_ARRAYS.with(|kept| {
        let mut kept = kept.borrow_mut();
        kept.push((bytes, Box::new(v)));
        let mut total: usize = kept.iter().map(|(b, _)| *b).sum();
        while kept.len() > KEPT || total > KEPT_BYTES {
            let Some((i, _)) = kept.iter().enumerate().min_by_key(|(_, (b, _))| *b) else {
                break;
            };
            total -= kept.swap_remove(i).0;
        }
    });
}

/// Gives back every array this thread keeps.
pub fn release() {
    KEPT_ARRAYS.with(|kept| kept.borrow_mut().clear());
}

/// The number of arrays and bytes this thread keeps.
pub fn kept() -> (usize, usize) {
    KEPT_ARRAYS.with(|kept| {
        let kept = kept.borrow();
        (kept.len(), kept.iter().map(|(b, _)| *b).sum())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_are_reused_by_type_and_size_within_the_bounds() {
        release();
        keep(vec![1.0f32; SMALLEST]);
        keep(vec![0u8; 10]);
        assert_eq!(kept(), (1, SMALLEST * 4));
        // Another type, or a larger length, gets a new array.
        assert!(with_capacity::<f64>(SMALLEST).capacity() >= SMALLEST);
        assert_eq!(kept().0, 1);
        let _ = with_capacity::<f32>(SMALLEST + 1);
        assert_eq!(kept().0, 1);
        // The kept one comes back cleared, then filled with defaults.
        let v = filled::<f32>(SMALLEST);
        assert_eq!(kept().0, 0);
        assert!(v.iter().all(|&x| x == 0.0) && v.len() == SMALLEST);
        for i in 0..KEPT + 4 {
            keep(Vec::<f32>::with_capacity(SMALLEST + i));
        }
        let (count, bytes) = kept();
        assert_eq!(count, KEPT);
        // The smallest went first.
        assert_eq!(
            bytes,
            (4..KEPT + 4).map(|i| (SMALLEST + i) * 4).sum::<usize>()
        );
        release();
        assert_eq!(kept(), (0, 0));
    }

    #[test]
    fn an_array_to_be_overwritten_keeps_its_old_values_and_its_length() {
        release();
        keep(vec![7.0f32; SMALLEST + 5]);
        let v = overwritten::<f32>(SMALLEST);
        assert_eq!((v.len(), kept().0), (SMALLEST, 0));
        assert!(v.iter().all(|&x| x == 7.0), "not cleared: no pass over it");
        // A kept array shorter than its capacity is lengthened with defaults.
        let mut short = Vec::with_capacity(SMALLEST * 2);
        short.resize(SMALLEST, 3.0f32);
        keep(short);
        let v = overwritten::<f32>(SMALLEST + 2);
        assert_eq!(v.len(), SMALLEST + 2);
        assert_eq!(
            (v[SMALLEST - 1], v[SMALLEST], v[SMALLEST + 1]),
            (3.0, 0.0, 0.0)
        );
        // Nothing kept: defaults.
        assert!(overwritten::<f32>(SMALLEST).iter().all(|&x| x == 0.0));
        release();
    }
}
