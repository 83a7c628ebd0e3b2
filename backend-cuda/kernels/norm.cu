// norm.cu: RMS norm, out = x / sqrt(mean(x²) + eps) · w, per row.
// x, out f32 [rows, dim]; w f32 [dim].
// Thread mapping: one block per row (blockDim = 256, grid = rows); threads stride over the row
// twice (sum of squares in f32 with a block reduction, then the scaled write).
// Bytes: 8·rows·dim + 4·dim (w, from L2). FLOPs: ~4 per element; memory-bound.
#include "common.cuh"

extern "C" __global__ void rms_norm_f32(const float* __restrict__ x, const float* __restrict__ w,
                                        float* __restrict__ out, int dim, float eps) {
    __shared__ float smem[32];
    const float* xr = x + (i64)blockIdx.x * dim;
    float* orow = out + (i64)blockIdx.x * dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss = fmaf(xr[i], xr[i], ss);
    ss = block_sum(ss, smem);
    const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) orow[i] = xr[i] * inv * w[i];
}
