//! The nested guest of `--vcpus`: a loop in 32-bit protected mode, paging off, run by every
//! vCPU over its own slice of guest memory, as `demand_paging_test`'s guest code is. For
//! each page it reads the first word (the fault measured), checks it, and logs the touch's
//! time in TSC cycles; then it writes to [`DONE_PORT`] and halts.
//!
//! Guest physical memory: the slices from 0 on (the backend's memory: what faults), the
//! code at [`CODE_GPA`] and the log at [`LOG_GPA`] (plain memory, present before the run).

use muserload::PAGE_SIZE;

/// Where the code page is, above the largest slices (16 vCPUs of 64 MiB).
pub const CODE_GPA: u64 = 0xf000_0000;
/// Where the log is: a `u32` per page touched, vCPU after vCPU; the slices end below it.
pub const LOG_GPA: u64 = 0xc000_0000;
// The largest slices (16 vCPUs of 64 MiB, `--vcpus`' limits) fit below the log, and their
// log below the code.
const _: () = assert!(
    16 * 64 * 1024 * 1024 <= LOG_GPA
        && LOG_GPA + 16 * 64 * 1024 * 1024 / PAGE_SIZE as u64 * 4 <= CODE_GPA
);

/// The port the guest writes to when its vCPU is done.
pub const DONE_PORT: u16 = 0x10;
/// A log entry of a page whose first word was not what it must be.
pub const MISMATCH: u32 = u32::MAX;

/// The loop's registers on entry: ESI the slice's first byte, ECX its page count (not 0),
/// EBX the mask of what a page's first word holds (its own address, or 0 for memory that
/// starts zeroed: [`expected_mask`]), ESP where the slice's log starts.
///
/// ```text
///  0  0f 31              loop:  rdtsc
///  2  89 c7                     mov  edi, eax         ; the touch's start
///  4  8b 06                     mov  eax, [esi]       ; the touch
///  6  89 f5                     mov  ebp, esi
///  8  21 dd                     and  ebp, ebx         ; what the word must be
/// 10  39 e8                     cmp  eax, ebp
/// 12  75 06                     jne  bad
/// 14  0f 31                     rdtsc
/// 16  29 f8                     sub  eax, edi         ; the touch's cycles
/// 18  eb 05                     jmp  store
/// 20  b8 ff ff ff ff     bad:   mov  eax, MISMATCH
/// 25  89 04 24           store: mov  [esp], eax
/// 28  83 c4 04                  add  esp, 4
/// 31  81 c6 00 10 00 00         add  esi, PAGE_SIZE
/// 37  49                        dec  ecx
/// 38  75 d8                     jnz  loop
/// 40  e6 10                     out  DONE_PORT, al
/// 42  f4                        hlt
/// ```
pub const CODE: [u8; 43] = [
    0x0f, 0x31, 0x89, 0xc7, 0x8b, 0x06, 0x89, 0xf5, 0x21, 0xdd, 0x39, 0xe8, 0x75, 0x06, 0x0f, 0x31,
    0x29, 0xf8, 0xeb, 0x05, 0xb8, 0xff, 0xff, 0xff, 0xff, 0x89, 0x04, 0x24, 0x83, 0xc4, 0x04, 0x81,
    0xc6, 0x00, 0x10, 0x00, 0x00, 0x49, 0x75, 0xd8, 0xe6, 0x10, 0xf4,
];

/// The mask the loop checks a page's first word with: memory that a backend loads holds
/// [`page_content`] (its first word is its own address), memory that starts zeroed holds 0.
pub fn expected_mask(loaded: bool) -> u32 {
    if loaded {
        u32::MAX
    } else {
        0
    }
}

/// What the loaded backends put in the page at `gpa`: every 32-bit word holds its own guest
/// physical address, so that a page in the wrong place or a torn copy shows.
pub fn page_content(gpa: u64, page: &mut [u8]) {
    for (i, word) in page.chunks_exact_mut(4).enumerate() {
        word.copy_from_slice(&((gpa + 4 * i as u64) as u32).to_ne_bytes());
    }
}

/// Whether `page`, at `gpa`, holds [`page_content`] (or zeros, if not `loaded`).
pub fn page_holds(gpa: u64, page: &[u8], loaded: bool) -> bool {
    page.chunks_exact(4).enumerate().all(|(i, word)| {
        let want = if loaded {
            (gpa + 4 * i as u64) as u32
        } else {
            0
        };
        word == want.to_ne_bytes()
    })
}

/// The source of the loaded backends: `pages` pages from guest physical address 0 on.
pub fn source(pages: usize) -> Vec<u8> {
    let mut buf = vec![0u8; pages * PAGE_SIZE];
    for (page, chunk) in buf.chunks_exact_mut(PAGE_SIZE).enumerate() {
        page_content((page * PAGE_SIZE) as u64, chunk);
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short jump's target: the instruction after it plus its signed displacement.
    fn target(at: usize) -> usize {
        (at as isize + 2 + CODE[at + 1] as i8 as isize) as usize
    }

    #[test]
    fn the_jumps_land_where_the_listing_says() {
        assert_eq!(&CODE[12..13], &[0x75]);
        assert_eq!(target(12), 20, "jne bad");
        assert_eq!(target(18), 25, "jmp store");
        assert_eq!(target(38), 0, "jnz loop");
        assert_eq!(CODE[40..42], [0xe6, DONE_PORT as u8]);
        assert_eq!(
            u32::from_le_bytes(CODE[33..37].try_into().expect("4 bytes")),
            PAGE_SIZE as u32
        );
        assert_eq!(
            u32::from_le_bytes(CODE[21..25].try_into().expect("4 bytes")),
            MISMATCH
        );
    }

    #[test]
    fn a_page_holds_its_own_addresses_and_nothing_else_does() {
        let source = source(3);
        let page = &source[2 * PAGE_SIZE..3 * PAGE_SIZE];
        assert!(page_holds(2 * PAGE_SIZE as u64, page, true));
        assert!(!page_holds(PAGE_SIZE as u64, page, true));
        assert!(!page_holds(2 * PAGE_SIZE as u64, page, false));
        assert!(page_holds(0, &[0; PAGE_SIZE], false));
        // The first word is the page's address: what the guest's check reads.
        assert_eq!(page[..4], (2 * PAGE_SIZE as u32).to_ne_bytes());
        assert_eq!(
            expected_mask(true) & (2 * PAGE_SIZE as u32),
            2 * PAGE_SIZE as u32
        );
        assert_eq!(expected_mask(false), 0);
    }
}
