// matmul_mqk.cuh: mq6k_b<BM>_w<WT>_n<NW>_s<ST>, Q6_K for 1 ≤ m ≤ 64 on int8 tensor cores (and mq8_0_*, Q8_0: below)
// (included by matmul_mma.cu after mq4k, whose x rounding `mq_quant_x` it reads; host
// src/ops/matmul_mma/mqk.rs). Why: the generic `mma_q6_k_*` decodes W through registers into
// shared memory with one stage in flight per 128-thread block (H200, 14336×4096: 47 µs at m = 4,
// ~1.0 TB/s, where the fused GEMV moves the same 48 MB in 22 µs); Q4_K_M files carry Q6_K
// down/v/output matrices, so batched decode of real models pays it.
// Measured (H200, gemm bench, BENCHMARKS.md stop 26): 14336×4096 at m = 8 26.6 µs (43 % of copy
// bandwidth; generic 41.6, fused 35.9), m = 16 32.7, m = 64 71.2. What bounds it: leaving the
// mma loop out takes 18 µs (the cp.async ring alone), keeping it with W fed from L2 25 µs — the
// decode + scale work (~40 instructions per sub-block and lane, 96 registers, 16 warps per SM)
// at a low issue rate; tiles with 4 or 8 warps, 2–4 stages and 3–6 blocks per SM all measured
// within ±4 %.
//
// x: mq_quant_x's int8 x per 32 elements (xq u8 [k/256][mp][256] in element order, xs float2
// [k/256][mp/2][8][2] = (d, d·Σq) per x row and 32-element group; rows m..mp−1 zero).
//
// Thread mapping: grid (mp / BM, ceil(n / BN), S), block 32·NW threads, BN = 16·WT·NW W rows;
// the m tiles of one W tile are adjacent block indices (W read from HBM once, the rest from L2).
// A k stage is one Q6_K block column (256 elements): the raw 208-byte bodies of the BN rows
// (ql[128], qh[64], scales i8[16]: the GGUF block less d, kiln's body region), the BM x rows
// and their scales, copied by cp.async into a ring of ST stages (ST − 1 in flight while one is
// used; BN·208 + BM·320 bytes per stage from global). d (kiln's head region, 2 bytes per block)
// is read by the lanes that use it with one ordinary load a stage ahead. Warp w owns W rows
// [16·WT·w, 16·WT·(w + 1)) × all BM x rows: WT × BM/8 tiles of mma.sync m16n8k16 s8·s8 (W = A,
// 16 rows; x = B, 8 columns), one per 16-element sub-block j (its own int8 scale).
// Fragments straight from the raw block (g = lane / 4, t = lane % 4): element 16j + 4t + i (i
// = 0..3) of half h = j / 8, quarter q = (j / 2) % 4, l = 16·(j % 2) + 4t + i is the nibble
// q / 2 of ql[64h + 32·(q % 2) + l] with bits 2q, 2q + 1 of qh[32h + l] as bits 4, 5: one
// 32-bit shared load of ql and one of qh per row give the 4 bytes of a0 (row g) / a1 (row g + 8)
// (the ql word serves quarters q and q + 2, the qh word all four: the compiler keeps one load),
// w − 32 as a signed byte = ((w + 0x60) ^ 0x80) bytewise (exact, no min term); b = x bytes
// 16j + 4t .. +3 of x row g. S (accumulator input 1.5·2²³ as f32 bits: the result read as f32 is
// M + S exactly, |S| ≤ 16·32·127) is scaled by 2 FFMA per output: acc += (d·sc_j)·(dx·S).
// Shared strides: W rows 208 B (52 words ≡ 20 mod 32), x rows 272 B (68 ≡ 4 mod 32): the 32-bit
// fragment loads of 8 rows × 4 lanes hit 32 distinct banks; scales (mq4k's 144-byte rows of a
// pair) one float4 per lane.
// k split (gridDim.z = S > 1): each block writes its partial sums y = part f32 [S, m, n];
// mma_reduce (a programmatic dependent) adds them in split order.
// PDL: the W copies of the first stages are issued before griddepcontrol.wait (x comes from
// the previous kernel); the kernel lets its dependents launch at its start.
// Bytes: W once (n·k·0.8203: 210 per 256), x mp·k·1.25 per W tile (L2), y m·n·4 (·2·S with a
// split). FLOPs 2·m·n·k (int8 MACs) + 4·m·n·k/16 f32.
#pragma once

#define MQ6_W_STRIDE 208  // the raw body, unpadded: 52 words ≡ 20 mod 32
#define MQ6_X_STRIDE 272  // 256 + 16 pad: 68 words ≡ 4 mod 32


// acc += dl·(dx·S) for one 16×8 tile: c = M + S as f32 bits (mma_i8 / mma_k32), dl0 / dl1 the
// W scales of rows g / g + 8, xv = (dx, ·, dx', ·) of x columns 2t / 2t + 1, xm0 / xm1 = −M·dx /
// −M·dx' (exact: dx has 22 significant bits, so fmaf(M + S, dx, −M·dx) = dx·S rounded once).
__device__ __forceinline__ void mq_acc(float (&o)[4], const int (&c)[4], float dl0, float dl1, float4 xv, float xm0,
                                       float xm1) {
    o[0] = fmaf(dl0, fmaf(__int_as_float(c[0]), xv.x, xm0), o[0]);
    o[1] = fmaf(dl0, fmaf(__int_as_float(c[1]), xv.z, xm1), o[1]);
    o[2] = fmaf(dl1, fmaf(__int_as_float(c[2]), xv.x, xm0), o[2]);
    o[3] = fmaf(dl1, fmaf(__int_as_float(c[3]), xv.z, xm1), o[3]);
}

// The A fragment of quarter Q from a ql word and a qh word: the 6-bit weights minus 32 as s8.
template <int Q>
__device__ __forceinline__ u32 q6k_frag(u32 ql, u32 qh) {
    const u32 lo = (Q >= 2 ? ql >> 4 : ql) & 0x0f0f0f0fu;
    const u32 hi = (Q == 0 ? qh << 4 : Q == 1 ? qh << 2 : Q == 2 ? qh : qh >> 2) & 0x30303030u;
    return ((lo | hi) + 0x60606060u) ^ 0x80808080u;
}

template <int BM, int WT, int NW, int ST>
__device__ __forceinline__ void mq6k_body(const u8* __restrict__ w, const u8* __restrict__ wh,
                                          const u8* __restrict__ xq, const float2* __restrict__ xs,
                                          float* __restrict__ y, int n, int k, int m, int mp, int spz, int ty) {
    constexpr int BN = 16 * WT * NW, NT = BM / 8, THREADS = KILN_WARP * NW;
    constexpr int WB = BN * MQ6_W_STRIDE, XB = BM * MQ6_X_STRIDE, STAGE = WB + XB + BM / 2 * MQ_S_STRIDE;
    static_assert(BM % 8 == 0 && ST >= 2, "BM whole n8 tiles, at least 2 stages");
    extern __shared__ uint4 mq6_smem[];
    u8* sm = (u8*)mq6_smem;  // [ST][W [BN][208] | Xq [BM][272] | Xs [BM/2][144]]
    pdl_launch_dependents();
    const int nb = k / 256;
    const int b0 = blockIdx.z * spz, b1 = min(nb, b0 + spz);
    const int m0 = blockIdx.x * BM, n0 = ty * BN;
    const int tid = threadIdx.x, lane = tid % KILN_WARP, warp = tid / KILN_WARP;
    const int g = lane >> 2, t = lane & 3;

    const MqWCopies<BN, 13, 208, MQ6_W_STRIDE, THREADS> wc(w, n, nb, n0, b0, tid);
    auto issue_w = [&](int s, int slot) { wc.issue(sm + slot * STAGE, s - b0, tid); };
    auto issue_x = [&](int s, int slot) {
        u8* dq = sm + slot * STAGE + WB;
        mq_issue_x<BM, THREADS, MQ6_X_STRIDE>(dq, dq + XB, xq, xs, s, mp, m0, tid);
    };
    // d of rows g and g + 8 of each of this warp's tiles at block column s.
    const u16* dsrc[WT][2];
#pragma unroll
    for (int wt = 0; wt < WT; wt++)
#pragma unroll
        for (int r = 0; r < 2; r++)
            dsrc[wt][r] = (const u16*)wh + (i64)min(n0 + warp * 16 * WT + wt * 16 + g + 8 * r, n - 1) * nb;
    // Raw d bits of the next stage, loaded a stage before they are used (a conversion right
    // after the load would wait for it).
    u16 draw[WT][2];
    auto load_d = [&](int s) {
#pragma unroll
        for (int wt = 0; wt < WT; wt++)
#pragma unroll
            for (int r = 0; r < 2; r++) draw[wt][r] = __ldg(dsrc[wt][r] + s);
    };

    float acc[WT][NT][4] = {};

    load_d(min(b0, nb - 1));  // weights: before the ring's PDL wait
    mq_ring<ST>(b0, b1, issue_w, issue_x, [&](int s, int slot) {
        float dcur[WT][2];
#pragma unroll
        for (int wt = 0; wt < WT; wt++)
#pragma unroll
            for (int r = 0; r < 2; r++) dcur[wt][r] = h2f(draw[wt][r]);
        load_d(min(s + 1, b1 - 1));  // for the next stage
        const u8* ws = sm + slot * STAGE;
        const u8* xb = ws + WB;
        const u8* sb = xb + XB;
#pragma unroll
        for (int j = 0; j < 16; j++) {
            const int h = j >> 3, hi = j & 1;
            u32 a[WT][2];
            float dl[WT][2];
#pragma unroll
            for (int wt = 0; wt < WT; wt++)
#pragma unroll
                for (int r = 0; r < 2; r++) {
                    const u8* p = ws + (warp * 16 * WT + wt * 16 + g + 8 * r) * MQ6_W_STRIDE;
                    const u32 ql = *(const u32*)(p + 64 * h + 32 * ((j >> 1) & 1) + 16 * hi + 4 * t);
                    const u32 qh = *(const u32*)(p + 128 + 32 * h + 16 * hi + 4 * t);
                    switch ((j >> 1) & 3) {
                        case 0: a[wt][r] = q6k_frag<0>(ql, qh); break;
                        case 1: a[wt][r] = q6k_frag<1>(ql, qh); break;
                        case 2: a[wt][r] = q6k_frag<2>(ql, qh); break;
                        default: a[wt][r] = q6k_frag<3>(ql, qh); break;
                    }
                    const u32 scw = *(const u32*)(p + 192 + 4 * (j >> 2));
                    dl[wt][r] = dcur[wt][r] * (float)(signed char)((scw >> (8 * (j & 3))) & 0xffu);
                }
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                const u32 bq = *(const u32*)(xb + (nt * 8 + g) * MQ6_X_STRIDE + 16 * j + 4 * t);
                // (d, d·Σq) of x rows nt·8 + 2t and nt·8 + 2t + 1 for this 32-element group.
                const float4 xv = *(const float4*)(sb + (nt * 4 + t) * MQ_S_STRIDE + 16 * (j >> 1));
                // −M·d exactly (d has 22 significant bits): fmaf(M + S, d, −M·d) = d·S.
                const float xm0 = -MMA_MAGIC_F * xv.x, xm1 = -MMA_MAGIC_F * xv.z;
#pragma unroll
                for (int wt = 0; wt < WT; wt++) {
                    int c[4];
                    mma_i8<true>(c, a[wt][0], a[wt][1], bq);
                    mq_acc(acc[wt][nt], c, dl[wt][0], dl[wt][1], xv, xm0, xm1);
                }
            }
        }
    });

    mq_store<WT, NT>(acc, y + (i64)blockIdx.z * m * n, n, m, n0, m0, warp, lane);  // y, or split z's partials
}


// ------------------------------------------------------------------------------------------
// mq8_0_b<BM>_w<WT>_n<NW>_s<ST>: Q8_0 for 1 ≤ m ≤ 64, the same ring, grid, tiles, k split and
// PDL as mq6k (the generic `mma_q8_0_*` moved ~1.1 TB/s at m = 16, BENCHMARKS.md "mma k-split
// sweep"). A stage is one 256-element block column: per W row the 8 consecutive 32-byte qs
// runs (kiln's body region: 256 contiguous bytes) and their 8 f16 d (the head region: 16
// contiguous, 16-byte aligned bytes, since k is a multiple of 256), copied into a 288-byte row
// (qs @0, d @256, 16 pad: 72 words ≡ 8 mod 32, so the 8-byte fragment loads of a half warp's
// 4 rows tile the banks). The qs bytes (kiln keeps them in offset binary, q ^ 0x80: buffer.rs;
// one XOR per fragment word gives the signed q) are the A operand: one mma.sync m16n8k32 s8 per
// Q8_0 block per 16×8 tile, with mq4k's k permutation (one 8-byte load of a
// row gives a0/a2; x's B fragment is read the same way), x as mq_quant_x rounds it (its groups
// of 32 are the Q8_0 blocks); acc += d_w·(dx·S), 2 FFMA per output per block.
// Bytes: W once (n·k·1.0625), x mp·k·1.25 per W tile (L2), y m·n·4 (·2·S with a split).
#define MQ8_W_STRIDE 288

template <int BM, int WT, int NW, int ST>
__device__ __forceinline__ void mq8_0_body(const u8* __restrict__ w, const u8* __restrict__ wh,
                                           const u8* __restrict__ xq, const float2* __restrict__ xs,
                                           float* __restrict__ y, int n, int k, int m, int mp, int spz, int ty) {
    constexpr int BN = 16 * WT * NW, NT = BM / 8, THREADS = KILN_WARP * NW;
    constexpr int WB = BN * MQ8_W_STRIDE, XB = BM * MQ_X_STRIDE, STAGE = WB + XB + BM / 2 * MQ_S_STRIDE;
    constexpr int WPER = (BN * 17 + THREADS - 1) / THREADS;  // 16 qs + 1 d copies per row
    static_assert(BM % 8 == 0 && ST >= 2, "BM whole n8 tiles, at least 2 stages");
    extern __shared__ uint4 mq8_smem[];
    u8* sm = (u8*)mq8_smem;  // [ST][W [BN][288] | Xq [BM][288] | Xs [BM/2][144]]
    pdl_launch_dependents();
    const int nb = k / 256, nb32 = k / 32;
    const int b0 = blockIdx.z * spz, b1 = min(nb, b0 + spz);
    const int m0 = blockIdx.x * BM, n0 = ty * BN;
    const int tid = threadIdx.x, lane = tid % KILN_WARP, warp = tid / KILN_WARP;
    const int g = lane >> 2, t = lane & 3;

    // This thread's W copies (row, 16-byte chunk c: 0..15 qs, 16 the d), hoisted at column b0.
    const u8* wsrc[WPER];
    int wdst[WPER], wstep[WPER];  // wstep: source bytes per block column (qs 256, d 16)
#pragma unroll
    for (int i = 0; i < WPER; i++) {
        const int e = min(tid + THREADS * i, BN * 17 - 1), row = e / 17, c = e - 17 * row;
        const i64 blk = (i64)min(n0 + row, n - 1) * nb32 + 8 * b0;  // first Q8_0 block of the run
        wsrc[i] = c < 16 ? w + blk * 32 + 16 * c : wh + blk * 2;
        wdst[i] = row * MQ8_W_STRIDE + 16 * c;
        wstep[i] = c < 16 ? 256 : 16;
    }
    auto issue_w = [&](int s, int slot) {
        u8* dst = sm + slot * STAGE;
#pragma unroll
        for (int i = 0; i < WPER; i++)
            if (tid + THREADS * i < BN * 17) mma_cp16(dst + wdst[i], wsrc[i] + (i64)(s - b0) * wstep[i]);
    };
    auto issue_x = [&](int s, int slot) {
        u8* dq = sm + slot * STAGE + WB;
        mq_issue_x<BM, THREADS, MQ_X_STRIDE>(dq, dq + XB, xq, xs, s, mp, m0, tid);
    };

    float acc[WT][NT][4] = {};

    mq_ring<ST>(b0, b1, issue_w, issue_x, [&](int, int slot) {
        const u8* ws = sm + slot * STAGE;
        const u8* xb = ws + WB;
        const u8* sb = xb + XB;
        uint4 dw[WT][2];  // the 8 f16 d of rows g and g + 8
#pragma unroll
        for (int wt = 0; wt < WT; wt++)
#pragma unroll
            for (int r = 0; r < 2; r++)
                dw[wt][r] = *(const uint4*)(ws + (warp * 16 * WT + wt * 16 + g + 8 * r) * MQ8_W_STRIDE + 256);
#pragma unroll
        for (int j = 0; j < 8; j++) {
            u32 a[WT][4];
            float dl[WT][2];
#pragma unroll
            for (int wt = 0; wt < WT; wt++) {
                const int row = warp * 16 * WT + wt * 16 + g;
                const uint2 q0 = *(const uint2*)(ws + row * MQ8_W_STRIDE + 32 * j + 8 * t);
                const uint2 q1 = *(const uint2*)(ws + (row + 8) * MQ8_W_STRIDE + 32 * j + 8 * t);
                a[wt][0] = q0.x ^ 0x80808080u;  // offset binary → s8
                a[wt][1] = q1.x ^ 0x80808080u;
                a[wt][2] = q0.y ^ 0x80808080u;
                a[wt][3] = q1.y ^ 0x80808080u;
#pragma unroll
                for (int r = 0; r < 2; r++) {
                    const u32 dwrd = word_of(dw[wt][r], j >> 1);
                    dl[wt][r] = h2f((u16)((j & 1) ? dwrd >> 16 : dwrd & 0xffffu));
                }
            }
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                const uint2 bq = *(const uint2*)(xb + (nt * 8 + g) * MQ_X_STRIDE + 32 * j + 8 * t);
                const float4 xv = *(const float4*)(sb + (nt * 4 + t) * MQ_S_STRIDE + 16 * j);
                const float xm0 = -MMA_MAGIC_F * xv.x, xm1 = -MMA_MAGIC_F * xv.z;
#pragma unroll
                for (int wt = 0; wt < WT; wt++) {
                    int c[4];
                    mma_k32(c, a[wt], bq.x, bq.y);
                    mq_acc(acc[wt][nt], c, dl[wt][0], dl[wt][1], xv, xm0, xm1);
                }
            }
        }
    });

    mq_store<WT, NT>(acc, y + (i64)blockIdx.z * m * n, n, m, n0, m0, warp, lane);  // y, or split z's partials
}

// mq6k_* and mq8_0_* (`kind`): one signature (body, head, x, y, dims); and their grouped forms
// (MQ_GROUPED, matmul_mma.cu).
#define MQK_KERNEL(kind, BM, WT, NW, ST)                                                           \
    extern "C" __global__ void __launch_bounds__(KILN_WARP * NW) kind##_b##BM##_w##WT##_n##NW##_s##ST( \
        const u8* __restrict__ w, const u8* __restrict__ wh, const u8* __restrict__ xq,             \
        const float2* __restrict__ xs, float* __restrict__ y, int n, int k, int m, int mp, int spz) { \
        kind##_body<BM, WT, NW, ST>(w, wh, xq, xs, y, n, k, m, mp, spz, blockIdx.y);               \
    }                                                                                              \
    MQ_GROUPED(kind, BM, WT, NW, ST, (kind##_body<BM, WT, NW, ST>(s.body, s.head, xq, xs, s.y, s.n, k, m, mp, spz, s.g)))
