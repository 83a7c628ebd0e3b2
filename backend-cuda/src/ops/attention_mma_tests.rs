//! Lane-level emulation of attention.cu's tensor-core inner loops: `ldmatrix` (.x4, plain and
//! .trans) and `mma.sync.m16n8k16.row.col` as the PTX ISA defines their fragments, driven by the
//! kernel's own lane-address formulas (a_row / a_col for Q and V, key rows for K) and its P
//! repacking, checked against plain matrix products. Values stay f32 (the 16-bit rounding is
//! not the point; the index mapping is).
#![allow(clippy::needless_range_loop)]

const WARP: usize = 32;

/// One b32 register: (low half, high half).
type Reg = (f32, f32);

/// ldmatrix.x4: lane l supplies the address of row l % 8 of matrix l / 8 (8 consecutive 16-bit
/// elements). Without .trans lane T receives, for matrix i, (row T/4, cols 2(T%4), 2(T%4)+1);
/// with .trans (rows 2(T%4), 2(T%4)+1, col T/4).
fn ldsm4(smem: &[f32], addr: &[usize; WARP], trans: bool) -> [[Reg; 4]; WARP] {
    let mut out = [[(0.0, 0.0); 4]; WARP];
    for t in 0..WARP {
        for i in 0..4 {
            let at = |row: usize, col: usize| smem[addr[8 * i + row] + col];
            out[t][i] = if trans {
                (at(2 * (t % 4), t / 4), at(2 * (t % 4) + 1, t / 4))
            } else {
                (at(t / 4, 2 * (t % 4)), at(t / 4, 2 * (t % 4) + 1))
            };
        }
    }
    out
}

/// mma m16n8k16: rebuild A (16×16), B (16×8) and C (16×8) from the fragments of all lanes,
/// C += A·B, scatter C back.
fn mma(c: &mut [[f32; 4]; WARP], a: &[[Reg; 4]; WARP], b0: &[Reg; WARP], b1: &[Reg; WARP]) {
    let mut am = [[0f32; 16]; 16];
    let mut bm = [[0f32; 8]; 16];
    let mut cm = [[0f32; 8]; 16];
    for l in 0..WARP {
        let (g, t) = (l / 4, l % 4);
        let put = |m: &mut [[f32; 16]; 16], r: usize, c0: usize, v: Reg| {
            m[r][c0] = v.0;
            m[r][c0 + 1] = v.1;
        };
        put(&mut am, g, 2 * t, a[l][0]);
        put(&mut am, g + 8, 2 * t, a[l][1]);
        put(&mut am, g, 2 * t + 8, a[l][2]);
        put(&mut am, g + 8, 2 * t + 8, a[l][3]);
        bm[2 * t][g] = b0[l].0;
        bm[2 * t + 1][g] = b0[l].1;
        bm[2 * t + 8][g] = b1[l].0;
        bm[2 * t + 9][g] = b1[l].1;
        cm[g][2 * t] = c[l][0];
        cm[g][2 * t + 1] = c[l][1];
        cm[g + 8][2 * t] = c[l][2];
        cm[g + 8][2 * t + 1] = c[l][3];
    }
    for r in 0..16 {
        for n in 0..8 {
            for k in 0..16 {
                cm[r][n] += am[r][k] * bm[k][n];
            }
        }
    }
    for l in 0..WARP {
        let (g, t) = (l / 4, l % 4);
        c[l] = [
            cm[g][2 * t],
            cm[g][2 * t + 1],
            cm[g + 8][2 * t],
            cm[g + 8][2 * t + 1],
        ];
    }
}

fn reg(r: &[[Reg; 4]; WARP], i: usize) -> [Reg; WARP] {
    std::array::from_fn(|l| r[l][i])
}

/// The S = Q·Kᵀ and O = P·V loops of `attn_body` for one warp (wm = wn = 0) with head size hd
/// and kw keys, on shared-memory tiles with row stride hd + 8.
fn warp_tile(hd: usize, kw: usize, seed: u64) {
    let ld = hd + 8;
    let mut s = seed;
    let mut rnd = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    let qs: Vec<f32> = (0..16 * ld).map(|_| rnd()).collect();
    let ks: Vec<f32> = (0..kw * ld).map(|_| rnd()).collect();
    let vs: Vec<f32> = (0..kw * ld).map(|_| rnd()).collect();
    let (nt_s, nt_o, k_steps) = (kw / 8, hd / 8, hd / 16);

    // S: the kernel's loop (ldmatrix lane offsets exactly as in attention.cu).
    let a_row = |lane: usize| (lane & 7) + ((lane >> 3) & 1) * 8;
    let a_col = |lane: usize| (lane >> 4) * 8;
    let mut sacc = vec![[[0f32; 4]; WARP]; nt_s];
    for kk in (0..k_steps).step_by(2) {
        let qa: Vec<[[Reg; 4]; WARP]> = (0..2)
            .map(|h| {
                let addr = std::array::from_fn(|l| a_row(l) * ld + (kk + h) * 16 + a_col(l));
                ldsm4(&qs, &addr, false)
            })
            .collect();
        for n in 0..nt_s {
            let addr = std::array::from_fn(|l| (n * 8 + (l & 7)) * ld + kk * 16 + (l >> 3) * 8);
            let b = ldsm4(&ks, &addr, false);
            mma(&mut sacc[n], &qa[0], &reg(&b, 0), &reg(&b, 1));
            mma(&mut sacc[n], &qa[1], &reg(&b, 2), &reg(&b, 3));
        }
    }
    // Element e of n-tile n of lane l is S[gid + 8(e>>1)][8n + 2tig + (e&1)].
    let mut sm = vec![[0f32; 64]; 16];
    for n in 0..nt_s {
        for l in 0..WARP {
            for e in 0..4 {
                let (row, key) = (l / 4 + 8 * (e >> 1), n * 8 + 2 * (l % 4) + (e & 1));
                let want: f32 = (0..hd).map(|d| qs[row * ld + d] * ks[key * ld + d]).sum();
                let got = sacc[n][l][e];
                assert!(
                    (got - want).abs() < 1e-4,
                    "S hd {hd} kw {kw}: row {row} key {key}: {got} vs {want}"
                );
                sm[row][key] = got;
            }
        }
    }

    // O += P·V with P = the S fragments repacked as the kernel does.
    let mut o = vec![[[0f32; 4]; WARP]; nt_o];
    for kt in 0..kw / 16 {
        let pa: [[Reg; 4]; WARP] = std::array::from_fn(|l| {
            let f = |n: usize, i: usize| (sacc[n][l][i], sacc[n][l][i + 1]);
            [
                f(2 * kt, 0),
                f(2 * kt, 2),
                f(2 * kt + 1, 0),
                f(2 * kt + 1, 2),
            ]
        });
        for nd in 0..hd / 16 {
            let addr = std::array::from_fn(|l| (kt * 16 + a_row(l)) * ld + nd * 16 + a_col(l));
            let b = ldsm4(&vs, &addr, true);
            mma(&mut o[2 * nd], &pa, &reg(&b, 0), &reg(&b, 1));
            mma(&mut o[2 * nd + 1], &pa, &reg(&b, 2), &reg(&b, 3));
        }
    }
    for n in 0..nt_o {
        for l in 0..WARP {
            for e in 0..4 {
                let (row, d) = (l / 4 + 8 * (e >> 1), n * 8 + 2 * (l % 4) + (e & 1));
                let want: f32 = (0..kw).map(|k| sm[row][k] * vs[k * ld + d]).sum();
                let got = o[n][l][e];
                assert!(
                    (got - want).abs() < 1e-3,
                    "O hd {hd} kw {kw}: row {row} dim {d}: {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn kernel_lane_addressing_gives_q_kt_and_p_v_through_emulated_ldmatrix_and_mma() {
    // Decode slices (16 keys per warp) and prefill tiles (64 / 32 keys) at every head size.
    for (hd, kw) in [
        (64, 16),
        (128, 16),
        (256, 16),
        (64, 64),
        (128, 64),
        (256, 32),
    ] {
        warp_tile(hd, kw, (hd * 131 + kw) as u64);
    }
}
