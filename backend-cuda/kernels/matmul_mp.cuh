// matmul_mp.cuh: mp4k, the Q4_K matmul for 2 ≤ m ≤ 8 (16 in the lab) with the weight
// streamed through per-warp shared-memory rings by the copy engine (gemvp's pipeline,
// gemv_pipe.cuh) and decoded by int8 tensor cores (mq4k's fragments and epilogue, matmul_mma.cu;
// included there after mq4k, whose mma_k32 and MMA_MAGIC_F it uses). Issue 3.
//
// Why: mq4k stages W and x for a 128-row block through a block-wide cp.async ring with a
// __syncthreads per k stage; at m ≤ 16 ncu shows it issue-latency bound with few warps and the
// DRAM 32–38 % busy. Here each warp owns its own ring and its own W rows: lanes 0..R−1 each
// issue one `cp.async.bulk` of a W row's U blocks per stage (mp4k_*; the copies of one
// instruction are a serial per-lane loop in SASS), or lane 0 one `cp.async.bulk.tensor.2d` of
// the whole stage (mpt4k_*, W described by a CUtensorMap), completing on one mbarrier per
// stage, D − 1 stages ahead of the one the warp decodes; no block-wide barrier until the final
// k-split sum.
//
// Thread mapping: grid ceil(n / R) blocks (grouped forms mp4kg/mpt4kg: Σ_s ceil(n_s / R), see
// below), R = 16·WT W rows per block (one group); block S
// warps (S = blockDim.x / 32, host-chosen) splitting the group's nb = k/256 block columns into
// contiguous ranges (warp z: [z·P, z·P + P), P = ceil(nb / S)). A warp's stage = U block
// columns of its R rows (R·U·144 bytes; row stride U·144 (+16 when U % 4 == 0) so the 8-byte
// fragment loads are bank-conflict free). Per block column, exactly mq4k's decode: lane
// (g, t) = (lane / 4, lane % 4) decodes the (scale, min) of sub-block pair t of rows g, g + 8
// (shared by shuffles), one 8-byte LDS per row and pair gives the A fragments of both
// sub-blocks (AND 0x0F0F0F0F / SHR 4 + AND), one `mma.sync.m16n8k32.s8` per (16-row tile,
// sub-block, n8 tile), 3 FFMA per output and sub-block. x (mp_quant_x: int8 per 32 with (d,
// d·Σq), stored in fragment order) is read per lane from L1/L2: per sub-block pair and n8 tile
// one 16-byte load of both B fragments and two of scales, before the stage's mbarrier wait
// (all four pairs of the block column when WT·NT = 1, kiln's configuration; else the first
// pair, then one pair ahead). NT = 1 (m ≤ 8; kiln) or 2
// (m ≤ 16; the lab only: it lost to mq4k/mh4k) n8 tiles. The S warps' sums meet in shared
// memory (added in warp order: deterministic) and warp 0 stores y.
// Requires (host-checked): k a multiple of 256, W 16-byte aligned; sm_90 for the copy engine
// (below sm_90 the ring is filled by ordinary warp loads: correct, unpipelined, not dispatched).
// Bytes: W once (n·k·0.5625 from DRAM), x mp·k·1.25 per group (L1/L2), y m·n·4.
// FLOPs 2·m·n·k (int8 MACs) + 6·m·n·k/32 f32.
// Shared memory: S·(D·R·RS + round16(8·D)) + (S > 1 ? S·WT·NT·512 : 0) bytes (MP_SMEM).
#pragma once
#include "bulk.cuh"

// A CUDA tensor map (CUtensorMap: 128 opaque bytes), passed by value as a __grid_constant__
// kernel parameter: W seen as a 2-D tensor of u64 [n][k/256·18] (dim 0 = the row's 8-byte
// words), box {18·U, 16·WT}, rows past n read as zeros.
struct __align__(64) MpTmap {
    u64 v[16];
};

// Geometry of mp4k<WT, NT, D, U> (the host computes the same: ops/matmul_mma/mp4k.rs).
template <int WT, int NT, int D, int U, bool TMA = false>
struct MpGeo {
    static constexpr int R = 16 * WT;                         // W rows per group (= per block)
    static constexpr int RS = U * 144 + (!TMA && U % 4 == 0 ? 16 : 0);  // row stride in a stage
    static constexpr int STAGE = R * RS;
    static constexpr int RING = D * STAGE;                    // ring bytes per warp
    static constexpr int BARS = (8 * D + 15) / 16 * 16;       // mbarriers per warp
    static constexpr int RED = WT * NT * 4 * KILN_WARP * 4;   // k-split sums per warp
};
#define MP_SMEM(WT, NT, D, U, S) \
    ((S) * (MpGeo<WT, NT, D, U>::RING + MpGeo<WT, NT, D, U>::BARS) + ((S) > 1 ? (S) * MpGeo<WT, NT, D, U>::RED : 0))

// mp_quant_x: x rounded exactly as mq_quant_x rounds it (int8 per 32 elements, (d, d·Σq)),
// stored in mp4k's fragment order so that a lane's x of a sub-block pair is one coalesced
// 16-byte load and its scales two 16-byte loads (mq_quant_x's row-major layout costs 8 cache
// lines per fragment load). xq [k/256][mp/8][4 pairs cc][32 lanes][16 B]: lane (g, t) holds
// bytes 8t..8t+7 of sub-blocks 2cc (first 8) and 2cc + 1 of x row nt·8 + g. xs float2
// [k/256][mp/8][cc][t][h][e]: (d, d·Σq) of sub-block 2cc + h of x row nt·8 + 2t + e. Rows
// m..mp−1 are zero. One warp per (block column, x row), grid-stride. Reads m·k·4 bytes,
// writes mp·k·1.25.
extern "C" __global__ void __launch_bounds__(256) mp_quant_x(const float* __restrict__ x, u8* __restrict__ xq,
                                                             float2* __restrict__ xs, int k, int m, int mp) {
    pdl_launch_dependents();
    pdl_wait();  // PDL launch: x and the scratch may still be in use by the previous kernel
    const int nb = k / 256, nt8 = mp / 8;
    const i64 warps = (i64)nb * mp;
    const int lane = threadIdx.x % KILN_WARP;
    const int sb = lane >> 2, cc = sb >> 1, h = sb & 1, t = lane & 3;
    for (i64 wi = ((i64)blockIdx.x * blockDim.x + threadIdx.x) / KILN_WARP; wi < warps;
         wi += (i64)gridDim.x * blockDim.x / KILN_WARP) {
        const int blk = (int)(wi / mp), row = (int)(wi % mp);
        u32 w[2];
        const float2 ds = q4k_x_round8(x, k, m, row, blk, lane, w);
        const int nt = row >> 3, g = row & 7;
        const i64 tile = ((i64)blk * nt8 + nt) * 4 + cc;
        *(uint2*)(xq + (tile * KILN_WARP + g * 4 + t) * 16 + 8 * h) = make_uint2(w[0], w[1]);
        if (t == 0) xs[((tile * 4 + (g >> 1)) * 2 + h) * 2 + (g & 1)] = ds;
    }
}

// The x of one sub-block pair cc of a block column for this lane (mp_quant_x's layout): B
// fragments of sub-blocks 2cc + h (x row nt·8 + g, bytes 8t..8t+7) and (d, d·Σq) of x rows
// nt·8 + 2t, + 1.
template <int NT>
struct MpX {
    uint4 b[NT];
    float4 s[NT][2];
    __device__ __forceinline__ void load(const u8* __restrict__ xq, const float2* __restrict__ xs, i64 blk, int mp,
                                         int lane, int cc) {
        const int t = lane & 3;
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            const i64 tile = (blk * (mp / 8) + nt) * 4 + cc;
            b[nt] = __ldg((const uint4*)(xq + (tile * KILN_WARP + lane) * 16));
#pragma unroll
            for (int h = 0; h < 2; h++) s[nt][h] = __ldg((const float4*)(xs + ((tile * 4 + t) * 2 + h) * 2));
        }
    }
};
// x of a block column: all four pairs (FULL) or pair 0 (the rest loaded one pair ahead).
template <int NT, bool FULL>
__device__ __forceinline__ void mp_load_x(MpX<NT> (&xr)[4], const u8* xq, const float2* xs, i64 blk, int mp, int lane) {
#pragma unroll
    for (int cc = 0; cc < (FULL ? 4 : 1); cc++) xr[cc].load(xq, xs, blk, mp, lane, cc);
}

// One block column: R = 16·WT rows at sw (row stride RS) against the x in xr (block column
// blk; pairs 1..3 loaded here unless FULL).
template <int WT, int NT, int RS, bool FULL>
__device__ __forceinline__ void mp_block(const u8* sw, MpX<NT> (&xr)[4], const u8* xq, const float2* xs, i64 blk,
                                         int mp, int lane, float (&acc)[WT][NT][4]) {
    const int g = lane >> 2, t = lane & 3;
    float my_dl[WT][2][2], my_ml[WT][2][2];  // [tile][sub-block 2t + h][row g / g + 8]
#pragma unroll
    for (int wt = 0; wt < WT; wt++)
#pragma unroll
        for (int r = 0; r < 2; r++)  // d, dmin, scales[12] of rows g, g + 8
            q4k_row_scales(*(const uint4*)(sw + (wt * 16 + g + 8 * r) * RS), t, r, my_dl[wt], my_ml[wt]);
#pragma unroll
    for (int cc = 0; cc < 4; cc++) {
        if (!FULL && cc < 3) xr[cc + 1].load(xq, xs, blk, mp, lane, cc + 1);
        u32 a[WT][2][4];
        float dl[WT][2][2], nml[WT][2][2];
        const int src = (lane & ~3) | cc;
#pragma unroll
        for (int wt = 0; wt < WT; wt++) {
            q4k_a_frags(a[wt], *(const uint2*)(sw + (wt * 16 + g) * RS + 16 + 32 * cc + 8 * t),
                        *(const uint2*)(sw + (wt * 16 + g + 8) * RS + 16 + 32 * cc + 8 * t));
            q4k_shfl_scales(dl[wt], nml[wt], my_dl[wt], my_ml[wt], src);
        }
#pragma unroll
        for (int h = 0; h < 2; h++) {
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                const uint2 bq = h ? make_uint2(xr[cc].b[nt].z, xr[cc].b[nt].w) : make_uint2(xr[cc].b[nt].x, xr[cc].b[nt].y);
                const float4 xv = xr[cc].s[nt][h];
                // −M·d exactly (d has 22 significant bits): fmaf(M + S, d, −M·d) = d·S.
                const float xm0 = -MMA_MAGIC_F * xv.x, xm1 = -MMA_MAGIC_F * xv.z;
#pragma unroll
                for (int wt = 0; wt < WT; wt++) {
                    int c[4];
                    mma_k32(c, a[wt][h], bq.x, bq.y);
                    float* o = acc[wt][nt];
                    o[0] = fmaf(nml[wt][h][0], xv.y, fmaf(dl[wt][h][0], fmaf(__int_as_float(c[0]), xv.x, xm0), o[0]));
                    o[1] = fmaf(nml[wt][h][0], xv.w, fmaf(dl[wt][h][0], fmaf(__int_as_float(c[1]), xv.z, xm1), o[1]));
                    o[2] = fmaf(nml[wt][h][1], xv.y, fmaf(dl[wt][h][1], fmaf(__int_as_float(c[2]), xv.x, xm0), o[2]));
                    o[3] = fmaf(nml[wt][h][1], xv.w, fmaf(dl[wt][h][1], fmaf(__int_as_float(c[3]), xv.z, xm1), o[3]));
                }
            }
        }
    }
}

template <int WT, int NT, int D, int U, bool TMA>
__device__ __forceinline__ void mp4k_body(const u8* __restrict__ w, const u8* __restrict__ xq,
                                          const float2* __restrict__ xs, float* __restrict__ y, int n, int k,
                                          int m, int mp, const MpTmap* tm, int gi) {
    typedef MpGeo<WT, NT, D, U, TMA> G;
    static_assert(D >= 2 && U >= 1 && G::R <= KILN_WARP, "mp4k: at least 2 stages, one copy lane per row");
    extern __shared__ __align__(128) u8 mp_smem[];
    const int S = (int)(blockDim.x / KILN_WARP);
    const int lane = threadIdx.x % KILN_WARP, sub = threadIdx.x / KILN_WARP;
    const int g = lane >> 2, t = lane & 3;
    constexpr bool FULL = NT * WT == 1;  // x of a whole block column in registers (no spills)
    const int nb = k / 256;
    const int r0 = gi * G::R;  // this block's group of W rows
    const int per = (nb + S - 1) / S;
    const int kb0 = sub * per;
    const int cnt = max(0, min(nb, kb0 + per) - kb0);  // this warp's block columns
    const int total = (cnt + U - 1) / U;                // and stages
    u8* ring = mp_smem + sub * G::RING;
    u64* bars = (u64*)(mp_smem + S * G::RING + sub * G::BARS);
    pdl_launch_dependents();  // the next kernel may launch; it waits for this grid to finish

    // Lane rr < R copies row rr (rows past n clamped: valid reads, outputs not written).
    const u8* wrow = w + ((i64)min(r0 + min(lane, G::R - 1), n - 1) * nb + kb0) * 144;
    auto issue = [&](int tt) {
        const int ns = min(U, cnt - tt * U);
        u8* st = ring + (tt % D) * G::STAGE;
#if KILN_BULK
        const u32 bar = smem_addr(bars + tt % D);
        if (TMA) {  // one 2-D copy of the whole stage (the box is always whole: zeros past n)
            if (lane == 0) {
                mbar_arrive_tx(bar, (u32)(G::STAGE));
                asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
                asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];"
                             ::"r"(smem_addr(st)), "l"((u64)tm), "r"((kb0 + tt * U) * 18), "r"(r0), "r"(bar) : "memory");
            }
            return;
        }
        if (lane == 0) mbar_arrive_tx(bar, (u32)(G::R * ns * 144));
        __syncwarp();
        if (lane < G::R) bulk_g2s(smem_addr(st + lane * G::RS), wrow + (i64)tt * U * 144, (u32)(ns * 144), bar);
#else
        for (int rr = 0; rr < G::R; rr++) {
            const u8* s = w + ((i64)min(r0 + rr, n - 1) * nb + kb0 + tt * U) * 144;
            for (int o = 16 * lane; o < ns * 144; o += 16 * KILN_WARP) *(uint4*)(st + rr * G::RS + o) = ld16(s + o);
        }
        __syncwarp();
#endif
    };
#if KILN_BULK
    if (lane == 0)
        for (int s = 0; s < D; s++) mbar_init(smem_addr(bars + s), 1);
    __syncwarp();
#endif
    for (int tt = 0; tt < D && tt < total; tt++) issue(tt);  // W does not depend on earlier kernels
    pdl_wait();  // x is mq_quant_x's output; y may still be read by the previous kernel

    float acc[WT][NT][4];
#pragma unroll
    for (int wt = 0; wt < WT; wt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[wt][nt][e] = 0.0f;

    for (int tt = 0; tt < total; tt++) {
        const int ns = min(U, cnt - tt * U);
        const i64 blk0 = kb0 + tt * U;
        MpX<NT> xr[4];
        mp_load_x<NT, FULL>(xr, xq, xs, blk0, mp, lane);  // before the wait: overlaps the copy
        mbar_wait(smem_addr(bars + tt % D), (u32)((tt / D) & 1));
        const u8* st = ring + (tt % D) * G::STAGE;
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (u >= ns) break;
            if (u > 0) mp_load_x<NT, FULL>(xr, xq, xs, blk0 + u, mp, lane);
            mp_block<WT, NT, G::RS, FULL>(st + u * 144, xr, xq, xs, blk0 + u, mp, lane, acc);
        }
        __syncwarp();  // every lane's reads of this stage are done before it is refilled
        if (tt + D < total) issue(tt + D);
    }

    if (S > 1) {  // the S warps' partial sums, added in warp order by warp 0
        constexpr int K = WT * NT * 4;
        float* red = (float*)(mp_smem + S * (G::RING + G::BARS));
#pragma unroll
        for (int wt = 0; wt < WT; wt++)
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) red[(sub * K + (wt * NT + nt) * 4 + e) * KILN_WARP + lane] = acc[wt][nt][e];
        __syncthreads();
        if (sub == 0) {
#pragma unroll
            for (int wt = 0; wt < WT; wt++)
#pragma unroll
                for (int nt = 0; nt < NT; nt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        float v = 0.0f;
                        for (int z = 0; z < S; z++) v += red[(z * K + (wt * NT + nt) * 4 + e) * KILN_WARP + lane];
                        acc[wt][nt][e] = v;
                    }
        }
    }
    if (sub == 0) {
#pragma unroll
        for (int wt = 0; wt < WT; wt++)
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int wr = r0 + wt * 16 + g + 8 * (e >> 1);
                    const int xr = nt * 8 + 2 * t + (e & 1);
                    if (wr < n && xr < m) y[(i64)xr * n + wr] = acc[wt][nt][e];
                }
    }
}

// mp4k_w<WT>_t<NT>_d<D>_u<U>: block 32·S threads (S ≤ 16), grid ceil(n / (16·WT)), dynamic shared
// memory MP_SMEM(WT, NT, D, U, S).
#define MP4K_KERNEL(WT, NT, D, U)                                                                   \
    extern "C" __global__ void __launch_bounds__(512) mp4k_w##WT##_t##NT##_d##D##_u##U(             \
        const u8* __restrict__ w, const u8* __restrict__ xq, const float2* __restrict__ xs,          \
        float* __restrict__ y, int n, int k, int m, int mp, int spz) {                               \
        mp4k_body<WT, NT, D, U, false>(w, xq, xs, y, n, k, m, mp, nullptr, blockIdx.x);               \
    }
// mpt4k_*: the same with one 2-D tensor copy per stage (tm describes w; sm_90).
#define MPT4K_KERNEL(WT, NT, D, U)                                                                  \
    extern "C" __global__ void __launch_bounds__(512) mpt4k_w##WT##_t##NT##_d##D##_u##U(            \
        const u8* __restrict__ w, const u8* __restrict__ xq, const float2* __restrict__ xs,          \
        float* __restrict__ y, int n, int k, int m, int mp, int spz, const __grid_constant__ MpTmap tm) { \
        mp4k_body<WT, NT, D, U, true>(w, xq, xs, y, n, k, m, mp, &tm, blockIdx.x);                    \
    }

// The grouped forms (`matmul_many`): up to GEMV_NS weights of one x in one grid, blockIdx.x
// numbering the segments' groups of 16·WT rows one after the other (gemv_seg); segment s writes
// its y [m, n_s]. mpt4kg_* takes one tensor map per segment (tms.t[s] describes segment s's W).
struct MpTmaps {
    MpTmap t[GEMV_NS];
};
#define MP4KG_KERNEL(WT, NT, D, U)                                                                  \
    extern "C" __global__ void __launch_bounds__(512) mp4kg_w##WT##_t##NT##_d##D##_u##U(            \
        const GemvSegs sg, const u8* __restrict__ xq, const float2* __restrict__ xs, int k, int m,   \
        int mp) {                                                                                  \
        const GemvSeg s = gemv_seg<GEMV_NS, 16 * WT>(sg, blockIdx.x);                               \
        mp4k_body<WT, NT, D, U, false>(s.body, xq, xs, s.y, s.n, k, m, mp, nullptr, s.g);           \
    }
#define MPT4KG_KERNEL(WT, NT, D, U)                                                                 \
    extern "C" __global__ void __launch_bounds__(512) mpt4kg_w##WT##_t##NT##_d##D##_u##U(           \
        const GemvSegs sg, const u8* __restrict__ xq, const float2* __restrict__ xs, int k, int m,   \
        int mp, const __grid_constant__ MpTmaps tms) {                                              \
        const GemvSeg s = gemv_seg<GEMV_NS, 16 * WT>(sg, blockIdx.x);                               \
        mp4k_body<WT, NT, D, U, true>(s.body, xq, xs, s.y, s.n, k, m, mp, &tms.t[s.seg], s.g);      \
    }
