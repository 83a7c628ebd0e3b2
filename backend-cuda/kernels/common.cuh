// common.cuh: helpers shared by every kiln kernel file (expanded textually by the module cache,
// so it needs no CUDA header). Conversions go through PTX `cvt`, which is exact for f16→f32
// (subnormals kept: kernels are compiled with --ftz=false) and rounds to nearest even the other way.
#pragma once

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

#define KILN_WARP 32

// Programmatic dependent launch (sm_90+; no-ops before it and when a kernel was launched
// without the attribute, src/ops/launch.rs). A kernel launched as a programmatic dependent may
// start while the previous kernel on its stream still runs, so it calls `pdl_wait` before it
// reads anything an earlier kernel wrote or writes anything an earlier kernel may read; it
// calls `pdl_launch_dependents` as early as it likes to let the next kernel's grid start.
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
// Both, at the top of a small kernel: wait for the previous kernel, let the next one launch.
__device__ __forceinline__ void pdl_enter() {
    pdl_wait();
    pdl_launch_dependents();
}

__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float bf2f(u16 b) {
    return __uint_as_float(((u32)b) << 16);
}

__device__ __forceinline__ u16 f2bf(float f) {
    u16 b;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(b) : "f"(f));
    return b;
}

// dtype codes shared with src/ops (kiln_core::DType order for the float types).
#define DT_F32 0
#define DT_F16 1
#define DT_BF16 2

__device__ __forceinline__ float load_as_f32(const void* p, i64 i, int dt) {
    if (dt == DT_F32) return ((const float*)p)[i];
    if (dt == DT_F16) return h2f(((const u16*)p)[i]);
    return bf2f(((const u16*)p)[i]);
}

__device__ __forceinline__ void store_from_f32(void* p, i64 i, int dt, float v) {
    if (dt == DT_F32) ((float*)p)[i] = v;
    else if (dt == DT_F16) ((u16*)p)[i] = f2h(v);
    else ((u16*)p)[i] = f2bf(v);
}

// The GLU activations (core Activation): act 0 = silu x·sigmoid(x); act 1 = gelu-tanh
// 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))). Shared by glu_f32 and the GEMV's GLU epilogue.
__device__ __forceinline__ float glu_act(float g, int act) {
    if (act == 0) return g / (1.0f + expf(-g));
    const float k = 0.7978845608028654f;  // sqrt(2/pi)
    return 0.5f * g * (1.0f + tanhf(k * (g + 0.044715f * g * g * g)));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over a block of up to 1024 threads; `smem` holds 32 floats. Every thread gets the sum.
__device__ __forceinline__ float block_sum(float v, float* smem) {
    const int lane = threadIdx.x % KILN_WARP, warp = threadIdx.x / KILN_WARP;
    const int nwarps = (blockDim.x + KILN_WARP - 1) / KILN_WARP;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) smem[warp] = v;
    __syncthreads();
    v = (lane < nwarps) ? smem[lane] : 0.0f;
    return warp_sum(v);
}

// Byte `i` (0..15) of a 16-byte vector; `i` must be a compile-time constant after unrolling.
__device__ __forceinline__ u32 byte_of(const uint4& q, int i) {
    const u32 w = (i < 4) ? q.x : (i < 8) ? q.y : (i < 12) ? q.z : q.w;
    return (w >> (8 * (i & 3))) & 0xffu;
}

__device__ __forceinline__ uint4 ld16(const u8* p) {
    return __ldg((const uint4*)p);
}
