//! Straightforward f64 implementations of every op, one file per op family, written from the
//! doc comments in `kiln_core::backend`. They take host values (quantized weights already
//! dequantized with `kiln_core::quant::dequantize`, K/V already rounded to their cache dtype)
//! and return f64 results. They never call into a backend: the reference backend is a backend
//! under test like the others.

pub mod add;
pub mod all_reduce;
pub mod attention;
pub mod copy;
pub mod embed;
pub mod glu;
pub mod kv_append;
pub mod matmul;
pub mod moe;
pub mod rms_norm;
pub mod rope;
