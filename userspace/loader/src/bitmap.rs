//! A fixed-size bitmap of pages that threads set concurrently.

use std::sync::atomic::{AtomicU64, Ordering};

/// One bit per page.
pub struct Bitmap {
    /// Bit `i` of word `i / 64` is page `i`'s.
    words: Vec<AtomicU64>,
    /// The pages.
    len: u64,
}

impl Clone for Bitmap {
    fn clone(&self) -> Self {
        Self {
            words: self.words().into_iter().map(AtomicU64::new).collect(),
            len: self.len,
        }
    }
}

impl Bitmap {
    /// `len` clear bits.
    pub fn new(len: u64) -> Self {
        Self {
            words: (0..len.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            len,
        }
    }

    /// A bitmap with the bits of `words` (as [`Bitmap::words`] returns them).
    pub fn from_words(len: u64, words: &[u64]) -> Option<Self> {
        if words.len() as u64 != len.div_ceil(64) {
            return None;
        }
        let map = Self {
            words: words.iter().map(|&w| AtomicU64::new(w)).collect(),
            len,
        };
        // Bits past `len` would be counted as set pages.
        let tail = len % 64;
        if tail != 0 && words.last().is_some_and(|&w| w >> tail != 0) {
            return None;
        }
        Some(map)
    }

    /// The number of bits.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether bit `i` is set.
    pub fn get(&self, i: u64) -> bool {
        self.words[(i / 64) as usize].load(Ordering::Acquire) & (1 << (i % 64)) != 0
    }

    /// Sets bit `i`; returns whether it was clear.
    pub fn set(&self, i: u64) -> bool {
        let bit = 1 << (i % 64);
        self.words[(i / 64) as usize].fetch_or(bit, Ordering::AcqRel) & bit == 0
    }

    /// Clears bit `i`.
    pub fn clear(&self, i: u64) {
        self.words[(i / 64) as usize].fetch_and(!(1 << (i % 64)), Ordering::AcqRel);
    }

    /// The set bits, in order, a 64-bit word at a time (empty words cost one load).
    pub fn ones(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(w, word)| {
            let mut bits = word.load(Ordering::Acquire);
            std::iter::from_fn(move || {
                (bits != 0).then(|| {
                    let i = bits.trailing_zeros();
                    bits &= bits - 1;
                    w as u64 * 64 + u64::from(i)
                })
            })
        })
    }

    /// How many bits are set.
    pub fn count(&self) -> u64 {
        self.words
            .iter()
            .map(|w| u64::from(w.load(Ordering::Acquire).count_ones()))
            .sum()
    }

    /// The words, bit `i` in word `i / 64`.
    pub fn words(&self) -> Vec<u64> {
        self.words
            .iter()
            .map(|w| w.load(Ordering::Acquire))
            .collect()
    }

    /// The first clear bit at or after `from`, wrapping around once; `None` if all set.
    pub fn next_clear(&self, from: u64) -> Option<u64> {
        let from = if from >= self.len { 0 } else { from };
        let first = (from / 64) as usize;
        let n = self.words.len();
        // The first word twice: its bits from `from` on, then (after wrapping) below it.
        for step in 0..=n {
            let w = (first + step) % n;
            let mut clear = !self.words[w].load(Ordering::Acquire);
            if step == 0 {
                clear &= u64::MAX << (from % 64);
            }
            while clear != 0 {
                let i = w as u64 * 64 + u64::from(clear.trailing_zeros());
                if i < self.len {
                    return Some(i);
                }
                clear &= clear - 1;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_clear_wraps_and_skips_set_bits() {
        let map = Bitmap::new(130);
        for i in (0..130).filter(|i| i % 7 != 0) {
            map.set(i);
        }
        assert_eq!(map.next_clear(1), Some(7));
        assert_eq!(map.next_clear(127), Some(0));
        assert_eq!(map.next_clear(126), Some(126));
        for i in (0..130).step_by(7) {
            map.set(i);
        }
        assert_eq!(map.next_clear(5), None);
        assert_eq!(map.count(), 130);
    }

    #[test]
    fn ones_lists_set_bits_in_order() {
        let map = Bitmap::new(200);
        for i in [0, 63, 64, 130, 199] {
            map.set(i);
        }
        map.clear(64);
        assert_eq!(map.ones().collect::<Vec<_>>(), [0, 63, 130, 199]);
    }

    #[test]
    fn from_words_refuses_bits_past_the_end() {
        assert!(Bitmap::from_words(65, &[0, 1]).is_some());
        assert!(Bitmap::from_words(65, &[0, 2]).is_none());
        assert!(Bitmap::from_words(65, &[0]).is_none());
    }

    /// A bitmap of `len` bits with `bits` set, through its words and back: returns the
    /// words.
    fn round_trip(len: u64, bits: &[u64]) -> Vec<u64> {
        let map = Bitmap::new(len);
        for &bit in bits {
            map.set(bit);
        }
        let words = map.words();
        assert_eq!(words.len() as u64, len.div_ceil(64));
        let back = Bitmap::from_words(len, &words).expect("its own words");
        assert_eq!(back.len(), len);
        assert_eq!(back.words(), words);
        let mut want = bits.to_vec();
        want.sort_unstable();
        want.dedup();
        assert_eq!(back.ones().collect::<Vec<_>>(), want);
        assert_eq!(back.count(), want.len() as u64);
        assert!((0..len).all(|i| back.get(i) == want.binary_search(&i).is_ok()));
        words
    }

    #[test]
    fn empty_bitmaps_round_trip() {
        assert_eq!(round_trip(0, &[]), Vec::<u64>::new());
        assert_eq!(round_trip(1, &[]), [0]);
        assert_eq!(round_trip(64, &[]), [0]);
        assert_eq!(round_trip(65, &[]), [0, 0]);
        assert_eq!(round_trip(1000, &[]), [0; 16]);
        assert_eq!(Bitmap::new(1000).next_clear(999), Some(999));
    }

    #[test]
    fn full_bitmaps_round_trip() {
        let all = |len: u64| (0..len).collect::<Vec<_>>();
        assert_eq!(round_trip(1, &all(1)), [1]);
        assert_eq!(round_trip(64, &all(64)), [u64::MAX]);
        assert_eq!(round_trip(130, &all(130)), [u64::MAX, u64::MAX, 0b11]);
        assert_eq!(round_trip(191, &all(191))[2], u64::MAX >> 1);
        let full = Bitmap::from_words(130, &[u64::MAX, u64::MAX, 0b11]).expect("full");
        assert_eq!(full.next_clear(0), None);
        assert_eq!(full.count(), 130);
    }

    #[test]
    fn sparse_bitmaps_round_trip() {
        assert_eq!(
            round_trip(200, &[0, 63, 64, 127, 199]),
            [1 | 1 << 63, 1 | 1 << 63, 0, 1 << 7]
        );
        // One bit far in: the words before it stay zero.
        let words = round_trip(1 << 20, &[(1 << 20) - 1]);
        assert_eq!(words.iter().filter(|&&w| w != 0).count(), 1);
        assert_eq!(words.last(), Some(&(1 << 63)));
        // The same bit twice is one bit.
        assert_eq!(round_trip(10, &[3, 3, 9]), [0b10_0000_1000]);
    }

    /// splitmix64: reproducible pseudo-random words.
    fn random(seed: &mut u64) -> u64 {
        *seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    #[test]
    fn random_bitmaps_round_trip() {
        let mut seed = 14;
        for len in (0..300).chain([4095, 4096, 4097, 65536 + 13]) {
            let bits: Vec<u64> = (0..len).filter(|_| random(&mut seed) % 3 == 0).collect();
            round_trip(len, &bits);
            // And from random words (their bits past the end cleared).
            let mut words: Vec<u64> = (0..len.div_ceil(64)).map(|_| random(&mut seed)).collect();
            if let (Some(last), tail @ 1..) = (words.last_mut(), len % 64) {
                *last &= (1 << tail) - 1;
            }
            let map = Bitmap::from_words(len, &words).expect("valid words");
            assert_eq!(map.words(), words);
            let ones: Vec<u64> = (0..len)
                .filter(|&i| words[(i / 64) as usize] >> (i % 64) & 1 == 1)
                .collect();
            assert_eq!(map.ones().collect::<Vec<_>>(), ones);
            assert_eq!(
                map.count(),
                words.iter().map(|w| u64::from(w.count_ones())).sum::<u64>()
            );
        }
    }

    #[test]
    fn malformed_words_are_refused() {
        // Too few words, too many.
        assert!(Bitmap::from_words(1, &[]).is_none());
        assert!(Bitmap::from_words(0, &[0]).is_none());
        assert!(Bitmap::from_words(64, &[0, 0]).is_none());
        assert!(Bitmap::from_words(129, &[0, 0]).is_none());
        assert!(Bitmap::from_words(129, &[0, 0, 0, 0]).is_none());
        // Any bit past the end, in a last word that has some.
        for len in [1u64, 63, 65, 130] {
            let n = len.div_ceil(64) as usize;
            for bit in len % 64..64 {
                let mut words = vec![0; n];
                words[n - 1] = 1 << bit;
                assert!(
                    Bitmap::from_words(len, &words).is_none(),
                    "{len} bits, {bit}"
                );
                words[n - 1] = (1 << (len % 64)) - 1;
                assert!(Bitmap::from_words(len, &words).is_some(), "{len} bits");
            }
        }
        // A last word of 64 bits has none past the end.
        assert!(Bitmap::from_words(128, &[0, u64::MAX]).is_some());
    }

    #[test]
    fn clones_are_independent() {
        let map = Bitmap::new(70);
        map.set(3);
        let copy = map.clone();
        map.set(69);
        copy.clear(3);
        assert_eq!(map.ones().collect::<Vec<_>>(), [3, 69]);
        assert_eq!(copy.count(), 0);
        assert_eq!(copy.len(), 70);
    }

    #[test]
    fn set_says_whether_the_bit_was_clear() {
        let map = Bitmap::new(64);
        assert!(map.set(10));
        assert!(!map.set(10));
        map.clear(10);
        assert!(map.set(10));
        assert!(map.get(10) && !map.get(11));
    }
}
