// gemv_x8m.wgsl — gemv_x8 for MX x rows at once (2 ≤ m ≤ 8: small-batch decode), included
// after gemv_x8.wgsl (whose weight loads, lane mapping, x-group loads and team sums it uses)
// with XQG defined: y[i, :] = x[i, :]·Wᵀ for i < MX, Q8_0 and Q4_K (Q4_K: the Q4K_PACK decode).
// The MX rows of x (f32 [MX, k], rows contiguous, k a multiple of 16) are rounded to int8 per
// group of 16 by the quant_x8 pre-pass into xq_buf (rows one after the other: row i's group g
// at i·P.mx.y + g, P.mx.y = k/16), the same rounding as the one-row kernel (round_x8.wgsl).
//
// Thread mapping: as gemv_x8 with KS = 1: a workgroup is RW teams of 32 invocations, team t
// owns NR ≤ 4 consecutive weight rows, lane l takes the same weight vec4s per 1024-element
// chunk (the next chunk's weights loaded before the current one is decoded, DEPTH 1). Per
// chunk each invocation first loads its 2 int8 x groups (+ their (d, d·Σq) pairs) of all MX
// x rows from xq_buf (L1/L2; one latency per chunk), then decodes each of its weight vec4s
// ONCE (`dq`: Q8_0 its d, Q4_K its nibbles masked to bytes, 6-bit scale/min and d/dmin) and
// dots it against the MX rows (`dx`: 8 dot4I8Packed each), keeping NR·MX accumulators. After the k loop: subgroupAdd (or the
// workgroup tree) per accumulator, lane 0 writes y[i, row] at o_off + i·ys + r0 + row (ys: P.mx.z,
// or the part's rows with MANY); GLU: the up teams leave their NR·MX sums in glu_u and the gate
// teams write act(g)·u.
//
// Bytes moved: the weight once for all MX rows (n·k·bytes_per_weight); x: MX·k·4 read and
// MX·k·1.5 written by the pre-pass, then MX·1.5 bytes per element per team from L1/L2
// (n/NR teams); y MX·n·4. FLOPs: 2·MX·n·k (as int8 MACs) + ≈ 6 per x element (pre-pass).
// Accuracy: gemv_x8's note (x's rounding is the only error besides f32 accumulation).

const MX: u32 = {{MX}}u;

// One weight vec4 pair of a row, decoded for the integer dots: lo/hi the int8 (Q8_0) or
// nibble (Q4_K) bytes dotted with x groups a/b, s the Q4_K 6-bit scales of lo/hi, f the float
// factors (Q8_0: d of lo, d of hi; Q4_K: d, dmin·min_lo, dmin·min_hi).
struct DW {
    lo: vec4<u32>,
    hi: vec4<u32>,
    s: vec2<i32>,
    f: vec4<f32>,
}

//#if W_Q8_0
fn dq(w: WL, c: u32, l: u32) -> DW {
    let hf = ((c * 64u + l) / 2u) & 1u;
    let f = vec4<f32>(unpack2x16float(w.e)[hf], unpack2x16float(w.f)[hf], 0.0, 0.0);
    return DW(w.a, w.b, vec2<i32>(1), f);
}
fn dx(v: DW) -> f32 {
    let a = xa;
    let b = xb;
    let i0 = dot4I8Packed(v.lo.x, a.x) + dot4I8Packed(v.lo.y, a.y)
           + dot4I8Packed(v.lo.z, a.z) + dot4I8Packed(v.lo.w, a.w);
    let i1 = dot4I8Packed(v.hi.x, b.x) + dot4I8Packed(v.hi.y, b.y)
           + dot4I8Packed(v.hi.z, b.z) + dot4I8Packed(v.hi.w, b.w);
    return v.f.x * da.x * f32(i0) + v.f.y * db.x * f32(i1);
}
//#endif

//#if W_Q4_K
// The Q4K_PACK decode of gemv_x8's dp, split into its once-per-weight part and its per-x-row
// part.
fn dq(wl: WL, c: u32, l: u32) -> DW {
    let q = l % 8u;
    let h = wl.a;
    let w = wl.b;
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
    let mn = bitcast<vec2<f32>>(vec2<u32>(mnp & 0xffu, mnp >> 8u) | vec2<u32>(MAGIC)) - vec2<f32>(8388608.0);
    let dm = unpack2x16float(h.x);
    let m4 = vec4<u32>(0x0f0f0f0fu);
    return DW(w & m4, (w >> vec4<u32>(4u)) & m4, vec2<i32>(i32(scp & 0xffu), i32(scp >> 8u)),
              vec4<f32>(dm.x, dm.y * mn.x, dm.y * mn.y, 0.0));
}
fn dx(v: DW) -> f32 {
    let a = xa;
    let b = xb;
    let il = dot4I8Packed(v.lo.x, a.x) + dot4I8Packed(v.lo.y, a.y)
           + dot4I8Packed(v.lo.z, a.z) + dot4I8Packed(v.lo.w, a.w);
    let ih = dot4I8Packed(v.hi.x, b.x) + dot4I8Packed(v.hi.y, b.y)
           + dot4I8Packed(v.hi.z, b.z) + dot4I8Packed(v.hi.w, b.w);
    return v.f.x * (da.x * i2f(il * v.s.x) + db.x * i2f(ih * v.s.y))
         - (v.f.y * da.y + v.f.z * db.y);
}
//#endif

// NR·MX accumulators: weight row r, x row i at r·MX + i (NR ≤ 4).
var<private> am: array<f32, 4 * MX>;

// The invocation's x groups of the current chunk, per x row, all MX rows loaded before the
// decode (one load latency per chunk instead of one per row).
var<private> qa: array<vec4<u32>, MX>;
var<private> qb: array<vec4<u32>, MX>;
var<private> fa: array<vec2<f32>, MX>;
var<private> fb: array<vec2<f32>, MX>;

fn load_xm(c: u32, l: u32, full: bool) {
    for (var i = 0u; i < MX; i++) {
        xrow = i * P.mx.y;
        load_x(c, l, full);
        qa[i] = xa;
        qb[i] = xb;
        fa[i] = da;
        fb[i] = db;
    }
}

// Weight row r's chunk decoded once, then dotted against the MX rows of x.
fn accr(r: u32, w: WL, c: u32, l: u32) {
    let v = dq(w, c, l);
    for (var i = 0u; i < MX; i++) {
        xa = qa[i];
        xb = qb[i];
        da = fa[i];
        db = fb[i];
        am[r * MX + i] += dx(v);
    }
}

fn accm(w0: WL, w1: WL, w2: WL, w3: WL, c: u32, l: u32, full: bool) {
    load_xm(c, l, full);
    accr(0u, w0, c, l);
    if NR > 1u {
        accr(1u, w1, c, l);
    }
    if NR > 2u {
        accr(2u, w2, c, l);
        accr(3u, w3, c, l);
    }
}

// y[i, row] (row inside the part / chunk).
fn putm(row: u32, i: u32, v: f32) {
//#if MANY
    let ys = n_c_;
//#else
    let ys = P.mx.z;
//#endif
    if row < n_c_ {
        sto(o_off_ + i * ys + P.r0 + row, v);
    }
}

//#if GLU
// As gemv_many.wgsl's glu_out for NR·MX sums per team ((RW/2)·NR·MX ≤ 128).
fn glu_outm(team: u32, l: u32, row0: u32) {
    let h = RW / 2u;
    let na = NR * MX;
    if team >= h && l == 0u {
        for (var j = 0u; j < na; j++) {
            glu_u[(team - h) * na + j] = am[j];
        }
    }
    workgroupBarrier();
    if team < h && l == 0u {
        for (var r = 0u; r < NR; r++) {
            for (var i = 0u; i < MX; i++) {
                putm(row0 + r, i, act(am[r * MX + i]) * glu_u[team * na + r * MX + i]);
            }
        }
    }
}
//#endif

@compute @workgroup_size(WGS)
fn gemv_x8m(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
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
//#if GLU
    let row0 = glu_row_group(wid.x + wid.y * nwg.x, team) * NR;
//#else
    let row0 = (part_setup(wid.x + wid.y * nwg.x) * RW + team) * NR;
//#endif
    let last = n_c_ - 1u;
    // Rows past the chunk read the last row (computed, never written).
    let rows = array<u32, 8>(min(row0, last), min(row0 + 1u, last), min(row0 + 2u, last),
                             min(row0 + 3u, last), last, last, last, last);
    for (var j = 0u; j < 4u * MX; j++) {
        am[j] = 0.0;
    }
    let nfull = P.k / CH;
    v0 = true;
    v1 = true;
    if nfull > 0u {
        ld_all(0u, l, rows);
    }
    for (var c = 0u; c < nfull; c++) {
        let w0 = n0;
        let w1 = n1;
        let w2 = n2;
        let w3 = n3;
        if c + 1u < nfull {
            ld_all(c + 1u, l, rows);
        }
        accm(w0, w1, w2, w3, c, l, true);
    }
    if nfull < P.chunks {
        // the partial last chunk, with masks
        // load_x sets the masks v0/v1 that ld reads
        load_x(nfull, l, false);
        ld_all(nfull, l, rows);
        accm(n0, n1, n2, n3, nfull, l, false);
    }
    for (var j = 0u; j < 4u * MX; j++) {
        if j < NR * MX {
//#if SG32
            am[j] = subgroupAdd(am[j]);
//#else
            am[j] = team_sum(am[j], li, team, l);
//#endif
        }
    }
//#if GLU
    glu_outm(team, l, row0);
//#else
    if l == 0u {
        for (var r = 0u; r < NR; r++) {
            for (var i = 0u; i < MX; i++) {
                putm(row0 + r, i, am[r * MX + i]);
            }
        }
    }
//#endif
}
