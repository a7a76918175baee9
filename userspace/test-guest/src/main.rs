//! The built-in test guest of `muserload-loader`: a freestanding program that fills its
//! memory with known patterns, then rewrites a working set and checks everything it reads,
//! round after round, reporting through I/O ports (`muserload_test_guest_abi`). It knows
//! nothing of migration: whether its memory arrives before or after it runs, every page
//! must read as it was last written.

#![no_std]
#![no_main]

use core::{arch::asm, panic::PanicInfo};

use muserload_test_guest_abi::{
    is_zero_page, pattern_word, Params, PAGE_SIZE, PAGE_WORDS, PARAMS_MAGIC, PORT_FILLED,
    PORT_MISMATCH, PORT_ROUND, PORT_SWEEP,
};

/// The serial port's transmit register (COM1).
const SERIAL: u16 = 0x3f8;

fn out32(port: u16, value: u32) {
    // SAFETY: `out` to an emulated port has no effect on memory.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack)) };
}

fn print(text: &str) {
    for byte in text.bytes() {
        // SAFETY: As in `out32`.
        unsafe { asm!("out dx, al", in("dx") SERIAL, in("al") byte, options(nomem, nostack)) };
    }
}

fn print_number(mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &digit in &digits[at..] {
        // SAFETY: As in `out32`.
        unsafe { asm!("out dx, al", in("dx") SERIAL, in("al") digit, options(nomem, nostack)) };
    }
}

/// Data page `page` as a pointer to its words.
fn page_words(params: &Params, page: u64) -> *mut u64 {
    (params.data_start + page * PAGE_SIZE) as *mut u64
}

fn write_page(params: &Params, page: u64, round: u64) {
    let words = page_words(params, page);
    for word in 0..PAGE_WORDS {
        // SAFETY: The loader gave us `data_pages` pages of RAM from `data_start`, which
        // nothing else in the guest uses; volatile, because the point is the memory access.
        unsafe {
            words
                .add(word)
                .write_volatile(pattern_word(page, round, word))
        };
    }
}

/// Whether data page `page` holds round `round`'s pattern (or zeros, for a zero page).
fn check_page(params: &Params, page: u64, round: u64) -> bool {
    let words = page_words(params, page);
    let zero = is_zero_page(page);
    (0..PAGE_WORDS).all(|word| {
        let want = if zero {
            0
        } else {
            pattern_word(page, round, word)
        };
        // SAFETY: As in `write_page`.
        unsafe { words.add(word).read_volatile() == want }
    })
}

fn check(params: &Params, page: u64, round: u64) {
    if !check_page(params, page, round) {
        out32(PORT_MISMATCH, page as u32);
    }
}

/// Entered by the loader in long mode with `rdi` = the parameters' address, a stack, and
/// interrupts off.
///
/// # Safety
///
/// `params` points at valid [`Params`] describing RAM that only this program uses.
#[no_mangle]
#[link_section = ".text._start"]
pub unsafe extern "C" fn _start(params: *const Params) -> ! {
    // SAFETY: The caller passes valid parameters.
    let params = unsafe { params.read_volatile() };
    if params.magic != PARAMS_MAGIC {
        print("muserload test guest: bad parameters\n");
        halt();
    }
    let working_set = params.working_set_pages.min(params.data_pages);
    let sweep = params.sweep_pages.clamp(1, params.data_pages.max(1));
    print("muserload test guest: ");
    print_number(params.data_pages);
    print(" data pages, working set ");
    print_number(working_set);
    print("\n");

    for page in (0..params.data_pages).filter(|&page| !is_zero_page(page)) {
        write_page(&params, page, 0);
    }
    out32(PORT_FILLED, params.data_pages as u32);

    let (mut cursor, mut sweeps) = (0, 0u64);
    for round in 1u64.. {
        for page in (0..working_set).filter(|&page| !is_zero_page(page)) {
            check(&params, page, round - 1);
            write_page(&params, page, round);
        }
        for _ in 0..sweep {
            check(
                &params,
                cursor,
                if cursor < working_set { round } else { 0 },
            );
            cursor += 1;
            if cursor == params.data_pages {
                cursor = 0;
                sweeps += 1;
                out32(PORT_SWEEP, sweeps as u32);
            }
        }
        out32(PORT_ROUND, round as u32);
    }
    halt()
}

fn halt() -> ! {
    loop {
        // SAFETY: With interrupts off, `hlt` stops the vCPU (the loader sees a HLT exit).
        unsafe { asm!("hlt", options(nomem, nostack)) };
    }
}

#[panic_handler]
fn panic(_: &PanicInfo) -> ! {
    print("muserload test guest: panic\n");
    halt()
}
