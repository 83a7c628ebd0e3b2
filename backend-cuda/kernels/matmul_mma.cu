// matmul_mma.cu: y = x·Wᵀ for the 12 block types on int8 tensor cores, for 8 ≤ m ≤ ~512 rows
// (the fused GEMV's int8 x and exact integer weights, llama.cpp's "mmq" idea, our own code).
// Q4_K at 1 ≤ m ≤ 64 has two kernels of its own (mq4k: int8, below; mh4k: f16, matmul_mh.cu), Q5_K
// one (mq5k: mq4k's body with Q5 = true), Q6_K and Q8_0 one each (mq6k, mq8_0: matmul_mqk.cuh); the host
// (ops/matmul_mma.rs) takes the tuned one unless a generic configuration is forced.
//
// Inputs: W [n, k] in the repacked layout of quant.cuh; x already rounded by quant_x_<type>
// (matmul_q.cu) to int8 units of 16 elements: xq uint4 [m, units], xs float2 [m, units] (d,
// d·Σq), unit (G·RUNS + r)·32 + L holding run r of chunk 32·G + L. Output y f32 [m, n], or with
// a k split (gridDim.z = S > 1) partial sums part f32 [S, m, n] that mma_reduce adds in order.
//
// Thread mapping: mma_<type>_b<BM>_w<WT>: grid (ceil(n / BN), ceil(m / BM), S), block 128 = 4
// warps, BN = 64·WT W rows per block. Warp w owns W rows [16·WT·w, 16·WT·(w + 1)) of the tile
// and all BM x rows: WT × BM/8 tiles of m16n8k16 (W = the 16-row A operand, x = the 8-column B
// operand), f32 accumulators in registers. k advances in stages of 16 units (256 elements,
// 16 / (CHUNKS·RUNS) quant blocks):
//   - W: each thread loads BN·CPS / 128 chunks of the next stage into registers (T::load,
//     16-byte loads) while the warps compute the current one, then decodes them exactly to
//     bytes (T::run_qi) into shared memory Wq [BN][16 units][16 B] (+16 B row pad) with the
//     run's (dl, ml) in Ws [16][BN] float2;
//   - x: cp.async (16 B) double buffer Xq [2][BM][16 units][16 B] (+pad), Xs [2][BM][16+2] float2.
//   Per unit j and tile pair: one `mma.sync.m16n8k16.s32.u8.s8.s32` (s8.s8 for the signed IQ4
//   types and for the types whose min is C·dl, fed q − C: see MmaOffset) with the accumulator
//   input the constant 0x4B400000 (M = 1.5·2²³ as f32 bits), so the s32 result S + 0x4B400000
//   read as f32 is M + S exactly (|S| ≤ 16·255·127 < 2²²); then per output
//   acc += dl·fma(M + S, d, −M·d) (− ml·d·Σqx for Q4_1, Q5_1, Q2_K, Q4_K, Q5_K): 2 FFMA per
//   element per unit (3 with a min), plus 2 FMUL per x-row pair.
// Bytes: W once per m-tile (n·k·bpw·ceil(m / BM)), x ceil(n / BN)·m·k·1.5 (L2), y m·n·4 (·2·S
// with a split). FLOPs 2·m·n·k (int8 MACs) + 8·m·n·k/16 f32 for the scales.
#include "quant.cuh"
#include "mma_ring.cuh"
#include "gemv_segs.cuh"

#define MMA_THREADS 128
#define MMA_UNITS 16            // 16-element units per k stage (256 elements)
#define MMA_ROW_WORDS 68        // Wq/Xq row stride in 32-bit words: 16 units × 4 + 4 pad (conflict-free)
#define MMA_XS_STRIDE 18        // Xs row stride in float2: 16 + 2 pad (16-byte rows, conflict-free)
#define MMA_MAGIC 0x4B400000    // 1.5·2^23 as f32 bits: the accumulator's starting value
#define MMA_MAGIC_F 12582912.0f // 1.5·2^23


// d[16×8 s32] = a[16×16] · b[16×8] + MMA_MAGIC (every accumulator input is the same constant
// register: no per-call moves). Fragments (g = lane / 4, t = lane % 4): a0 = row g, k 4t..4t+3
// (bytes), a1 = row g + 8; b = k 4t..4t+3 of column g; d0, d1 = row g, columns 2t, 2t + 1; d2,
// d3 = row g + 8. A unsigned (weights 0..255) or signed (IQ4 values, offset-free q − c), B signed.
template <bool SIGNED>
__device__ __forceinline__ void mma_i8(int d[4], u32 a0, u32 a1, u32 b) {
    const int c = MMA_MAGIC;
    if (SIGNED) {
        asm("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%7,%7,%7,%7};"
            : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
            : "r"(a0), "r"(a1), "r"(b), "r"(c));
    } else {
        asm("mma.sync.aligned.m16n8k16.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%7,%7,%7,%7};"
            : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
            : "r"(a0), "r"(a1), "r"(b), "r"(c));
    }
}

// Types whose min is an exact integer multiple of the scale (ml = C·dl: Q4_0 8, Q5_0 16, Q8_0
// 128, Q3_K 4, Q6_K 32): their weights go to the tensor cores as signed bytes q − C (exact, in
// −128..127), so w = dl·(q − C) and the per-unit min term disappears.
template <class T> struct MmaOffset { static constexpr u32 C = 0; };
template <> struct MmaOffset<TQ4_0> { static constexpr u32 C = 8; };
template <> struct MmaOffset<TQ5_0> { static constexpr u32 C = 16; };
template <> struct MmaOffset<TQ8_0> { static constexpr u32 C = 128; };
template <> struct MmaOffset<TQ3_K> { static constexpr u32 C = 4; };
template <> struct MmaOffset<TQ6_K> { static constexpr u32 C = 32; };

// Byte-wise a + b mod 256 (no carries between bytes).
__device__ __forceinline__ u32 add_bytes(u32 a, u32 b) {
    return ((a & 0x7f7f7f7fu) + (b & 0x7f7f7f7fu)) ^ ((a ^ b) & 0x80808080u);
}

// Bytes of dynamic shared memory of a configuration (the host computes the same).
template <int BM, int WT>
__host__ __device__ constexpr int mma_smem_bytes() {
    return 64 * WT * MMA_ROW_WORDS * 4 + MMA_UNITS * 64 * WT * 8 + 2 * BM * MMA_ROW_WORDS * 4 + 2 * BM * MMA_XS_STRIDE * 8;
}

template <class T, int BM, int WT>
__device__ __forceinline__ void mma_body(const u8* __restrict__ body, const u8* __restrict__ head,
                                         const uint4* __restrict__ xq, const float2* __restrict__ xs,
                                         float* __restrict__ y, int n, int k, int m, int spz) {
    constexpr int CPS = MMA_UNITS / T::RUNS;  // chunks per stage (4, 8 or 16: divides 32)
    constexpr int BN = 64 * WT;
    constexpr int NT = BM / 8;
    constexpr int PER = BN * CPS / MMA_THREADS;  // chunks per thread per stage
    static_assert(BN * CPS % MMA_THREADS == 0, "stage chunks must split evenly over the threads");
    static_assert(BM % 8 == 0, "BM must be whole n8 tiles");
    constexpr u32 OFF = MmaOffset<T>::C;
    constexpr bool SIGNED = T::SIGNED_Q || OFF != 0;
    constexpr bool MIN = T::HAS_MIN && OFF == 0;  // a min term left for the f32 epilogue
    extern __shared__ uint4 mma_smem[];
    u32* wq = (u32*)mma_smem;                                // [BN][MMA_ROW_WORDS]
    float2* wsc = (float2*)(wq + BN * MMA_ROW_WORDS);        // [MMA_UNITS][BN]
    u32* xqs = (u32*)(wsc + MMA_UNITS * BN);                 // [2][BM][MMA_ROW_WORDS]
    float2* xss = (float2*)(xqs + 2 * BM * MMA_ROW_WORDS);   // [2][BM][MMA_XS_STRIDE]

    const int nb = k / T::QK;
    const int nchunks = nb * T::CHUNKS;
    const int units = ((nchunks + KILN_WARP - 1) / KILN_WARP) * T::RUNS * KILN_WARP;
    const int nst = (nchunks + CPS - 1) / CPS;
    const int s0 = blockIdx.z * spz, s1 = min(nst, s0 + spz);
    const int n0 = blockIdx.x * BN, m0 = blockIdx.y * BM;
    const int tid = threadIdx.x, lane = tid % KILN_WARP, warp = tid / KILN_WARP;
    const int g = lane >> 2, t = lane & 3;

    typename T::Chunk pre[PER];
    // W chunks of stage s → registers (rows and chunks clamped: valid reads, zeroed at decode).
    auto load_w = [&](int s) {
#pragma unroll
        for (int i = 0; i < PER; i++) {
            const int idx = tid + MMA_THREADS * i, row = idx / CPS, lc = idx % CPS;
            const int ci = min(s * CPS + lc, nchunks - 1);
            const int r = min(n0 + row, n - 1);
            T::load(body, head, (i64)r * nb + ci / T::CHUNKS, ci % T::CHUNKS, pre[i]);
        }
    };
    // Registers → exact bytes + (dl, ml) in shared memory; unit j = r·CPS + lc.
    auto store_w = [&](int s) {
#pragma unroll
        for (int i = 0; i < PER; i++) {
            const int idx = tid + MMA_THREADS * i, row = idx / CPS, lc = idx % CPS;
            const bool live = s * CPS + lc < nchunks;
            const int c = min(s * CPS + lc, nchunks - 1) % T::CHUNKS;
#pragma unroll
            for (int r = 0; r < T::RUNS; r++) {
                u32 qw[4];
                float dl, ml;
                T::run_qi(pre[i], c, r, qw, dl, ml);
                if (OFF != 0) {
#pragma unroll
                    for (int w = 0; w < 4; w++) qw[w] = add_bytes(qw[w], (256u - OFF) * 0x01010101u);
                }
                const int j = r * CPS + lc;
                *(uint4*)(wq + row * MMA_ROW_WORDS + 4 * j) =
                    live ? make_uint4(qw[0], qw[1], qw[2], qw[3]) : make_uint4(0u, 0u, 0u, 0u);
                wsc[j * BN + row] = live ? make_float2(dl, MIN ? ml : 0.0f) : make_float2(0.0f, 0.0f);
            }
        }
    };
    // x units of stage s → buffer b (cp.async; rows past m clamped: valid reads, unused).
    auto issue_x = [&](int s, int b) {
        const int G = (s * CPS) / KILN_WARP, L0 = (s * CPS) % KILN_WARP;
        for (int e = tid; e < BM * MMA_UNITS; e += MMA_THREADS) {
            const int row = e / MMA_UNITS, j = e % MMA_UNITS, r = j / CPS, lc = j % CPS;
            const i64 xr = min(m0 + row, m - 1);
            const int u = (G * T::RUNS + r) * KILN_WARP + L0 + lc;
            mma_cp16(xqs + (b * BM + row) * MMA_ROW_WORDS + 4 * j, xq + xr * units + u);
        }
        for (int e = tid; e < BM * MMA_UNITS / 2; e += MMA_THREADS) {
            const int row = e / (MMA_UNITS / 2), j = 2 * (e % (MMA_UNITS / 2)), r = j / CPS, lc = j % CPS;
            const i64 xr = min(m0 + row, m - 1);
            const int u = (G * T::RUNS + r) * KILN_WARP + L0 + lc;  // units j, j + 1 are adjacent
            mma_cp16(xss + (b * BM + row) * MMA_XS_STRIDE + j, xs + xr * units + u);
        }
    };

    float acc[WT][NT][4] = {};

    load_w(s0);
    mma_pdl_wait();
    issue_x(s0, 0);
    mma_commit();
    for (int s = s0; s < s1; s++) {
        const int b = (s - s0) & 1;
        store_w(s);
        if (s + 1 < s1) {
            load_w(s + 1);
            issue_x(s + 1, b ^ 1);
        }
        mma_commit();
        mma_wait1();  // this thread's copies of stage s landed
        __syncthreads();
        const u32* xb = xqs + b * BM * MMA_ROW_WORDS;
        const float2* sb = xss + b * BM * MMA_XS_STRIDE;
#pragma unroll (WT == 1 ? 2 : 1)
        for (int j = 0; j < MMA_UNITS; j++) {
            u32 a[WT][2];
            float2 ws[WT][2];
#pragma unroll
            for (int wt = 0; wt < WT; wt++) {
                const int row = warp * 16 * WT + wt * 16 + g;
                a[wt][0] = wq[row * MMA_ROW_WORDS + 4 * j + t];
                a[wt][1] = wq[(row + 8) * MMA_ROW_WORDS + 4 * j + t];
                ws[wt][0] = wsc[j * BN + row];
                ws[wt][1] = wsc[j * BN + row + 8];
            }
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                const u32 bq = xb[(nt * 8 + g) * MMA_ROW_WORDS + 4 * j + t];
                const float2 x0 = sb[(nt * 8 + 2 * t) * MMA_XS_STRIDE + j];
                const float2 x1 = sb[(nt * 8 + 2 * t + 1) * MMA_XS_STRIDE + j];
                // −M·d exactly (quant_x keeps d to 22 significant bits, M = 1.5·2²³ has 2), so
                // fmaf(S + M, d, −M·d) = d·S rounded once.
                const float xm0 = -MMA_MAGIC_F * x0.x, xm1 = -MMA_MAGIC_F * x1.x;
#pragma unroll
                for (int wt = 0; wt < WT; wt++) {
                    int c[4];
                    mma_i8<SIGNED>(c, a[wt][0], a[wt][1], bq);
                    const float2 wv[4] = {ws[wt][0], ws[wt][0], ws[wt][1], ws[wt][1]};
                    const float xd[4] = {x0.x, x1.x, x0.x, x1.x}, xmm[4] = {xm0, xm1, xm0, xm1};
                    const float xsum[4] = {x0.y, x1.y, x0.y, x1.y};
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        float v = acc[wt][nt][e];
                        if (MIN) v = fmaf(-wv[e].y, xsum[e], v);
                        acc[wt][nt][e] = fmaf(wv[e].x, fmaf(__int_as_float(c[e]), xd[e], xmm[e]), v);
                    }
                }
            }
        }
        __syncthreads();
    }

    mq_store<WT, NT>(acc, y + (i64)blockIdx.z * m * n, n, m, n0, m0, warp, lane);
}

#define MMA_KERNEL(suffix, T, BM, WT)                                                             \
    extern "C" __global__ void __launch_bounds__(MMA_THREADS) mma_##suffix##_b##BM##_w##WT(         \
        const u8* __restrict__ body, const u8* __restrict__ head, const uint4* __restrict__ xq,     \
        const float2* __restrict__ xs, float* __restrict__ y, int n, int k, int m, int spz) {       \
        mma_body<T, BM, WT>(body, head, xq, xs, y, n, k, m, spz);                                 \
    }

// The configurations the host picks from (ops/matmul_mma.rs MMA_CONFIGS, same order).
#define MMA_ALL_CONFIGS(suffix, T) \
    MMA_KERNEL(suffix, T, 16, 1) MMA_KERNEL(suffix, T, 32, 1) MMA_KERNEL(suffix, T, 64, 1) MMA_KERNEL(suffix, T, 64, 2)

#ifndef MQ4K_NO_INSTANCES  // the lab (backend-cuda/labs/mma) builds only its Q4_K kernels
KILN_FOR_EACH_BLOCK_TYPE(MMA_ALL_CONFIGS)
#endif

// y[i] = Σ_z part[z·count + i] (z in order: deterministic): the k split's partial sums.
// Grid-stride, one thread per output element; reads S·count·4 bytes, writes count·4.
// A programmatic dependent (the partial sums are read after griddepcontrol.wait; a no-op when
// launched without the attribute).
extern "C" __global__ void mma_reduce(const float* __restrict__ part, float* __restrict__ y, i64 count, int splits) {
    pdl_enter();
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (i64)gridDim.x * blockDim.x) {
        float s = 0.0f;
        for (int z = 0; z < splits; z++) s += part[(i64)z * count + i];
        y[i] = s;
    }
}

// ------------------------------------------------------------------------------------------
// mq4k_b<BM>_w<WT>_n<NW>_s<ST>: Q4_K for 1 ≤ m ≤ 64 (issues 3 and 6). Measured in labs/mma
// (H200): 33–47 % of copy bandwidth at m ≤ 16 on the large shapes, not yet the bound it aims at.
//
// x: mq_quant_x rounds x to int8 per 32 elements (one Q4_K sub-block) with (d, d·Σq), d =
// max|x| / 127 rounded up to 22 significant bits (as quant_x): xq u8 [k/256][mp][256] (block
// column, x row, element), xs float2 [k/256][mp/2][8][2] (block column, x row pair, sub-block,
// row in pair); rows m..mp−1 are zero (mp = the m-tiles' rows). Reads m·k·4 bytes, writes
// mp·k·1.25.
//
// Main kernel. Grid (mp / BM, ceil(n / BN), S) (the m tiles of one W tile are adjacent block
// indices, so a W tile read twice comes from L2), block 32·NW threads, BN = 16·WT·NW W rows. A
// k stage is one Q4_K block column (256 elements): the RAW 144-byte blocks of the BN rows
// (d, dmin, scales[12], qs[128]: the GGUF block, kiln's body), the int8 x of the BM rows and
// their scales, copied by cp.async into a ring of ST stages (ST − 1 in flight while one is
// used; BN·144 + BM·320 bytes per stage from global, padded in shared memory so every fragment
// load below is bank-conflict free). Warp w owns W rows [16·WT·w, 16·WT·(w + 1)) × all BM x
// rows: WT × BM/8 tiles of mma.sync m16n8k32 s8 (W = A, 16 rows; x = B, 8 columns).
// Fragments straight from the raw block (g = lane / 4, t = lane % 4): one 8-byte LDS of qs
// bytes 32cc + 8t .. +7 of row g (and of g + 8) holds elements 8t..8t+7 of sub-block 2cc (low
// nibbles) and of 2cc + 1 (high nibbles), i.e. a0/a2 of both sub-blocks after AND 0x0F0F0F0F
// (SHR 4 + AND): the k order inside the mma is permuted (a0 ↔ elements 8t..8t+3, a2 ↔
// 8t+4..8t+7) and the B fragment (x bytes 8t..8t+7 of the sub-block, one 8-byte LDS) uses the
// same permutation, so the dot product is unchanged. One sub-block = one k32 mma with one
// (scale, min) per W row and one (d, d·Σq) per x row: the s32 sum S (accumulator input
// 1.5·2²³ as f32 bits, so the result read as f32 is M + S exactly, |S| ≤ 32·15·127) is
// converted and scaled by 3 FFMA per output: acc += dl·(dx·S) − ml·(dx·Σq). The (dl, ml) of
// a row are decoded once per sub-block pair (lane t of a row's 4 lanes decodes pair t) and
// exchanged by shuffles. W copy addresses are computed once per thread (hoisted).
// PDL: W copies of the first stages are issued before griddepcontrol.wait (x comes from the
// previous kernel); the kernel lets its dependents launch at its start.
// k split (gridDim.z = S > 1): each block writes its partial sums y = part f32 [S, m, n];
// mma_reduce (a programmatic dependent) adds them in split order. (Tried: the last block of a
// tile adding the partials itself, after an arrival counter: 1.2–2.6× slower in the lab.)
// Bytes: W once (n·k·0.5625), x mp·k·1.25 per W tile (L2), y m·n·4 (·2·S with a split).
// FLOPs 2·m·n·k (int8 MACs) + 6·m·n·k/32 f32.
#define MQ_X_STRIDE 288  // bytes per x row in a stage: 256 + 32 pad (72 words ≡ 8 mod 32)

// Q5_K (mq5k: the same kernel with Q5 = true): the raw 176-byte block (d, dmin, scales[12],
// qh[32] @16, qs[128] @48) in rows of 224 bytes (56 words ≡ 24 mod 32: the 8-byte fragment
// loads of a half warp's 4 rows tile the 32 banks); the fifth bit of a qs byte's low / high
// nibble, bit 2cc / 2cc + 1 of qh byte l (l = the byte's index in its 32-byte run), goes to bit
// 4 of the A fragment byte (0..31: still exact in s8).
#define MQ5_W_STRIDE 224

// d[16×8 s32] = a[16×32] · b[32×8] + MMA_MAGIC. Fragments (g = lane / 4, t = lane % 4): a0 =
// row g, k 4t..4t+3; a1 = row g + 8; a2 = row g, k 16+4t..; a3 = row g + 8, k 16+4t..; b0 = k
// 4t..4t+3 of column g, b1 = k 16+4t..; d0, d1 = row g, columns 2t, 2t + 1; d2, d3 = row g + 8.
__device__ __forceinline__ void mma_k32(int d[4], const u32 a[4], u32 b0, u32 b1) {
    const int c = MMA_MAGIC;
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%10,%10,%10};"
        : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(c));
}

// Lane `lane`'s 8 elements of x row `row` (zeros past m) in 256-column block `blk`, rounded to int8
// as one q8 group (w: the 8 quants; returns (d, d·Σq)): the load-and-round mq_quant_x and
// mp_quant_x share (they differ in where they store).
__device__ __forceinline__ float2 q4k_x_round8(const float* __restrict__ x, int k, int m, int row, int blk,
                                               int lane, u32 (&w)[2]) {
    float v[8];
#pragma unroll
    for (int l = 0; l < 8; l++) v[l] = 0.0f;
    if (row < m) {
        const float* p = x + (i64)row * k + blk * 256 + 8 * lane;
#pragma unroll
        for (int l = 0; l < 8; l++) v[l] = p[l];
    }
    return q8_group<8>(v, w);
}

// mq_quant_x: one warp per (block column, x row); lane L rounds elements 8L..8L+7, the 4 lanes
// of a sub-block share max and Σq by shuffles. Grid-stride over k/256 · mp warps. A non-finite
// x makes its sub-block's scale NaN (the output is then NaN, as with f32 activations).
extern "C" __global__ void __launch_bounds__(256) mq_quant_x(const float* __restrict__ x, u8* __restrict__ xq,
                                                             float2* __restrict__ xs, int k, int m, int mp) {
    pdl_launch_dependents();
    pdl_wait();  // PDL launch: x and the scratch may still be in use by the previous kernel
    const int nb = k / 256;
    const i64 warps = (i64)nb * mp;
    const int lane = threadIdx.x % KILN_WARP;
    for (i64 wi = ((i64)blockIdx.x * blockDim.x + threadIdx.x) / KILN_WARP; wi < warps;
         wi += (i64)gridDim.x * blockDim.x / KILN_WARP) {
        const int blk = (int)(wi / mp), row = (int)(wi % mp);
        u32 w[2];
        const float2 ds = q4k_x_round8(x, k, m, row, blk, lane, w);
        *(uint2*)(xq + ((i64)blk * mp + row) * 256 + 8 * lane) = make_uint2(w[0], w[1]);
        if ((lane & 3) == 0) xs[(((i64)blk * (mp / 2) + row / 2) * 8 + lane / 4) * 2 + (row & 1)] = ds;
    }
}

// ---- Q4_K fragment helpers shared by mq4k (below) and mp4k (matmul_mp.cuh) ----
// (d·sc, −dmin·mn) of sub-blocks 2t, 2t + 1 (h = 0, 1) of the row whose block header is hd (d,
// dmin, scales[12]), into mdl[h][r], mml[h][r] (r: row g or g + 8 of the tile).
__device__ __forceinline__ void q4k_row_scales(uint4 hd, int t, int r, float mdl[2][2], float mml[2][2]) {
    u32 sc, mn;
    k4_scale_pairs(hd.y, hd.z, hd.w, t, sc, mn);
    const float d = h2f((u16)(hd.x & 0xffffu)), dm = h2f((u16)(hd.x >> 16));
#pragma unroll
    for (int h = 0; h < 2; h++) {
        mdl[h][r] = d * (float)((sc >> (8 * h)) & 0xffu);
        mml[h][r] = -dm * (float)((mn >> (8 * h)) & 0xffu);
    }
}
// mma_i8's A fragments of one 16-row tile for a sub-block pair: q0, q1 = lane t's 8 qs bytes of
// rows g and g + 8; a[0] the low nibbles (sub-block 2cc), a[1] the high ones (2cc + 1).
__device__ __forceinline__ void q4k_a_frags(u32 a[2][4], uint2 q0, uint2 q1) {
    a[0][0] = q0.x & 0x0f0f0f0fu;
    a[0][1] = q1.x & 0x0f0f0f0fu;
    a[0][2] = q0.y & 0x0f0f0f0fu;
    a[0][3] = q1.y & 0x0f0f0f0fu;
    a[1][0] = (q0.x >> 4) & 0x0f0f0f0fu;
    a[1][1] = (q1.x >> 4) & 0x0f0f0f0fu;
    a[1][2] = (q0.y >> 4) & 0x0f0f0f0fu;
    a[1][3] = (q1.y >> 4) & 0x0f0f0f0fu;
}
// The scales lane `src` decoded (q4k_row_scales of pair cc), to every lane of its row quad.
__device__ __forceinline__ void q4k_shfl_scales(float dl[2][2], float nml[2][2], const float mdl[2][2],
                                                const float mml[2][2], int src) {
#pragma unroll
    for (int h = 0; h < 2; h++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            dl[h][r] = __shfl_sync(0xffffffffu, mdl[h][r], src);
            nml[h][r] = __shfl_sync(0xffffffffu, mml[h][r], src);
        }
}

template <int BM, int WT, int NW, int ST, bool Q5 = false>
__device__ __forceinline__ void mq4k_body(const u8* __restrict__ w, const u8* __restrict__ xq,
                                          const float2* __restrict__ xs, float* __restrict__ y, int n, int k,
                                          int m, int mp, int spz, int ty) {
    constexpr int BN = 16 * WT * NW, NT = BM / 8, THREADS = KILN_WARP * NW;
    constexpr int WS = Q5 ? MQ5_W_STRIDE : MQ_W_STRIDE;  // shared bytes per W row
    constexpr int BLK = Q5 ? 176 : 144, CH = BLK / 16, QS = Q5 ? 48 : 16;  // block bytes, chunks, qs offset
    constexpr int WB = BN * WS, XB = BM * MQ_X_STRIDE, STAGE = WB + XB + BM / 2 * MQ_S_STRIDE;
    static_assert(BM % 8 == 0 && ST >= 2, "BM whole n8 tiles, at least 2 stages");
    extern __shared__ uint4 mq_smem[];
    u8* sm = (u8*)mq_smem;  // [ST][W [BN][WS] | Xq [BM][288] | Xs [BM/2][144]]
    pdl_launch_dependents();  // the next kernel may launch; it waits for this grid to finish
    const int nb = k / 256;
    const int b0 = blockIdx.z * spz, b1 = min(nb, b0 + spz);
    const int m0 = blockIdx.x * BM, n0 = ty * BN;  // m tiles fastest: W tile shared in L2
    const int tid = threadIdx.x, lane = tid % KILN_WARP, warp = tid / KILN_WARP;
    const int g = lane >> 2, t = lane & 3;

    const MqWCopies<BN, CH, BLK, WS, THREADS> wc(w, n, nb, n0, b0, tid);
    auto issue_w = [&](int s, int slot) { wc.issue(sm + slot * STAGE, s - b0, tid); };
    // x bytes and scales of column s, rows m0..m0+BM−1 (< mp) → slot.
    auto issue_x = [&](int s, int slot) {
        u8* dq = sm + slot * STAGE + WB;
        mq_issue_x<BM, THREADS, MQ_X_STRIDE>(dq, dq + XB, xq, xs, s, mp, m0, tid);
    };

    float acc[WT][NT][4] = {};

    mq_ring<ST>(b0, b1, issue_w, issue_x, [&](int, int slot) {
        const u8* ws = sm + slot * STAGE;
        const u8* xb = ws + WB;
        const u8* sb = xb + XB;
        // Scales, decoded once per (row, sub-block pair): lane t decodes pair cc = t of rows g
        // and g + 8; the 4 lanes of a row exchange them by shuffles below.
        float my_dl[WT][2][2], my_ml[WT][2][2];  // [tile][sub-block 2t + h][row g / g + 8]
#pragma unroll
        for (int wt = 0; wt < WT; wt++) {
            const int row = warp * 16 * WT + wt * 16 + g;
#pragma unroll
            for (int r = 0; r < 2; r++)  // d, dmin, scales[12] of rows g, g + 8
                q4k_row_scales(*(const uint4*)(ws + (row + 8 * r) * WS), t, r, my_dl[wt], my_ml[wt]);
        }
        // Q5_K: qh bytes 8t .. 8t + 7 of rows g and g + 8 (the fifth bits of this lane's elements
        // 8t .. 8t + 7 of every sub-block).
        uint2 qh[WT][2];
#pragma unroll
        for (int wt = 0; wt < WT; wt++)
#pragma unroll
            for (int r = 0; r < 2; r++)
                qh[wt][r] = Q5 ? *(const uint2*)(ws + (warp * 16 * WT + wt * 16 + g + 8 * r) * WS + 16 + 8 * t)
                               : make_uint2(0u, 0u);
#pragma unroll
        for (int cc = 0; cc < 4; cc++) {
            u32 a[WT][2][4];          // [tile][low/high nibbles = sub-block 2cc / 2cc + 1][a0..a3]
            float dl[WT][2][2], nml[WT][2][2];  // [tile][sub-block][row g / g + 8]: d·sc, −dmin·mn
            const int src = (lane & ~3) | cc;
#pragma unroll
            for (int wt = 0; wt < WT; wt++) {
                const int row = warp * 16 * WT + wt * 16 + g;
                q4k_a_frags(a[wt], *(const uint2*)(ws + row * WS + QS + 32 * cc + 8 * t),
                            *(const uint2*)(ws + (row + 8) * WS + QS + 32 * cc + 8 * t));
                if (Q5) {
                    const u32 hw[4] = {qh[wt][0].x, qh[wt][1].x, qh[wt][0].y, qh[wt][1].y};  // a0..a3's
#pragma unroll
                    for (int h = 0; h < 2; h++)
#pragma unroll
                        for (int e = 0; e < 4; e++) a[wt][h][e] |= ((hw[e] >> (2 * cc + h)) & 0x01010101u) << 4;
                }
                q4k_shfl_scales(dl[wt], nml[wt], my_dl[wt], my_ml[wt], src);
            }
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int sbi = 2 * cc + h;
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    const uint2 bq = *(const uint2*)(xb + (nt * 8 + g) * MQ_X_STRIDE + 32 * sbi + 8 * t);
                    // (d, d·Σq) of x rows nt·8 + 2t and nt·8 + 2t + 1 for this sub-block.
                    const float4 xv = *(const float4*)(sb + (nt * 4 + t) * MQ_S_STRIDE + 16 * sbi);
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
    });

    mq_store<WT, NT>(acc, y + (i64)blockIdx.z * m * n, n, m, n0, m0, warp, lane);  // y, or split z's partials
}

// `<kind>g_b<BM>_w<WT>_n<NW>_s<ST>(segs, xq, xs, k, m, mp, spz)`: the grouped form of a kernel
// (`Backend::matmul_many`: q/k/v, gate/up at 2 ≤ m ≤ 64): up to GEMV_NS weights [n_s, k] of one
// type that read the same x (one mq_quant_x image) in ONE grid. The n tiles of the segments are
// numbered one after the other along gridDim.y (gemv_seg with R = BN rows per tile: segment s
// holds the next ceil(n_s / BN) tiles); a block runs the single kernel's body on its segment's
// weight, rows and y (the output [m, n_s], or with gridDim.z = S > 1 that segment's partial
// sums [S, m, n_s]). Each segment's results are the single kernel's at the same k split.
// `call` is the body call, with `s` the block's GemvSeg.
#define MQ_GROUPED(kind, BM, WT, NW, ST, call)                                                         \
    extern "C" __global__ void __launch_bounds__(KILN_WARP * NW) kind##g_b##BM##_w##WT##_n##NW##_s##ST( \
        const GemvSegs sg, const u8* __restrict__ xq, const float2* __restrict__ xs, int k, int m, int mp, \
        int spz) {                                                                                     \
        const GemvSeg s = gemv_seg<GEMV_NS, 16 * WT * NW>(sg, blockIdx.y);                            \
        call;                                                                                          \
    }
#define MQ5K_KERNEL(BM, WT, NW, ST)                                                                \
    extern "C" __global__ void __launch_bounds__(KILN_WARP * NW) mq5k_b##BM##_w##WT##_n##NW##_s##ST( \
        const u8* __restrict__ w, const u8* __restrict__ xq, const float2* __restrict__ xs,          \
        float* __restrict__ y, int n, int k, int m, int mp, int spz) {                               \
        mq4k_body<BM, WT, NW, ST, true>(w, xq, xs, y, n, k, m, mp, spz, blockIdx.y);               \
    }                                                                                              \
    MQ_GROUPED(mq5k, BM, WT, NW, ST, (mq4k_body<BM, WT, NW, ST, true>(s.body, xq, xs, s.y, s.n, k, m, mp, spz, s.g)))
#define MQ4K_KERNEL(BM, WT, NW, ST)                                                                \
    extern "C" __global__ void __launch_bounds__(KILN_WARP * NW) mq4k_b##BM##_w##WT##_n##NW##_s##ST( \
        const u8* __restrict__ w, const u8* __restrict__ xq, const float2* __restrict__ xs,          \
        float* __restrict__ y, int n, int k, int m, int mp, int spz) {                               \
        mq4k_body<BM, WT, NW, ST>(w, xq, xs, y, n, k, m, mp, spz, blockIdx.y);                     \
    }
// mq4k_* and its grouped form (the lab instantiates MQ4K_KERNEL alone).
#define MQ4K_KERNELS(BM, WT, NW, ST) \
    MQ4K_KERNEL(BM, WT, NW, ST)      \
    MQ_GROUPED(mq4k, BM, WT, NW, ST, (mq4k_body<BM, WT, NW, ST>(s.body, xq, xs, s.y, s.n, k, m, mp, spz, s.g)))

// The configurations the host picks from by m (ops/matmul_mma/mqk.rs FAMILIES, same order);
// the lab (backend-cuda/labs/mma) instantiates its own set instead.
#ifndef MQ4K_NO_INSTANCES
MQ4K_KERNELS(8, 1, 8, 3)
MQ4K_KERNELS(16, 1, 8, 3)
MQ4K_KERNELS(32, 2, 4, 3)
MQ4K_KERNELS(64, 2, 8, 3)
// mq5k: Q5_K at 1 ≤ m ≤ 64 (ops/matmul_mma/mqk.rs, same order).
MQ5K_KERNEL(8, 1, 8, 3)
MQ5K_KERNEL(16, 1, 8, 3)
MQ5K_KERNEL(32, 2, 4, 3)
MQ5K_KERNEL(64, 2, 8, 2)  // 3 stages would need 241 KB
#endif

// mq6k, mq8_0: Q6_K, Q8_0 at 1 ≤ m ≤ 64 (matmul_mqk.cuh).
#include "matmul_mqk.cuh"
// The configurations the host picks from by m (ops/matmul_mma/mqk.rs, same order).
#ifndef MQ4K_NO_INSTANCES
MQK_KERNEL(mq6k, 8, 1, 8, 3)
MQK_KERNEL(mq6k, 16, 1, 8, 3)
MQK_KERNEL(mq6k, 32, 2, 4, 3)
MQK_KERNEL(mq6k, 64, 2, 8, 3)
MQK_KERNEL(mq8_0, 8, 1, 8, 3)
MQK_KERNEL(mq8_0, 16, 1, 8, 3)
MQK_KERNEL(mq8_0, 32, 2, 4, 3)
MQK_KERNEL(mq8_0, 64, 2, 8, 2)  // 3 stages would need 290 KB
#endif

// mp4k: Q4_K at 2 ≤ m ≤ 8 with W through per-warp bulk-copy rings (matmul_mp.cuh).
#include "matmul_mp.cuh"
// The configurations the host picks from by m (ops/matmul_mma/mp4k.rs MP4K, same order); the lab
// instantiates its own set instead.
#ifndef MQ4K_NO_INSTANCES
MP4K_KERNEL(1, 1, 2, 2)
MP4KG_KERNEL(1, 1, 2, 2)
#endif
#ifndef MQ4K_NO_INSTANCES
// The same with one 2-D tensor copy per warp and stage (the host passes a CUtensorMap of W).
MPT4K_KERNEL(1, 1, 2, 2)
MPT4KG_KERNEL(1, 1, 2, 2)
#endif
