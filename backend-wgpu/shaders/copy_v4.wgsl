// copy_v4.wgsl — the bandwidth probe: D = S over n4 vec4<u32> (16 bytes each), the honest
// shader-copy ceiling of an adapter (what a streaming kernel can reach; the benchmarks
// compare against it). Thread mapping: workgroup g of 256 invocations copies the U·256
// vec4s starting at g·U·256; invocation i takes vec4s i, i + 256, ... (coalesced), issuing
// its U loads before its U stores so U·16 bytes per invocation are in flight.
// Bytes moved: 32·n4 (read + write); no FLOPs. READ (the read probe, a GEMV's floor): the
// same loads, XORed, and no store (the store's condition needs P._b ≠ 0, never set):
// 16·n4 bytes read, none written.

override U: u32 = 4u; // vec4s per invocation: 1, 2, 4 or 8

struct Params {
    n4: u32,
    _a: u32,
    _b: u32,
    _c: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> S: array<vec4<u32>>;       // [n4]
@group(0) @binding(2) var<storage, read_write> D: array<vec4<u32>>; // [n4]

fn ld(i: u32) -> vec4<u32> {
    if i < P.n4 {
        return S[i];
    }
    return vec4<u32>(0u);
}

fn st(i: u32, v: vec4<u32>) {
    if i < P.n4 {
        D[i] = v;
    }
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = (wid.x + wid.y * nwg.x) * U * 256u + li;
    let a = ld(i);
    var b = a;
    var c = a;
    var d = a;
    var e = a;
    var f = a;
    var g = a;
    var h = a;
    if U > 1u {
        b = ld(i + 256u);
    }
    if U > 2u {
        c = ld(i + 512u);
        d = ld(i + 768u);
    }
    if U > 4u {
        e = ld(i + 1024u);
        f = ld(i + 1280u);
        g = ld(i + 1536u);
        h = ld(i + 1792u);
    }
//#if READ
    let x = a ^ b ^ c ^ d ^ e ^ f ^ g ^ h;
    if P._b != 0u && all(x == vec4<u32>(P._a)) {
        st(i, x);
    }
    return;
//#endif
    st(i, a);
    if U > 1u {
        st(i + 256u, b);
    }
    if U > 2u {
        st(i + 512u, c);
        st(i + 768u, d);
    }
    if U > 4u {
        st(i + 1024u, e);
        st(i + 1280u, f);
        st(i + 1536u, g);
        st(i + 1792u, h);
    }
}
