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
// Variants:
//   v0  quant_x_q4_k + mma_q4_k_b<BM>_w1 (+ mma_reduce): kiln's mma path before this lab
//       (config and k split as ops/matmul_mma.rs at b9cd441).
//   mq  mq_quant_x + mq4k_b<BM>_w<WT>_n<NW>_s<ST> (+ mma_reduce, PDL, when S > 1): raw Q4_K blocks
//       through a cp.async ring, A fragments decoded from shared memory, m16n8k32 per sub-block;
//       every (WT, NW, ST) below at BM = the smallest of 8/16/32/64 covering m, each k split S.
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

#include "../../kernels/matmul_q.cu"
#define MQ4K_NO_INSTANCES  // the lab instantiates its own mq4k set below
#include "../../kernels/matmul_mma.cu"

#define MQ_CFGS(BM) \
    MQ4K_KERNEL(BM, 1, 4, 3) MQ4K_KERNEL(BM, 2, 4, 3) MQ4K_KERNEL(BM, 1, 8, 3) MQ4K_KERNEL(BM, 2, 8, 3) MQ4K_KERNEL(BM, 1, 4, 4) MQ4K_KERNEL(BM, 2, 4, 4)
MQ_CFGS(8)
MQ_CFGS(16)
MQ_CFGS(32)
MQ_CFGS(64)

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

typedef void (*MqFn)(const u8*, const u8*, const float2*, float*, int, int, int, int, int);
typedef void (*OldFn)(const u8*, const u8*, const uint4*, const float2*, float*, int, int, int, int);

struct MqCfg { int wt, nw, st; MqFn fn[4]; };  // fn by BM 8/16/32/64
#define MQ_FNS(WT, NW, ST) \
    {WT, NW, ST, {mq4k_b8_w##WT##_n##NW##_s##ST, mq4k_b16_w##WT##_n##NW##_s##ST, mq4k_b32_w##WT##_n##NW##_s##ST, mq4k_b64_w##WT##_n##NW##_s##ST}}
static const MqCfg MQ[] = {MQ_FNS(1, 4, 3), MQ_FNS(2, 4, 3), MQ_FNS(1, 8, 3), MQ_FNS(2, 8, 3), MQ_FNS(1, 4, 4), MQ_FNS(2, 4, 4)};
static const int NMQ = sizeof(MQ) / sizeof(MQ[0]);

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

// y_ref[r][c] = Σ_j x[r][j] · W[c][j] in f64 for the three x versions (exact, per 16, per 32).
static void reference(const std::vector<uint8_t>& W, int n, int k, int M, const std::vector<float>& x,
                      std::vector<double> out[3]) {
    std::vector<double> xr[3];
    xr[0].assign(x.begin(), x.end());
    xr[1] = round_x(x, 16);
    xr[2] = round_x(x, 32);
    for (int v = 0; v < 3; v++) out[v].assign((size_t)M * n, 0.0);
    const int T = std::max(1u, std::thread::hardware_concurrency());
    std::vector<std::thread> th;
    for (int ti = 0; ti < T; ti++) {
        th.emplace_back([&, ti]() {
            std::vector<float> row(k);
            for (int c = ti; c < n; c += T) {
                dequant_row(W, k, c, row.data());
                for (int v = 0; v < 3; v++)
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

// A variant: kind 0 = v0, 1 = mq (cfg index, S), 2 = cuBLAS bf16.
struct Var { int kind; int cfg; int S; int bm; };

static int bm_of(int m) { return m <= 8 ? 8 : m <= 16 ? 16 : m <= 32 ? 32 : 64; }
static int bmi_of(int bm) { return bm == 8 ? 0 : bm == 16 ? 1 : bm == 32 ? 2 : 3; }
static size_t mq_smem_of(int bm, const MqCfg& c) {
    return (size_t)c.st * (16 * c.wt * c.nw * MQ_W_STRIDE + bm * MQ_X_STRIDE + bm / 2 * MQ_S_STRIDE);
}

static void reduce(const Ctx& c, int S, bool pdl) {
    const long count = (long)c.m * c.n;
    const unsigned blocks = (unsigned)std::clamp<long>((count + 255) / 256, 1, (long)g_sms * 64);
    launch_ex(mma_reduce, dim3(blocks), dim3(256), 0, pdl, c.st, (const float*)c.part, c.y, (i64)count, S);
}

// v0's plan (ops/matmul_mma.rs at b9cd441): config by m, split fills ~4 blocks per SM.
static void call_v0(const Ctx& c, int i) {
    const u8* w = c.w[i % c.w.size()];
    const int nb = c.k / 256, units = (nb * 8 + 31) / 32 * 2 * 32;
    const int cfg = c.m <= 16 ? 0 : c.m <= 32 ? 1 : 2;
    const int bm = cfg == 0 ? 16 : cfg == 1 ? 32 : 64;
    OldFn f = cfg == 0 ? mma_q4_k_b16_w1 : cfg == 1 ? mma_q4_k_b32_w1 : mma_q4_k_b64_w1;
    const int smem = cfg == 0 ? mma_smem_bytes<16, 1>() : cfg == 1 ? mma_smem_bytes<32, 1>() : mma_smem_bytes<64, 1>();
    const int stages = nb;
    const int blocks = (c.n + 63) / 64 * ((c.m + bm - 1) / bm);
    const int want = (4 * g_sms + blocks - 1) / blocks;
    int S = std::clamp(std::min(want, stages / 2), 1, 16);
    const int sps = (stages + S - 1) / S;
    S = (stages + sps - 1) / sps;
    uint4* xq = (uint4*)c.scratch;
    float2* xs = (float2*)(c.scratch + (size_t)c.m * units * 16);
    const long total = (long)c.m * units;
    launch_ex(quant_x_q4_k, dim3((unsigned)std::clamp<long>((total * 4 + 255) / 256, 1, (long)g_sms * 8)), dim3(256), 0, true,
              c.st, (const float*)c.x, xq, xs, c.k, c.m);
    float* y = S > 1 ? c.part : c.y;
    launch_ex(f, dim3((c.n + 63) / 64, (c.m + bm - 1) / bm, S), dim3(128), (size_t)smem, true, c.st, w, w,
              (const uint4*)xq, (const float2*)xs, y, c.n, c.k, c.m, sps);
    if (S > 1) reduce(c, S, false);
}

static void call_mq(const Ctx& c, int i, int ci, int S, int bm) {
    const u8* w = c.w[i % c.w.size()];
    const MqCfg& q = MQ[ci];
    const int nb = c.k / 256;
    const int mp = (c.m + bm - 1) / bm * bm;
    u8* xq = c.scratch;
    float2* xs = (float2*)(c.scratch + (size_t)mp * c.k);
    const long warps = (long)nb * mp;
    launch_ex(mq_quant_x, dim3((unsigned)std::clamp<long>((warps + 7) / 8, 1, (long)g_sms * 8)), dim3(256), 0, true, c.st,
              (const float*)c.x, xq, xs, c.k, c.m, mp);
    const int spz = (nb + S - 1) / S;
    const int Sr = (nb + spz - 1) / spz;
    const int bn = 16 * q.wt * q.nw;
    float* y = Sr > 1 ? c.part : c.y;
    launch_ex(q.fn[bmi_of(bm)], dim3(mp / bm, (c.n + bn - 1) / bn, Sr), dim3(32 * q.nw), mq_smem_of(bm, q), true, c.st, w,
              (const u8*)xq, (const float2*)xs, y, c.n, c.k, c.m, mp, spz);
    if (Sr > 1) reduce(c, Sr, true);
}

// Resident blocks per SM of a configuration (occupancy API: registers and shared memory).
static int occupancy(int ci, int bm) {
    int occ = 0;
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, MQ[ci].fn[bmi_of(bm)], 32 * MQ[ci].nw, mq_smem_of(bm, MQ[ci])));
    return std::max(occ, 1);
}

// The k-split rule (ops/matmul_mma.rs mq_plan): the S ≤ min(16, nb / 2) minimizing whole waves
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
    if (v.kind == 0) call_v0(c, i);
    else if (v.kind == 1) call_mq(c, i, v.cfg, v.S, v.bm);
    else call_cublas(c, i);
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

static std::string cfg_name(int ci, int bm) {
    char b[64]; const MqCfg& q = MQ[ci];
    snprintf(b, sizeof b, "mq b%d w%d n%d s%d", bm, q.wt, q.nw, q.st);
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
    cublasHandle_t cb; CB(cublasCreate(&cb)); CB(cublasSetStream(cb, st));
    // Shared memory opt-in for every kernel.
    CK(cudaFuncSetAttribute(mma_q4_k_b16_w1, cudaFuncAttributeMaxDynamicSharedMemorySize, mma_smem_bytes<16, 1>()));
    CK(cudaFuncSetAttribute(mma_q4_k_b32_w1, cudaFuncAttributeMaxDynamicSharedMemorySize, mma_smem_bytes<32, 1>()));
    CK(cudaFuncSetAttribute(mma_q4_k_b64_w1, cudaFuncAttributeMaxDynamicSharedMemorySize, mma_smem_bytes<64, 1>()));
    const int bms[4] = {8, 16, 32, 64};
    for (int ci = 0; ci < NMQ; ci++)
        for (int b = 0; b < 4; b++) {
            const size_t s = mq_smem_of(bms[b], MQ[ci]);
            if (s <= g_smem_optin) CK(cudaFuncSetAttribute(MQ[ci].fn[b], cudaFuncAttributeMaxDynamicSharedMemorySize, (int)s));
        }
    const double copy = copy_bw(st);
    printf("device %s, %d SMs, smem opt-in %zu; copy %.0f GB/s (256 MiB d2d, read+write)\n", p.name, g_sms, g_smem_optin, copy / 1e9);
    const int shapes[3][2] = {{4096, 4096}, {14336, 4096}, {4096, 14336}};
    const int ms[] = {1, 2, 3, 4, 8, 16, 24, 32, 40, 64};
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
        std::vector<double> ref[3];
        reference(W, n, k, M, xh, ref);
        Ctx c; c.n = n; c.k = k; c.st = st; c.cb = cb;
        for (int i = 0; i < copies; i++) c.w.push_back(pool + i * stride);
        for (int i = 0; i < bcopies; i++) c.wb.push_back(bpool + (size_t)i * wbf.size());
        CK(cudaMalloc(&c.x, (size_t)M * k * 4)); CK(cudaMalloc(&c.y, (size_t)M * n * 4));
        CK(cudaMalloc(&c.scratch, (size_t)M * k * 2 + (1 << 20)));
        CK(cudaMalloc(&c.part, (size_t)16 * M * n * 4));
        CK(cudaMalloc(&c.xbf, (size_t)M * k * 2));
        CK(cudaMemcpy(c.x, xh.data(), xh.size() * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(c.xbf, xbf.data(), xbf.size() * 2, cudaMemcpyHostToDevice));
        printf("\n== Q4_K %dx%d: %.1f MB weight (%d copies rotated), bf16 %.1f MB (%d copies); weight at copy bw %.2f us\n", n, k,
               wbytes / 1e6, copies, bfbytes / 1e6, bcopies, wbytes / copy * 1e6);
        const int calls = std::max(copies, 32);
        for (int m : ms) {
            if (only_m && atoi(only_m) != m) continue;
            c.m = m;
            std::vector<float> yv((size_t)m * n);
            auto run_check = [&](const Var& v, double& e_exact, double& e_own) {
                CK(cudaMemset(c.y, 0xff, (size_t)m * n * 4));
                call(v, c, 0);
                CK(cudaStreamSynchronize(st)); CK(cudaGetLastError());
                CK(cudaMemcpy(yv.data(), c.y, yv.size() * 4, cudaMemcpyDeviceToHost));
                e_exact = nmse(yv, ref[0], m, n);
                e_own = v.kind == 0 ? nmse(yv, ref[1], m, n) : v.kind == 1 ? nmse(yv, ref[2], m, n) : e_exact;
            };
            Var vb{2, 0, 1};
            double e0, e1;
            run_check(vb, e0, e1);
            const double tb = no_time ? 1 : time_graph(vb, c, calls, quick ? 3 : 7);
            printf("\n m=%d: cuBLAS bf16 %.2f us (nmse vs exact %.1e)\n", m, tb * 1e6, e0);
            Var v0{0, 0, 0};
            run_check(v0, e0, e1);
            bool ok = std::isfinite(e0) && e0 < 9.9e-4 && e1 < 1e-9;
            failures += !ok;
            const double t0 = no_time ? 1 : time_graph(v0, c, calls, quick ? 3 : 7);
            printf("  %-22s %8.2f us %6.0f GB/s %5.1f %% copy  %5.2fx cuBLAS  nmse exact %.1e own %.1e %s\n", "v0 kiln mma", t0 * 1e6,
                   wbytes / t0 / 1e9, 100.0 * wbytes / t0 / copy, tb / t0, e0, e1, ok ? "ok" : "FAIL");
            double best = 1e30; std::string bestn;
            std::vector<int> tiles_bm = {bm_of(m)};
            if (m > 8) tiles_bm.push_back(bm_of(m) / 2);
            for (int bm : tiles_bm)
            for (int ci = 0; ci < NMQ; ci++) {
                if (mq_smem_of(bm, MQ[ci]) > g_smem_optin) continue;
                if (getenv("LAB_CFG") && atoi(getenv("LAB_CFG")) != ci) continue;
                if (getenv("LAB_BM") && atoi(getenv("LAB_BM")) != bm) continue;
                std::string line;
                double cbest = 1e30; int cS = 0;
                const int occ = occupancy(ci, bm);
                const int tiles = (m + bm - 1) / bm * ((n + 16 * MQ[ci].wt * MQ[ci].nw - 1) / (16 * MQ[ci].wt * MQ[ci].nw));
                const int rS = rule_S(tiles, occ * g_sms, nb);
                double trule = 0;
                std::vector<int> sl(Ss, Ss + 6);
                if (std::find(sl.begin(), sl.end(), rS) == sl.end()) sl.push_back(rS);
                for (int S : sl) {
                    if (S > nb || (getenv("LAB_S") && atoi(getenv("LAB_S")) != S)) continue;
                    Var v{1, ci, S, bm};
                    run_check(v, e0, e1);
                    ok = std::isfinite(e0) && e0 < 9.9e-4 && e1 < 1e-9;
                    if (!ok) { failures++; printf("  FAIL %s S=%d: nmse exact %.1e own %.1e\n", cfg_name(ci, bm).c_str(), S, e0, e1); }
                    const double t = no_time ? 1 : time_graph(v, c, calls, quick ? 3 : 5);
                    char b[32]; snprintf(b, sizeof b, " S%d %.1f", S, t * 1e6); line += b;
                    if (t < cbest) { cbest = t; cS = S; }
                    if (S == rS) trule = t;
                }
                printf("  %-22s %8.2f us %6.0f GB/s %5.1f %% copy  %5.2fx cuBLAS  (best S=%d; rule S=%d %.1f us; %d/SM) |%s\n", cfg_name(ci, bm).c_str(), cbest * 1e6,
                       wbytes / cbest / 1e9, 100.0 * wbytes / cbest / copy, tb / cbest, cS, rS, trule * 1e6, occ, line.c_str());
                if (cbest < best) { best = cbest; bestn = cfg_name(ci, bm) + " S=" + std::to_string(cS); }
            }
            printf("  BEST m=%d %dx%d: %s %.2f us = %.1f %% copy, %.2fx cuBLAS bf16 (%.2f us), %.2fx v0 (%.2f us); last nmse exact %.1e own %.1e\n", m, n,
                   k, bestn.c_str(), best * 1e6, 100.0 * wbytes / best / copy, tb / best, tb * 1e6, t0 / best, t0 * 1e6, e0, e1);
        }
        CK(cudaFree(pool)); CK(cudaFree(bpool)); CK(cudaFree(c.x)); CK(cudaFree(c.y)); CK(cudaFree(c.scratch));
        CK(cudaFree(c.part)); CK(cudaFree(c.xbf));
    }
    printf("\n%s: %d check failures\n", failures ? "FAILED" : "all variants valid", failures);
    return failures ? 1 : 0;
}
