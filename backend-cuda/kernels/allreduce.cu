// allreduce.cu: one-shot peer-to-peer all-reduce (sum, f32, in place) over the GPUs of one
// process with peer access on between every pair (src/comm_p2p.rs drives it).
//
// Every rank r of an n-rank group launches the same grid on its own stream; per call, block b:
//   1. e = ++epoch[b] (device counter, per block); copy buf[i] -> staging[r][e & 1][i] (own
//      memory; two staging halves used in turn).
//   2. barrier: store e into every peer's signal.start[b][r] (release, system scope); wait until
//      own signal.start[b][q] >= e for every q (acquire). After it every rank's block b has
//      staged its units of this call.
//   3. reduce: buf[i] = staging[0][e&1][i] + staging[1][e&1][i] + ... + staging[n-1][e&1][i], in
//      rank order on every rank, so every rank holds bit-identical sums (the runtime relies on
//      it). n-1 of the n reads go to peer memory (NVLink), ld.global.cg (L2, never the
//      non-coherent path).
// One barrier per call is enough because the staging halves alternate: a rank overwrites half
// h again only in call e+2, after passing barrier e+1, which no peer enters before it has
// finished call e (kernels on a stream run in order), i.e. before it has read half h. (With one
// staging buffer a second, end barrier would be needed.) Flags only grow, so a peer may already
// have stored e+1 when a rank looks for e: the wait is `>=` (wrap-safe difference).
// The epochs live on the device, so the flags are reused call after call without host work and
// the kernel can be captured in a CUDA graph.
//
// Thread mapping: a grid of B blocks (B = min(KILN_AR_MAX_BLOCKS, the SM count), the same for
// EVERY call of every kernel of this file: see below) of blockDim threads; one unit (float4
// for _v4, float for _v1) per thread per step, grid-stride. Block b of every rank owns the same
// units (same grid, same count on every rank), so a barrier between block b and the peers'
// block b is enough. Why one grid for all calls: the staging half of a call is chosen per
// block from that block's epoch; with equal grids every block's epoch is the call count, so a
// call's writes (half e+1 & 1) never land in the half a slower peer still reads for the
// previous call (half e & 1) — whatever units each block owns in either call. With grids that
// differ from call to call the blocks' epochs would drift apart and two consecutive calls
// could use the same half.
//
// allreduce_add_rms_norm_f32 (the tensor-parallel residual): the same staging, barrier and
// epochs, rows of `dim` floats (one row per block at a time, grid-stride over rows, float4
// units), then per row sum = res + (part_0 + ... + part_{n-1}) (rank order, then the
// residual: bit for bit the unfused all-reduce followed by add) and out = rms_norm(sum)·w. The
// part is an input (copied to staging, not overwritten). Bytes per rank: part 4·count read,
// staging 4·count written, 4·(n-1)·count read from peers + 4·count local, res 4·count read,
// sum and out 8·count written (+ sum re-read from L1/L2), w 4·dim per row (L2).
// Threads 0..n-1 of a block run the flags (thread q stores to rank q, waits on rank q's flag).
// Deadlock: a block spins until the peers' blocks arrive. The peers run on other GPUs and the
// host launches them right after (asynchronously), so this needs no co-residency on one GPU;
// the grid stays <= the SM count so that every block of it is resident at once. A wait longer
// than KILN_AR_TIMEOUT_NS (a peer that never launched) traps: the context reports an error
// instead of hanging forever.
//
// Bytes per rank and call (count = floats): copy 4·count read + 4·count written (local);
// reduce 4·(n-1)·count read from peers + 4·count local + 4·count written. (n-1)·count adds.
//
// Buffers: buf f32 [count] (the rank's own, in place); staging[q] f32 [2][half] on rank q,
// half >= count; signal[q] a KilnArSignal on rank q (zeroed once at creation).
#include "common.cuh"

#define KILN_AR_MAX_RANKS 8
#define KILN_AR_MAX_BLOCKS 32
#define KILN_AR_TIMEOUT_NS 30000000000ull
// float4 per thread of allreduce_add_rms_norm_f32's row (dim <= 4 · 4 · blockDim).
#define KILN_AR_NORM_V4 4

struct KilnArSignal {
    u32 start[KILN_AR_MAX_BLOCKS][KILN_AR_MAX_RANKS];
    u32 counter[KILN_AR_MAX_BLOCKS];
};

// Device addresses of every rank's staging buffer and signal area (passed by value).
struct KilnArPeers {
    u64 staging[KILN_AR_MAX_RANKS];
    u64 signal[KILN_AR_MAX_RANKS];
};

__device__ __forceinline__ void st_release_sys(u32* p, u32 v) {
    asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ u32 ld_acquire_sys(const u32* p) {
    u32 v;
    asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ void st_volatile(u32* p, u32 v) {
    asm volatile("st.volatile.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ u32 ld_volatile(const u32* p) {
    u32 v;
    asm volatile("ld.volatile.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ u64 global_ns() {
    u64 t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

// Spin until *p >= want (flags only grow; wrap-safe), acquire loads; trap after
// KILN_AR_TIMEOUT_NS.
__device__ __forceinline__ void wait_flag(const u32* p, u32 want) {
    u64 t0 = 0;
    u32 spins = 0;
    while ((int)(ld_acquire_sys(p) - want) < 0) {
        if (++spins == 4096) {
            spins = 0;
            u64 now = global_ns();
            if (t0 == 0) t0 = now;
            else if (now - t0 > KILN_AR_TIMEOUT_NS) __trap();
        }
    }
}

// arr[idx] for a runtime idx without indexing the parameter array (which copies all of it to
// local memory in every thread): an unrolled select whose operands pass through a `mov`, so the
// compiler cannot fold it back into an indexed load.
__device__ __forceinline__ u64 pick(const u64 (&arr)[KILN_AR_MAX_RANKS], int idx) {
    u64 v = 0;
#pragma unroll
    for (int q = 0; q < KILN_AR_MAX_RANKS; ++q) {
        u64 x;
        asm("mov.b64 %0, %1;" : "=l"(x) : "l"(arr[q]));
        v = idx == q ? x : v;
    }
    return v;
}

struct Unit4 { float v[4]; };
struct Unit1 { float v[1]; };

template <int V> struct UnitOf;
template <> struct UnitOf<4> { typedef Unit4 T; };
template <> struct UnitOf<1> { typedef Unit1 T; };

// Plain load/store of one unit of own memory (PTX, so no CUDA header is needed).
__device__ __forceinline__ Unit4 ld_unit(const float* p, i64 i, Unit4) {
    Unit4 u;
    asm volatile("ld.global.v4.f32 {%0, %1, %2, %3}, [%4];"
                 : "=f"(u.v[0]), "=f"(u.v[1]), "=f"(u.v[2]), "=f"(u.v[3])
                 : "l"(p + 4 * i) : "memory");
    return u;
}
__device__ __forceinline__ Unit1 ld_unit(const float* p, i64 i, Unit1) {
    Unit1 u;
    asm volatile("ld.global.f32 %0, [%1];" : "=f"(u.v[0]) : "l"(p + i) : "memory");
    return u;
}
__device__ __forceinline__ void st_unit(float* p, i64 i, Unit4 u) {
    asm volatile("st.global.v4.f32 [%0], {%1, %2, %3, %4};"
                 ::"l"(p + 4 * i), "f"(u.v[0]), "f"(u.v[1]), "f"(u.v[2]), "f"(u.v[3]) : "memory");
}
__device__ __forceinline__ void st_unit(float* p, i64 i, Unit1 u) {
    asm volatile("st.global.f32 [%0], %1;" ::"l"(p + i), "f"(u.v[0]) : "memory");
}

// Load of one unit of a (possibly peer's) staging buffer written during this kernel: L2 only.
__device__ __forceinline__ Unit4 ld_cg(const float* p, i64 i, Unit4) {
    Unit4 u;
    asm volatile("ld.global.cg.v4.f32 {%0, %1, %2, %3}, [%4];"
                 : "=f"(u.v[0]), "=f"(u.v[1]), "=f"(u.v[2]), "=f"(u.v[3])
                 : "l"(p + 4 * i) : "memory");
    return u;
}
__device__ __forceinline__ Unit1 ld_cg(const float* p, i64 i, Unit1) {
    Unit1 u;
    asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(u.v[0]) : "l"(p + i) : "memory");
    return u;
}

// The barrier of block b with the peers' block b after this block's staging writes for call
// `epoch`, then the epoch recorded (step 2 of the file comment).
__device__ __forceinline__ void ar_barrier(const KilnArPeers& peers, int rank, int nranks, u32 epoch) {
    KilnArSignal* self = reinterpret_cast<KilnArSignal*>(pick(peers.signal, rank));
    const int b = blockIdx.x, t = threadIdx.x;
    __syncthreads();
    if (t < nranks) {
        KilnArSignal* peer = reinterpret_cast<KilnArSignal*>(pick(peers.signal, t));
        st_release_sys(&peer->start[b][rank], epoch);
        wait_flag(&self->start[b][t], epoch);
    }
    __syncthreads();
    if (t == 0) st_volatile(&self->counter[b], epoch);
}

template <int V>
__device__ __forceinline__ void allreduce_f32(const KilnArPeers& peers, int rank, int nranks,
                                              float* buf, i64 units, i64 half) {
    typedef typename UnitOf<V>::T U;
    pdl_enter();
    KilnArSignal* self = reinterpret_cast<KilnArSignal*>(pick(peers.signal, rank));
    const int b = blockIdx.x;
    const int t = threadIdx.x;
    const i64 first = (i64)b * blockDim.x + t;
    const i64 stride = (i64)gridDim.x * blockDim.x;
    // This call's epoch and staging half (every thread reads the counter before the
    // __syncthreads after which thread 0 advances it).
    const u32 epoch = ld_volatile(&self->counter[b]) + 1;
    const i64 h = (epoch & 1) ? half : 0;

    // 1. Own input into own staging half.
    float* mine = reinterpret_cast<float*>(pick(peers.staging, rank)) + h;
    for (i64 i = first; i < units; i += stride)
        st_unit(mine, i, ld_unit(buf, i, U()));

    // 2. Barrier: the release publishes this block's staging writes (ordered before it by
    // __syncthreads); the acquire makes the peers' writes visible to this block.
    ar_barrier(peers, rank, nranks, epoch);

    // 3. Sum every rank's staging half in rank order (bit-identical on every rank).
    for (i64 i = first; i < units; i += stride) {
        U acc = ld_cg(reinterpret_cast<const float*>(peers.staging[0]) + h, i, U());
#pragma unroll
        for (int q = 1; q < KILN_AR_MAX_RANKS; ++q) {
            if (q < nranks) {
                U x = ld_cg(reinterpret_cast<const float*>(peers.staging[q]) + h, i, U());
#pragma unroll
                for (int k = 0; k < V; ++k) acc.v[k] += x.v[k];
            }
        }
        st_unit(buf, i, acc);
    }
}

// buf: 16-byte aligned on every rank, count = 4·units floats; half: floats per staging half.
extern "C" __global__ void __launch_bounds__(512)
allreduce_f32_v4(KilnArPeers peers, int rank, int nranks, float* buf, i64 units, i64 half) {
    allreduce_f32<4>(peers, rank, nranks, buf, units, half);
}

// Any alignment: one float per unit.
extern "C" __global__ void __launch_bounds__(512)
allreduce_f32_v1(KilnArPeers peers, int rank, int nranks, float* buf, i64 units, i64 half) {
    allreduce_f32<1>(peers, rank, nranks, buf, units, half);
}

// part, res, sum, out f32 [rows, dim] (16-byte aligned, dim % 4 == 0, dim <= 16·blockDim),
// w f32 [dim]; half: floats per staging half (>= rows·dim).
extern "C" __global__ void __launch_bounds__(512)
allreduce_add_rms_norm_f32(KilnArPeers peers, int rank, int nranks, const float* part,
                           const float* res, const float* w, float* sum, float* out, int rows,
                           int dim, i64 half, float eps) {
    __shared__ float smem[32];
    pdl_enter();
    KilnArSignal* self = reinterpret_cast<KilnArSignal*>(pick(peers.signal, rank));
    const int b = blockIdx.x, t = threadIdx.x;
    const u32 epoch = ld_volatile(&self->counter[b]) + 1;
    const i64 h = (epoch & 1) ? half : 0;
    const int d4 = dim / 4;

    // 1. This block's rows of the own part into the own staging half.
    float* mine = reinterpret_cast<float*>(pick(peers.staging, rank)) + h;
    for (int r = b; r < rows; r += gridDim.x) {
        const i64 o = (i64)r * dim;
        for (int i = t; i < d4; i += blockDim.x) st_unit(mine + o, i, ld_unit(part + o, i, Unit4()));
    }
    // 2. Barrier with the peers' block b.
    ar_barrier(peers, rank, nranks, epoch);
    // 3. Per row: the rank-order sum plus the residual, then the norm. Each thread holds its
    // (at most KILN_AR_NORM_V4) float4 of the row in registers, so all of its loads (the
    // peers' over NVLink included) are in flight at once.
    for (int r = b; r < rows; r += gridDim.x) {
        const i64 o = (i64)r * dim;
        Unit4 v[KILN_AR_NORM_V4];
        float ss = 0.0f;
#pragma unroll
        for (int j = 0; j < KILN_AR_NORM_V4; ++j) {
            const int i = t + j * blockDim.x;
            if (i >= d4) continue;
            Unit4 acc = ld_cg(reinterpret_cast<const float*>(peers.staging[0]) + h + o, i, Unit4());
#pragma unroll
            for (int q = 1; q < KILN_AR_MAX_RANKS; ++q) {
                if (q < nranks) {
                    Unit4 x = ld_cg(reinterpret_cast<const float*>(peers.staging[q]) + h + o, i, Unit4());
#pragma unroll
                    for (int k = 0; k < 4; ++k) acc.v[k] += x.v[k];
                }
            }
            const Unit4 rv = ld_unit(res + o, i, Unit4());
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                v[j].v[k] = rv.v[k] + acc.v[k];
                ss = fmaf(v[j].v[k], v[j].v[k], ss);
            }
        }
        // The stores after every load (the asm loads and stores keep their order).
#pragma unroll
        for (int j = 0; j < KILN_AR_NORM_V4; ++j) {
            const int i = t + j * blockDim.x;
            if (i < d4) st_unit(sum + o, i, v[j]);
        }
        ss = block_sum(ss, smem);
        const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
#pragma unroll
        for (int j = 0; j < KILN_AR_NORM_V4; ++j) {
            const int i = t + j * blockDim.x;
            if (i >= d4) continue;
            const Unit4 wv = ld_unit(w, i, Unit4());
            Unit4 y;
#pragma unroll
            for (int k = 0; k < 4; ++k) y.v[k] = v[j].v[k] * inv * wv.v[k];
            st_unit(out + o, i, y);
        }
    }
}
