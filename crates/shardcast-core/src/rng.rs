//! The one seeded random number generator of the workspace.
//!
//! Model initialisation, training order, the placement annealer and the
//! benchmark's synthetic data all draw from [`SplitMix64`], so that every
//! result is reproducible from its seed and no crate needs an RNG
//! dependency. SplitMix64 (Steele, Lea and Flood 2014) passes BigCrush and
//! is fast; it is not for secrets.

/// The golden-ratio increment of the Weyl sequence (2^64 / φ).
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64: a 64-bit state advanced by a Weyl sequence, mixed on output.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator for `seed`; the same seed gives the same stream.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ GOLDEN)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix64(self.0)
    }

    /// Uniform in `[0, 1)`, with 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[0, n)` for `0 < n ≤ 2^32`, by multiply-shift of the
    /// high 32 bits (bias at most n/2^32, immaterial for shuffles and moves).
    pub fn below(&mut self, n: usize) -> usize {
        debug_assert!(n > 0 && n as u64 <= 1 << 32, "below({n})");
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// The SplitMix64 output function, also a good 64-bit hash finaliser.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a over bytes, finalised with [`mix64`]: stable across platforms and
/// Rust versions, unlike `std`'s hasher.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    mix64(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_bounds_hold() {
        let (mut a, mut b) = (SplitMix64::new(7), SplitMix64::new(7));
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
            let u = a.unit();
            assert!((0.0..1.0).contains(&u));
            assert!(a.below(10) < 10);
            b.unit();
            b.below(10);
        }
        assert_ne!(SplitMix64::new(1).next_u64(), SplitMix64::new(2).next_u64());
        let mut v: Vec<usize> = (0..100).collect();
        SplitMix64::new(3).shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(v, sorted);
    }

    #[test]
    fn the_stream_is_pinned() {
        // Trained models and annealed placements are reproducible from
        // their seeds only while this stream stays the same.
        let mut r = SplitMix64::new(42);
        assert_eq!(
            [r.next_u64(), r.next_u64(), r.below(1000) as u64],
            [PINNED[0], PINNED[1], PINNED[2]]
        );
        assert_ne!(hash_bytes(b"a"), hash_bytes(b"b"));
    }

    const PINNED: [u64; 3] = [0x28EFE333B266F103, 0x47526757130F9F52, 344];
}
