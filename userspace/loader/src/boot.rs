//! Booting the built-in test guest: its ELF image at the address it was linked for, its
//! parameters, and a vCPU already in 64-bit long mode (no firmware), with a GDT and
//! identity-mapped page tables in low guest memory.

use std::{fs::File, path::Path};

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use linux_loader::loader::{elf::Elf, KernelLoader};
use muserload_test_guest_abi::{Params, PARAMS_ADDR, PARAMS_MAGIC};
use vm_memory::{Bytes, GuestAddress};

use crate::{
    error::{Error, Result},
    memory::GuestRam,
};

/// The GDT: null, 64-bit code, data, TSS.
const GDT_ADDR: u64 = 0x500;
/// An empty IDT: the test guest runs with interrupts off.
const IDT_ADDR: u64 = 0x520;
/// PML4, then one PDPT, then the page directories (2 MiB pages).
const PML4_ADDR: u64 = 0x9000;
const PDPT_ADDR: u64 = 0xa000;
const PD_ADDR: u64 = 0xb000;
/// Page directories mapping the first 4 GiB, the most the test guest uses.
const PD_COUNT: u64 = 4;
/// The stack grows down from here.
const STACK_TOP: u64 = 0x8_0000;
/// The images must load at or above 1 MiB.
const IMAGE_MIN: u64 = 0x10_0000;
/// Test data starts at 2 MiB, above the image.
pub const DATA_START: u64 = 0x20_0000;

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// What the test guest is asked to do.
#[derive(Clone, Copy, Debug)]
pub struct TestGuestConfig {
    /// Pages rewritten every round.
    pub working_set_pages: u64,
    /// Pages checked per round.
    pub sweep_pages: u64,
}

/// How the boot vCPU enters the guest: its registers, and [`Entry::long_mode`] for its
/// special registers.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    /// General registers: the entry point, stack and argument.
    pub regs: kvm_regs,
    /// The FPU's initial state.
    pub fpu: kvm_fpu,
}

/// Loads the test guest image at `path` into `ram`, writes its parameters, the GDT and the
/// page tables, and returns how the boot vCPU enters it.
pub fn load_test_guest(ram: &GuestRam, path: &Path, config: TestGuestConfig) -> Result<Entry> {
    let image_error = |reason: String| Error::Image {
        path: path.display().to_string(),
        reason,
    };
    if ram.size() <= DATA_START || ram.size() > PD_COUNT << 30 {
        return Err(Error::Config(format!(
            "the test guest needs more than {} MiB and at most {} GiB of RAM",
            DATA_START >> 20,
            PD_COUNT
        )));
    }
    let mut image = File::open(path).map_err(|e| image_error(e.to_string()))?;
    let loaded = Elf::load(ram.view(), None, &mut image, Some(GuestAddress(IMAGE_MIN)))
        .map_err(|e| image_error(e.to_string()))?;
    if loaded.kernel_end > DATA_START {
        return Err(image_error(format!(
            "it ends at {:#x}, past the start of test data at {DATA_START:#x}",
            loaded.kernel_end
        )));
    }
    let params = Params {
        magic: PARAMS_MAGIC,
        data_start: DATA_START,
        data_pages: (ram.size() - DATA_START) / muserload::PAGE_SIZE as u64,
        working_set_pages: config.working_set_pages,
        sweep_pages: config.sweep_pages,
    };
    write(ram, PARAMS_ADDR, &params.to_bytes())?;
    write_gdt(ram)?;
    write_page_tables(ram)?;

    let regs = kvm_regs {
        rip: loaded.kernel_load.0,
        rsp: STACK_TOP - 8,
        rdi: PARAMS_ADDR,
        rflags: 0x2,
        ..Default::default()
    };
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    Ok(Entry { regs, fpu })
}

fn write(ram: &GuestRam, addr: u64, bytes: &[u8]) -> Result<()> {
    ram.view()
        .write_slice(bytes, GuestAddress(addr))
        .map_err(|e| Error::Config(format!("writing guest memory at {addr:#x}: {e}")))
}

/// A GDT descriptor from its flags (access byte and the granularity nibble), base, limit.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    (((base as u64) & 0xff00_0000) << 32)
        | (((flags as u64) & 0x0000_f0ff) << 40)
        | (((limit as u64) & 0x000f_0000) << 32)
        | (((base as u64) & 0x00ff_ffff) << 16)
        | ((limit as u64) & 0x0000_ffff)
}

const GDT: [u64; 4] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff), // code: 64-bit, present, execute/read
    gdt_entry(0xc093, 0, 0xfffff), // data: present, read/write
    gdt_entry(0x808b, 0, 0xfffff), // TSS: present, busy
];

/// The segment register for GDT entry `index`, as the CPU would cache it.
fn segment(index: u16) -> kvm_segment {
    let entry = GDT[usize::from(index)];
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: ((entry >> 55) & 1) as u8,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

fn write_gdt(ram: &GuestRam) -> Result<()> {
    let bytes: Vec<u8> = GDT.iter().flat_map(|entry| entry.to_le_bytes()).collect();
    write(ram, GDT_ADDR, &bytes)?;
    write(ram, IDT_ADDR, &0u64.to_le_bytes())
}

/// Identity-maps the first `PD_COUNT` GiB with 2 MiB pages.
fn write_page_tables(ram: &GuestRam) -> Result<()> {
    const PRESENT_WRITABLE: u64 = 0x3;
    const HUGE: u64 = 0x80;
    write(
        ram,
        PML4_ADDR,
        &(PDPT_ADDR | PRESENT_WRITABLE).to_le_bytes(),
    )?;
    for gib in 0..PD_COUNT {
        let pd = PD_ADDR + gib * 0x1000;
        write(
            ram,
            PDPT_ADDR + gib * 8,
            &(pd | PRESENT_WRITABLE).to_le_bytes(),
        )?;
        let entries: Vec<u8> = (0..512u64)
            .flat_map(|i| (((gib << 30) + (i << 21)) | PRESENT_WRITABLE | HUGE).to_le_bytes())
            .collect();
        write(ram, pd, &entries)?;
    }
    Ok(())
}

impl Entry {
    /// Puts `sregs` (a new vCPU's) into long mode with the loader's GDT and page tables.
    pub fn long_mode(sregs: &mut kvm_sregs) {
        let data = segment(2);
        sregs.cs = segment(1);
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.tr = segment(3);
        sregs.gdt.base = GDT_ADDR;
        sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
        sregs.idt.base = IDT_ADDR;
        sregs.idt.limit = 7;
        sregs.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_PG;
        sregs.cr3 = PML4_ADDR;
        sregs.cr4 = CR4_PAE;
        sregs.efer = EFER_LME | EFER_LMA;
    }
}
