//! The many-row matmul on cooperative matrices (tensor cores), `shaders/gemm_coop.wgsl`
//! (+ `dequant.wgsl`): TM × 128 output tiles per 256 invocations (8 subgroups of 32), weights
//! dequantized and x rounded to f16 in workgroup memory, 16×16×16 f16·f16→f32 multiply-adds;
//! the k split and `gemm_sum` of `ops/gemm.rs`. Used for the GEMM path where the adapter has
//! such a configuration (`WgpuBackend::coop_matrix`) unless `KILN_WGPU_GEMM=f32` /
//! `set_gemm_coop(false)` asks for `gemm.wgsl`.

use kiln_core::{OpKind, Result, View, ViewMut};

use crate::device::WgpuBackend;
use crate::ops::bytes_of;
use crate::ops::gemm::{Params, TILE_N, split_then_sum, splits_tm};
use crate::ops::matmul::{DEQUANT, wdefine};
use crate::pipeline_cache::ShaderSpec;
use crate::weight::WgpuWeight;

pub(crate) const SRC: &str = include_str!("../../shaders/gemm_coop.wgsl");

/// x rows per tile for an m-row product: 32 (m ≤ 32), 128 (m ≥ 1024: prefill), else 64.
pub(crate) fn tile_m(m: usize) -> usize {
    if m <= 32 {
        32
    } else if m >= 1024 {
        128
    } else {
        64
    }
}

/// k splits of this kernel for an m × n_c × k product (the rule of `gemm::splits` on this
/// kernel's tiles).
pub(crate) fn splits(m: usize, n_c: usize, k: usize, forced: Option<u32>) -> usize {
    splits_tm(m, tile_m(m), n_c, k, forced)
}

/// Workgroup memory of one specialisation: the f32 staging tiles (one 16 × 16 per subgroup of
/// the `nt` invocations) and the x and weight tiles of a stage of `g` groups ((tm + 128) rows ×
/// (32·g + 8) halves).
pub(crate) fn smem_bytes(tm: usize, g: usize, nt: usize) -> usize {
    nt / 32 * 256 * 4 + (tm + 128) * (32 * g + 8) * 2
}

/// Invocations per workgroup for an x-row tile of `tm` rows: 512 (16 subgroups, quarter-group
/// load units; a comparison, 30–65 % slower on the H200 at m = 64/128) where
/// `KILN_WGPU_COOP_WG=512` asks, tm ≥ 64 and the device allows it; else 256.
pub(crate) fn invocations(tm: usize, max_invocations: u32) -> usize {
    static WG: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let want = *WG.get_or_init(|| match std::env::var("KILN_WGPU_COOP_WG").as_deref() {
        Ok("512") => 512,
        _ => 256,
    });
    if want == 512 && tm >= 64 && max_invocations >= 512 {
        512
    } else {
        256
    }
}

/// 32-element k groups per stage for an x-row tile of `tm` rows and `nt` invocations:
/// `KILN_WGPU_COOP_G` (1..4, comparisons) or the default 1, lowered until the stage fits
/// `smem` bytes of workgroup memory. (Deeper stages were slower on the H200 at every shape
/// measured, BENCHMARKS.md "(vcoop)".)
pub(crate) fn stage_groups(tm: usize, nt: usize, smem: usize) -> usize {
    static FORCED: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let forced = *FORCED.get_or_init(|| {
        std::env::var("KILN_WGPU_COOP_G")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    fit_groups(forced.unwrap_or(1), tm, nt, smem)
}

/// `want` groups per stage (clamped to 1..4), lowered until the stage fits `smem` bytes.
fn fit_groups(want: usize, tm: usize, nt: usize, smem: usize) -> usize {
    let mut g = want.clamp(1, 4);
    while g > 1 && smem_bytes(tm, g, nt) > smem {
        g -= 1;
    }
    g
}

/// vec4s per weight load unit: 2 (a quarter group per invocation and unit, two units per
/// stage group; the default: 2–21 % faster than 4 on BF16/Q8_0 at m = 128, 0–2 % on Q4_K) or 4
/// (half a group, `KILN_WGPU_COOP_S=4`, comparison).
pub(crate) fn unit_vec4s() -> usize {
    static S: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *S.get_or_init(|| match std::env::var("KILN_WGPU_COOP_S").as_deref() {
        Ok("4") => 4,
        _ => 2,
    })
}

/// x staged by the older mapping (each invocation XV adjacent vec4s of one row;
/// `KILN_WGPU_COOP_XMAP=rows`, comparison) instead of single vec4s along a row.
fn x_rows() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("KILN_WGPU_COOP_XMAP").is_ok_and(|v| v == "rows"))
}

/// The next stage's loads after the stage's second barrier, without a branch, in the block of
/// the multiplies (default; the shader's LATE note): on the H200 3–9 % faster than inside a
/// branch before that barrier on Q4_K at m = 64/128, 6–13 % on BF16 at m = 128.
/// `KILN_WGPU_COOP_LATE=0` keeps the branch (comparison).
fn late_loads() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("KILN_WGPU_COOP_LATE").map_or(true, |v| v != "0"))
}

/// Diagnostic switches (`KILN_WGPU_COOP_DIAG`, a comma list of no_mma, no_dq, no_x): parts of
/// the kernel left out to find its bound (benchmarks only: the results are wrong).
fn diag() -> &'static [&'static str] {
    static ON: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    ON.get_or_init(|| {
        let v = std::env::var("KILN_WGPU_COOP_DIAG").unwrap_or_default();
        ["NO_MMA", "NO_DQ", "NO_X"]
            .into_iter()
            .filter(|d| v.split(',').any(|x| x.trim().eq_ignore_ascii_case(d)))
            .collect()
    })
}

/// The shader spec for an x-row tile of `tm` rows, `nt` invocations (`invocations`; 512 needs
/// `su` = 2), stages of `g` groups and weight load units of `su` vec4s (`unit_vec4s`); `diag`
/// as `diag()`.
pub(crate) fn spec(
    dtype: kiln_core::DType,
    tm: usize,
    nt: usize,
    g: usize,
    su: usize,
    x_vec4: bool,
    diag: &[&str],
) -> ShaderSpec<'static> {
    let su = if nt == 512 { 2 } else { su };
    // subgroups along n: (nt / 32) / (tm / 32) (each subgroup owns 32 x rows); B matrices
    // per subgroup 8 / sgn; x vec4s per invocation per group tm·8 / nt
    let sgn = (nt / 32) / (tm / 32);
    let nb = 8 / sgn;
    let xv = tm * 8 / nt;
    // row pitch of the tiles in vec4<f16>: (32·g + 8) halves
    let p4 = 8 * g + 2;
    let mut s = ShaderSpec::new("gemm_coop", &[DEQUANT, SRC], "gemm_coop")
        .define("COOP")
        .define(wdefine(dtype))
        .sub("TM", tm.to_string())
        .sub("SGN", sgn.to_string())
        .sub("G", g.to_string())
        .sub("S", su.to_string())
        .sub("NT", nt.to_string())
        .sub("CS", (nt / 32 * 256).to_string())
        .sub("XS4", (tm * p4).to_string())
        .sub("WS4", (128 * p4).to_string());
    match nb {
        1 => s = s.define("NB1"),
        4 => s = s.define("NB4"),
        _ => {}
    }
    if xv >= 2 {
        s = s.define("XV2");
    }
    if xv >= 4 {
        s = s.define("XV4");
    }
    if su == 2 && nt == 256 {
        s = s.define("U2");
    }
    for (j, d) in ["G2", "G3", "G4"].into_iter().enumerate() {
        if g >= j + 2 {
            s = s.define(d);
        }
    }
    if su == 2 {
        s = s.define("S2");
    }
    if x_vec4 {
        s = s.define("X_VEC4");
    }
    for d in diag {
        s = s.define(*d);
    }
    s
}

/// Run the coop GEMM for x [m, k] · chunked W [n, k]ᵀ → out [m, n].
pub(crate) fn run(
    be: &WgpuBackend,
    x: View<'_>,
    ww: &WgpuWeight,
    out: ViewMut<'_>,
    m: usize,
) -> Result<()> {
    let op = OpKind::Matmul;
    let bx = be.bind_view(op, &x, "x")?;
    let bo = be.bind_out(op, &out, "out")?;
    let x_off = bx.elem_off(4);
    let forced = be.gemm_splits_forced();
    let tm = tile_m(m);
    let tiles_m = m.div_ceil(tm);
    for c in &ww.chunks {
        let n_c = c.r1 - c.r0;
        let s = splits(m, n_c, ww.k, forced);
        let p = Params::chunk(
            be,
            "matmul (coop)",
            m,
            tiles_m,
            ww,
            c,
            (x_off, bo.elem_off(4)),
            s,
        )?;
        let nt = invocations(tm, be.limits.max_compute_invocations_per_workgroup);
        let g = stage_groups(
            tm,
            nt,
            be.limits.max_compute_workgroup_storage_size as usize,
        );
        let mut sp = spec(
            ww.dtype,
            tm,
            nt,
            g,
            unit_vec4s(),
            x_off.is_multiple_of(4),
            diag(),
        );
        if x_rows() {
            sp = sp.define("XROWS");
        }
        if late_loads() {
            sp = sp.define("LATE");
        }
        let bw = be.bind_range(&c.buf, 0, c.buf.size(), "weight chunk")?;
        let (gx, gy) = be.grid(n_c.div_ceil(TILE_N) as u32);
        let z = (tiles_m * s) as u32;
        if s == 1 {
            let pipe = be.pipeline(sp)?;
            be.dispatch(
                &pipe,
                bytes_of(&p),
                &[bw.entry(1), bx.entry(2), bo.entry(3)],
                (gx, gy, z),
            )?;
            continue;
        }
        let part = be.gemm_scratch(s * m * n_c * 4)?;
        let bp = be.bind_range(&part, 0, (s * m * n_c * 4) as u64, "gemm k-split scratch")?;
        let pipe = be.pipeline(sp.define("SPLIT"))?;
        let split = [bw.entry(1), bx.entry(2), bp.entry(4)];
        split_then_sum(be, &p, (&pipe, &split, (gx, gy, z)), &bo, &bp)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline_cache::{COMMON, render};
    use kiln_core::DType;

    /// (groups per stage, split, x vec4, diagnostics) for every stage depth that fits 48 KiB.
    /// (invocations, groups per stage, unit vec4s, split, x vec4, diagnostics)
    type Variant = (usize, usize, usize, bool, bool, &'static [&'static str]);
    fn variants(tm: usize) -> Vec<Variant> {
        let mut v = Vec::new();
        for (nt, sus) in [(256, &[4, 2][..]), (512, &[2][..])] {
            if nt == 512 && tm < 64 {
                continue;
            }
            for g in 1..=4 {
                if smem_bytes(tm, g, nt) > 48 * 1024 {
                    continue;
                }
                for &su in sus {
                    for split in [false, true] {
                        for xv4 in [false, true] {
                            v.push((nt, g, su, split, xv4, &[][..]));
                        }
                    }
                }
            }
        }
        v.push((256, 1, 4, true, true, &["NO_MMA", "NO_DQ", "NO_X"][..]));
        v.push((256, 2, 2, true, true, &["XROWS"][..]));
        v.push((256, 1, 2, false, false, &["XROWS"][..]));
        v.push((256, 1, 2, true, true, &["LATE"][..]));
        v.push((256, 2, 4, false, true, &["LATE", "XROWS"][..]));
        if tm >= 64 {
            v.push((512, 1, 2, true, true, &["LATE"][..]));
        }
        v.push((256, 2, 2, false, false, &["NO_DQ"][..]));
        v.push((256, 3, 4, true, true, &["NO_X"][..]));
        v
    }

    /// Every specialisation parses, validates with the cooperative-matrix capability and
    /// becomes SPIR-V (CI has no adapter with cooperative matrices, so this is the only
    /// check of the shader text there).
    #[test]
    fn coop_shader_validates_and_emits_spirv() {
        for d in [
            DType::Q4_K,
            DType::Q8_0,
            DType::Q6_K,
            DType::BF16,
            DType::F16,
            DType::F32,
        ] {
            for tm in [32, 64, 128] {
                for (nt, g, su, split, xv4, dg) in variants(tm) {
                    {
                        let mut s = spec(d, tm, nt, g, su, xv4, dg);
                        if split {
                            s = s.define("SPLIT");
                        }
                        let mut defines = s.defines.clone();
                        defines.extend(["F16".to_string(), "SUBGROUPS".to_string()]);
                        let mut full = "enable f16;\nenable wgpu_cooperative_matrix;\n".to_string();
                        full.push_str(COMMON);
                        for src in s.sources {
                            full.push_str(src);
                            full.push('\n');
                        }
                        let text = render(&full, &defines, &s.subs).unwrap();
                        let module = naga::front::wgsl::parse_str(&text).unwrap_or_else(|e| {
                            panic!(
                                "{d} tm {tm} nt {nt} g {g} s {su}: {}",
                                e.emit_to_string(&text)
                            )
                        });
                        let info = naga::valid::Validator::new(
                            naga::valid::ValidationFlags::all(),
                            naga::valid::Capabilities::all(),
                        )
                        .validate(&module)
                        .unwrap_or_else(|e| panic!("{d} tm {tm} nt {nt} g {g} s {su}: {e:?}"));
                        let spv = naga::back::spv::write_vec(
                            &module,
                            &info,
                            &naga::back::spv::Options::default(),
                            None,
                        )
                        .unwrap_or_else(|e| panic!("{d} tm {tm} nt {nt} g {g} s {su}: {e:?}"));
                        assert!(spv.len() > 100);
                    }
                }
            }
        }
    }

    #[test]
    fn coop_stage_depth_fits() {
        // H200 (48 KiB): up to 3 groups at TM 32/64, 2 at TM 128; lavapipe-sized 32 KiB: fewer
        assert_eq!(fit_groups(3, 32, 256, 48 * 1024), 3);
        assert_eq!(fit_groups(4, 64, 256, 48 * 1024), 3);
        assert_eq!(fit_groups(3, 128, 256, 48 * 1024), 2);
        assert_eq!(fit_groups(3, 64, 256, 32 * 1024), 1);
        assert_eq!(fit_groups(2, 64, 512, 48 * 1024), 2);
        assert_eq!(smem_bytes(64, 3, 256), 48128);
        assert!(smem_bytes(128, 3, 256) > 48 * 1024);
        assert_eq!(invocations(32, 1024), 256);
    }

    #[test]
    fn coop_tiles_and_splits() {
        assert_eq!(tile_m(9), 32);
        assert_eq!(tile_m(64), 64);
        assert_eq!(tile_m(512), 64);
        assert_eq!(tile_m(2048), 128);
        // m = 64, n = 4096: 32 tiles → 8 splits (as gemm.wgsl)
        assert_eq!(splits(64, 4096, 4096, None), 8);
        // prefill: 16 × 32 tiles, no split
        assert_eq!(splits(2048, 4096, 4096, None), 1);
    }
}
