// mma_ring.cuh: the cp.async ring and launch helpers shared by the tensor-core matmul kernels
// (matmul_mma.cu: mma_<type>, mq4k / mq5k; matmul_mqk.cuh: mq6k, mq8_0; matmul_mh.cu: mh4k).
#pragma once
#include "common.cuh"

// Bytes per W row of a Q4_K ring stage: the raw 144-byte block + 16 pad (40 words ≡ 8 mod 32:
// the fragment loads are bank-conflict free). mq4k and mh4k.
#define MQ_W_STRIDE 160

__device__ __forceinline__ u32 mma_smem_addr(const void* p) {
    u32 r;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p));
    return r;
}
__device__ __forceinline__ void mma_cp16(void* dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(mma_smem_addr(dst)), "l"(src) : "memory");
}
__device__ __forceinline__ void mma_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
__device__ __forceinline__ void mma_wait1() { asm volatile("cp.async.wait_group 1;" ::: "memory"); }

// Programmatic dependent launch (sm_90+): x is quant_x's output, read only after this.
__device__ __forceinline__ void mma_pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

template <int N>
__device__ __forceinline__ void mq_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

#define MQ_S_STRIDE 144  // bytes per x row pair of mq_quant_x scales in a stage: 8 groups × 16 + 16 pad

// x rows m0 .. m0 + BM − 1 of block column s of mq_quant_x's image (xq u8 [k/256][mp][256], xs
// float2 [k/256][mp/2][8][2]) → a stage: the x rows XS bytes apart at dq, the row pairs' scales
// MQ_S_STRIDE bytes apart at ds (cp.async by THREADS threads; tid this thread).
template <int BM, int THREADS, int XS>
__device__ __forceinline__ void mq_issue_x(u8* dq, u8* ds, const u8* __restrict__ xq, const float2* __restrict__ xs,
                                           int s, int mp, int m0, int tid) {
    const u8* sq = xq + ((i64)s * mp + m0) * 256;
#pragma unroll
    for (int e = tid; e < BM * 16; e += THREADS) mma_cp16(dq + (e >> 4) * XS + 16 * (e & 15), sq + 16 * e);
    const u8* ss = (const u8*)xs + ((i64)s * (mp / 2) + m0 / 2) * 128;
#pragma unroll
    for (int e = tid; e < BM / 2 * 8; e += THREADS) mma_cp16(ds + (e >> 3) * MQ_S_STRIDE + 16 * (e & 7), ss + 16 * e);
}

// A thread's share of a stage's W copies in the raw-block kernels (mq4k / mq5k, mq6k, mh4k):
// BN rows × CH 16-byte chunks of the BLK bytes a row holds in one block column (row r, column s
// at w + (r·nb + s)·BLK; rows past n clamped: valid reads, outputs not written) → row·WS +
// 16·chunk of the stage. Sources hoisted at column b0.
template <int BN, int CH, int BLK, int WS, int THREADS>
struct MqWCopies {
    static constexpr int PER = (BN * CH + THREADS - 1) / THREADS;
    const u8* src[PER];
    int dst[PER];
    __device__ __forceinline__ MqWCopies(const u8* w, int n, int nb, int n0, int b0, int tid) {
#pragma unroll
        for (int i = 0; i < PER; i++) {
            const int e = min(tid + THREADS * i, BN * CH - 1), row = e / CH, c = e - CH * row;
            src[i] = w + ((i64)min(n0 + row, n - 1) * nb + b0) * BLK + 16 * c;
            dst[i] = row * WS + 16 * c;
        }
    }
    // Column b0 + ds → the stage at `stage`.
    __device__ __forceinline__ void issue(u8* stage, int ds, int tid) const {
#pragma unroll
        for (int i = 0; i < PER; i++)
            if (tid + THREADS * i < BN * CH) mma_cp16(stage + dst[i], src[i] + (i64)ds * BLK);
    }
};

// The k loop of the raw-block kernels (mq4k / mq5k, mq6k, mq8_0) over block columns [b0, b1)
// through a ring of ST stages: issue_w(s, slot) / issue_x(s, slot) start the copies of column
// s into a slot, body(s, slot) consumes a landed one. W of the first ST − 1 stages is issued
// before the PDL wait (W does not depend on the previous kernel), then x; commit group i =
// stage i (group 0 also holds the earlier W copies). Each step waits until its stage landed
// (this thread's copies, then everyone's: the barrier also frees slot (i − 1) % ST), refills
// that slot ST − 1 columns ahead, and runs body.
template <int ST, class IW, class IX, class B>
__device__ __forceinline__ void mq_ring(int b0, int b1, IW issue_w, IX issue_x, B body) {
#pragma unroll
    for (int i = 0; i < ST - 1; i++)
        if (b0 + i < b1) issue_w(b0 + i, i);
    mma_pdl_wait();
#pragma unroll
    for (int i = 0; i < ST - 1; i++) {
        if (b0 + i < b1) issue_x(b0 + i, i);
        mma_commit();
    }
    for (int s = b0; s < b1; s++) {
        const int i = s - b0;
        mq_wait<ST - 2>();
        __syncthreads();
        const int sn = s + ST - 1, slot = (i + ST - 1) % ST;
        if (sn < b1) {
            issue_w(sn, slot);
            issue_x(sn, slot);
        }
        mma_commit();
        body(s, i % ST);
    }
}

// The accumulators of a warp's WT 16-row W tiles × NT n8 x tiles (mma fragment order: e = 0, 1
// row g, x columns 2t, 2t + 1; e = 2, 3 row g + 8) → y f32 [m, n] at W rows n0 + 16·WT·warp ..,
// x rows m0 ..; rows past n or m are not written.
template <int WT, int NT>
__device__ __forceinline__ void mq_store(const float (&acc)[WT][NT][4], float* __restrict__ y, int n, int m, int n0,
                                         int m0, int warp, int lane) {
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int wt = 0; wt < WT; wt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int wr = n0 + warp * 16 * WT + wt * 16 + g + 8 * (e >> 1);
                const int xr = m0 + nt * 8 + 2 * t + (e & 1);
                if (wr < n && xr < m) y[(i64)xr * n + wr] = acc[wt][nt][e];
            }
}
