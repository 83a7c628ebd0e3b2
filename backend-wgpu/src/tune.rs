//! The measured GEMV/GEMM crossover. For each (adapter, weight dtype, n, k) `tune` times both
//! kernels over a ladder of x-row counts and records the largest m at which the GEMV kernel
//! is still faster, in the device's `kiln_core::tune::TuneCache` file. `matmul` reads it.
//!
//! Shapes never tuned fall back to GEMV for m ≤ `UNTUNED_GEMV_ROWS` (the GEMV kernel's x-row
//! tile times two) and say so once in the log; `KILN_WGPU_AUTOTUNE=1` tunes them on first use
//! instead.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use kiln_core::tune::{TuneCache, device_key};
use kiln_core::{DType, DeviceInfo, Error, HostTensor, Result, Shape};

use crate::device::WgpuBackend;
use crate::ops::gemv_v::x8m_ok;
use crate::ops::matmul::{MatmulPath, matmul_with};

const UNTUNED_GEMV_ROWS: usize = 8;
/// x-row counts the tuner tries.
const LADDER: [usize; 12] = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128];

/// GEMV shapes the tuner tries: (lanes per 32-element group `SUBL`, rows per lane `NR`).
const GEMV_CONFIGS: [(u32, u32); 8] = [
    (1, 1),
    (2, 1),
    (4, 1),
    (8, 1),
    (1, 2),
    (2, 2),
    (4, 2),
    (2, 4),
];

pub(crate) struct TuneState {
    cache: TuneCache,
    /// dtype name → GEMV (lanes per group, rows per lane) (measured), and an override.
    lanes: HashMap<String, (u32, u32)>,
    lanes_override: Option<(u32, u32)>,
    /// m = 1 vec4 GEMV (gemv_v): (teams per workgroup, rows per team) forced, or (0, 0) = off.
    vgemv_override: Option<(u32, u32)>,
    /// gemv_v without the next-chunk prefetch (benchmarks).
    vgemv_no_prefetch: bool,
    /// Decode batches (one query per sequence) and prefill batches through
    /// attention_dec.wgsl; false (`KILN_WGPU_ATTN=0`, or `=decode` for prefill alone;
    /// `set_attn_decode` / `set_attn_prefill`) keeps them on attention.wgsl's `attn`.
    pub(crate) attn_decode: bool,
    pub(crate) attn_prefill: bool,
    /// Decode batches through attention_keys.wgsl where it applies (default; false:
    /// `KILN_WGPU_ATTN=tiles` or `set_attn_keys(false)` keeps them on attention_dec.wgsl).
    pub(crate) attn_keys: bool,
    /// Q8_0/Q4_K at m = 1 through the float-x gemv_v instead of the int8-x gemv_x8.
    vgemv_no_x8: bool,
    /// gemv_x8's chunks of weight loads in flight (1 or 2), forced; None = built-in.
    vgemv_depth: Option<u32>,
    /// gemv_x8 Q4_K with 64 weights per lane and row per chunk (two qs vec4s, one header
    /// decode) instead of 32.
    vgemv_q4k_wide: bool,
    /// gemv_x8 with x rounded once per call by a pre-pass (XQG), forced on/off; None = built-in.
    vgemv_xq: Option<bool>,
    /// gemv_x8's teams per row group (split-k inside the workgroup), forced; None = built-in.
    vgemv_ksplit: Option<u32>,
    /// gemv_x8 Q4_K's packed scale/min decode (Q4K_PACK), forced on/off; None = built-in.
    vgemv_q4k_pack: Option<bool>,
    /// gemv_x8m's (teams, rows per team), forced; None = built-in (`ops/gemv_v.rs`).
    vgemv_x8m_config: Option<(u32, u32)>,
    /// k splits of the GEMM forced (benchmarks, tests); None = `ops/gemm.rs`'s rule.
    gemm_splits: Option<u32>,
    /// The GEMM path runs matmul.wgsl's older 64×64 `gemm` (comparison).
    gemm_legacy: bool,
    /// gemm.wgsl reads the next k's tile values before the current k's FMAs (`KK_PF`).
    gemm_kk_prefetch: bool,
    /// The GEMM path may use gemm_coop.wgsl (where the adapter has cooperative matrices);
    /// false (`KILN_WGPU_GEMM=f32`) keeps it on gemm.wgsl's f32 FMAs.
    gemm_coop: bool,
    /// key → max GEMV rows (mirror of the file for the hot path).
    known: HashMap<String, usize>,
    warned: HashSet<String>,
}

impl TuneState {
    pub(crate) fn open(info: &DeviceInfo) -> TuneState {
        let key = device_key(&["wgpu", &info.name, &info.driver]);
        let cache = TuneCache::open(&key);
        let known = cache
            .entries()
            .iter()
            .filter_map(|(k, v)| {
                v.get("max_gemv_rows")
                    .and_then(|r| r.as_u64())
                    .map(|r| (k.clone(), r as usize))
            })
            .collect();
        let lanes = cache
            .entries()
            .iter()
            .filter_map(|(k, v)| {
                let d = k.strip_prefix("gemv_lanes/")?;
                let l = v.get("lanes")?.as_u64()?;
                let r = v.get("rows").and_then(|r| r.as_u64()).unwrap_or(1);
                Some((d.to_string(), (l as u32, r as u32)))
            })
            .collect();
        TuneState {
            cache,
            lanes,
            lanes_override: None,
            vgemv_override: None,
            vgemv_no_prefetch: false,
            attn_decode: std::env::var("KILN_WGPU_ATTN").map_or(true, |v| v != "0"),
            attn_prefill: std::env::var("KILN_WGPU_ATTN")
                .map_or(true, |v| v != "0" && v != "decode"),
            attn_keys: std::env::var("KILN_WGPU_ATTN").map_or(true, |v| v != "tiles"),
            vgemv_no_x8: false,
            // KILN_WGPU_X8_DEPTH=1|2: gemv_x8's prefetch depth for the whole process (A/B)
            vgemv_depth: std::env::var("KILN_WGPU_X8_DEPTH")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|v| (1..=2).contains(v)),
            vgemv_q4k_wide: false,
            // KILN_WGPU_XQ=0|1 and KILN_WGPU_KS=1|2|4|8: gemv_x8's x pre-pass and k split
            // for the whole process (A/B of the built-in choice)
            vgemv_xq: std::env::var("KILN_WGPU_XQ")
                .ok()
                .and_then(|v| match v.as_str() {
                    "0" => Some(false),
                    "1" => Some(true),
                    _ => None,
                }),
            vgemv_ksplit: std::env::var("KILN_WGPU_KS")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|v| [1, 2, 4, 8].contains(v)),
            // KILN_WGPU_Q4K_PACK=0|1: gemv_x8 Q4_K's scale/min decode (A/B)
            vgemv_q4k_pack: std::env::var("KILN_WGPU_Q4K_PACK").ok().and_then(|v| {
                match v.as_str() {
                    "0" => Some(false),
                    "1" => Some(true),
                    _ => None,
                }
            }),
            // KILN_WGPU_X8M_CFG=teams,rows: gemv_x8m's shape for the whole process (A/B)
            vgemv_x8m_config: std::env::var("KILN_WGPU_X8M_CFG").ok().and_then(|v| {
                let (t, r) = v.split_once(',')?;
                x8m_cfg_ok((t.trim().parse().ok()?, r.trim().parse().ok()?))
            }),
            gemm_splits: None,
            gemm_legacy: std::env::var("KILN_WGPU_GEMM").is_ok_and(|v| v == "legacy"),
            gemm_kk_prefetch: std::env::var("KILN_WGPU_GEMM").map_or(true, |v| v != "nopf"),
            gemm_coop: std::env::var("KILN_WGPU_GEMM")
                .map_or(true, |v| !matches!(v.as_str(), "f32" | "nopf" | "legacy")),
            known,
            warned: HashSet::new(),
        }
    }
}

fn x8m_cfg_ok((t, r): (u32, u32)) -> Option<(u32, u32)> {
    ([1, 2, 4, 8, 16].contains(&t) && [1, 2, 4].contains(&r)).then_some((t, r))
}

/// The cache key of a crossover. "gemm2": measured against `gemm.wgsl`; "gemm3": against
/// `gemm_coop.wgsl` (entries measured against the older GEMMs are left unread). "/x8m": a
/// Q8_0/Q4_K shape whose 2..=8-row GEMV is gemv_x8m (`x8m`), faster than the general GEMV the
/// older entries measured, so those re-tune.
pub(crate) fn key(d: DType, n: usize, k: usize, coop: bool, x8m: bool) -> String {
    let g = if coop { "gemm3" } else { "gemm2" };
    let v = if x8m { "/x8m" } else { "" };
    format!("matmul/{}/n{n}/k{k}/{g}{v}", d.name())
}

/// What `tune` measured for one shape.
#[derive(Clone, Debug)]
pub struct TuneResult {
    pub dtype: DType,
    pub n: usize,
    pub k: usize,
    /// Largest m for which GEMV was faster (0: GEMM always faster).
    pub max_gemv_rows: usize,
    /// The GEMV shape chosen (lanes per group, rows per lane), and the m = 1 seconds of each
    /// shape tried.
    pub gemv_config: (u32, u32),
    pub gemv_timings: Vec<((u32, u32), f64)>,
    /// (m, gemv seconds, gemm seconds) per ladder step.
    pub timings: Vec<(usize, f64, f64)>,
}

impl WgpuBackend {
    /// GEMV shape (lanes per 32-element group, weight rows per lane): the override, else the
    /// value `tune` measured on this adapter, else the best shape measured on an H200
    /// (BENCHMARKS.md): 4 lanes, 1 row for BF16/F32; 2 lanes, 4 rows for the others.
    pub(crate) fn gemv_config(&self, d: DType) -> (u32, u32) {
        let t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        let untuned = if matches!(d, DType::BF16 | DType::F32) {
            (4, 1)
        } else {
            (2, 4)
        };
        t.lanes_override
            .or_else(|| t.lanes.get(d.name()).copied())
            .unwrap_or(untuned)
    }

    /// Force the GEMV shape (lanes per group 1/2/4/8, rows per lane 1/2/4) for every dtype,
    /// or `None` to use the tuned values (benchmarks and experiments).
    pub fn set_gemv_config(&self, cfg: Option<(u32, u32)>) -> Result<()> {
        if let Some((l, r)) = cfg
            && (![1, 2, 4, 8].contains(&l) || ![1, 2, 4].contains(&r))
        {
            return Err(Error::Invalid(format!(
                "gemv config ({l}, {r}): expected lanes 1, 2, 4 or 8 and rows 1, 2 or 4"
            )));
        }
        let mut t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        t.lanes_override = cfg;
        Ok(())
    }

    /// Force the shape of the m = 1 vec4 GEMV (BF16, Q8_0, Q4_K): (teams of 32 invocations
    /// per workgroup 1/2/4/8/16, weight rows per team 1/2/4/8); `Some((0, 0))` turns that kernel
    /// off (those types then use the general GEMV at m = 1 too); `None`: the built-in choice.
    pub fn set_vgemv_config(&self, cfg: Option<(u32, u32)>) -> Result<()> {
        if let Some((t, r)) = cfg
            && (t, r) != (0, 0)
            && (![1, 2, 4, 8, 16].contains(&t) || ![1, 2, 4, 8].contains(&r))
        {
            return Err(Error::Invalid(format!(
                "vgemv config ({t}, {r}): expected teams 1, 2, 4, 8 or 16 and rows 1, 2, 4 or 8, or (0, 0)"
            )));
        }
        let mut t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        t.vgemv_override = cfg;
        Ok(())
    }

    /// Whether gemv_v issues the next chunk's weight loads before decoding the current one
    /// (default true; false is kept for comparison in the benchmarks).
    pub fn set_vgemv_prefetch(&self, on: bool) {
        let mut t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        t.vgemv_no_prefetch = !on;
    }

    pub(crate) fn vgemv_prefetch(&self) -> bool {
        let t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        !t.vgemv_no_prefetch
    }

    /// Whether m = 1 products of Q8_0/Q4_K round x to int8 and use integer dot products
    /// (`shaders/gemv_x8.wgsl`, default true where the shader language has
    /// `dot4I8Packed`); false keeps the exact-x float kernel gemv_v (comparison, tests).
    /// `KILN_WGPU_X8=0` turns it off for the whole process.
    pub fn set_vgemv_x8(&self, on: bool) {
        let mut t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        t.vgemv_no_x8 = !on;
    }

    /// Force gemv_x8's prefetch depth (chunks of weight loads in flight ahead of the one
    /// being decoded: 1 or 2), or `None` for the built-in choice (benchmarks, tests).
    pub fn set_vgemv_depth(&self, depth: Option<u32>) -> Result<()> {
        if let Some(d) = depth
            && !(1..=2).contains(&d)
        {
            return Err(Error::Invalid(format!("vgemv depth {d}: expected 1 or 2")));
        }
        let mut t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        t.vgemv_depth = depth;
        Ok(())
    }

    /// gemv_x8's Q4_K lane mapping: `false` (default) = one qs vec4 (32 weights) per lane,
    /// row and 1024-element chunk; `true` = a pair of qs vec4s (64 weights, one scale/min
    /// decode) per 2048-element chunk. On an H200 the pair mapping was 8 % faster at
    /// 4096×14336 and 16-19 % slower at 14336×4096 and n = 127424 (BENCHMARKS.md, gemv_x8
    /// entry), so it is kept only as an option.
    pub fn set_vgemv_q4k_wide(&self, on: bool) {
        let mut t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        t.vgemv_q4k_wide = on;
    }

    /// gemv_x8's x: `Some(true)` = rounded to int8 once per call by a separate dispatch
    /// (quant_x8.wgsl) in the same compute pass, the GEMV reading it from memory;
    /// `Some(false)` = rounded by every workgroup into workgroup memory (the first gemv_x8);
    /// `None` = the built-in choice (`ops/gemv_v.rs`). Benchmarks and tests.
    pub fn set_vgemv_xq(&self, on: Option<bool>) {
        let mut t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        t.vgemv_xq = on;
    }

    /// Force gemv_x8's split-k inside the workgroup: teams per row group 1, 2, 4 or 8 (capped
    /// at the teams per workgroup), or `None` for the built-in choice. Benchmarks and tests.
    pub fn set_vgemv_ksplit(&self, ks: Option<u32>) -> Result<()> {
        if let Some(v) = ks
            && ![1, 2, 4, 8].contains(&v)
        {
            return Err(Error::Invalid(format!(
                "vgemv k split {v}: expected 1, 2, 4 or 8"
            )));
        }
        let mut t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        t.vgemv_ksplit = ks;
        Ok(())
    }

    /// gemv_x8 Q4_K's scale/min decode: `Some(true)` = the packed form (two 16-bit lanes per
    /// u32, no select, scales applied to the integer sums: `Q4K_PACK` in gemv_x8.wgsl),
    /// `Some(false)` = the per-value select form, `None` = the built-in choice
    /// (`ops/gemv_v.rs`). Benchmarks and tests; `KILN_WGPU_Q4K_PACK=0|1` for the process.
    pub fn set_vgemv_q4k_pack(&self, on: Option<bool>) {
        let mut t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        t.vgemv_q4k_pack = on;
    }

    /// Force gemv_x8m's shape (2..=8 x rows of Q8_0/Q4_K): (teams of 32 invocations per
    /// workgroup 1/2/4/8/16, weight rows per team 1/2/4), or `None` for the built-in choice.
    /// Benchmarks and tests; `KILN_WGPU_X8M_CFG=teams,rows` for the process.
    pub fn set_vgemv_x8m_config(&self, cfg: Option<(u32, u32)>) -> Result<()> {
        if let Some(c) = cfg
            && x8m_cfg_ok(c).is_none()
        {
            return Err(Error::Invalid(format!(
                "gemv_x8m config {c:?}: expected teams 1, 2, 4, 8 or 16 and rows 1, 2 or 4"
            )));
        }
        let mut t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        t.vgemv_x8m_config = cfg;
        Ok(())
    }

    pub(crate) fn vgemv_x8m_config(&self) -> Option<(u32, u32)> {
        let t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        t.vgemv_x8m_config
    }

    pub(crate) fn vgemv_q4k_pack(&self) -> Option<bool> {
        let t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        t.vgemv_q4k_pack
    }

    pub(crate) fn vgemv_xq(&self) -> Option<bool> {
        let t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        t.vgemv_xq
    }

    pub(crate) fn vgemv_ksplit(&self) -> Option<u32> {
        let t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        t.vgemv_ksplit
    }

    /// Force the GEMM's k splits (1 = none; capped at k/32), or `None` for the built-in
    /// rule (`ops/gemm.rs`: split until ~256 workgroups). Benchmarks and tests.
    pub fn set_gemm_splits(&self, splits: Option<u32>) -> Result<()> {
        if splits == Some(0) {
            return Err(Error::Invalid("gemm splits 0: expected ≥ 1".into()));
        }
        let mut t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        t.gemm_splits = splits;
        Ok(())
    }

    pub(crate) fn gemm_splits_forced(&self) -> Option<u32> {
        let t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        t.gemm_splits
    }

    /// Run the GEMM path through matmul.wgsl's older kernel (64×64 tiles, 64 of 256
    /// invocations dequantizing, no split) instead of gemm.wgsl: comparison only.
    /// `KILN_WGPU_GEMM=legacy` sets it for the whole process.
    pub fn set_gemm_legacy(&self, on: bool) {
        let mut t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        t.gemm_legacy = on;
    }

    /// gemm.wgsl's register double buffering of its workgroup-memory reads (default on;
    /// `KILN_WGPU_GEMM=nopf` turns it off for the whole process): comparison.
    pub fn set_gemm_kk_prefetch(&self, on: bool) {
        let mut t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        t.gemm_kk_prefetch = on;
    }

    pub(crate) fn gemm_kk_prefetch(&self) -> bool {
        let t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        t.gemm_kk_prefetch
    }

    /// Let the GEMM path use the cooperative-matrix kernel where the adapter has one (default
    /// on; `KILN_WGPU_GEMM=f32` turns it off for the whole process): comparison.
    pub fn set_gemm_coop(&self, on: bool) {
        let mut t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        t.gemm_coop = on;
    }

    /// Whether the GEMM path runs `gemm_coop.wgsl`: the adapter has a usable cooperative
    /// matrix configuration and neither `set_gemm_coop(false)` nor the legacy kernel is set.
    pub fn gemm_coop(&self) -> bool {
        let t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        self.coop_matrix && t.gemm_coop && !t.gemm_legacy
    }

    pub(crate) fn gemm_legacy(&self) -> bool {
        let t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        t.gemm_legacy
    }

    pub(crate) fn vgemv_q4k_wide(&self) -> bool {
        let t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        t.vgemv_q4k_wide
    }

    pub(crate) fn vgemv_depth(&self) -> Option<u32> {
        let t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        t.vgemv_depth
    }

    /// Whether the int8-x m = 1 kernel may run (switch, environment and language feature).
    pub(crate) fn vgemv_x8(&self) -> bool {
        let t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        !t.vgemv_no_x8
            && self.dot4_packed
            && std::env::var("KILN_WGPU_X8").map_or(true, |v| v != "0")
    }

    /// The forced gemv_v shape, if any (not the "off" value).
    pub(crate) fn vgemv_override(&self) -> Option<(u32, u32)> {
        let t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        t.vgemv_override.filter(|c| *c != (0, 0))
    }

    /// Whether m = 1 products of the gemv_v types go to gemv_v (`KILN_WGPU_VGEMV=0` or
    /// `set_vgemv_config(Some((0, 0)))` turn it off).
    pub(crate) fn vgemv_enabled(&self) -> bool {
        let t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        t.vgemv_override != Some((0, 0))
            && std::env::var("KILN_WGPU_VGEMV").map_or(true, |v| v != "0")
    }

    pub(crate) fn choose_path(&self, d: DType, n: usize, k: usize, m: usize) -> MatmulPath {
        let key = key(d, n, k, self.gemm_coop(), x8m_ok(self, d, k));
        let known = {
            let t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
            t.known.get(&key).copied()
        };
        let max = match known {
            Some(r) => r,
            None if std::env::var("KILN_WGPU_AUTOTUNE").is_ok_and(|v| v == "1") => {
                match self.tune(d, n, k) {
                    Ok(r) => r.max_gemv_rows,
                    Err(e) => {
                        tracing::warn!("wgpu: tuning {key} failed: {e}");
                        UNTUNED_GEMV_ROWS
                    }
                }
            }
            None => {
                let mut t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
                if t.warned.insert(key.clone()) {
                    tracing::info!(
                        "wgpu: {key} not tuned on {}; GEMV up to {UNTUNED_GEMV_ROWS} rows (run kiln tune)",
                        self.info.name
                    );
                }
                UNTUNED_GEMV_ROWS
            }
        };
        if m <= max {
            MatmulPath::Gemv
        } else {
            MatmulPath::Gemm
        }
    }

    /// Time one path: seconds per call (median of 3 batches after a warm-up).
    fn time_path(
        &self,
        x: &kiln_core::Buffer,
        w: &kiln_core::Weight,
        out: &kiln_core::Buffer,
        m: usize,
        path: MatmulPath,
    ) -> Result<f64> {
        let (n, k) = (w.shape().dim(0), w.shape().dim(1));
        let xv = x.view(0, Shape::d2(m, k), DType::F32)?;
        let ov = out.view_mut(0, Shape::d2(m, n), DType::F32)?;
        matmul_with(self, xv, w, ov, path)?;
        self.wait_idle()?;
        // Calibrate to ~20 ms a batch.
        let t0 = Instant::now();
        matmul_with(self, xv, w, ov, path)?;
        self.wait_idle()?;
        let one = t0.elapsed().as_secs_f64().max(1e-6);
        let reps = ((0.02 / one) as usize).clamp(1, 200);
        let mut v = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            for _ in 0..reps {
                matmul_with(self, xv, w, ov, path)?;
            }
            self.wait_idle()?;
            v.push(t.elapsed().as_secs_f64() / reps as f64);
        }
        v.sort_by(|a, b| a.total_cmp(b));
        Ok(v[1])
    }

    /// Measure the GEMV/GEMM crossover of `dtype` at n×k on this adapter and persist it.
    pub fn tune(&self, dtype: DType, n: usize, k: usize) -> Result<TuneResult> {
        if !DType::WEIGHT_TYPES.contains(&dtype) {
            return Err(Error::Invalid(format!(
                "tune: {dtype} is not a weight type"
            )));
        }
        let bytes = dtype.bytes_for(n * k)?;
        // Deterministic bytes; f16 fields are made small and finite so no inf/NaN is timed.
        let mut data: Vec<u8> = (0..bytes)
            .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[3] & 0x3b)
            .collect();
        if dtype == DType::F32 {
            for c in data.chunks_exact_mut(4) {
                c[3] &= 0x3f;
            }
        }
        let w = self.prepare(&HostTensor::new(dtype, Shape::d2(n, k), &data)?)?;
        let mmax = *LADDER.last().unwrap_or(&128);
        let x = self.alloc_buffer(mmax * k * 4)?;
        let xs: Vec<u8> = (0..mmax * k)
            .flat_map(|i| (((i % 13) as f32 - 6.0) * 0.01).to_le_bytes())
            .collect();
        self.write_bytes(&x, 0, &xs)?;
        let out = self.alloc_buffer(mmax * n * 4)?;
        // 1) the general GEMV's shape at m = 1 (at m = 4 for the types whose m = 1 products
        //    go to gemv_v, which this shape does not affect)
        let m_cfg = if crate::ops::gemv_v::supports(dtype) && self.vgemv_enabled() {
            4
        } else {
            1
        };
        let mut lane_t = Vec::new();
        for &c in &GEMV_CONFIGS {
            self.set_gemv_config(Some(c))?;
            lane_t.push((c, self.time_path(&x, &w, &out, m_cfg, MatmulPath::Gemv)?));
        }
        self.set_gemv_config(None)?;
        let best = lane_t
            .iter()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map_or((2, 1), |b| b.0);
        {
            let mut t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
            let v = serde_json::json!({
                "lanes": best.0,
                "rows": best.1,
                "n": n,
                "k": k,
                "timings_s": lane_t.iter().map(|((l, r), s)| serde_json::json!({"lanes": l, "rows": r, "s": s})).collect::<Vec<_>>(),
            });
            t.cache.insert(&format!("gemv_lanes/{}", dtype.name()), v)?;
            t.lanes.insert(dtype.name().to_string(), best);
        }
        // 2) the GEMV/GEMM crossover
        let mut timings = Vec::new();
        let mut max_gemv_rows = 0;
        let mut gemv_lost = false;
        for &m in &LADDER {
            let tv = self.time_path(&x, &w, &out, m, MatmulPath::Gemv)?;
            let tm = self.time_path(&x, &w, &out, m, MatmulPath::Gemm)?;
            timings.push((m, tv, tm));
            if tv < tm && !gemv_lost {
                max_gemv_rows = m;
            } else {
                gemv_lost = true;
                // Two consecutive GEMM wins end the ladder.
                if timings.len() >= 2
                    && timings[timings.len() - 2].2 <= timings[timings.len() - 2].1
                {
                    break;
                }
            }
        }
        let key = key(dtype, n, k, self.gemm_coop(), x8m_ok(self, dtype, k));
        let value = serde_json::json!({
            "max_gemv_rows": max_gemv_rows,
            "timings_s": timings.iter().map(|(m, a, b)| serde_json::json!({"m": m, "gemv": a, "gemm": b})).collect::<Vec<_>>(),
        });
        {
            let mut t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
            t.cache.insert(&key, value)?;
            t.known.insert(key, max_gemv_rows);
        }
        Ok(TuneResult {
            dtype,
            n,
            k,
            max_gemv_rows,
            gemv_config: best,
            gemv_timings: lane_t,
            timings,
        })
    }
}
