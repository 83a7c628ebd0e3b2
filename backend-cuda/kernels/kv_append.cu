// kv_append.cu: write k, v [n_tokens, n_kv_heads, head_dim] (dtype in_dt) into the paged cache
// k_cache, v_cache [num_blocks, n_kv_heads, block_size, head_dim] (dtype kv_dt) at slots
// i32 [n_tokens] (slot = block·block_size + row; a negative slot skips the token, and so does a
// slot ≥ total_slots, so a bad slot cannot write outside the cache).
// Thread mapping: one thread per (token, head, dim) element, grid-stride; both K and V are
// written by the same thread. Bytes: 2·(in + kv element size) per element.
#include "common.cuh"

extern "C" __global__ void kv_append(const void* __restrict__ k, const void* __restrict__ v, int in_dt,
                                     void* __restrict__ kc, void* __restrict__ vc, int kv_dt,
                                     const int* __restrict__ slots, int n_tokens, int n_kv_heads,
                                     int head_dim, int block_size, i64 total_slots) {
    pdl_enter();
    const i64 per_tok = (i64)n_kv_heads * head_dim;
    const i64 total = (i64)n_tokens * per_tok;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
        const int tok = (int)(i / per_tok);
        const int slot = slots[tok];
        if (slot < 0 || slot >= total_slots) continue;  // out-of-range slots are never written
        const i64 within = i % per_tok;
        const int h = (int)(within / head_dim), d = (int)(within % head_dim);
        const i64 blk = slot / block_size, row = slot % block_size;
        const i64 dst = ((blk * n_kv_heads + h) * block_size + row) * head_dim + d;
        store_from_f32(kc, dst, kv_dt, load_as_f32(k, i, in_dt));
        store_from_f32(vc, dst, kv_dt, load_as_f32(v, i, in_dt));
    }
}
