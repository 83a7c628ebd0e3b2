// norm.cu: RMS norm, out = x / sqrt(mean(x²) + eps) · w, per row; and the residual add fused
// with it (add_rms_norm: sum = a + b, out = rms_norm(sum)·w, the step between two sub-blocks).
// x, a, b, sum, out f32 [rows, dim]; w f32 [dim]. All of them disjoint (checked by the host).
//
// Thread mapping, `_v4` kernels (dim % 4 == 0, 16-byte aligned rows, dim ≤ 4·NORM_V4_MAX·1024):
// one block per row, blockDim = the host's choice (a multiple of 32, ≤ 1024, about dim / 4 so
// that at decode a thread moves ONE float4); each thread holds its ≤ NORM_V4_MAX float4 of the
// row in registers, so every load of the row is issued at once (no load → store → load chain),
// then one block reduction and the scaled write. Scalar kernels (any dim): blockDim 256,
// threads stride over the row twice. All are launched as programmatic dependents (pdl_enter):
// at batch 1 they are latency-bound, one row per step. The `_v4` kernels load their w (a
// parameter no kernel writes) before the PDL wait, so its latency (from DRAM: a decode step
// streams gigabytes of weights past L2 between two uses) hides behind the previous kernel.
// Bytes: rms_norm 8·rows·dim + 4·dim (w, from L2); add_rms_norm 16·rows·dim (a, b read; sum,
// out written) + 4·dim, instead of add's 12 + rms_norm's 8 per element as two kernels.
// FLOPs: ~5 per element.
#include "common.cuh"

#define NORM_V4_MAX 4

__device__ __forceinline__ float4 f4(float x, float y, float z, float w) {
    float4 r;
    r.x = x; r.y = y; r.z = z; r.w = w;
    return r;
}
__device__ __forceinline__ float4 f4_add(float4 a, float4 b) {
    return f4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}
__device__ __forceinline__ float f4_ss(float4 v, float ss) {
    ss = fmaf(v.x, v.x, ss);
    ss = fmaf(v.y, v.y, ss);
    ss = fmaf(v.z, v.z, ss);
    return fmaf(v.w, v.w, ss);
}

// One row: v = a (+ b, written to sum when ADD), out = v·inv·w. Loads w, then waits for the
// previous kernel (pdl_enter), then touches a, b, sum and out.
template <bool ADD>
__device__ __forceinline__ void norm_row_v4(const float4* __restrict__ a, const float4* __restrict__ b,
                                            const float4* __restrict__ w, float4* __restrict__ sum,
                                            float4* __restrict__ out, int d4, float eps) {
    __shared__ float smem[32];
    float4 v[NORM_V4_MAX], wv[NORM_V4_MAX];
#pragma unroll
    for (int j = 0; j < NORM_V4_MAX; j++) {
        const int i = threadIdx.x + j * blockDim.x;
        if (i < d4) wv[j] = w[i];
    }
    pdl_enter();
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < NORM_V4_MAX; j++) {
        const int i = threadIdx.x + j * blockDim.x;
        if (i < d4) {
            v[j] = ADD ? f4_add(a[i], b[i]) : a[i];
            ss = f4_ss(v[j], ss);
        }
    }
    if (ADD) {
#pragma unroll
        for (int j = 0; j < NORM_V4_MAX; j++) {
            const int i = threadIdx.x + j * blockDim.x;
            if (i < d4) sum[i] = v[j];
        }
    }
    ss = block_sum(ss, smem);
    const float inv = 1.0f / sqrtf(ss / (float)(4 * d4) + eps);
#pragma unroll
    for (int j = 0; j < NORM_V4_MAX; j++) {
        const int i = threadIdx.x + j * blockDim.x;
        if (i < d4) {
            const float4 ww = wv[j], x = v[j];
            out[i] = f4(x.x * inv * ww.x, x.y * inv * ww.y, x.z * inv * ww.z, x.w * inv * ww.w);
        }
    }
}

extern "C" __global__ void rms_norm_f32_v4(const float4* __restrict__ x, const float4* __restrict__ w,
                                           float4* __restrict__ out, int d4, float eps) {
    const i64 o = (i64)blockIdx.x * d4;
    norm_row_v4<false>(x + o, nullptr, w, nullptr, out + o, d4, eps);
}

// sum = a + b (each element rounded to f32 exactly as add_f32 does), out = rms_norm(sum)·w.
extern "C" __global__ void add_rms_norm_f32_v4(const float4* __restrict__ a, const float4* __restrict__ b,
                                               const float4* __restrict__ w, float4* __restrict__ sum,
                                               float4* __restrict__ out, int d4, float eps) {
    const i64 o = (i64)blockIdx.x * d4;
    norm_row_v4<true>(a + o, b + o, w, sum + o, out + o, d4, eps);
}

extern "C" __global__ void rms_norm_f32(const float* __restrict__ x, const float* __restrict__ w,
                                        float* __restrict__ out, int dim, float eps) {
    __shared__ float smem[32];
    pdl_enter();
    const float* xr = x + (i64)blockIdx.x * dim;
    float* orow = out + (i64)blockIdx.x * dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss = fmaf(xr[i], xr[i], ss);
    ss = block_sum(ss, smem);
    const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) orow[i] = xr[i] * inv * w[i];
}

// The scalar add_rms_norm (any dim): each thread re-reads only the elements of `sum` it wrote
// itself, so no barrier is needed between the write and the re-read.
extern "C" __global__ void add_rms_norm_f32(const float* __restrict__ a, const float* __restrict__ b,
                                            const float* __restrict__ w, float* sum,
                                            float* __restrict__ out, int dim, float eps) {
    __shared__ float smem[32];
    pdl_enter();
    const i64 base = (i64)blockIdx.x * dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        const float s = a[base + i] + b[base + i];
        sum[base + i] = s;
        ss = fmaf(s, s, ss);
    }
    ss = block_sum(ss, smem);
    const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) out[base + i] = sum[base + i] * inv * w[i];
}
