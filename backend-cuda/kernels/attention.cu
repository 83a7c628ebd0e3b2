// attention.cu: paged attention over the KV cache for a ragged batch (src/ops/attention.rs).
//
// Buffers: q, out f32 [n_tokens, n_heads, HD]; K/V cache [num_blocks, n_kv, block_size, HD]
// (f32, f16 or bf16); q_starts i32 [n_seqs + 1], kv_lens i32 [n_seqs], tables i32
// [n_seqs, max_blocks]; split-KV partials (scratch) part_acc f32 [n_seqs, n_kv, rd, splits, HD]
// and part_ml f32 [n_seqs, n_kv, rd, splits, 2]; merge counters i32 [n_seqs, n_kv, row_tiles]
// (backend-owned, zero between calls).
//
// Rows: for a (sequence s, KV head g) the query rows are r = j·G + hh (j < q_len the query,
// hh < G = n_heads / n_kv the head inside the group), so all query heads that share a KV head
// are one M dimension and every K/V tile is read once for all of them (GQA/MQA). Query j sits
// at position kv_len − q_len + j; key k is kept iff lo ≤ k < hi with hi = pos + 1 (causal) or
// kv_len, lo = pos + 1 − W (window W) or 0.
//
// Thread mapping (one CTA = 4 warps = 128 threads, grid (row_tiles·splits, n_kv, n_seqs)):
// - decode config (sequences with q_len ≤ qd, qd = max(1, 16 / G)): ROWS = 16 rows (one mma M
//   tile), the 4 warps split each 64-key tile into 16-key slices (each warp keeps its own online
//   softmax state; merged through shared memory at the end); the KV range is split into chunks
//   of `chunk` keys over gridDim.x (flash-decoding). A row whose keys span one chunk is written
//   to `out` directly; otherwise each split writes (acc, m, l) and they are merged: by the
//   last CTA of the row tile to finish (a counter per (sequence, KV head, row tile) in
//   `counters`, which that CTA sets back to 0), or, if `counters` is null, by attn_combine_hd*;
//   or, with `cluster` set (sm_90), inside a thread-block cluster holding the row tile's splits
//   (grid x = row tile · splits + split; attn_cluster.cuh), partials in shared memory.
//   The first NS−1 K/V tiles are requested before the Q tile is loaded; with the bulk loader,
//   their rows of keys older than this step's before the PDL wait (attn_body).
// - prefill config (q_len > qd): ROWS = 64 rows, each warp owns 16 rows and all keys of a tile
//   (FlashAttention-2); no KV split. Row tiles are scheduled longest (latest positions) first.
// Per tile: K and V (BC keys × HD) are copied into shared memory (rows padded by 16 bytes so
// ldmatrix is conflict-free) in an NS-stage ring: decode on sm_90+ by cp.async.bulk, one copy
// per key row or, in the `p` kernels, per pair of rows (the pad after each pair: half the
// copy-engine requests for 2-way ldmatrix conflicts; 10–15 % faster at batch 32, BENCHMARKS.md
// 2026-11-23), completing on an mbarrier per stage (`p`: Q's fragments in registers); prefill, and decode below sm_90, by cp.async (16-byte chunks); S = Q·Kᵀ and
// O += P·V use mma.sync m16n8k16 (f16 for f16/f32 caches, bf16 for bf16 caches; an f32 cache is
// rounded to f16 on the way into shared memory), accumulating in f32; softmax is online in f32
// (log2 domain). Q is pre-multiplied by `scale` and rounded once; for bf16, Q is split into
// hi + lo bf16 parts (two QK mma) so Q keeps ~16 mantissa bits: the score error is then the
// f32 accumulation's, not bf16's. Keys outside [klo, khi) of the CTA are zero-filled in shared
// memory (never loaded: stale or NaN cache rows cannot reach the output) and masked.
//
// Bytes: decode reads each needed K/V row once per (sequence, KV head): 2·kv_len·n_kv·HD·esize
// per sequence, plus q and out (4·G·HD per row) and, when split, 2·4·(HD+2) per row and split.
// FLOPs: 4·HD per (row, key) pair kept (+2·HD more for bf16 Q's lo part).
#include "common.cuh"
#include "bulk.cuh"

// Kernel arguments (must match `AttnArgs` in src/ops/attention.rs field for field).
struct AttnArgs {
    const float* q;
    const void* kc;
    const void* vc;
    float* out;
    const int* q_starts;
    const int* kv_lens;
    const int* tables;
    float* part_acc;
    float* part_ml;
    int* counters;           // fused merge: arrivals per (sequence, KV head, row tile); null: attn_combine merges
    int n_seqs, n_tokens, n_heads, n_kv;
    int group, block_size, max_blocks, num_blocks;
    int max_q_len, max_kv_len;
    float scale, softcap;    // softcap 0: off
    int window, causal;      // window 0: off
    int qd, rd;              // decode q_len bound; partial rows per (sequence, KV head) = qd·G
    int splits, chunk;       // decode KV splits and keys per split (chunk is a multiple of 64)
    int row_tiles;           // row tiles of this launch (gridDim.x = row_tiles·splits)
    int kv_f32;              // 1: f32 cache (the f16 kernels round it to f16 while loading)
    int bs_shift;            // log2(block_size) if it is a power of two, else −1
    int cluster;             // 1: the splits of a row tile are one thread-block cluster (attn_cluster.cuh)
};

#define NEG_INF __int_as_float(0xff800000)
#define LOG2E 1.4426950408889634f

// ------------------------------------------------------------------------------ PTX helpers
__device__ __forceinline__ void cp_async16(u32 dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

// Four 8×8 b16 matrices; lane l gives the address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void ldsm4(u32 a, u32 r[4]) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a) : "memory");
}
__device__ __forceinline__ void ldsm4_t(u32 a, u32 r[4]) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a) : "memory");
}

// c[16×8 f32] += a[16×16] · b[16×8]. Fragments (g = lane / 4, t = lane % 4): a0 (row g, cols
// 2t..2t+1), a1 (row g+8), a2 (row g, cols 2t+8..), a3 (row g+8, cols 2t+8..); b0 (k 2t..2t+1,
// col g), b1 (k 2t+8..); c0,c1 (row g, cols 2t, 2t+1), c2,c3 (row g+8).
template <bool BF>
__device__ __forceinline__ void mma16816(float c[4], const u32 a[4], u32 b0, u32 b1) {
    if (BF) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
}

// Two f32 → packed 16-bit pair (x0 in the low half), round to nearest even.
template <bool BF>
__device__ __forceinline__ u32 pack2(float x0, float x1) {
    u32 r;
    if (BF) asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(x1), "f"(x0));
    else asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(x1), "f"(x0));
    return r;
}
template <bool BF>
__device__ __forceinline__ float lo16_to_f32(u32 w) { return BF ? bf2f((u16)(w & 0xffffu)) : h2f((u16)(w & 0xffffu)); }
template <bool BF>
__device__ __forceinline__ float hi16_to_f32(u32 w) { return BF ? bf2f((u16)(w >> 16)) : h2f((u16)(w >> 16)); }

// ------------------------------------------------------------------------ batch bookkeeping
// Reads sequence s; false if it has no query rows or breaks the batch contract (such rows are
// left unwritten: a kernel cannot report errors, so it never reads outside the buffers instead).
__device__ __forceinline__ bool seq_ok(const AttnArgs& a, int s, int& q0, int& q_len, int& kv_len) {
    q0 = a.q_starts[s];
    const int q1 = a.q_starts[s + 1];
    kv_len = a.kv_lens[s];
    q_len = q1 - q0;
    return q0 >= 0 && q1 <= a.n_tokens && q_len >= 1 && q_len <= a.max_q_len && kv_len >= q_len &&
           kv_len <= a.max_kv_len && kv_len <= a.max_blocks * a.block_size;
}

// Keys [klo, khi) that rows r0..r_end-1 of a (sequence, KV head) need together.
__device__ __forceinline__ void key_range(const AttnArgs& a, int q_len, int kv_len, int r0, int r_end,
                                          int& klo, int& khi) {
    const int first = kv_len - q_len;
    const int p_lo = first + r0 / a.group, p_hi = first + (r_end - 1) / a.group;
    klo = a.window > 0 ? max(0, p_lo + 1 - a.window) : 0;
    khi = a.causal ? p_hi + 1 : kv_len;
}

#include "attn_merge.cuh"
#include "attn_cluster.cuh"

// ----------------------------------------------------------------------------- tile loader
// K and V rows of key positions tile·BC .. tile·BC+BC-1 of (s, g) into Ks, Vs [BC][LD] (16-bit).
// Positions outside [klo, khi) and blocks outside the cache are zero-filled, never read.
// Helpers of the bulk loader below. Block id of key `pos` of the table `bt`, or −1 (outside
// [klo, khi) or outside the cache).
__device__ __forceinline__ int kv_block(const AttnArgs& a, const int* bt, int pos, int klo, int khi) {
    if (pos < klo || pos >= khi) return -1;
    const int bi = a.bs_shift >= 0 ? (pos >> a.bs_shift) : pos / a.block_size;
    const int blk = __ldg(bt + bi);
    return (blk >= 0 && blk < a.num_blocks) ? blk : -1;
}

// Element offset of (block blk, KV head g, key pos) in the cache [num_blocks, n_kv, bs, HD]
// (shift/mask for power-of-two block sizes: no division).
template <int HD>
__device__ __forceinline__ i64 kv_row_off(const AttnArgs& a, int blk, int g, int pos) {
    const int bi = a.bs_shift >= 0 ? (pos >> a.bs_shift) : pos / a.block_size;
    const int row = pos - bi * a.block_size;
    return (((i64)blk * a.n_kv + g) * a.block_size + row) * HD;
}

// One 16-byte chunk of an f32 cache row, rounded to f16 (no cp.async: the data changes type).
__device__ __forceinline__ uint4 f32x8_to_f16(const float* src) {
    const float4 x0 = __ldg((const float4*)src), x1 = __ldg((const float4*)src + 1);
    return make_uint4(pack2<false>(x0.x, x0.y), pack2<false>(x0.z, x0.w), pack2<false>(x1.x, x1.y),
                      pack2<false>(x1.z, x1.w));
}

// cp.async loader (prefill; decode below sm_90): one 16-byte chunk (8 elements) per thread per
// step, consecutive threads read one key row; each chunk's block id is read right before its
// copy. Kept exactly as written (its PTX is 6e3b99c's): two rewrites measured 10–20 % slower at
// decode batch 32 and 10 % in prefill in the round-3 lab — the block ids of a tile read first
// (146 registers), and the same loop through kv_block / kv_row_off (the block-size shift test
// and division emitted twice: +60 % branches and divisions in the loader's PTX).
template <int HD, int BC, int THREADS>
__device__ __forceinline__ void load_kv(const AttnArgs& a, int s, int g, int tile, int klo, int khi,
                                        u16* Ks, u16* Vs) {
    constexpr int LD = HD + 8, CPR = HD / 8, TOTAL = BC * CPR;
    static_assert(TOTAL % THREADS == 0, "tile chunks must divide among the threads");
    const int* bt = a.tables + (i64)s * a.max_blocks;
#pragma unroll
    for (int it = 0; it < TOTAL / THREADS; it++) {
        const int i = threadIdx.x + it * THREADS;
        const int kk = i / CPR, c = i % CPR;
        const int pos = tile * BC + kk;
        u16* kd = Ks + kk * LD + c * 8;
        u16* vd = Vs + kk * LD + c * 8;
        // Block and row of `pos` (shift/mask for power-of-two block sizes: no division).
        const int bi = a.bs_shift >= 0 ? (pos >> a.bs_shift) : pos / a.block_size;
        const int row = pos - bi * a.block_size;
        int blk = -1;
        if (pos >= klo && pos < khi) {
            blk = __ldg(bt + bi);
            if (blk >= a.num_blocks) blk = -1;
        }
        if (blk < 0) {
            *(uint4*)kd = make_uint4(0u, 0u, 0u, 0u);
            *(uint4*)vd = make_uint4(0u, 0u, 0u, 0u);
            continue;
        }
        const i64 off = (((i64)blk * a.n_kv + g) * a.block_size + row) * HD + c * 8;
        if (a.kv_f32) {
            // Rounded to f16 on the way in (no cp.async: the data changes type).
#pragma unroll
            for (int which = 0; which < 2; which++) {
                const float4* src = (const float4*)((const float*)(which ? a.vc : a.kc) + off);
                const float4 x0 = __ldg(src), x1 = __ldg(src + 1);
                *(uint4*)(which ? vd : kd) = make_uint4(pack2<false>(x0.x, x0.y), pack2<false>(x0.z, x0.w),
                                                        pack2<false>(x1.x, x1.y), pack2<false>(x1.z, x1.w));
            }
        } else {
            cp_async16(smem_addr(kd), (const u16*)a.kc + off);
            cp_async16(smem_addr(vd), (const u16*)a.vc + off);
        }
    }
}

// ------------------------------------------------------------ bulk-copy (TMA) loader, sm_90+
// Decode tiles by `cp.async.bulk` (the copy engine, not the load/store unit: one instruction per
// HD·2-byte key row, so a CTA keeps whole tiles in flight with few instructions) completing on
// one mbarrier per ring stage. Mapping: THREADS = 2·BC, thread t copies row t % BC of K (t < BC)
// or V; each thread arrives once per tile on the stage's barrier (count THREADS) after adding
// the bytes it will copy (expect_tx), so a stage's phase completes when every row has landed or
// been zero-filled. Rows stay padded to LD (one bulk copy per row: ldmatrix stays
// conflict-free). Bytes in flight per CTA: (NS − 1)·2·BC·HD·2. Below sm_90 the helpers are empty
// and attn_body uses the cp.async loader (ATTN_BULK = 0).
#define ATTN_BULK KILN_BULK

// The block id of this thread's row (bulk mapping).
template <int BC>
__device__ __forceinline__ int kv_block_bulk(const AttnArgs& a, int s, int tile, int klo, int khi) {
    return kv_block(a, a.tables + (i64)s * a.max_blocks, tile * BC + threadIdx.x % BC, klo, khi);
}
// Shared-memory element offset of K/V row r of a tile: padded rows (r·LD), or, PAIR, rows 2p and
// 2p + 1 contiguous (one 2·HD·2-byte bulk copy) and the 16-byte pad after the pair: half the
// copy-engine requests, for 2-way ldmatrix bank conflicts (8 rows land in 4 bank groups).
// Same footprint: 2·LD per pair.
template <int HD, bool PAIR>
__device__ __forceinline__ int kv_soff(int r) {
    constexpr int LD = HD + 8;
    return PAIR ? (r >> 1) * 2 * LD + (r & 1) * HD : r * LD;
}
template <int HD, int BC, bool PAIR = false>
__device__ __forceinline__ void kv_issue_bulk(const AttnArgs& a, int s, int g, int tile, int blk, u16* Ks, u16* Vs,
                                              u32 bar, int klo, int khi) {
    const int kk = threadIdx.x % BC, which = threadIdx.x / BC;
    u16* base = which ? Vs : Ks;
    const u16* gsrc = (const u16*)(which ? a.vc : a.kc);
    if (PAIR && !a.kv_f32 && (a.block_size & 1) == 0) {
        // The even thread of a pair moves rows kk, kk + 1 (same cache block: kk and the block
        // size are even); the odd thread only arrives.
        if (kk & 1) {
            mbar_arrive(bar);
            return;
        }
        const int pos = tile * BC + kk;
        const int blk1 = blk >= 0 && pos + 1 < khi ? blk : kv_block(a, a.tables + (i64)s * a.max_blocks, pos + 1, klo, khi);
        if (blk >= 0 && blk1 >= 0) {
            mbar_arrive_tx(bar, 2 * HD * 2);
            bulk_g2s(smem_addr(base + kv_soff<HD, PAIR>(kk)), gsrc + kv_row_off<HD>(a, blk, g, pos), 2 * HD * 2, bar);
            return;
        }
        // A pair at the edge of [klo, khi) or of the cache: zero-fill first (the arrive below
        // releases the stores), then copy the valid row.
        const int b2[2] = {blk, blk1};
#pragma unroll
        for (int j = 0; j < 2; j++)
            if (b2[j] < 0) {
                u16* d = base + kv_soff<HD, PAIR>(kk + j);
#pragma unroll 4
                for (int c = 0; c < HD / 8; c++) *(uint4*)(d + c * 8) = make_uint4(0u, 0u, 0u, 0u);
            }
        const u32 bytes = (blk >= 0 ? HD * 2 : 0) + (blk1 >= 0 ? HD * 2 : 0);
        if (bytes == 0) {
            mbar_arrive(bar);
            return;
        }
        mbar_arrive_tx(bar, bytes);
#pragma unroll
        for (int j = 0; j < 2; j++)
            if (b2[j] >= 0)
                bulk_g2s(smem_addr(base + kv_soff<HD, PAIR>(kk + j)), gsrc + kv_row_off<HD>(a, b2[j], g, pos + j), HD * 2,
                         bar);
        return;
    }
    u16* d = base + kv_soff<HD, PAIR>(kk);
    if (blk >= 0 && !a.kv_f32) {
        const u16* src = gsrc + kv_row_off<HD>(a, blk, g, tile * BC + kk);
        mbar_arrive_tx(bar, HD * 2);
        bulk_g2s(smem_addr(d), src, HD * 2, bar);
        return;
    }
    if (blk >= 0) {
        const float* src = (const float*)(which ? a.vc : a.kc) + kv_row_off<HD>(a, blk, g, tile * BC + kk);
#pragma unroll 4
        for (int c = 0; c < HD / 8; c++) *(uint4*)(d + c * 8) = f32x8_to_f16(src + c * 8);
    } else {
#pragma unroll 4
        for (int c = 0; c < HD / 8; c++) *(uint4*)(d + c * 8) = make_uint4(0u, 0u, 0u, 0u);
    }
    mbar_arrive(bar);  // release: the generic stores are visible to the waiting threads
}

// ------------------------------------------------------------------------------- the kernel
// WM warps along rows × WN warps along keys (WM·WN = 4); BC keys per tile; NS pipeline stages;
// BF: bf16 cache (bf16 mma, Q split in hi + lo), else f16 mma (f16 cache, or f32 when kv_f32).
// BULK (decode, THREADS = 2·BC): K/V tiles by cp.async.bulk into an mbarrier ring on sm_90+
// (the cp.async loader below sm_90). EARLY: the kernel's PDL prologue — batch arrays, key range
// and (bulk loader) the first tiles' block-table entries — runs before griddepcontrol.wait. The
// batch arrays are step inputs the host writes (Backend::write: a copy, not a kernel, so every
// later kernel starts after it completed); q, the cache, the partials, `out` and the counters
// are touched only after the wait (they may belong to the previous kernels). Every CTA waits
// before it exits (a grid that ends without waiting would end the dependency chain early), and
// lets the next kernel launch only after its wait: triggering first let a prefill call's next
// grid sit on the SMs while the one before still ran (bench: prefill 4096 +10 %). Without
// EARLY the caller waits first.
#define EARLY_KV_SEQS 8
#define ATTN_LEAVE          \
    {                       \
        if (EARLY) pdl_enter(); \
        return;             \
    }
template <int HD, int WM, int WN, int BC, int NS, bool BF, bool BULK = false, bool EARLY = false, bool PAIR_ = false,
          bool QREG_ = false>
__device__ __forceinline__ void attn_body(const AttnArgs& a) {
    constexpr bool DECODE = (WN > 1);
    constexpr int ROWS = 16 * WM, THREADS = 32 * WM * WN, KW = BC / WN;
    constexpr int LD = HD + 8, NQ = BF ? 2 : 1;
    constexpr int NT_S = KW / 8, NT_O = HD / 8, KS = HD / 16;
    static_assert(WM * WN == 4 && KW % 16 == 0 && KS % 2 == 0, "unsupported attention config");
    extern __shared__ uint4 smem_raw[];
    u16* Qs = (u16*)smem_raw;            // [NQ][ROWS][LD]: scale·q rounded (bf16: hi, then lo)
    u16* KVs = Qs + NQ * ROWS * LD;      // [NS][K, V][BC][LD]
    constexpr bool USE_BULK = BULK && DECODE && ATTN_BULK;
    constexpr bool PAIR = PAIR_ && USE_BULK;  // pair layout only with the bulk loader
    constexpr bool QREG = QREG_ && DECODE;    // Q fragments held in registers across tiles
    static_assert(!BULK || (DECODE && THREADS == 2 * BC), "bulk loader: one thread per K or V row");
    __shared__ alignas(8) u64 bars[NS];        // bulk: one mbarrier per ring stage

    // ---- which rows and keys this CTA owns
    const int s = blockIdx.z, g = blockIdx.y;
    // Cluster merge: a row tile's splits are consecutive in x (one cluster); else row tiles are.
    const bool CL = DECODE && a.cluster != 0;
    const int z = CL ? blockIdx.x % a.splits : blockIdx.x / a.row_tiles;
    const int rt0 = CL ? blockIdx.x / a.splits : blockIdx.x % a.row_tiles;
    int q0, q_len, kv_len;
    if (!seq_ok(a, s, q0, q_len, kv_len)) ATTN_LEAVE
    if (DECODE ? (q_len > a.qd) : (q_len <= a.qd)) ATTN_LEAVE
    const int nrows = q_len * a.group;
    const int r0 = (DECODE ? rt0 : a.row_tiles - 1 - rt0) * ROWS;
    if (r0 >= nrows) ATTN_LEAVE
    const int r_end = min(r0 + ROWS, nrows);
    int klo, khi;
    key_range(a, q_len, kv_len, r0, r_end, klo, khi);
    bool direct = true;
    if (DECODE) {
        const int z0 = klo / a.chunk, z1 = (khi - 1) / a.chunk;
        direct = (z0 == z1);
        if (z < z0 || z > z1) {
            // A split without keys. In a cluster that merges (not direct) it still takes part
            // in the merge's two cluster barriers, with an empty state.
            if (!CL || direct) ATTN_LEAVE
            klo = khi = 0;
        } else {
            klo = max(klo, z * a.chunk);
            khi = min(khi, (z + 1) * a.chunk);
        }
    }

    const int warp = threadIdx.x / KILN_WARP, lane = threadIdx.x % KILN_WARP;
    const int wm = warp % WM, wn = warp / WM;
    const int gid = lane >> 2, tig = lane & 3;
    const int first_pos = kv_len - q_len;
    // Key bounds of this thread's two fragment rows (gid and gid + 8 of its warp's 16).
    int lo_r[2], hi_r[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int r = r0 + wm * 16 + gid + 8 * i;
        lo_r[i] = 1;
        hi_r[i] = 0;  // padding rows keep nothing
        if (r < r_end) {
            const int pos = first_pos + r / a.group;
            lo_r[i] = max(klo, a.window > 0 ? pos + 1 - a.window : 0);
            hi_r[i] = min(khi, a.causal ? pos + 1 : kv_len);
        }
    }

    // ---- main loop over key tiles, NS-stage ring (cp.async groups or bulk copies + mbarriers)
    const int t_begin = klo / BC, t_end = (khi + BC - 1) / BC;
    float o[NT_O][4];
#pragma unroll
    for (int n = 0; n < NT_O; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m_r[2] = {NEG_INF, NEG_INF}, l_r[2] = {0.0f, 0.0f};
    const u32 bar0 = smem_addr(bars);  // stage st: bar0 + 8·st
    if (USE_BULK) {
        if (threadIdx.x < NS) mbar_init(bar0 + 8 * threadIdx.x, THREADS);
        __syncthreads();
    }
    // The first NS−1 tiles. Bulk: this thread's block ids are read before the PDL wait (EARLY).
    int pblk[NS > 1 ? NS - 1 : 1];
#pragma unroll
    for (int st = 0; st < NS - 1; st++)
        pblk[st] = (USE_BULK && t_begin + st < t_end) ? kv_block_bulk<BC>(a, s, t_begin + st, klo, khi) : -1;
    // Bulk: the block id of the next tile to request, read one iteration before its copy is
    // issued (its latency then hides behind a tile's math instead of stalling the issue).
    int nblk = (USE_BULK && t_begin + NS - 1 < t_end) ? kv_block_bulk<BC>(a, s, t_begin + NS - 1, klo, khi) : -1;
    // Bulk + EARLY: a thread whose row(s) of a first tile hold keys older than this step's
    // (position < kv_len − q_len: cached by earlier steps, whose kernels all finished before the
    // previous kernel's wait returned; only this step's rows are the previous kernel's,
    // rope_kv_append's) issues that copy before the wait, so the first tiles' DRAM latency
    // overlaps the previous kernel. Rows outside [klo, khi) are zero-filled (shared memory only).
    // Only for batches of ≤ EARLY_KV_SEQS sequences: measured on an H200 (BENCHMARKS.md stop 24)
    // it took the batch-1 decode at ctx 4096 from 13.5 to 12.5 µs and a TP2 rank's from 6.0 to
    // 5.0, but made batch 32 at ctx 4096 / 16384 (F16) 3–4.5 % slower.
    bool early[NS > 1 ? NS - 1 : 1];
#pragma unroll
    for (int st = 0; st < NS - 1; st++) {
        const int t = t_begin + st;
        const int last = t * BC + (int)(threadIdx.x % BC) + (PAIR ? 1 : 0);  // newest key this thread copies
        early[st] = USE_BULK && EARLY && a.n_seqs <= EARLY_KV_SEQS && t < t_end && last < first_pos;
        if (early[st]) {
            u16* Ks = KVs + st * 2 * BC * LD;
            kv_issue_bulk<HD, BC, PAIR>(a, s, g, t, pblk[st], Ks, Ks + BC * LD, bar0 + 8 * st, klo, khi);
        }
    }
    if (EARLY) pdl_enter();  // wait, then let the next kernel launch (as the non-EARLY kernels)
#pragma unroll
    for (int st = 0; st < NS - 1; st++) {
        if (t_begin + st < t_end && !early[st]) {
            u16* Ks = KVs + st * 2 * BC * LD;
            if (USE_BULK)
                kv_issue_bulk<HD, BC, PAIR>(a, s, g, t_begin + st, pblk[st], Ks, Ks + BC * LD, bar0 + 8 * st, klo, khi);
            else load_kv<HD, BC, THREADS>(a, s, g, t_begin + st, klo, khi, Ks, Ks + BC * LD);
        }
        if (!USE_BULK) cp_async_commit();
    }
    // ---- Q tile → shared memory (zeros past r_end), while the first K/V tiles are in flight
    for (int i = threadIdx.x; i < ROWS * (HD / 8); i += THREADS) {
        const int rr = i / (HD / 8), c = i % (HD / 8);
        const int r = r0 + rr;
        float v[8];
#pragma unroll
        for (int e = 0; e < 8; e++) v[e] = 0.0f;
        if (r < r_end) {
            const int j = r / a.group, hh = r % a.group;
            const float* src = a.q + ((i64)(q0 + j) * a.n_heads + g * a.group + hh) * HD + c * 8;
#pragma unroll
            for (int e = 0; e < 8; e++) v[e] = __ldg(src + e) * a.scale;
        }
        uint4 hi = make_uint4(pack2<BF>(v[0], v[1]), pack2<BF>(v[2], v[3]), pack2<BF>(v[4], v[5]), pack2<BF>(v[6], v[7]));
        *(uint4*)(Qs + rr * LD + c * 8) = hi;
        if (BF) {
            const u32 h[4] = {hi.x, hi.y, hi.z, hi.w};
            u32 l[4];
#pragma unroll
            for (int e = 0; e < 4; e++)
                l[e] = pack2<BF>(v[2 * e] - lo16_to_f32<BF>(h[e]), v[2 * e + 1] - hi16_to_f32<BF>(h[e]));
            *(uint4*)(Qs + (NQ - 1) * ROWS * LD + rr * LD + c * 8) = make_uint4(l[0], l[1], l[2], l[3]);
        }
    }

    // QREG: Q's A fragments [NQ][KS][4] for the whole call (decode: registers are not what limits
    // occupancy; shared memory is).
    u32 qreg[QREG ? NQ : 1][QREG ? KS : 1][4];
    const int a_row0 = (lane & 7) + ((lane >> 3) & 1) * 8, a_col0 = (lane >> 4) * 8;
    for (int t = t_begin; t < t_end; t++) {
        const int it = t - t_begin;
        {
            const int tn = t + NS - 1;
            if (tn < t_end) {
                const int st = (it + NS - 1) % NS;
                u16* Ks = KVs + st * 2 * BC * LD;
                if (USE_BULK) {
                    const int blk = nblk;
                    nblk = tn + 1 < t_end ? kv_block_bulk<BC>(a, s, tn + 1, klo, khi) : -1;
                    kv_issue_bulk<HD, BC, PAIR>(a, s, g, tn, blk, Ks, Ks + BC * LD, bar0 + 8 * st, klo, khi);
                } else {
                    load_kv<HD, BC, THREADS>(a, s, g, tn, klo, khi, Ks, Ks + BC * LD);
                }
            }
        }
        if (USE_BULK) {
            if (it == 0) __syncthreads();  // the Q tile
            mbar_wait(bar0 + 8 * (it % NS), (it / NS) & 1);
        } else {
            cp_async_commit();
            cp_async_wait<NS - 1>();
            __syncthreads();
        }
        const u16* Ks = KVs + (it % NS) * 2 * BC * LD;
        const u16* Vs = Ks + BC * LD;
        if (QREG && it == 0) {
            // The Q tile is visible (the barrier above): its fragments for all KS k-steps.
#pragma unroll
            for (int qp = 0; qp < NQ; qp++)
#pragma unroll
                for (int kk = 0; kk < KS; kk++)
                    ldsm4(smem_addr(Qs + qp * ROWS * LD + (wm * 16 + a_row0) * LD + kk * 16 + a_col0), qreg[qp][kk]);
        }

        // S = (scale·Q) · Kᵀ for this warp's 16 rows × KW keys. QREG: two accumulator chains per
        // n-tile (k-step parity, or hi/lo part), summed after: half the dependent mma chain.
        float sacc[NT_S][4], sacc2[QREG ? NT_S : 1][4];
#pragma unroll
        for (int n = 0; n < NT_S; n++) sacc[n][0] = sacc[n][1] = sacc[n][2] = sacc[n][3] = 0.0f;
#pragma unroll
        for (int n = 0; n < (QREG ? NT_S : 1); n++) sacc2[n][0] = sacc2[n][1] = sacc2[n][2] = sacc2[n][3] = 0.0f;
        // ldmatrix lane offsets: A-style (rows (lane&7) + 8·bit3, col 8·bit4) and B-style (row lane&7, col 8·(lane>>3)).
        const int a_row = a_row0, a_col = a_col0;
#pragma unroll
        for (int kk = 0; kk < KS; kk += 2) {
            u32 qa[NQ][2][4];
#pragma unroll
            for (int qp = 0; qp < NQ; qp++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    if (QREG) {
#pragma unroll
                        for (int e = 0; e < 4; e++) qa[qp][h][e] = qreg[qp][QREG ? kk + h : 0][e];
                    } else {
                        ldsm4(smem_addr(Qs + qp * ROWS * LD + (wm * 16 + a_row) * LD + (kk + h) * 16 + a_col), qa[qp][h]);
                    }
                }
#pragma unroll
            for (int n = 0; n < NT_S; n++) {
                u32 b[4];  // b0, b1 of k-step kk, then of kk + 1
                ldsm4(smem_addr(Ks + kv_soff<HD, PAIR>(wn * KW + n * 8 + (lane & 7)) + kk * 16 + (lane >> 3) * 8), b);
#pragma unroll
                for (int qp = 0; qp < NQ; qp++) {
                    if (QREG) {
                        mma16816<BF>((qp & 1) ? sacc2[QREG ? n : 0] : sacc[n], qa[qp][0], b[0], b[1]);
                        mma16816<BF>((qp & 1) ? sacc[n] : sacc2[QREG ? n : 0], qa[qp][1], b[2], b[3]);
                    } else {
                        mma16816<BF>(sacc[n], qa[qp][0], b[0], b[1]);
                        mma16816<BF>(sacc[n], qa[qp][1], b[2], b[3]);
                    }
                }
            }
        }
        if (QREG) {
#pragma unroll
            for (int n = 0; n < NT_S; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) sacc[n][e] += sacc2[QREG ? n : 0][e];
        }

        // softcap, mask, online softmax (log2 domain). Element e of n-tile n: row gid + 8·(e>>1),
        // key t·BC + wn·KW + 8n + 2·tig + (e&1).
        const int kbase = t * BC + wn * KW + 2 * tig;
        float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
        for (int n = 0; n < NT_S; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int i = e >> 1, key = kbase + n * 8 + (e & 1);
                float v = sacc[n][e];
                if (a.softcap > 0.0f) v = a.softcap * tanhf(v / a.softcap);
                v = (key >= lo_r[i] && key < hi_r[i]) ? v * LOG2E : NEG_INF;
                sacc[n][e] = v;
                mx[i] = fmaxf(mx[i], v);
            }
        float ref[2];
#pragma unroll
        for (int i = 0; i < 2; i++) {
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
            const float m_new = fmaxf(m_r[i], mx[i]);
            ref[i] = (m_new == NEG_INF) ? 0.0f : m_new;  // no key yet: keep p = 0, acc = 0
            const float corr = exp2f(m_r[i] - ref[i]);
            m_r[i] = m_new;
            l_r[i] *= corr;
#pragma unroll
            for (int n = 0; n < NT_O; n++) {
                o[n][2 * i] *= corr;
                o[n][2 * i + 1] *= corr;
            }
        }
#pragma unroll
        for (int n = 0; n < NT_S; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float p = exp2f(sacc[n][e] - ref[e >> 1]);
                sacc[n][e] = p;
                l_r[e >> 1] += p;
            }

        // O += P · V: the S fragments of n-tiles 2kt, 2kt+1 are the A fragment of k-step kt.
#pragma unroll
        for (int kt = 0; kt < KW / 16; kt++) {
            const u32 pa[4] = {pack2<BF>(sacc[2 * kt][0], sacc[2 * kt][1]), pack2<BF>(sacc[2 * kt][2], sacc[2 * kt][3]),
                               pack2<BF>(sacc[2 * kt + 1][0], sacc[2 * kt + 1][1]),
                               pack2<BF>(sacc[2 * kt + 1][2], sacc[2 * kt + 1][3])};
#pragma unroll
            for (int nd = 0; nd < HD / 16; nd++) {
                u32 b[4];  // b0, b1 of dims 16nd..16nd+7, then of 16nd+8..
                ldsm4_t(smem_addr(Vs + kv_soff<HD, PAIR>(wn * KW + kt * 16 + a_row) + nd * 16 + a_col), b);
                mma16816<BF>(o[2 * nd], pa, b[0], b[1]);
                mma16816<BF>(o[2 * nd + 1], pa, b[2], b[3]);
            }
        }
        __syncthreads();  // every warp is done with this stage before it is refilled
    }
    cp_async_wait<0>();

#pragma unroll
    for (int i = 0; i < 2; i++) {
        l_r[i] += __shfl_xor_sync(0xffffffffu, l_r[i], 1);
        l_r[i] += __shfl_xor_sync(0xffffffffu, l_r[i], 2);
    }
    if (!DECODE) {
        // Prefill: each warp owns its rows; write o / l.
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int r = r0 + wm * 16 + gid + 8 * i;
            if (r >= r_end) continue;
            const int j = r / a.group, hh = r % a.group;
            float* dst = a.out + ((i64)(q0 + j) * a.n_heads + g * a.group + hh) * HD;
            const float inv = l_r[i] > 0.0f ? 1.0f / l_r[i] : 0.0f;
#pragma unroll
            for (int n = 0; n < NT_O; n++) {
                dst[n * 8 + 2 * tig] = o[n][2 * i] * inv;
                dst[n * 8 + 2 * tig + 1] = o[n][2 * i + 1] * inv;
            }
        }
        return;
    }

    // Decode: merge the WN warps' states ([WN][16][HD] acc, [WN][16][2] m, l) in shared memory.
    __syncthreads();
    float* wacc = (float*)KVs;
    float* wml = wacc + WN * 16 * HD;
    __shared__ float2 cl_ml[16];  // cluster merge: this CTA's (max, sum) per row
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int rl = gid + 8 * i;
#pragma unroll
        for (int n = 0; n < NT_O; n++) {
            wacc[(wn * 16 + rl) * HD + n * 8 + 2 * tig] = o[n][2 * i];
            wacc[(wn * 16 + rl) * HD + n * 8 + 2 * tig + 1] = o[n][2 * i + 1];
        }
        if (tig == 0) {
            wml[(wn * 16 + rl) * 2] = m_r[i];
            wml[(wn * 16 + rl) * 2 + 1] = l_r[i];
        }
    }
    __syncthreads();
    // Only rows r0..r_end-1 exist (4 of 16 for one Llama-3 decode token).
    for (int idx = threadIdx.x; idx < (r_end - r0) * HD; idx += THREADS) {
        const int rl = idx / HD, d = idx % HD, r = r0 + rl;
        float M = NEG_INF;
#pragma unroll
        for (int w = 0; w < WN; w++) M = fmaxf(M, wml[(w * 16 + rl) * 2]);
        const float mref = (M == NEG_INF) ? 0.0f : M;
        float L = 0.0f, O = 0.0f;
#pragma unroll
        for (int w = 0; w < WN; w++) {
            const float f = exp2f(wml[(w * 16 + rl) * 2] - mref);
            L += wml[(w * 16 + rl) * 2 + 1] * f;
            O += wacc[(w * 16 + rl) * HD + d] * f;
        }
        if (direct) {
            const int j = r / a.group, hh = r % a.group;
            a.out[((i64)(q0 + j) * a.n_heads + g * a.group + hh) * HD + d] = L > 0.0f ? O / L : 0.0f;
        } else if (CL) {
            // In place: only this thread reads wacc[0][rl][d] (above), and it has.
            wacc[rl * HD + d] = O;
            if (d == 0) cl_ml[rl] = make_float2(M, L);
        } else {
            const i64 slot = (((i64)s * a.n_kv + g) * a.rd + r) * a.splits + z;
            a.part_acc[slot * HD + d] = O;
            if (d == 0) {
                a.part_ml[slot * 2] = M;
                a.part_ml[slot * 2 + 1] = L;
            }
        }
    }
    if (CL && !direct) {
        cluster_merge<HD>(a, wacc, cl_ml, g, q0, r0, r_end);
        return;
    }
    if (direct || a.counters == nullptr) return;

    // Fused merge: the last of the row tile's splits to arrive merges every split's partials
    // (threadFenceReduction pattern) and sets the counter back to 0 for the next call.
    __shared__ int is_last;
    __threadfence();  // this CTA's partials are visible device-wide before it counts itself
    __syncthreads();
    if (threadIdx.x == 0) {
        int k0, k1;  // the row tile's whole key range (klo, khi are this split's)
        key_range(a, q_len, kv_len, r0, r_end, k0, k1);
        const int nz = (k1 - 1) / a.chunk - k0 / a.chunk + 1;
        int* cnt = a.counters + ((i64)s * a.n_kv + g) * a.row_tiles + rt0;
        is_last = (atomicAdd(cnt, 1) == nz - 1);
        if (is_last) atomicExch(cnt, 0);
    }
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    merge_splits<HD>(a, s, g, q_len, kv_len, q0, r0, r_end);
}

// Merge the split-KV partials of decode row tiles whose keys span more than one chunk (when the
// decode kernel did not: counters null). Grid (decode row tiles, n_kv, n_seqs), block 128.
// Bytes: (HD + 2)·4 per split and row read, HD·4 written per row.
template <int HD>
__device__ __forceinline__ void combine_body(const AttnArgs& a) {
    const int rt = blockIdx.x, g = blockIdx.y, s = blockIdx.z;
    int q0, q_len, kv_len;
    if (!seq_ok(a, s, q0, q_len, kv_len) || q_len > a.qd) return;
    const int nrows = q_len * a.group;
    const int r0 = rt * 16;
    if (r0 >= nrows) return;
    const int r_end = min(r0 + 16, nrows);
    int klo, khi;
    key_range(a, q_len, kv_len, r0, r_end, klo, khi);
    if (klo / a.chunk == (khi - 1) / a.chunk) return;  // written directly by the decode kernel
    merge_splits<HD>(a, s, g, q_len, kv_len, q0, r0, r_end);
}

// attn_<decode|prefill>_hd<HD>_<f16|bf16>_s<NS> (f32 caches use the f16 kernels). Decode:
// WM 1 × WN 4, 64-key tiles, bulk-copy loader on sm_90+ (cp.async below), early PDL prologue.
// Prefill: WM 4 × WN 1, 64-key tiles (32 for HD 256), waits first. The host takes, per call,
// the variant src/ops/attention.rs `VARIANTS` lists for the plan whose shared memory fits the
// device: hd128 decode NS = 3, except bf16 caches with several KV splits (NS = 2; `decode_stages`);
// NS = 1 fallbacks exist only where the faster variant needs more than 99 KiB (sm_86/sm_89).
#define ATTN_KERNEL(mode, HD, WM, WN, BC, NS, dts, BF)                                         \
    extern "C" __global__ void __launch_bounds__(128)                                          \
        attn_##mode##_hd##HD##_##dts##_s##NS(const AttnArgs a) {                                \
        pdl_enter();                                                                            \
        attn_body<HD, WM, WN, BC, NS, BF>(a);                                                   \
    }
#define ATTN_BOTH(mode, HD, WM, WN, BC, NS)          \
    ATTN_KERNEL(mode, HD, WM, WN, BC, NS, f16, false) \
    ATTN_KERNEL(mode, HD, WM, WN, BC, NS, bf16, true)
// Decode kernels: attn_body waits itself (EARLY), after its prologue. The `p` forms copy K/V
// rows in pairs (PAIR) and, for HD ≤ 128, hold Q's fragments in registers (QREG: at HD 256 they
// would spill): faster when a CTA streams many tiles, slower inside a decode step when it has
// one or two (the host's rule: src/ops/attention.rs `decode_paired`).
#define ATTN_DECODE1(HD, NS, dts, BF)                                                           \
    extern "C" __global__ void __launch_bounds__(128) attn_decode_hd##HD##_##dts##_s##NS(const AttnArgs a) { \
        attn_body<HD, 1, 4, 64, NS, BF, true, true>(a);                                         \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(128) attn_decode_hd##HD##_##dts##_s##NS##p(const AttnArgs a) { \
        attn_body<HD, 1, 4, 64, NS, BF, true, true, true, (HD <= 128)>(a);                      \
    }
#define ATTN_DECODE(HD, NS) \
    ATTN_DECODE1(HD, NS, f16, false) \
    ATTN_DECODE1(HD, NS, bf16, true)

ATTN_DECODE(64, 3)
ATTN_DECODE(128, 2)
ATTN_DECODE(128, 3)
ATTN_DECODE(256, 2)
ATTN_DECODE(256, 1)
ATTN_BOTH(prefill, 64, 4, 1, 64, 2)
ATTN_BOTH(prefill, 128, 4, 1, 64, 2)
ATTN_KERNEL(prefill, 128, 4, 1, 64, 1, bf16, true)
ATTN_BOTH(prefill, 256, 4, 1, 32, 1)

// attn_combine_hd<HD>: the split merge as its own launch (the host's choice when the decode
// kernel does not merge: no counters).
#define ATTN_COMBINE(HD) \
    extern "C" __global__ void __launch_bounds__(128) attn_combine_hd##HD(const AttnArgs a) { pdl_enter(); combine_body<HD>(a); }
ATTN_COMBINE(64)
ATTN_COMBINE(128)
ATTN_COMBINE(256)
