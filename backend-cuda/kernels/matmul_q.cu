// matmul_q.cu: y = x·Wᵀ for every weight type (x f32 [m, k], W [n, k] in the repacked layout of
// quant.cuh, y f32 [m, n]), plus the dequantize-to-bf16 kernel of the dense (cuBLASLt) path.
//
// gemv_<type>_m<M> (fused dequant GEMV / small GEMM, few rows):
//   grid (ceil(n / R), ceil(m / M)), block ≤ 128 threads. A block owns R consecutive W rows and
//   M consecutive x rows; its threads stride over the row's chunks (CHUNKS per block of QK
//   elements), each loading one chunk of every one of its R W rows with 16-byte loads, decoding
//   16 elements at a time and accumulating R·M dot products in f32 registers; then a warp-shuffle
//   + shared-memory reduction writes R·M outputs.
//   Bytes: every W byte once per M-group (n·k·bpw), x m·k·4 (from L1/L2), y m·n·4.
//   FLOPs: 2·m·n·k. At m = 1 the kernel is bound by the W bytes: the target is ≥ 85% of copy
//   bandwidth.
// dequant_bf16_<type>: one thread per chunk: W (any type) → bf16 [rows, k]; reads the weight
//   bytes once, writes 2 bytes per element.
// x_to_bf16 / x_to_f16: f32 → bf16/f16 activations for cuBLASLt, one thread per element.
// gemv_float_generic: any k (float weights whose rows are not whole 16-element groups), one warp
//   per (W row, x row), scalar loads.
#include "quant.cuh"

#define GEMV_THREADS 128

template <class T, int M, int R>
__device__ __forceinline__ void gemv_body(const u8* __restrict__ body, const u8* __restrict__ head,
                                          const float* __restrict__ x, float* __restrict__ y,
                                          int n, int k, int m) {
    const int nb = k / T::QK;
    const int nchunks = nb * T::CHUNKS;
    const int r0 = blockIdx.x * R;
    const int m0 = blockIdx.y * M;
    float acc[R][M];
#pragma unroll
    for (int rr = 0; rr < R; rr++)
#pragma unroll
        for (int mm = 0; mm < M; mm++) acc[rr][mm] = 0.0f;

    for (int ci = threadIdx.x; ci < nchunks; ci += blockDim.x) {
        const int blk = ci / T::CHUNKS, c = ci % T::CHUNKS;
        typename T::Chunk ch[R];
#pragma unroll
        for (int rr = 0; rr < R; rr++) {
            const int row = min(r0 + rr, n - 1);  // clamped: a tail block reads a valid row
            T::load(body, head, (i64)row * nb + blk, c, ch[rr]);
        }
#pragma unroll
        for (int r = 0; r < T::RUNS; r++) {
            const int off = blk * T::QK + T::run_start(c, r);
            float v[R][16];
#pragma unroll
            for (int rr = 0; rr < R; rr++) T::run(ch[rr], c, r, v[rr]);
#pragma unroll
            for (int mm = 0; mm < M; mm++) {
                if (m0 + mm < m) {
                    const float4* xp = (const float4*)(x + (i64)(m0 + mm) * k + off);
                    float xv[16];
#pragma unroll
                    for (int q = 0; q < 4; q++) {
                        const float4 t = __ldg(xp + q);
                        xv[4 * q] = t.x; xv[4 * q + 1] = t.y; xv[4 * q + 2] = t.z; xv[4 * q + 3] = t.w;
                    }
#pragma unroll
                    for (int rr = 0; rr < R; rr++) {
                        float s = acc[rr][mm];
#pragma unroll
                        for (int l = 0; l < 16; l++) s = fmaf(v[rr][l], xv[l], s);
                        acc[rr][mm] = s;
                    }
                }
            }
        }
    }

    __shared__ float red[GEMV_THREADS / KILN_WARP][R * M];
    const int lane = threadIdx.x % KILN_WARP, warp = threadIdx.x / KILN_WARP;
    const int nwarps = (blockDim.x + KILN_WARP - 1) / KILN_WARP;
#pragma unroll
    for (int rr = 0; rr < R; rr++)
#pragma unroll
        for (int mm = 0; mm < M; mm++) {
            const float s = warp_sum(acc[rr][mm]);
            if (lane == 0) red[warp][rr * M + mm] = s;
        }
    __syncthreads();
    for (int i = threadIdx.x; i < R * M; i += blockDim.x) {
        float s = 0.0f;
        for (int w = 0; w < nwarps; w++) s += red[w][i];
        const int rr = i / M, mm = i % M;
        if (r0 + rr < n && m0 + mm < m) y[(i64)(m0 + mm) * n + r0 + rr] = s;
    }
}

#define GEMV_KERNEL(suffix, T, M, R)                                                              \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS) gemv_##suffix##_m##M(               \
        const u8* __restrict__ body, const u8* __restrict__ head, const float* __restrict__ x,      \
        float* __restrict__ y, int n, int k, int m) {                                             \
        gemv_body<T, M, R>(body, head, x, y, n, k, m);                                            \
    }

#define GEMV_ALL_M(suffix, T) \
    GEMV_KERNEL(suffix, T, 1, 2) GEMV_KERNEL(suffix, T, 2, 2) GEMV_KERNEL(suffix, T, 4, 1) GEMV_KERNEL(suffix, T, 8, 1)

KILN_FOR_EACH_WEIGHT_TYPE(GEMV_ALL_M)

// Dequantize `rows` rows starting at row `row0` into out bf16 [rows, k]; one thread per chunk.
template <class T>
__device__ __forceinline__ void dequant_body(const u8* __restrict__ body, const u8* __restrict__ head,
                                             u16* __restrict__ out, i64 row0, int rows, int k) {
    const int nb = k / T::QK;
    const i64 total = (i64)rows * nb * T::CHUNKS;
    for (i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += (i64)gridDim.x * blockDim.x) {
        const i64 cb = t / T::CHUNKS;  // block index inside the tile
        const int c = (int)(t % T::CHUNKS);
        const i64 row = cb / nb;
        const int blk = (int)(cb % nb);
        typename T::Chunk ch;
        T::load(body, head, (row0 + row) * nb + blk, c, ch);
#pragma unroll
        for (int r = 0; r < T::RUNS; r++) {
            float v[16];
            T::run(ch, c, r, v);
            u32 w[8];
#pragma unroll
            for (int i = 0; i < 8; i++) w[i] = (u32)f2bf(v[2 * i]) | ((u32)f2bf(v[2 * i + 1]) << 16);
            uint4* op = (uint4*)(out + row * k + blk * T::QK + T::run_start(c, r));
            op[0] = make_uint4(w[0], w[1], w[2], w[3]);
            op[1] = make_uint4(w[4], w[5], w[6], w[7]);
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
