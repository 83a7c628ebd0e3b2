// norm.cu: RMS norm, out = x / sqrt(mean(x²) + eps) · w, per row; and the residual add fused
// with it (add_rms_norm: sum = a + b, out = rms_norm(sum)·w, the step between two sub-blocks).
// x, a, b, sum, out f32 [rows, dim]; w f32 [dim].
// Thread mapping: one block per row (blockDim = 256, grid = rows); threads stride over the row
// twice (sum of squares in f32 with a block reduction, then the scaled write). Launched as
// programmatic dependents (pdl_enter): at batch 1 these are latency-bound, one row per step.
// Bytes: rms_norm 8·rows·dim + 4·dim (w, from L2); add_rms_norm 12·rows·dim written/read once
// from HBM (the second pass reads the block's own `sum` back from L1/L2) + 4·rows·dim for out,
// instead of add's 12 + rms_norm's 8 per element as two kernels. FLOPs: ~5 per element.
#include "common.cuh"

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

// sum = a + b (rounded to f32 exactly as add_f32 does), out = sum / sqrt(mean(sum²) + eps) · w
// with the same arithmetic as rms_norm_f32 on `sum`. Each thread re-reads only the elements it
// wrote itself, so no barrier is needed between the write and the re-read.
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
