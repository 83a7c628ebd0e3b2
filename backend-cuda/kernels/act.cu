// act.cu: gated linear units, out = act(gate) ⊙ up; gate, up, out f32 [rows, n].
// act 0 = silu x·sigmoid(x); act 1 = gelu-tanh 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
// Thread mapping: one thread per element, grid-stride. Bytes: 12 per element. Memory-bound.
#include "common.cuh"

extern "C" __global__ void glu_f32(const float* __restrict__ gate, const float* __restrict__ up,
                                   float* __restrict__ out, i64 count, int act) {
    pdl_enter();
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (i64)gridDim.x * blockDim.x) {
        const float g = gate[i];
        float a;
        if (act == 0) {
            a = g / (1.0f + expf(-g));
        } else {
            const float k = 0.7978845608028654f;  // sqrt(2/pi)
            a = 0.5f * g * (1.0f + tanhf(k * (g + 0.044715f * g * g * g)));
        }
        out[i] = a * up[i];
    }
}
