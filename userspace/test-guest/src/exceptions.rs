//! Exception handlers: the loader enters the guest with an empty IDT, so that any exception
//! would end in a triple fault, after which KVM resets the vCPU and its state tells nothing.
//! These handlers first name the exception, its rip, error code and cr2 on the serial
//! console, then stop the guest.

use core::arch::{asm, global_asm};

use crate::{print, print_hex};

/// Vectors 0-31: the CPU's exceptions (and NMI, vector 2).
const VECTORS: usize = 32;

/// The exceptions for which the CPU pushes an error code.
fn has_error_code(vector: u64) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

// One 16-byte stub per vector: it pushes its vector and jumps to the common part, which
// passes the stack (vector, [error code,] rip, cs, rflags, rsp, ss) to `exception`.
global_asm!(
    ".pushsection .text.exceptions, \"ax\"",
    ".balign 16",
    ".global muserload_exception_stubs",
    "muserload_exception_stubs:",
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    ".balign 16",
    "push \\n",
    "jmp 2f",
    ".endr",
    "2:",
    "mov rdi, rsp",
    "and rsp, -16",
    "call {handler}",
    "ud2",
    ".popsection",
    handler = sym exception,
);

extern "C" {
    static muserload_exception_stubs: u8;
}

/// What `lidt` loads.
#[repr(C, packed)]
struct Pointer {
    limit: u16,
    base: u64,
}

/// Stops the guest for good: with no IDT, an exception ends in a triple fault, which KVM
/// reports to the loader as a shutdown (the loader then fails, saying so). `hlt` would not
/// do: KVM's in-kernel interrupt controller sleeps on it, and the loader would wait forever.
pub fn shut_down() -> ! {
    let none = Pointer { limit: 0, base: 0 };
    // SAFETY: Loading an empty IDT and raising #UD ends the guest; nothing runs after it.
    unsafe { asm!("lidt [{0}]", "ud2", in(reg) &none, options(noreturn, nostack)) }
}

/// A 64-bit interrupt gate.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_middle: u16,
    offset_high: u32,
    reserved: u32,
}

/// The IDT: one gate per exception vector.
pub type Idt = [Gate; VECTORS];

/// Fills `idt` with the handlers and loads it. `idt` must stay where it is for as long as
/// the guest runs.
pub fn install(idt: &mut Idt) {
    let cs: u16;
    // SAFETY: Reading CS has no side effects.
    unsafe { asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack)) };
    let stubs = core::ptr::addr_of!(muserload_exception_stubs) as u64;
    for (vector, gate) in idt.iter_mut().enumerate() {
        let handler = stubs + 16 * vector as u64;
        *gate = Gate {
            offset_low: handler as u16,
            selector: cs,
            ist: 0,
            // Present, DPL 0, 64-bit interrupt gate.
            attributes: 0x8e,
            offset_middle: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        };
    }
    let pointer = Pointer {
        limit: (size_of::<Idt>() - 1) as u16,
        base: idt.as_ptr() as u64,
    };
    // SAFETY: `pointer` describes a valid IDT whose gates lead to the stubs above; the
    // caller keeps it in place.
    unsafe { asm!("lidt [{0}]", in(reg) &pointer, options(readonly, nostack)) };
}

/// The common handler: reports the exception and stops the guest.
///
/// # Safety
///
/// Called by the stubs only, with `frame` pointing at what they and the CPU pushed.
unsafe extern "C" fn exception(frame: *const u64) -> ! {
    // SAFETY: The stub pushed the vector at `frame`, and the CPU the rest above it.
    let (vector, error, rip) = unsafe {
        let vector = frame.read();
        if has_error_code(vector) {
            (vector, frame.add(1).read(), frame.add(2).read())
        } else {
            (vector, 0, frame.add(1).read())
        }
    };
    let cr2: u64;
    // SAFETY: Reading CR2 has no side effects.
    unsafe { asm!("mov {0}, cr2", out(reg) cr2, options(nomem, nostack)) };
    print("muserload test guest: exception ");
    print_hex(vector);
    print(" at rip ");
    print_hex(rip);
    print(", error code ");
    print_hex(error);
    print(", cr2 ");
    print_hex(cr2);
    print("\n");
    shut_down()
}
