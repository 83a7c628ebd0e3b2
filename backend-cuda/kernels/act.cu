// act.cu: gated linear units, out = act(gate) ⊙ up; gate, up, out f32 [rows, n].
// act 0 = silu, 1 = gelu-tanh (common.cuh glu_act).
// Thread mapping: one thread per element, grid-stride. Bytes: 12 per element. Memory-bound.
#include "common.cuh"

extern "C" __global__ void glu_f32(const float* __restrict__ gate, const float* __restrict__ up,
                                   float* __restrict__ out, i64 count, int act) {
    pdl_enter();
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (i64)gridDim.x * blockDim.x) {
        out[i] = glu_act(gate[i], act) * up[i];
    }
}
