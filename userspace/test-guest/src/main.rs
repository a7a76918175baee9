//! The built-in test guest of `muserload-loader`: a freestanding program that fills its
//! memory with known patterns, then rewrites a working set and checks everything it reads,
//! round after round, reporting through I/O ports (`muserload_test_guest_abi`). It knows
//! nothing of migration: whether its memory arrives before or after it runs, every page
//! must read as it was last written.

#![no_std]
#![no_main]

mod exceptions;

use core::{arch::asm, panic::PanicInfo};

use muserload_test_guest_abi::{run, Params, Reporter, PARAMS_MAGIC};

/// The serial port's transmit register (COM1).
const SERIAL: u16 = 0x3f8;

fn out32(port: u16, value: u32) {
    // SAFETY: `out` to an emulated port has no effect on memory.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack)) };
}

/// Writes one byte to the serial console.
fn put(byte: u8) {
    // SAFETY: As in `out32`.
    unsafe { asm!("out dx, al", in("dx") SERIAL, in("al") byte, options(nomem, nostack)) };
}

fn print(text: &str) {
    text.bytes().for_each(put);
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
    digits[at..].iter().copied().for_each(put);
}

fn print_hex(n: u64) {
    print("0x");
    for shift in (0..16).rev().map(|digit| digit * 4) {
        let digit = ((n >> shift) & 0xf) as u8;
        put(if digit < 10 {
            b'0' + digit
        } else {
            b'a' + digit - 10
        });
    }
}

/// Reports with `out` instructions.
struct Ports;

impl Reporter for Ports {
    fn report(&mut self, port: u16, value: u32) {
        out32(port, value);
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
    // This frame is never left: the IDT in it stays in place.
    let mut idt = exceptions::Idt::default();
    exceptions::install(&mut idt);
    // SAFETY: The caller passes valid parameters.
    let params = unsafe { params.read_volatile() };
    if params.magic != PARAMS_MAGIC {
        print("muserload test guest: bad parameters\n");
        exceptions::shut_down();
    }
    let working_set = params.working_set_pages.min(params.data_pages);
    print("muserload test guest: ");
    print_number(params.data_pages);
    print(" data pages, working set ");
    print_number(working_set);
    print("\n");
    // SAFETY: The loader gave us `data_pages` pages of RAM from `data_start`, which nothing
    // else in the guest uses.
    unsafe { run(params.data_start as *mut u64, &params, &mut Ports) }
}

#[panic_handler]
fn panic(_: &PanicInfo) -> ! {
    print("muserload test guest: panic\n");
    exceptions::shut_down()
}
