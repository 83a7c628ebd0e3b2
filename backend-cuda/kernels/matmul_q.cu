// matmul_q.cu: y = x·Wᵀ for every weight type (x f32 [m, k], W [n, k] in the repacked layout of
// quant.cuh, y f32 [m, n]), plus the dequantize-to-bf16 kernel of the dense (cuBLASLt) path.
//
// gemv_<type>_m<M> (fused dequant GEMV / small GEMM, few rows):
//   grid (min(groups·S / 4, 8·SMs), ceil(m / M)), block 128 threads = 4 warps. A group is R
//   consecutive W rows (R = 4 for M ≤ 2, else 2) and M consecutive x rows; S warps (1, 2 or 4,
//   chosen by the host so the grid has ~32 warps per SM) share a group and split its chunks
//   (CHUNKS per block of QK elements). Each lane loads one chunk of each of the R rows with
//   16-byte loads (issued together), decodes 16 elements at a time (quant.cuh: one field
//   extraction + one FFMA per element, exact) and accumulates R·M dot products in f32 as
//   dl·Σq·x − ml·Σx; the x run is loaded once and shared by the R rows (the scattered x loads
//   are the L1 limit at m = 1). Warp shuffles, then shared memory across the S warps, reduce.
//   Bytes: every W byte once per M-group (n·k·bpw), x m·k·4 (from L1/L2), y m·n·4.
//   FLOPs: 2·m·n·k. At m = 1 the kernel is bound by the W bytes: the target is ≥ 85% of copy
//   bandwidth.
// dequant_bf16_<type>: grid-stride over chunks, 4 chunks in flight per thread: W (any type) →
//   bf16 [rows, k]; reads the weight bytes once, writes 2 bytes per element.
// x_to_bf16 / x_to_f16: f32 → bf16/f16 activations for cuBLASLt, one thread per element.
// gemv_float_generic: any k (float weights whose rows are not whole 16-element groups), one warp
//   per (W row, x row), scalar loads.
#include "quant.cuh"

#define GEMV_THREADS 128

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

template <class T, int M, int R>
__device__ __forceinline__ void gemv_body(const u8* __restrict__ body, const u8* __restrict__ head,
                                          const float* __restrict__ x, float* __restrict__ y,
                                          int n, int k, int m, int S) {
    KILN_DECLARE_TABLE(T)
    const int nb = k / T::QK;
    const int nchunks = nb * T::CHUNKS;
    const int lane = threadIdx.x % KILN_WARP;
    const int warp = threadIdx.x / KILN_WARP;
    const int wpb = blockDim.x / KILN_WARP;
    const int slots = wpb / S;  // row groups a block works on at once
    const int slot = warp / S, sub = warp % S;
    const int ngroups = (n + R - 1) / R;
    const int gstride = gridDim.x * slots;
    const int m0 = blockIdx.y * M;
    const int per_lane = (nchunks + KILN_WARP * S - 1) / (KILN_WARP * S);
    const int g0 = blockIdx.x * slots;
    // Block-uniform trip count (the S > 1 reduction has barriers).
    const int rounds = g0 < ngroups ? (ngroups - 1 - g0) / gstride + 1 : 0;
    __shared__ float red[GEMV_THREADS / KILN_WARP][R * M];

    for (int it = 0; it < rounds; it++) {
        const int g = g0 + slot + it * gstride;
        const bool active = g < ngroups;
        float acc[R][M];
#pragma unroll
        for (int rr = 0; rr < R; rr++)
#pragma unroll
            for (int mm = 0; mm < M; mm++) acc[rr][mm] = 0.0f;
        // The S warps of a group split its chunks: lane handles ci = 32·sub + lane + 32·S·j, and
        // issues the R rows' chunk loads together (R·16..48 bytes in flight per lane).
        for (int j = 0; active && j < per_lane; j++) {
            const int ci = KILN_WARP * sub + lane + KILN_WARP * S * j;
            if (ci >= nchunks) break;
            const int blk = ci / T::CHUNKS, c = ci % T::CHUNKS;
            typename T::Chunk cur[R];
#pragma unroll
            for (int rr = 0; rr < R; rr++) {
                const int row = min(g * R + rr, n - 1);  // clamped: the tail group reads a valid row
                T::load(body, head, (i64)row * nb + blk, c, cur[rr]);
            }
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
        }
        // Reduce: over the warp (shuffles), then over the S warps of the group (shared memory).
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
            if (sub == 0 && active && lane < R * M) {
                float s = 0.0f;
                for (int t = 0; t < S; t++) s += red[slot * S + t][lane];
                const int rr = lane / M, mm = lane % M;
                if (g * R + rr < n && m0 + mm < m) y[(i64)(m0 + mm) * n + g * R + rr] = s;
            }
            __syncthreads();
        }
    }
}

// The same GEMV with x staged in shared memory in lane order (M ≤ 2): x is copied once per block
// so that for every 32 chunks, run r and 16-byte piece t, the 32 lanes' pieces are consecutive:
// xs[((G·RUNS + r)·4 + t)·32 + L] is piece t of run r of chunk 32·G + L. Each LDS.128 of a warp
// then reads 512 consecutive bytes (conflict-free), instead of 16-byte pieces scattered over 16
// L1 lines. Blocks are persistent (one per SM, 512 threads) so the staging is paid ~once per SM.
#define GEMV_SMEM_THREADS 512

template <class T, int M, int R>
__device__ __forceinline__ void gemv_smem_body(const u8* __restrict__ body, const u8* __restrict__ head,
                                               const float* __restrict__ x, float* __restrict__ y,
                                               int n, int k, int m, int S) {
    extern __shared__ float4 xs4[];
    KILN_DECLARE_TABLE(T)
    const int nb = k / T::QK;
    const int nchunks = nb * T::CHUNKS;
    const int nc32 = (nchunks + KILN_WARP - 1) / KILN_WARP;
    const int row4 = nc32 * T::RUNS * 4 * KILN_WARP;  // float4s per staged x row
    const int m0 = blockIdx.y * M;
    for (int idx = threadIdx.x; idx < M * row4; idx += blockDim.x) {
        const int mm = idx / row4, rem = idx % row4;
        const int G = rem / (T::RUNS * 4 * KILN_WARP), rem2 = rem % (T::RUNS * 4 * KILN_WARP);
        const int rt = rem2 / KILN_WARP, L = rem2 % KILN_WARP;
        const int r = rt / 4, t = rt % 4;
        const int ci = G * KILN_WARP + L;
        float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (ci < nchunks && m0 + mm < m) {
            const int blk = ci / T::CHUNKS, c = ci % T::CHUNKS;
            v = __ldg((const float4*)(x + (i64)(m0 + mm) * k + blk * T::QK + T::run_start(c, r) + 4 * t));
        }
        xs4[idx] = v;
    }
    __syncthreads();

    const int lane = threadIdx.x % KILN_WARP;
    const int warp = threadIdx.x / KILN_WARP;
    const int wpb = blockDim.x / KILN_WARP;
    const int slots = wpb / S;
    const int slot = warp / S, sub = warp % S;
    const int ngroups = (n + R - 1) / R;
    const int gstride = gridDim.x * slots;
    const int per_lane = (nchunks + KILN_WARP * S - 1) / (KILN_WARP * S);
    const int g0 = blockIdx.x * slots;
    const int rounds = g0 < ngroups ? (ngroups - 1 - g0) / gstride + 1 : 0;
    __shared__ float red[GEMV_SMEM_THREADS / KILN_WARP][R * M];

    for (int it = 0; it < rounds; it++) {
        const int g = g0 + slot + it * gstride;
        const bool active = g < ngroups;
        float acc[R][M];
#pragma unroll
        for (int rr = 0; rr < R; rr++)
#pragma unroll
            for (int mm = 0; mm < M; mm++) acc[rr][mm] = 0.0f;
        for (int j = 0; active && j < per_lane; j++) {
            const int G = sub + S * j;
            const int ci = KILN_WARP * G + lane;
            if (ci >= nchunks) break;
            const int blk = ci / T::CHUNKS, c = ci % T::CHUNKS;
            typename T::Chunk cur[R];
#pragma unroll
            for (int rr = 0; rr < R; rr++) {
                const int row = min(g * R + rr, n - 1);
                T::load(body, head, (i64)row * nb + blk, c, cur[rr]);
            }
#pragma unroll
            for (int r = 0; r < T::RUNS; r++) {
                float xv[M][16], sx[M];
#pragma unroll
                for (int mm = 0; mm < M; mm++) {
                    const float4* xp = xs4 + mm * row4 + ((G * T::RUNS + r) * 4) * KILN_WARP + lane;
#pragma unroll
                    for (int t = 0; t < 4; t++) {
                        const float4 v = xp[t * KILN_WARP];
                        xv[mm][4 * t] = v.x; xv[mm][4 * t + 1] = v.y; xv[mm][4 * t + 2] = v.z; xv[mm][4 * t + 3] = v.w;
                    }
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
            }
        }
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
            if (sub == 0 && active && lane < R * M) {
                float s = 0.0f;
                for (int t = 0; t < S; t++) s += red[slot * S + t][lane];
                const int rr = lane / M, mm = lane % M;
                if (g * R + rr < n && m0 + mm < m) y[(i64)(m0 + mm) * n + g * R + rr] = s;
            }
            __syncthreads();
        }
    }
}

#define GEMV_SMEM_KERNEL(suffix, T, M, R)                                                         \
    extern "C" __global__ void __launch_bounds__(GEMV_SMEM_THREADS, 1) gemv_##suffix##_m##M##_s(   \
        const u8* __restrict__ body, const u8* __restrict__ head, const float* __restrict__ x,      \
        float* __restrict__ y, int n, int k, int m, int S) {                                      \
        gemv_smem_body<T, M, R>(body, head, x, y, n, k, m, S);                                    \
    }

#define GEMV_SMEM_ALL_M(suffix, T) GEMV_SMEM_KERNEL(suffix, T, 1, 4) GEMV_SMEM_KERNEL(suffix, T, 2, 4)

KILN_FOR_EACH_WEIGHT_TYPE(GEMV_SMEM_ALL_M)

#define GEMV_KERNEL(suffix, T, M, R)                                                              \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS) gemv_##suffix##_m##M(               \
        const u8* __restrict__ body, const u8* __restrict__ head, const float* __restrict__ x,      \
        float* __restrict__ y, int n, int k, int m, int S) {                                      \
        gemv_body<T, M, R>(body, head, x, y, n, k, m, S);                                         \
    }

#define GEMV_ALL_M(suffix, T) \
    GEMV_KERNEL(suffix, T, 1, 4) GEMV_KERNEL(suffix, T, 2, 4) GEMV_KERNEL(suffix, T, 4, 2) GEMV_KERNEL(suffix, T, 8, 2)

KILN_FOR_EACH_WEIGHT_TYPE(GEMV_ALL_M)

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
