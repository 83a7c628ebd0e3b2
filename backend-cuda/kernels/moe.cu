// moe.cu: routed expert FFN (src/ops/moe.rs). A = n_tokens·top_k assignments (token t, rank r)
// at index i = t·top_k + r.
//
// moe_route: logits f32 [n_tokens, E] → ids i32 [A], wts f32 [A]. One warp per token; top_k
//   passes of a warp argmax (ties → lower expert index, NaN counts as −inf), then the gating in
//   f32: SoftmaxTopK (softmax over all E, optional renormalization over the k) or TopKSoftmax.
//   Bytes: ~top_k·E·4 per token (L1), FLOPs negligible.
// moe_plan: ONE CTA of 1024 threads: per-expert counts (shared atomics), exclusive scans of the
//   counts and of the per-expert tile counts, then perm i32 [A] (sorted position → token),
//   slot i32 [A] (assignment → sorted position, grouped by expert) and the tile table
//   tile_e / tile_start / tile_len i32 [tiles_max] (tiles of ≤ MOE_TILE_M sorted rows of one
//   expert; len 0 past the last tile). Bytes ~ 20·A.
// moe_gather: xs f32 [A, dim] (sorted rows) = x[perm[i]]; one thread per element.
// moe_gemv_<type>: y[i] = W[e]·in[i] for the rows i of one tile: grid (n, tiles_max); a block
//   owns one weight row of expert e (global row e·n + row of the repacked 3-D weight, layout of
//   quant.cuh) and ≤ 8 input rows, threads stride over the row's chunks with 16-byte loads,
//   decode 16 elements at a time and keep 8 f32 dot products; a warp-shuffle + shared-memory
//   reduction writes them. Bytes: each expert's weight once per tile of its rows; FLOPs 2·n·k
//   per row.
// moe_combine: out[t] = Σ_r wts[t·k + r] · y[slot[t·k + r]] in rank order (f32); one thread per
//   output element.
#include "quant.cuh"

#define MOE_KMAX 32
#define MOE_EMAX 1024
#define MOE_TILE_M 8
#define MOE_THREADS 128
#define NEG_INF __int_as_float(0xff800000)

extern "C" __global__ void moe_route(const float* __restrict__ logits, int* __restrict__ ids,
                                     float* __restrict__ wts, int n_tokens, int n_exp, int top_k,
                                     int topk_then_softmax, int renormalize) {
    const int lane = threadIdx.x % KILN_WARP, warps = blockDim.x / KILN_WARP;
    for (int t = blockIdx.x * warps + threadIdx.x / KILN_WARP; t < n_tokens; t += gridDim.x * warps) {
        const float* l = logits + (i64)t * n_exp;
        int sel[MOE_KMAX];
        float val[MOE_KMAX];
        for (int r = 0; r < top_k; r++) {
            float bv = NEG_INF;
            int be = 0x7fffffff;
            for (int e = lane; e < n_exp; e += KILN_WARP) {
                bool taken = false;
                for (int q = 0; q < r; q++) taken |= (sel[q] == e);
                if (taken) continue;
                float v = l[e];
                if (v != v) v = NEG_INF;
                if (v > bv || (v == bv && e < be)) {
                    bv = v;
                    be = e;
                }
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
                const int oe = __shfl_xor_sync(0xffffffffu, be, o);
                if (ov > bv || (ov == bv && oe < be)) {
                    bv = ov;
                    be = oe;
                }
            }
            sel[r] = be;  // identical in every lane after the butterfly
            val[r] = bv;
        }
        // Gating in f32; the top-1 logit is the maximum over all experts.
        const float mx = (val[0] == NEG_INF) ? 0.0f : val[0];
        float z = 0.0f;
        if (!topk_then_softmax) {
            for (int e = lane; e < n_exp; e += KILN_WARP) {
                const float v = l[e];
                z += (v != v) ? 0.0f : expf(v - mx);
            }
            z = warp_sum(z);
        }
        float sum_k = 0.0f;
        for (int r = 0; r < top_k; r++) sum_k += expf(val[r] - mx);
        const float denom = topk_then_softmax ? sum_k : (renormalize ? sum_k : z);
        if (lane == 0) {
            for (int r = 0; r < top_k; r++) {
                ids[(i64)t * top_k + r] = sel[r];
                // Non-finite logits (all −inf/NaN) give uniform weights instead of NaN.
                wts[(i64)t * top_k + r] = denom > 0.0f ? expf(val[r] - mx) / denom : 1.0f / (float)top_k;
            }
        }
    }
}

// Exclusive scan over a block of exactly 1024 threads; `ws` holds 32 ints. Returns the prefix,
// sets `total`.
__device__ __forceinline__ int scan1024(int v, int* ws, int& total) {
    const int lane = threadIdx.x % KILN_WARP, warp = threadIdx.x / KILN_WARP;
    int inc = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o) inc += y;
    }
    if (lane == 31) ws[warp] = inc;
    __syncthreads();
    if (warp == 0) {
        int w = ws[lane];
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const int y = __shfl_up_sync(0xffffffffu, w, o);
            if (lane >= o) w += y;
        }
        ws[lane] = w;
    }
    __syncthreads();
    const int prefix = inc - v + (warp > 0 ? ws[warp - 1] : 0);
    total = ws[31];
    __syncthreads();
    return prefix;
}

extern "C" __global__ void __launch_bounds__(1024)
    moe_plan(const int* __restrict__ ids, int n_assign, int top_k, int n_exp, int tiles_max,
             int* __restrict__ perm, int* __restrict__ slot, int* __restrict__ tile_e,
             int* __restrict__ tile_start, int* __restrict__ tile_len) {
    __shared__ int cnt[MOE_EMAX], off[MOE_EMAX], cur[MOE_EMAX], tbase[MOE_EMAX + 1], ws[32];
    const int tid = threadIdx.x;
    cnt[tid] = 0;
    cur[tid] = 0;
    __syncthreads();
    for (int i = tid; i < n_assign; i += blockDim.x) {
        const int e = ids[i];
        if (e >= 0 && e < n_exp) atomicAdd(&cnt[e], 1);
    }
    __syncthreads();
    const int c = cnt[tid];  // 0 for tid ≥ n_exp
    int total_rows, total_tiles;
    off[tid] = scan1024(c, ws, total_rows);
    tbase[tid] = scan1024((c + MOE_TILE_M - 1) / MOE_TILE_M, ws, total_tiles);
    if (tid == 0) tbase[MOE_EMAX] = total_tiles;
    __syncthreads();
    for (int i = tid; i < n_assign; i += blockDim.x) {
        const int e = ids[i];
        if (e >= 0 && e < n_exp) {
            const int pos = off[e] + atomicAdd(&cur[e], 1);
            perm[pos] = i / top_k;
            slot[i] = pos;
        } else {
            slot[i] = -1;
        }
    }
    for (int y = tid; y < tiles_max; y += blockDim.x) {
        int len = 0, e = 0, start = 0;
        if (y < total_tiles) {
            // Largest e with tbase[e] ≤ y (tbase is non-decreasing, tbase[0] = 0).
            int lo = 0, hi = n_exp - 1;
            while (lo < hi) {
                const int mid = (lo + hi + 1) / 2;
                if (tbase[mid] <= y) lo = mid;
                else hi = mid - 1;
            }
            e = lo;
            start = off[e] + (y - tbase[e]) * MOE_TILE_M;
            len = min(MOE_TILE_M, off[e] + cnt[e] - start);
        }
        tile_e[y] = e;
        tile_start[y] = start;
        tile_len[y] = len;
    }
}

extern "C" __global__ void moe_gather(const float* __restrict__ x, const int* __restrict__ perm,
                                      float* __restrict__ xs, int n_assign, int dim) {
    const i64 total = (i64)n_assign * dim;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
        const i64 row = i / dim;
        xs[i] = x[(i64)perm[row] * dim + (i - row * dim)];
    }
}

template <class T>
__device__ __forceinline__ void moe_gemv_body(const u8* __restrict__ body, const u8* __restrict__ head,
                                              const float* __restrict__ x, float* __restrict__ y,
                                              const int* __restrict__ tile_e, const int* __restrict__ tile_start,
                                              const int* __restrict__ tile_len, int n, int k) {
    constexpr int M = MOE_TILE_M;
    const int tile = blockIdx.y, row = blockIdx.x;
    const int len = tile_len[tile];
    if (len <= 0) return;
    const int m0 = tile_start[tile];
    const i64 wrow = (i64)tile_e[tile] * n + row;
    const int nb = k / T::QK, nchunks = nb * T::CHUNKS;
    float acc[M];
#pragma unroll
    for (int mm = 0; mm < M; mm++) acc[mm] = 0.0f;
    for (int ci = threadIdx.x; ci < nchunks; ci += blockDim.x) {
        const int blk = ci / T::CHUNKS, c = ci % T::CHUNKS;
        typename T::Chunk ch;
        T::load(body, head, wrow * nb + blk, c, ch);
#pragma unroll
        for (int r = 0; r < T::RUNS; r++) {
            const int off = blk * T::QK + T::run_start(c, r);
            float v[16];
            T::run(ch, c, r, v);
#pragma unroll
            for (int mm = 0; mm < M; mm++) {
                if (mm < len) {
                    const float4* xp = (const float4*)(x + (i64)(m0 + mm) * k + off);
                    float s = acc[mm];
#pragma unroll
                    for (int q = 0; q < 4; q++) {
                        const float4 t = __ldg(xp + q);
                        s = fmaf(v[4 * q], t.x, s);
                        s = fmaf(v[4 * q + 1], t.y, s);
                        s = fmaf(v[4 * q + 2], t.z, s);
                        s = fmaf(v[4 * q + 3], t.w, s);
                    }
                    acc[mm] = s;
                }
            }
        }
    }
    __shared__ float red[MOE_THREADS / KILN_WARP][M];
    const int lane = threadIdx.x % KILN_WARP, warp = threadIdx.x / KILN_WARP;
    const int nwarps = (blockDim.x + KILN_WARP - 1) / KILN_WARP;
#pragma unroll
    for (int mm = 0; mm < M; mm++) {
        const float s = warp_sum(acc[mm]);
        if (lane == 0) red[warp][mm] = s;
    }
    __syncthreads();
    if (threadIdx.x < M && (int)threadIdx.x < len) {
        float s = 0.0f;
        for (int w = 0; w < nwarps; w++) s += red[w][threadIdx.x];
        y[(i64)(m0 + threadIdx.x) * n + row] = s;
    }
}

#define MOE_GEMV_KERNEL(suffix, T)                                                                  \
    extern "C" __global__ void __launch_bounds__(MOE_THREADS) moe_gemv_##suffix(                    \
        const u8* __restrict__ body, const u8* __restrict__ head, const float* __restrict__ x,       \
        float* __restrict__ y, const int* __restrict__ tile_e, const int* __restrict__ tile_start,   \
        const int* __restrict__ tile_len, int n, int k) {                                          \
        moe_gemv_body<T>(body, head, x, y, tile_e, tile_start, tile_len, n, k);                     \
    }

KILN_FOR_EACH_WEIGHT_TYPE(MOE_GEMV_KERNEL)

extern "C" __global__ void moe_combine(const float* __restrict__ y, const float* __restrict__ wts,
                                       const int* __restrict__ slot, float* __restrict__ out,
                                       int n_tokens, int top_k, int dim) {
    const i64 total = (i64)n_tokens * dim;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
        const i64 t = i / dim;
        const int d = (int)(i - t * dim);
        float s = 0.0f;
        for (int r = 0; r < top_k; r++) {
            const int p = slot[t * top_k + r];
            if (p >= 0) s = fmaf(wts[t * top_k + r], y[(i64)p * dim + d], s);
        }
        out[i] = s;
    }
}
