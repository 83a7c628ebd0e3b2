//! The one-shot peer-to-peer all-reduce of `CudaComm` for small f32 messages
//! (kernels/allreduce.cu): every rank's kernel copies its buffer into its own staging buffer
//! (one of two halves, in turn), meets the peers at a flag barrier, reads every rank's staging
//! half directly over NVLink, sums in rank order (bit-identical on every rank) and writes its
//! buffer. The alternating halves make a second (end) barrier unnecessary (see the kernel).
//!
//! - Set up at group creation when every ordered pair of members can access each other
//!   (`cuDeviceCanAccessPeer`): peer access is enabled between all the contexts (already enabled
//!   is fine), and each rank gets a staging buffer (two halves of `P2P_STAGING_BYTES`, f32)
//!   and a signal area
//!   (flags + per-block epoch counters, zeroed once). One process drives every member, so with
//!   peer access on, one context's device addresses are valid in kernels on the others (UVA);
//!   no IPC handles.
//! - Staging and signal memory come from `cuMemAlloc` (not the stream-ordered pool the backends
//!   allocate from): `cuCtxEnablePeerAccess` covers `cuMemAlloc` memory, while pool memory
//!   would need `cuMemPoolSetAccess`. The kernel touches only its own rank's buffer, and the
//!   peers' staging and signal memory.
//! - Capturable: a call is one kernel launch per rank with arguments fixed at creation (the
//!   peers' addresses) plus the buffer address and size; the barrier epochs live on the device.
//!   No host synchronization, no host state per call.
//! - Deadlock safety: rank r's kernel spins until every peer's kernel arrives; the host
//!   launches them right after, rank after rank, asynchronously (and graph replays likewise),
//!   so the kernels never need to share one GPU. The grid is at most `MAX_BLOCKS` and at most
//!   the smallest SM count of the group, so every block of a grid is resident at once. All
//!   arguments are checked before the first launch; a peer that never arrives makes the kernel
//!   trap after 30 s (an error on the stream) rather than hang.

use std::sync::Arc;

use cudarc::driver::sys::{CUdevice_attribute, CUresult};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaStream, DeviceRepr, LaunchConfig, result as drv, sys,
};
use cudarc::nvrtc::Ptx;
use kiln_core::{DeviceId, Error, Result};

use crate::error::{CudaError, guard};
use crate::module_cache::{ALLREDUCE, cached_cubin};
use crate::ops::launch::{Arg, launch_ex, pdl_allowed};

/// `KILN_AR_MAX_RANKS` of kernels/allreduce.cu.
pub(crate) const MAX_RANKS: usize = 8;
/// `KILN_AR_MAX_BLOCKS` of kernels/allreduce.cu.
const MAX_BLOCKS: usize = 32;
/// Threads per block (the kernels' `__launch_bounds__`).
const THREADS: usize = 512;
/// Longest row allreduce_add_rms_norm_f32 takes: KILN_AR_NORM_V4 float4 per thread.
pub(crate) const NORM_MAX_DIM: usize = 4 * 4 * THREADS;
/// `sizeof(KilnArSignal)` = (32·8 + 32)·4 = 1152 bytes, allocated as 4 KiB.
const SIGNAL_BYTES: usize = 4096;
/// Bytes of each half of a rank's staging buffer: the largest message the P2P path can take
/// (each rank allocates two halves).
pub const P2P_STAGING_BYTES: usize = 4 << 20;

/// The peers' addresses, passed by value to every launch (`KilnArPeers`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Peers {
    /// staging[q]: rank q's staging buffer, f32 [2][P2P_STAGING_BYTES / 4].
    staging: [u64; MAX_RANKS],
    /// signal[q]: rank q's signal area, `KilnArSignal` (SIGNAL_BYTES).
    signal: [u64; MAX_RANKS],
}

// SAFETY: `Peers` is `#[repr(C)]`, plain u64 arrays, laid out exactly like the kernel's
// `KilnArPeers` (two arrays of KILN_AR_MAX_RANKS u64).
unsafe impl DeviceRepr for Peers {}

/// A `cuMemAlloc` allocation of one context, freed on drop.
struct DevMem {
    ctx: Arc<CudaContext>,
    ptr: u64,
}

impl DevMem {
    fn new(ctx: &Arc<CudaContext>, bytes: usize, name: &str) -> Result<DevMem> {
        ctx.bind_to_thread()
            .map_err(|e| CudaError::driver(name, "cuCtxSetCurrent", e))?;
        // SAFETY: the context is current; the allocation is freed once, in drop.
        let ptr = unsafe { drv::malloc_sync(bytes) }.map_err(|e| {
            if e.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                Error::OutOfMemory {
                    device: name.to_string(),
                    requested: bytes as u64,
                }
            } else {
                CudaError::driver(name, "cuMemAlloc (P2P all-reduce)", e).into()
            }
        })?;
        Ok(DevMem {
            ctx: ctx.clone(),
            ptr,
        })
    }
}

impl Drop for DevMem {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from cuMemAlloc in this context and is freed once; the owner
        // (`P2p`, dropped by `CudaComm::drop` after synchronizing every member's stream) has no
        // kernel in flight that uses it.
        let _ = self
            .ctx
            .bind_to_thread()
            .map(|_| unsafe { drv::free_sync(self.ptr) });
    }
}

struct Rank {
    name: String,
    stream: Arc<CudaStream>,
    v4: CudaFunction,
    v1: CudaFunction,
    /// allreduce_add_rms_norm_f32.
    norm: CudaFunction,
    _staging: DevMem,
    _signal: DevMem,
    /// Launch as a programmatic dependent (sm_90+).
    pdl: bool,
}

/// The P2P all-reduce of one group (see the module docs).
pub(crate) struct P2p {
    ranks: Vec<Rank>,
    peers: Peers,
    blocks_cap: usize,
}

fn attr(ctx: &Arc<CudaContext>, a: CUdevice_attribute, name: &str) -> Result<usize> {
    ctx.attribute(a)
        .map(|v| v.max(0) as usize)
        .map_err(|e| CudaError::driver(name, "cuDeviceGetAttribute", e).into())
}

impl P2p {
    /// Set up over the members' streams (rank order). `Ok(Err(why))` when peer access is not
    /// possible between some pair (the group then uses NCCL only); `Err` on a driver failure.
    pub(crate) fn new(
        members: &[(DeviceId, Arc<CudaStream>)],
    ) -> Result<std::result::Result<P2p, String>> {
        let n = members.len();
        if n < 2 {
            return Ok(Err("a group of one device needs no P2P all-reduce".into()));
        }
        if n > MAX_RANKS {
            return Ok(Err(format!(
                "the P2P all-reduce takes at most {MAX_RANKS} devices, the group has {n}"
            )));
        }
        guard("P2P all-reduce setup", || Self::setup(members))?
    }

    fn setup(members: &[(DeviceId, Arc<CudaStream>)]) -> Result<std::result::Result<P2p, String>> {
        let ctxs: Vec<(String, Arc<CudaContext>)> = members
            .iter()
            .map(|(id, s)| (id.to_string(), s.context().clone()))
            .collect();
        for (i, (ni, ci)) in ctxs.iter().enumerate() {
            for (j, (nj, cj)) in ctxs.iter().enumerate() {
                if i == j {
                    continue;
                }
                let mut can = 0;
                // SAFETY: out-pointer to a local; both handles are devices of live contexts.
                unsafe { sys::cuDeviceCanAccessPeer(&mut can, ci.cu_device(), cj.cu_device()) }
                    .result()
                    .map_err(|e| CudaError::driver(ni, "cuDeviceCanAccessPeer", e))?;
                if can == 0 {
                    return Ok(Err(format!(
                        "{ni} cannot access {nj}'s memory (peer access)"
                    )));
                }
            }
        }
        for (i, (ni, ci)) in ctxs.iter().enumerate() {
            ci.bind_to_thread()
                .map_err(|e| CudaError::driver(ni, "cuCtxSetCurrent", e))?;
            for (j, (nj, cj)) in ctxs.iter().enumerate() {
                if i == j {
                    continue;
                }
                // SAFETY: ci is current; cj is a live context of another device.
                match unsafe { sys::cuCtxEnablePeerAccess(cj.cu_ctx(), 0) } {
                    CUresult::CUDA_SUCCESS | CUresult::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED => {}
                    e => {
                        return Ok(Err(format!(
                            "cuCtxEnablePeerAccess from {ni} to {nj} failed: {e:?}"
                        )));
                    }
                }
            }
        }
        let mut ranks = Vec::with_capacity(members.len());
        let mut peers = Peers {
            staging: [0; MAX_RANKS],
            signal: [0; MAX_RANKS],
        };
        let mut blocks_cap = MAX_BLOCKS;
        for (r, ((_, stream), (name, ctx))) in members.iter().zip(&ctxs).enumerate() {
            let major = attr(
                ctx,
                CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                name,
            )?;
            let minor = attr(
                ctx,
                CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                name,
            )?;
            let sms = attr(
                ctx,
                CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
                name,
            )?;
            blocks_cap = blocks_cap.min(sms.max(1));
            let cubin = cached_cubin(&ALLREDUCE, &format!("sm_{major}{minor}"))?;
            let module = ctx
                .load_module(Ptx::from_binary(cubin))
                .map_err(|e| CudaError::driver(name, "cuModuleLoadData (allreduce.cu)", e))?;
            let func = |f: &str| {
                module
                    .load_function(f)
                    .map_err(|e| CudaError::MissingFunction {
                        device: name.clone(),
                        kernel: ALLREDUCE.name.to_string(),
                        function: f.to_string(),
                        msg: format!("{e:?}"),
                    })
            };
            let (v4, v1) = (func("allreduce_f32_v4")?, func("allreduce_f32_v1")?);
            let norm = func("allreduce_add_rms_norm_f32")?;
            let staging = DevMem::new(ctx, 2 * P2P_STAGING_BYTES, name)?;
            let signal = DevMem::new(ctx, SIGNAL_BYTES, name)?;
            // SAFETY: `signal` holds SIGNAL_BYTES; zeroed on the member's stream, which is
            // synchronized right after (group creation is never inside a capture).
            unsafe { drv::memset_d8_async(signal.ptr, 0, SIGNAL_BYTES, stream.cu_stream()) }
                .map_err(|e| CudaError::driver(name, "cuMemsetD8Async", e))?;
            stream
                .synchronize()
                .map_err(|e| CudaError::driver(name, "cuStreamSynchronize", e))?;
            peers.staging[r] = staging.ptr;
            peers.signal[r] = signal.ptr;
            ranks.push(Rank {
                name: name.clone(),
                stream: stream.clone(),
                v4,
                v1,
                norm,
                _staging: staging,
                _signal: signal,
                pdl: major >= 9 && pdl_allowed(),
            });
        }
        Ok(Ok(P2p {
            ranks,
            peers,
            blocks_cap,
        }))
    }

    /// In-place sum of `count` f32 at `ptrs[r]` on rank r (addresses of views checked by the
    /// caller to hold `count` f32 on the rank's device), `count·4 <= P2P_STAGING_BYTES`.
    pub(crate) fn all_reduce_f32(&self, ptrs: &[u64], count: usize) -> Result<()> {
        if ptrs.len() != self.ranks.len() || count * 4 > P2P_STAGING_BYTES {
            return Err(Error::Invalid(format!(
                "P2P all-reduce: {} buffers of {} bytes for {} ranks (staging {} bytes)",
                ptrs.len(),
                count * 4,
                self.ranks.len(),
                P2P_STAGING_BYTES
            )));
        }
        // Every rank must take the same variant and grid (block b meets block b).
        let vec4 = count.is_multiple_of(4) && ptrs.iter().all(|p| p.is_multiple_of(16));
        let units = if vec4 { count / 4 } else { count };
        let cfg = self.grid();
        let nranks = self.ranks.len() as i32;
        let units = units as i64;
        let half = (P2P_STAGING_BYTES / 4) as i64;
        for (r, (rank, buf)) in self.ranks.iter().zip(ptrs).enumerate() {
            self.launch(rank, r as i32, nranks, *buf, units, half, vec4, cfg)
                .map_err(|e| {
                    Error::backend(
                        rank.name.clone(),
                        format!(
                            "P2P all-reduce launch on rank {r} failed ({e}); ranks before it \
                             wait for it and will trap after 30 s"
                        ),
                    )
                })?;
        }
        Ok(())
    }

    /// The grid of every launch: the same for every call of every kernel (the staging halves
    /// follow the blocks' epochs, which stay equal only with one grid: kernels/allreduce.cu).
    fn grid(&self) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (self.blocks_cap as u32, 1, 1),
            block_dim: (THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// The all-reduce of `rows`×`dim` f32 partial sums fused with the residual add and the
    /// RMS norm (allreduce_add_rms_norm_f32): per rank r, `ptrs[r]` = [part, res, w, sum, out]
    /// device addresses on rank r's device, each of them checked by the caller to hold
    /// rows·dim f32 (w: dim), 16-byte aligned, sum and out disjoint from the rest;
    /// dim % 4 == 0, dim <= [`NORM_MAX_DIM`] and rows·dim·4 <= `P2P_STAGING_BYTES`.
    pub(crate) fn all_reduce_add_rms_norm_f32(
        &self,
        ptrs: &[[u64; 5]],
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        let bytes = rows * dim * 4;
        if ptrs.len() != self.ranks.len()
            || bytes > P2P_STAGING_BYTES
            || !dim.is_multiple_of(4)
            || dim > NORM_MAX_DIM
            || ptrs.iter().flatten().any(|p| !p.is_multiple_of(16))
        {
            return Err(Error::Invalid(format!(
                "P2P all-reduce + rms_norm: {} ranks' buffers ({} expected) of {rows}×{dim} f32 \
                 ({bytes} bytes, staging {P2P_STAGING_BYTES}); dim must be a multiple of 4 up to \
                 {NORM_MAX_DIM} and every address 16-byte aligned",
                ptrs.len(),
                self.ranks.len()
            )));
        }
        let (rows, dim) = (
            i32::try_from(rows).map_err(|_| Error::Invalid(format!("{rows} rows")))?,
            i32::try_from(dim).map_err(|_| Error::Invalid(format!("dim {dim}")))?,
        );
        let nranks = self.ranks.len() as i32;
        let half = (P2P_STAGING_BYTES / 4) as i64;
        for (r, (rank, p)) in self.ranks.iter().zip(ptrs).enumerate() {
            let ri = r as i32;
            let args = [
                Arg::raw(&self.peers),
                Arg::I32(&ri),
                Arg::I32(&nranks),
                Arg::U64(&p[0]),
                Arg::U64(&p[1]),
                Arg::U64(&p[2]),
                Arg::U64(&p[3]),
                Arg::U64(&p[4]),
                Arg::I32(&rows),
                Arg::I32(&dim),
                Arg::I64(&half),
                Arg::F32(&eps),
            ];
            // SAFETY: the arguments match allreduce_add_rms_norm_f32's parameters; part, res,
            // sum, out hold rows·dim f32 and w dim f32 on rank r's device, 16-byte aligned
            // (the caller's contract, sizes and alignment checked above); the staging halves
            // hold `half` >= rows·dim floats; the grid is the same on every rank and at most
            // the SM count, every rank is launched by this loop (module docs on deadlock).
            unsafe {
                launch_ex(
                    rank.stream.context(),
                    &rank.stream,
                    rank.pdl,
                    &rank.norm,
                    self.grid(),
                    &args,
                )
            }
            .map_err(|e| {
                Error::backend(
                    rank.name.clone(),
                    format!(
                        "P2P all-reduce + rms_norm launch on rank {r} failed ({e}); ranks \
                         before it wait for it and will trap after 30 s"
                    ),
                )
            })?;
        }
        Ok(())
    }

    /// One rank's launch of allreduce_f32_v4 / _v1.
    #[allow(clippy::too_many_arguments)]
    fn launch(
        &self,
        rank: &Rank,
        r: i32,
        nranks: i32,
        buf: u64,
        units: i64,
        half: i64,
        vec4: bool,
        cfg: LaunchConfig,
    ) -> std::result::Result<(), cudarc::driver::DriverError> {
        let f = if vec4 { &rank.v4 } else { &rank.v1 };
        let args = [
            Arg::raw(&self.peers),
            Arg::I32(&r),
            Arg::I32(&nranks),
            Arg::U64(&buf),
            Arg::I64(&units),
            Arg::I64(&half),
        ];
        // SAFETY: `buf` addresses `units` units (float4 when vec4: 16-byte aligned, else float)
        // of rank r's own device memory (checked by the caller); `peers` holds every rank's
        // live staging buffer (two halves of `half` floats, `half` >= the message, checked
        // above) and signal area
        // (zeroed at creation, then only touched by these kernels), all reachable from rank r
        // with peer access on. The grid is the same on every rank and at most the SM count;
        // every rank is launched by this loop (see the module docs on deadlock). The arguments
        // match the kernel's parameters; it waits for the previous kernel first (pdl_enter).
        unsafe { launch_ex(rank.stream.context(), &rank.stream, rank.pdl, f, cfg, &args) }
    }
}
