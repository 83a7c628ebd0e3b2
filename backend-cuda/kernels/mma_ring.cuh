// mma_ring.cuh: the cp.async ring and launch helpers shared by the tensor-core matmul kernels
// (matmul_mma.cu: mma_<type>, mq4k; matmul_mh.cu: mh4k).
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
