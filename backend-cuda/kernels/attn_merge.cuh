// attn_merge.cuh: the split-KV merge of attention.cu (flash-decoding): the fused merge at the
// end of the decode kernel and attn_combine_hd* use it. Included by attention.cu after its
// batch bookkeeping (AttnArgs, key_range, NEG_INF).

// ------------------------------------------------------------------- split-KV merge
// Partials are read through L2 (__ldcg: ld.global.cg): in the fused merge, other CTAs wrote
// them during this launch, so L1 may hold nothing valid for them. VEC: part_acc and out are
// 16-byte aligned (float4 loads and stores; the caller's scratch and out need only be 4-byte
// aligned, so the scalar form exists too). Decided once per call, outside the loops, so the
// unrolled loads of several splits stay independent and in flight together.
template <bool VEC>
__device__ __forceinline__ float4 ld_cg4(const float* p) {
    if (VEC) return __ldcg((const float4*)p);
    return make_float4(__ldcg(p), __ldcg(p + 1), __ldcg(p + 2), __ldcg(p + 3));
}

// Combine the split-KV partials of rows r0..r_end-1 of (s, g): warp w takes rows r0 + w,
// r0 + w + 4, ...; lane z (mod 32) reads split z's (m, l), the warp reduces max and sum, then
// lane l accumulates dims 4l..4l+3 (+128 …) over the splits (float4 loads when VEC).
// Bytes: (HD + 2)·4 per split and row read, HD·4 written per row; ≤ 4 rows per warp.
template <int HD, bool VEC>
__device__ __forceinline__ void merge_splits_v(const AttnArgs& a, int s, int g, int q_len, int kv_len, int q0,
                                            int r0, int r_end) {
    constexpr int NV = (HD / 4 + KILN_WARP - 1) / KILN_WARP;  // float4 columns per lane
    int klo, khi;
    key_range(a, q_len, kv_len, r0, r_end, klo, khi);
    const int z0 = klo / a.chunk, z1 = (khi - 1) / a.chunk;
    const int warp = threadIdx.x / KILN_WARP, lane = threadIdx.x % KILN_WARP;
    const int nwarps = blockDim.x / KILN_WARP;
    for (int r = r0 + warp; r < r_end; r += nwarps) {
        const i64 base = (((i64)s * a.n_kv + g) * a.rd + r) * a.splits;
        // (m, l) of this lane's splits, merged online, then across the warp.
        float m_l = NEG_INF, l_l = 0.0f, m_first = NEG_INF;
        for (int zz = z0 + lane; zz <= z1; zz += KILN_WARP) {
            const float* pml = a.part_ml + (base + zz) * 2;
            const float2 ml = VEC ? __ldcg((const float2*)pml) : make_float2(__ldcg(pml), __ldcg(pml + 1));
            if (zz < z0 + KILN_WARP) m_first = ml.x;
            const float mn = fmaxf(m_l, ml.x);
            const float rf = (mn == NEG_INF) ? 0.0f : mn;
            l_l = l_l * exp2f(m_l - rf) + ml.y * exp2f(ml.x - rf);
            m_l = mn;
        }
        float M = m_l;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
        const float mref = (M == NEG_INF) ? 0.0f : M;
        const float L = warp_sum(l_l * exp2f(m_l - mref));
        float4 acc[NV];
#pragma unroll
        for (int v = 0; v < NV; v++) acc[v] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        for (int zc = z0; zc <= z1; zc += KILN_WARP) {
            // Weight of split zc + lane (0 past z1).
            const float mz = zc == z0 ? m_first : (zc + lane <= z1 ? __ldcg(a.part_ml + (base + zc + lane) * 2) : NEG_INF);
            const float wz = (zc + lane <= z1) ? exp2f(mz - mref) : 0.0f;
            const int n = min(KILN_WARP, z1 - zc + 1);
#pragma unroll 8
            for (int j = 0; j < n; j++) {
                const float w = __shfl_sync(0xffffffffu, wz, j);
                const float* src = a.part_acc + (base + zc + j) * HD;
#pragma unroll
                for (int v = 0; v < NV; v++) {
                    const int c = (lane + v * KILN_WARP) * 4;
                    if (c < HD) {
                        const float4 x = ld_cg4<VEC>(src + c);
                        acc[v].x += w * x.x;
                        acc[v].y += w * x.y;
                        acc[v].z += w * x.z;
                        acc[v].w += w * x.w;
                    }
                }
            }
        }
        const float inv = L > 0.0f ? 1.0f / L : 0.0f;
        const int j = r / a.group, hh = r % a.group;
        float* dst = a.out + ((i64)(q0 + j) * a.n_heads + g * a.group + hh) * HD;
#pragma unroll
        for (int v = 0; v < NV; v++) {
            const int c = (lane + v * KILN_WARP) * 4;
            if (c >= HD) continue;
            const float4 y = make_float4(acc[v].x * inv, acc[v].y * inv, acc[v].z * inv, acc[v].w * inv);
            if (VEC) {
                *(float4*)(dst + c) = y;
            } else {
                dst[c] = y.x;
                dst[c + 1] = y.y;
                dst[c + 2] = y.z;
                dst[c + 3] = y.w;
            }
        }
    }
}

template <int HD>
__device__ __forceinline__ void merge_splits(const AttnArgs& a, int s, int g, int q_len, int kv_len, int q0,
                                          int r0, int r_end) {
    // Rows of part_acc and out are HD floats (≥ 256 bytes) apart: their bases decide alignment.
    if (((((unsigned long long)a.part_acc) | ((unsigned long long)a.out)) & 15ull) == 0)
        merge_splits_v<HD, true>(a, s, g, q_len, kv_len, q0, r0, r_end);
    else
        merge_splits_v<HD, false>(a, s, g, q_len, kv_len, q0, r0, r_end);
}

