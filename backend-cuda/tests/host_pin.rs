//! `Backend::pin_host` / `unpin_host` on CUDA (the runtime page-locks its logits buffer): reads
//! into pinned memory land exactly as into pageable memory (whole and pitched rows), pinning the same
//! memory twice reports Ok(false) the second time, and unpinning returns it to pageable.
//! Prints "skipped" without a GPU.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use kiln_core::Backend;

#[test]
fn reads_into_pinned_memory_match_pageable_ones() {
    let Some(be) = gpu() else { return };
    let (rows, row) = (64usize, 4099usize);
    let src: Vec<f32> = Rng(5).vec(rows * row);
    let dev = upload(&*be, &f32_bytes(&src));
    let mut pinned = vec![0u8; rows * row * 4 + 64];
    // SAFETY: `pinned` stays alive and unmoved until unpin_host below.
    let first = unsafe { be.pin_host(&mut pinned) }.unwrap();
    assert!(first, "first pin_host must pin");
    // SAFETY: as above (already pinned: reported, not an error).
    let second = unsafe { be.pin_host(&mut pinned) }.unwrap();
    assert!(!second, "second pin_host must say false");
    let mut pageable = vec![0u8; pinned.len()];
    for _ in 0..3 {
        be.read(&dev, 0, &mut pinned[..rows * row * 4]).unwrap();
        be.read(&dev, 0, &mut pageable[..rows * row * 4]).unwrap();
        assert_eq!(pinned, pageable);
        assert_eq!(&pinned[..rows * row * 4], &f32_bytes(&src)[..]);
        // 64 rows of 1000 f32 scattered at a pitch of 4099 f32 (one TP rank's logits columns).
        let cols = 1000usize;
        pinned.fill(7);
        pageable.fill(7);
        for dst in [&mut pinned, &mut pageable] {
            be.read_rows(&dev, 0, cols * 4, rows, &mut dst[..], row * 4)
                .unwrap();
        }
        assert_eq!(
            &pinned[row * 4..row * 4 + cols * 4],
            &f32_bytes(&src[cols..2 * cols])[..]
        );
        assert_eq!(pinned, pageable);
    }
    // SAFETY: exactly the memory pinned above.
    unsafe { be.unpin_host(&mut pinned) }.unwrap();
    // Pageable again: pinning works once more.
    // SAFETY: as above.
    let again = unsafe { be.pin_host(&mut pinned) }.unwrap();
    assert!(again);
    // SAFETY: as above.
    unsafe { be.unpin_host(&mut pinned) }.unwrap();
}
