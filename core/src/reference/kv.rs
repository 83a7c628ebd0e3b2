//! `kv_append`: write this step's k, v rows into the paged KV cache.
//!
//! k, v: f32 `[n_tokens, n_kv_heads, head_dim]`; slots: i32 `[n_tokens]`, slot = block ·
//! block_size + row, negative = skip the token; cache k, v: `[num_blocks, n_kv_heads,
//! block_size, head_dim]` (f32/f16/bf16, converted with round to nearest even). Every slot is
//! checked (< num_blocks · block_size, no slot written twice) before anything is written.
//! Moves 2 · n_tokens · n_kv_heads · head_dim elements; serial (the op is tiny).

use super::ReferenceBackend;
use super::copy::FloatsMut;
use crate::backend::{OpKind, PagedKv, check};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::View;

/// Validated slots: `Some((block, row))` per token, `None` to skip.
fn slot_targets(
    slots: &[i32],
    num_blocks: usize,
    block_size: usize,
) -> Result<Vec<Option<(usize, usize)>>> {
    let op = OpKind::KvAppend;
    let capacity = num_blocks * block_size;
    let mut seen: Vec<usize> = Vec::with_capacity(slots.len());
    let mut out = Vec::with_capacity(slots.len());
    for (t, &s) in slots.iter().enumerate() {
        if s < 0 {
            out.push(None);
            continue;
        }
        let s = s as usize;
        if s >= capacity {
            return Err(Error::shape(
                op,
                format!(
                    "slot {s} of token {t} is outside the cache ({num_blocks} blocks × {block_size} rows = {capacity} slots)"
                ),
            ));
        }
        seen.push(s);
        out.push(Some((s / block_size, s % block_size)));
    }
    seen.sort_unstable();
    if let Some(w) = seen.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::shape(
            op,
            format!("slot {} is written by two tokens in one call", w[0]),
        ));
    }
    Ok(out)
}

/// Write rows of `src` (`[n_tokens, n_kv, hd]` f32) into `dst` (`[blocks, n_kv, bs, hd]`).
fn scatter(
    src: &[f32],
    dst: &mut FloatsMut<'_>,
    targets: &[Option<(usize, usize)>],
    n_kv: usize,
    bs: usize,
    hd: usize,
) {
    for (t, tgt) in targets.iter().enumerate() {
        let Some((block, row)) = *tgt else { continue };
        for h in 0..n_kv {
            let from = (t * n_kv + h) * hd;
            let to = ((block * n_kv + h) * bs + row) * hd;
            dst.write(to, &src[from..from + hd]);
        }
    }
}

/// The `kv_append` op.
pub(super) fn kv_append(
    b: &ReferenceBackend,
    k: View<'_>,
    v: View<'_>,
    kv: &PagedKv<'_>,
    slots: View<'_>,
) -> Result<()> {
    let op = OpKind::KvAppend;
    for d in [
        k.device(),
        v.device(),
        kv.k.device(),
        kv.v.device(),
        slots.device(),
    ] {
        b.check_dev(op, d)?;
    }
    check::dtype(op, "k", k.dtype(), &[DType::F32])?;
    check::dtype(op, "v", v.dtype(), &[DType::F32])?;
    check::dtype(op, "slots", slots.dtype(), &[DType::I32])?;
    check::dtype(
        op,
        "cache",
        kv.dtype(),
        &[DType::F32, DType::F16, DType::BF16],
    )?;
    if kv.k.shape() != kv.v.shape() || kv.k.dtype() != kv.v.dtype() || kv.k.shape().rank() != 4 {
        return Err(Error::shape(
            op,
            format!(
                "cache K {} {} and V {} {} must both be [blocks, kv_heads, block_size, head_dim]",
                kv.k.shape(),
                kv.k.dtype(),
                kv.v.shape(),
                kv.v.dtype()
            ),
        ));
    }
    let (n_kv, bs, hd) = (kv.n_kv_heads(), kv.block_size(), kv.head_dim());
    if k.shape() != v.shape() || k.shape().rank() != 3 {
        return Err(Error::shape(
            op,
            format!(
                "k {} and v {} must both be [n_tokens, n_kv_heads, head_dim]",
                k.shape(),
                v.shape()
            ),
        ));
    }
    check::eq(op, "k kv_heads vs cache kv_heads", k.shape().dim(1), n_kv)?;
    check::eq(op, "k head_dim vs cache head_dim", k.shape().dim(2), hd)?;
    let n_tokens = k.shape().dim(0);
    check::eq(op, "slots vs n_tokens", slots.numel(), n_tokens)?;

    let a = b.access();
    let slots = a.i32s(&slots)?;
    let targets = slot_targets(slots, kv.num_blocks(), bs)?;
    let ks = a.f32s(&k)?;
    let vs = a.f32s(&v)?;
    let mut kc = FloatsMut::new(op, "cache K", kv.dtype(), a.output(&kv.k)?)?;
    let mut vc = FloatsMut::new(op, "cache V", kv.dtype(), a.output(&kv.v)?)?;
    scatter(ks, &mut kc, &targets, n_kv, bs, hd);
    scatter(vs, &mut vc, &targets, n_kv, bs, hd);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::convert::{i32_bytes, to_f32};
    use crate::shape::Shape;

    #[test]
    fn writes_rows_to_slots_skips_negative_and_rounds() {
        let b = ReferenceBackend::new(0);
        // cache: 3 blocks, 2 kv heads, block_size 2, head_dim 2, bf16
        let shape = Shape::d4(3, 2, 2, 2);
        let kb = b.alloc(48).unwrap();
        let vb = b.alloc(48).unwrap();
        let kv = PagedKv::new(
            kb.view_mut(0, shape, DType::BF16).unwrap(),
            vb.view_mut(0, shape, DType::BF16).unwrap(),
        )
        .unwrap();
        // 2 tokens: token 0 → slot 5 (block 2, row 1), token 1 skipped
        let xb = b.alloc(64).unwrap();
        let kvals: Vec<f32> = vec![1.0, 2.0, 3.0, 1.0 + 2f32.powi(-8), 9.0, 9.0, 9.0, 9.0];
        let vvals: Vec<f32> = kvals.iter().map(|x| -x).collect();
        b.write(
            &xb,
            0,
            &crate::convert::from_f32(DType::F32, &kvals).unwrap(),
        )
        .unwrap();
        b.write(
            &xb,
            32,
            &crate::convert::from_f32(DType::F32, &vvals).unwrap(),
        )
        .unwrap();
        let sb = b.alloc(8).unwrap();
        b.write(&sb, 0, &i32_bytes(&[5, -1])).unwrap();
        let k = xb.view(0, Shape::d3(2, 2, 2), DType::F32).unwrap();
        let v = xb.view(32, Shape::d3(2, 2, 2), DType::F32).unwrap();
        let slots = sb.view(0, Shape::d1(2), DType::I32).unwrap();
        b.kv_append(k, v, &kv, slots).unwrap();
        let mut raw = vec![0u8; 48];
        b.read(&kb, 0, &mut raw).unwrap();
        let kc = to_f32(DType::BF16, &raw).unwrap();
        // [block 2, head 0, row 1] = elements ((2·2+0)·2+1)·2 = 18..20; head 1 → 22..24
        assert_eq!(&kc[18..20], &[1.0, 2.0]);
        assert_eq!(&kc[22..24], &[3.0, 1.0]); // 1 + 2^-8 ties to even → 1.0
        assert_eq!(kc.iter().filter(|x| **x != 0.0).count(), 4); // nothing else written
        b.read(&vb, 0, &mut raw).unwrap();
        let vc = to_f32(DType::BF16, &raw).unwrap();
        assert_eq!(&vc[18..20], &[-1.0, -2.0]);

        // out-of-range and duplicate slots are errors
        b.write(&sb, 0, &i32_bytes(&[12, -1])).unwrap();
        assert!(matches!(
            b.kv_append(k, v, &kv, slots),
            Err(Error::Shape { .. })
        ));
        b.write(&sb, 0, &i32_bytes(&[3, 3])).unwrap();
        assert!(matches!(
            b.kv_append(k, v, &kv, slots),
            Err(Error::Shape { .. })
        ));
    }
}
