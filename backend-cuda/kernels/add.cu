// add.cu: out = a + b elementwise; a, b, out f32 [count].
// Thread mapping: one thread per element, grid-stride. Bytes: 12 per element. Memory-bound.
#include "common.cuh"

extern "C" __global__ void add_f32(const float* __restrict__ a, const float* __restrict__ b,
                                   float* __restrict__ out, i64 count) {
    pdl_enter();
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (i64)gridDim.x * blockDim.x)
        out[i] = a[i] + b[i];
}

// add_bias: out[r, j] = x[r, j] + bias[j]; x, out f32 [rows, n], bias f32 [n].
// Thread mapping: one thread per element, grid-stride. Bytes: 8 per element (+ bias from L1/L2).
extern "C" __global__ void add_bias_f32(const float* __restrict__ x, const float* __restrict__ bias,
                                        float* __restrict__ out, i64 count, int n) {
    pdl_enter();
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (i64)gridDim.x * blockDim.x)
        out[i] = x[i] + bias[i % n];
}
