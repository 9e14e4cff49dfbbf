//! How parameter, gradient and input tensors are handed to a step.
//!
//! Any ndarray array of any dimension works, through two small traits that
//! expose its shape and its elements as one contiguous slice in standard
//! (row-major) order. Arrays in another layout are refused with an error
//! rather than copied behind the caller's back.

use ndarray::{ArrayBase, Data, DataMut, Dimension};

/// A tensor read by a step (gradients, extra inputs, initial parameters).
pub trait TensorRef<F> {
    /// The shape.
    fn shape(&self) -> &[usize];
    /// The elements in standard order, or `None` when not contiguous in that order.
    fn elements(&self) -> Option<&[F]>;
}

/// A tensor updated in place by a step (parameters).
pub trait TensorMut<F>: TensorRef<F> {
    /// The elements in standard order, or `None` when not contiguous in that order.
    fn elements_mut(&mut self) -> Option<&mut [F]>;
}

impl<F, S: Data<Elem = F>, D: Dimension> TensorRef<F> for ArrayBase<S, D> {
    fn shape(&self) -> &[usize] {
        ArrayBase::shape(self)
    }
    fn elements(&self) -> Option<&[F]> {
        self.as_slice()
    }
}

impl<F, S: DataMut<Elem = F>, D: Dimension> TensorMut<F> for ArrayBase<S, D> {
    fn elements_mut(&mut self) -> Option<&mut [F]> {
        self.as_slice_mut()
    }
}
