//! The tolerance profile, keyed by (backend, op, dtype), and the comparators.
//!
//! Two kinds of bound:
//! - `Elem { atol, rtol }`: every element satisfies |a − e| ≤ atol + rtol·|e| (an infinite e
//!   must be matched exactly). For elementwise ops.
//! - `Nmse { nmse, max_rel }`: Σ(a−e)²/Σe² ≤ nmse, and no single element is off by more than
//!   max_rel·rms(e) (so one wrong element cannot hide in a large output). For matmul,
//!   attention and moe, whose accumulation order is the backend's choice.
//!
//! Any NaN in an output fails (outputs are poisoned with NaN before the op). The dtype key is
//! the one `Backend::supports` takes: weight dtype for matmul/embed/moe, KV dtype for
//! attention/kv_append, the destination dtype for copy, the activation dtype otherwise.
//! The unit tests at the bottom check that every rule rejects one element off by half the
//! output's rms and two swapped rows.

use kiln_core::{Backend, BackendKind, DType, OpKind};

use crate::harness::context;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Tol {
    Elem { atol: f64, rtol: f64 },
    Nmse { nmse: f64, max_rel: f64 },
}

/// Which backends a rule covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum On {
    Any,
    Reference,
    /// CUDA and wgpu.
    Gpu,
    Cuda,
    Wgpu,
}

impl On {
    fn covers(self, k: BackendKind) -> bool {
        match self {
            On::Any => true,
            On::Reference => k == BackendKind::Reference,
            On::Gpu => matches!(k, BackendKind::Cuda | BackendKind::Wgpu),
            On::Cuda => k == BackendKind::Cuda,
            On::Wgpu => k == BackendKind::Wgpu,
        }
    }
}

/// Which dtypes a rule covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dt {
    Any,
    Is(DType),
    /// The 12 GGUF block formats.
    Block,
}

impl Dt {
    fn covers(self, d: DType) -> bool {
        match self {
            Dt::Any => true,
            Dt::Is(x) => x == d,
            Dt::Block => d.is_quantized(),
        }
    }
}

pub struct Rule {
    pub on: On,
    /// None: every op.
    pub op: Option<OpKind>,
    pub dt: Dt,
    pub tol: Tol,
    pub why: &'static str,
}

const fn rule(on: On, op: OpKind, dt: Dt, tol: Tol, why: &'static str) -> Rule {
    Rule {
        on,
        op: Some(op),
        dt,
        tol,
        why,
    }
}
const fn any_op(on: On, dt: Dt, tol: Tol, why: &'static str) -> Rule {
    Rule {
        on,
        op: None,
        dt,
        tol,
        why,
    }
}
const fn elem(atol: f64, rtol: f64) -> Tol {
    Tol::Elem { atol, rtol }
}
const fn nmse(nmse: f64, max_rel: f64) -> Tol {
    Tol::Nmse { nmse, max_rel }
}

use DType::{BF16, F16, F32};
use OpKind::*;

/// One f16 ulp relative (2⁻¹⁰), one bf16 ulp relative (2⁻⁷), one f32 ulp relative (2⁻²³).
const F16_ULP: f64 = 9.765625e-4;
const BF16_ULP: f64 = 7.8125e-3;
const F32_ULP: f64 = 1.1920929e-7;
/// Worst-case relative squared error of x rounded to int8 per group of 16 (4/127²): the base
/// of the block-type matmul rule below.
const Q8_X_NMSE: f64 = 4.0 / (127.0 * 127.0);
/// Smallest positive f16 subnormal (2⁻²⁴).
const F16_TINY: f64 = 5.9604645e-8;

/// The profile: the first rule matching (backend, op, dtype) applies. A backend that needs a
/// looser bound adds a rule with its name above the general one, with the reason.
pub static PROFILE: &[Rule] = &[
    // ---- matmul / attention / moe: normalized MSE ----
    rule(
        On::Reference,
        Matmul,
        Dt::Any,
        nmse(1e-10, 1e-4),
        "f32 products, f64 or blocked f32 accumulation",
    ),
    // Block-type weights: the CUDA GEMV and the int8 tensor-core (mma) path round x to int8 per
    // group of 16 the same way (one quant_x kernel; d = max|x| / 127 rounded up to 22
    // significant bits, |x − x̂| ≤ d/2, and max|x| ≤ 4·rms over 16 values) and multiply by the
    // exact weights, so one rule covers both: Σ(x − x̂)²/Σx² ≤ 4/127² = 2.48e-4
    // (~4e-5 for this suite's activations, by simulation). All outputs of one x row share its rounding error:
    // where the weights have a common offset (Q4_1/Q5_1 random blocks), the output nmse is one
    // sample of (Σε)²/(Σx)², not an average, so the rule allows 4× the x bound. Measured on an
    // H200 (BENCHMARKS.md, 2026-11-22 int8-x entry): up to 2.7e-4 (matmul_q5_1_gemv).
    rule(
        On::Gpu,
        Matmul,
        Dt::Block,
        nmse(4.0 * Q8_X_NMSE, 8e-2),
        "activations rounded to int8 per 16 (CUDA GEMV): nmse ≤ 4·4/127²",
    ),
    rule(
        On::Gpu,
        Matmul,
        Dt::Any,
        nmse(1e-5, 3e-2),
        "f16/bf16 tensor-core GEMM rounds x to 16 bits",
    ),
    rule(
        On::Reference,
        Attention,
        Dt::Any,
        nmse(1e-10, 1e-4),
        "f32/f64 softmax; oracle reads K/V rounded to the cache dtype",
    ),
    rule(
        On::Gpu,
        Attention,
        Dt::Any,
        nmse(1e-5, 3e-2),
        "f16/bf16 tensor-core QK and PV",
    ),
    rule(On::Reference, Moe, Dt::Any, nmse(1e-10, 1e-4), "as matmul"),
    rule(
        On::Gpu,
        Moe,
        Dt::Block,
        nmse(2e-4, 8e-2),
        "as matmul, plus the 16-bit intermediate",
    ),
    rule(
        On::Gpu,
        Moe,
        Dt::Any,
        nmse(2e-5, 3e-2),
        "as matmul, plus the 16-bit intermediate",
    ),
    // ---- stores and conversions: exact (round to nearest even) ----
    rule(On::Any, KvAppend, Dt::Is(F32), elem(0.0, 0.0), "a copy"),
    rule(
        On::Reference,
        KvAppend,
        Dt::Any,
        elem(0.0, 0.0),
        "round to nearest even, as the oracle",
    ),
    rule(
        On::Gpu,
        KvAppend,
        Dt::Is(F16),
        elem(F16_TINY, F16_ULP),
        "within one f16 ulp",
    ),
    rule(
        On::Gpu,
        KvAppend,
        Dt::Is(BF16),
        elem(1e-38, BF16_ULP),
        "within one bf16 ulp",
    ),
    rule(
        On::Gpu,
        Copy,
        Dt::Is(F32),
        elem(1.2e-38, 0.0),
        "exact, but f32 denormals may flush",
    ),
    rule(
        On::Any,
        Copy,
        Dt::Is(F32),
        elem(0.0, 0.0),
        "f16/bf16 → f32 is exact",
    ),
    rule(
        On::Reference,
        Copy,
        Dt::Any,
        elem(0.0, 0.0),
        "round to nearest even, as the oracle",
    ),
    rule(
        On::Gpu,
        Copy,
        Dt::Is(F16),
        elem(F16_TINY, F16_ULP),
        "within one f16 ulp",
    ),
    rule(
        On::Gpu,
        Copy,
        Dt::Is(BF16),
        elem(1e-38, BF16_ULP),
        "within one bf16 ulp",
    ),
    rule(On::Any, Gather, Dt::Any, elem(0.0, 0.0), "a copy"),
    // ---- elementwise f32 math ----
    rule(
        On::Any,
        Add,
        Dt::Is(F32),
        elem(0.0, F32_ULP),
        "one rounding",
    ),
    rule(
        On::Any,
        AddBias,
        Dt::Is(F32),
        elem(0.0, F32_ULP),
        "one rounding",
    ),
    rule(
        On::Any,
        RmsNorm,
        Dt::Is(F32),
        elem(1e-6, 1e-5),
        "f32 sum of squares over dim",
    ),
    rule(
        On::Any,
        Rope,
        Dt::Is(F32),
        elem(1e-6, 1e-5),
        "plus |θ|·2⁻²³ per element for the f32 angle",
    ),
    rule(On::Any, Glu, Dt::Is(F32), elem(1e-6, 1e-5), "f32 exp/tanh"),
    rule(
        On::Any,
        Embed,
        Dt::Any,
        elem(1e-8, 3e-7),
        "dequantized value × scale: ≤ 2 roundings",
    ),
    rule(
        On::Reference,
        AllReduce,
        Dt::Is(F32),
        elem(1e-6, 1e-6),
        "f32 sum of ≤ 3 values",
    ),
    rule(
        On::Reference,
        AllReduce,
        Dt::Is(F16),
        elem(1e-6, 5e-4),
        "sum rounded once to f16",
    ),
    rule(
        On::Reference,
        AllReduce,
        Dt::Is(BF16),
        elem(1e-6, 4e-3),
        "sum rounded once to bf16",
    ),
    rule(
        On::Gpu,
        AllReduce,
        Dt::Is(F32),
        elem(1e-6, 1e-6),
        "f32 sum of ≤ 3 values",
    ),
    rule(
        On::Gpu,
        AllReduce,
        Dt::Is(F16),
        elem(2e-3, 1e-3),
        "16-bit partial sums (NCCL)",
    ),
    rule(
        On::Gpu,
        AllReduce,
        Dt::Is(BF16),
        elem(1.6e-2, 8e-3),
        "16-bit partial sums (NCCL)",
    ),
    // ---- f16 / bf16 activations (optional cases): output rounding dominates ----
    any_op(
        On::Any,
        Dt::Is(F16),
        elem(1e-5, 2e-3),
        "f16 output: 2 f16 ulps",
    ),
    any_op(
        On::Any,
        Dt::Is(BF16),
        elem(1e-4, 1.6e-2),
        "bf16 output: 2 bf16 ulps",
    ),
];

/// The rule for (backend, op, dtype).
pub fn rule_for(kind: BackendKind, op: OpKind, dt: DType) -> &'static Rule {
    PROFILE
        .iter()
        .find(|r| r.on.covers(kind) && r.op.is_none_or(|o| o == op) && r.dt.covers(dt))
        .unwrap_or_else(|| {
            panic!("no tolerance rule for ({kind}, {op:?}, {dt}): add one to PROFILE")
        })
}

/// What a comparison measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub n: usize,
    /// Σ(a−e)²/Σe² over the elements (absolute Σ(a−e)² if every e is 0).
    pub nmse: f64,
    pub max_abs: f64,
    /// max |a−e| / rms(e).
    pub max_rel: f64,
    /// Index of the largest |a−e|.
    pub worst: usize,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "n={} nmse={:.3e} max|a-e|={:.3e} (= {:.3e}·rms, at {})",
            self.n, self.nmse, self.max_abs, self.max_rel, self.worst
        )
    }
}

/// Row-major multi-index of flat index `i` in `shape`.
pub fn index(shape: &[usize], mut i: usize) -> String {
    let mut idx = vec![0; shape.len()];
    for (d, n) in shape.iter().enumerate().rev() {
        idx[d] = i % n.max(&1);
        i /= n.max(&1);
    }
    format!("{idx:?}")
}

fn stats(actual: &[f32], expected: &[f64]) -> Stats {
    let (mut se, mut sd, mut max_abs, mut worst) = (0f64, 0f64, 0f64, 0usize);
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        if !e.is_finite() {
            continue;
        }
        let d = (a as f64 - e).abs();
        se += e * e;
        sd += d * d;
        if d > max_abs || d.is_nan() && !max_abs.is_nan() {
            max_abs = d;
            worst = i;
        }
    }
    let n = actual.len();
    let rms = (se / n.max(1) as f64).sqrt();
    Stats {
        n,
        nmse: if se > 0.0 { sd / se } else { sd },
        max_abs,
        max_rel: if rms > 0.0 { max_abs / rms } else { max_abs },
        worst,
    }
}

/// Compare `actual` with `expected` under `tol`; `extra_atol[i]` (if given) widens element i's
/// absolute bound (used by rope for the f32 angle; for `Nmse`, the per-element max_rel·rms
/// check: matmul_glu's propagated product error). `Err` describes the worst elements.
pub fn compare(
    tol: Tol,
    shape: &[usize],
    actual: &[f32],
    expected: &[f64],
    extra_atol: Option<&[f64]>,
) -> Result<Stats, String> {
    if actual.len() != expected.len() {
        return Err(format!(
            "{} values, expected {}",
            actual.len(),
            expected.len()
        ));
    }
    let nan: Vec<usize> = (0..actual.len())
        .filter(|&i| actual[i].is_nan() && !expected[i].is_nan())
        .collect();
    if !nan.is_empty() {
        return Err(format!(
            "{} of {} elements are NaN (poison: never written?), first at {}",
            nan.len(),
            actual.len(),
            index(shape, nan[0])
        ));
    }
    let st = stats(actual, expected);
    match tol {
        Tol::Elem { atol, rtol } => {
            let mut bad = Vec::new();
            let mut n_bad = 0;
            for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
                let allowed = atol + rtol * e.abs() + extra_atol.map_or(0.0, |x| x[i]);
                let ok = if e.is_finite() {
                    (a as f64 - e).abs() <= allowed
                } else {
                    a as f64 == e || (a.is_nan() && e.is_nan())
                };
                if !ok {
                    n_bad += 1;
                    if bad.len() < 6 {
                        bad.push(format!(
                            "{}: got {a:e}, expected {e:e} (|diff| {:.3e} > {allowed:.3e})",
                            index(shape, i),
                            (a as f64 - e).abs()
                        ));
                    }
                }
            }
            if n_bad > 0 {
                return Err(format!(
                    "{n_bad} of {} elements outside |a-e| <= {atol:e} + {rtol:e}·|e|{}:\n    {}",
                    actual.len(),
                    if extra_atol.is_some() {
                        " + per-element term"
                    } else {
                        ""
                    },
                    bad.join("\n    ")
                ));
            }
        }
        Tol::Nmse { nmse, max_rel } => {
            if let Some(i) = actual.iter().position(|a| !a.is_finite()) {
                return Err(format!(
                    "non-finite output {} at {}",
                    actual[i],
                    index(shape, i)
                ));
            }
            // With a per-element term: each element's excess over it, against max_rel·rms.
            let (max_rel_seen, w) = match extra_atol {
                Some(x) => {
                    // as `stats`: over the finite expected values, divided by the length
                    let se: f64 = expected
                        .iter()
                        .filter(|e| e.is_finite())
                        .map(|e| e * e)
                        .sum();
                    let rms = (se / actual.len().max(1) as f64).sqrt();
                    let rms = if rms > 0.0 { rms } else { 1.0 };
                    (0..actual.len())
                        .filter(|&i| expected[i].is_finite())
                        .map(|i| {
                            let d = (f64::from(actual[i]) - expected[i]).abs();
                            ((d - x.get(i).copied().unwrap_or(0.0)).max(0.0) / rms, i)
                        })
                        .fold((0.0, st.worst), |a, b| if b.0 > a.0 { b } else { a })
                }
                None => (st.max_rel, st.worst),
            };
            if !(st.nmse <= nmse && max_rel_seen <= max_rel) {
                return Err(format!(
                    "nmse {:.3e} (bound {nmse:e}), worst element {} = {:e}, expected {:e}: \
                     off by {:.3e}·rms{} (bound {max_rel:e})",
                    st.nmse,
                    index(shape, w),
                    actual[w],
                    expected[w],
                    max_rel_seen,
                    if extra_atol.is_some() {
                        " beyond its per-element term"
                    } else {
                        ""
                    }
                ));
            }
        }
    }
    Ok(st)
}

/// Compare an op's output with the oracle under the profile's rule for (b, op, dt); panics with
/// the case context on failure, prints the measured error on success.
pub fn check(
    b: &dyn Backend,
    op: OpKind,
    dt: DType,
    what: &str,
    shape: &[usize],
    actual: &[f32],
    expected: &[f64],
) -> Stats {
    check_impl(b, op, dt, what, shape, actual, expected, None)
}

/// [`check`] with a per-element addition to the absolute bound.
#[allow(clippy::too_many_arguments)]
pub fn check_with_atol(
    b: &dyn Backend,
    op: OpKind,
    dt: DType,
    what: &str,
    shape: &[usize],
    actual: &[f32],
    expected: &[f64],
    extra_atol: &[f64],
) -> Stats {
    check_impl(b, op, dt, what, shape, actual, expected, Some(extra_atol))
}

#[allow(clippy::too_many_arguments)]
fn check_impl(
    b: &dyn Backend,
    op: OpKind,
    dt: DType,
    what: &str,
    shape: &[usize],
    actual: &[f32],
    expected: &[f64],
    extra: Option<&[f64]>,
) -> Stats {
    let r = rule_for(b.id().kind, op, dt);
    match compare(r.tol, shape, actual, expected, extra) {
        Ok(st) => {
            println!("ok: {what} {shape:?}: {st} [{:?}: {}]", r.tol, r.why);
            st
        }
        Err(e) => panic!(
            "{what} {shape:?} {dt}: {e}\n  tolerance {:?} ({})\n  {}",
            r.tol,
            r.why,
            context()
        ),
    }
}

/// f64 copies of f32 values (expected values that are exactly representable).
pub fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Rng;

    const SHAPE: [usize; 2] = [33, 4099];

    fn expected(rng: &mut Rng) -> Vec<f64> {
        // f32-representable values, so exact rules can pass.
        rng.normals(SHAPE[0] * SHAPE[1], 1.0)
            .iter()
            .map(|&x| x as f64)
            .collect()
    }

    /// Noise that the rule must accept.
    fn within(tol: Tol, e: &[f64], rng: &mut Rng) -> Vec<f32> {
        let rms = (e.iter().map(|x| x * x).sum::<f64>() / e.len() as f64).sqrt();
        e.iter()
            .map(|&x| {
                let u = rng.uniform(-1.0, 1.0) as f64;
                let d = match tol {
                    Tol::Elem { atol, rtol } => 0.25 * (atol + rtol * x.abs()) * u,
                    Tol::Nmse { nmse, max_rel } => {
                        rms * (0.75 * nmse).sqrt().min(0.5 * max_rel) * u
                    }
                };
                (x + d) as f32
            })
            .collect()
    }

    #[test]
    fn every_rule_accepts_its_noise_and_rejects_a_wrong_index() {
        let mut rng = Rng::new(7);
        let e = expected(&mut rng);
        let rms = (e.iter().map(|x| x * x).sum::<f64>() / e.len() as f64).sqrt();
        for r in PROFILE {
            let name = format!("{:?} {:?} {:?} {:?}", r.on, r.op, r.dt, r.tol);
            let ok = within(r.tol, &e, &mut rng);
            compare(r.tol, &SHAPE, &ok, &e, None)
                .unwrap_or_else(|m| panic!("{name}: rejected noise: {m}"));

            // One element off by half the output's rms (a wrong index typically is off by ~1.4 rms).
            let mut one = ok.clone();
            let i = 12345;
            one[i] = (e[i] + 0.5 * rms) as f32;
            assert!(
                compare(r.tol, &SHAPE, &one, &e, None).is_err(),
                "{name}: missed one wrong element"
            );

            // Two rows swapped.
            let mut sw = ok.clone();
            let n = SHAPE[1];
            for j in 0..n {
                sw.swap(3 * n + j, 17 * n + j);
            }
            assert!(
                compare(r.tol, &SHAPE, &sw, &e, None).is_err(),
                "{name}: missed swapped rows"
            );

            // One unwritten (poisoned) element.
            let mut nan = ok.clone();
            nan[SHAPE[1] * SHAPE[0] - 1] = f32::NAN;
            assert!(
                compare(r.tol, &SHAPE, &nan, &e, None).is_err(),
                "{name}: missed a NaN"
            );
        }
    }

    #[test]
    fn lookup_prefers_specific_rules() {
        let t = |k, op, dt| rule_for(k, op, dt).tol;
        assert_eq!(
            t(BackendKind::Reference, Matmul, DType::Q4_K),
            nmse(1e-10, 1e-4)
        );
        assert_eq!(
            t(BackendKind::Cuda, Matmul, DType::Q4_K),
            nmse(4.0 * Q8_X_NMSE, 8e-2)
        );
        assert_eq!(t(BackendKind::Wgpu, Matmul, DType::BF16), nmse(1e-5, 3e-2));
        assert_eq!(t(BackendKind::Cuda, KvAppend, DType::F32), elem(0.0, 0.0));
        assert_eq!(
            t(BackendKind::Reference, RmsNorm, DType::F16),
            elem(1e-5, 2e-3)
        );
        // Every (backend, op, float dtype) has a rule.
        for k in BackendKind::ALL {
            for op in OpKind::ALL {
                for dt in [F32, F16, BF16] {
                    rule_for(k, op, dt);
                }
            }
        }
    }

    #[test]
    fn index_unravels_row_major() {
        assert_eq!(index(&[2, 3, 4], 23), "[1, 2, 3]");
        assert_eq!(index(&[5], 4), "[4]");
    }
}
