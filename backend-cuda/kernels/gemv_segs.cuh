// gemv_segs.cuh: the weight segments of the fused GEMV kernels (matmul_q.cu) — several weights
// that read the same x in one launch (`*s_` kernels), and the GLU mode (`*g_` kernels) whose
// groups pair gate and up rows and store act(gate)·up. Host side: src/ops/matmul_q/group.rs.
#pragma once
#include "common.cuh"

// Weight segments: up to GEMV_NS weights that read the same x and k (q/k/v, gate/up) run as ONE
// launch (the `*s_` kernels): their R-row groups are numbered one after the other, segment s
// holding the next ceil(n[s] / R) groups, and each group reads its segment's weight and writes
// its segment's y [m, n[s]]. The single-weight kernels are the NS = 1 case (the lookup folds
// away). Rows per segment n[s] = 0: unused.
#define GEMV_NS 3
struct GemvSegs {
    const u8* body[GEMV_NS];
    const u8* head[GEMV_NS];
    float* y[GEMV_NS];
    int n[GEMV_NS];
};
// Group `g` of the concatenation: its segment's weight, y, rows and group index within it.
struct GemvSeg {
    const u8* body;
    const u8* head;
    float* y;
    int n;
    int g;
    int seg;  // the segment's index (gemv_seg; 0 elsewhere)
};

__device__ __forceinline__ GemvSegs gemv_one_seg(const u8* body, const u8* head, float* y, int n) {
    GemvSegs s;
#pragma unroll
    for (int i = 0; i < GEMV_NS; i++) {
        s.body[i] = body; s.head[i] = head; s.y[i] = y; s.n[i] = i == 0 ? n : 0;
    }
    return s;
}

template <int NS, int R>
__device__ __forceinline__ int gemv_ngroups(const GemvSegs& sg) {
    int t = 0;
#pragma unroll
    for (int i = 0; i < NS; i++) t += (sg.n[i] + R - 1) / R;
    return t;
}

// Past the last group: segment 0 with an out-of-range group (callers test `g < ngroups`).
template <int NS, int R>
__device__ __forceinline__ GemvSeg gemv_seg(const GemvSegs& sg, int g) {
    GemvSeg r = {sg.body[0], sg.head[0], sg.y[0], sg.n[0], g, 0};
    int base = 0;
#pragma unroll
    for (int i = 0; i < NS; i++) {
        const int gi = (sg.n[i] + R - 1) / R;
        if (g >= base && g < base + gi) r = GemvSeg{sg.body[i], sg.head[i], sg.y[i], sg.n[i], g - base, i};
        base += gi;
    }
    return r;
}

// GLU mode (GLU = 1, the `*g_` kernels; M = 1 except gemvpg_<type>_m2/_m4): segment 0 is a gate weight, segment 1 the up
// weight of the same shape; a group is R/2 rows of each (rows rr < R/2 of the group are gate
// rows g·R/2 + rr, rows rr ≥ R/2 the same up rows) and stores act(gate)·up for its R/2 rows
// into segment 0's y: y [m, n] = act(x·Gᵀ) ⊙ x·Uᵀ, the glu kernel folded into the GEMV.
template <int NS, int R, int GLU>
__device__ __forceinline__ int group_count(const GemvSegs& sg) {
    if (GLU) return (sg.n[0] + R / 2 - 1) / (R / 2);
    return gemv_ngroups<NS, R>(sg);
}
template <int NS, int R, int GLU>
__device__ __forceinline__ GemvSeg group_seg(const GemvSegs& sg, int g) {
    if (GLU) return GemvSeg{sg.body[0], sg.head[0], sg.y[0], sg.n[0], g, 0};
    return gemv_seg<NS, R>(sg, g);
}
// Row rr of group sq.g: its weight and row (clamped to a valid row: a tail group's extra rows
// are read, their results unused).
template <int R, int GLU>
__device__ __forceinline__ void group_row(const GemvSegs& sg, const GemvSeg& sq, int rr, const u8*& b,
                                          const u8*& h, int& row) {
    if (GLU) {
        const int up = rr >= R / 2 ? 1 : 0;
        b = sg.body[up];
        h = sg.head[up];
        row = min(sq.g * (R / 2) + rr % (R / 2), sq.n - 1);
    } else {
        b = sq.body;
        h = sq.head;
        row = min(sq.g * R + rr, sq.n - 1);
    }
}

// The end of a GLU group: the R·M sums as reduce_store forms them (shuffles, then the S warps
// in order), then y[mm·n + g·R/2 + j] = act(gate_j)·up_j for x rows mm < m by one lane.
template <int R, int M = 1>
__device__ __forceinline__ void reduce_store_glu(float (&acc)[R][M], float (*red)[R * M], float* __restrict__ y,
                                                 int n, int g, int S, int warp, int slot, int sub, int lane,
                                                 bool active, int act, int m = 1) {
    float t[R][M];
#pragma unroll
    for (int rr = 0; rr < R; rr++)
#pragma unroll
        for (int mm = 0; mm < M; mm++) t[rr][mm] = warp_sum(acc[rr][mm]);
    if (S > 1) {
        if (lane == 0) {
#pragma unroll
            for (int rr = 0; rr < R; rr++)
#pragma unroll
                for (int mm = 0; mm < M; mm++) red[warp][rr * M + mm] = t[rr][mm];
        }
        __syncthreads();
        if (sub == 0 && lane == 0) {
#pragma unroll
            for (int rr = 0; rr < R; rr++)
#pragma unroll
                for (int mm = 0; mm < M; mm++) {
                    float v = 0.0f;
                    for (int w = 0; w < S; w++) v += red[slot * S + w][rr * M + mm];
                    t[rr][mm] = v;
                }
        }
        __syncthreads();
    }
    if (sub == 0 && lane == 0 && active) {
#pragma unroll
        for (int mm = 0; mm < M; mm++)
#pragma unroll
            for (int j = 0; j < R / 2; j++)
                if (g * (R / 2) + j < n && mm < m)
                    y[(i64)mm * n + g * (R / 2) + j] = glu_act(t[j][mm], act) * t[j + R / 2][mm];
    }
}
