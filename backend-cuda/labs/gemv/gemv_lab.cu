// gemv_lab.cu: the m = 1 GEMV kernel lab (issue 3). Standalone: includes kiln's kernel sources
// (../../kernels/matmul_q.cu, with quant.cuh and common.cuh), builds random Q4_K / Q6_K / Q8_0 /
// bf16 weights in kiln's repacked layout (body region, then head region; Q8_0 quants in offset
// binary), checks every variant against a CPU f64 reference (exact x) and against kiln's
// current two-kernel path (v0), then times each variant in a CUDA graph of back-to-back calls
// with the weights rotated through >= 512 MiB (beyond the 50 MB L2), and prints µs, GB/s and %
// of a device-to-device copy it measures itself.
//
// Build and run (on the GPU machine): see README.md beside this file.
//   nvcc -O3 -arch=sm_90 -std=c++17 -Xptxas -v -o gemv_lab gemv_lab.cu && ./gemv_lab [--quick]
//
// Variants (thread mappings in README.md):
//   v0  quant_x_<t> + gemv8_<t>_m1 (kiln b845f67: two kernels, the second a PDL dependent)
//   v1..  gemv1<R, U, NT>: one kernel, x quantized per block into shared memory; launched with
//         the PDL attribute (back-to-back calls overlap) unless the name ends in "-nopdl".
//   bf16: gemv_bf16_m1 plain launch vs PDL launch.
//   p ...: quant_x + gemvp<R, D stages, NT, U> (kernels/gemv_pipe.cuh: W through per-warp
//         shared-memory rings filled by cp.async.bulk); LAB_VARIANTS="p ,g8" filters by name.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <tuple>
#include <string>
#include <vector>

#include "../../kernels/matmul_q.cu"

// gemv1 with a register double buffer: the warp's steps t = it·per_lane + j form one stream;
// the R chunks of step t + 1 are loaded before step t is used (also across groups, so the next
// group's first loads overlap this group's reduction). Registers: 2·R chunks.
template <class T, int R>
__device__ __forceinline__ void gemv1db_body(const u8* __restrict__ body, const u8* __restrict__ head,
                                             const float* __restrict__ x, float* __restrict__ y, int n, int k,
                                             int S) {
    extern __shared__ uint4 gemv1_x[];  // xq uint4 [units], then xs float2 [units]
    const int nb = k / T::QK;
    const int nchunks = nb * T::CHUNKS;
    const int nc32 = (nchunks + KILN_WARP - 1) / KILN_WARP;
    const int units = nc32 * T::RUNS * KILN_WARP;
    uint4* xq = gemv1_x;
    float2* xs = (float2*)(gemv1_x + units);
    const int lane = threadIdx.x % KILN_WARP;
    const int warp = threadIdx.x / KILN_WARP;
    const int wpb = blockDim.x / KILN_WARP;
    const int slots = wpb / S;
    const int slot = warp / S, sub = warp % S;
    const int ngroups = (n + R - 1) / R;
    const int gstride = gridDim.x * slots;
    const int per_lane = (nc32 + S - 1) / S;
    const int g0 = blockIdx.x * slots;
    const int rounds = g0 < ngroups ? (ngroups - 1 - g0) / gstride + 1 : 0;
    const int steps = rounds * per_lane;  // block-uniform
    __shared__ float red[1024 / KILN_WARP][R];

    pdl_launch_dependents();
    // Step t's R chunks (group and chunk clamped: a valid read, unused past the end).
    auto load = [&](int t, typename T::Chunk (&c)[R]) {
        const int it = t / per_lane, j = t % per_lane;
        const int g = min(g0 + slot + it * gstride, ngroups - 1);
        const int ci = min(KILN_WARP * (sub + S * j) + lane, nchunks - 1);
        const int blk = ci / T::CHUNKS, cc = ci % T::CHUNKS;
#pragma unroll
        for (int rr = 0; rr < R; rr++) T::load(body, head, (i64)min(g * R + rr, n - 1) * nb + blk, cc, c[rr]);
    };
    float acc[R][1];
#pragma unroll
    for (int rr = 0; rr < R; rr++) acc[rr][0] = 0.0f;
    auto consume = [&](int t, const typename T::Chunk (&c)[R]) {
        const int it = t / per_lane, j = t % per_lane;
        const int g = g0 + slot + it * gstride;
        const int G = sub + S * j;
        const int ci = KILN_WARP * G + lane;
        if (g < ngroups && ci < nchunks) {
            const int cc = ci % T::CHUNKS;
#pragma unroll
            for (int r = 0; r < T::RUNS; r++) {
                const int u = (G * T::RUNS + r) * KILN_WARP + lane;
                const uint4 xv = xq[u];
                const float2 sc = xs[u];
#pragma unroll
                for (int rr = 0; rr < R; rr++) {
                    u32 qw[4];
                    float dl, ml;
                    T::run_qi(c[rr], cc, r, qw, dl, ml);
                    const float d = (float)dot16<T>(qw, xv);
                    float a = fmaf(dl * sc.x, d, acc[rr][0]);
                    if (T::HAS_MIN) a = fmaf(-ml, sc.y, a);
                    acc[rr][0] = a;
                }
            }
        }
        if (j == per_lane - 1) {  // the group's last step: reduce (block-uniform)
            reduce_store<R, 1>(acc, red, y, n, 1, g, 0, S, warp, slot, sub, lane, g < ngroups);
#pragma unroll
            for (int rr = 0; rr < R; rr++) acc[rr][0] = 0.0f;
        }
    };
    typename T::Chunk A[R], B[R];
    if (steps > 0) load(0, A);  // W does not depend on earlier kernels
    pdl_wait();                 // x may be the previous kernel's output
    quant_x_smem<T>(x, xq, xs, k);
    for (int t = 0; t < steps; t += 2) {
        if (t + 1 < steps) load(t + 1, B);
        consume(t, A);
        if (t + 1 >= steps) break;
        if (t + 2 < steps) load(t + 2, A);
        consume(t + 1, B);
    }
}

#define GEMV1DB_KERNEL_NAMED(name, T, R, NT, MINB)                                                \
    extern "C" __global__ void __launch_bounds__(NT, MINB) name(                                    \
        const u8* __restrict__ body, const u8* __restrict__ head, const float* __restrict__ x,      \
        float* __restrict__ y, int n, int k, int S) {                                             \
        gemv1db_body<T, R>(body, head, x, y, n, k, S);                                            \
    }


// Lab instantiations of the one-kernel m = 1 GEMV. gemv1 (R rows per group, U steps loaded per
// trip, P steps of bulk L2 prefetch ahead, NT threads); gemv1db (register double buffer: R rows,
// NT threads, at least MINB blocks per SM, i.e. a register cap).
#define LAB_SET(suffix, T)                                                                        \
    GEMV1_KERNEL_NAMED(lab_##suffix##_a, T, 4, 1, 0, 256)                                         \
    GEMV1_KERNEL_NAMED(lab_##suffix##_b, T, 4, 1, 2, 256)                                         \
    GEMV1DB_KERNEL_NAMED(lab_##suffix##_c, T, 4, 256, 2)                                          \
    GEMV1DB_KERNEL_NAMED(lab_##suffix##_d, T, 4, 256, 3)                                          \
    GEMV1DB_KERNEL_NAMED(lab_##suffix##_e, T, 2, 256, 3)                                          \
    GEMV1DB_KERNEL_NAMED(lab_##suffix##_f, T, 2, 256, 4)                                          \
    GEMV1DB_KERNEL_NAMED(lab_##suffix##_g, T, 2, 128, 8)                                          \
    GEMV1DB_KERNEL_NAMED(lab_##suffix##_h, T, 1, 256, 4)
LAB_SET(q4_k, TQ4_K)

// Float (bf16) lab instantiations of kiln's gemv_body at m = 1: R rows per group, U chunk steps
// loaded per trip, NT threads per block.
#define LABF_KERNEL(name, T, R, U, NT)                                                            \
    extern "C" __global__ void __launch_bounds__(NT) name(                                          \
        const u8* __restrict__ body, const u8* __restrict__ head, const float* __restrict__ x,      \
        float* __restrict__ y, int n, int k, int m, int S) {                                      \
        gemv_body<T, 1, R, 1, 0, U, NT>(gemv_one_seg(body, head, y, n), x, k, m, S, 0);           \
    }
// gemv8 (quant_x + integer-dot kernel) at M = 1 with U = 2 chunk steps per trip.
GEMV8_KERNEL_NAMED(lab8_q4_k_u2, TQ4_K, 1, 4, 2)
GEMV8_KERNEL_NAMED(lab8_q6_k_u2, TQ6_K, 1, 4, 2)
GEMV8_KERNEL_NAMED(lab8_q8_0_u2, TQ8_0, 1, 4, 2)
LABF_KERNEL(labf_r4u2n128, TBF16, 4, 2, 128)
LABF_KERNEL(labf_r4u4n128, TBF16, 4, 4, 128)
LABF_KERNEL(labf_r2u2n128, TBF16, 2, 2, 128)
LABF_KERNEL(labf_r2u4n128, TBF16, 2, 4, 128)
LABF_KERNEL(labf_r4u1n256, TBF16, 4, 1, 256)
LABF_KERNEL(labf_r4u2n256, TBF16, 4, 2, 256)
LABF_KERNEL(labf_r2u2n256, TBF16, 2, 2, 256)
LABF_KERNEL(labf_r2u4n256, TBF16, 2, 4, 256)
LAB_SET(q6_k, TQ6_K)
LAB_SET(q8_0, TQ8_0)

// The shared-memory pipeline (kernels/gemv_pipe.cuh): gemvp<T, TW, R rows, D stages, NT threads>.
#include "../../kernels/gemv_pipe.cuh"
#define LABP(name, T, TW, R, D, NT, U) GEMVP_KERNEL_NAMED(name, T, TW, R, D, NT, U, 1)
LABP(labp_q4k2_r4d3n128u1, TQ4_K2, TQ4_K, 4, 3, 128, 1)
LABP(labp_q4k2_r4d2n256u1, TQ4_K2, TQ4_K, 4, 2, 256, 1)
LABP(labp_q4k2_r4d3n256u1, TQ4_K2, TQ4_K, 4, 3, 256, 1)
LABP(labp_q4k2_r2d4n256u1, TQ4_K2, TQ4_K, 2, 4, 256, 1)
LABP(labp_q4k2_r4d2n384u1, TQ4_K2, TQ4_K, 4, 2, 384, 1)
LABP(labp_q4k2_r2d2n512u1, TQ4_K2, TQ4_K, 2, 2, 512, 1)
LABP(labp_q4k2_r8d2n256u1, TQ4_K2, TQ4_K, 8, 2, 256, 1)
LABP(labp_q6k_r2d4n128u1, TQ6_K, TQ6_K, 2, 4, 128, 1)
LABP(labp_q6k_r2d3n256u1, TQ6_K, TQ6_K, 2, 3, 256, 1)
LABP(labp_q6k_r2d2n256u1, TQ6_K, TQ6_K, 2, 2, 256, 1)
LABP(labp_q6k_r2d2n512u1, TQ6_K, TQ6_K, 2, 2, 512, 1)
LABP(labp_q6k_r4d2n256u1, TQ6_K, TQ6_K, 4, 2, 256, 1)
LABP(labp_q80_r4d3n256u2, TQ8_0, TQ8_0, 4, 3, 256, 2)
LABP(labp_q80_r4d2n512u2, TQ8_0, TQ8_0, 4, 2, 512, 2)

// LAB_CHAIN=1: after every GEMV call a one-warp dependent kernel (PDL-launched, like the norm
// between two GEMVs of a decode step) waits for the GEMV, reads y and writes x (which the next
// call reads after its own wait), so a call's time is its latency in a dependent chain plus this kernel, not its
// throughput when back-to-back calls overlap.
extern "C" __global__ void lab_touch(const float* __restrict__ y, float* __restrict__ x) {
    pdl_wait();
    if (threadIdx.x == 0 && y[0] == -1.2345e30f) x[0] = 0.0f;  // a read of y; never taken
    pdl_launch_dependents();
}

#define CK(x)                                                                                     \
    do {                                                                                          \
        cudaError_t e_ = (x);                                                                     \
        if (e_ != cudaSuccess) {                                                                  \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));    \
            exit(1);                                                                              \
        }                                                                                         \
    } while (0)

typedef void (*Gemv1Fn)(const u8*, const u8*, const float*, float*, int, int, int);
typedef void (*QuantFn)(const float*, uint4*, float2*, int, int);
typedef void (*Gemv8Fn)(const u8*, const u8*, const uint4*, const float2*, float*, int, int, int, int);
typedef void (*GemvFFn)(const u8*, const u8*, const float*, float*, int, int, int, int);

enum Ty { Q4K, Q6K, Q80, BF16 };
struct TyInfo { const char* name; int qk, body, head, chunks, runs; };
static const TyInfo TYI[] = {{"q4_k", 256, 144, 0, 8, 2}, {"q6_k", 256, 208, 2, 4, 4},
                             {"q8_0", 32, 32, 2, 2, 1}, {"bf16", 16, 32, 0, 1, 1}};

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static inline uint64_t rnd() {
    rng_state ^= rng_state << 13; rng_state ^= rng_state >> 7; rng_state ^= rng_state << 17;
    return rng_state;
}
static inline float h2f_host(uint16_t h) {  // normal and zero f16 only (the lab never makes others)
    const uint32_t e = (h >> 10) & 31, m = h & 1023, s = h >> 15;
    if (e == 0 && m == 0) return s ? -0.0f : 0.0f;
    uint32_t bits = (s << 31) | ((e + 112) << 23) | (m << 13);
    float f; memcpy(&f, &bits, 4); return f;
}
static inline uint16_t rand_scale() {  // positive normal f16 in [2^-10, 2^-6)
    return (uint16_t)(((uint32_t)(5 + rnd() % 4) << 10) | (rnd() & 1023));
}
static inline float bf2f_host(uint16_t b) { uint32_t u = (uint32_t)b << 16; float f; memcpy(&f, &u, 4); return f; }

// One weight [n, k] in the repacked layout: bytes [body | pad to 16 | head].
struct HostW { std::vector<uint8_t> bytes; size_t head_off; };

static HostW make_weight(Ty t, int n, int k) {
    const TyInfo& ti = TYI[t];
    const size_t nblocks = (size_t)n * (k / ti.qk);
    HostW w;
    const size_t body = nblocks * ti.body;
    w.head_off = ti.head ? (body + 15) / 16 * 16 : 0;
    w.bytes.assign(ti.head ? w.head_off + nblocks * ti.head : body, 0);
    uint8_t* b = w.bytes.data();
    for (size_t i = 0; i < body; i += 8) {
        const uint64_t r = rnd();
        memcpy(b + i, &r, std::min<size_t>(8, body - i));
    }
    for (size_t g = 0; g < nblocks; g++) {
        if (t == Q4K) {
            const uint16_t d = rand_scale(), dm = rand_scale();
            memcpy(b + g * 144, &d, 2); memcpy(b + g * 144 + 2, &dm, 2);
        } else if (t == Q6K || t == Q80) {
            const uint16_t d = rand_scale();
            memcpy(b + w.head_off + g * 2, &d, 2);
        } else {  // bf16: values in [-1, 1)
            for (int l = 0; l < 16; l++) {
                const float f = (float)((int)(rnd() % 65536) - 32768) / 32768.0f;
                uint32_t u; memcpy(&u, &f, 4);
                const uint16_t h = (uint16_t)(u >> 16);
                memcpy(b + g * 32 + 2 * l, &h, 2);
            }
        }
    }
    return w;
}

// Row `row` of W dequantized (GGUF definitions, read from the repacked layout).
static void dequant_row(Ty t, const HostW& w, int k, int row, std::vector<double>& out) {
    const TyInfo& ti = TYI[t];
    const int nb = k / ti.qk;
    const uint8_t* B = w.bytes.data();
    out.assign(k, 0.0);
    for (int bi = 0; bi < nb; bi++) {
        const size_t g = (size_t)row * nb + bi;
        double* y = out.data() + (size_t)bi * ti.qk;
        if (t == Q80) {
            uint16_t dh; memcpy(&dh, B + w.head_off + 2 * g, 2);
            const double d = h2f_host(dh);
            for (int l = 0; l < 32; l++) y[l] = d * ((int)B[g * 32 + l] - 128);
        } else if (t == Q4K) {
            const uint8_t* p = B + g * 144;
            uint16_t dh, mh; memcpy(&dh, p, 2); memcpy(&mh, p + 2, 2);
            const double d = h2f_host(dh), dmin = h2f_host(mh);
            const uint8_t* sc = p + 4; const uint8_t* q = p + 16;
            auto sm = [&](int j, int& s, int& m) {
                if (j < 4) { s = sc[j] & 63; m = sc[j + 4] & 63; }
                else { s = (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4); m = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4); }
            };
            for (int j = 0; j < 4; j++) {
                int s1, m1, s2, m2; sm(2 * j, s1, m1); sm(2 * j + 1, s2, m2);
                for (int l = 0; l < 32; l++) {
                    y[64 * j + l] = d * s1 * (q[32 * j + l] & 15) - dmin * m1;
                    y[64 * j + 32 + l] = d * s2 * (q[32 * j + l] >> 4) - dmin * m2;
                }
            }
        } else if (t == Q6K) {
            const uint8_t* ql = B + g * 208; const uint8_t* qh = ql + 128; const int8_t* sc = (const int8_t*)(ql + 192);
            uint16_t dh; memcpy(&dh, B + w.head_off + 2 * g, 2);
            const double d = h2f_host(dh);
            for (int h = 0; h < 2; h++) {
                for (int l = 0; l < 32; l++) {
                    const int is = l / 16;
                    const int q1 = ((ql[l] & 15) | (((qh[l] >> 0) & 3) << 4)) - 32;
                    const int q2 = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32;
                    const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                    const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                    y[128 * h + l] = d * sc[is] * q1;
                    y[128 * h + l + 32] = d * sc[is + 2] * q2;
                    y[128 * h + l + 64] = d * sc[is + 4] * q3;
                    y[128 * h + l + 96] = d * sc[is + 6] * q4;
                }
                ql += 64; qh += 32; sc += 8;
            }
        } else {
            for (int l = 0; l < 16; l++) {
                uint16_t h; memcpy(&h, B + g * 32 + 2 * l, 2);
                y[l] = bf2f_host(h);
            }
        }
    }
}

struct Variant {
    std::string name;
    Gemv1Fn g1 = nullptr; int R = 4, NT = 128; bool pdl = true;  // one-kernel variants
    QuantFn qx = nullptr; Gemv8Fn g8 = nullptr; bool chain = false;  // v0 (chain: quant_x PDL-launched too)
    GemvFFn gf = nullptr;                                         // bf16
    int U = 1;
    int plan = 0;
    Gemv8Fn gp = nullptr; int D = 0, bpsm = 0, chunks = 0; size_t gsmem = 0;  // gemvp (pipe) variants  // float variants: 0 = kiln's grid (fused_grid), 1 = one-wave cost model
};

static int g_sms = 0;

// x_units of matmul_q.cu: ceil(chunks / 32)·runs·32.
static int units_of(Ty t, int k) {
    const TyInfo& ti = TYI[t];
    const int nchunks = (k / ti.qk) * ti.chunks;
    return (nchunks + 31) / 32 * ti.runs * 32;
}

struct Launch { dim3 grid, block; size_t smem; int S; };

// Grid of a one-kernel variant: at most one resident wave; S (warps per group) minimizes
// ceil(groups·S / warps)·ceil(steps / S), ties to the smaller S.
static Launch plan_gemv1(const Variant& v, Ty t, int n, int k) {
    static std::map<std::tuple<const void*, int, int>, Launch> cache;  // no occupancy query inside a capture
    const auto key = std::make_tuple((const void*)v.g1, n, k);
    if (cache.count(key)) return cache[key];
    Launch L;
    L.smem = (size_t)units_of(t, k) * 24;
    int occ = 0;
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, (const void*)v.g1, v.NT, L.smem));
    occ = std::max(occ, 1);
    const int wpb = v.NT / 32;
    const long warps = (long)g_sms * occ * wpb;
    const long groups = (n + v.R - 1) / v.R;
    const int nc32 = ((k / TYI[t].qk) * TYI[t].chunks + 31) / 32;
    long best = -1; int bs = 1;
    for (int s = 1; s <= 8 && s <= wpb; s *= 2) {
        const long cost = ((groups * s + warps - 1) / warps) * ((nc32 + s - 1) / s);
        if (best < 0 || cost < best) { best = cost; bs = s; }
    }
    L.S = bs;
    const long blocks = std::min<long>((groups * bs + wpb - 1) / wpb, (long)g_sms * occ);
    L.grid = dim3((unsigned)std::max<long>(blocks, 1));
    L.block = dim3(v.NT);
    cache[key] = L;
    return L;
}

// The old grid (ops/matmul_q.rs b845f67) for v0 and the float gemv; `r` rows per group.
static Launch plan_old(int n, int r = 4) {
    Launch L;
    const long groups = (n + r - 1) / r;
    const int s = groups >= (long)g_sms * 32 ? 1 : groups * 2 >= (long)g_sms * 32 ? 2 : 4;
    L.S = s;
    L.grid = dim3((unsigned)std::clamp<long>((groups * s + 3) / 4, 1, (long)g_sms * 8));
    L.block = dim3(128);
    L.smem = 0;
    return L;
}

// Float variants, plan 1: S warps per group (1 … warps per block) minimizing
// ceil(groups·S / resident warps)·ceil(ceil(steps / S) / U); blocks = groups·S / warps per block
// (no clamp: at most a few waves).
static Launch plan_model(const Variant& v, int n, int k, int U) {
    static std::map<std::tuple<const void*, int, int>, Launch> cache;
    const auto key = std::make_tuple((const void*)v.gf, n, k);
    if (cache.count(key)) return cache[key];
    Launch L; L.smem = 0; L.block = dim3(v.NT);
    int occ = 0;
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, (const void*)v.gf, v.NT, 0));
    occ = std::max(occ, 1);
    const int wpb = v.NT / 32;
    const long warps = (long)g_sms * occ * wpb;
    const long groups = (n + v.R - 1) / v.R;
    const long steps = ((k / 16) + 31) / 32;
    long best = -1; int bs = 1;
    for (int s = 1; s <= wpb; s *= 2) {
        const long trips = ((steps + s - 1) / s + U - 1) / U;
        const long cost = ((groups * s + warps - 1) / warps) * trips;
        if (best < 0 || cost < best) { best = cost; bs = s; }
    }
    L.S = bs;
    L.grid = dim3((unsigned)std::max<long>((groups * bs + wpb - 1) / wpb, 1));
    cache[key] = L;
    return L;
}

// gemv8 variants, plan 1: the float model's S choice with steps = ceil(chunks / 32) and the
// kernel's occupancy; one group per slot.
static Launch plan_model8(const Variant& v, Ty t, int n, int k) {
    static std::map<std::tuple<const void*, int, int>, Launch> cache;
    const auto key = std::make_tuple((const void*)v.g8, n, k);
    if (cache.count(key)) return cache[key];
    Launch L; L.smem = 0; L.block = dim3(128);
    int occ = 0;
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, (const void*)v.g8, 128, 0));
    occ = std::max(occ, 1);
    const long warps = (long)g_sms * occ * 4;
    const long groups = (n + 3) / 4;
    const long steps = ((k / TYI[t].qk) * TYI[t].chunks + 31) / 32;
    long best = -1; int bs = 1;
    for (int s = 1; s <= 4; s *= 2) {
        const long trips = ((steps + s - 1) / s + v.U - 1) / v.U;
        const long cost = ((groups * s + warps - 1) / warps) * trips;
        if (best < 0 || cost < best) { best = cost; bs = s; }
    }
    L.S = bs;
    L.grid = dim3((unsigned)std::max<long>((groups * bs + 3) / 4, 1));
    cache[key] = L;
    return L;
}

// gemvp variants: persistent grid of at most bpsm blocks per SM (occupancy permitting); S warps
// per group minimizing ceil(groups·S / warps)·ceil(steps / S).
static Launch plan_pipe(const Variant& v, Ty t, int n, int k) {
    static std::map<std::tuple<const void*, int, int, int>, Launch> cache;
    const auto key = std::make_tuple((const void*)v.gp, n, k, v.bpsm);
    if (cache.count(key)) return cache[key];
    Launch L; L.smem = v.gsmem; L.block = dim3(v.NT);
    CK(cudaFuncSetAttribute((const void*)v.gp, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)v.gsmem));
    int occ = 0;
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, (const void*)v.gp, v.NT, v.gsmem));
    occ = std::max(1, std::min(occ, v.bpsm));
    const int carve = (int)std::min<size_t>(100, (occ * (v.gsmem + 2048) * 100 + (228u << 10) - 1) / (228u << 10));
    CK(cudaFuncSetAttribute((const void*)v.gp, cudaFuncAttributePreferredSharedMemoryCarveout, carve));
    const int wpb = v.NT / 32;
    const long warps = (long)g_sms * occ * wpb;
    const long groups = (n + v.R - 1) / v.R;
    const long steps = (k / TYI[t].qk) / (32 / v.chunks);
    long best = -1; int bs = 1;
    for (int s = 1; s <= wpb; s *= 2) {
        const long cost = ((groups * s + warps - 1) / warps) * ((steps + s - 1) / s);
        if (best < 0 || cost < best) { best = cost; bs = s; }
    }
    L.S = bs;
    L.grid = dim3((unsigned)std::max<long>(std::min<long>((groups * bs + wpb - 1) / wpb, (long)g_sms * occ), 1));
    cache[key] = L;
    return L;
}

template <class F, class... A>
static void launch_ex(F fn, Launch L, bool pdl, cudaStream_t st, A... args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = L.grid; cfg.blockDim = L.block; cfg.dynamicSmemBytes = L.smem; cfg.stream = st;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at; cfg.numAttrs = pdl ? 1 : 0;
    CK(cudaLaunchKernelEx(&cfg, fn, args...));
}

struct Ctx {
    Ty t; int n, k;
    std::vector<const u8*> wb, wh;  // rotated copies: body / head pointers
    float* x; float* y; uint4* xq; float2* xs;
    cudaStream_t st;
};

static void call_gemv(const Variant& v, const Ctx& c, int i);
static void call(const Variant& v, const Ctx& c, int i) {
    call_gemv(v, c, i);
    static const bool chain = getenv("LAB_CHAIN") && atoi(getenv("LAB_CHAIN"));
    if (chain) {
        Launch t; t.grid = dim3(1); t.block = dim3(32); t.smem = 0; t.S = 0;
        launch_ex(lab_touch, t, true, c.st, (const float*)c.y, c.x);
    }
}
static void call_gemv(const Variant& v, const Ctx& c, int i) {
    const u8* b = c.wb[i % c.wb.size()];
    const u8* h = c.wh[i % c.wh.size()];
    if (v.gp) {
        const int units = units_of(c.t, c.k);
        Launch q; q.block = dim3(256); q.smem = 0; q.S = 0;
        q.grid = dim3((unsigned)std::clamp<long>(((long)units * 4 + 255) / 256, 1, (long)g_sms * 8));
        launch_ex(v.qx, q, true, c.st, (const float*)c.x, c.xq, c.xs, c.k, 1);
        Launch L = plan_pipe(v, c.t, c.n, c.k);
        launch_ex(v.gp, L, true, c.st, b, h, (const uint4*)c.xq, (const float2*)c.xs, c.y, c.n, c.k, 1, L.S);
    } else if (v.g1) {
        Launch L = plan_gemv1(v, c.t, c.n, c.k);
        launch_ex(v.g1, L, v.pdl, c.st, b, h, (const float*)c.x, c.y, c.n, c.k, L.S);
    } else if (v.g8) {
        const int units = units_of(c.t, c.k);
        Launch q; q.block = dim3(256); q.smem = 0; q.S = 0;
        q.grid = dim3((unsigned)std::clamp<long>(((long)units * 4 + 255) / 256, 1, (long)g_sms * 8));
        launch_ex(v.qx, q, v.chain, c.st, (const float*)c.x, c.xq, c.xs, c.k, 1);
        Launch L = v.plan ? plan_model8(v, c.t, c.n, c.k) : plan_old(c.n);
        launch_ex(v.g8, L, true, c.st, b, h, (const uint4*)c.xq, (const float2*)c.xs, c.y, c.n, c.k, 1, L.S);
    } else {
        Launch L = v.plan ? plan_model(v, c.n, c.k, v.U) : plan_old(c.n, v.R);
        if (v.NT != 128 && !v.plan) L.block = dim3(v.NT), L.grid = dim3((L.grid.x * 128 + v.NT - 1) / v.NT);
        launch_ex(v.gf, L, v.pdl, c.st, b, h, (const float*)c.x, c.y, c.n, c.k, 1, L.S);
    }
}

// Median seconds per call over `reps` replays of a graph of `calls` back-to-back calls.
static double time_graph(const Variant& v, const Ctx& c, int calls, int reps) {
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

static std::vector<Variant> variants(Ty t) {
    std::vector<Variant> v;
    // (name, kernel, R, NT, pdl) of the one-kernel variants (LAB_SET above).
    auto add_set = [&](const std::vector<Gemv1Fn>& f, Gemv1Fn kiln) {
        const char* names[] = {"v1 r4u1p0n256", "v2 r4u1p2n256", "v3 db r4n256b2", "v4 db r4n256b3",
                               "v5 db r2n256b3", "v6 db r2n256b4", "v7 db r2n128b8", "v8 db r1n256b4"};
        const int rs[] = {4, 4, 4, 4, 2, 2, 2, 1}, nts[] = {256, 256, 256, 256, 256, 256, 128, 256};
        for (int i = 0; i < 8; i++) {
            Variant x; x.name = names[i]; x.g1 = f[i]; x.R = rs[i]; x.NT = nts[i]; v.push_back(x);
            if (i == 0 || i == 4) { x.name += "-nopdl"; x.pdl = false; v.push_back(x); }
        }
        Variant x; x.name = "kiln gemv1"; x.g1 = kiln; x.R = GEMV1_R; x.NT = GEMV1_THREADS; v.push_back(x);
    };
#define LAB_FNS(s) {lab_##s##_a, lab_##s##_b, lab_##s##_c, lab_##s##_d, lab_##s##_e, lab_##s##_f, lab_##s##_g, lab_##s##_h}
    Variant v0; v0.name = "v0 quant_x+gemv8";
    // gemv8 at U = 1 / 2 on kiln's grid and on the model grid (quant_x PDL-chained).
    auto add_g8 = [&](QuantFn qx, Gemv8Fn u1, Gemv8Fn u2) {
        Variant x; x.qx = qx; x.chain = true;
        x.g8 = u1; x.U = 1; x.plan = 1; x.name = "g8 u1 model"; v.push_back(x);
        x.g8 = u2; x.U = 2; x.plan = 0; x.name = "g8 u2 kiln"; v.push_back(x);
        x.plan = 1; x.name = "g8 u2 model"; v.push_back(x);
    };
    if (t == Q4K) {
        v0.qx = quant_x_q4_k; v0.g8 = gemv8_q4_k_m1; v.push_back(v0);
        v0.name = "v0c quant_x(pdl)+gemv8"; v0.chain = true; v.push_back(v0);
        add_set(LAB_FNS(q4_k), gemv1_q4_k);
    } else if (t == Q6K) {
        v0.qx = quant_x_q6_k; v0.g8 = gemv8_q6_k_m1; v.push_back(v0);
        v0.name = "v0c quant_x(pdl)+gemv8"; v0.chain = true; v.push_back(v0);
        add_set(LAB_FNS(q6_k), gemv1_q6_k);
    } else if (t == Q80) {
        v0.qx = quant_x_q8_0; v0.g8 = gemv8_q8_0_m1; v.push_back(v0);
        v0.name = "v0c quant_x(pdl)+gemv8"; v0.chain = true; v.push_back(v0);
        add_set(LAB_FNS(q8_0), gemv1_q8_0);
    } else {
        Variant f; f.gf = gemv_bf16_m1;
        f.name = "v0 gemv_bf16_m1 pdl"; f.pdl = true; v.push_back(f);
        f.name = "v1 gemv_bf16_m1 plain"; f.pdl = false; v.push_back(f);
        f.pdl = true;
        f.name = "v1m kiln r4u1n128 model"; f.plan = 1; v.push_back(f);
        struct { const char* nm; GemvFFn fn; int R, U, NT; } fs[] = {
            {"r4u2n128", labf_r4u2n128, 4, 2, 128}, {"r4u4n128", labf_r4u4n128, 4, 4, 128},
            {"r2u2n128", labf_r2u2n128, 2, 2, 128}, {"r2u4n128", labf_r2u4n128, 2, 4, 128},
            {"r4u1n256", labf_r4u1n256, 4, 1, 256}, {"r4u2n256", labf_r4u2n256, 4, 2, 256},
            {"r2u2n256", labf_r2u2n256, 2, 2, 256}, {"r2u4n256", labf_r2u4n256, 2, 4, 256}};
        for (auto& e : fs)
            for (int pl = 0; pl < 2; pl++) {
                Variant x; x.gf = e.fn; x.R = e.R; x.U = e.U; x.NT = e.NT; x.plan = pl;
                x.name = std::string("f ") + e.nm + (pl ? " model" : " kiln");
                v.push_back(x);
            }
    }
    if (t == Q4K) add_g8(quant_x_q4_k, gemv8_q4_k_m1, lab8_q4_k_u2);
    if (t == Q6K) add_g8(quant_x_q6_k, gemv8_q6_k_m1, lab8_q6_k_u2);
    if (t == Q80) add_g8(quant_x_q8_0, gemv8_q8_0_m1, lab8_q8_0_u2);
    // Pipe variants: (name, quant_x, kernel, R, D, NT, chunks of the lane order, blocks/SM cap).
    struct PV { const char* nm; Ty ty; QuantFn qx; Gemv8Fn fn; int R, D, NT, chunks, bpsm; size_t smem; int U; };
#define PVS(nm, ty, qx, fn, T, TW, R, D, NT, U, B) {nm, ty, qx, fn, R, D, NT, T::CHUNKS, B, (size_t)GP_SMEM(T, TW, R, D, NT, U), U}
    const PV pvs[] = {
        PVS("p k2 r4d3n128u1 b3", Q4K, quant_x_q4_k2, labp_q4k2_r4d3n128u1, TQ4_K2, TQ4_K, 4, 3, 128, 1, 3),
        PVS("p k2 r4d2n256u1 b2", Q4K, quant_x_q4_k2, labp_q4k2_r4d2n256u1, TQ4_K2, TQ4_K, 4, 2, 256, 1, 2),
        PVS("p k2 r4d3n256u1 b2", Q4K, quant_x_q4_k2, labp_q4k2_r4d3n256u1, TQ4_K2, TQ4_K, 4, 3, 256, 1, 2),
        PVS("p k2 r2d4n256u1 b2", Q4K, quant_x_q4_k2, labp_q4k2_r2d4n256u1, TQ4_K2, TQ4_K, 2, 4, 256, 1, 2),
        PVS("p k2 r2d4n256u1 b3", Q4K, quant_x_q4_k2, labp_q4k2_r2d4n256u1, TQ4_K2, TQ4_K, 2, 4, 256, 1, 3),
        PVS("p k2 r4d2n384u1 b2", Q4K, quant_x_q4_k2, labp_q4k2_r4d2n384u1, TQ4_K2, TQ4_K, 4, 2, 384, 1, 2),
        PVS("p k2 r2d2n512u1 b2", Q4K, quant_x_q4_k2, labp_q4k2_r2d2n512u1, TQ4_K2, TQ4_K, 2, 2, 512, 1, 2),
        PVS("p k2 r2d2n512u1 b3", Q4K, quant_x_q4_k2, labp_q4k2_r2d2n512u1, TQ4_K2, TQ4_K, 2, 2, 512, 1, 3),
        PVS("p k2 r8d2n256u1 b1", Q4K, quant_x_q4_k2, labp_q4k2_r8d2n256u1, TQ4_K2, TQ4_K, 8, 2, 256, 1, 1),
        PVS("p r2d4n128u1 b3", Q6K, quant_x_q6_k, labp_q6k_r2d4n128u1, TQ6_K, TQ6_K, 2, 4, 128, 1, 3),
        PVS("p r2d3n256u1 b2", Q6K, quant_x_q6_k, labp_q6k_r2d3n256u1, TQ6_K, TQ6_K, 2, 3, 256, 1, 2),
        PVS("p r2d2n256u1 b3", Q6K, quant_x_q6_k, labp_q6k_r2d2n256u1, TQ6_K, TQ6_K, 2, 2, 256, 1, 3),
        PVS("p r2d2n512u1 b2", Q6K, quant_x_q6_k, labp_q6k_r2d2n512u1, TQ6_K, TQ6_K, 2, 2, 512, 1, 2),
        PVS("p r4d2n256u1 b2", Q6K, quant_x_q6_k, labp_q6k_r4d2n256u1, TQ6_K, TQ6_K, 4, 2, 256, 1, 2),
        PVS("p r4d3n256u2 b2", Q80, quant_x_q8_0, labp_q80_r4d3n256u2, TQ8_0, TQ8_0, 4, 3, 256, 2, 2),
        PVS("p r4d2n512u2 b1", Q80, quant_x_q8_0, labp_q80_r4d2n512u2, TQ8_0, TQ8_0, 4, 2, 512, 2, 1),
    };
    for (const PV& p : pvs) {
        if (p.ty != t) continue;
        Variant x; x.name = p.nm; x.qx = p.qx; x.gp = p.fn; x.R = p.R; x.D = p.D; x.NT = p.NT;
        x.chunks = p.chunks; x.bpsm = p.bpsm; x.gsmem = p.smem; x.U = p.U;
        v.push_back(x);
    }
    // LAB_VARIANTS="p ,g8": keep v0 (the reference) and variants whose name contains a token.
    if (const char* f = getenv("LAB_VARIANTS")) {
        std::vector<std::string> toks;
        std::string cur;
        for (const char* p = f;; p++) {
            if (*p == ',' || !*p) { if (!cur.empty()) toks.push_back(cur); cur.clear(); if (!*p) break; }
            else cur += *p;
        }
        std::vector<Variant> kept;
        for (size_t i = 0; i < v.size(); i++) {
            bool keep = i == 0;
            for (auto& tk : toks) keep = keep || v[i].name.find(tk) != std::string::npos;
            if (keep) kept.push_back(v[i]);
        }
        v = kept;
    }
    return v;
}

int main(int argc, char** argv) {
    const bool quick = argc > 1 && !strcmp(argv[1], "--quick");
    const char* only = getenv("LAB_TYPES");  // e.g. "q4_k,bf16"
    cudaDeviceProp p; CK(cudaGetDeviceProperties(&p, 0));
    g_sms = p.multiProcessorCount;
    cudaStream_t st; CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    const double copy = copy_bw(st);
    printf("device %s, %d SMs; copy %.0f GB/s (256 MiB d2d, read+write)\n", p.name, g_sms, copy / 1e9);
    // LAB_SHAPES="3072x4096,4096x2048" replaces the three default shapes.
    std::vector<std::pair<int, int>> shapes = {{4096, 4096}, {14336, 4096}, {4096, 14336}};
    if (const char* e = getenv("LAB_SHAPES")) {
        shapes.clear();
        for (const char* p = e; *p;) {
            int a = 0, b = 0, used = 0;
            if (sscanf(p, "%dx%d%n", &a, &b, &used) != 2) break;
            shapes.push_back({a, b});
            p += used;
            if (*p == ',') p++;
        }
    }
    int failures = 0;
    for (int ti = 0; ti < 4; ti++) {
        const Ty t = (Ty)ti;
        if (only && !strstr(only, TYI[t].name)) continue;
        const int s0 = getenv("LAB_SHAPE") ? atoi(getenv("LAB_SHAPE")) : 0;  // --quick: this shape only
        for (int si = quick ? s0 : 0; si < (quick ? s0 + 1 : (int)shapes.size()); si++) {
            const int n = shapes[si].first, k = shapes[si].second;
            HostW w = make_weight(t, n, k);
            const size_t wb = w.bytes.size();
            const size_t stride = (wb + 255) / 256 * 256;
            const int copies = (int)std::clamp<size_t>(((512ull << 20) + wb - 1) / wb, 1, 64);
            u8* pool; CK(cudaMalloc(&pool, stride * copies));
            for (int c = 0; c < copies; c++) CK(cudaMemcpy(pool + c * stride, w.bytes.data(), wb, cudaMemcpyHostToDevice));
            Ctx c; c.t = t; c.n = n; c.k = k; c.st = st;
            for (int i = 0; i < copies; i++) {
                c.wb.push_back(pool + i * stride);
                c.wh.push_back(pool + i * stride + w.head_off);
            }
            std::vector<float> xh(k);
            for (auto& e : xh) e = (float)((int)(rnd() % 65536) - 32768) / 32768.0f;
            CK(cudaMalloc(&c.x, k * 4)); CK(cudaMalloc(&c.y, n * 4));
            CK(cudaMalloc(&c.xq, (size_t)units_of(t, k) * 16 + 16)); CK(cudaMalloc(&c.xs, (size_t)units_of(t, k) * 8 + 16));
            CK(cudaMemcpy(c.x, xh.data(), k * 4, cudaMemcpyHostToDevice));
            // CPU reference (exact x, f64).
            std::vector<double> yref(n), row;
            for (int r = 0; r < n; r++) {
                dequant_row(t, w, k, r, row);
                double s = 0; for (int j = 0; j < k; j++) s += row[j] * xh[j];
                yref[r] = s;
            }
            double ref2 = 0; for (double v : yref) ref2 += v * v;
            std::vector<float> y0(n), yv(n);
            const double bytes = (double)wb + 4.0 * k + 4.0 * n;
            printf("\n%s %dx%d: %.1f MB weight, %d copies rotated; ideal at copy bw %.2f us\n", TYI[t].name, n, k,
                   wb / 1e6, copies, bytes / copy * 1e6);
            auto vs = variants(t);
            for (size_t vi = 0; vi < vs.size(); vi++) {
                const Variant& v = vs[vi];
                CK(cudaMemset(c.y, 0xff, n * 4));  // NaN poison
                call(v, c, 0);
                CK(cudaStreamSynchronize(st));
                CK(cudaGetLastError());
                CK(cudaMemcpy(yv.data(), c.y, n * 4, cudaMemcpyDeviceToHost));
                if (vi == 0) y0 = yv;
                double e2 = 0, d2 = 0, y02 = 0;
                for (int r = 0; r < n; r++) {
                    e2 += (yv[r] - yref[r]) * (yv[r] - yref[r]);
                    d2 += (double)(yv[r] - y0[r]) * (yv[r] - y0[r]);
                    y02 += (double)y0[r] * y0[r];
                }
                const double nmse = e2 / ref2, dv0 = std::sqrt(d2 / std::max(y02, 1e-30));
                // int8 x: nmse ≤ 9.9e-4 (conformance rule); against v0 (same rounding of x) ≤ 1e-5.
                const bool ok = std::isfinite(nmse) && nmse < 9.9e-4 && (t == BF16 ? nmse < 1e-10 : dv0 < 1e-5);
                if (!ok) failures++;
                const int calls = std::max(copies, 32);
                // LAB_NO_TIME=1 (under ncu): validation launches only.
                const double s = getenv("LAB_NO_TIME") ? 1.0 : time_graph(v, c, calls, quick ? 3 : 7);
                std::string grid;
                if (v.g8 && v.plan) {
                    Launch L = plan_model8(v, t, n, k);
                    char buf[96]; snprintf(buf, sizeof buf, "grid %u S=%d", L.grid.x, L.S);
                    grid = buf;
                }
                if (v.gf) {
                    Launch L = v.plan ? plan_model(v, n, k, v.U) : plan_old(n, v.R);
                    char buf[96]; snprintf(buf, sizeof buf, "grid %u S=%d", v.plan ? L.grid.x : (L.grid.x * 128 + v.NT - 1) / v.NT, L.S);
                    grid = buf;
                }
                if (v.gp) {
                    Launch L = plan_pipe(v, t, n, k);
                    char buf[96]; snprintf(buf, sizeof buf, "grid %u x %u S=%d smem %zu", L.grid.x, L.block.x, L.S, L.smem);
                    grid = buf;
                }
                if (v.g1) {
                    Launch L = plan_gemv1(v, t, n, k);
                    char buf[96]; snprintf(buf, sizeof buf, "grid %u x %u thr S=%d smem %zu", L.grid.x, L.block.x, L.S, L.smem);
                    grid = buf;
                }
                printf("  %-22s %8.2f us %7.0f GB/s %6.1f %%  nmse %.1e  vs v0 %.1e  %s  %s\n", v.name.c_str(), s * 1e6,
                       bytes / s / 1e9, 100.0 * bytes / s / copy, nmse, dv0, ok ? "ok" : "FAIL", grid.c_str());
            }
            CK(cudaFree(pool)); CK(cudaFree(c.x)); CK(cudaFree(c.y)); CK(cudaFree(c.xq)); CK(cudaFree(c.xs));
        }
    }
    printf("\n%s: %d check failures\n", failures ? "FAILED" : "all variants valid", failures);
    return failures ? 1 : 0;
}
