//! Page contents that say which page they are, to verify every load.

use muserload::PAGE_SIZE;

fn word(page: usize, i: usize) -> u64 {
    (page as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i as u64
}

/// `pages` pages, each filled with its own pattern.
pub fn source(pages: usize) -> Vec<u8> {
    let mut buf = vec![0u8; pages * PAGE_SIZE];
    for (page, chunk) in buf.chunks_exact_mut(PAGE_SIZE).enumerate() {
        for (i, w) in chunk.chunks_exact_mut(8).enumerate() {
            w.copy_from_slice(&word(page, i).to_ne_bytes());
        }
    }
    buf
}

/// Whether the page at `ptr` holds page `page`'s pattern (or zeros, if `zero`).
///
/// # Safety
///
/// `ptr` must point to a readable page.
pub unsafe fn check(ptr: *const u8, page: usize, zero: bool) -> bool {
    (0..PAGE_SIZE / 8).all(|i| {
        // SAFETY: The caller vouches for the page; `i * 8` stays inside it.
        let got = unsafe { std::ptr::read_volatile(ptr.add(i * 8).cast::<u64>()) };
        got == if zero { 0 } else { word(page, i) }
    })
}
