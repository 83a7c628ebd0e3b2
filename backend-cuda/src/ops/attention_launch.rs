//! Launching attention.cu's kernels, and the decode split merged inside a thread-block cluster.
//!
//! Cluster merge (sm_90+, kernels/attn_cluster.cuh): when a decode plan splits the KV range,
//! each row tile's splits can run as one `(splits, 1, 1)` cluster and merge through distributed
//! shared memory, instead of writing partials to global memory for the last CTA to arrive (the
//! fused merge: a device-wide fence, an atomic arrival and one CTA reading every split back).
//! Measured on an H200 (BENCHMARKS.md, stop 22), F16, µs per call, fused → cluster: one TP2
//! rank's decode (ctx 512, 4 KV heads, 8 splits, 4 clusters) 6.90 → 5.87; but re-cutting a plan
//! into fewer, longer splits to fit a cluster lost (ctx 4096 batch 1: 13.50 → 14.14 with 16
//! splits of 256, 17.11 with 8 of 512; ctx 16384: 26.2 → 37.6 / 57.0), and 32 clusters of 8
//! CTAs that did not fit the GPCs at once made a batch-4 ctx-4096 decode step 17 % slower. So a
//! plan takes the cluster merge only as it is: 2 ≤ splits ≤ `cluster_cap()` (8, the portable
//! size) and every cluster of the grid resident at once (`cuOccupancyMaxActiveClusters`).
//! `KILN_ATTN_CLUSTER=0` keeps the fused merge everywhere (A/B; 2..=16 sets the cap).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use cudarc::driver::{CudaFunction, LaunchConfig, sys};
use kiln_core::{DType, DeviceId, Result};

use super::attention::{AttnArgs, AttnPlan, Variant, decode_paired, decode_stages, decode_variant};
use crate::device::CudaBackend;
use crate::module_cache::ATTENTION;
use crate::ops::launch::{Arg, launch_cluster, max_active_clusters};

/// The largest cluster the merge uses (`KILN_ATTN_CLUSTER`: 0 = off, 2..=16; default 8),
/// read once.
pub(crate) fn cluster_cap() -> usize {
    static CAP: OnceLock<usize> = OnceLock::new();
    *CAP.get_or_init(|| match std::env::var("KILN_ATTN_CLUSTER") {
        Ok(v) => v.trim().parse::<usize>().map_or(8, |n| n.min(16)),
        Err(_) => 8,
    })
}

/// How many `(nz, 1, 1)` clusters of a kernel can be resident at once on a device, asked once
/// per (device, kernel, cluster size, shared memory).
type FitKey = (DeviceId, &'static str, u32, u32);
static FITS: OnceLock<Mutex<HashMap<FitKey, usize>>> = OnceLock::new();

impl CudaBackend {
    /// The decode kernel of `pl` if its splits merge in clusters on this device (module doc):
    /// sm_90+, 2 ≤ splits ≤ `cluster_cap()`, and all `pl.decode_row_tiles · n_kv · n_seqs`
    /// clusters resident at once. None: the fused merge.
    pub(super) fn attn_cluster_plan(
        &self,
        hd: usize,
        kv: DType,
        pl: &AttnPlan,
        n_kv: usize,
        n_seqs: usize,
    ) -> Result<Option<Variant>> {
        let sm90 = self.info.caps.compute_capability.is_some_and(|c| c.0 >= 9);
        if !sm90 || pl.splits < 2 || pl.splits > cluster_cap() || pl.decode_row_tiles == 0 {
            return Ok(None);
        }
        let paired = decode_paired(pl.chunk);
        let stages = decode_stages(pl.splits, kv, paired);
        let v = decode_variant(hd, kv, self.smem_limit(), stages, paired)?;
        let clusters = pl.decode_row_tiles * n_kv * n_seqs;
        Ok((self.attn_resident_clusters(v, pl.splits)? >= clusters).then_some(v))
    }

    /// How many clusters of `nz` CTAs of kernel `v` can be resident at once (0 when none; the
    /// function set up for that size on the first ask — function attributes persist — so a
    /// decode step's later calls only read the cache).
    fn attn_resident_clusters(&self, v: Variant, nz: usize) -> Result<usize> {
        let nz = nz as u32;
        let key = (self.info.id, v.name, nz, v.smem as u32);
        let fits = FITS.get_or_init(|| Mutex::new(HashMap::new()));
        if let Some(&n) = fits.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(n);
        }
        let f = self.function(&ATTENTION, v.name)?;
        self.allow_smem(&f, v.smem)?;
        let n = self.resident_clusters(&f, v, nz);
        fits.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, n);
        Ok(n)
    }

    fn resident_clusters(&self, f: &CudaFunction, v: Variant, nz: u32) -> usize {
        if nz > 8
            && f.set_attribute(
                sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED,
                1,
            )
            .is_err()
        {
            return 0;
        }
        let cfg = LaunchConfig {
            grid_dim: (nz, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: v.smem as u32,
        };
        max_active_clusters(&self.ctx, &self.stream, f, cfg, nz).map_or(0, |n| n.max(0) as usize)
    }

    /// Launch decode or prefill kernel `v` on `grid` (`cluster` > 1: as `(cluster, 1, 1)`
    /// clusters, `a.cluster` set and grid x = row tiles · cluster).
    pub(super) fn launch_attn(
        &self,
        v: Variant,
        grid: (u32, u32, u32),
        a: &AttnArgs,
        cluster: u32,
    ) -> Result<()> {
        let f = self.function(&ATTENTION, v.name)?;
        self.allow_smem(&f, v.smem)?;
        if cluster > 8 {
            // Opt-in sizes only (KILN_ATTN_CLUSTER > 8): set on this function handle itself,
            // whichever backend's query cached the size.
            f.set_attribute(
                sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED,
                1,
            )
            .map_err(self.drv("cuFuncSetAttribute(non-portable cluster size)"))?;
        }
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: (128, 1, 1),
            shared_mem_bytes: v.smem as u32,
        };
        // SAFETY: `a` (AttnArgs, #[repr(C)] like the kernels' parameter) holds the addresses of
        // views validated above: q/out [n_tokens, n_heads,
        // head_dim] f32, caches [num_blocks, n_kv, block_size, head_dim] 16-byte aligned, the i32
        // batch arrays with the element counts checked, and (when splits > 1) scratch of
        // scratch_bytes(). The kernel reads only sequences passing `seq_ok` (rows < n_tokens,
        // kv_len ≤ max_blocks·block_size), block ids inside 0..num_blocks, and writes partial
        // slots < n_seqs·n_kv·rd·splits; the dynamic shared memory is the variant's size. A
        // non-null `counters` is this backend's counter buffer (attn_counters), which holds at
        // least plan.counters = n_seqs·n_kv·row_tiles i32, the highest index the kernel uses.
        // Prefill kernels wait first (pdl_enter); decode kernels read only q_starts, kv_lens
        // and the block tables (step inputs the host writes, never an earlier kernel) before
        // their griddepcontrol.wait, and every CTA waits before it exits. With a cluster
        // (attn_cluster_size said the size fits this kernel on this sm_90+ device, the
        // non-portable attribute set above 8): grid x is row tiles · cluster and `a.cluster`
        // is set, so each cluster is one row tile's splits, whose CTAs all reach both cluster
        // barriers (attn_cluster.cuh) and read peers' shared memory only between them.
        unsafe {
            launch_cluster(
                &self.ctx,
                &self.stream,
                self.pdl(),
                cluster,
                &f,
                cfg,
                &[Arg::raw(a)],
            )
        }
        .map_err(self.drv("launch attention"))
    }

    pub(super) fn launch_combine(
        &self,
        grid: (u32, u32, u32),
        a: &AttnArgs,
        hd: usize,
    ) -> Result<()> {
        let name = match hd {
            64 => "attn_combine_hd64",
            128 => "attn_combine_hd128",
            _ => "attn_combine_hd256",
        };
        let f = self.function(&ATTENTION, name)?;
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: as `launch_attn`: the combine reads the partial slots the decode kernel wrote
        // for the same row tiles (same `seq_ok` / key-range logic) and writes rows of `out`;
        // `hd` is the head_dim checked against HEAD_DIMS, so the kernel's HD matches the views.
        unsafe { self.launch_pdl(&f, "launch attn_combine", cfg, &[Arg::raw(a)]) }
    }
}
