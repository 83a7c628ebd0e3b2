// copy.wgsl — dst = convert(src) among f32/f16/bf16 (same element count).
// Thread mapping: one invocation per *output word* (1 element for f32 outputs, 2 for 16-bit
// outputs), 256 per workgroup, 2-D folded grid; a word the view only partly covers keeps
// its other half (each word has one owner, so the read-modify-write is race-free).
// Moves (src + dst element bytes) per element, no FLOPs beyond the conversion.

struct Params {
    n: u32,       // elements
    s_off: u32,   // src element offset in its binding
    d_off: u32,   // dst element offset in its binding
    n_words: u32, // output words touched
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> S: array<u32>;
@group(0) @binding(2) var<storage, read_write> D: array<u32>;

{{LOAD_S}}
{{STORE_D}}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let w = (wid.x + wid.y * nwg.x) * 256u + li;
    if w >= P.n_words {
        return;
    }
    store_d_word(w);
}
