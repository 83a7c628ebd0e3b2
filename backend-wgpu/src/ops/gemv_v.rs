//! The m = 1 GEMV with vec4 weight loads and x held in registers, `shaders/gemv_v.wgsl`, for
//! the weight types whose prepared rows are 16-byte aligned: BF16, Q8_0 (blocks without their
//! d) and Q4_K (144-byte blocks). `matmul` sends one-row products of those types here; the
//! general `gemv` kernel (matmul.wgsl) keeps every other case.
//!
//! Q8_0 and Q4_K go to `shaders/gemv_x8.wgsl` instead where it can run (`x8_ok`): x rounded to
//! int8 per 16 elements in workgroup memory and integer dot products (`dot4I8Packed`), the
//! CUDA GEMV's arithmetic; gemv_v's exact-x float decode is the fallback. gemv_x8 has two
//! ways to get its int8 x: every workgroup rounds the whole x into workgroup memory before its
//! decode, or (XQG) a tiny dispatch (`shaders/quant_x8.wgsl`) rounds it once per call into
//! the backend's `xq_buf` in the same compute pass and the GEMV reads it from there; and it
//! can split k over KS teams of a workgroup (more chunks of a row in flight for few rows).

use kiln_core::{DType, Error, OpKind, Result, View, ViewMut};

use crate::buffer::Bound;
use crate::device::WgpuBackend;
use crate::ops::bytes_of;
use crate::ops::glu::ACT_SRC;
use crate::ops::matmul::wdefine;
use crate::pipeline_cache::ShaderSpec;
use crate::weight::WgpuWeight;

const SRC: &str = include_str!("../../shaders/gemv_v.wgsl");
const SRC_X8: &str = include_str!("../../shaders/gemv_x8.wgsl");
const SRC_Q: &str = include_str!("../../shaders/quant_x8.wgsl");
/// round_x16, shared by gemv_x8's quant_x and the quant_x8 pre-pass.
const SRC_R: &str = include_str!("../../shaders/round_x8.wgsl");
/// The parts of a several-weight dispatch (`run_many`), included before either GEMV.
const SRC_MANY: &str = include_str!("../../shaders/gemv_many.wgsl");
/// gemv_x8 for 2..=8 x rows (`run_m`), included after gemv_x8.wgsl.
const SRC_X8M: &str = include_str!("../../shaders/gemv_x8m.wgsl");

/// Most x rows one gemv_x8m dispatch takes (MX); more rows go in passes of this many.
pub(crate) const MX_MAX: usize = 8;
/// Largest k whose int8 x fits the backend's `xq_buf` (XQG, and gemv_x8m's MX_MAX rows).
pub(crate) const XQ_MAX_K: usize = 65536;
/// x elements `xq_buf` holds: MX_MAX rows of XQ_MAX_K (768 KiB in all).
const XQ_ELEMS: usize = MX_MAX * XQ_MAX_K;
/// Byte offset of the (d, d·Σq) pairs in `xq_buf` (after the quants, 1 byte per element).
pub(crate) const XQ_D_OFF: u64 = XQ_ELEMS as u64;
/// Size of `xq_buf`: quants, then one vec2<f32> per group of 16.
pub(crate) const XQ_BYTES: u64 = XQ_D_OFF + (XQ_ELEMS as u64 / 16) * 8;

/// gemv_x8's built-in prefetch depth (chunks of weight loads in flight ahead) for `n_c` rows
/// of `d` at `k` (`one`: a single weight, not matmul_many/glu): 2 wherever `x8_wide` takes 16
/// teams of 1 row, and for Q8_0 at k ≤ 8192
/// (with 8 teams of 1 row, see `config`), else 1. On an H200 (BENCHMARKS.md, "(wgemv)", lab
/// run 2; the Q8_0 rule also matches the "kiln-wgpu gemv_x8" entry's run 3 sweep): Q8_0
/// (8, 1) depth 2 vs (8, 2) depth 1 −7 % kernel time at 4096×4096, −4 % at 14336×4096 but
/// +7 % at 4096×14336 (a workgroup of 8 rows rounds all of x for half the rows).
fn x8_depth(d: DType, n_c: u32, k: usize, one: bool) -> u32 {
    if x8_wide(d, n_c, k, one) {
        return 2;
    }
    match d {
        DType::Q8_0 if k <= X8_SMALL_K => 2,
        _ => 1,
    }
}

/// Whether gemv_x8 takes 16 teams of 1 row (512 invocations) at depth 2: a single weight
/// (`one`) of Q8_0 or Q4_K at k > 8192, or of Q4_K at n_c ≤ 8192. On an H200 (BENCHMARKS.md, "(vq4k)", run 5, B2B per
/// call against the previous built-in shape): Q4_K 4096×14336 −5.5 %, 4096×4096 −4.4 %, Q8_0
/// 4096×14336 −5.6 % (a workgroup rounds all of x for 16 rows, as (8, 2) does, but with twice
/// the invocations: half the groups of x per invocation, so half the serial L2 trips of the
/// prologue at k = 14336); at 14336×4096 it was +7 % (Q4_K) / +2 % (Q8_0), so those keep
/// (8, 2) depth 1 / (8, 1) depth 2. Not for matmul_many (q/k/v: 14.4 → 17.0 µs per pass in
/// the Llama-3-8B decode step, run 6) nor matmul_glu (not measured).
fn x8_wide(d: DType, n_c: u32, k: usize, one: bool) -> bool {
    if !one {
        return false;
    }
    match d {
        DType::Q8_0 => k > X8_SMALL_K,
        DType::Q4_K => k > X8_SMALL_K || n_c <= 8192,
        _ => false,
    }
}

/// The k up to which Q8_0's gemv_x8 takes 8 teams of 1 row at depth 2 (`x8_depth`).
const X8_SMALL_K: usize = 8192;

/// Workgroup memory gemv_x8 needs besides its x: the 512-float reduction tree.
const X8_FIXED_BYTES: u64 = 2048;

/// x elements per chunk of the k loop (32 invocations × 32 values).
const CHUNK: usize = 1024;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_c: u32,
    k: u32,
    r0: u32,
    bpr: u32,
    d_base: u32,
    x4: u32,
    o_off: u32,
    chunks: u32,
    /// `run_many` (gemv_many.wgsl): rows, first workgroup, d_base and y offset per part.
    pn: [u32; 4],
    pwg: [u32; 4],
    pd: [u32; 4],
    po: [u32; 4],
    /// gemv_x8m (and quant_x8 for it): x rows, x row stride in groups of 16, y row stride.
    mx: [u32; 4],
}

/// Whether the vec4 kernel handles this weight dtype.
pub(crate) fn supports(d: DType) -> bool {
    matches!(d, DType::BF16 | DType::Q8_0 | DType::Q4_K)
}

/// Int8 x groups of 16 gemv_x8 holds for k (rounded up to 64 groups, so one pipeline serves
/// each 1024 of k), and whether their 24 bytes each fit the device's workgroup memory.
fn x8_groups(be: &WgpuBackend, k: usize) -> Option<u32> {
    let g = u32::try_from(k.div_ceil(16).div_ceil(64) * 64).ok()?;
    let bytes = u64::from(g) * 24 + X8_FIXED_BYTES;
    (bytes <= u64::from(be.limits.max_compute_workgroup_storage_size)).then_some(g)
}

/// How gemv_x8 gets its int8 x.
#[derive(Clone, Copy, Debug, PartialEq)]
enum X8 {
    /// Every workgroup rounds x into workgroup memory (this many groups of 16 held).
    Local(u32),
    /// A pre-pass rounds x once into `xq_buf` (XQG).
    Global,
}

/// Whether this product runs through gemv_x8 and how: Q8_0/Q4_K, the int8 path on (see
/// `set_vgemv_x8`), k a multiple of 16, and x's int8 copy fits `xq_buf` (XQG, the built-in
/// choice or forced by `set_vgemv_xq`) or workgroup memory.
fn x8_ok(be: &WgpuBackend, d: DType, k: usize) -> Option<X8> {
    if !matches!(d, DType::Q8_0 | DType::Q4_K) || !k.is_multiple_of(16) || !be.vgemv_x8() {
        return None;
    }
    let global_fits = k <= XQ_MAX_K;
    match be.vgemv_xq() {
        Some(false) => x8_groups(be, k).map(X8::Local),
        Some(true) if global_fits => Some(X8::Global),
        _ if global_fits && XQ_DEFAULT => Some(X8::Global),
        _ => x8_groups(be, k).map(X8::Local),
    }
}

/// Whether gemv_x8 rounds x in a pre-pass by default: no. On an H200 (BENCHMARKS.md,
/// "(wgemv)") the pre-pass + XQG kernel was 2-22 % slower than the per-workgroup rounding
/// at 4096×4096 and 14336×4096 for Q4_K and Q8_0 and within 1 % at 4096×14336; kept as a
/// switch (`set_vgemv_xq`, `KILN_WGPU_XQ=1`) for adapters where the prologue costs more.
const XQ_DEFAULT: bool = false;

/// Whether gemv_x8's Q4_K (32-weight lanes) decodes its scales/mins in the packed form
/// (`Q4K_PACK`, fewer instructions per byte) by default: yes. On an H200 (BENCHMARKS.md,
/// "(vgemv)", run 1, same process) at the built-in (8, 2) shape and depth: −1.7 % kernel time
/// at 4096×4096, −4.5 % at 14336×4096, −8 % at 4096×14336 (depth 2 both). The select form
/// stays as `set_vgemv_q4k_pack(Some(false))` / `KILN_WGPU_Q4K_PACK=0`.
const Q4K_PACK_DEFAULT: bool = true;

/// gemv_x8's teams per row group (split-k): the override (capped at the teams per
/// workgroup), else 1. On an H200 every split (2, 4, 8; either x) was slower at the three
/// benches shapes except Q8_0 4096×4096 at KS = 2 (−3 %, and +3 % / +9 % at the other two
/// shapes): BENCHMARKS.md, "(wgemv)". `set_vgemv_ksplit`, `KILN_WGPU_KS`.
fn x8_ksplit(be: &WgpuBackend, rw: u32) -> u32 {
    be.vgemv_ksplit().unwrap_or(1).min(rw)
}

/// (teams of 32 per workgroup, rows per team) for `n_c` rows of `d`: the override, else the
/// shape that was best or tied for best on an H200 across n = 4096..127424 (BENCHMARKS.md,
/// "kiln-wgpu gemv_v"): BF16 4 teams of 2 rows (its 4 weight vec4s per row and lane already
/// keep loads in flight), Q8_0 2 × 2, Q4_K 2 × 4; with fewer rows per team while that leaves
/// under 512 workgroups (small n: keep every SM busy). `one`: a single weight (`x8_wide`).
fn config(be: &WgpuBackend, d: DType, n_c: u32, k: usize, x8: bool, one: bool) -> (u32, u32) {
    if let Some(c) = be.vgemv_override() {
        return c;
    }
    if x8 {
        // gemv_x8: 8 teams of 2 rows: on an H200 the best or within 2 % of the best (teams,
        // rows) for Q8_0 and Q4_K at n = 4096..127424, k = 4096 and 14336 (BENCHMARKS.md,
        // "kiln-wgpu gemv_x8", runs 1 and 3); smaller workgroups round x once per fewer rows.
        // Except Q8_0 at k ≤ 8192: 8 teams of 1 row with depth 2 (`x8_depth`), and the
        // shapes of `x8_wide`: 16 teams of 1 row.
        if x8_wide(d, n_c, k, one) {
            return (16, 1);
        }
        if d == DType::Q8_0 && k <= X8_SMALL_K {
            return (8, 1);
        }
        return (8, 2);
    }
    let (rw, mut nr) = match d {
        DType::BF16 => (4, 2),
        DType::Q8_0 => (2, 2),
        _ => (2, 4),
    };
    while nr > 1 && n_c.div_ceil(rw * nr) < 512 {
        nr /= 2;
    }
    (rw, nr)
}

/// The pipeline for `n_c` rows of `d` at `k` (gemv_x8 where `x8`, else gemv_v; MANY for
/// `run_many`) and its workgroup rows and k chunk.
struct Plan {
    pipe: std::sync::Arc<wgpu::ComputePipeline>,
    rows_per_wg: u32,
    chunk: usize,
}

/// How one dispatch takes its weights (gemv_many.wgsl).
#[derive(Clone, Copy, PartialEq)]
enum Parts {
    One,
    Many,
    /// gate and up in every workgroup, act(g)·u written (the activation's ACT code).
    Glu(f64),
}

#[allow(clippy::too_many_arguments)]
fn plan(
    be: &WgpuBackend,
    d: DType,
    k: usize,
    n_c: u32,
    x8: Option<X8>,
    parts: Parts,
    mx: u32,
) -> Result<Plan> {
    if mx > 1 {
        return plan_m(be, d, parts, mx);
    }
    let sg32 = be.subgroups && be.subgroup_min == 32 && be.subgroup_max == 32;
    let one = parts == Parts::One;
    let (rw, nr) = config(be, d, n_c, k, x8.is_some(), one);
    let wide = x8.is_some() && d == DType::Q4_K && be.vgemv_q4k_wide();
    let chunk = if wide { 2 * CHUNK } else { CHUNK };
    let ks = x8_ksplit(be, rw);
    let glu = matches!(parts, Parts::Glu(_));
    let mut spec = match x8 {
        Some(how) => {
            let src: &'static [&'static str] = if glu {
                &[ACT_SRC, SRC_MANY, SRC_R, SRC_X8]
            } else {
                &[SRC_MANY, SRC_R, SRC_X8]
            };
            let s = ShaderSpec::new("gemv_x8", src, "gemv_x8")
                .over(
                    "DEPTH",
                    f64::from(be.vgemv_depth().unwrap_or(x8_depth(d, n_c, k, one))),
                )
                .over("KS", f64::from(ks));
            match how {
                X8::Local(g) => s.sub("XG", g.to_string()),
                X8::Global => s.define("XQG"),
            }
        }
        None => ShaderSpec::new(
            "gemv_v",
            if glu {
                &[ACT_SRC, SRC_MANY, SRC]
            } else {
                &[SRC_MANY, SRC]
            },
            "gemv_v",
        )
        .over("PREFETCH", if be.vgemv_prefetch() { 1.0 } else { 0.0 }),
    };
    spec = spec
        .define(wdefine(d))
        .over("RW", f64::from(rw))
        .over("NR", f64::from(nr))
        .over("WGS", f64::from(32 * rw));
    if sg32 {
        spec = spec.define("SG32");
    }
    match parts {
        Parts::One => {}
        Parts::Many => spec = spec.define("MANY"),
        Parts::Glu(act) => spec = spec.define("MANY").define("GLU").over("ACT", act),
    }
    if wide {
        spec = spec.define("Q4K_WIDE");
    } else if x8.is_some() && d == DType::Q4_K && be.vgemv_q4k_pack().unwrap_or(Q4K_PACK_DEFAULT) {
        spec = spec.define("Q4K_PACK");
        for d in q4k_diag() {
            spec = spec.define(*d);
        }
    }
    let rows_per_wg = match parts {
        // gate rows by half the teams, the same rows of up by the other half
        Parts::Glu(_) => rw / 2 * nr,
        _ if x8.is_some() => rw * nr / ks,
        _ => rw * nr,
    };
    Ok(Plan {
        pipe: be.pipeline(spec)?,
        rows_per_wg,
        chunk,
    })
}

/// Whether 2..=MX_MAX x rows of `d` at `k` may run through gemv_x8m (`run_m`): Q8_0/Q4_K, the
/// int8 path on (`set_vgemv_x8`, `KILN_WGPU_X8`) and not turned off by `KILN_WGPU_X8M=0`, k a
/// multiple of 16 and MX_MAX rows of its int8 copy within `xq_buf` (k ≤ XQ_MAX_K).
pub(crate) fn x8m_ok(be: &WgpuBackend, d: DType, k: usize) -> bool {
    matches!(d, DType::Q8_0 | DType::Q4_K)
        && k.is_multiple_of(16)
        && k <= XQ_MAX_K
        && be.vgemv_x8()
        && x8m_on()
}

/// `KILN_WGPU_X8M=0`: 2..=8-row Q8_0/Q4_K products take the general GEMV (matmul.wgsl, f32
/// dequant, 4 x rows per pass) and matmul_many/glu one dispatch per weight, as before gemv_x8m
/// (comparison).
fn x8m_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("KILN_WGPU_X8M").map_or(true, |v| v != "0"))
}

/// gemv_x8m's (teams of 32 per workgroup, weight rows per team ≤ 4) for `d`: the override
/// (`set_vgemv_x8m_config`, `KILN_WGPU_X8M_CFG=teams,rows`), else Q4_K 4 teams of 2 rows,
/// Q8_0 8 teams of 1 row: on an H200 the best or within 3 % of the best of (8, 1), (4, 1),
/// (4, 2), (8, 2), (2, 4), (4, 4) at m = 2, 4, 8 and the three bench shapes (BENCHMARKS.md,
/// "(vmr)", run 3; e.g. m = 8: Q4_K 14336×4096 51.2 µs vs 61.6 at (4, 4), Q8_0 4096×4096
/// 23.0 µs vs 35.7), except Q4_K 4096×14336 m = 8 ((8, 2) 55.2 vs 55.9 µs).
fn x8m_config(be: &WgpuBackend, d: DType) -> (u32, u32) {
    be.vgemv_x8m_config()
        .unwrap_or(if d == DType::Q8_0 { (8, 1) } else { (4, 2) })
}

/// gemv_x8m.wgsl's generated parts for `mx` x rows and `nr` weight rows per team: the scalar
/// accumulators m{r}_{i} and every statement that touches them, unrolled (no private arrays).
fn x8m_code(mx: u32, nr: u32, sg32: bool) -> Vec<(&'static str, String)> {
    let na = nr * mx;
    let each = |f: &dyn Fn(u32, u32) -> String| -> String {
        (0..nr)
            .flat_map(|r| (0..mx).map(move |i| (r, i)))
            .map(|(r, i)| f(r, i))
            .collect()
    };
    let mut acc = String::new();
    for i in 0..mx {
        acc += &format!("    xrow = {i}u * P.mx.y;\n    load_x(c, l, full);\n");
        for r in 0..nr {
            acc += &format!("    m{r}_{i} += dx(u{r});\n");
        }
    }
    let red = if sg32 {
        each(&|r, i| format!("    m{r}_{i} = subgroupAdd(m{r}_{i});\n"))
    } else {
        each(&|r, i| format!("    m{r}_{i} = team_sum(m{r}_{i}, li, team, l);\n"))
    };
    vec![
        (
            "X8M_DECL",
            each(&|r, i| format!("var<private> m{r}_{i}: f32;\n")),
        ),
        (
            "X8M_DQ",
            (0..nr)
                .map(|r| format!("    let u{r} = dq(w{r}, c, l);\n"))
                .collect(),
        ),
        ("X8M_ACC", acc),
        ("X8M_ZERO", each(&|r, i| format!("    m{r}_{i} = 0.0;\n"))),
        ("X8M_RED", red),
        (
            "X8M_PUT",
            each(&|r, i| format!("        putm(row0 + {r}u, {i}u, m{r}_{i});\n")),
        ),
        (
            "X8M_GLU_SAVE",
            each(&|r, i| {
                format!(
                    "        glu_u[(team - h) * {na}u + {}u] = m{r}_{i};\n",
                    r * mx + i
                )
            }),
        ),
        (
            "X8M_GLU_PUT",
            each(&|r, i| {
                format!(
                    "        putm(row0 + {r}u, {i}u, act(m{r}_{i}) * glu_u[team * {na}u + {}u]);\n",
                    r * mx + i
                )
            }),
        ),
    ]
}

/// gemv_x8m's pipeline for `mx` x rows (x rounded by the quant_x8 pre-pass: XQG). The spec
/// carries generated code (`x8m_code`, ~4.5 KB at mx = 8), whose generation and cache key cost
/// ~25 µs of CPU per call on the development machine: it is built only on a miss of the short
/// tag below, which names everything it depends on (dtype, parts, mx, shape, subgroups).
fn plan_m(be: &WgpuBackend, d: DType, parts: Parts, mx: u32) -> Result<Plan> {
    let sg32 = be.subgroups && be.subgroup_min == 32 && be.subgroup_max == 32;
    let (rw, nr) = x8m_config(be, d);
    let kind = match parts {
        Parts::One => "one".to_string(),
        Parts::Many => "many".to_string(),
        Parts::Glu(act) => format!("glu{act}"),
    };
    let tag = format!("gemv_x8m|{}|{kind}|{mx}|{rw}|{nr}|{sg32}", wdefine(d));
    let pipe = be.pipeline_tagged(&tag, || {
        let src: &'static [&'static str] = if matches!(parts, Parts::Glu(_)) {
            &[ACT_SRC, SRC_MANY, SRC_R, SRC_X8, SRC_X8M]
        } else {
            &[SRC_MANY, SRC_R, SRC_X8, SRC_X8M]
        };
        let mut spec = ShaderSpec::new("gemv_x8m", src, "gemv_x8m")
            .define("XQG")
            .define(wdefine(d))
            .over("RW", f64::from(rw))
            .over("NR", f64::from(nr))
            .over("WGS", f64::from(32 * rw));
        if d == DType::Q4_K {
            spec = spec.define("Q4K_PACK");
        }
        if sg32 {
            spec = spec.define("SG32");
        }
        for (key, code) in x8m_code(mx, nr, sg32) {
            spec = spec.sub(key, code);
        }
        match parts {
            Parts::One => spec,
            Parts::Many => spec.define("MANY"),
            Parts::Glu(act) => spec.define("MANY").define("GLU").over("ACT", act),
        }
    })?;
    let rows_per_wg = match parts {
        Parts::Glu(_) => rw / 2 * nr,
        _ => rw * nr,
    };
    Ok(Plan {
        pipe,
        rows_per_wg,
        chunk: CHUNK,
    })
}

/// `xq_buf`'s quants (at 0) or (d, d·Σq) pairs (at XQ_D_OFF) as binding `binding`.
fn xq_at(be: &WgpuBackend, binding: u32, offset: u64, size: u64) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &be.xq_buf,
            offset,
            size: wgpu::BufferSize::new(size),
        }),
    }
}

#[allow(clippy::too_many_arguments)]
/// Record `plan`'s GEMV with `g_in` bound (weights, output) plus x: bound at 2, or (XQG) the
/// quant_x8 pre-pass in the same pass and xq_buf at 5 and 6.
fn record<'a>(
    be: &'a WgpuBackend,
    plan: &Plan,
    x8: Option<X8>,
    x: &'a Bound<'a>,
    k: usize,
    mut g_in: Vec<wgpu::BindGroupEntry<'a>>,
    p: &Params,
    grid: (u32, u32),
) -> Result<()> {
    // x rows rounded by the pre-pass: gemv_x8m's MX (P.mx[0]), else one
    let ng = (k / 16) as u64 * u64::from(p.mx[0].max(1));
    if x8 == Some(X8::Global) {
        // quant_x8 then gemv_x8 in one pass; the quants and pairs of xq_buf
        let qpipe = be.pipeline(ShaderSpec::new("quant_x8", &[SRC_R, SRC_Q], "quant_x8"))?;
        let qg = be.grid(ng.div_ceil(64) as u32);
        let q_in = [
            x.entry(1),
            xq_at(be, 2, 0, ng * 16),
            xq_at(be, 3, XQ_D_OFF, ng * 8),
        ];
        g_in.extend([xq_at(be, 5, 0, ng * 16), xq_at(be, 6, XQ_D_OFF, ng * 8)]);
        be.dispatch2(
            bytes_of(p),
            (&qpipe, &q_in, (qg.0, qg.1, 1)),
            (&plan.pipe, &g_in, (grid.0, grid.1, 1)),
        )
    } else {
        g_in.push(x.entry(2));
        be.dispatch(&plan.pipe, bytes_of(p), &g_in, (grid.0, grid.1, 1))
    }
}

/// y[1, n] = x[1, k]·Wᵀ through gemv_v. The caller checked shapes and that `supports`.
pub(crate) fn run(be: &WgpuBackend, x: View<'_>, ww: &WgpuWeight, out: ViewMut<'_>) -> Result<()> {
    let op = OpKind::Matmul;
    let bx = be.bind_view(op, &x, "x")?;
    let bo = be.bind_out(op, &out, "out")?;
    let x_off = bx.elem_off(4);
    if !x_off.is_multiple_of(4) {
        return Err(Error::shape(
            op,
            "gemv_v needs x at a 16-byte offset".to_string(),
        ));
    }
    let x8 = x8_ok(be, ww.dtype, ww.k);
    for c in &ww.chunks {
        let n_c = (c.r1 - c.r0) as u32;
        let plan = plan(be, ww.dtype, ww.k, n_c, x8, Parts::One, 1)?;
        // W4 covers the 16-byte-aligned rows (the whole buffer rounded down to 16 bytes);
        // Q8_0 also binds the whole buffer as words for its d array.
        let size = c.buf.size();
        let bw4 = be.bind_range(&c.buf, 0, size / 16 * 16, "weight chunk (vec4)")?;
        let bw = be.bind_range(&c.buf, 0, size, "weight chunk")?;
        let p = Params {
            n_c,
            k: ww.k as u32,
            r0: c.r0 as u32,
            bpr: ww.bpr() as u32,
            d_base: c.d_base,
            x4: x_off / 4,
            o_off: bo.elem_off(4),
            chunks: ww.k.div_ceil(plan.chunk) as u32,
            ..Params::default()
        };
        let mut g_in = vec![bw4.entry(1), bo.entry(3)];
        if ww.dtype == DType::Q8_0 {
            g_in.push(bw.entry(4));
        }
        let grid = be.grid(n_c.div_ceil(plan.rows_per_wg));
        record(be, &plan, x8, &bx, ww.k, g_in, &p, grid)?;
    }
    Ok(())
}

/// y[m, n] = x[m, k]·Wᵀ for m ≥ 2 x rows through gemv_x8m, in passes of ≤ MX_MAX rows (each a
/// quant_x8 pre-pass of its rows into `xq_buf` and one gemv_x8m dispatch per weight chunk).
/// `Ok(false)` (nothing recorded) where it cannot run (`x8m_ok`, x off a 16-byte offset); the
/// caller then takes the general GEMV. Shapes are the caller's (checked).
pub(crate) fn run_m(
    be: &WgpuBackend,
    x: View<'_>,
    ww: &WgpuWeight,
    out: ViewMut<'_>,
    m: usize,
) -> Result<bool> {
    let op = OpKind::Matmul;
    let (d, k) = (ww.dtype, ww.k);
    if !x8m_ok(be, d, k) {
        return Ok(false);
    }
    let bx = be.bind_view(op, &x, "x")?;
    let x_off = bx.elem_off(4);
    if !x_off.is_multiple_of(4) {
        return Ok(false);
    }
    let bo = be.bind_out(op, &out, "out")?;
    for c in &ww.chunks {
        let n_c = (c.r1 - c.r0) as u32;
        let size = c.buf.size();
        let bw4 = be.bind_range(&c.buf, 0, size / 16 * 16, "weight chunk (vec4)")?;
        let bw = be.bind_range(&c.buf, 0, size, "weight chunk")?;
        let mut i0 = 0;
        while i0 < m {
            let mp = (m - i0).min(MX_MAX);
            let plan = plan(be, d, k, n_c, Some(X8::Global), Parts::One, mp as u32)?;
            let p = Params {
                n_c,
                k: k as u32,
                r0: c.r0 as u32,
                bpr: ww.bpr() as u32,
                d_base: c.d_base,
                x4: x_off / 4 + (i0 * k / 4) as u32,
                o_off: bo.elem_off(4) + (i0 * ww.rows) as u32,
                chunks: k.div_ceil(plan.chunk) as u32,
                mx: [mp as u32, (k / 16) as u32, ww.rows as u32, 0],
                ..Params::default()
            };
            let mut g_in = vec![bw4.entry(1), bo.entry(3)];
            if d == DType::Q8_0 {
                g_in.push(bw.entry(4));
            }
            let grid = be.grid(n_c.div_ceil(plan.rows_per_wg));
            record(be, &plan, Some(X8::Global), &bx, k, g_in, &p, grid)?;
            i0 += mp;
        }
    }
    Ok(true)
}

/// out_i = x[m, k]·W_iᵀ for 2 or 3 weights of one dtype and k in ONE dispatch (gemv_many.wgsl):
/// a layer's q/k/v or gate/up; m = 1 through gemv_v/gemv_x8, 2 ≤ m ≤ MX_MAX through gemv_x8m.
/// `Ok(false)` (nothing recorded) where they do not qualify: a weight in several chunks, more
/// than 3 parts, mixed dtypes or k, x off a 16-byte offset, m > 1 where gemv_x8m cannot run,
/// or `KILN_WGPU_MANY=0`; the caller then runs one matmul each. Shapes are the caller's.
pub(crate) fn run_many(
    be: &WgpuBackend,
    x: View<'_>,
    parts: &[(&WgpuWeight, ViewMut<'_>)],
    m: usize,
) -> Result<bool> {
    let op = OpKind::Matmul;
    let Some((w0, _)) = parts.first() else {
        return Ok(false);
    };
    let (d, k) = (w0.dtype, w0.k);
    let one_chunk = |w: &WgpuWeight| w.chunks.len() == 1 && w.chunks[0].r0 == 0;
    if !many_on()
        || !(1..=MX_MAX).contains(&m)
        || (m > 1 && !x8m_ok(be, d, k))
        || !(2..=3).contains(&parts.len())
        || !parts
            .iter()
            .all(|(w, _)| w.dtype == d && w.k == k && one_chunk(w) && w.rows > 0)
    {
        return Ok(false);
    }
    let bx = be.bind_view(op, &x, "x")?;
    let x_off = bx.elem_off(4);
    if !x_off.is_multiple_of(4) {
        return Ok(false);
    }
    let x8 = if m > 1 {
        Some(X8::Global)
    } else {
        x8_ok(be, d, k)
    };
    let n_all: usize = parts.iter().map(|(w, _)| w.rows).sum();
    let plan = plan(be, d, k, n_all as u32, x8, Parts::Many, m as u32)?;
    let mut p = Params {
        k: k as u32,
        bpr: w0.bpr() as u32,
        x4: x_off / 4,
        chunks: k.div_ceil(plan.chunk) as u32,
        pwg: [0, u32::MAX, u32::MAX, u32::MAX],
        mx: [m as u32, (k / 16) as u32, 0, 0],
        ..Params::default()
    };
    let (mut w4s, mut ws, mut outs) = (Vec::new(), Vec::new(), Vec::new());
    let mut wg = 0u32;
    for (i, (w, out)) in parts.iter().enumerate() {
        let c = &w.chunks[0];
        let size = c.buf.size();
        w4s.push(be.bind_range(&c.buf, 0, size / 16 * 16, "weight chunk (vec4)")?);
        ws.push(be.bind_range(&c.buf, 0, size, "weight chunk")?);
        let bo = be.bind_out(op, out, "out")?;
        p.pn[i] = w.rows as u32;
        p.pwg[i] = wg;
        p.pd[i] = c.d_base;
        p.po[i] = bo.elem_off(4);
        outs.push(bo);
        wg += (w.rows as u32).div_ceil(plan.rows_per_wg);
    }
    // Two parts: the third part's bindings repeat the second's (never read: pwg.z is MAX).
    let last = parts.len() - 1;
    let at = |i: usize| i.min(last);
    let mut g_in = vec![
        w4s[0].entry(1),
        outs[0].entry(3),
        w4s[at(1)].entry(7),
        w4s[at(2)].entry(8),
        outs[at(1)].entry(11),
        outs[at(2)].entry(12),
    ];
    if d == DType::Q8_0 {
        g_in.extend([ws[0].entry(4), ws[at(1)].entry(9), ws[at(2)].entry(10)]);
    }
    let grid = be.grid(wg);
    record(be, &plan, x8, &bx, k, g_in, &p, grid)?;
    Ok(true)
}

/// `KILN_WGPU_Q4K_DIAG=loads[,nox][,noh]`: the Q4_K m = 1 kernel (gemv_x8 packed) does its
/// loads but no decode (`loads`: WRONG results; the bench's question "is Q4_K bound
/// by its loads or its arithmetic" on an adapter without a profiler); `nox` also skips the
/// per-workgroup rounding of x and its barrier, `noh` (gemv_x8) the block header's load.
fn q4k_diag() -> &'static [&'static str] {
    static ON: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    ON.get_or_init(|| {
        let v = std::env::var("KILN_WGPU_Q4K_DIAG").unwrap_or_default();
        let mut d = Vec::new();
        for (word, define) in [
            ("loads", "DIAG_LOADS"),
            ("nox", "DIAG_NOX"),
            ("noh", "DIAG_NOH"),
        ] {
            if v.split(',').any(|w| w == word) {
                d.push(define);
            }
        }
        d
    })
}

/// `KILN_WGPU_MANY=0` runs matmul_many as one matmul per weight (comparison).
fn many_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("KILN_WGPU_MANY").map_or(true, |v| v != "0"))
}

/// out = act(x·Gᵀ) ⊙ (x·Uᵀ) at m ≤ MX_MAX rows in ONE dispatch (gemv_many.wgsl, GLU; m ≥ 2
/// through gemv_x8m): gate and up rows in the same workgroup, the GLU in the epilogue; the
/// gate/up scratch of matmul_glu stays unwritten. `Ok(false)` (nothing recorded) where it does
/// not apply (as `run_many`, plus a k split inside the workgroup, an odd team count or, m ≥ 2,
/// more than 128 up sums per workgroup); the caller then runs matmul_many + glu.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_glu(
    be: &WgpuBackend,
    x: View<'_>,
    gate: &WgpuWeight,
    up: &WgpuWeight,
    act: f64,
    out: ViewMut<'_>,
    m: usize,
) -> Result<bool> {
    let op = OpKind::Matmul;
    let (d, k) = (gate.dtype, gate.k);
    let one_chunk = |w: &WgpuWeight| w.chunks.len() == 1 && w.chunks[0].r0 == 0;
    if !many_on()
        || up.dtype != d
        || up.k != k
        || up.rows != gate.rows
        || gate.rows == 0
        || !one_chunk(gate)
        || !one_chunk(up)
        || !(1..=MX_MAX).contains(&m)
        || (m > 1 && !x8m_ok(be, d, k))
    {
        return Ok(false);
    }
    let x8 = if m > 1 {
        Some(X8::Global)
    } else {
        x8_ok(be, d, k)
    };
    if m > 1 {
        let (rw, nr) = x8m_config(be, d);
        if rw % 2 != 0 || rw / 2 * nr * m as u32 > 128 {
            return Ok(false);
        }
    } else {
        let (rw, _) = config(be, d, gate.rows as u32, k, x8.is_some(), false);
        if rw % 2 != 0 || rw / 2 * 8 > 128 || (x8.is_some() && x8_ksplit(be, rw) != 1) {
            return Ok(false);
        }
    }
    let bx = be.bind_view(op, &x, "x")?;
    let x_off = bx.elem_off(4);
    if !x_off.is_multiple_of(4) {
        return Ok(false);
    }
    let plan = plan(be, d, k, gate.rows as u32, x8, Parts::Glu(act), m as u32)?;
    let bo = be.bind_out(op, &out, "out")?;
    let (cg, cu) = (&gate.chunks[0], &up.chunks[0]);
    let (sg, su) = (cg.buf.size(), cu.buf.size());
    let g4 = be.bind_range(&cg.buf, 0, sg / 16 * 16, "gate (vec4)")?;
    let u4 = be.bind_range(&cu.buf, 0, su / 16 * 16, "up (vec4)")?;
    let gw = be.bind_range(&cg.buf, 0, sg, "gate")?;
    let uw = be.bind_range(&cu.buf, 0, su, "up")?;
    let n = gate.rows as u32;
    let p = Params {
        k: k as u32,
        bpr: gate.bpr() as u32,
        x4: x_off / 4,
        chunks: k.div_ceil(plan.chunk) as u32,
        pn: [n, n, 0, 0],
        pwg: [0, u32::MAX, u32::MAX, u32::MAX],
        pd: [cg.d_base, cu.d_base, 0, 0],
        po: [bo.elem_off(4), 0, 0, 0],
        mx: [m as u32, (k / 16) as u32, 0, 0],
        ..Params::default()
    };
    // Bindings of parts 1 and 2 as gemv_many.wgsl declares them; the outputs of parts 1 and 2
    // are never written in GLU mode (out bound again).
    let mut g_in = vec![
        g4.entry(1),
        bo.entry(3),
        u4.entry(7),
        u4.entry(8),
        bo.entry(11),
        bo.entry(12),
    ];
    if d == DType::Q8_0 {
        g_in.extend([gw.entry(4), uw.entry(9), uw.entry(10)]);
    }
    let grid = be.grid(n.div_ceil(plan.rows_per_wg));
    record(be, &plan, x8, &bx, k, g_in, &p, grid)?;
    Ok(true)
}
