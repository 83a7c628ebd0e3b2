// matmul_mh.cu: Q4_K on f16 tensor cores for 1 ≤ m ≤ 64 (host: ops/matmul_mma/mh4k.rs; the
// tuner picks it or matmul_mma.cu's int8 mq4k per shape and m; a k split's partial sums go
// through matmul_mma.cu's mma_reduce).
#include "quant.cuh"
#include "mma_ring.cuh"
#include "gemv_segs.cuh"

// mh4k_b<BM>_w<WT>_n<NW>_x<WM>_s<ST>_m<MB>: Q4_K on f16 tensor cores, 1 ≤ m ≤ 64 (issue 6;
// the tuner picks it or mq4k per shape and m). No work per output per sub-block: the 6-bit
// sub-block scale is folded into the weight operand, which stays exact (A = sc·q ≤ 945, an f16
// integer), and x is f16 with one power-of-two scale sx per (x row, block column), so once per
// 256 k: out += sx·(d·P − 32·dmin·Q), P = Σ (sc·q)·x̂ (16 mma into fresh f32 accumulators), Q =
// Σ_sb mn·X_sb/32 (one more m16n8k16: (mn, mn) × the (hi, lo) f16 pair of each sub-block sum).
// H200 lab (14336×4096): m = 16 / 32 / 64 in 21.8 / 27.0 / 39.8 µs (mq4k 23.0 / 32.4 / 51.3).
//
// x: mh_quant_x, one warp per (block column, x row): sx = 2^(e − 14), e = ⌊log2 max|x|⌋ of the
// 256 elements (≥ −112; NaN if one is not finite), x̂ = f16_rn(x / sx) (|x̂| < 2^15: no
// overflow; 11 significant bits, finer than int8 per 32) → xh u16 [k/256][mp][256], each 8
// elements in the order 0 2 1 3 4 6 5 7 (the mma's k order below); X_sb = Σ x̂ per sub-block,
// X_sb/32 as f16 hi + lo → xx u32 [k/256][mp][8]; sx → xsx f32 [k/256][mp]. Reads m·k·4
// bytes, writes mp·k·2.14.
//
// Main kernel: grid, ring, W copies, k split and PDL as mq4k; per stage W [BN][160] | xh
// [BM][512] (16-byte chunk c of row r at c ^ 4·(r & 1): conflict-free B loads) | xx [BM][32]
// | sx [BM]. NW warps, WM of them along m: warp (wn, wm) owns W rows [16·WT·wn, +16·WT) × x
// rows [wm·BM/WM, +BM/WM), WT × BM/(8·WM) tiles of mma.m16n8k16 f16 → f32 (W = A, x = B),
// BN = 16·WT·NW/WM. Fragments (g = lane / 4, t = lane % 4): lane t reads qs bytes 32cc + 8t..+7
// of rows g, g + 8 (8-byte LDS): low nibbles = elements 8t..8t+7 of sub-block 2cc, high = of
// 2cc + 1. LOP3 with 0x64006400 makes f16 pairs 1024 + q (low) / 1024 + 16q (high) of bytes
// (0, 2) and, shifted, (1, 3); one HFMA2 with (sc, −1024·sc) / (sc/16, −64·sc) gives sc·q
// exactly. Pairs (0,2), (1,3) are a0, a2 of one mma, (4,6), (5,7) of the next; B is one 16-byte
// LDS of x̂ in that order. Scales of pair t are decoded by lane t and shuffled. Per 16×8 tile
// and block column: 17 mma and 12 f32 instructions per lane.
// Bytes: W once (n·k·0.5625), x mp·k·2.14 per W tile (L2), y m·n·4 (·2·S with a split).
template <int BM, int WT, int NW, int WM, int ST>
__host__ __device__ constexpr int mh_smem_bytes() {
    return ST * (16 * WT * (NW / WM) * MQ_W_STRIDE + BM * (512 + 32 + 4));
}

__device__ __forceinline__ u16 f2h_rn(float f) { u16 h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; }
__device__ __forceinline__ u32 lop_or(u32 a, u32 mask, u32 c) {  // (a & mask) | c, one LOP3
    u32 r; asm("lop3.b32 %0, %1, %2, %3, 0xea;" : "=r"(r) : "r"(a), "r"(mask), "r"(c)); return r;
}
__device__ __forceinline__ u32 hfma2(u32 a, u32 b, u32 c) {
    u32 r; asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c)); return r;
}
__device__ __forceinline__ u32 hmul2(u32 a, u32 b) { u32 r; asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b)); return r; }
// (v, v) as f16x2 for an integer 0 ≤ v < 1024: (1024 + v) − 1024, exact.
__device__ __forceinline__ u32 h2_int(u32 v) {
    u32 r;
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(0x64006400u | v | (v << 16)), "r"(0x64006400u));
    return r;
}
// d[16×8 f32] += a[16×16 f16] · b[16×8 f16]; fragments as mma_k32 with k pairs per register.
__device__ __forceinline__ void mma_f16(float d[4], const u32 a[4], u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

extern "C" __global__ void __launch_bounds__(256) mh_quant_x(const float* __restrict__ x, u16* __restrict__ xh,
                                                             u32* __restrict__ xx, float* __restrict__ xsx, int k,
                                                             int m, int mp) {
    pdl_launch_dependents();
    pdl_wait();  // PDL launch: x and the scratch may still be in use by the previous kernel
    const int nb = k / 256;
    const i64 warps = (i64)nb * mp;
    const int lane = threadIdx.x % KILN_WARP;
    for (i64 wi = ((i64)blockIdx.x * blockDim.x + threadIdx.x) / KILN_WARP; wi < warps;
         wi += (i64)gridDim.x * blockDim.x / KILN_WARP) {
        const int blk = (int)(wi / mp), row = (int)(wi % mp);
        float v[8];
#pragma unroll
        for (int l = 0; l < 8; l++) v[l] = 0.0f;
        if (row < m) {
            const float* p = x + (i64)row * k + blk * 256 + 8 * lane;
#pragma unroll
            for (int l = 0; l < 8; l++) v[l] = p[l];
        }
        float a = 0.0f;
        bool finite = true;
#pragma unroll
        for (int l = 0; l < 8; l++) {
            a = fmaxf(a, fabsf(v[l]));
            finite &= (__float_as_int(v[l]) & 0x7f800000) != 0x7f800000;
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
        const bool bad = __any_sync(0xffffffffu, !finite);
        const int e = max(((__float_as_int(a) >> 23) & 255) - 127, -112);  // a = 0: any scale
        const float inv = __int_as_float((127 + 14 - e) << 23);
        const float sx = bad ? __int_as_float(0x7fffffff) : __int_as_float((127 + e - 14) << 23);
        u16 h[8];
        float s = 0.0f;
#pragma unroll
        for (int l = 0; l < 8; l++) {
            h[l] = f2h_rn(v[l] * inv);
            s += h2f(h[l]);
        }
        s += __shfl_xor_sync(0xffffffffu, s, 1);
        s += __shfl_xor_sync(0xffffffffu, s, 2);
        const i64 rr = (i64)blk * mp + row;
        *(uint4*)(xh + rr * 256 + 8 * lane) =
            make_uint4(h[0] | ((u32)h[2] << 16), h[1] | ((u32)h[3] << 16), h[4] | ((u32)h[6] << 16),
                       h[5] | ((u32)h[7] << 16));
        if ((lane & 3) == 0) {
            const float s32 = s * 0.03125f;
            const u16 hi = f2h_rn(s32), lo = f2h_rn(s32 - h2f(hi));
            xx[rr * 8 + lane / 4] = hi | ((u32)lo << 16);
        }
        if (lane == 0) xsx[rr] = sx;
    }
}

template <int BM, int WT, int NW, int ST, int WM>
__device__ __forceinline__ void mh4k_body(const u8* __restrict__ w, const u16* __restrict__ xh,
                                          const u32* __restrict__ xx, const float* __restrict__ xsx,
                                          float* __restrict__ y, int n, int k, int m, int mp, int spz, int ty) {
    constexpr int NWN = NW / WM, BN = 16 * WT * NWN, NT = BM / 8 / WM, THREADS = KILN_WARP * NW;
    constexpr int WB = BN * MQ_W_STRIDE, XB = BM * 512, STAGE = WB + XB + BM * 36;
    constexpr int XPER = BM * 32 / THREADS, XS = BM * 2 + BM / 4;  // x̂ / sums + scales copies
    constexpr int XSP = (XS + THREADS - 1) / THREADS;
    static_assert(BM % (8 * WM) == 0 && NW % WM == 0 && ST >= 2 && NW % 2 == 0 && BM * 32 % THREADS == 0, "mh4k tile");
    extern __shared__ uint4 mh_smem[];
    u8* sm = (u8*)mh_smem;  // [ST][W [BN][160] | xh [BM][512] | xx [BM][32] | sx [BM]]
    pdl_launch_dependents();
    const int nb = k / 256;
    const int b0 = blockIdx.z * spz, b1 = min(nb, b0 + spz);
    const int m0 = blockIdx.x * BM, n0 = ty * BN;
    const int tid = threadIdx.x, lane = tid % KILN_WARP, warp = tid / KILN_WARP;
    const int g = lane >> 2, t = lane & 3;
    const int wn = warp % NWN, xr0 = (warp / NWN) * (BM / WM);  // this warp's W row group, x rows

    const MqWCopies<BN, 9, 144, MQ_W_STRIDE, THREADS> wc(w, n, nb, n0, b0, tid);
    auto issue_w = [&](int s, int slot) { wc.issue(sm + slot * STAGE, s - b0, tid); };
    // x copies of this thread: x̂ chunk e = tid + THREADS·i (row e / 32, chunk e % 32; the row
    // parity, hence the swizzle, is the same for every i), then 16-byte pieces e of the sums
    // (e < 2·BM) and the scales (e < 2·BM + BM/4).
    const int xdst = (tid >> 5) * 512 + 16 * ((tid & 31) ^ (4 * ((tid >> 5) & 1)));
    const u8* xsrc = (const u8*)(xh + (i64)m0 * 256) + 16 * tid;
    const u8* ssrc[XSP];
    i64 sstep[XSP];  // bytes per block column
#pragma unroll
    for (int i = 0; i < XSP; i++) {
        const int e = tid + THREADS * i;
        ssrc[i] = e < 2 * BM ? (const u8*)(xx + (i64)m0 * 8) + 16 * e : (const u8*)(xsx + m0) + 16 * (e - 2 * BM);
        sstep[i] = e < 2 * BM ? (i64)mp * 32 : (i64)mp * 4;
    }
    // x̂, sub-block sums and scales of column s, rows m0..m0+BM−1 (< mp) → slot.
    auto issue_x = [&](int s, int slot) {
        u8* dq = sm + slot * STAGE + WB;
        const u8* src = xsrc + (i64)s * mp * 512;
#pragma unroll
        for (int i = 0; i < XPER; i++) mma_cp16(dq + xdst + i * (THREADS / 32) * 512, src + 16 * THREADS * i);
#pragma unroll
        for (int i = 0; i < XSP; i++)
            if (tid + THREADS * i < XS) mma_cp16(dq + XB + 16 * (tid + THREADS * i), ssrc[i] + s * sstep[i]);
    };

    float acc[WT][NT][4] = {};

    mq_ring<ST>(b0, b1, issue_w, issue_x, [&](int, int slot) {
        const u8* ws = sm + slot * STAGE;
        const u8* xb = ws + WB;
        const u8* xxb = xb + XB;
        const float* sxb = (const float*)(xxb + BM * 32);
        // Lane t decodes pair t (sub-blocks 2t, 2t + 1) of rows g, g + 8: the f16 (scale,
        // offset) of the weight operand (shuffled to the lanes below) and the min operand.
        u32 my_s[WT][2][4], amin[WT][4];
        float dd[WT][2], nd[WT][2];
#pragma unroll
        for (int wt = 0; wt < WT; wt++) {
            const int row = wn * 16 * WT + wt * 16 + g;
#pragma unroll
            for (int r = 0; r < 2; r++) {
                const uint4 hd = *(const uint4*)(ws + (row + 8 * r) * MQ_W_STRIDE);
                u32 sc, mn;
                k4_scale_pairs(hd.y, hd.z, hd.w, t, sc, mn);
                dd[wt][r] = h2f((u16)(hd.x & 0xffffu));
                nd[wt][r] = -32.0f * h2f((u16)(hd.x >> 16));
                const u32 s0 = h2_int(sc & 0xffu), s1 = h2_int((sc >> 8) & 0xffu);
                my_s[wt][r][0] = s0;
                my_s[wt][r][1] = hmul2(s0, 0xe400e400u);  // −1024
                my_s[wt][r][2] = hmul2(s1, 0x2c002c00u);  // 1/16
                my_s[wt][r][3] = hmul2(s1, 0xd400d400u);  // −64
                amin[wt][r] = h2_int(mn & 0xffu);         // a0 / a1: sub-block 2t
                amin[wt][2 + r] = h2_int((mn >> 8) & 0xffu);  // a2 / a3: 2t + 1
            }
        }
        float P[WT][NT][4];
#pragma unroll
        for (int wt = 0; wt < WT; wt++)
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) P[wt][nt][e] = 0.0f;
#pragma unroll
        for (int cc = 0; cc < 4; cc++) {
            const int src = (lane & ~3) | cc;
            uint2 q[WT][2];
            u32 sv[WT][2][4];
#pragma unroll
            for (int wt = 0; wt < WT; wt++) {
                const int row = wn * 16 * WT + wt * 16 + g;
                q[wt][0] = *(const uint2*)(ws + row * MQ_W_STRIDE + 16 + 32 * cc + 8 * t);
                q[wt][1] = *(const uint2*)(ws + (row + 8) * MQ_W_STRIDE + 16 + 32 * cc + 8 * t);
#pragma unroll
                for (int r = 0; r < 2; r++)
#pragma unroll
                    for (int j = 0; j < 4; j++) sv[wt][r][j] = __shfl_sync(0xffffffffu, my_s[wt][r][j], src);
            }
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const u32 mask = h ? 0x00f000f0u : 0x000f000fu;
                u32 a[WT][2][4];  // [tile][mma j: bytes 0..3 / 4..7][a0..a3]
#pragma unroll
                for (int wt = 0; wt < WT; wt++)
#pragma unroll
                    for (int r = 0; r < 2; r++) {
                        const u32 sc = sv[wt][r][2 * h], off = sv[wt][r][2 * h + 1];
                        a[wt][0][r] = hfma2(lop_or(q[wt][r].x, mask, 0x64006400u), sc, off);
                        a[wt][0][2 + r] = hfma2(lop_or(q[wt][r].x >> 8, mask, 0x64006400u), sc, off);
                        a[wt][1][r] = hfma2(lop_or(q[wt][r].y, mask, 0x64006400u), sc, off);
                        a[wt][1][2 + r] = hfma2(lop_or(q[wt][r].y >> 8, mask, 0x64006400u), sc, off);
                    }
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    const uint4 bv = *(const uint4*)(xb + (xr0 + nt * 8 + g) * 512 + 16 * ((4 * (2 * cc + h) + t) ^ (4 * (g & 1))));
#pragma unroll
                    for (int wt = 0; wt < WT; wt++) {
                        mma_f16(P[wt][nt], a[wt][0], bv.x, bv.y);
                        mma_f16(P[wt][nt], a[wt][1], bv.z, bv.w);
                    }
                }
            }
        }
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            const uint2 bm = *(const uint2*)(xxb + (xr0 + nt * 8 + g) * 32 + 8 * t);
            const float2 sx = *(const float2*)(sxb + xr0 + nt * 8 + 2 * t);
#pragma unroll
            for (int wt = 0; wt < WT; wt++) {
                float Q[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                mma_f16(Q, amin[wt], bm.x, bm.y);
                float* o = acc[wt][nt];
#pragma unroll
                for (int e = 0; e < 4; e++)
                    o[e] = fmaf(e & 1 ? sx.y : sx.x, fmaf(nd[wt][e >> 1], Q[e], dd[wt][e >> 1] * P[wt][nt][e]), o[e]);
            }
        }
    });

    mq_store<WT, NT>(acc, y + (i64)blockIdx.z * m * n, n, m, n0, m0 + xr0, wn, lane);
}

// mh4k_*: one weight (W tile blockIdx.y); mh4kg_*: up to GEMV_NS weights of one x in one grid
// (`matmul_many`: gridDim.y numbers the segments' W tiles one after the other, gemv_seg; segment
// s's y is its output [m, n_s] or, with a k split, its [splits, m, n_s] partial sums).
#define MH4K_KERNEL(BM, WT, NW, WM, ST, MB)                                                        \
    extern "C" __global__ void __launch_bounds__(KILN_WARP * NW, MB) mh4k_b##BM##_w##WT##_n##NW##_x##WM##_s##ST##_m##MB( \
        const u8* __restrict__ w, const u16* __restrict__ xh, const u32* __restrict__ xx,            \
        const float* __restrict__ xsx, float* __restrict__ y, int n, int k, int m, int mp, int spz) { \
        mh4k_body<BM, WT, NW, ST, WM>(w, xh, xx, xsx, y, n, k, m, mp, spz, blockIdx.y);             \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(KILN_WARP * NW, MB) mh4kg_b##BM##_w##WT##_n##NW##_x##WM##_s##ST##_m##MB( \
        const GemvSegs sg, const u16* __restrict__ xh, const u32* __restrict__ xx,                  \
        const float* __restrict__ xsx, int k, int m, int mp, int spz) {                              \
        const GemvSeg s = gemv_seg<GEMV_NS, 16 * WT * NW / WM>(sg, blockIdx.y);                     \
        mh4k_body<BM, WT, NW, ST, WM>(s.body, xh, xx, xsx, s.y, s.n, k, m, mp, spz, s.g);           \
    }

// The configurations the host picks from by m (ops/matmul_mma/mh4k.rs MH4K, same order).
#ifndef MQ4K_NO_INSTANCES
MH4K_KERNEL(16, 2, 4, 1, 2, 1)
MH4K_KERNEL(32, 2, 4, 1, 2, 2)
MH4K_KERNEL(64, 1, 4, 1, 2, 2)
#endif
