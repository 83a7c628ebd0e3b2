// gemv_x8.wgsl — y = x·Wᵀ for ONE x row (m = 1) with x rounded to int8 and integer dot
// products (`dot4I8Packed`, SPIR-V OpSDot: dp4a on NVIDIA), for Q8_0 and Q4_K. x: f32 [k]
// (bound as vec4, offset a multiple of 4, k a multiple of 16); W chunk: rows r0..r0+n_c of
// [n, k] in the prepared layout of src/weight.rs (Q8_0: 32 int8 per block, the f16 d array
// after the quants at word d_base; Q4_K: 144-byte blocks); y: f32 [n].
//
// Thread mapping: a workgroup is RW teams of 32 invocations (RW ≤ 16, WGS ≤ 512); team t owns
// NR consecutive weight rows. First the workgroup issues its first chunk's weight loads, then rounds the whole x to
// int8 in workgroup memory (invocation i takes groups i, i + WGS, ... of 16 elements: 4 vec4
// loads of x, one group each) and waits at one barrier. Then each team walks k in chunks of CH
// = 1024 elements as gemv_v.wgsl does (same lane → weight vec4 mapping, the weights of the
// next DEPTH chunks loaded ahead, subgroupAdd or a workgroup tree per row), but each invocation
// reads its x as 2 int8 groups (2 vec4<u32> + 2 (d, d·Σq) pairs) from workgroup memory and a
// weight vec4 costs 4 dot4I8Packed (Q8_0: 16 values) or 4 AND + 4 SHR/AND + 8 dot4I8Packed
// (Q4_K: 32 values, the nibbles are already bytes after a mask) instead of ~4 float ops per
// value. Q4K_PACK (the default): the lane's two 6-bit scale/min pairs are decoded as 16-bit
// lanes of one u32 without a select and applied to the integer sums (see its dp). Q4K_WIDE (an option, slower on an H200 at most shapes): Q4_K lanes take two qs vec4s
// (64 values, 4 x groups, one scale/min decode) per row and CH = 2048-element chunk.
//
// XQG (x quantized globally): a separate tiny dispatch (quant_x8.wgsl) rounds x once per call
// into XQ/XD; there is no prologue and no barrier here, every team starts with its weight
// loads and reads its x groups from that buffer (L1/L2), the next chunk's groups loaded with
// the next chunk's weights. KS (split-k inside the workgroup, 1/2/4/8, RW a multiple of KS):
// the KS teams t = KS·g + s (s < KS) of row group g own the same NR rows and walk chunks
// s, s + KS, s + 2·KS, ...; their sums meet in workgroup memory, team s = 0 writes. Rows per
// workgroup are RW·NR/KS, and KS times as many chunks of a row are in flight at once (what a
// 4096-row product lacks: with KS = 1 it has one 1024-element chunk per row in flight).
//
// Bytes moved: the weight once (n·k·bytes_per_weight); x once per workgroup from L2 (k·4 per
// n/(RW·NR) workgroups) and 1.5 bytes per element per team from workgroup memory; y n·4.
// XQG: x read once (k·4) and written as 1.5·k bytes by quant_x8, then 1.5 bytes per element
// per team from L1/L2.
// FLOPs: 2·n·k (as int8 MACs) + the rounding of x (≈ 6 per element per workgroup).
//
// Accuracy (the CUDA int8-x path's reasoning, backend-cuda/README.md, and the same rounding as
// its q8_group): per group of 16, d = max|x|/127 rounded up to 22 significant bits, q =
// clamp(round(x/d), ±127), so |x − d·q| ≤ d/2 per element: Σ(x − x̂)² ≤ 16·(d/2)² =
// 4·max|x|²/127² over a group while Σx² ≥ max|x|², i.e. Σ(x − x̂)²/Σx² ≤ 4/127² = 2.5e-4
// (worst case; ~4e-5 for the suite's activations). The weights are decoded exactly to integers and the integer sums are exact
// (|Σ| ≤ 16·127·127), so the only error besides f32 accumulation is x's rounding: the
// conformance rule for block-type matmul on GPUs (tests/src/tolerance.rs: nmse ≤ 4·4/127²)
// covers it. A group with a non-finite x gets d = NaN so the product shows it.

override RW: u32 = 4u;
override NR: u32 = 2u;
override WGS: u32 = 128u; // = 32·RW
// Chunks of weight loads in flight ahead of the one being decoded: 1 (set n) or 2 (sets n and
// m, the loop unrolled by two so no set is copied while its loads are pending).
override DEPTH: u32 = 1u;
// Teams per row group (split-k inside the workgroup); RW is a multiple of KS.
override KS: u32 = 1u;

struct Params {
    n_c: u32,    // weight rows in this chunk
    k: u32,
    r0: u32,     // first weight row of this chunk (column of y)
    bpr: u32,    // blocks per row
    d_base: u32, // Q8_0: word index of the moved-out f16 d array in W
    x4: u32,     // vec4 offset of x
    o_off: u32,  // element offset of y
    chunks: u32, // ceil(k / CH)
    pn: vec4<u32>,  // MANY (gemv_many.wgsl): rows, first workgroup, d_base, y offset per part
    pwg: vec4<u32>,
    pd: vec4<u32>,
    po: vec4<u32>,
    mx: vec4<u32>,  // gemv_x8m.wgsl: x rows, x row stride in groups (k/16), y row stride
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> W4: array<vec4<u32>>;      // the chunk's rows
//#if !XQG
@group(0) @binding(2) var<storage, read_write> X: array<vec4<f32>>; // [k/4]
//#endif
@group(0) @binding(3) var<storage, read_write> O: array<f32>;       // [n]
//#if W_Q8_0
@group(0) @binding(4) var<storage, read> W: array<u32>;             // same buffer, for d
//#endif

// x rounded to int8 per group of 16 elements: [k/16] quants (byte l % 4 of word l / 4 of the
// vec4 = element 16g + l) and [k/16] (d, d·Σq). XG = k/16 rounded up (see gemv_v.rs).
//#if XQG
@group(0) @binding(5) var<storage, read> XQ: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read> XD: array<vec2<f32>>;
// The first group of the x row being read (gemv_x8m.wgsl's rows; 0 for one row).
var<private> xrow: u32;
fn gq(g: u32) -> vec4<u32> { return XQ[xrow + g]; }
fn gd(g: u32) -> vec2<f32> { return XD[xrow + g]; }
//#else
var<workgroup> xq: array<vec4<u32>, {{XG}}>;
var<workgroup> xd: array<vec2<f32>, {{XG}}>;
fn gq(g: u32) -> vec4<u32> { return xq[g]; }
fn gd(g: u32) -> vec2<f32> { return xd[g]; }

fn quant_x(li: u32) {
    let ng = P.k / 16u;
    for (var g = li; g < ng; g += WGS) {
        let b = P.x4 + 4u * g;
        let r = round_x16(X[b], X[b + 1u], X[b + 2u], X[b + 3u]);
        xq[g] = r.q;
        xd[g] = r.dq;
    }
}
//#endif

// The invocation's 2 int8 x groups of the current chunk and their (d, d·Σq) (zero past k).
var<private> xa: vec4<u32>;
var<private> xb: vec4<u32>;
var<private> da: vec2<f32>;
var<private> db: vec2<f32>;
// Q4K_WIDE: the lane's third and fourth groups, and Σ-terms of its two sub-blocks.
var<private> xc: vec4<u32>;
var<private> xe: vec4<u32>;
var<private> dc: vec2<f32>;
var<private> de: vec2<f32>;
// Which of the invocation's weight vec4s lie inside the row.
var<private> v0: bool;
var<private> v1: bool;

// Weight words one invocation loads for one row and chunk (unused fields stay zero).
struct WL {
    a: vec4<u32>,
    b: vec4<u32>,
    c: vec4<u32>,
    e: u32,
    f: u32,
}

const MAGIC: u32 = 0x4b000000u; // 2^23 as f32 bits: OR a small integer into the mantissa

//#if W_Q8_0
// Block = 32 int8 (2 vec4) in W4, its f16 d in the d array. Lane l, chunk c: weight vec4s
// j = 64c + 32t + l (t < 2), 16 int8 each = x group j, block j/2.
const CH: u32 = 1024u; // elements per chunk
fn load_x(c: u32, l: u32, full: bool) {
    let q = P.k / 16u;
    let j = c * 64u + l;
    v0 = full || j < q;
    v1 = full || j + 32u < q;
    if !full {
        xa = vec4<u32>(0u); xb = xa; da = vec2<f32>(0.0); db = da;
    }
    if v0 { xa = gq(j); da = gd(j); }
    if v1 { xb = gq(j + 32u); db = gd(j + 32u); }
}
fn ld(r: u32, c: u32, l: u32) -> WL {
    let j = c * 64u + l;
    let base = r * (P.k / 16u) + j;
    let b = r * P.bpr + j / 2u;
    var w: WL;
    if v0 { w.a = ldw4(base); w.e = ldw(d_base_ + (b >> 1u)); }
    if v1 { w.b = ldw4(base + 32u); w.f = ldw(d_base_ + ((b + 16u) >> 1u)); }
    return w;
}
fn dp(w: WL, c: u32, l: u32) -> f32 {
    // the block of vec4 j is j/2: its d is half (b & 1) of the word loaded; b + 16 has the
    // same parity
    let hf = ((c * 64u + l) / 2u) & 1u;
    let d0 = unpack2x16float(w.e)[hf];
    let d1 = unpack2x16float(w.f)[hf];
    let i0 = dot4I8Packed(w.a.x, xa.x) + dot4I8Packed(w.a.y, xa.y)
           + dot4I8Packed(w.a.z, xa.z) + dot4I8Packed(w.a.w, xa.w);
    let i1 = dot4I8Packed(w.b.x, xb.x) + dot4I8Packed(w.b.y, xb.y)
           + dot4I8Packed(w.b.z, xb.z) + dot4I8Packed(w.b.w, xb.w);
    return d0 * da.x * f32(i0) + d1 * db.x * f32(i1);
}
//#endif

//#if W_Q4_K
//#if Q4K_WIDE
// Block (144 B = 9 vec4): vec4 0 = d|dmin, scales[0..12]; vec4 1 + q = qs[16q..16q+16].
// Lane l, chunk c (2048 elements): block 8c + l/4, pair p = l%4 = elements 64p..64p+64 =
// sub-blocks 2p (low nibbles of qs vec4s 2p, 2p+1: x groups 4p, 4p+1) and 2p+1 (their high
// nibbles: groups 4p+2, 4p+3): one header decode per 64 weights.
const CH: u32 = 2048u;
fn load_x(c: u32, l: u32, full: bool) {
    let blk = c * 8u + l / 4u;
    let p = l % 4u;
    v0 = full || blk < P.bpr;
    if !full {
        xa = vec4<u32>(0u); xb = xa; xc = xa; xe = xa;
        da = vec2<f32>(0.0); db = da; dc = da; de = da;
    }
    if v0 {
        let g = blk * 16u + p * 4u;
        xa = gq(g); da = gd(g);
        xb = gq(g + 1u); db = gd(g + 1u);
        xc = gq(g + 2u); dc = gd(g + 2u);
        xe = gq(g + 3u); de = gd(g + 3u);
    }
}
fn ld(r: u32, c: u32, l: u32) -> WL {
    let bw = (r * P.bpr + c * 8u + l / 4u) * 9u;
    let p = l % 4u;
    var w: WL;
    if v0 { w.a = ldw4(bw); w.b = ldw4(bw + 1u + 2u * p); w.c = ldw4(bw + 2u + 2u * p); }
    return w;
}
fn dp(wl: WL, c: u32, l: u32) -> f32 {
    let p = l % 4u;
    let h = wl.a;
    // 6-bit (scale, min) of sub-blocks j = 2p and j + 1 (get_scale_min_k4)
    let jj = (2u * p) % 4u;
    let sh = vec2<u32>(8u * jj, 8u * jj + 8u);
    let by = (vec2<u32>(h.y) >> sh) & vec2<u32>(255u);
    let bz = (vec2<u32>(h.z) >> sh) & vec2<u32>(255u);
    let bv = (vec2<u32>(h.w) >> sh) & vec2<u32>(255u);
    let hi = p >= 2u;
    let sc = select(by & vec2<u32>(63u), (bv & vec2<u32>(15u)) | ((by >> vec2<u32>(6u)) << vec2<u32>(4u)), hi);
    let mn = select(bz & vec2<u32>(63u), (bv >> vec2<u32>(4u)) | ((bz >> vec2<u32>(6u)) << vec2<u32>(4u)), hi);
    let scf = bitcast<vec2<f32>>(sc | vec2<u32>(MAGIC)) - vec2<f32>(8388608.0);
    let mnf = bitcast<vec2<f32>>(mn | vec2<u32>(MAGIC)) - vec2<f32>(8388608.0);
    let m4 = 0x0f0f0f0fu;
    let u = wl.b;
    let v = wl.c;
    let l0 = dot4I8Packed(u.x & m4, xa.x) + dot4I8Packed(u.y & m4, xa.y)
           + dot4I8Packed(u.z & m4, xa.z) + dot4I8Packed(u.w & m4, xa.w);
    let l1 = dot4I8Packed(v.x & m4, xb.x) + dot4I8Packed(v.y & m4, xb.y)
           + dot4I8Packed(v.z & m4, xb.z) + dot4I8Packed(v.w & m4, xb.w);
    let h0 = dot4I8Packed((u.x >> 4u) & m4, xc.x) + dot4I8Packed((u.y >> 4u) & m4, xc.y)
           + dot4I8Packed((u.z >> 4u) & m4, xc.z) + dot4I8Packed((u.w >> 4u) & m4, xc.w);
    let h1 = dot4I8Packed((v.x >> 4u) & m4, xe.x) + dot4I8Packed((v.y >> 4u) & m4, xe.y)
           + dot4I8Packed((v.z >> 4u) & m4, xe.z) + dot4I8Packed((v.w >> 4u) & m4, xe.w);
    let dm = unpack2x16float(h.x);
    return dm.x * (scf.x * (da.x * f32(l0) + db.x * f32(l1)) + scf.y * (dc.x * f32(h0) + de.x * f32(h1)))
         - dm.y * (mnf.x * (da.y + db.y) + mnf.y * (dc.y + de.y));
}
//#else
// Block (144 B = 9 vec4): vec4 0 = d|dmin, scales[0..12]; vec4 1 + q (q < 8) = qs[16q..16q+16]:
// low nibbles = elements 64(q/2) + 16(q%2) + 0..16 (x group 16·blk + 4(q/2) + q%2), high
// nibbles = the 16 elements 32 later (group + 2). Lane l, chunk c: block 4c + l/8, q = l%8.
const CH: u32 = 1024u;
fn load_x(c: u32, l: u32, full: bool) {
    let blk = c * 4u + l / 8u;
    let q = l % 8u;
    v0 = full || blk < P.bpr;
    if !full {
        xa = vec4<u32>(0u); xb = xa; da = vec2<f32>(0.0); db = da;
    }
    if v0 {
        let g = blk * 16u + (q / 2u) * 4u + q % 2u;
        xa = gq(g); da = gd(g);
        xb = gq(g + 2u); db = gd(g + 2u);
    }
}
fn ld(r: u32, c: u32, l: u32) -> WL {
    let bw = (r * P.bpr + c * 4u + l / 8u) * 9u;
    var w: WL;
//#if DIAG_NOH
    // diagnostic (KILN_WGPU_Q4K_DIAG=loads,noh): no header load
    if v0 { w.b = ldw4(bw + 1u + l % 8u); }
    return w;
//#endif
    if v0 { w.a = ldw4(bw); w.b = ldw4(bw + 1u + l % 8u); }
    return w;
}
//#if Q4K_PACK
// Q4K_PACK: the 6-bit (scale, min) pairs of sub-blocks 2p, 2p + 1 (p = q/2) decoded as two
// 16-bit lanes of one u32 each, without a select between the j < 4 and j ≥ 4 formulas (the
// per-lane shift/mask constants are loop-invariant), the scales applied to the integer dot
// products (|il·sc| ≤ 16·15·127·63 < 2^22) and int → float by the 2^23 + 2^22 bit trick
// (an add, not a quarter-rate conversion): ~25 instructions for what the select form spends
// ~60 on (counted in the WGSL; the driver's SASS is not visible through wgpu).
fn i2f(i: i32) -> f32 {
    return bitcast<f32>(i + 0x4b400000) - 12582912.0;
}
fn dp(wl: WL, c: u32, l: u32) -> f32 {
    let q = l % 8u;
    let h = wl.a;
    let w = wl.b;
//#if DIAG_LOADS
    // Diagnostic (KILN_WGPU_Q4K_DIAG=loads, wrong results): the same loads, no decode, to tell a
    // load-bound kernel from an ALU-bound one without a profiler.
    return bitcast<f32>((w.x ^ w.y ^ w.z ^ w.w ^ h.x ^ h.y ^ h.z ^ h.w) & 0x007fffffu);
//#endif
    // bytes jj, jj + 1 (jj = 2p % 4) of scales[0..4] (h.y), [4..8] (h.z), [8..12] (h.w):
    // j < 4: sc = y & 63, mn = z & 63; j ≥ 4: sc = (v & 15) | (y >> 6) << 4,
    // mn = (v >> 4) | (z >> 6) << 4 — per 16-bit lane, both bytes at once.
    let s = 16u * ((q / 2u) % 2u);
    let hi = q >= 4u;
    let s2 = select(0u, 2u, hi);
    let ma = select(0x3f3fu, 0x3030u, hi);
    let mb = select(0u, 0x0f0fu, hi);
    let y = h.y >> s;
    let z = h.z >> s;
    let v = h.w >> s;
    let scp = ((y >> s2) & ma) | (v & mb);
    let mnp = ((z >> s2) & ma) | ((v >> 4u) & mb);
    let m4 = 0x0f0f0f0fu;
    let il = dot4I8Packed(w.x & m4, xa.x) + dot4I8Packed(w.y & m4, xa.y)
           + dot4I8Packed(w.z & m4, xa.z) + dot4I8Packed(w.w & m4, xa.w);
    let ih = dot4I8Packed((w.x >> 4u) & m4, xb.x) + dot4I8Packed((w.y >> 4u) & m4, xb.y)
           + dot4I8Packed((w.z >> 4u) & m4, xb.z) + dot4I8Packed((w.w >> 4u) & m4, xb.w);
    let fl = i2f(il * i32(scp & 0xffu));
    let fh = i2f(ih * i32(scp >> 8u));
    let mn = bitcast<vec2<f32>>(vec2<u32>(mnp & 0xffu, mnp >> 8u) | vec2<u32>(MAGIC)) - vec2<f32>(8388608.0);
    let dm = unpack2x16float(h.x);
    return dm.x * (da.x * fl + db.x * fh) - dm.y * (mn.x * da.y + mn.y * db.y);
}
//#else
fn dp(wl: WL, c: u32, l: u32) -> f32 {
    let q = l % 8u;
    let h = wl.a;
    let w = wl.b;
    // 6-bit (scale, min) of groups j = 2(q/2) and j + 1 (get_scale_min_k4): bytes jj, jj + 1
    // of scales[0..4] (h.y), [4..8] (h.z), [8..12] (h.w) with jj = j % 4.
    let jj = (2u * (q / 2u)) % 4u;
    let sh = vec2<u32>(8u * jj, 8u * jj + 8u);
    let by = (vec2<u32>(h.y) >> sh) & vec2<u32>(255u);
    let bz = (vec2<u32>(h.z) >> sh) & vec2<u32>(255u);
    let bv = (vec2<u32>(h.w) >> sh) & vec2<u32>(255u);
    let hi = q >= 4u;
    let sc = select(by & vec2<u32>(63u), (bv & vec2<u32>(15u)) | ((by >> vec2<u32>(6u)) << vec2<u32>(4u)), hi);
    let mn = select(bz & vec2<u32>(63u), (bv >> vec2<u32>(4u)) | ((bz >> vec2<u32>(6u)) << vec2<u32>(4u)), hi);
    let scf = bitcast<vec2<f32>>(sc | vec2<u32>(MAGIC)) - vec2<f32>(8388608.0);
    let mnf = bitcast<vec2<f32>>(mn | vec2<u32>(MAGIC)) - vec2<f32>(8388608.0);
    let m4 = 0x0f0f0f0fu;
    let il = dot4I8Packed(w.x & m4, xa.x) + dot4I8Packed(w.y & m4, xa.y)
           + dot4I8Packed(w.z & m4, xa.z) + dot4I8Packed(w.w & m4, xa.w);
    let ih = dot4I8Packed((w.x >> 4u) & m4, xb.x) + dot4I8Packed((w.y >> 4u) & m4, xb.y)
           + dot4I8Packed((w.z >> 4u) & m4, xb.z) + dot4I8Packed((w.w >> 4u) & m4, xb.w);
    // d | dmin: the hardware f16 conversion (subnormal scales are checked by the gguf-py
    // vectors in tests/matmul.rs, on lavapipe and on the GPU)
    let dm = unpack2x16float(h.x);
    return dm.x * (scf.x * da.x * f32(il) + scf.y * db.x * f32(ih))
         - dm.y * (mnf.x * da.y + mnf.y * db.y);
}
//#endif
//#endif
//#endif

//#if XQG
// The next chunk's x groups (XQG, depth 1), loaded beside its weights.
var<private> pxa: vec4<u32>;
var<private> pxb: vec4<u32>;
var<private> pxc: vec4<u32>;
var<private> pxe: vec4<u32>;
var<private> pda: vec2<f32>;
var<private> pdb: vec2<f32>;
var<private> pdc: vec2<f32>;
var<private> pde: vec2<f32>;
//#endif

// Issue the loads of full chunk c's x groups (XQG) into the p* set; nothing otherwise.
fn pre_x(c: u32, l: u32) {
//#if XQG
    let s = array<vec4<u32>, 4>(xa, xb, xc, xe);
    let t = array<vec2<f32>, 4>(da, db, dc, de);
    load_x(c, l, true);
    pxa = xa; pxb = xb; pxc = xc; pxe = xe;
    pda = da; pdb = db; pdc = dc; pde = de;
    xa = s[0]; xb = s[1]; xc = s[2]; xe = s[3];
    da = t[0]; db = t[1]; dc = t[2]; de = t[3];
//#endif
}

// x of full chunk c for the decode: the p* set (XQG, loaded by pre_x) or workgroup memory.
fn x_now(c: u32, l: u32) {
//#if XQG
    xa = pxa; xb = pxb; xc = pxc; xe = pxe;
    da = pda; db = pdb; dc = pdc; de = pde;
//#else
    load_x(c, l, true);
//#endif
}

// The prefetched weights of the next chunk, one set per row.
var<private> n0: WL;
var<private> n1: WL;
var<private> n2: WL;
var<private> n3: WL;
var<private> n4: WL;
var<private> n5: WL;
var<private> n6: WL;
var<private> n7: WL;

// The second prefetch set (DEPTH = 2).
var<private> m0: WL;
var<private> m1: WL;
var<private> m2: WL;
var<private> m3: WL;
var<private> m4: WL;
var<private> m5: WL;
var<private> m6: WL;
var<private> m7: WL;

fn ld_all_m(c: u32, l: u32, rows: array<u32, 8>) {
    m0 = ld(rows[0], c, l);
    if NR > 1u {
        m1 = ld(rows[1], c, l);
    }
    if NR > 2u {
        m2 = ld(rows[2], c, l);
        m3 = ld(rows[3], c, l);
    }
    if NR > 4u {
        m4 = ld(rows[4], c, l);
        m5 = ld(rows[5], c, l);
        m6 = ld(rows[6], c, l);
        m7 = ld(rows[7], c, l);
    }
}

fn ld_all(c: u32, l: u32, rows: array<u32, 8>) {
    n0 = ld(rows[0], c, l);
    if NR > 1u {
        n1 = ld(rows[1], c, l);
    }
    if NR > 2u {
        n2 = ld(rows[2], c, l);
        n3 = ld(rows[3], c, l);
    }
    if NR > 4u {
        n4 = ld(rows[4], c, l);
        n5 = ld(rows[5], c, l);
        n6 = ld(rows[6], c, l);
        n7 = ld(rows[7], c, l);
    }
}

var<private> a0: f32;
var<private> a1: f32;
var<private> a2: f32;
var<private> a3: f32;
var<private> a4: f32;
var<private> a5: f32;
var<private> a6: f32;
var<private> a7: f32;

// Decode and accumulate the weights in n0..n7 (chunk c, x already in xa/xb).
fn acc_all(c: u32, l: u32) {
    acc8(n0, n1, n2, n3, n4, n5, n6, n7, c, l);
}

// Decode and accumulate one chunk's weights of the NR rows.
fn acc8(w0: WL, w1: WL, w2: WL, w3: WL, w4: WL, w5: WL, w6: WL, w7: WL, c: u32, l: u32) {
    a0 += dp(w0, c, l);
    if NR > 1u {
        a1 += dp(w1, c, l);
    }
    if NR > 2u {
        a2 += dp(w2, c, l);
        a3 += dp(w3, c, l);
    }
    if NR > 4u {
        a4 += dp(w4, c, l);
        a5 += dp(w5, c, l);
        a6 += dp(w6, c, l);
        a7 += dp(w7, c, l);
    }
}

var<workgroup> red: array<f32, 512>; // one per invocation, WGS ≤ 512

// The sum of v over the 32 invocations of team `team` (lane l), valid in lane 0.
fn team_sum(v: f32, li: u32, team: u32, l: u32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    for (var st = 16u; st > 0u; st = st / 2u) {
        if l < st {
            red[li] += red[li + st];
        }
        workgroupBarrier();
    }
    let t = red[team * 32u];
    workgroupBarrier();
    return t;
}

fn put(row: u32, v: f32) {
    if row < n_c_ {
        sto(o_off_ + P.r0 + row, v);
    }
}

@compute @workgroup_size(WGS)
fn gemv_x8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32,
//#if SG32
           @builtin(subgroup_id) sgid: u32, @builtin(subgroup_invocation_id) sgi: u32,
//#endif
) {
//#if SG32
    let team = sgid;
    let l = sgi;
//#else
    let team = li / 32u;
    let l = li % 32u;
//#endif
    // team = KS·g + s: row group g, k slice s (chunks s, s + KS, ...)
    let ks = team % KS;
//#if GLU
    let row0 = glu_row_group(wid.x + wid.y * nwg.x, team) * NR;
//#else
    let row0 = (part_setup(wid.x + wid.y * nwg.x) * (RW / KS) + team / KS) * NR;
//#endif
    let last = n_c_ - 1u;
    // Rows past the chunk read the last row (computed, never written).
    let rows = array<u32, 8>(min(row0, last), min(row0 + 1u, last), min(row0 + 2u, last),
                             min(row0 + 3u, last), min(row0 + 4u, last), min(row0 + 5u, last),
                             min(row0 + 6u, last), min(row0 + 7u, last));
    a0 = 0.0; a1 = 0.0; a2 = 0.0; a3 = 0.0; a4 = 0.0; a5 = 0.0; a6 = 0.0; a7 = 0.0;
    let nfull = P.k / CH;
    // full chunks: no masks; the first chunk's weight loads go out before x is rounded
    v0 = true;
    v1 = true;
    if ks < nfull {
        ld_all(ks, l, rows);
        pre_x(ks, l);
    }
    if DEPTH > 1u && ks + KS < nfull {
        ld_all_m(ks + KS, l, rows);
    }
//#if !XQG
//#if DIAG_NOX
    // diagnostic (KILN_WGPU_Q4K_DIAG=...,nox): no rounding of x, no barrier (x stays bound)
    if P.chunks == 0xffffffffu {
        quant_x(li);
    }
//#else
    quant_x(li);
    workgroupBarrier();
//#endif
//#endif
    if DEPTH > 1u {
        // chunk c from set n, then chunk c + KS from set m; each set is refilled with the
        // chunk 2·KS ahead right after it is taken
        for (var c = ks; c < nfull; c += 2u * KS) {
            load_x(c, l, true);
            let w0 = n0;
            let w1 = n1;
            let w2 = n2;
            let w3 = n3;
            let w4 = n4;
            let w5 = n5;
            let w6 = n6;
            let w7 = n7;
            if c + 2u * KS < nfull {
                ld_all(c + 2u * KS, l, rows);
            }
            acc8(w0, w1, w2, w3, w4, w5, w6, w7, c, l);
            if c + KS < nfull {
                load_x(c + KS, l, true);
                let u0 = m0;
                let u1 = m1;
                let u2 = m2;
                let u3 = m3;
                let u4 = m4;
                let u5 = m5;
                let u6 = m6;
                let u7 = m7;
                if c + 3u * KS < nfull {
                    ld_all_m(c + 3u * KS, l, rows);
                }
                acc8(u0, u1, u2, u3, u4, u5, u6, u7, c + KS, l);
            }
        }
    }
    for (var c = ks; c < nfull && DEPTH == 1u; c += KS) {
        x_now(c, l);
        // the weights (and XQG: x groups) of chunk c move to w*, then chunk c + KS's loads
        // are issued
        let w0 = n0;
        let w1 = n1;
        let w2 = n2;
        let w3 = n3;
        let w4 = n4;
        let w5 = n5;
        let w6 = n6;
        let w7 = n7;
        if c + KS < nfull {
            ld_all(c + KS, l, rows);
            pre_x(c + KS, l);
        }
        acc8(w0, w1, w2, w3, w4, w5, w6, w7, c, l);
    }
    if nfull < P.chunks && nfull % KS == ks {
        // the partial last chunk, with masks
        load_x(nfull, l, false);
        ld_all(nfull, l, rows);
        acc_all(nfull, l);
    }
//#if SG32
    a0 = subgroupAdd(a0);
    a1 = subgroupAdd(a1);
    a2 = subgroupAdd(a2);
    a3 = subgroupAdd(a3);
    a4 = subgroupAdd(a4);
    a5 = subgroupAdd(a5);
    a6 = subgroupAdd(a6);
    a7 = subgroupAdd(a7);
//#else
    a0 = team_sum(a0, li, team, l);
    if NR > 1u {
        a1 = team_sum(a1, li, team, l);
    }
    if NR > 2u {
        a2 = team_sum(a2, li, team, l);
        a3 = team_sum(a3, li, team, l);
    }
    if NR > 4u {
        a4 = team_sum(a4, li, team, l);
        a5 = team_sum(a5, li, team, l);
        a6 = team_sum(a6, li, team, l);
        a7 = team_sum(a7, li, team, l);
    }
//#endif
    if KS > 1u {
        // the row group's KS partial sums meet in red[8·team + row]; slice 0 adds them
        if l == 0u {
            let b = 8u * team;
            red[b] = a0; red[b + 1u] = a1; red[b + 2u] = a2; red[b + 3u] = a3;
            red[b + 4u] = a4; red[b + 5u] = a5; red[b + 6u] = a6; red[b + 7u] = a7;
        }
        workgroupBarrier();
        if l == 0u && ks == 0u {
            for (var s = 1u; s < KS; s++) {
                let b = 8u * (team + s);
                a0 += red[b]; a1 += red[b + 1u]; a2 += red[b + 2u]; a3 += red[b + 3u];
                a4 += red[b + 4u]; a5 += red[b + 5u]; a6 += red[b + 6u]; a7 += red[b + 7u];
            }
        }
    }
//#if GLU
    glu_out(team, l, row0);
//#else
    if l == 0u && ks == 0u {
        put(row0, a0);
        if NR > 1u {
            put(row0 + 1u, a1);
        }
        if NR > 2u {
            put(row0 + 2u, a2);
            put(row0 + 3u, a3);
        }
        if NR > 4u {
            put(row0 + 4u, a4);
            put(row0 + 5u, a5);
            put(row0 + 6u, a6);
            put(row0 + 7u, a7);
        }
    }
//#endif
}
