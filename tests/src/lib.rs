//! kiln-tests: the backend conformance suite.
//!
//! Every op test is written once as a case function over `&dyn Backend` and instantiated for
//! every backend by [`conformance!`] (`rope_neox_hd128` becomes `rope_neox_hd128_reference`,
//! `rope_neox_hd128_cuda` and `rope_neox_hd128_wgpu`). This library holds what the cases share:
//! - [`harness`]: opening each backend once per process, skip/require rules (`KILN_REQUIRE`),
//!   the per-case seed and context for failure messages;
//! - [`tolerance`]: the tolerance profile keyed by (backend, op, dtype) and the comparators;
//! - [`dev`]: uploads with poisoned guard bytes, poisoned outputs, read-back with guard checks;
//! - [`data`]: seeded random inputs and random block-format weights for all 15 weight dtypes;
//! - [`oracle`]: straightforward f64 implementations of every op, written from the doc comments
//!   of `kiln_core::backend` (never calls into a backend).
//!
//! The test files are in `tests/conformance/*.rs` (one per op family); see `README.md`.

// Test-support code: a failed check is a panic by design (that is how a test fails), so
// unwrap/expect are allowed here as in tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod data;
pub mod dev;
pub mod harness;
pub mod oracle;
pub mod tolerance;

pub use harness::{optional_op, require_op};
pub use kiln_core;
pub use paste;
