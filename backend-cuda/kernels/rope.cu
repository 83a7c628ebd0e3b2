// rope.cu: rotary embedding in place over the first n_rot dims of each head.
// x f32 [n_tokens, n_heads, head_dim]; positions i32 [n_tokens]; inv_freq f32 [n_rot / 2].
// style 0 = neox: pairs (i, i + n_rot/2); style 1 = interleaved: pairs (2i, 2i + 1).
// Thread mapping: one thread per (token, head, pair), grid-stride. The angle p·inv_freq[i] and
// its sine/cosine are computed in f64 so long positions keep full f32 accuracy.
// Bytes: 8 per rotated pair element read+written. FLOPs: negligible (memory-bound).
#include "common.cuh"

extern "C" __global__ void rope_f32(float* __restrict__ x, const int* __restrict__ pos,
                                    const float* __restrict__ inv_freq, int n_tokens, int n_heads,
                                    int head_dim, int n_rot, int style) {
    pdl_enter();
    const int half = n_rot / 2;
    const i64 total = (i64)n_tokens * n_heads * half;
    for (i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += (i64)gridDim.x * blockDim.x) {
        const int i = (int)(t % half);
        const i64 th = t / half;  // token * n_heads + head
        const int tok = (int)(th / n_heads);
        const double a = (double)pos[tok] * (double)inv_freq[i];
        double s, c;
        sincos(a, &s, &c);
        float* base = x + th * head_dim;
        const int i0 = style == 0 ? i : 2 * i;
        const int i1 = style == 0 ? i + half : 2 * i + 1;
        const float x0 = base[i0], x1 = base[i1];
        base[i0] = (float)((double)x0 * c - (double)x1 * s);
        base[i1] = (float)((double)x0 * s + (double)x1 * c);
    }
}
