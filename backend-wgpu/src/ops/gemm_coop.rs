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

/// The shader spec for an x-row tile of `tm` rows.
pub(crate) fn spec(
    dtype: kiln_core::DType,
    tm: usize,
    x_vec4: bool,
    stage_v4: bool,
) -> ShaderSpec<'static> {
    // subgroups along n: 8 / (tm / 32) (each subgroup owns 32 x rows)
    let sgn = 8 / (tm / 32);
    let mut s = ShaderSpec::new("gemm_coop", &[DEQUANT, SRC], "gemm_coop")
        .define("COOP")
        .define(wdefine(dtype))
        .sub("TM", tm.to_string())
        .sub("SGN", sgn.to_string())
        .sub("XS", (tm * 40).to_string())
        .sub("XS4", (tm * 10).to_string());
    s = match tm {
        32 => s.define("TM32").define("NB1"),
        128 => s.define("TM128").define("NB4"),
        _ => s,
    };
    if x_vec4 {
        s = s.define("X_VEC4");
    }
    if stage_v4 {
        s = s.define("STAGE_V4");
    }
    s
}

/// The tiles as vec4<f16> arrays (default) or f16 arrays (`KILN_WGPU_COOP_STAGE=f16`,
/// comparison).
fn stage_v4() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("KILN_WGPU_COOP_STAGE").map_or(true, |v| v != "f16"))
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
        let sp = spec(ww.dtype, tm, x_off.is_multiple_of(4), stage_v4());
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
                for split in [false, true] {
                    for (xv4, sv4) in [(false, false), (true, false), (false, true), (true, true)] {
                        let mut s = spec(d, tm, xv4, sv4);
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
                        let module = naga::front::wgsl::parse_str(&text)
                            .unwrap_or_else(|e| panic!("{d} tm {tm}: {}", e.emit_to_string(&text)));
                        let info = naga::valid::Validator::new(
                            naga::valid::ValidationFlags::all(),
                            naga::valid::Capabilities::all(),
                        )
                        .validate(&module)
                        .unwrap_or_else(|e| panic!("{d} tm {tm}: {e:?}"));
                        let spv = naga::back::spv::write_vec(
                            &module,
                            &info,
                            &naga::back::spv::Options::default(),
                            None,
                        )
                        .unwrap_or_else(|e| panic!("{d} tm {tm}: {e:?}"));
                        assert!(spv.len() > 100);
                    }
                }
            }
        }
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
