// attn_decode lab: decode attention variants (Llama-3-8B shape: 32 q heads, 8 KV heads, head_dim
// 128, block 16) built from kernels/attention.cu (and, as variant 0, the baseline kernel given
// as BASE_FILE), validated against a CPU reference and against the baseline's output, then timed
// in CUDA graphs of back-to-back calls over rotated caches (> L2) against a d2d copy measured
// here. README.md says how to run it and what each variant is.
//
//   lab            validate + time every variant on every case
//   lab ncu        a few plain launches per variant (b1 / b32 at 4k, f16) for ncu to profile
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common.cuh"
#include "attention.cu"

#undef NEG_INF
#undef LOG2E
#undef ATTN_KERNEL
#undef ATTN_BOTH
#undef ATTN_COMBINE
namespace base {
#include BASE_FILE
}
template <int NS, bool BF>
__global__ void __launch_bounds__(128) base_decode(const base::AttnArgs a) {
    pdl_enter();  // as the backend's kernels (every call is a programmatic dependent here)
    base::attn_body<128, 1, 4, 64, NS, BF>(a);
}

#define CK(x)                                                                                  \
    do {                                                                                       \
        cudaError_t e_ = (x);                                                                  \
        if (e_ != cudaSuccess) {                                                               \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

// NH / NKV: Llama-3-8B (32 / 8), or one TP2 rank (16 / 4) for the `tp2` cases; G stays 4.
static int NH = 32, NKV = 8;
static const int HD = 128, BS = 16, G = 4;

// ------------------------------------------------------------------------------ random fill
__global__ void fill16(u16* p, size_t n, u32 seed, int bf) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        u32 x = (u32)i * 2654435761u ^ seed;
        x ^= x >> 16; x *= 0x7feb352du; x ^= x >> 15; x *= 0x846ca68bu; x ^= x >> 16;
        const float v = ((x >> 8) * (1.0f / 16777216.0f)) * 2.0f - 1.0f;
        p[i] = bf ? f2bf(v) : f2h(v);
    }
}

static float h2f_host(u16 h) {
    const u32 s = (h >> 15) & 1, e = (h >> 10) & 31, m = h & 1023;
    float v;
    if (e == 0) v = std::ldexp((float)m, -24);
    else if (e == 31) v = m ? NAN : INFINITY;
    else v = std::ldexp((float)(m | 1024), (int)e - 25);
    return s ? -v : v;
}
static float bf2f_host(u16 b) {
    u32 u = (u32)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// ------------------------------------------------------------------------------- variants
// Every call is launched as a programmatic dependent (cudaLaunchKernelEx, programmatic stream
// serialization), as the backend launches it; the split merge is fused (counters zeroed once).
enum Kind { BASE = 0, NEW = 1 };
struct Variant {
    const char* name;
    Kind kind;
    int ns;
    bool bulk;   // cp.async.bulk rows into an mbarrier ring (else 16-byte cp.async)
    bool early;  // batch arrays + first block ids before griddepcontrol.wait
    int min_chunk = 64;   // smallest split (keys)
    int split_scale = 1;  // splits0 multiplied by this before the clamp
    bool pair = false;    // K/V row pairs per bulk copy (kv_soff pair layout)
    bool qreg = false;    // Q fragments in registers, two QK accumulator chains
};
static const Variant VARIANTS[] = {
    {"v0 base (HEAD kernel, NS2)", BASE, 2, false, false},
    {"v1 cp.async (this tree), NS2", NEW, 2, false, false},
    {"v2 cp.async (this tree), NS3", NEW, 3, false, false},
    {"v3 bulk rows + mbarrier, NS2", NEW, 2, true, false},
    {"v4 bulk rows + mbarrier, NS3", NEW, 3, true, false},
    {"v5 v1 + early PDL prologue", NEW, 2, false, true},
    {"v6 v3 + early PDL prologue", NEW, 2, true, true},
    {"v7 v4 + early PDL prologue", NEW, 3, true, true},
    {"v8 v7 + row pairs per bulk copy", NEW, 3, true, true, 64, 1, true, false},
    {"v9 v7 + Q in registers, 2 chains", NEW, 3, true, true, 64, 1, false, true},
    {"v10 v7 + pairs + Q regs", NEW, 3, true, true, 64, 1, true, true},
    {"v11 v6 + pairs + Q regs (NS2)", NEW, 2, true, true, 64, 1, true, true},
};
static const int NVAR = sizeof(VARIANTS) / sizeof(VARIANTS[0]);

typedef void (*NewK)(const AttnArgs);
typedef void (*BaseK)(const base::AttnArgs);
// The working tree's decode body (NS stages, loader, prologue, pair layout, Q registers).
template <int NS, bool BF, bool BULK, bool EARLY, bool PAIR, bool QREG>
__global__ void __launch_bounds__(128) new_decode(const AttnArgs a) {
    if (!EARLY) pdl_enter();
    attn_body<128, 1, 4, 64, NS, BF, BULK, EARLY, PAIR, QREG>(a);
}
template <bool BF, bool BULK, bool EARLY, bool PAIR, bool QREG>
static NewK new_kernel_ns(int ns) {
    if (ns == 3) return new_decode<3, BF, BULK, EARLY, PAIR, QREG>;
    return new_decode<2, BF, BULK, EARLY, PAIR, QREG>;
}
template <bool BF, bool PAIR, bool QREG>
static NewK new_kernel_pq(int ns, bool bulk, bool early) {
    if (bulk) return early ? new_kernel_ns<BF, true, true, PAIR, QREG>(ns) : new_kernel_ns<BF, true, false, PAIR, QREG>(ns);
    return early ? new_kernel_ns<BF, false, true, PAIR, QREG>(ns) : new_kernel_ns<BF, false, false, PAIR, QREG>(ns);
}
template <bool BF>
static NewK new_kernel_bf(const Variant& v) {
    if (v.pair) return v.qreg ? new_kernel_pq<BF, true, true>(v.ns, v.bulk, v.early) : new_kernel_pq<BF, true, false>(v.ns, v.bulk, v.early);
    return v.qreg ? new_kernel_pq<BF, false, true>(v.ns, v.bulk, v.early) : new_kernel_pq<BF, false, false>(v.ns, v.bulk, v.early);
}
static NewK new_kernel(const Variant& v, bool bf) { return bf ? new_kernel_bf<true>(v) : new_kernel_bf<false>(v); }
static BaseK base_kernel(int ns, bool bf) {
    if (ns == 3) return bf ? base_decode<3, true> : base_decode<3, false>;
    return bf ? base_decode<2, true> : base_decode<2, false>;
}
static int smem_of(int ns, bool bf) { return 2 * (HD + 8) * ((bf ? 2 : 1) * 16 + ns * 2 * 64); }

static int g_sms = 0;
// SMs × the smaller occupancy of the f16 and bf16 kernels (the backend's decode_slots).
static int slots_of(const Variant& v, bool) {
    int best = 1 << 30;
    for (int bf = 0; bf < 2; bf++) {
        const int smem = smem_of(v.ns, bf);
        int n = 0;
        if (v.kind == BASE) {
            BaseK k = base_kernel(v.ns, bf);
            CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
            CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k, 128, smem));
        } else {
            NewK k = new_kernel(v, bf);
            CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
            CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k, 128, smem));
        }
        best = std::min(best, std::max(n, 1));
    }
    return g_sms * best;
}

// ------------------------------------------------------------------------------ one problem
struct Seq {
    int kv_len;   // keys of this decode row (q_len 1); 0 marks an invalid sequence (kv_len < q_len)
};
struct Problem {
    bool bf;
    int n_seqs, max_kv, max_blocks, num_blocks;
    int window = 0;
    float softcap = 0.0f;
    u16 *k = nullptr, *v = nullptr;
    float *q = nullptr, *out = nullptr;
    int *q_starts = nullptr, *kv_lens = nullptr;
    std::vector<int*> tables;  // one per rotated copy
};

struct Plan {
    int splits, chunk;
};
static Plan plan_of(const Variant& v, const Problem& p, int slots) {
    const int basec = std::max(p.n_seqs * NKV, 1);  // one decode row tile per (seq, kv head)
    const int max_splits = std::max((p.max_kv + v.min_chunk - 1) / v.min_chunk, 1);
    const int s0 = std::min(std::max(slots / basec * v.split_scale, 1), max_splits);
    int chunk = ((p.max_kv + s0 - 1) / s0 + 63) / 64 * 64;
    chunk = std::max(chunk, 64);
    return {(p.max_kv + chunk - 1) / chunk, chunk};
}

struct Launch {
    const Variant* v;
    Plan pl;
    AttnArgs na;
    base::AttnArgs ba;
    float *part_acc = nullptr, *part_ml = nullptr;
    int* counters = nullptr;
    int n_counters = 0;
};

template <class A>
static void fill_args(A& a, const Problem& p, const Plan& pl, int table_i, float* pa, float* pm) {
    memset(&a, 0, sizeof(a));
    a.q = p.q; a.kc = p.k; a.vc = p.v; a.out = p.out;
    a.q_starts = p.q_starts; a.kv_lens = p.kv_lens; a.tables = p.tables[table_i];
    a.part_acc = pa; a.part_ml = pm;
    a.n_seqs = p.n_seqs; a.n_tokens = p.n_seqs; a.n_heads = NH; a.n_kv = NKV;
    a.group = G; a.block_size = BS; a.max_blocks = p.max_blocks; a.num_blocks = p.num_blocks;
    a.max_q_len = 1; a.max_kv_len = p.max_kv;
    a.scale = 1.0f / sqrtf((float)HD); a.softcap = p.softcap; a.window = p.window; a.causal = 1;
    a.qd = 16 / G; a.rd = 16; a.splits = pl.splits; a.chunk = pl.chunk; a.row_tiles = 1;
    a.kv_f32 = 0; a.bs_shift = 4;
}

static Launch make_launch(const Variant& v, const Problem& p, int slots) {
    Launch L;
    L.v = &v;
    L.pl = plan_of(v, p, slots);
    if (L.pl.splits > 1) {
        const size_t rows = (size_t)p.n_seqs * NKV * 16 * L.pl.splits;
        CK(cudaMalloc(&L.part_acc, rows * HD * 4));
        CK(cudaMalloc(&L.part_ml, rows * 2 * 4));
        L.n_counters = p.n_seqs * NKV;
        CK(cudaMalloc(&L.counters, L.n_counters * 4));
        CK(cudaMemset(L.counters, 0, L.n_counters * 4));
    }
    return L;
}
static void free_launch(Launch& L) {
    cudaFree(L.part_acc); cudaFree(L.part_ml); cudaFree(L.counters);
}

static void enqueue(Launch& L, const Problem& p, int table_i, cudaStream_t st) {
    const Variant& v = *L.v;
    const dim3 grid(L.pl.splits, NKV, p.n_seqs);
    const int smem = smem_of(v.ns, p.bf);
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = dim3(128);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    if (v.kind == BASE) {
        fill_args(L.ba, p, L.pl, table_i, L.part_acc, L.part_ml);
        L.ba.counters = L.counters;
        BaseK k = base_kernel(v.ns, p.bf);
        CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        CK(cudaLaunchKernelEx(&cfg, k, L.ba));
        return;
    }
    fill_args(L.na, p, L.pl, table_i, L.part_acc, L.part_ml);
    L.na.counters = L.counters;
    NewK k = new_kernel(v, p.bf);
    CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    CK(cudaLaunchKernelEx(&cfg, k, L.na));
}

// Problem with the given decode rows; `copies` rotated block tables (disjoint blocks, shuffled
// inside a copy when `shuffle`).
static Problem make_problem(bool bf, const std::vector<Seq>& seqs, int copies, bool shuffle, u32 seed) {
    Problem p;
    p.bf = bf;
    p.n_seqs = (int)seqs.size();
    p.max_kv = 1;
    for (auto& s : seqs) p.max_kv = std::max(p.max_kv, s.kv_len);
    p.max_blocks = (p.max_kv + BS - 1) / BS;
    const int per_copy = p.n_seqs * p.max_blocks;
    p.num_blocks = copies * per_copy;
    const size_t elems = (size_t)p.num_blocks * NKV * BS * HD;
    CK(cudaMalloc(&p.k, elems * 2));
    CK(cudaMalloc(&p.v, elems * 2));
    fill16<<<4096, 256>>>(p.k, elems, seed * 7 + 1, bf);
    fill16<<<4096, 256>>>(p.v, elems, seed * 7 + 2, bf);
    const int qn = p.n_seqs * NH * HD;
    CK(cudaMalloc(&p.q, qn * 4));
    CK(cudaMalloc(&p.out, qn * 4));
    std::vector<float> hq(qn);
    u32 x = seed * 2654435761u + 12345u;
    for (auto& e : hq) {
        x = x * 1664525u + 1013904223u;
        e = ((x >> 8) * (1.0f / 16777216.0f)) * 2.0f - 1.0f;
    }
    CK(cudaMemcpy(p.q, hq.data(), qn * 4, cudaMemcpyHostToDevice));
    std::vector<int> qs(p.n_seqs + 1), kl(p.n_seqs);
    for (int s = 0; s <= p.n_seqs; s++) qs[s] = s;
    for (int s = 0; s < p.n_seqs; s++) kl[s] = seqs[s].kv_len;
    CK(cudaMalloc(&p.q_starts, qs.size() * 4));
    CK(cudaMalloc(&p.kv_lens, kl.size() * 4));
    CK(cudaMemcpy(p.q_starts, qs.data(), qs.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(p.kv_lens, kl.data(), kl.size() * 4, cudaMemcpyHostToDevice));
    for (int c = 0; c < copies; c++) {
        std::vector<int> t(per_copy);
        for (int i = 0; i < per_copy; i++) t[i] = c * per_copy + i;
        if (shuffle) {
            u32 y = seed + 99u * c;
            for (int i = per_copy - 1; i > 0; i--) {
                y = y * 1664525u + 1013904223u;
                std::swap(t[i], t[(y >> 8) % (i + 1)]);
            }
        }
        int* d;
        CK(cudaMalloc(&d, per_copy * 4));
        CK(cudaMemcpy(d, t.data(), per_copy * 4, cudaMemcpyHostToDevice));
        p.tables.push_back(d);
    }
    CK(cudaDeviceSynchronize());
    return p;
}
static void free_problem(Problem& p) {
    cudaFree(p.k); cudaFree(p.v); cudaFree(p.q); cudaFree(p.out); cudaFree(p.q_starts); cudaFree(p.kv_lens);
    for (auto t : p.tables) cudaFree(t);
}

// f64 reference of table copy 0 for every valid row; NaN for invalid rows (left unwritten).
static std::vector<float> reference(const Problem& p, const std::vector<Seq>& seqs) {
    const size_t elems = (size_t)p.num_blocks * NKV * BS * HD;
    std::vector<u16> hk(elems), hv(elems);
    CK(cudaMemcpy(hk.data(), p.k, elems * 2, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(hv.data(), p.v, elems * 2, cudaMemcpyDeviceToHost));
    std::vector<int> t(p.n_seqs * p.max_blocks);
    CK(cudaMemcpy(t.data(), p.tables[0], t.size() * 4, cudaMemcpyDeviceToHost));
    std::vector<float> hq(p.n_seqs * NH * HD);
    CK(cudaMemcpy(hq.data(), p.q, hq.size() * 4, cudaMemcpyDeviceToHost));
    auto cv = [&](u16 x) { return p.bf ? bf2f_host(x) : h2f_host(x); };
    std::vector<float> out(hq.size(), NAN);
    const double scale = 1.0 / sqrt((double)HD);
    for (int s = 0; s < p.n_seqs; s++) {
        const int kv = seqs[s].kv_len;
        if (kv < 1) continue;
        const int pos = kv - 1;
        const int lo = p.window > 0 ? std::max(0, pos + 1 - p.window) : 0;
        for (int h = 0; h < NH; h++) {
            const int g = h / G;
            const float* qv = &hq[((size_t)s * NH + h) * HD];
            std::vector<double> sc(kv, -INFINITY);
            double mx = -INFINITY;
            for (int k = lo; k < kv; k++) {
                const size_t off = (((size_t)t[s * p.max_blocks + k / BS] * NKV + g) * BS + k % BS) * HD;
                double d = 0;
                for (int e = 0; e < HD; e++) d += (double)qv[e] * cv(hk[off + e]);
                d *= scale;
                if (p.softcap > 0) d = p.softcap * tanh(d / p.softcap);
                sc[k] = d;
                mx = std::max(mx, d);
            }
            std::vector<double> acc(HD, 0.0);
            double l = 0;
            for (int k = lo; k < kv; k++) {
                const double w = exp(sc[k] - mx);
                l += w;
                const size_t off = (((size_t)t[s * p.max_blocks + k / BS] * NKV + g) * BS + k % BS) * HD;
                for (int e = 0; e < HD; e++) acc[e] += w * cv(hv[off + e]);
            }
            for (int e = 0; e < HD; e++) out[((size_t)s * NH + h) * HD + e] = (float)(acc[e] / l);
        }
    }
    return out;
}

static std::vector<float> run_once(Launch& L, const Problem& p) {
    const size_t qn = (size_t)p.n_seqs * NH * HD;
    CK(cudaMemset(p.out, 0xff, qn * 4));  // NaN poison: unwritten rows stay NaN
    enqueue(L, p, 0, 0);
    CK(cudaDeviceSynchronize());
    std::vector<float> o(qn);
    CK(cudaMemcpy(o.data(), p.out, qn * 4, cudaMemcpyDeviceToHost));
    return o;
}

// Max |a − b| / max |b| over rows where b is finite; false if a row differs in NaN-ness.
static bool compare(const std::vector<float>& a, const std::vector<float>& b, double& err) {
    double mx = 0, ref = 1e-30;
    for (size_t i = 0; i < a.size(); i++) {
        if (std::isnan(b[i]) != std::isnan(a[i])) return false;
        if (std::isnan(b[i])) continue;
        mx = std::max(mx, (double)fabsf(a[i] - b[i]));
        ref = std::max(ref, (double)fabsf(b[i]));
    }
    err = mx / ref;
    return true;
}

static bool counters_zero(const Launch& L) {
    if (!L.counters) return true;
    std::vector<int> c(L.n_counters);
    CK(cudaMemcpy(c.data(), L.counters, c.size() * 4, cudaMemcpyDeviceToHost));
    for (int x : c)
        if (x != 0) return false;
    return true;
}

static double copy_gbs() {
    const size_t n = (size_t)1 << 30;
    void *a, *b;
    CK(cudaMalloc(&a, n));
    CK(cudaMalloc(&b, n));
    CK(cudaMemset(a, 1, n));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    float best = 1e30f;
    for (int r = 0; r < 6; r++) {
        CK(cudaEventRecord(e0));
        CK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice));
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        if (r > 0) best = std::min(best, ms);
    }
    cudaFree(a); cudaFree(b);
    return 2.0 * n / (best * 1e-3) / 1e9;
}

// µs per call: a graph of `calls` back-to-back calls (table i % copies), median of 7 replays.
static double time_graph(Launch& L, const Problem& p, int calls) {
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    cudaGraph_t g;
    CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
    for (int i = 0; i < calls; i++) enqueue(L, p, i % (int)p.tables.size(), st);
    CK(cudaStreamEndCapture(st, &g));
    cudaGraphExec_t ge;
    CK(cudaGraphInstantiate(&ge, g, 0));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    CK(cudaGraphLaunch(ge, st));
    CK(cudaStreamSynchronize(st));
    std::vector<float> t;
    for (int r = 0; r < 7; r++) {
        CK(cudaEventRecord(e0, st));
        CK(cudaGraphLaunch(ge, st));
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        t.push_back(ms);
    }
    std::sort(t.begin(), t.end());
    cudaGraphExecDestroy(ge); cudaGraphDestroy(g); cudaStreamDestroy(st);
    cudaEventDestroy(e0); cudaEventDestroy(e1);
    return t[3] * 1e3 / calls;
}

static int validate_small() {
    // Decode rows of mixed lengths (short, one chunk, many chunks, an invalid sequence).
    const std::vector<Seq> seqs = {{1}, {37}, {128}, {129}, {1000}, {0}, {4096}, {3001}};
    int fails = 0;
    for (int bf = 0; bf < 2; bf++)
        for (int opt = 0; opt < 2; opt++) {
            Problem p = make_problem(bf, seqs, 1, true, 11 + bf);
            if (opt) {
                p.window = 300;
                p.softcap = 3.0f;
            }
            const std::vector<float> ref = reference(p, seqs);
            for (int vi = 0; vi < NVAR; vi++) {
                const Variant& v = VARIANTS[vi];
                // Force splits: this batch is small, plan_of gives many splits on 132 SMs.
                Launch L = make_launch(v, p, slots_of(v, bf));
                double err = 0;
                bool ok = true;
                for (int rep = 0; rep < 3 && ok; rep++) {  // reps: counters must reset
                    const std::vector<float> o = run_once(L, p);
                    ok = compare(o, ref, err) && err < 1e-2 && counters_zero(L);
                }
                printf("validate %-4s %-16s %-44s splits %3d chunk %5d: %s (max err / max |ref| %.2e)\n",
                       bf ? "bf16" : "f16", opt ? "window+softcap" : "plain", v.name, L.pl.splits, L.pl.chunk,
                       ok ? "ok" : "FAIL", err);
                fails += !ok;
                free_launch(L);
            }
            free_problem(p);
        }
    return fails;
}

int main(int argc, char** argv) {
    const bool ncu = argc > 1 && !strcmp(argv[1], "ncu");
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    g_sms = prop.multiProcessorCount;
    printf("device %s, %d SMs, L2 %d MB\n", prop.name, g_sms, prop.l2CacheSize >> 20);
    for (int vi = 0; vi < NVAR; vi++)
        printf("slots %-44s f16 %d bf16 %d\n", VARIANTS[vi].name, slots_of(VARIANTS[vi], false),
               slots_of(VARIANTS[vi], true));
    // (ctx, batch, KV heads): Llama-3-8B decode, and one TP2 rank's decode (16 q / 4 KV heads).
    struct Case {
        int ctx, batch, nkv;
    };
    if (ncu) {
        for (Case c : {Case{4096, 1, 8}, Case{4096, 32, 8}, Case{512, 1, 4}}) {
            NKV = c.nkv;
            NH = G * c.nkv;
            Problem p = make_problem(false, std::vector<Seq>(c.batch, Seq{c.ctx}), 2, false, 5);
            for (int vi = 0; vi < NVAR; vi++) {
                Launch L = make_launch(VARIANTS[vi], p, slots_of(VARIANTS[vi], false));
                for (int r = 0; r < 2; r++) enqueue(L, p, r % 2, 0);
                CK(cudaDeviceSynchronize());
                free_launch(L);
            }
            free_problem(p);
        }
        return 0;
    }
    int fails = validate_small();
    const double copy = copy_gbs();
    printf("copy ceiling (d2d 1 GiB, read+write): %.0f GB/s\n", copy);
    const size_t rotate = (size_t)512 << 20;
    printf("%-5s %-6s %-5s %-3s %-44s %6s %6s %9s %8s %7s %s\n", "kv", "ctx", "batch", "nkv", "variant", "splits", "chunk", "us",
           "GB/s", "%copy", "vs v0 output");
    const Case cases[] = {{512, 1, 4},  {1024, 1, 8}, {1024, 32, 8},  {4096, 1, 8},
                          {4096, 32, 8}, {16384, 1, 8}, {16384, 32, 8}};
    for (int bf = 0; bf < 2; bf++)
        for (const Case& c : cases) {
                const int ctx = c.ctx, batch = c.batch;
                NKV = c.nkv;
                NH = G * c.nkv;
                const size_t kv_bytes = (size_t)2 * batch * ctx * NKV * HD * 2;
                const int copies = (int)std::max<size_t>(1, (rotate + kv_bytes - 1) / kv_bytes);
                Problem p = make_problem(bf, std::vector<Seq>(batch, Seq{ctx}), copies, false, 3);
                const int calls = std::max(copies, 32);
                std::vector<float> o0;
                for (int vi = 0; vi < NVAR; vi++) {
                    const Variant& v = VARIANTS[vi];
                    Launch L = make_launch(v, p, slots_of(v, bf));
                    const std::vector<float> o = run_once(L, p);
                    std::string cmp = "ref";
                    if (vi == 0) o0 = o;
                    else {
                        double err = 0;
                        const bool ok = compare(o, o0, err) && err < 4e-3;  // other splits round P differently
                        char buf[64];
                        snprintf(buf, sizeof buf, "%s %.1e", ok ? "same" : "DIFFERS", err);
                        cmp = buf;
                        fails += !ok;
                    }
                    const double us = time_graph(L, p, calls);
                    if (!counters_zero(L)) {
                        cmp += " COUNTERS LEFT NONZERO";
                        fails++;
                    }
                    const double bytes = (double)kv_bytes + 2.0 * batch * NH * HD * 4;
                    printf("%-5s %-6d %-5d %-3d %-44s %6d %6d %9.2f %8.0f %6.1f%% %s\n", bf ? "bf16" : "f16", ctx,
                           batch, NKV, v.name, L.pl.splits, L.pl.chunk, us, bytes / us / 1e3, 100.0 * bytes / us / 1e3 / copy,
                           cmp.c_str());
                    fflush(stdout);
                    free_launch(L);
                }
                free_problem(p);
            }
    printf("%s: %d failure(s)\n", fails ? "FAILED" : "all checks passed", fails);
    return fails ? 1 : 0;
}
