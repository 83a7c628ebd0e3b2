//! The backend conformance suite: one binary, one module per op family. Every case is written
//! once (`<op>_case(b: &dyn Backend, ...)`) and instantiated for the reference, CUDA and wgpu
//! backends by `conformance!` (see `kiln_tests::harness` and `tests/README.md`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod conformance {
    pub mod add;
    pub mod all_reduce;
    pub mod attention;
    pub mod copy;
    pub mod embed;
    pub mod glu;
    pub mod kv_append;
    pub mod matmul;
    pub mod moe;
    pub mod mutants;
    pub mod rms_norm;
    pub mod rope;
    pub mod rope_kv;
}
