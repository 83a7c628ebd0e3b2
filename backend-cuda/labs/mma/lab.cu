// lab.cu: the Q4_K tensor-core matmul lab for 1 ≤ m ≤ 64 (issues 3 and 6). Standalone: includes
// kiln's kernel sources (../../kernels/matmul_q.cu and matmul_mma.cu, with quant.cuh and
// common.cuh), builds random Q4_K weights in kiln's layout (the 144-byte GGUF blocks, row-major,
// the "body" region; Q4_K has no head), checks every variant against CPU f64 references, then
// times each in a CUDA graph of back-to-back calls with the weight rotated through >= 512 MiB
// (beyond the 50 MB L2), printing µs, GB/s of weight, % of a device-to-device copy it measures
// itself, and the speed-up over cuBLAS bf16 (cublasGemmEx, bf16 W and x, f32 out, same shape,
// timed here the same way).
//
// Build and run on the GPU machine: bash backend-cuda/labs/mma/run.sh (README.md beside it).
//
// Variants (each with its x rounding kernel, + mma_reduce with PDL when S > 1):
//   mq  mq_quant_x + mq4k_b<BM>_w<WT>_n<NW>_s<ST>: the host's int8 kernel (x int8 per 32,
//       m16n8k32 s8 per sub-block, 3 FFMA per output per sub-block), its configuration per BM.
//   mp  mp_quant_x + mp4k_w<WT>_t<NT>_d<D>_u<U> (kernels/matmul_mp.cuh, 2 ≤ m ≤ 16): W through
//       per-warp cp.async.bulk rings (one copy per W row and stage), mq4k's decode, x in
//       fragment order; S warps per block split k (swept: 1, 2, 3, 4, 6, 8, 12, 16).
//   mpt the same with one 2-D tensor copy (cp.async.bulk.tensor, a CUtensorMap per weight copy
//       built with cuTensorMapEncodeTiled from libcuda via dlopen) per warp and stage.
//   mh  mh_quant_x + mh4k_b<BM>_w<WT>_n<NW>_s<ST>: f16 tensor cores, the sub-block scale in the
//       exact f16 weight operand sc·q, x f16 with a power-of-two scale per (row, 256 k), d and
//       dmin applied once per 256 k; every (WT, NW, ST) below at BM = the tile covering m and
//       half of it, each k split S.
#include <cuda.h>
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <library_types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#define MQ4K_NO_INSTANCES  // the lab instantiates its own Q4_K kernels below (and no generic ones)
#include "../../kernels/matmul_mma.cu"
#include "../../kernels/matmul_mh.cu"

// mp: W through per-warp bulk-copy rings (matmul_mp.cuh), (WT, NT, D, U) = 16-row tiles per
// warp, n8 tiles, stages, block columns per stage; S warps per block split k (run time).
#define MP_CFGS(NT) MP4K_KERNEL(1, NT, 2, 1) MP4K_KERNEL(1, NT, 3, 1) MP4K_KERNEL(1, NT, 2, 2) MP4K_KERNEL(1, NT, 3, 2) \
    MP4K_KERNEL(1, NT, 2, 4) MP4K_KERNEL(1, NT, 3, 4) MP4K_KERNEL(1, NT, 2, 8) MP4K_KERNEL(2, NT, 2, 1)                \
    MP4K_KERNEL(2, NT, 2, 2) MP4K_KERNEL(2, NT, 2, 4)
MP_CFGS(1)
MP_CFGS(2)
// mpt: the same with one 2-D tensor copy (TMA) per stage; U ∈ {1, 2, 3, 6} (row stride U·144
// bytes unpadded: conflict-free 8-byte fragment loads).
#define MPT_CFGS(NT) MPT4K_KERNEL(1, NT, 2, 1) MPT4K_KERNEL(1, NT, 3, 1) MPT4K_KERNEL(1, NT, 4, 1) MPT4K_KERNEL(1, NT, 2, 2) \
    MPT4K_KERNEL(1, NT, 3, 2) MPT4K_KERNEL(1, NT, 2, 3) MPT4K_KERNEL(1, NT, 2, 6) MPT4K_KERNEL(2, NT, 2, 1)             \
    MPT4K_KERNEL(2, NT, 3, 1) MPT4K_KERNEL(2, NT, 2, 2)
MPT_CFGS(1)
MPT_CFGS(2)

// mq: the host's configuration per BM (ops/matmul_mma/mqk.rs FAMILIES).
MQ4K_KERNEL(8, 1, 8, 3) MQ4K_KERNEL(16, 1, 8, 3) MQ4K_KERNEL(32, 2, 4, 3) MQ4K_KERNEL(64, 2, 8, 3)
// (WT, NW, WM, ST, MB): W tiles per warp, warps, warps along m, stages, min blocks per SM.
#define MH_CFGS(BM)                                                                                     \
    MH4K_KERNEL(BM, 1, 4, 1, 2, 1) MH4K_KERNEL(BM, 1, 4, 1, 3, 1) MH4K_KERNEL(BM, 1, 8, 1, 2, 1)       \
    MH4K_KERNEL(BM, 1, 8, 1, 3, 1) MH4K_KERNEL(BM, 2, 4, 1, 2, 1) MH4K_KERNEL(BM, 2, 4, 1, 3, 1)       \
    MH4K_KERNEL(BM, 2, 8, 1, 2, 1) MH4K_KERNEL(BM, 1, 4, 1, 2, 2) MH4K_KERNEL(BM, 1, 8, 1, 2, 2)       \
    MH4K_KERNEL(BM, 2, 4, 1, 2, 2) MH4K_KERNEL(BM, 1, 8, 2, 2, 2) MH4K_KERNEL(BM, 1, 8, 2, 3, 1)       \
    MH4K_KERNEL(BM, 2, 8, 2, 2, 1) MH4K_KERNEL(BM, 1, 16, 2, 2, 1)
MH_CFGS(16)
#ifndef LAB_SMALL_M  // -DLAB_SMALL_M: m <= 16 only (mh b16; a faster build)
MH_CFGS(32)
MH_CFGS(64)
#endif

#define CK(x)                                                                                     \
    do {                                                                                          \
        cudaError_t e_ = (x);                                                                     \
        if (e_ != cudaSuccess) {                                                                  \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));    \
            exit(1);                                                                              \
        }                                                                                         \
    } while (0)
// cuBLAS loaded at run time (the lab binary can be built where libcublas is absent).
typedef void* cublasHandle_t;
enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_COMPUTE_32F = 68, CUBLAS_GEMM_DEFAULT = -1 };
typedef int (*CublasCreateFn)(cublasHandle_t*);
typedef int (*CublasSetStreamFn)(cublasHandle_t, cudaStream_t);
typedef int (*CublasGemmExFn)(cublasHandle_t, int, int, int, int, int, const void*, const void*, cudaDataType, int,
                              const void*, cudaDataType, int, const void*, void*, cudaDataType, int, int, int);
static CublasCreateFn cublasCreate;
static CublasSetStreamFn cublasSetStream;
static CublasGemmExFn cublasGemmEx;
static void load_cublas() {
    void* h = dlopen("libcublas.so.13", RTLD_NOW);
    if (!h) h = dlopen("libcublas.so", RTLD_NOW);
    if (!h) { fprintf(stderr, "libcublas not found: %s\n", dlerror()); exit(1); }
    cublasCreate = (CublasCreateFn)dlsym(h, "cublasCreate_v2");
    cublasSetStream = (CublasSetStreamFn)dlsym(h, "cublasSetStream_v2");
    cublasGemmEx = (CublasGemmExFn)dlsym(h, "cublasGemmEx");
    if (!cublasCreate || !cublasSetStream || !cublasGemmEx) { fprintf(stderr, "cublas symbols missing\n"); exit(1); }
}
#define CB(x)                                                                                     \
    do {                                                                                          \
        int s_ = (x);                                                                             \
        if (s_ != 0) {                                                                            \
            fprintf(stderr, "%s:%d %s: cublas status %d\n", __FILE__, __LINE__, #x, (int)s_);     \
            exit(1);                                                                              \
        }                                                                                         \
    } while (0)

typedef CUresult (*EncodeTiledFn)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*, const cuuint64_t*,
                                  const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                  CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
static EncodeTiledFn encode_tiled;
static void load_cuda_driver() {
    void* h = dlopen("libcuda.so.1", RTLD_NOW);
    if (!h) { fprintf(stderr, "libcuda not found\n"); exit(1); }
    encode_tiled = (EncodeTiledFn)dlsym(h, "cuTensorMapEncodeTiled");
    if (!encode_tiled) { fprintf(stderr, "cuTensorMapEncodeTiled missing\n"); exit(1); }
}
// W [n][k/256·144 bytes] as u64 [n][k/256·18], box {18·U, 16·WT}.
static MpTmap make_tmap(const u8* w, int n, int k, int U, int WT) {
    CUtensorMap t;
    const cuuint64_t dims[2] = {(cuuint64_t)(k / 256 * 18), (cuuint64_t)n};
    const cuuint64_t strides[1] = {(cuuint64_t)(k / 256 * 144)};
    const cuuint32_t box[2] = {(cuuint32_t)(18 * U), (cuuint32_t)(16 * WT)}, es[2] = {1, 1};
    const CUresult r = encode_tiled(&t, CU_TENSOR_MAP_DATA_TYPE_UINT64, 2, (void*)w, dims, strides, box, es, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                    CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) { fprintf(stderr, "cuTensorMapEncodeTiled: %d\n", (int)r); exit(1); }
    MpTmap o; memcpy(&o, &t, sizeof o); return o;
}
typedef void (*MptFn)(const u8*, const u8*, const float2*, float*, int, int, int, int, int, MpTmap);
typedef void (*MqFn)(const u8*, const u8*, const float2*, float*, int, int, int, int, int);
typedef void (*MhFn)(const u8*, const u16*, const u32*, const float*, float*, int, int, int, int, int);

// A kernel configuration: kind 1 = mq, 3 = mh, 4 = mp (bm = 8·NT, st = D, mb = U); fn is the
// MqFn (mq, mp) or MhFn.
struct Cfg { int kind, bm, wt, nw, wm, st, mb; const void* fn; };
#define MQ_CFG(BM, WT, NW, ST) {1, BM, WT, NW, 1, ST, 1, (const void*)mq4k_b##BM##_w##WT##_n##NW##_s##ST}
#define MH_CFG(BM, WT, NW, WM, ST, MB) {3, BM, WT, NW, WM, ST, MB, (const void*)mh4k_b##BM##_w##WT##_n##NW##_x##WM##_s##ST##_m##MB}
#define MH_CFG_ALL(BM) MH_CFG(BM, 1, 4, 1, 2, 1), MH_CFG(BM, 1, 4, 1, 3, 1), MH_CFG(BM, 1, 8, 1, 2, 1), MH_CFG(BM, 1, 8, 1, 3, 1), \
    MH_CFG(BM, 2, 4, 1, 2, 1), MH_CFG(BM, 2, 4, 1, 3, 1), MH_CFG(BM, 2, 8, 1, 2, 1), MH_CFG(BM, 1, 4, 1, 2, 2),                \
    MH_CFG(BM, 1, 8, 1, 2, 2), MH_CFG(BM, 2, 4, 1, 2, 2), MH_CFG(BM, 1, 8, 2, 2, 2), MH_CFG(BM, 1, 8, 2, 3, 1),                \
    MH_CFG(BM, 2, 8, 2, 2, 1), MH_CFG(BM, 1, 16, 2, 2, 1)
#define MPT_CFG(WT, NT, D, U) {5, 8 * NT, WT, 1, 1, D, U, (const void*)mpt4k_w##WT##_t##NT##_d##D##_u##U}
#define MPT_CFG_ALL(NT) MPT_CFG(1, NT, 2, 1), MPT_CFG(1, NT, 3, 1), MPT_CFG(1, NT, 4, 1), MPT_CFG(1, NT, 2, 2), MPT_CFG(1, NT, 3, 2), \
    MPT_CFG(1, NT, 2, 3), MPT_CFG(1, NT, 2, 6), MPT_CFG(2, NT, 2, 1), MPT_CFG(2, NT, 3, 1), MPT_CFG(2, NT, 2, 2)
#define MP_CFG(WT, NT, D, U) {4, 8 * NT, WT, 1, 1, D, U, (const void*)mp4k_w##WT##_t##NT##_d##D##_u##U}
#define MP_CFG_ALL(NT) MP_CFG(1, NT, 2, 1), MP_CFG(1, NT, 3, 1), MP_CFG(1, NT, 2, 2), MP_CFG(1, NT, 3, 2), MP_CFG(1, NT, 2, 4), \
    MP_CFG(1, NT, 3, 4), MP_CFG(1, NT, 2, 8), MP_CFG(2, NT, 2, 1), MP_CFG(2, NT, 2, 2), MP_CFG(2, NT, 2, 4)
static const Cfg CFGS[] = {MQ_CFG(8, 1, 8, 3), MQ_CFG(16, 1, 8, 3), MQ_CFG(32, 2, 4, 3), MQ_CFG(64, 2, 8, 3),
                           MH_CFG_ALL(16),
#ifndef LAB_SMALL_M
                           MH_CFG_ALL(32), MH_CFG_ALL(64),
#endif
                           MP_CFG_ALL(1), MP_CFG_ALL(2), MPT_CFG_ALL(1), MPT_CFG_ALL(2)};
static const int NCFG = sizeof(CFGS) / sizeof(CFGS[0]);

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static inline uint64_t rnd() {
    rng_state ^= rng_state << 13; rng_state ^= rng_state >> 7; rng_state ^= rng_state << 17;
    return rng_state;
}
static inline float h2f_host(uint16_t h) {  // normal and zero f16 only
    const uint32_t e = (h >> 10) & 31, m = h & 1023, s = h >> 15;
    if (e == 0 && m == 0) return s ? -0.0f : 0.0f;
    uint32_t bits = (s << 31) | ((e + 112) << 23) | (m << 13);
    float f; memcpy(&f, &bits, 4); return f;
}
static inline uint16_t rand_scale() { return (uint16_t)(((uint32_t)(5 + rnd() % 4) << 10) | (rnd() & 1023)); }
static inline uint16_t f2bf_host(float f) { uint32_t u; memcpy(&u, &f, 4); return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16); }

// Random Q4_K [n, k]: random bytes, d and dmin positive normal f16 in [2^-10, 2^-6).
static std::vector<uint8_t> make_q4k(int n, int k) {
    const size_t nblocks = (size_t)n * (k / 256);
    std::vector<uint8_t> b(nblocks * 144);
    for (size_t i = 0; i < b.size(); i += 8) { const uint64_t r = rnd(); memcpy(b.data() + i, &r, std::min<size_t>(8, b.size() - i)); }
    for (size_t g = 0; g < nblocks; g++) {
        const uint16_t d = rand_scale(), dm = rand_scale();
        memcpy(b.data() + g * 144, &d, 2); memcpy(b.data() + g * 144 + 2, &dm, 2);
    }
    return b;
}

// Row r of W dequantized (GGUF definitions), as float (exact: f16 × 6-bit products).
static void dequant_row(const std::vector<uint8_t>& W, int k, int row, float* out) {
    const int nb = k / 256;
    for (int bi = 0; bi < nb; bi++) {
        const uint8_t* p = W.data() + ((size_t)row * nb + bi) * 144;
        uint16_t dh, mh; memcpy(&dh, p, 2); memcpy(&mh, p + 2, 2);
        const double d = h2f_host(dh), dmin = h2f_host(mh);
        const uint8_t* sc = p + 4; const uint8_t* q = p + 16;
        auto sm = [&](int j, int& s, int& m) {
            if (j < 4) { s = sc[j] & 63; m = sc[j + 4] & 63; }
            else { s = (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4); m = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4); }
        };
        float* y = out + bi * 256;
        for (int j = 0; j < 4; j++) {
            int s1, m1, s2, m2; sm(2 * j, s1, m1); sm(2 * j + 1, s2, m2);
            for (int l = 0; l < 32; l++) {
                y[64 * j + l] = (float)(d * s1 * (q[32 * j + l] & 15) - dmin * m1);
                y[64 * j + 32 + l] = (float)(d * s2 * (q[32 * j + l] >> 4) - dmin * m2);
            }
        }
    }
}

// x rounded as the kernels round it: int8 per `grp` contiguous elements, d = max|x| / 127
// rounded up to 22 significant bits, q = rn(x · (1/d)).
static std::vector<double> round_x(const std::vector<float>& x, int grp) {
    std::vector<double> o(x.size());
    for (size_t s = 0; s < x.size(); s += grp) {
        float amax = 0; for (int l = 0; l < grp; l++) amax = std::max(amax, std::fabs(x[s + l]));
        float d0 = amax / 127.0f; uint32_t u; memcpy(&u, &d0, 4); u = (u + 3u) & ~3u; float d; memcpy(&d, &u, 4);
        const float id = amax > 0 ? 1.0f / d : 0.0f;
        for (int l = 0; l < grp; l++) {
            const float p = x[s + l] * id;
            const int q = std::max(-127, std::min(127, (int)std::nearbyint(p)));
            o[s + l] = (double)d * q;
        }
    }
    return o;
}

// x rounded as mh_quant_x rounds it: per (row, 256 elements) sx = 2^(e − 14), e = ⌊log2
// max|x|⌋ (≥ −112), x̂ = sx · f16_rn(x / sx) (finite x).
static float f16_rn_host(float v) {
    if (std::fabs(v) < 6.103515625e-05f) return std::nearbyint(v * 16777216.0f) / 16777216.0f;  // subnormal grid 2^-24
    uint32_t u; memcpy(&u, &v, 4); u = (u + 0xfffu + ((u >> 13) & 1u)) & ~0x1fffu; float f; memcpy(&f, &u, 4); return f;
}
static std::vector<double> round_x_f16(const std::vector<float>& x) {
    std::vector<double> o(x.size());
    for (size_t s = 0; s < x.size(); s += 256) {
        float amax = 0; for (int l = 0; l < 256; l++) amax = std::max(amax, std::fabs(x[s + l]));
        uint32_t ab; memcpy(&ab, &amax, 4);
        const int e = std::max((int)((ab >> 23) & 255) - 127, -112);
        const double sx = std::ldexp(1.0, e - 14);
        const float inv = std::ldexp(1.0f, 14 - e);
        for (int l = 0; l < 256; l++) o[s + l] = sx * f16_rn_host(x[s + l] * inv);
    }
    return o;
}

// y_ref[r][c] = Σ_j x[r][j] · W[c][j] in f64 for the four x versions (exact, int8 per 16, per
// 32, f16 per 256 with a power-of-two scale).
static void reference(const std::vector<uint8_t>& W, int n, int k, int M, const std::vector<float>& x,
                      std::vector<double> out[4]) {
    std::vector<double> xr[4];
    xr[0].assign(x.begin(), x.end());
    xr[1] = round_x(x, 16);
    xr[2] = round_x(x, 32);
    xr[3] = round_x_f16(x);
    for (int v = 0; v < 4; v++) out[v].assign((size_t)M * n, 0.0);
    const int T = std::max(1u, std::thread::hardware_concurrency());
    std::vector<std::thread> th;
    for (int ti = 0; ti < T; ti++) {
        th.emplace_back([&, ti]() {
            std::vector<float> row(k);
            for (int c = ti; c < n; c += T) {
                dequant_row(W, k, c, row.data());
                for (int v = 0; v < 4; v++)
                    for (int r = 0; r < M; r++) {
                        double s = 0; const double* xp = xr[v].data() + (size_t)r * k;
                        for (int j = 0; j < k; j++) s += xp[j] * row[j];
                        out[v][(size_t)r * n + c] = s;
                    }
            }
        });
    }
    for (auto& t : th) t.join();
}

static int g_sms = 0;
static size_t g_smem_optin = 0;

template <class F, class... A>
static void launch_ex(F fn, dim3 grid, dim3 block, size_t smem, bool pdl, cudaStream_t st, A... args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid; cfg.blockDim = block; cfg.dynamicSmemBytes = smem; cfg.stream = st;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at; cfg.numAttrs = pdl ? 1 : 0;
    CK(cudaLaunchKernelEx(&cfg, fn, args...));
}

struct Ctx {
    int n, k, m;
    std::vector<const u8*> w;       // rotated Q4_K copies
    std::vector<const uint16_t*> wb; // rotated bf16 copies
    float* x; float* y; u8* scratch; uint16_t* xbf; float* part;
    cudaStream_t st; cublasHandle_t cb;
};

// A variant: kind 1 = mq / 3 = mh (cfg index into CFGS, S), 2 = cuBLAS bf16.
struct Var { int kind; int cfg; int S; };

static int bm_of(int m) { return m <= 8 ? 8 : m <= 16 ? 16 : m <= 32 ? 32 : 64; }
// mp's shared memory at S warps per block (MP_SMEM).
static size_t mp_smem_of(const Cfg& c, int S) {
    const int R = 16 * c.wt, RS = c.mb * 144 + (c.kind == 4 && c.mb % 4 == 0 ? 16 : 0);
    return (size_t)S * (c.st * R * RS + (8 * c.st + 15) / 16 * 16) + (S > 1 ? (size_t)S * c.wt * (c.bm / 8) * 512 : 0);
}
static size_t smem_of(const Cfg& c) {
    if (c.kind >= 4) return mp_smem_of(c, 1);
    const int bn = 16 * c.wt * c.nw / c.wm;
    return c.kind == 1 ? (size_t)c.st * (bn * MQ_W_STRIDE + c.bm * MQ_X_STRIDE + c.bm / 2 * MQ_S_STRIDE)
                       : (size_t)c.st * (bn * MQ_W_STRIDE + c.bm * (512 + 36));
}

static void reduce(const Ctx& c, int S, bool pdl) {
    const long count = (long)c.m * c.n;
    const unsigned blocks = (unsigned)std::clamp<long>((count + 255) / 256, 1, (long)g_sms * 64);
    launch_ex(mma_reduce, dim3(blocks), dim3(256), 0, pdl, c.st, (const float*)c.part, c.y, (i64)count, S);
}

static void call_q(const Ctx& c, int i, int ci, int S) {
    const u8* w = c.w[i % c.w.size()];
    const Cfg& q = CFGS[ci];
    const int nb = c.k / 256, bm = q.bm;
    const int mp = (c.m + bm - 1) / bm * bm;
    const long warps = (long)nb * mp;
    const dim3 qg((unsigned)std::clamp<long>((warps + 7) / 8, 1, (long)g_sms * 8));
    const int spz = (nb + S - 1) / S;
    const int Sr = (nb + spz - 1) / spz;
    const int bn = 16 * q.wt * q.nw / q.wm;
    float* y = Sr > 1 ? c.part : c.y;
    const dim3 grid(mp / bm, (c.n + bn - 1) / bn, Sr), block(32 * q.nw);
    if (q.kind == 5) {
        u8* xq = c.scratch;
        float2* xs = (float2*)(c.scratch + (size_t)mp * c.k);
        launch_ex(mp_quant_x, qg, dim3(256), 0, true, c.st, (const float*)c.x, xq, xs, c.k, c.m, mp);
        const dim3 g4((c.n + 16 * q.wt - 1) / (16 * q.wt)), b4(32 * S);
        const MpTmap tm = make_tmap(w, c.n, c.k, q.mb, q.wt);
        launch_ex((MptFn)q.fn, g4, b4, mp_smem_of(q, S), true, c.st, w, (const u8*)xq, (const float2*)xs, c.y, c.n, c.k, c.m, mp, 0, tm);
        return;
    }
    if (q.kind == 4) {
        u8* xq = c.scratch;
        float2* xs = (float2*)(c.scratch + (size_t)mp * c.k);
        launch_ex(mp_quant_x, qg, dim3(256), 0, true, c.st, (const float*)c.x, xq, xs, c.k, c.m, mp);
        const dim3 g4((c.n + 16 * q.wt - 1) / (16 * q.wt)), b4(32 * S);
        launch_ex((MqFn)q.fn, g4, b4, mp_smem_of(q, S), true, c.st, w, (const u8*)xq, (const float2*)xs, c.y, c.n, c.k, c.m, mp, 0);
        return;
    }
    if (q.kind == 1) {
        u8* xq = c.scratch;
        float2* xs = (float2*)(c.scratch + (size_t)mp * c.k);
        launch_ex(mq_quant_x, qg, dim3(256), 0, true, c.st, (const float*)c.x, xq, xs, c.k, c.m, mp);
        launch_ex((MqFn)q.fn, grid, block, smem_of(q), true, c.st, w, (const u8*)xq, (const float2*)xs, y, c.n, c.k, c.m, mp, spz);
    } else {
        u16* xh = (u16*)c.scratch;
        u32* xx = (u32*)(c.scratch + (size_t)mp * c.k * 2);
        float* xsx = (float*)(c.scratch + (size_t)mp * c.k * 2 + (size_t)mp * nb * 32);
        launch_ex(mh_quant_x, qg, dim3(256), 0, true, c.st, (const float*)c.x, xh, xx, xsx, c.k, c.m, mp);
        launch_ex((MhFn)q.fn, grid, block, smem_of(q), true, c.st, w, (const u16*)xh, (const u32*)xx, (const float*)xsx, y, c.n,
                  c.k, c.m, mp, spz);
    }
    if (Sr > 1) reduce(c, Sr, true);
}

// Resident blocks per SM of a configuration (occupancy API: registers and shared memory).
static int occupancy(int ci, int S = 0) {
    int occ = 0;
    if (CFGS[ci].kind >= 4) {
        S = std::max(S, 1);
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, CFGS[ci].fn, 32 * S, mp_smem_of(CFGS[ci], S)));
        return occ;
    }
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, CFGS[ci].fn, 32 * CFGS[ci].nw, smem_of(CFGS[ci])));
    return std::max(occ, 1);
}

// The k-split rule (ops/matmul_mma/mqk.rs mq_plan_of): the S ≤ min(16, nb / 2) minimizing whole waves
// × (block columns per split + 1 for the pipeline fill), ceil(tiles·S / slots)·(ceil(nb / S) + 1);
// ties to the smaller S.
static int rule_S(int tiles, int slots, int nb) {
    int best = 1; long bc = -1;
    for (int S = 1; S <= std::max(1, std::min(16, nb / 2)); S++) {
        const long cost = (long)((tiles * S + slots - 1) / slots) * ((nb + S - 1) / S + 1);
        if (bc < 0 || cost < bc) { bc = cost; best = S; }
    }
    return best;
}

static void call_cublas(const Ctx& c, int i) {
    const uint16_t* w = c.wb[i % c.wb.size()];
    const float one = 1.0f, zero = 0.0f;
    CB(cublasGemmEx(c.cb, CUBLAS_OP_T, CUBLAS_OP_N, c.n, c.m, c.k, &one, w, CUDA_R_16BF, c.k, c.xbf, CUDA_R_16BF, c.k, &zero,
                    c.y, CUDA_R_32F, c.n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

static void call(const Var& v, const Ctx& c, int i) {
    if (v.kind == 2) call_cublas(c, i);
    else call_q(c, i, v.cfg, v.S);
}

static double time_graph(const Var& v, const Ctx& c, int calls, int reps) {
    for (int i = 0; i < 3; i++) call(v, c, i);
    CK(cudaStreamSynchronize(c.st));
    cudaGraph_t g; cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(c.st, cudaStreamCaptureModeRelaxed));
    for (int i = 0; i < calls; i++) call(v, c, i);
    CK(cudaStreamEndCapture(c.st, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    CK(cudaGraphLaunch(ge, c.st));
    CK(cudaStreamSynchronize(c.st));
    cudaEvent_t a, b; CK(cudaEventCreate(&a)); CK(cudaEventCreate(&b));
    std::vector<double> ts;
    for (int r = 0; r < reps; r++) {
        CK(cudaEventRecord(a, c.st));
        CK(cudaGraphLaunch(ge, c.st));
        CK(cudaEventRecord(b, c.st));
        CK(cudaEventSynchronize(b));
        float ms; CK(cudaEventElapsedTime(&ms, a, b));
        ts.push_back(ms * 1e-3 / calls);
    }
    CK(cudaGraphExecDestroy(ge)); CK(cudaGraphDestroy(g));
    CK(cudaEventDestroy(a)); CK(cudaEventDestroy(b));
    std::sort(ts.begin(), ts.end());
    return ts[ts.size() / 2];
}

static double copy_bw(cudaStream_t st) {
    const size_t bytes = 256ull << 20;
    void *a, *b; CK(cudaMalloc(&a, bytes)); CK(cudaMalloc(&b, bytes));
    CK(cudaMemset(a, 1, bytes));
    cudaGraph_t g; cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeRelaxed));
    for (int i = 0; i < 10; i++) CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, st));
    CK(cudaStreamEndCapture(st, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    CK(cudaGraphLaunch(ge, st)); CK(cudaStreamSynchronize(st));
    cudaEvent_t e0, e1; CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
    std::vector<double> ts;
    for (int r = 0; r < 5; r++) {
        CK(cudaEventRecord(e0, st)); CK(cudaGraphLaunch(ge, st)); CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        float ms; CK(cudaEventElapsedTime(&ms, e0, e1)); ts.push_back(ms * 1e-3 / 10);
    }
    std::sort(ts.begin(), ts.end());
    CK(cudaGraphExecDestroy(ge)); CK(cudaGraphDestroy(g)); CK(cudaFree(a)); CK(cudaFree(b));
    return 2.0 * bytes / ts[2];
}

// nmse of y [m, n] against ref (the first m rows of an [M, n] reference).
static double nmse(const std::vector<float>& y, const std::vector<double>& ref, int m, int n) {
    double e = 0, r = 0;
    for (size_t i = 0; i < (size_t)m * n; i++) { e += (y[i] - ref[i]) * (y[i] - ref[i]); r += ref[i] * ref[i]; }
    return e / std::max(r, 1e-300);
}

static std::string cfg_name(int ci) {
    char b[64]; const Cfg& q = CFGS[ci];
    if (q.kind >= 4) snprintf(b, sizeof b, q.kind == 4 ? "mp w%d t%d d%d u%d" : "mpt w%d t%d d%d u%d", q.wt, q.bm / 8, q.st, q.mb);
    else snprintf(b, sizeof b, "%s b%d w%d n%d x%d s%d m%d", q.kind == 1 ? "mq" : "mh", q.bm, q.wt, q.nw, q.wm, q.st, q.mb);
    return b;
}

int main(int argc, char** argv) {
    const bool quick = argc > 1 && !strcmp(argv[1], "--quick");
    const bool no_time = getenv("LAB_NO_TIME") != nullptr;
    const char* only_shape = getenv("LAB_SHAPE");
    const char* only_m = getenv("LAB_M");
    cudaDeviceProp p; CK(cudaGetDeviceProperties(&p, 0));
    g_sms = p.multiProcessorCount;
    g_smem_optin = p.sharedMemPerBlockOptin;
    cudaStream_t st; CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    load_cublas();
    load_cuda_driver();
    cublasHandle_t cb; CB(cublasCreate(&cb)); CB(cublasSetStream(cb, st));
    // Shared memory opt-in for every kernel.
    for (int ci = 0; ci < NCFG; ci++) {
        const size_t sm = CFGS[ci].kind >= 4 ? g_smem_optin : smem_of(CFGS[ci]);
        if (sm <= g_smem_optin) CK(cudaFuncSetAttribute(CFGS[ci].fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm));
    }
    const double copy = copy_bw(st);
    printf("device %s, %d SMs, smem opt-in %zu; copy %.0f GB/s (256 MiB d2d, read+write)\n", p.name, g_sms, g_smem_optin, copy / 1e9);
    const int shapes[3][2] = {{4096, 4096}, {14336, 4096}, {4096, 14336}};
    const int ms[] = {1, 2, 4, 8, 16, 24, 32, 40, 64};
    const int Ss[] = {1, 2, 3, 4, 6, 8};
    const int M = 64;
    int failures = 0;
    for (int si = 0; si < 3; si++) {
        if (only_shape && atoi(only_shape) != si) continue;
        if (quick && si != 1) continue;
        const int n = shapes[si][0], k = shapes[si][1], nb = k / 256;
        auto W = make_q4k(n, k);
        const size_t wbytes = W.size(), stride = (wbytes + 255) / 256 * 256;
        const int copies = (int)std::clamp<size_t>(((512ull << 20) + wbytes - 1) / wbytes, 1, 64);
        u8* pool; CK(cudaMalloc(&pool, stride * copies));
        for (int c = 0; c < copies; c++) CK(cudaMemcpy(pool + c * stride, W.data(), wbytes, cudaMemcpyHostToDevice));
        // bf16 copies of the dequantized weight for cuBLAS.
        std::vector<uint16_t> wbf((size_t)n * k);
        { std::vector<float> row(k); for (int r = 0; r < n; r++) { dequant_row(W, k, r, row.data()); for (int j = 0; j < k; j++) wbf[(size_t)r * k + j] = f2bf_host(row[j]); } }
        const size_t bfbytes = wbf.size() * 2;
        const int bcopies = (int)std::clamp<size_t>(((512ull << 20) + bfbytes - 1) / bfbytes, 2, 16);
        uint16_t* bpool; CK(cudaMalloc(&bpool, bfbytes * bcopies));
        for (int c = 0; c < bcopies; c++) CK(cudaMemcpy(bpool + (size_t)c * wbf.size(), wbf.data(), bfbytes, cudaMemcpyHostToDevice));
        std::vector<float> xh((size_t)M * k);
        for (auto& e : xh) e = (float)((int)(rnd() % 65536) - 32768) / 32768.0f;
        for (size_t i = 0; i < xh.size(); i++) if (i % 97 == 3) xh[i] *= 20.0f;  // outlier channels
        std::vector<uint16_t> xbf(xh.size());
        for (size_t i = 0; i < xh.size(); i++) xbf[i] = f2bf_host(xh[i]);
        std::vector<double> ref[4];
        reference(W, n, k, M, xh, ref);
        Ctx c; c.n = n; c.k = k; c.st = st; c.cb = cb;
        for (int i = 0; i < copies; i++) c.w.push_back(pool + i * stride);
        for (int i = 0; i < bcopies; i++) c.wb.push_back(bpool + (size_t)i * wbf.size());
        CK(cudaMalloc(&c.x, (size_t)M * k * 4)); CK(cudaMalloc(&c.y, (size_t)M * n * 4));
        CK(cudaMalloc(&c.scratch, (size_t)M * k * 3 + (1 << 20)));
        CK(cudaMalloc(&c.part, (size_t)16 * M * n * 4));
        CK(cudaMalloc(&c.xbf, (size_t)M * k * 2));
        CK(cudaMemcpy(c.x, xh.data(), xh.size() * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(c.xbf, xbf.data(), xbf.size() * 2, cudaMemcpyHostToDevice));
        printf("\n== Q4_K %dx%d: %.1f MB weight (%d copies rotated), bf16 %.1f MB (%d copies); weight at copy bw %.2f us\n", n, k,
               wbytes / 1e6, copies, bfbytes / 1e6, bcopies, wbytes / copy * 1e6);
        const int calls = std::max(copies, 32);
        for (int m : ms) {
            if (only_m && atoi(only_m) != m) continue;
            if (getenv("LAB_MMAX") && m > atoi(getenv("LAB_MMAX"))) continue;
            c.m = m;
            std::vector<float> yv((size_t)m * n);
            auto run_check = [&](const Var& v, double& e_exact, double& e_own) {
                CK(cudaMemset(c.y, 0xff, (size_t)m * n * 4));
                call(v, c, 0);
                CK(cudaStreamSynchronize(st)); CK(cudaGetLastError());
                CK(cudaMemcpy(yv.data(), c.y, yv.size() * 4, cudaMemcpyDeviceToHost));
                e_exact = nmse(yv, ref[0], m, n);
                e_own = v.kind == 1 || v.kind >= 4 ? nmse(yv, ref[2], m, n) : v.kind == 3 ? nmse(yv, ref[3], m, n) : e_exact;
            };
            Var vb{2, 0, 1};
            double e0, e1;
            run_check(vb, e0, e1);
            const double tb = no_time ? 1 : time_graph(vb, c, calls, quick ? 3 : 7);
            printf("\n m=%d: cuBLAS bf16 %.2f us (nmse vs exact %.1e)\n", m, tb * 1e6, e0);
            double best[6] = {1e30, 1e30, 1e30, 1e30, 1e30, 1e30}, rule_best[6] = {1e30, 1e30, 1e30, 1e30, 1e30, 1e30};
            std::string bestn[6], rulen[6];
            const int bmc = bm_of(m);
            for (int ci = 0; ci < NCFG; ci++) {
                const Cfg& q = CFGS[ci];
                if (smem_of(q) > g_smem_optin) continue;
                if (q.kind == 1 && q.bm != bmc) continue;  // mq: the host's tile
                if (q.kind == 3 && (m < 8 || !(q.bm == std::max(16, bmc) || (q.bm == bmc / 2 && q.bm >= 16)))) continue;
                if (q.kind >= 4 && (m < 2 || m > 16 || q.bm != bmc)) continue;
                if (getenv("LAB_CFG") && atoi(getenv("LAB_CFG")) != ci) continue;
                if (getenv("LAB_KIND") && !strchr(getenv("LAB_KIND"), '0' + q.kind)) continue;  // e.g. "14": mq and mp
                std::string line;
                double cbest = 1e30; int cS = 0;
                int occ = occupancy(ci);
                const int bn = 16 * q.wt * q.nw / q.wm;
                const int tiles = (m + q.bm - 1) / q.bm * ((n + bn - 1) / bn);
                const int rS = q.kind >= 4 ? -1 : rule_S(tiles, occ * g_sms, nb);
                double trule = 0;
                std::vector<int> sl(Ss, Ss + 6);
                if (q.kind >= 4) { sl.push_back(12); sl.push_back(16); }
                else if (std::find(sl.begin(), sl.end(), rS) == sl.end()) sl.push_back(rS);
                for (int S : sl) {
                    if (S > nb || (getenv("LAB_S") && atoi(getenv("LAB_S")) != S)) continue;
                    if (q.kind >= 4 && (mp_smem_of(q, S) > g_smem_optin || occupancy(ci, S) < 1)) continue;
                    Var v{q.kind, ci, S};
                    run_check(v, e0, e1);
                    const bool ok = std::isfinite(e0) && e0 < 9.9e-4 && e1 < 1e-9;
                    if (!ok) { failures++; printf("  FAIL %s S=%d: nmse exact %.1e own %.1e\n", cfg_name(ci).c_str(), S, e0, e1); }
                    const double t = no_time ? 1 : time_graph(v, c, calls, quick ? 3 : 5);
                    char b[64]; snprintf(b, sizeof b, " S%d %.1f", S, t * 1e6); line += b;
                    if (t < cbest) { cbest = t; cS = S; if (q.kind >= 4) occ = occupancy(ci, S); }
                    if (S == rS) trule = t;
                }
                printf("  %-22s %8.2f us %6.0f GB/s %5.1f %% copy  %5.2fx cuBLAS  (best S=%d; rule S=%d %.1f us; %d/SM; nmse exact %.1e own %.1e) |%s\n",
                       cfg_name(ci).c_str(), cbest * 1e6, wbytes / cbest / 1e9, 100.0 * wbytes / cbest / copy, tb / cbest, cS, rS, trule * 1e6, occ,
                       e0, e1, line.c_str());
                if (cbest < best[q.kind]) { best[q.kind] = cbest; bestn[q.kind] = cfg_name(ci) + " S=" + std::to_string(cS); }
                if (trule > 0 && trule < rule_best[q.kind]) { rule_best[q.kind] = trule; rulen[q.kind] = cfg_name(ci); }
            }
            for (int kd : {1, 3, 4, 5}) {
                if (best[kd] > 1e29) continue;
                printf("  BEST m=%d %dx%d %s: %s %.2f us = %.1f %% copy, %.2fx cuBLAS bf16 (%.2f us); rule S: %s %.2f us %.2fx\n", m, n, k,
                       kd == 1 ? "mq" : kd == 3 ? "mh" : kd == 4 ? "mp" : "mpt", bestn[kd].c_str(), best[kd] * 1e6, 100.0 * wbytes / best[kd] / copy, tb / best[kd], tb * 1e6,
                       kd >= 4 ? "(none: S swept)" : rulen[kd].c_str(), kd >= 4 ? 0.0 : rule_best[kd] * 1e6,
                       kd >= 4 ? 0.0 : tb / rule_best[kd]);
            }
        }
        CK(cudaFree(pool)); CK(cudaFree(bpool)); CK(cudaFree(c.x)); CK(cudaFree(c.y)); CK(cudaFree(c.scratch));
        CK(cudaFree(c.part)); CK(cudaFree(c.xbf));
    }
    printf("\n%s: %d check failures\n", failures ? "FAILED" : "all variants valid", failures);
    return failures ? 1 : 0;
}
