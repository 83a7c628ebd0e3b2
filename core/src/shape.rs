//! Shapes of contiguous row-major tensors (outermost dimension first, the last one contiguous).
//! Note that GGUF writes dims innermost-first (`ne`); readers reverse them into a `Shape`.

use std::fmt;

use crate::error::{Error, Result};

pub const MAX_RANK: usize = 4;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Shape {
    dims: [usize; MAX_RANK],
    rank: u8,
}

impl Shape {
    /// A shape of up to four dims; panics never: more than four dims is an error.
    pub fn new(dims: &[usize]) -> Result<Shape> {
        if dims.len() > MAX_RANK {
            return Err(Error::Invalid(format!(
                "shape {dims:?} has more than {MAX_RANK} dims"
            )));
        }
        let mut d = [1; MAX_RANK];
        d[..dims.len()].copy_from_slice(dims);
        let s = Shape {
            dims: d,
            rank: dims.len() as u8,
        };
        s.try_numel()?;
        Ok(s)
    }

    /// Shorthands for literal shapes known to be valid (rank ≤ 4 by construction).
    pub const fn d1(a: usize) -> Shape {
        Shape {
            dims: [a, 1, 1, 1],
            rank: 1,
        }
    }
    pub const fn d2(a: usize, b: usize) -> Shape {
        Shape {
            dims: [a, b, 1, 1],
            rank: 2,
        }
    }
    pub const fn d3(a: usize, b: usize, c: usize) -> Shape {
        Shape {
            dims: [a, b, c, 1],
            rank: 3,
        }
    }
    pub const fn d4(a: usize, b: usize, c: usize, d: usize) -> Shape {
        Shape {
            dims: [a, b, c, d],
            rank: 4,
        }
    }

    pub fn dims(&self) -> &[usize] {
        &self.dims[..self.rank as usize]
    }
    pub fn rank(&self) -> usize {
        self.rank as usize
    }
    /// Dim `i`; dims past the rank read as 1.
    pub fn dim(&self, i: usize) -> usize {
        if i < self.rank as usize {
            self.dims[i]
        } else {
            1
        }
    }
    /// The innermost (contiguous) dim; 1 for a scalar.
    pub fn last(&self) -> usize {
        if self.rank == 0 {
            1
        } else {
            self.dims[self.rank as usize - 1]
        }
    }
    /// Product of all dims but the last: the number of rows of a row-major matrix view.
    pub fn rows(&self) -> usize {
        self.numel() / self.last().max(1)
    }
    pub fn numel(&self) -> usize {
        self.dims().iter().product()
    }
    fn try_numel(&self) -> Result<usize> {
        self.dims()
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| Error::Invalid(format!("shape {:?} overflows", self.dims())))
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.dims())
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.dims())
    }
}
