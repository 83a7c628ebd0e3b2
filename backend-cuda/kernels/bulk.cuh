// bulk.cuh: the sm_90 copy-engine helpers shared by the kernels that stream through shared
// memory (attention.cu's decode loader, gemv_pipe.cuh's weight rings): the shared-window address
// of a pointer, mbarrier init / arrive / expect_tx / wait, and `cp.async.bulk` global → shared
// completing on an mbarrier. Below sm_90 (KILN_BULK 0) the mbarrier and bulk helpers are empty
// and the callers take their ordinary-load paths.
#pragma once

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define KILN_BULK 1
#else
#define KILN_BULK 0
#endif

// Address of `p` in the shared window (for PTX operands).
__device__ __forceinline__ u32 smem_addr(const void* p) {
    u32 r;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p));
    return r;
}
__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
#if KILN_BULK
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}
__device__ __forceinline__ void mbar_arrive(u32 bar) {
#if KILN_BULK
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
#endif
}
__device__ __forceinline__ void mbar_arrive_tx(u32 bar, u32 bytes) {
#if KILN_BULK
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
#endif
}
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
#if KILN_BULK
    u32 done = 0;
    while (!done)
        asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                     : "=r"(done) : "r"(bar), "r"(parity) : "memory");
#endif
}
// dst (shared) ← src (global), `bytes` (multiple of 16, both 16-byte aligned), completing on bar.
__device__ __forceinline__ void bulk_g2s(u32 dst, const void* src, u32 bytes, u32 bar) {
#if KILN_BULK
    // Earlier generic accesses of this row (ldmatrix reads, zero fills) before the async write.
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                 ::"r"(dst), "l"(src), "r"(bytes), "r"(bar) : "memory");
#endif
}

