// matmul_q.cu: y = x·Wᵀ for every weight type (x f32 [m, k], W [n, k] in the repacked layout of
// quant.cuh, y f32 [m, n]), plus the dequantize-to-bf16 kernel of the dense (cuBLASLt) path.
//
// Block types (the 12 GGUF formats), few rows: two kernels per call.
//   quant_x_<type>: x f32 [m, k] → int8 units of 16 (xq uint4 [m, units]) with (d, d·Σq)
//     (xs float2 [m, units]), in the lane order of the type's chunks (layout below); four
//     threads per unit; d = max|x| / 127 rounded up to 22 significant bits. Reads m·k·4 bytes, writes m·k·1.5 (+ padding).
//   gemv8_<type>_m<M> (M ∈ {1, 2, 4, 8, 16}): grid (min(groups·S / 4, 8·SMs), ceil(m / M)),
//     block 128 threads = 4 warps. A group is R = 4 consecutive W rows and M consecutive x rows;
//     S warps (1, 2 or 4, chosen by the host so the grid has ~32 warps per SM) share a group and
//     split its chunks. Each lane loads one chunk (16-byte loads) of each of the R rows, turns
//     each 16-element run into 4 words of byte integers (quant.cuh run_qi: exact), and for each
//     x row does 4 dp4a against the int8 x and 2 FFMA (dl·d·Σq·qx − ml·d·Σqx). Warp shuffles,
//     then shared memory across the S warps, reduce. On sm_90 it is launched as a programmatic
//     dependent of quant_x: its first weight loads overlap quant_x (griddepcontrol).
//     Bytes: W once per M-group (n·k·bpw), x m·k·1.5 (L1/L2), y m·n·4. FLOPs 2·m·n·k (as int8
//     dot products). At m = 1 the target is ≥ 85% of copy bandwidth (Q4_K, Q8_0, Q6_K).
//   On sm_90 quant_x is itself a programmatic dependent of the previous kernel (it waits with
//   griddepcontrol.wait before touching x or the scratch) and gemv8 triggers its dependents at
//   its start, so consecutive calls overlap.
// gemv1_<type> (m = 1, one kernel; the host takes it for the 256-element k-quants and IQ4 types
//   up to 16 MiB of weight only under KILN_GEMV1=1, see ops/matmul_q/gemv1.rs): grid at most one resident wave of 256-thread
//   blocks; each block L2-prefetches its first steps (cp.async.bulk.prefetch), waits for the
//   previous kernel (PDL), quantizes all of x into shared memory itself (xq/xs in quant_x's lane
//   order, x_units·24 bytes), then streams its groups (R = 4 rows, S warps per group, one
//   32-chunk step per trip, prefetching GEMV1_P steps ahead) as gemv8 does. Bytes: W once, x k·4
//   per block from L2, y n·4. Mapping details and measurements: backend-cuda/labs/gemv/README.md.
// gemvp_<type>[_m2|_m4] (m ≤ 4, ten block types; the default where it applies,
//   ops/matmul_q/pipe.rs): quant_x_q4_k2 + a kernel streaming W through shared memory by the
//   bulk copy engine; see gemv_pipe.cuh.
// Float types (f32, f16, bf16), few rows: gemv_<type>_m<M> (M ∈ {1, 2, 4, 8}), the same grid
//   with f32 x loaded directly (16 bytes per lane, shared by the R rows), f32 FFMA; launched as
//   programmatic dependents (they read x and write y only after griddepcontrol.wait). At M = 1 the
//   host sizes the grid by a wave cost model (ops/matmul_q.rs `m1_grid`), and `_u2` forms load
//   two chunk steps per trip (see below).
// dequant_bf16_<type>: grid-stride over chunks, 4 chunks in flight per thread: W (any type) →
//   bf16 [rows, k]; reads the weight bytes once, writes 2 bytes per element.
// x_to_bf16 / x_to_f16: f32 → bf16/f16 activations for cuBLASLt, one thread per element.
// gemv_float_generic: any k (float weights whose rows are not whole 16-element groups), one warp
//   per (W row, x row), scalar loads.
#include "quant.cuh"

#define GEMV_THREADS 128
// gemv1 (m = 1, one kernel): W rows per group, chunk steps in flight, threads per block.
#define GEMV1_R 4
#define GEMV1_U 1
#define GEMV1_P 2
#define GEMV1_THREADS 256

// Programmatic dependent launch (common.cuh pdl_*): quant_x lets the GEMV grid start at once;
// the GEMV issues its first weight loads, then waits for quant_x's results.

// 16 f32 activations from a 16-byte aligned address.
__device__ __forceinline__ void load_x16(const float* p, float xv[16]) {
    const float4* xp = (const float4*)p;
#pragma unroll
    for (int t = 0; t < 4; t++) {
        const float4 v = __ldg(xp + t);
        xv[4 * t] = v.x; xv[4 * t + 1] = v.y; xv[4 * t + 2] = v.z; xv[4 * t + 3] = v.w;
    }
}

// acc + Σ w·x over one run, as dl·Σq·x − ml·Σx (two FFMA chains for ILP).
template <class T>
__device__ __forceinline__ float dot_run(const float q[16], float dl, float ml, const float xv[16], float sx, float acc) {
    float s0 = 0.0f, s1 = 0.0f;
#pragma unroll
    for (int l = 0; l < 16; l += 2) {
        s0 = fmaf(q[l], xv[l], s0);
        s1 = fmaf(q[l + 1], xv[l + 1], s1);
    }
    float a = fmaf(dl, s0 + s1, acc);
    if (T::HAS_MIN) a = fmaf(-ml, sx, a);
    return a;
}

// The end of a row group in both GEMV families: reduce its R·M partial dot products over the warp
// (shuffles), then over the S warps sharing the group (shared memory `red`, one row per warp), and
// store y [m, n]. Every thread of the block calls it (barriers when S > 1).
template <int R, int M>
__device__ __forceinline__ void reduce_store(float (&acc)[R][M], float (*red)[R * M], float* __restrict__ y,
                                             int n, int m, int g, int m0, int S, int warp, int slot, int sub,
                                             int lane, bool active) {
#pragma unroll
    for (int rr = 0; rr < R; rr++)
#pragma unroll
        for (int mm = 0; mm < M; mm++) {
            const float s = warp_sum(acc[rr][mm]);
            if (S == 1) {
                if (lane == 0 && active && g * R + rr < n && m0 + mm < m) y[(i64)(m0 + mm) * n + g * R + rr] = s;
            } else if (lane == 0) {
                red[warp][rr * M + mm] = s;
            }
        }
    if (S > 1) {
        __syncthreads();
        if (sub == 0 && active) {
            for (int e = lane; e < R * M; e += KILN_WARP) {
                float s = 0.0f;
                for (int t = 0; t < S; t++) s += red[slot * S + t][e];
                const int rr = e / M, mm = e % M;
                if (g * R + rr < n && m0 + mm < m) y[(i64)(m0 + mm) * n + g * R + rr] = s;
            }
        }
        __syncthreads();
    }
}

#include "gemv_segs.cuh"

// U chunk steps of the R rows are loaded before any is used (U·R chunks in flight per lane);
// NT threads per block.
template <class T, int M, int R, int NS, int GLU, int U = 1, int NT = GEMV_THREADS>
__device__ __forceinline__ void gemv_body(const GemvSegs& sg, const float* __restrict__ x, int k, int m, int S,
                                          int act) {
    KILN_DECLARE_TABLE(T)
    const int nb = k / T::QK;
    const int nchunks = nb * T::CHUNKS;
    const int lane = threadIdx.x % KILN_WARP;
    const int warp = threadIdx.x / KILN_WARP;
    const int wpb = blockDim.x / KILN_WARP;
    const int slots = wpb / S;  // row groups a block works on at once
    const int slot = warp / S, sub = warp % S;
    const int ngroups = group_count<NS, R, GLU>(sg);
    const int gstride = gridDim.x * slots;
    const int m0 = blockIdx.y * M;
    const int per_lane = (nchunks + KILN_WARP * S - 1) / (KILN_WARP * S);
    const int g0 = blockIdx.x * slots;
    // Block-uniform trip count (the S > 1 reduction has barriers).
    const int rounds = g0 < ngroups ? (ngroups - 1 - g0) / gstride + 1 : 0;
    __shared__ float red[NT / KILN_WARP][R * M];
    pdl_launch_dependents();

    for (int it = 0; it < rounds; it++) {
        const bool active = g0 + slot + it * gstride < ngroups;
        const GemvSeg sq = group_seg<NS, R, GLU>(sg, g0 + slot + it * gstride);
        const int n = sq.n, g = sq.g;
        float acc[R][M];
#pragma unroll
        for (int rr = 0; rr < R; rr++)
#pragma unroll
            for (int mm = 0; mm < M; mm++) acc[rr][mm] = 0.0f;
        // One chunk step of the R rows: x runs times the decoded weights into acc.
        auto consume = [&](int ci, const typename T::Chunk (&cur)[R]) {
            const int blk = ci / T::CHUNKS, c = ci % T::CHUNKS;
#pragma unroll
            for (int r = 0; r < T::RUNS; r++) {
                const int off = blk * T::QK + T::run_start(c, r);
                if (M <= 2) {
                    // x of this run for the M rows, shared by the R weight rows, and Σx.
                    float xv[M][16], sx[M];
#pragma unroll
                    for (int mm = 0; mm < M; mm++) {
                        const int mr = min(m0 + mm, m - 1);  // clamped row: valid read, unused result
                        load_x16(x + (i64)mr * k + off, xv[mm]);
                        sx[mm] = 0.0f;
                        if (T::HAS_MIN) {
#pragma unroll
                            for (int l = 0; l < 16; l++) sx[mm] += xv[mm][l];
                        }
                    }
#pragma unroll
                    for (int rr = 0; rr < R; rr++) {
                        float q[16], dl, ml;
                        T::run_q(cur[rr], c, r, kiln_tab, q, dl, ml);
#pragma unroll
                        for (int mm = 0; mm < M; mm++) acc[rr][mm] = dot_run<T>(q, dl, ml, xv[mm], sx[mm], acc[rr][mm]);
                    }
                } else {
                    // Many x rows: decode each weight row once, stream x per row (registers).
#pragma unroll
                    for (int rr = 0; rr < R; rr++) {
                        float q[16], dl, ml;
                        T::run_q(cur[rr], c, r, kiln_tab, q, dl, ml);
#pragma unroll
                        for (int mm = 0; mm < M; mm++) {
                            float xv[16], sx = 0.0f;
                            load_x16(x + (i64)min(m0 + mm, m - 1) * k + off, xv);
                            if (T::HAS_MIN) {
#pragma unroll
                                for (int l = 0; l < 16; l++) sx += xv[l];
                            }
                            acc[rr][mm] = dot_run<T>(q, dl, ml, xv, sx, acc[rr][mm]);
                        }
                    }
                }
            }
        };
        // The S warps of a group split its chunks: lane handles ci = 32·sub + lane + 32·S·j. A
        // trip issues the loads of U steps × R rows together (U·R·16..48 bytes in flight per
        // lane), then uses them.
        for (int j0 = 0; active && j0 < per_lane; j0 += U) {
            const int ci0 = KILN_WARP * sub + lane + KILN_WARP * S * j0;
            if (ci0 >= nchunks) break;
            typename T::Chunk cur[U][R];
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int ci = ci0 + KILN_WARP * S * u;
                if (u > 0 && (j0 + u >= per_lane || ci >= nchunks)) break;
                const int blk = ci / T::CHUNKS, c = ci % T::CHUNKS;
#pragma unroll
                for (int rr = 0; rr < R; rr++) {
                    const u8* b;
                    const u8* h;
                    int row;
                    group_row<R, GLU>(sg, sq, rr, b, h, row);
                    T::load(b, h, (i64)row * nb + blk, c, cur[u][rr]);
                }
            }
            pdl_wait();  // x may be the previous kernel's output (PDL launch on sm_90)
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int ci = ci0 + KILN_WARP * S * u;
                if (u > 0 && (j0 + u >= per_lane || ci >= nchunks)) break;
                consume(ci, cur[u]);
            }
        }
        pdl_wait();  // every thread, before any y write (y may be read by the previous kernel)
        if constexpr (GLU != 0)
            reduce_store_glu<R>(acc, red, sq.y, n, g, S, warp, slot, sub, lane, active, act);
        else
            reduce_store<R, M>(acc, red, sq.y, n, m, g, m0, S, warp, slot, sub, lane, active);
    }
}

// ---------------------------------------------------------------- int8-activation path
// Block types multiply int8 activations (q8 in units of 16 elements, an f32 scale each) with
// the exact integer weights, 4 products per `dp4a`. Layout of the quantized x for type T, per
// x row: `units` = ceil(nchunks / 32)·RUNS·32 units of 16 elements, unit u = (G·RUNS + r)·32 + L
// holding run r of chunk ci = 32·G + L (zeros past the last chunk), so that lane L of a warp
// working on chunk 32·G + L reads unit u with one coalesced 16-byte load (512 bytes per warp):
//   xq uint4 [m, units]  (16 int8 q, element l at byte l % 4 of word l / 4)
//   xs float2 [m, units] (d, d·Σq): x_l ≈ d·q_l, d = max|x| / 127 over the 16.
// A run then contributes dl·d·Σ q_l·qx_l − ml·d·Σ qx_l = Σ w_l·(d·qx_l): the exact weights times
// the rounded activations (the only approximation: |x_l − d·qx_l| ≤ d / 2).

template <class T>
__device__ __forceinline__ int x_units(int k) {
    const int nchunks = (k / T::QK) * T::CHUNKS;
    return ((nchunks + KILN_WARP - 1) / KILN_WARP) * T::RUNS * KILN_WARP;
}

// quant_x_<type>: four threads per unit (16 elements; each thread 4 consecutive x values, the
// quad's max and sum by shuffles): grid-stride over m·units·4 (rounded up to whole warps so the
// shuffles see full quads); reads m·k·4 bytes, writes m·units·24 bytes. A non-finite x makes its
// unit's scale NaN (the output is then NaN, as it would be with f32 activations).
template <class T>
__device__ __forceinline__ void quant_x_body(const float* __restrict__ x, uint4* __restrict__ xq,
                                             float2* __restrict__ xs, int k, int m) {
    pdl_launch_dependents();
    pdl_wait();  // PDL launch: x and the scratch may still be in use by the previous kernel
    const int nchunks = (k / T::QK) * T::CHUNKS;
    const int units = x_units<T>(k);
    const i64 total = (i64)m * units * 4;
    const i64 span = (total + KILN_WARP - 1) / KILN_WARP * KILN_WARP;
    u32* xw = (u32*)xq;  // word `part` of unit `unit` is xw[4·unit + part]
    for (i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x; t < span; t += (i64)gridDim.x * blockDim.x) {
        const bool valid = t < total;
        const i64 unit = valid ? t >> 2 : 0;
        const int part = (int)(t & 3);
        const int row = (int)(unit / units), u = (int)(unit % units);
        const int L = u % KILN_WARP, rest = u / KILN_WARP;
        const int r = rest % T::RUNS, G = rest / T::RUNS;
        const int ci = G * KILN_WARP + L;
        const bool live = valid && ci < nchunks;
        float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (live) {
            const int blk = ci / T::CHUNKS, c = ci % T::CHUNKS;
            const float* p = x + (i64)row * k + blk * T::QK + T::run_start(c, r) + 4 * part;
#pragma unroll
            for (int l = 0; l < 4; l++) v[l] = p[l];
        }
        u32 w[1];
        const float2 ds = q8_group<4>(v, w);
        if (valid) {
            xw[4 * unit + part] = w[0];  // zeros past the last chunk (v = 0)
            if (part == 0) xs[unit] = live ? ds : make_float2(0.0f, 0.0f);
        }
    }
}

#define QUANT_X_KERNEL(suffix, T)                                                                 \
    extern "C" __global__ void quant_x_##suffix(const float* __restrict__ x, uint4* __restrict__ xq, \
                                                float2* __restrict__ xs, int k, int m) {          \
        quant_x_body<T>(x, xq, xs, k, m);                                                         \
    }

KILN_FOR_EACH_BLOCK_TYPE(QUANT_X_KERNEL)

// Σ of the 4 byte products of a (weight bytes, unsigned or signed) and b (int8 x) plus c.
__device__ __forceinline__ int dp4a_us(u32 a, u32 b, int c) {
    int d;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}
__device__ __forceinline__ int dp4a_ss(u32 a, u32 b, int c) {
    int d;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

// Σ q_l·qx_l over one run of 16 (exact in int32: |Σ| ≤ 16·255·127).
template <class T>
__device__ __forceinline__ int dot16(const u32 qw[4], const uint4& xv) {
    if (T::SIGNED_Q) return dp4a_ss(qw[3], xv.w, dp4a_ss(qw[2], xv.z, dp4a_ss(qw[1], xv.y, dp4a_ss(qw[0], xv.x, 0))));
    return dp4a_us(qw[3], xv.w, dp4a_us(qw[2], xv.z, dp4a_us(qw[1], xv.y, dp4a_us(qw[0], xv.x, 0))));
}

// gemv8_<type>_m<M>: the fused kernel of the block types, on quantized x. Grid, blocks, groups
// (R W rows × M x rows), the S-warp split and the reductions are those of gemv_body above; per
// run, each lane decodes the R rows' 16 integers once (run_qi: a few shifts and masks per 4
// weights), then for each of the M x rows loads 16 + 8 bytes of x and does 4 dp4a + 2 FFMA per
// W row. Bytes: W once per M-group (n·k·bpw), x m·k·1.5 (L1/L2), y m·n·4. FLOPs 2·m·n·k.
template <class T, int M, int R, int U, int NS, int GLU>
__device__ __forceinline__ void gemv8_body(const GemvSegs& sg, const uint4* __restrict__ xq,
                                           const float2* __restrict__ xs, int k, int m, int S, int act) {
    const int nb = k / T::QK;
    const int nchunks = nb * T::CHUNKS;
    const int nc32 = (nchunks + KILN_WARP - 1) / KILN_WARP;
    const int units = nc32 * T::RUNS * KILN_WARP;
    const int lane = threadIdx.x % KILN_WARP;
    const int warp = threadIdx.x / KILN_WARP;
    const int wpb = blockDim.x / KILN_WARP;
    const int slots = wpb / S;
    const int slot = warp / S, sub = warp % S;
    const int ngroups = group_count<NS, R, GLU>(sg);
    const int gstride = gridDim.x * slots;
    const int m0 = blockIdx.y * M;
    const int per_lane = (nc32 + S - 1) / S;
    const int g0 = blockIdx.x * slots;
    const int rounds = g0 < ngroups ? (ngroups - 1 - g0) / gstride + 1 : 0;
    __shared__ float red[GEMV_THREADS / KILN_WARP][R * M];
    pdl_launch_dependents();  // the next call's quant_x may start (it waits for this grid)

    for (int it = 0; it < rounds; it++) {
        const bool active = g0 + slot + it * gstride < ngroups;
        const GemvSeg sq = group_seg<NS, R, GLU>(sg, g0 + slot + it * gstride);
        const int n = sq.n, g = sq.g;
        float acc[R][M];
#pragma unroll
        for (int rr = 0; rr < R; rr++)
#pragma unroll
            for (int mm = 0; mm < M; mm++) acc[rr][mm] = 0.0f;
        // U chunk steps per trip: all U·R chunk loads are issued before any is used (U·R·16..48
        // bytes in flight per lane); steps past the end load a valid (clamped) chunk, unused.
        for (int j = 0; active && j < per_lane; j += U) {
            typename T::Chunk cur[U][R];
#pragma unroll
            for (int uu = 0; uu < U; uu++) {
                const int ci = min(KILN_WARP * (sub + S * (j + uu)) + lane, nchunks - 1);
                const int blk = ci / T::CHUNKS, c = ci % T::CHUNKS;
#pragma unroll
                for (int rr = 0; rr < R; rr++) {
                    const u8* b;
                    const u8* h;
                    int row;
                    group_row<R, GLU>(sg, sq, rr, b, h, row);
                    T::load(b, h, (i64)row * nb + blk, c, cur[uu][rr]);
                }
            }
            pdl_wait();  // x is quant_x's output: read only after it completed
#pragma unroll
            for (int uu = 0; uu < U; uu++) {
                const int G = sub + S * (j + uu);
                const int ci = KILN_WARP * G + lane;
                if (j + uu >= per_lane || ci >= nchunks) break;
                const int c = ci % T::CHUNKS;
#pragma unroll
                for (int r = 0; r < T::RUNS; r++) {
                    u32 qw[R][4];
                    float dl[R], ml[R];
#pragma unroll
                    for (int rr = 0; rr < R; rr++) T::run_qi(cur[uu][rr], c, r, qw[rr], dl[rr], ml[rr]);
                    const int u = (G * T::RUNS + r) * KILN_WARP + lane;
#pragma unroll
                    for (int mm = 0; mm < M; mm++) {
                        const i64 o = (i64)min(m0 + mm, m - 1) * units + u;  // clamped row: unused result
                        const uint4 xv = __ldg(xq + o);
                        const float2 sc = __ldg(xs + o);
#pragma unroll
                        for (int rr = 0; rr < R; rr++) {
                            const float d = (float)dot16<T>(qw[rr], xv);
                            float a = fmaf(dl[rr] * sc.x, d, acc[rr][mm]);
                            if (T::HAS_MIN) a = fmaf(-ml[rr], sc.y, a);
                            acc[rr][mm] = a;
                        }
                    }
                }
            }
        }
        if constexpr (GLU != 0)
            reduce_store_glu<R>(acc, red, sq.y, n, g, S, warp, slot, sub, lane, active, act);
        else
            reduce_store<R, M>(acc, red, sq.y, n, m, g, m0, S, warp, slot, sub, lane, active);
    }
}

#define GEMV8_KERNEL_NAMED(name, T, M, R, U)                                                      \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS) name(                                \
        const u8* __restrict__ body, const u8* __restrict__ head, const uint4* __restrict__ xq,     \
        const float2* __restrict__ xs, float* __restrict__ y, int n, int k, int m, int S) {         \
        gemv8_body<T, M, R, U, 1, 0>(gemv_one_seg(body, head, y, n), xq, xs, k, m, S, 0);           \
    }
#define GEMV8_KERNEL(suffix, T, M, R, U) GEMV8_KERNEL_NAMED(gemv8_##suffix##_m##M, T, M, R, U)

// R = 4 W rows per group at every M: measured on an H200 (BENCHMARKS.md), R = 4 beat R = 2 at
// M = 8 and 16 (x loads shared by more rows) and R ∈ {1, 2, 8} or U ∈ {2, 4} did not beat
// (R, U) = (4, 1) at M = 1 and 2.
#define GEMV8_ALL_M(suffix, T)                                                                    \
    GEMV8_KERNEL(suffix, T, 1, 4, 1) GEMV8_KERNEL(suffix, T, 2, 4, 1) GEMV8_KERNEL(suffix, T, 4, 4, 1) \
    GEMV8_KERNEL(suffix, T, 8, 4, 1) GEMV8_KERNEL(suffix, T, 16, 4, 1)


KILN_FOR_EACH_BLOCK_TYPE(GEMV8_ALL_M)

// gemv8s_<type>: gemv8 at M = 1 over up to GEMV_NS weight segments (q/k/v or gate/up as one
// launch after one quant_x). y of segment s: [1, n[s]].
#define GEMV8S_KERNEL_NAMED(name, T, U)                                                           \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS) name(                                \
        GemvSegs sg, const uint4* __restrict__ xq, const float2* __restrict__ xs, int k, int S) {   \
        gemv8_body<T, 1, 4, U, GEMV_NS, 0>(sg, xq, xs, k, 1, S, 0);                               \
    }
#define GEMV8S_KERNEL(suffix, T) GEMV8S_KERNEL_NAMED(gemv8s_##suffix, T, 1)
KILN_FOR_EACH_BLOCK_TYPE(GEMV8S_KERNEL)

// gemv8g_<type>: gemv8 at M = 1 in GLU mode (segment 0 gate, 1 up; y = act(gate)·up [1, n]).
#define GEMV8G_KERNEL_NAMED(name, T, U)                                                           \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS) name(                                \
        GemvSegs sg, const uint4* __restrict__ xq, const float2* __restrict__ xs, int k, int S,     \
        int act) {                                                                                \
        gemv8_body<T, 1, 4, U, 2, 1>(sg, xq, xs, k, 1, S, act);                                   \
    }
#define GEMV8G_KERNEL(suffix, T) GEMV8G_KERNEL_NAMED(gemv8g_##suffix, T, 1)
KILN_FOR_EACH_BLOCK_TYPE(GEMV8G_KERNEL)

// gemvp_q4_k (m = 1, the weight streamed through shared memory by the bulk copy engine) and
// quant_x_q4_k2: gemv_pipe.cuh.
#include "gemv_pipe.cuh"

// `_u2` forms of the one-row Q4_K kernels: two chunk steps per trip (U = 2; 8 chunks in flight
// per lane). The host picks them under `KILN_GEMV_U=2` (ops/matmul_q.rs `m1_u2`).
GEMV8_KERNEL_NAMED(gemv8_q4_k_m1_u2, TQ4_K, 1, 4, 2)
GEMV8S_KERNEL_NAMED(gemv8s_q4_k_u2, TQ4_K, 2)
GEMV8G_KERNEL_NAMED(gemv8g_q4_k_u2, TQ4_K, 2)

// ---------------------------------------------------------------- m = 1: one kernel
// gemv1_<type> (block types, m = 1, x 16-byte aligned, x_units·24 bytes of x fit in shared
// memory): y f32 [1, n] = x f32 [1, k] · Wᵀ in ONE kernel, launched as a programmatic dependent
// of whatever ran before it on the stream (PDL): every block first issues its first weight
// loads (W never depends on earlier kernels), then waits (griddepcontrol.wait), quantizes the
// whole x row into shared memory itself (the quant_x arithmetic, same lane order: xq uint4
// [units], xs float2 [units]; k·4 bytes read from L2 per block), and streams its rows.
// Thread mapping: block NT threads = NT/32 warps; a group is R consecutive W rows; S warps of a
// block (S ∈ {1, 2, 4, 8}, host-chosen) share a group and split its 32-chunk steps
// (step G = sub + S·j, lane L takes chunk 32·G + L); each lane issues U steps × R rows of chunk
// loads before using any (U·R chunks in flight), per run 4 dp4a + 2 FFMA per row against the
// shared-memory x (one conflict-free 16-byte load per run, shared by the R rows). The grid is
// at most one resident wave (host: occupancy), warps stride over the groups; reduction as in
// gemv8 (shuffles, then shared memory across the S warps).
// Bytes: W once (n·k·bpw from DRAM), x k·4 per block (L2), y n·4. FLOPs 2·n·k.

// x f32 [k] → xq uint4 [units], xs float2 [units] in shared memory, in T's lane order (as
// quant_x_body), one thread per unit of 16, two units' loads in flight per thread. Ends with a
// block barrier.
template <class T>
__device__ __forceinline__ void quant_x_smem(const float* __restrict__ x, uint4* xq, float2* xs, int k) {
    const int nchunks = (k / T::QK) * T::CHUNKS;
    const int units = x_units<T>(k);
    constexpr int QB = 2;
    for (int u0 = threadIdx.x; u0 < units; u0 += QB * blockDim.x) {
        float4 v[QB][4];  // the 16 x of unit u0 + b·blockDim.x
        bool live[QB];
#pragma unroll
        for (int b = 0; b < QB; b++) {
            const int u = u0 + b * blockDim.x;
            const int L = u % KILN_WARP, rest = u / KILN_WARP;
            const int r = rest % T::RUNS, G = rest / T::RUNS;
            const int ci = G * KILN_WARP + L;
            live[b] = u < units && ci < nchunks;
            const int blk = ci / T::CHUNKS, c = ci % T::CHUNKS;
            const float4* p = (const float4*)(x + (live[b] ? blk * T::QK + T::run_start(c, r) : 0));
#pragma unroll
            for (int t = 0; t < 4; t++) v[b][t] = live[b] ? __ldg(p + t) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
#pragma unroll
        for (int b = 0; b < QB; b++) {
            const int u = u0 + b * blockDim.x;
            float e[16];
#pragma unroll
            for (int t = 0; t < 4; t++) {
                e[4 * t] = v[b][t].x; e[4 * t + 1] = v[b][t].y; e[4 * t + 2] = v[b][t].z; e[4 * t + 3] = v[b][t].w;
            }
            float amax = 0.0f;
            bool finite = true;
#pragma unroll
            for (int l = 0; l < 16; l++) {
                finite = finite && isfinite(e[l]);
                amax = fmaxf(amax, fabsf(e[l]));
            }
            // As quant_x_body: d = max|x| / 127 rounded up to 22 significant bits.
            const float d = __uint_as_float((__float_as_uint(amax / 127.0f) + 3u) & ~3u);
            const float id = amax > 0.0f ? 1.0f / d : 0.0f;
            u32 w[4] = {0u, 0u, 0u, 0u};
            int sum = 0;
#pragma unroll
            for (int l = 0; l < 16; l++) {
                const int qi = max(-127, min(127, __float2int_rn(e[l] * id)));
                sum += qi;
                w[l / 4] |= ((u32)qi & 0xffu) << (8 * (l % 4));
            }
            if (u < units) {
                xq[u] = make_uint4(w[0], w[1], w[2], w[3]);
                const float dd = finite ? d : __uint_as_float(0x7fc00000u);
                xs[u] = live[b] ? make_float2(dd, dd * (float)sum) : make_float2(0.0f, 0.0f);
            }
        }
    }
    __syncthreads();
}

// The U steps × R rows of chunk loads of group g at step j (rows and chunks clamped: a valid
// read, result unused).
template <class T, int R, int U, int GLU>
__device__ __forceinline__ void gemv1_load(const GemvSegs& sg, const GemvSeg& sq, typename T::Chunk (&cur)[U][R],
                                           int j, int sub, int S, int lane, int nb, int nchunks) {
#pragma unroll
    for (int uu = 0; uu < U; uu++) {
        const int ci = min(KILN_WARP * (sub + S * (j + uu)) + lane, nchunks - 1);
        const int blk = ci / T::CHUNKS, c = ci % T::CHUNKS;
#pragma unroll
        for (int rr = 0; rr < R; rr++) {
            const u8* b;
            const u8* h;
            int row;
            group_row<R, GLU>(sg, sq, rr, b, h, row);
            T::load(b, h, (i64)row * nb + blk, c, cur[uu][rr]);
        }
    }
}

// Bulk prefetch of `bytes` (a multiple of 16) at a 16-byte aligned global address into L2
// (sm_90 cp.async.bulk.prefetch; no registers held, nothing returned; a no-op before sm_90).
__device__ __forceinline__ void l2_prefetch(const u8* p, u32 bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (bytes > 0) asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#endif
}

// L2 prefetch of chunk step G of group g: lane rr < R takes row g·R + rr's body bytes, lane
// R + rr its head bytes (the head range shrunk to whole 16-byte words inside it).
template <class T, int R>
__device__ __forceinline__ void gemv1_prefetch(const u8* __restrict__ body, const u8* __restrict__ head, int g,
                                               int G, int lane, int nb, int nchunks, int n) {
    const int c0 = KILN_WARP * G;
    if (lane >= 2 * R || c0 >= nchunks) return;
    const int rr = lane % R;
    const int row = g * R + rr;
    if (row >= n) return;
    const int b0 = c0 / T::CHUNKS, b1 = (min(c0 + KILN_WARP, nchunks) - 1) / T::CHUNKS;
    const i64 blk = (i64)row * nb + b0;
    if (lane < R) {
        l2_prefetch(body + blk * T::BODY, (u32)((b1 - b0 + 1) * T::BODY));
    } else if (T::HEAD > 0) {
        const u64 s = ((u64)(head + blk * T::HEAD) + 15u) & ~(u64)15u;
        const u64 e = ((u64)(head + (blk + b1 - b0 + 1) * T::HEAD)) & ~(u64)15u;
        if (e > s) l2_prefetch((const u8*)s, (u32)(e - s));
    }
}

template <class T, int R, int U, int P, int NS, int GLU>
__device__ __forceinline__ void gemv1_body(const GemvSegs& sg, const float* __restrict__ x, int k, int S, int act) {
    extern __shared__ uint4 gemv1_x[];  // xq uint4 [units], then xs float2 [units]
    const int nb = k / T::QK;
    const int nchunks = nb * T::CHUNKS;
    const int nc32 = (nchunks + KILN_WARP - 1) / KILN_WARP;
    const int units = nc32 * T::RUNS * KILN_WARP;
    uint4* xq = gemv1_x;
    float2* xs = (float2*)(gemv1_x + units);
    const int lane = threadIdx.x % KILN_WARP;
    const int warp = threadIdx.x / KILN_WARP;
    const int wpb = blockDim.x / KILN_WARP;
    const int slots = wpb / S;
    const int slot = warp / S, sub = warp % S;
    const int ngroups = group_count<NS, R, GLU>(sg);
    const int gstride = gridDim.x * slots;
    const int per_lane = (nc32 + S - 1) / S;
    const int g0 = blockIdx.x * slots;
    const int rounds = g0 < ngroups ? (ngroups - 1 - g0) / gstride + 1 : 0;
    __shared__ float red[1024 / KILN_WARP][R];

    pdl_launch_dependents();
    // This warp's steps in order t = it·per_lane + j; the L2 prefetch runs P steps ahead.
    auto prefetch = [&](int t) {
        const int it = t / per_lane, j = t % per_lane;
        const int gg = g0 + slot + it * gstride;
        if (it < rounds && gg < ngroups) {
            const GemvSeg sq = group_seg<NS, R, GLU>(sg, gg);
            if constexpr (GLU != 0) {
                // R/2 gate rows and the same R/2 up rows.
                gemv1_prefetch<T, R / 2>(sg.body[0], sg.head[0], sq.g, sub + S * j, lane, nb, nchunks, sq.n);
                gemv1_prefetch<T, R / 2>(sg.body[1], sg.head[1], sq.g, sub + S * j, lane, nb, nchunks, sq.n);
            } else {
                gemv1_prefetch<T, R>(sq.body, sq.head, sq.g, sub + S * j, lane, nb, nchunks, sq.n);
            }
        }
    };
    if (P > 0)
        for (int t = 0; t < P; t++) prefetch(t);  // W does not depend on earlier kernels
    pdl_wait();  // x may be the previous kernel's output
    quant_x_smem<T>(x, xq, xs, k);

    for (int it = 0; it < rounds; it++) {
        const bool active = g0 + slot + it * gstride < ngroups;
        const GemvSeg sq = group_seg<NS, R, GLU>(sg, g0 + slot + it * gstride);
        const int n = sq.n, g = sq.g;
        float acc[R][1];
#pragma unroll
        for (int rr = 0; rr < R; rr++) acc[rr][0] = 0.0f;
        for (int j = 0; active && j < per_lane; j += U) {
            typename T::Chunk cur[U][R];
            gemv1_load<T, R, U, GLU>(sg, sq, cur, j, sub, S, lane, nb, nchunks);
            if (P > 0)
#pragma unroll
                for (int uu = 0; uu < U; uu++) prefetch(it * per_lane + j + uu + P);
#pragma unroll
            for (int uu = 0; uu < U; uu++) {
                const int G = sub + S * (j + uu);
                const int ci = KILN_WARP * G + lane;
                if (j + uu >= per_lane || ci >= nchunks) break;
                const int c = ci % T::CHUNKS;
#pragma unroll
                for (int r = 0; r < T::RUNS; r++) {
                    const int u = (G * T::RUNS + r) * KILN_WARP + lane;
                    const uint4 xv = xq[u];
                    const float2 sc = xs[u];
#pragma unroll
                    for (int rr = 0; rr < R; rr++) {
                        u32 qw[4];
                        float dl, ml;
                        T::run_qi(cur[uu][rr], c, r, qw, dl, ml);
                        const float d = (float)dot16<T>(qw, xv);
                        float a = fmaf(dl * sc.x, d, acc[rr][0]);
                        if (T::HAS_MIN) a = fmaf(-ml, sc.y, a);
                        acc[rr][0] = a;
                    }
                }
            }
        }
        if constexpr (GLU != 0)
            reduce_store_glu<R>(acc, red, sq.y, n, g, S, warp, slot, sub, lane, active, act);
        else
            reduce_store<R, 1>(acc, red, sq.y, n, 1, g, 0, S, warp, slot, sub, lane, active);
    }
}

#define GEMV1_KERNEL_NAMED(name, T, R, U, P, NT)                                                 \
    extern "C" __global__ void __launch_bounds__(NT) name(                                          \
        const u8* __restrict__ body, const u8* __restrict__ head, const float* __restrict__ x,      \
        float* __restrict__ y, int n, int k, int S) {                                             \
        gemv1_body<T, R, U, P, 1, 0>(gemv_one_seg(body, head, y, n), x, k, S, 0);                 \
    }

// Kiln's m = 1 kernels: (R, U, threads) measured in backend-cuda/labs/gemv (BENCHMARKS.md).
#define GEMV1_KERNEL(suffix, T) GEMV1_KERNEL_NAMED(gemv1_##suffix, T, GEMV1_R, GEMV1_U, GEMV1_P, GEMV1_THREADS)
KILN_FOR_EACH_BLOCK_TYPE(GEMV1_KERNEL)

// gemv1s_<type>: gemv1 over up to GEMV_NS weight segments (y of segment s: [1, n[s]]).
#define GEMV1S_KERNEL(suffix, T)                                                                  \
    extern "C" __global__ void __launch_bounds__(GEMV1_THREADS) gemv1s_##suffix(                   \
        GemvSegs sg, const float* __restrict__ x, int k, int S) {                                 \
        gemv1_body<T, GEMV1_R, GEMV1_U, GEMV1_P, GEMV_NS, 0>(sg, x, k, S, 0);                     \
    }
KILN_FOR_EACH_BLOCK_TYPE(GEMV1S_KERNEL)

// gemv1g_<type>: gemv1 in GLU mode (segment 0 gate, 1 up; y = act(gate)·up [1, n]).
#define GEMV1G_KERNEL(suffix, T)                                                                  \
    extern "C" __global__ void __launch_bounds__(GEMV1_THREADS) gemv1g_##suffix(                   \
        GemvSegs sg, const float* __restrict__ x, int k, int S, int act) {                        \
        gemv1_body<T, GEMV1_R, GEMV1_U, GEMV1_P, 2, 1>(sg, x, k, S, act);                         \
    }
KILN_FOR_EACH_BLOCK_TYPE(GEMV1G_KERNEL)

#define GEMV_KERNEL_NAMED(name, T, M, R, U)                                                       \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS) name(                                \
        const u8* __restrict__ body, const u8* __restrict__ head, const float* __restrict__ x,      \
        float* __restrict__ y, int n, int k, int m, int S) {                                      \
        gemv_body<T, M, R, 1, 0, U>(gemv_one_seg(body, head, y, n), x, k, m, S, 0);               \
    }
#define GEMV_KERNEL(suffix, T, M, R) GEMV_KERNEL_NAMED(gemv_##suffix##_m##M, T, M, R, 1)

#define GEMV_ALL_M(suffix, T) \
    GEMV_KERNEL(suffix, T, 1, 4) GEMV_KERNEL(suffix, T, 2, 4) GEMV_KERNEL(suffix, T, 4, 2) GEMV_KERNEL(suffix, T, 8, 2)

KILN_FOR_EACH_FLOAT_TYPE(GEMV_ALL_M)

// gemvs_<type>: the float kernel at M = 1 over up to GEMV_NS weight segments.
#define GEMVS_KERNEL_NAMED(name, T, U)                                                            \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS) name(                                \
        GemvSegs sg, const float* __restrict__ x, int k, int S) {                                 \
        gemv_body<T, 1, 4, GEMV_NS, 0, U>(sg, x, k, 1, S, 0);                                     \
    }
#define GEMVS_KERNEL(suffix, T) GEMVS_KERNEL_NAMED(gemvs_##suffix, T, 1)
KILN_FOR_EACH_FLOAT_TYPE(GEMVS_KERNEL)

// gemvg_<type>: the float kernel at M = 1 in GLU mode (segment 0 gate, 1 up).
#define GEMVG_KERNEL_NAMED(name, T, U)                                                            \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS) name(                                \
        GemvSegs sg, const float* __restrict__ x, int k, int S, int act) {                        \
        gemv_body<T, 1, 4, 2, 1, U>(sg, x, k, 1, S, act);                                         \
    }
#define GEMVG_KERNEL(suffix, T) GEMVG_KERNEL_NAMED(gemvg_##suffix, T, 1)
KILN_FOR_EACH_FLOAT_TYPE(GEMVG_KERNEL)

// `_u2` forms of the one-row 16-bit float kernels: two chunk steps per trip (U = 2: 8 × 32
// bytes in flight per lane, 128 registers; the GEMV lab's r4u2n128). Host: `KILN_GEMV_U=2`.
GEMV_KERNEL_NAMED(gemv_f16_m1_u2, TF16, 1, 4, 2)
GEMV_KERNEL_NAMED(gemv_bf16_m1_u2, TBF16, 1, 4, 2)
GEMVS_KERNEL_NAMED(gemvs_f16_u2, TF16, 2)
GEMVS_KERNEL_NAMED(gemvs_bf16_u2, TBF16, 2)
GEMVG_KERNEL_NAMED(gemvg_f16_u2, TF16, 2)
GEMVG_KERNEL_NAMED(gemvg_bf16_u2, TBF16, 2)

// Dequantize `rows` rows starting at row `row0` into out bf16 [rows, k]; one thread per chunk.
template <class T>
__device__ __forceinline__ void dequant_body(const u8* __restrict__ body, const u8* __restrict__ head,
                                             u16* __restrict__ out, i64 row0, int rows, int k) {
    KILN_DECLARE_TABLE(T)
    const int nb = k / T::QK;
    const i64 total = (i64)rows * nb * T::CHUNKS;
    const i64 stride = (i64)gridDim.x * blockDim.x;
    constexpr int U = 4;  // chunks in flight per thread
    for (i64 t0 = (i64)blockIdx.x * blockDim.x + threadIdx.x; t0 < total; t0 += U * stride) {
        typename T::Chunk ch[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const i64 t = t0 + u * stride;
            if (t < total) {
                const i64 cb = t / T::CHUNKS;  // block index inside the tile
                T::load(body, head, (row0 + cb / nb) * nb + cb % nb, (int)(t % T::CHUNKS), ch[u]);
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const i64 t = t0 + u * stride;
            if (t >= total) break;
            const i64 cb = t / T::CHUNKS;
            const int c = (int)(t % T::CHUNKS);
            const i64 row = cb / nb;
            const int blk = (int)(cb % nb);
#pragma unroll
            for (int r = 0; r < T::RUNS; r++) {
                float v[16];
                decode_run<T>(ch[u], c, r, kiln_tab, v);
                u32 w[8];
#pragma unroll
                for (int i = 0; i < 8; i++) w[i] = (u32)f2bf(v[2 * i]) | ((u32)f2bf(v[2 * i + 1]) << 16);
                uint4* op = (uint4*)(out + row * k + blk * T::QK + T::run_start(c, r));
                op[0] = make_uint4(w[0], w[1], w[2], w[3]);
                op[1] = make_uint4(w[4], w[5], w[6], w[7]);
            }
        }
    }
}

#define DEQUANT_KERNEL(suffix, T)                                                                 \
    extern "C" __global__ void dequant_bf16_##suffix(const u8* __restrict__ body,                 \
                                                     const u8* __restrict__ head,                 \
                                                     u16* __restrict__ out, i64 row0, int rows,   \
                                                     int k) {                                     \
        dequant_body<T>(body, head, out, row0, rows, k);                                          \
    }

KILN_FOR_EACH_WEIGHT_TYPE(DEQUANT_KERNEL)

// x f32 [count] → bf16 / f16 [count].
extern "C" __global__ void x_to_bf16(const float* __restrict__ x, u16* __restrict__ out, i64 count) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (i64)gridDim.x * blockDim.x)
        out[i] = f2bf(x[i]);
}
extern "C" __global__ void x_to_f16(const float* __restrict__ x, u16* __restrict__ out, i64 count) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (i64)gridDim.x * blockDim.x)
        out[i] = f2h(x[i]);
}

// Float weights of any k: one warp per (W row, x row); grid (ceil(n / 4), m), block 128.
extern "C" __global__ void gemv_float_generic(const void* __restrict__ w, int wdt,
                                              const float* __restrict__ x, float* __restrict__ y,
                                              int n, int k, int m) {
    const int row = blockIdx.x * 4 + threadIdx.x / KILN_WARP;
    const int mi = blockIdx.y;
    const int lane = threadIdx.x % KILN_WARP;
    if (row >= n || mi >= m) return;
    float s = 0.0f;
    for (int j = lane; j < k; j += KILN_WARP)
        s = fmaf(load_as_f32(w, (i64)row * k + j, wdt), x[(i64)mi * k + j], s);
    s = warp_sum(s);
    if (lane == 0) y[(i64)mi * n + row] = s;
}
