// rope.cu: rotary embedding in place over the first n_rot dims of each head; and the same fused
// with the KV-cache append of a layer's rotated k and its v (rope_kv_append: one launch instead
// of rope(q), rope(k), kv_append).
// x f32 [n_tokens, n_heads, head_dim]; positions i32 [n_tokens]; inv_freq f32 [n_rot / 2].
// style 0 = neox: pairs (i, i + n_rot/2); style 1 = interleaved: pairs (2i, 2i + 1).
// Thread mapping: one thread per (token, head, pair), grid-stride. The angle p·inv_freq[i] and
// its sine/cosine are computed in f64 so long positions keep full f32 accuracy.
// Bytes: 8 per rotated pair element read+written. FLOPs: negligible (memory-bound).
#include "common.cuh"

// The sine and cosine of pair i's angle at token position p (f64).
__device__ __forceinline__ void rope_angle(int i, int p, const float* inv_freq, double& s, double& c) {
    sincos((double)p * (double)inv_freq[i], &s, &c);
}

// Rotate pair i of the head at `base` by the angle (s, c) in place; returns the two new values.
__device__ __forceinline__ void rope_rot(float* base, int i, int half, int style, double s, double c, int& i0,
                                         int& i1, float& y0, float& y1) {
    i0 = style == 0 ? i : 2 * i;
    i1 = style == 0 ? i + half : 2 * i + 1;
    const float x0 = base[i0], x1 = base[i1];
    y0 = (float)((double)x0 * c - (double)x1 * s);
    y1 = (float)((double)x0 * s + (double)x1 * c);
    base[i0] = y0;
    base[i1] = y1;
}

// Rotate pair i of the head at `base` (token position p) in place; returns the two new values.
__device__ __forceinline__ void rope_pair(float* base, int i, int p, const float* inv_freq, int half,
                                          int style, int& i0, int& i1, float& y0, float& y1) {
    double s, c;
    rope_angle(i, p, inv_freq, s, c);
    rope_rot(base, i, half, style, s, c, i0, i1, y0, y1);
}

extern "C" __global__ void rope_f32(float* __restrict__ x, const int* __restrict__ pos,
                                    const float* __restrict__ inv_freq, int n_tokens, int n_heads,
                                    int head_dim, int n_rot, int style) {
    pdl_enter();
    const int half = n_rot / 2;
    const i64 total = (i64)n_tokens * n_heads * half;
    for (i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += (i64)gridDim.x * blockDim.x) {
        const int i = (int)(t % half);
        const i64 th = t / half;  // token * n_heads + head
        int i0, i1;
        float y0, y1;
        rope_pair(x + th * head_dim, i, pos[th / n_heads], inv_freq, half, style, i0, i1, y0, y1);
    }
}

// rope_kv_append_f32: q [n_tokens, n_heads, head_dim] and k [n_tokens, n_kv, head_dim] rotated in
// place exactly as rope_f32 does, and the rotated k and v (f32, k's shape) written into the paged
// cache kc, vc [blocks, n_kv, block_size, head_dim] (dtype kv_dt) at slots i32 [n_tokens] exactly
// as kv_append does (a slot outside [0, total_slots) skips the token's cache rows; q and k are
// rotated whatever the slot).
// Thread mapping (each thread's first item's angle and slot are read before the PDL wait):
// grid-stride over n_tokens·n_heads·half q pairs, then per (token, kv head)
// `half + (head_dim − n_rot) + head_dim` items: a rotary pair of k (rotated in place, both
// elements cached by the same thread, so no thread reads what another writes), a non-rotary k
// element (cached), or a v element (cached).
// Bytes: q 8 per rotated element; k 8 per rotated element + cache size per element; v 4 + cache
// size per element.
extern "C" __global__ void rope_kv_append_f32(float* __restrict__ q, float* __restrict__ k,
                                              const float* __restrict__ v, const int* __restrict__ pos,
                                              const float* __restrict__ inv_freq, void* __restrict__ kc,
                                              void* __restrict__ vc, int kv_dt, const int* __restrict__ slots,
                                              int n_tokens, int n_heads, int n_kv, int head_dim, int n_rot,
                                              int style, int block_size, i64 total_slots) {
    const int half = n_rot / 2;
    const int tail = head_dim - n_rot;
    const int per_head = half + tail + head_dim;
    const i64 nq = (i64)n_tokens * n_heads * half;
    const i64 total = nq + (i64)n_tokens * n_kv * per_head;
    // Item t: pair i of q head th = token·n_heads + head (t < nq), else item i of th = token·n_kv
    // + kv head: a k pair (i < half), a non-rotary k element or a v element. Returns the token.
    auto item = [&](i64 t, i64& th, int& i) {
        const bool isq = t < nq;
        const i64 u = isq ? t : t - nq;
        const int per = isq ? half : per_head;
        th = u / per;
        i = (int)(u % per);
        return (int)(th / (isq ? n_heads : n_kv));
    };
    // The first item's angle and slot before the PDL wait: positions and slots are step inputs
    // and inv_freq a parameter (written by the host, Backend contract), so the f64 sincos runs
    // while the previous kernel (the q/k/v matmul) finishes.
    const i64 t0 = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    double s0 = 0.0, c0 = 1.0;
    int slot0 = -1;
    if (t0 < total) {
        i64 th;
        int i;
        const int tok = item(t0, th, i);
        if (i < half) rope_angle(i, pos[tok], inv_freq, s0, c0);
        if (t0 >= nq) slot0 = slots[tok];
    }
    pdl_enter();
    for (i64 t = t0; t < total; t += (i64)gridDim.x * blockDim.x) {
        const bool first = t == t0;
        i64 th;
        int i, i0, i1;
        float y0, y1;
        const int tok = item(t, th, i);
        double sn = s0, cs = c0;
        if (!first && i < half) rope_angle(i, pos[tok], inv_freq, sn, cs);
        if (t < nq) {
            rope_rot(q + th * head_dim, i, half, style, sn, cs, i0, i1, y0, y1);
            continue;
        }
        const int h = (int)(th % n_kv);
        const int slot = first ? slot0 : slots[tok];
        const bool cached = slot >= 0 && slot < total_slots;
        const i64 row = cached ? (((i64)(slot / block_size) * n_kv + h) * block_size + slot % block_size) * head_dim : 0;
        float* kb = k + th * head_dim;
        if (i < half) {
            rope_rot(kb, i, half, style, sn, cs, i0, i1, y0, y1);
            if (cached) {
                store_from_f32(kc, row + i0, kv_dt, y0);
                store_from_f32(kc, row + i1, kv_dt, y1);
            }
        } else if (i < half + tail) {
            const int d = n_rot + (i - half);
            if (cached) store_from_f32(kc, row + d, kv_dt, kb[d]);
        } else if (cached) {
            const int d = i - half - tail;
            store_from_f32(vc, row + d, kv_dt, v[th * head_dim + d]);
        }
    }
}
