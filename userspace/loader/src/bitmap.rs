//! A fixed-size bitmap of pages that threads set concurrently.

use std::sync::atomic::{AtomicU64, Ordering};

/// One bit per page.
pub struct Bitmap {
    words: Vec<AtomicU64>,
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
}
