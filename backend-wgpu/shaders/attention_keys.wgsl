// attention_keys.wgsl — paged decode attention (one query token per sequence, or a few in
// turn) for f16/bf16 caches and head_dim 64/128/256, key-parallel: no K/V staging, four
// workgroup barriers per chunk of ≤ NK keys (attention_dec.wgsl stages every 32-key tile in
// workgroup memory behind five). Needs subgroups of ≥ 4 invocations (shuffles); everything
// else takes attention_dec.wgsl.
//
// Thread mapping: one workgroup of 128 invocations per (sequence, KV head, group of GH ≤ 8
// query heads of that KV head, split); lane ℓ = subgroup_id · subgroup_size +
// subgroup_invocation_id (so the 4 lanes of a key below share a subgroup whatever its size).
// The split's keys are walked in chunks of ≤ NK keys, each in three phases:
// - scores: lanes 4s .. 4s + 3 take key s of each round of 32 keys; lane p reads vec4s
//   4i + p (i < VPL = HD/32) of the key's K row (the 4 lanes read 64 contiguous bytes per
//   load: whole sectors) and dots them with the GH query rows (workgroup memory, broadcast
//   reads); two shuffle-xor steps sum the 4 partial dots. Scores (scale, softcap, the
//   query's causal/window range) go to workgroup memory as [key][quad of rows] vec4s; the
//   next round's K loads are issued before this round's math. The chunk's max per row:
//   subgroupMax, then one partial per subgroup.
// - exp: every invocation turns its share of the scores into p = exp(s − m) (m the running
//   max; 0 for a masked key) and keeps partial row sums.
// - V: invocation ℓ owns vec4 column cv = ℓ mod W4 (8 dims) and key phase ℓ / W4 (128 / W4
//   phases: HD 128 → 8), reads V rows coalesced (W4 lanes = one 2·HD-byte row; the rows'
//   addresses were noted by the scores phase), VU = 8 keys per step, and accumulates p·v
//   for all GH rows (rows in vec4 quads: no indexed private arrays, no dynamic vector
//   indexing — both cost 2–4× on NVIDIA's Vulkan, BENCHMARKS.md "vattn").
// Online softmax across chunks: a chunk whose max exceeds the running max rescales the
// accumulators and sums by exp(m_old − m_new). At the end the key phases are summed (shuffle-xor
// inside a subgroup, then workgroup memory, one quad of rows at a time) and the row is written
// normalized to O, or with SPLIT as (acc, max, sum) to S for attention.wgsl's `combine`.
//
// Bytes: each visible K and V row of the (sequence, KV head) once per head group (once in
// all when n_heads / n_kv ≤ 8): 2·kv_len·HD·2 bytes; q GH·HD·4, out GH·HD·4 (+ split rows).
// FLOPs ≈ 4·HD per (row, key): scores from K in registers and q by broadcast reads (one
// 16-byte workgroup read per 4 FMAs per lane), V from registers and p by broadcast reads.
// Workgroup memory: GH·HD·4 (q) + max(NK·NQ, 1024)·16 (scores; the phase merge) + NK·4 (row
// addresses) bytes ≤ 26 KiB.

const HD: u32 = {{HD}}u;   // head_dim: 64, 128 or 256
const GH: u32 = {{GH}}u;   // query heads per workgroup (≤ 8)
const NQ: u32 = (GH + 3u) / 4u; // quads of rows
const W4: u32 = HD / 8u;   // vec4s of a K/V row (8 16-bit elements each)
const VPL: u32 = W4 / 4u;  // vec4s of a K row per lane (2, 4, 8)
const NK: u32 = {{NK}}u;   // keys per chunk (a multiple of 32)
const NPV: u32 = 128u / W4; // V key phases
const VU: u32 = {{VU}}u;   // V keys per step (loads in flight per lane): 8, or 4 (a knob)
const NEG: f32 = -3.4028235e38;
override SPLIT: bool = false;

// Params: attn_params.wgsl.

// Bindings: attn_kv4.wgsl.

// Two cache elements of one word.
{{UNPACK}}

var<workgroup> qsm: array<vec4<f32>, {{QS_N}}>; // [GH][HD/4]
var<workgroup> psq: array<vec4<f32>, {{PS_N}}>; // [key][NQ] scores → p; then the phase merge
var<workgroup> pm: array<vec4<f32>, 64>;        // [subgroup][NQ] maxima; then row sums
var<workgroup> kr4: array<u32, NK>;             // [key] vec4 index of its K/V row (chunk)

// Running state of the workgroup's rows (quads: rows 0..3, 4..7).
var<private> m0: vec4<f32>;
var<private> m1: vec4<f32>;
var<private> l0: vec4<f32>; // this lane's partial sums
var<private> l1: vec4<f32>;
// Accumulators: row r, dims 8·cv + 0..3 (a) and + 4..7 (b).
var<private> a0: vec4<f32>;
var<private> a1: vec4<f32>;
var<private> a2: vec4<f32>;
var<private> a3: vec4<f32>;
var<private> a4: vec4<f32>;
var<private> a5: vec4<f32>;
var<private> a6: vec4<f32>;
var<private> a7: vec4<f32>;
var<private> b0: vec4<f32>;
var<private> b1: vec4<f32>;
var<private> b2: vec4<f32>;
var<private> b3: vec4<f32>;
var<private> b4: vec4<f32>;
var<private> b5: vec4<f32>;
var<private> b6: vec4<f32>;
var<private> b7: vec4<f32>;

// One key's VPL vec4s of K for this lane (next round's, loaded ahead).
var<private> k0: vec4<u32>;
var<private> k1: vec4<u32>;
var<private> k2: vec4<u32>;
var<private> k3: vec4<u32>;
var<private> k4: vec4<u32>;
var<private> k5: vec4<u32>;
var<private> k6: vec4<u32>;
var<private> k7: vec4<u32>;
// The row (vec4 index, no view offset) of the key those loads belong to.
var<private> kq: u32;

// vec4 index of (key, vec4 w of its row) in the K/V arrays (before the view offset).
fn row4(key: u32, w: u32, bt0: u32, kvh: u32) -> u32 {
    let blk = u32(BT[bt0 + key / P.block_size]);
    return ((blk * P.n_kv + kvh) * P.block_size + key % P.block_size) * W4 + w;
}

fn load_k(key: u32, p: u32, bt0: u32, kvh: u32) {
    kq = row4(key, 0u, bt0, kvh);
    let r = kq + p + P.k_off / 8u;
    k0 = K[r];
    k1 = K[r + 4u];
    if VPL > 2u {
        k2 = K[r + 8u];
        k3 = K[r + 12u];
    }
    if VPL > 4u {
        k4 = K[r + 16u];
        k5 = K[r + 20u];
        k6 = K[r + 24u];
        k7 = K[r + 28u];
    }
}

// Σ over the lane's 8 elements of K vec4 i (vec4 index w = 4i + p) times row r of q.
fn dq(r: u32, w: u32, k: vec4<u32>) -> f32 {
    let qb = r * (HD / 4u) + 2u * w;
    let x = vec4<f32>(unpack_kv(k.x), unpack_kv(k.y));
    let y = vec4<f32>(unpack_kv(k.z), unpack_kv(k.w));
    return dot(qsm[qb], x) + dot(qsm[qb + 1u], y);
}

fn dk(r: u32, p: u32, ks: array<vec4<u32>, 8>) -> f32 {
    var d = dq(r, p, ks[0]) + dq(r, 4u + p, ks[1]);
    if VPL > 2u {
        d += dq(r, 8u + p, ks[2]) + dq(r, 12u + p, ks[3]);
    }
    if VPL > 4u {
        d += dq(r, 16u + p, ks[4]) + dq(r, 20u + p, ks[5]) + dq(r, 24u + p, ks[6])
           + dq(r, 28u + p, ks[7]);
    }
    return d;
}

// Partial dots of the GH rows with this lane's share of one key (quads; rows ≥ GH are 0).
fn dots(p: u32, ks: array<vec4<u32>, 8>) -> array<vec4<f32>, 2> {
    var s = array<vec4<f32>, 2>(vec4<f32>(), vec4<f32>());
    s[0].x = dk(0u, p, ks);
    if GH > 1u { s[0].y = dk(1u, p, ks); }
    if GH > 2u { s[0].z = dk(2u, p, ks); }
    if GH > 3u { s[0].w = dk(3u, p, ks); }
    if GH > 4u { s[1].x = dk(4u, p, ks); }
    if GH > 5u { s[1].y = dk(5u, p, ks); }
    if GH > 6u { s[1].z = dk(6u, p, ks); }
    if GH > 7u { s[1].w = dk(7u, p, ks); }
    return s;
}

// acc_r += p_r · v for the GH rows.
fn acc(pa: vec4<f32>, pb: vec4<f32>, x: vec4<f32>, y: vec4<f32>) {
    a0 += pa.x * x; b0 += pa.x * y;
    if GH > 1u { a1 += pa.y * x; b1 += pa.y * y; }
    if GH > 2u { a2 += pa.z * x; b2 += pa.z * y; }
    if GH > 3u { a3 += pa.w * x; b3 += pa.w * y; }
    if GH > 4u { a4 += pb.x * x; b4 += pb.x * y; }
    if GH > 5u { a5 += pb.y * x; b5 += pb.y * y; }
    if GH > 6u { a6 += pb.z * x; b6 += pb.z * y; }
    if GH > 7u { a7 += pb.w * x; b7 += pb.w * y; }
}

// acc += p(key j of the chunk) · its V vec4 w.
fn vacc(j: u32, w: vec4<u32>) {
    var p1 = vec4<f32>();
    if GH > 4u {
        p1 = psq[j * NQ + 1u];
    }
    acc(psq[j * NQ], p1, vec4<f32>(unpack_kv(w.x), unpack_kv(w.y)),
        vec4<f32>(unpack_kv(w.z), unpack_kv(w.w)));
}

fn rescale(ca: vec4<f32>, cb: vec4<f32>) {
    a0 *= ca.x; b0 *= ca.x; a1 *= ca.y; b1 *= ca.y; a2 *= ca.z; b2 *= ca.z;
    a3 *= ca.w; b3 *= ca.w; a4 *= cb.x; b4 *= cb.x; a5 *= cb.y; b5 *= cb.y;
    a6 *= cb.z; b6 *= cb.z; a7 *= cb.w; b7 *= cb.w;
    l0 *= ca;
    l1 *= cb;
}

// Sum of a quad over the 4 lanes of a key.
fn sum4(v: vec4<f32>) -> vec4<f32> {
    let u = v + subgroupShuffleXor(v, 1u);
    return u + subgroupShuffleXor(u, 2u);
}

// The accumulators of row r: (a: dims 0..3 of the lane's 8, b: 4..7).
fn row_ab(r: u32) -> array<vec4<f32>, 2> {
    switch r {
        case 0u: { return array<vec4<f32>, 2>(a0, b0); }
        case 1u: { return array<vec4<f32>, 2>(a1, b1); }
        case 2u: { return array<vec4<f32>, 2>(a2, b2); }
        case 3u: { return array<vec4<f32>, 2>(a3, b3); }
        case 4u: { return array<vec4<f32>, 2>(a4, b4); }
        case 5u: { return array<vec4<f32>, 2>(a5, b5); }
        case 6u: { return array<vec4<f32>, 2>(a6, b6); }
        default: { return array<vec4<f32>, 2>(a7, b7); }
    }
}

@compute @workgroup_size(128)
fn attn_keys(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(subgroup_id) sgid: u32, @builtin(subgroup_invocation_id) sgi: u32,
             @builtin(subgroup_size) sgs: u32) {
    let n_hg = P.n_heads / P.n_kv / GH; // head groups per KV head
    let id = wid.x + wid.y * nwg.x;     // (seq · n_kv + kvh) · n_hg + hg
    if id >= P.n_seqs * P.n_kv * n_hg {
        return; // uniform: the whole workgroup
    }
    let ln = sgid * sgs + sgi;          // lane ℓ
    let nsg = 128u / sgs;               // subgroups
    let wg = seq_wg(id, n_hg, 1u, GH); // sequence, heads, batch entries
    let s = wg.s;
    let slot = ln / 4u;  // key slot of the scores phase
    let p = ln % 4u;     // the lane's quarter of a K row
    let cv = ln % W4;    // V vec4 column
    let ph = ln / W4;    // V key phase
    // A decode batch holds one query per sequence; a sequence of q_len ≠ 1 is served too,
    // one query after the other.
    for (var t = 0u; t < wg.q_len; t++) {
        let pos = wg.kv_len - wg.q_len + t;
        let kr = key_range(pos, wg.kv_len);
        // the split's keys: whole rounds of 32
        let rounds = (kr.y - kr.x + 31u) / 32u;
        let per = (rounds + P.n_splits - 1u) / P.n_splits;
        let kb = kr.x + min(wid.z * per, rounds) * 32u;
        let ke = min(kr.x + min(wid.z * per + per, rounds) * 32u, kr.y);
        for (var i = ln; i < GH * HD / 4u; i += 128u) {
            let r = i / (HD / 4u);
            let b = P.q_off + ((wg.q0 + t) * P.n_heads + wg.h0 + r) * HD + 4u * (i % (HD / 4u));
            qsm[i] = vec4<f32>(Q[b], Q[b + 1u], Q[b + 2u], Q[b + 3u]);
        }
        m0 = vec4<f32>(NEG); m1 = m0;
        l0 = vec4<f32>(); l1 = l0;
        a0 = l0; a1 = l0; a2 = l0; a3 = l0; a4 = l0; a5 = l0; a6 = l0; a7 = l0;
        b0 = l0; b1 = l0; b2 = l0; b3 = l0; b4 = l0; b5 = l0; b6 = l0; b7 = l0;
        if kb < ke {
            load_k(min(kb + slot, ke - 1u), p, wg.bt0, wg.kvh);
        }
        for (var cb = kb; cb < ke; cb += NK) {
            let ce = min(cb + NK, ke);
            workgroupBarrier(); // qsm written; the previous chunk's p and V reads are done
            // scores of the chunk's keys, a round of 32 at a time
            var x0 = vec4<f32>(NEG);
            var x1 = vec4<f32>(NEG);
            for (var rb = cb; rb < ce; rb += 32u) {
                let ks = array<vec4<u32>, 8>(k0, k1, k2, k3, k4, k5, k6, k7);
                let krow = kq;
                let key = rb + slot;
                let nxt = select(rb + 32u, cb + NK, rb + 32u >= ce); // next round or chunk
                if nxt < ke {
                    load_k(min(nxt + slot, ke - 1u), p, wg.bt0, wg.kvh);
                }
                let d = dots(p, ks);
                var s0 = sum4(d[0]) * P.scale;
                var s1 = vec4<f32>();
                if GH > 4u {
                    s1 = sum4(d[1]) * P.scale;
                }
                if P.softcap > 0.0 {
                    s0 = P.softcap * tanh(clamp(s0 / P.softcap, vec4<f32>(-10.0), vec4<f32>(10.0)));
                    s1 = P.softcap * tanh(clamp(s1 / P.softcap, vec4<f32>(-10.0), vec4<f32>(10.0)));
                }
                let vis = key < ce;
                s0 = select(vec4<f32>(NEG), s0, vis);
                s1 = select(vec4<f32>(NEG), s1, vis);
                x0 = max(x0, s0);
                x1 = max(x1, s1);
                if vis && p < NQ {
                    psq[(key - cb) * NQ + p] = select(s0, s1, p == 1u);
                }
                if vis && p == 3u {
                    kr4[key - cb] = krow; // the V phase reads the row from here
                }
            }
            x0 = subgroupMax(x0);
            x1 = subgroupMax(x1);
            if sgi == 0u {
                pm[sgid * 2u] = x0;
                pm[sgid * 2u + 1u] = x1;
            }
            workgroupBarrier();
            var n0 = m0;
            var n1 = m1;
            for (var g = 0u; g < nsg; g++) {
                n0 = max(n0, pm[g * 2u]);
                n1 = max(n1, pm[g * 2u + 1u]);
            }
            // rows with no visible key yet keep max NEG: exp(NEG − NEG) = 1 scales zeros
            rescale(exp(m0 - n0), exp(m1 - n1));
            m0 = n0;
            m1 = n1;
            for (var e = ln; e < (ce - cb) * NQ; e += 128u) {
                let v = psq[e];
                let mq = select(n0, n1, e % NQ == 1u);
                let pr = select(exp(v - mq), vec4<f32>(), v == vec4<f32>(NEG));
                psq[e] = pr;
                if e % NQ == 1u { l1 += pr; } else { l0 += pr; }
            }
            workgroupBarrier();
            // V: keys ph, ph + NPV, ... of the chunk, VU per step (rows from kr4: no
            // block-table load in front of the V loads)
            let nc = ce - cb;
            let vo = P.v_off / 8u + cv;
            for (var j = ph; j < nc; j += VU * NPV) {
                let j1 = select(j, j + NPV, j + NPV < nc);
                let j2 = select(j, j + 2u * NPV, j + 2u * NPV < nc);
                let j3 = select(j, j + 3u * NPV, j + 3u * NPV < nc);
                let w0 = V[kr4[j] + vo];
                let w1 = V[kr4[j1] + vo];
                let w2 = V[kr4[j2] + vo];
                let w3 = V[kr4[j3] + vo];
                if VU == 8u {
                    let j4 = select(j, j + 4u * NPV, j + 4u * NPV < nc);
                    let j5 = select(j, j + 5u * NPV, j + 5u * NPV < nc);
                    let j6 = select(j, j + 6u * NPV, j + 6u * NPV < nc);
                    let j7 = select(j, j + 7u * NPV, j + 7u * NPV < nc);
                    let w4 = V[kr4[j4] + vo];
                    let w5 = V[kr4[j5] + vo];
                    let w6 = V[kr4[j6] + vo];
                    let w7 = V[kr4[j7] + vo];
                    if j4 != j { vacc(j4, w4); }
                    if j5 != j { vacc(j5, w5); }
                    if j6 != j { vacc(j6, w6); }
                    if j7 != j { vacc(j7, w7); }
                }
                vacc(j, w0);
                if j1 != j { vacc(j1, w1); }
                if j2 != j { vacc(j2, w2); }
                if j3 != j { vacc(j3, w3); }
            }
        }
        // Row sums: every lane's partials, summed over the subgroup, one per subgroup.
        let ls0 = subgroupAdd(l0);
        let ls1 = subgroupAdd(l1);
        // Key phases: shuffle-xor inside the subgroup (phases ph and ph ^ 1, ... share it
        // when the subgroup is wider than a row), then workgroup memory.
        for (var o = W4; o < sgs; o *= 2u) {
            a0 += subgroupShuffleXor(a0, o); b0 += subgroupShuffleXor(b0, o);
            a1 += subgroupShuffleXor(a1, o); b1 += subgroupShuffleXor(b1, o);
            a2 += subgroupShuffleXor(a2, o); b2 += subgroupShuffleXor(b2, o);
            a3 += subgroupShuffleXor(a3, o); b3 += subgroupShuffleXor(b3, o);
            if GH > 4u {
                a4 += subgroupShuffleXor(a4, o); b4 += subgroupShuffleXor(b4, o);
                a5 += subgroupShuffleXor(a5, o); b5 += subgroupShuffleXor(b5, o);
                a6 += subgroupShuffleXor(a6, o); b6 += subgroupShuffleXor(b6, o);
                a7 += subgroupShuffleXor(a7, o); b7 += subgroupShuffleXor(b7, o);
            }
        }
        let npw = max(sgs, W4);     // lanes per surviving partial
        let np = 128u / npw;        // surviving partials
        let pi = ln / npw;
        let writer = ln % npw < W4; // holds its partial's sum for column cv
        workgroupBarrier(); // V reads of psq done; pm's maxima read
        if sgi == 0u {
            pm[sgid * 2u] = ls0;
            pm[sgid * 2u + 1u] = ls1;
        }
        for (var qd = 0u; qd < NQ; qd++) {
            if qd > 0u {
                workgroupBarrier(); // the previous quad's sums are read
            }
            if writer {
                let b = (pi * W4 + cv) * 8u;
                for (var rr = 0u; rr < 4u; rr++) {
                    let ab = row_ab(4u * qd + rr);
                    psq[b + 2u * rr] = ab[0];
                    psq[b + 2u * rr + 1u] = ab[1];
                }
            }
            workgroupBarrier();
            if ln < W4 {
                var lq = vec4<f32>();
                for (var g = 0u; g < nsg; g++) {
                    lq += pm[g * 2u + qd];
                }
                let mq = select(m0, m1, qd == 1u);
                for (var rr = 0u; rr < min(4u, GH - 4u * qd); rr++) {
                    var sa = vec4<f32>();
                    var sb = vec4<f32>();
                    for (var i = 0u; i < np; i++) {
                        let b = (i * W4 + cv) * 8u + 2u * rr;
                        sa += psq[b];
                        sb += psq[b + 1u];
                    }
                    let r = 4u * qd + rr;
                    let th = (wg.q0 + t) * P.n_heads + wg.h0 + r;
                    let lg = comp(lq, rr);
                    if SPLIT {
                        let sb0 = P.s_off + (th * P.n_splits + wid.z) * (HD + 2u) + 8u * cv;
                        S[sb0] = sa.x; S[sb0 + 1u] = sa.y; S[sb0 + 2u] = sa.z; S[sb0 + 3u] = sa.w;
                        S[sb0 + 4u] = sb.x; S[sb0 + 5u] = sb.y; S[sb0 + 6u] = sb.z; S[sb0 + 7u] = sb.w;
                        if cv == 0u {
                            let sm = P.s_off + (th * P.n_splits + wid.z) * (HD + 2u) + HD;
                            S[sm] = comp(mq, rr);
                            S[sm + 1u] = lg;
                        }
                    } else {
                        let inv = select(0.0, 1.0 / lg, lg > 0.0);
                        let ob = P.o_off + th * HD + 8u * cv;
                        O[ob] = sa.x * inv; O[ob + 1u] = sa.y * inv;
                        O[ob + 2u] = sa.z * inv; O[ob + 3u] = sa.w * inv;
                        O[ob + 4u] = sb.x * inv; O[ob + 5u] = sb.y * inv;
                        O[ob + 6u] = sb.z * inv; O[ob + 7u] = sb.w * inv;
                    }
                }
            }
        }
        workgroupBarrier(); // qsm / psq / pm are rewritten for the next query
    }
}
