// embed.cu: out[i] = scale · table[ids[i]]; ids i32 [n], table [vocab, dim] in the repacked
// layout of quant.cuh, out f32 [n, dim].
// embed_<type>: one thread per chunk of a looked-up row (grid-stride over n · dim/QK · CHUNKS);
//   dim must be a multiple of the block size (rows are whole blocks). Ids outside [0, vocab)
//   are skipped (their output rows stay unwritten) so a bad id never reads outside the table.
// embed_float_generic: float tables of any dim, one thread per output element.
// Bytes: the looked-up rows' weight bytes + 4·n·dim written. Memory-bound.
#include "quant.cuh"

template <class T>
__device__ __forceinline__ void embed_body(const int* __restrict__ ids, const u8* __restrict__ body,
                                           const u8* __restrict__ head, float* __restrict__ out,
                                           int n, int dim, float scale, int vocab) {
    KILN_DECLARE_TABLE(T)
    const int nb = dim / T::QK;
    const i64 total = (i64)n * nb * T::CHUNKS;
    for (i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += (i64)gridDim.x * blockDim.x) {
        const int c = (int)(t % T::CHUNKS);
        const i64 cb = t / T::CHUNKS;
        const int i = (int)(cb / nb), blk = (int)(cb % nb);
        const i64 row = ids[i];
        if (row < 0 || row >= vocab) continue;  // never read outside the table (out stays unwritten)
        typename T::Chunk ch;
        T::load(body, head, row * nb + blk, c, ch);
#pragma unroll
        for (int r = 0; r < T::RUNS; r++) {
            float v[16];
            decode_run<T>(ch, c, r, kiln_tab, v);
            float* o = out + (i64)i * dim + blk * T::QK + T::run_start(c, r);
#pragma unroll
            for (int l = 0; l < 16; l++) o[l] = v[l] * scale;
        }
    }
}

#define EMBED_KERNEL(suffix, T)                                                                   \
    extern "C" __global__ void embed_##suffix(const int* __restrict__ ids, const u8* __restrict__ body, \
                                              const u8* __restrict__ head, float* __restrict__ out, \
                                              int n, int dim, float scale, int vocab) {           \
        embed_body<T>(ids, body, head, out, n, dim, scale, vocab);                                       \
    }

KILN_FOR_EACH_WEIGHT_TYPE(EMBED_KERNEL)

extern "C" __global__ void embed_float_generic(const int* __restrict__ ids, const void* __restrict__ table,
                                               int dt, float* __restrict__ out, int n, int dim, float scale,
                                               int vocab) {
    const i64 total = (i64)n * dim;
    for (i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += (i64)gridDim.x * blockDim.x) {
        const int i = (int)(t / dim), j = (int)(t % dim);
        const int id = ids[i];
        if (id < 0 || id >= vocab) continue;
        out[t] = load_as_f32(table, (i64)id * dim + j, dt) * scale;
    }
}
