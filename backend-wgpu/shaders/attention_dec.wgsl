// attention_dec.wgsl — paged decode attention (one query token per sequence), GQA/MQA,
// window, softcap; head_dim 64/128/256 (f16/bf16 caches) or 32..256 (f32), power of two.
//
// Thread mapping: one workgroup of 128 invocations per (sequence, KV head, group of GH query
// heads of that KV head, split). GH (≤ 8) query heads share every K/V byte the workgroup
// reads, so K/V of a GQA group are read once, not once per query head. Keys are walked in
// tiles of TK = 2048 / W keys (W = u32 words per K/V row: hd/2 for 16-bit caches, hd for
// f32), 8 KiB of K and 8 KiB of V per tile:
// - staging: invocation li loads vec4 words li + 128·r (r < 4) of the K and of the V tile
//   (rows of one key are W/4 consecutive vec4s: coalesced) into registers, one tile AHEAD
//   (the loads of tile t+1 are in flight while tile t is computed), then stores them to
//   workgroup memory (K rows padded to W+1 words so the score reads below hit distinct banks);
// - scores: task u = g·TK + j (head g, key j), u = li, li+128, ...: q_g·k_j over the row
//   (q of the GH heads in workgroup memory), scale, softcap, mask → ps;
// - online softmax per head: 8 partial maxima per head, every invocation folds them into
//   its copy of the running max m[g] (uniform), the score tasks turn ps into p = exp(s − m);
// - V: invocation li owns word column c = li mod W (two output dims for 16-bit caches; W =
//   256 takes columns li and li+128) and phase li / W of the tile's keys (128/W phases split
//   the keys), accumulating p·v for all GH heads from one V read; phases are summed at the
//   end (they share m, so the sum is exact).
// Without SPLIT the normalized output goes to O; with SPLIT, split z takes a contiguous share
// of the tiles and writes (acc, max, sum) rows to S for attention.wgsl's `combine`.
// Bytes: every (sequence, KV head) reads its visible K and V rows once per query-head group
// (once in all when G ≤ 8): 2·kv_len·hd·elem bytes; FLOPs ≈ 4·hd per (query head, key).

const HD: u32 = {{HD}}u;  // head_dim
const EPW: u32 = {{EPW}}u; // elements per u32 word of the cache (2: f16/bf16, 1: f32)
const GH: u32 = {{GH}}u;  // query heads per workgroup
const W: u32 = HD / EPW;  // words per K/V row
const W4: u32 = W / 4u;   // vec4s per row
const TK: u32 = {{TK}}u;  // keys per tile: 2048 / W
const KS: u32 = W + 1u;   // K row stride in workgroup memory (words)
const QS: u32 = HD + 1u;  // q row stride in workgroup memory
const NPH: u32 = {{NPH}}u; // V phases (key subsets): max(128 / W, 1)
const CPI: u32 = {{CPI}}u; // V word columns per invocation: max(W / 128, 1)
const NEG: f32 = -3.4028235e38;
override SPLIT: bool = false;

struct Params {
    n_tokens: u32,
    n_heads: u32,
    n_kv: u32,
    head_dim: u32,
    n_seqs: u32,
    block_size: u32,
    max_blocks: u32,
    n_splits: u32,
    scale: f32,
    softcap: f32,   // 0 = off
    window: u32,    // 0 = off
    causal: u32,
    q_off: u32,
    k_off: u32,     // elements (a multiple of 4·EPW: vec4-aligned)
    v_off: u32,
    o_off: u32,
    qs_off: u32,
    kl_off: u32,
    bt_off: u32,
    s_off: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> Q: array<f32>;   // [n_tokens, n_heads, hd]
@group(0) @binding(2) var<storage, read> K: array<vec4<u32>>;   // [blocks, n_kv, bs, W/4]
@group(0) @binding(3) var<storage, read> V: array<vec4<u32>>;   // [blocks, n_kv, bs, W/4]
@group(0) @binding(4) var<storage, read_write> QST: array<i32>; // [n_seqs + 1]
@group(0) @binding(5) var<storage, read_write> KL: array<i32>;  // [n_seqs]
@group(0) @binding(6) var<storage, read_write> BT: array<i32>;  // [n_seqs, max_blocks]
@group(0) @binding(7) var<storage, read_write> O: array<f32>;   // [n_tokens, n_heads, hd]
@group(0) @binding(8) var<storage, read_write> S: array<f32>;   // [n_tokens·n_heads, splits, hd + 2]

// Two cache elements of one word (the second is 0 for f32 caches).
{{UNPACK}}

var<workgroup> kt: array<u32, 2112>;        // TK rows of KS words (≤ 2048 + 64); merge area
var<workgroup> vt: array<vec4<u32>, 512>;   // TK rows of W words
var<workgroup> qsm: array<f32, 2056>;       // GH rows of QS floats
var<workgroup> ps: array<f32, 512>;         // GH · TK scores, then probabilities
var<workgroup> pm: array<f32, 64>;          // GH · 8 partial maxima; then GH · NPH sums

// The next tile's K/V vec4s of this invocation (registers).
var<private> kr: array<vec4<u32>, 4>;
var<private> vr: array<vec4<u32>, 4>;

// Registers ← the tile of keys kb.. (zeros past k_hi: masked keys never read the cache).
fn fetch(li: u32, kb: u32, k_hi: u32, bt0: u32, kvh: u32) {
    let ko = P.k_off / (4u * EPW);
    let vo = P.v_off / (4u * EPW);
    for (var r = 0u; r < 4u; r++) {
        let i = li + 128u * r;
        let key = kb + i / W4;
        var kv4 = vec4<u32>();
        var vv4 = vec4<u32>();
        if key < k_hi {
            let blk = u32(BT[bt0 + key / P.block_size]);
            let row = ((blk * P.n_kv + kvh) * P.block_size + key % P.block_size) * W4 + i % W4;
            kv4 = K[ko + row];
            vv4 = V[vo + row];
        }
        kr[r] = kv4;
        vr[r] = vv4;
    }
}

@compute @workgroup_size(128)
fn attn_dec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let n_hg = P.n_heads / P.n_kv / GH; // head groups per KV head
    let id = wid.x + wid.y * nwg.x;     // (seq · n_kv + kvh) · n_hg + hg
    if id >= P.n_seqs * P.n_kv * n_hg {
        return; // uniform: the whole workgroup
    }
    let s = id / (P.n_kv * n_hg);
    let kvh = (id / n_hg) % P.n_kv;
    let h0 = kvh * (P.n_heads / P.n_kv) + (id % n_hg) * GH; // first query head
    let bt0 = P.bt_off + s * P.max_blocks;
    let q0 = u32(QST[P.qs_off + s]);
    let q_len = u32(max(QST[P.qs_off + s + 1u] - QST[P.qs_off + s], 0));
    let kv_len = u32(max(KL[P.kl_off + s], 0));
    let c = li % W;              // V word column (W ≤ 128; else columns li, li + 128)
    let ph = li / min(W, 128u);  // V phase
    // One query per sequence is the case this kernel is for; a sequence of q_len ≠ 1 in a
    // batch of n_tokens = n_seqs is served too, one query after the other.
    for (var qi = 0u; qi < q_len; qi++) {
        let tok = q0 + qi;
        let qpos = kv_len - q_len + qi;
        var k_hi = kv_len;
        if P.causal != 0u {
            k_hi = min(k_hi, qpos + 1u);
        }
        var k_lo = 0u;
        if P.window != 0u && qpos + 1u > P.window {
            k_lo = qpos + 1u - P.window;
        }
        let n_tiles = (max(k_hi, k_lo) - k_lo + TK - 1u) / TK;
        let per = (n_tiles + P.n_splits - 1u) / P.n_splits;
        let t0 = min(wid.z * per, n_tiles);
        let t1 = min(t0 + per, n_tiles);

        for (var i = li; i < GH * HD; i += 128u) {
            qsm[(i / HD) * QS + i % HD] = Q[P.q_off + (tok * P.n_heads + h0) * HD + i];
        }
        if t0 < t1 {
            fetch(li, k_lo + t0 * TK, k_hi, bt0, kvh);
        }
        var m: array<f32, GH>;
        var lsum: array<f32, GH>;
        var acc: array<vec2<f32>, GH * CPI>;
        for (var g = 0u; g < GH; g++) {
            m[g] = NEG;
            lsum[g] = 0.0;
        }
        for (var a = 0u; a < GH * CPI; a++) {
            acc[a] = vec2<f32>();
        }

        for (var t = t0; t < t1; t++) {
            workgroupBarrier(); // the previous tile's readers are done (and qsm is written)
            for (var r = 0u; r < 4u; r++) {
                let i = li + 128u * r;
                let j = i / W4;
                let w = (i % W4) * 4u;
                kt[j * KS + w] = kr[r].x;
                kt[j * KS + w + 1u] = kr[r].y;
                kt[j * KS + w + 2u] = kr[r].z;
                kt[j * KS + w + 3u] = kr[r].w;
                vt[i] = vr[r];
            }
            workgroupBarrier();
            let kb = k_lo + t * TK;
            if t + 1u < t1 {
                fetch(li, kb + TK, k_hi, bt0, kvh); // in flight during this tile's math
            }
            // scores
            for (var u = li; u < GH * TK; u += 128u) {
                let g = u / TK;
                let j = u % TK;
                var sc = NEG;
                if kb + j < k_hi {
                    var d0 = 0.0;
                    var d1 = 0.0;
                    let kbase = j * KS;
                    let qb = g * QS;
                    for (var w = 0u; w < W; w++) {
                        let kk = unpack_kv(kt[kbase + w]);
                        if EPW == 2u {
                            d0 += qsm[qb + 2u * w] * kk.x;
                            d1 += qsm[qb + 2u * w + 1u] * kk.y;
                        } else {
                            d0 += qsm[qb + w] * kk.x;
                        }
                    }
                    sc = (d0 + d1) * P.scale;
                    if P.softcap > 0.0 {
                        sc = P.softcap * tanh(clamp(sc / P.softcap, -10.0, 10.0));
                    }
                }
                ps[u] = sc;
            }
            workgroupBarrier();
            if li < GH * 8u {
                let g = li / 8u;
                var mx = NEG;
                for (var j = li % 8u; j < TK; j += 8u) {
                    mx = max(mx, ps[g * TK + j]);
                }
                pm[li] = mx;
            }
            workgroupBarrier();
            var alpha: array<f32, GH>;
            for (var g = 0u; g < GH; g++) {
                var mx = m[g];
                for (var i = 0u; i < 8u; i++) {
                    mx = max(mx, pm[g * 8u + i]);
                }
                alpha[g] = exp(m[g] - mx);
                m[g] = mx;
            }
            for (var u = li; u < GH * TK; u += 128u) {
                var mg = 0.0;
                for (var g = 0u; g < GH; g++) {
                    mg = select(mg, m[g], g == u / TK); // a register, not an indexed array
                }
                ps[u] = exp(ps[u] - mg);
            }
            workgroupBarrier();
            for (var g = 0u; g < GH; g++) {
                lsum[g] *= alpha[g];
                for (var ci = 0u; ci < CPI; ci++) {
                    acc[g * CPI + ci] *= alpha[g];
                }
            }
            var pj: array<f32, GH>;
            for (var j = ph; j < TK; j += NPH) {
                for (var g = 0u; g < GH; g++) {
                    pj[g] = ps[g * TK + j];
                    lsum[g] += pj[g];
                }
                for (var ci = 0u; ci < CPI; ci++) {
                    let wi = j * W + c + ci * 128u;
                    let vv = unpack_kv(vt[wi / 4u][wi % 4u]);
                    for (var g = 0u; g < GH; g++) {
                        acc[g * CPI + ci] += pj[g] * vv;
                    }
                }
            }
        }

        // Sum the phases (NPH > 1): phase p > 0 parks its acc and sums in kt / pm.
        if NPH > 1u {
            workgroupBarrier();
            if ph > 0u {
                for (var g = 0u; g < GH; g++) {
                    let b = (((ph - 1u) * GH + g) * W + c) * 2u;
                    kt[b] = bitcast<u32>(acc[g].x);
                    kt[b + 1u] = bitcast<u32>(acc[g].y);
                }
            }
            if c == 0u {
                for (var g = 0u; g < GH; g++) {
                    pm[ph * GH + g] = lsum[g];
                }
            }
            workgroupBarrier();
            if ph == 0u {
                for (var g = 0u; g < GH; g++) {
                    for (var p = 1u; p < NPH; p++) {
                        let b = (((p - 1u) * GH + g) * W + c) * 2u;
                        acc[g] += vec2<f32>(bitcast<f32>(kt[b]), bitcast<f32>(kt[b + 1u]));
                        lsum[g] += pm[p * GH + g];
                    }
                }
            }
        }
        if ph == 0u {
            for (var g = 0u; g < GH; g++) {
                let th = tok * P.n_heads + h0 + g;
                for (var ci = 0u; ci < CPI; ci++) {
                    let d = (c + ci * 128u) * EPW; // first output dim of this word column
                    let a = acc[g * CPI + ci];
                    if SPLIT {
                        let sb = P.s_off + (th * P.n_splits + wid.z) * (HD + 2u);
                        S[sb + d] = a.x;
                        if EPW == 2u {
                            S[sb + d + 1u] = a.y;
                        }
                        if li == 0u && ci == 0u {
                            S[sb + HD] = m[g];
                            S[sb + HD + 1u] = lsum[g];
                        }
                    } else {
                        let inv = select(0.0, 1.0 / lsum[g], lsum[g] > 0.0);
                        let ob = P.o_off + th * HD;
                        O[ob + d] = a.x * inv;
                        if EPW == 2u {
                            O[ob + d + 1u] = a.y * inv;
                        }
                    }
                }
            }
        }
        workgroupBarrier(); // kt / pm / qsm are rewritten for the next query
    }
}
