// attn_cluster.cuh: the split-KV merge of attention.cu's decode kernel inside a thread-block
// cluster (sm_90+; src/ops/attention_launch.rs decides when). A row tile's `splits` CTAs are
// consecutive in grid x and launched as one (splits, 1, 1) cluster. Each CTA leaves its rows'
// (acc, max, sum) in its own shared memory; after a cluster barrier, CTA c (its rank in the
// cluster) merges a 1/splits share of the tile's (row, dim) outputs, reading every peer's state
// through distributed shared memory (mapa + ld.shared::cluster), and writes them to `out`; a
// second barrier keeps each CTA's shared memory alive until every peer is done reading it.
// What it replaces (attn_merge.cuh's fused merge): partials written to global memory, a
// device-wide fence, an arrival counter and one merging CTA reading every split back — the
// serial tail of a batch-1 decode call.
// Bytes: `out` only in global memory (HD·4 per row); over the cluster network 4·(HD + 2) per
// split and row (each output reads its own acc word and its row's (max, sum) from every split).

__device__ __forceinline__ void cluster_sync_all() {
#if __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}

// The shared::cluster address of shared::cta address `addr` in the CTA of cluster rank `rank`.
__device__ __forceinline__ u32 cluster_peer(u32 addr, u32 rank) {
#if __CUDA_ARCH__ >= 900
    u32 r;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(addr), "r"(rank));
    return r;
#else
    return addr;  // never launched below sm_90 (no clusters): the own CTA's word
#endif
}

__device__ __forceinline__ float ld_peer(u32 addr) {
    float v;
#if __CUDA_ARCH__ >= 900
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(addr) : "memory");
#else
    asm volatile("ld.shared.f32 %0, [%1];" : "=f"(v) : "r"(addr) : "memory");
#endif
    return v;
}

// acc [16][HD] f32 and ml [16] (max, sum) of this CTA (rows r0.., log2-domain max), in shared
// memory; every thread of every CTA of the cluster calls this (the barriers are .aligned).
template <int HD>
__device__ __forceinline__ void cluster_merge(const AttnArgs& a, const float* acc, const float2* ml, int g,
                                              int q0, int r0, int r_end) {
    cluster_sync_all();  // release: this CTA's acc/ml; acquire: every peer's
    const int nz = a.splits;          // the cluster's size
    const int c = blockIdx.x % nz;    // = %cluster_ctarank for a (nz, 1, 1) cluster
    const int total = (r_end - r0) * HD;
    const int per = (total + nz - 1) / nz;
    const int e_end = min(total, (c + 1) * per);
    const u32 acc0 = smem_addr(acc), ml0 = smem_addr(ml);
    for (int e = c * per + (int)threadIdx.x; e < e_end; e += blockDim.x) {
        const int rl = e / HD, d = e % HD;
        float M = NEG_INF;
#pragma unroll 4
        for (int p = 0; p < nz; p++) M = fmaxf(M, ld_peer(cluster_peer(ml0 + 8 * rl, p)));
        const float mref = (M == NEG_INF) ? 0.0f : M;
        float L = 0.0f, O = 0.0f;
#pragma unroll 4
        for (int p = 0; p < nz; p++) {
            const float m = ld_peer(cluster_peer(ml0 + 8 * rl, p));
            const float l = ld_peer(cluster_peer(ml0 + 8 * rl + 4, p));
            const float o = ld_peer(cluster_peer(acc0 + 4 * (rl * HD + d), p));
            const float f = exp2f(m - mref);  // 0 for an empty split (m = −inf)
            L += l * f;
            O += o * f;
        }
        const int r = r0 + rl, j = r / a.group, hh = r % a.group;
        a.out[((i64)(q0 + j) * a.n_heads + g * a.group + hh) * HD + d] = L > 0.0f ? O / L : 0.0f;
    }
    cluster_sync_all();  // no CTA leaves (freeing its shared memory) while a peer still reads it
}
