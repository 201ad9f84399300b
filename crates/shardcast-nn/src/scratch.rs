//! Recycled `f32` buffers for the large temporaries of the fused ops.
//!
//! A training step of the protocol T LSTM saves ~8 MB of activations in
//! forward and frees them after backward. Fresh allocations of that size
//! come from `mmap` (glibc hands out anything above its adaptive threshold
//! that way), so every step paid a page fault per 4 KiB page touched: about
//! a third of the step. A [`Buf`] goes back to a small per-thread pool when
//! dropped and the next [`take`] of a similar size reuses it, already
//! mapped.
//!
//! The pool is bounded ([`MAX_BUFFERS`], [`MAX_FLOATS`]); what does not fit
//! is freed as usual.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Buffers a thread keeps at most.
const MAX_BUFFERS: usize = 8;

/// Floats a thread keeps at most, over all its buffers (128 MiB).
const MAX_FLOATS: usize = 32 << 20;

thread_local! {
    static POOL: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// An `f32` buffer that returns to the calling thread's pool when dropped.
#[derive(Debug, Default)]
pub(crate) struct Buf(Vec<f32>);

/// A buffer of `len` floats with **unspecified contents**: zeros when newly
/// allocated, whatever its last user left in it when recycled. Callers must
/// write every element before reading it.
pub(crate) fn take(len: usize) -> Buf {
    if len == 0 {
        // Nothing to recycle, and no pooled buffer to hold on to.
        return Buf::default();
    }
    let reused = POOL
        .try_with(|pool| {
            let mut pool = pool.borrow_mut();
            // The smallest buffer that fits, so that a small request does
            // not take the one a large request is about to need.
            let best = pool
                .iter()
                .enumerate()
                .filter(|(_, v)| v.capacity() >= len)
                .min_by_key(|(_, v)| v.capacity())
                .map(|(k, _)| k);
            best.map(|k| pool.swap_remove(k))
        })
        .ok()
        .flatten();
    match reused {
        Some(mut v) => {
            // Within capacity: shrinking writes nothing, growing zeroes only
            // the new tail, and neither reallocates.
            v.resize(len, 0.0);
            Buf(v)
        }
        None => Buf(vec![0.0; len]),
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        if v.capacity() == 0 {
            return;
        }
        // During thread teardown the pool may be gone; then `v` is freed.
        let _ = POOL.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            pool.push(v);
            // Over a bound: drop the smallest buffers first, they are the
            // cheapest to allocate again.
            while pool.len() > MAX_BUFFERS
                || pool.iter().map(Vec::capacity).sum::<usize>() > MAX_FLOATS
            {
                let Some((k, _)) = pool.iter().enumerate().min_by_key(|(_, v)| v.capacity()) else {
                    break;
                };
                pool.swap_remove(k);
            }
        });
    }
}

impl Deref for Buf {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycles_by_capacity_and_resizes() {
        // Run on a fresh thread so that other tests' buffers do not count.
        std::thread::spawn(|| {
            let mut a = take(1000);
            assert_eq!(a.len(), 1000);
            assert!(a.iter().all(|&v| v == 0.0));
            a.fill(7.0);
            let ptr = a.as_ptr();
            drop(a);
            // Reused: same allocation, stale contents, requested length.
            let b = take(600);
            assert_eq!((b.as_ptr(), b.len()), (ptr, 600));
            assert!(b.iter().all(|&v| v == 7.0));
            // Too large for anything pooled: a new zeroed one.
            let c = take(5000);
            assert!(c.len() == 5000 && c.iter().all(|&v| v == 0.0));
            drop(b);
            drop(c);
            // The smallest that fits is chosen.
            let d = take(10);
            assert_eq!(d.as_ptr(), ptr);
        })
        .join()
        .expect("pool test thread");
    }

    #[test]
    fn pool_is_bounded() {
        std::thread::spawn(|| {
            let bufs: Vec<Buf> = (0..MAX_BUFFERS + 4).map(|k| take(16 + k)).collect();
            drop(bufs);
            POOL.with(|p| assert_eq!(p.borrow().len(), MAX_BUFFERS));
            // The largest ones were kept.
            let big = take(16 + MAX_BUFFERS + 3);
            assert_eq!(big.len(), 16 + MAX_BUFFERS + 3);
            POOL.with(|p| assert_eq!(p.borrow().len(), MAX_BUFFERS - 1));
            drop(big);
            drop(take(MAX_FLOATS));
            POOL.with(|p| {
                let p = p.borrow();
                assert!(p.iter().map(Vec::capacity).sum::<usize>() <= MAX_FLOATS);
            });
        })
        .join()
        .expect("pool test thread");
    }
}
