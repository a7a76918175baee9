//! Booting a guest without firmware: a vCPU already in 64-bit long mode, with a GDT and
//! identity-mapped page tables in low guest memory, entering either the built-in test guest
//! (an ELF image at the address it was linked for, its parameters at [`PARAMS_ADDR`]) or
//! Linux (a bzImage and an initramfs, by the kernel's 64-bit boot protocol).

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
};

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use linux_loader::{
    configurator::{linux::LinuxBootConfigurator, BootConfigurator, BootParams},
    loader::{
        bootparam::{boot_e820_entry, boot_params},
        bzimage::BzImage,
        elf::Elf,
        KernelLoader,
    },
};
use muserload_test_guest_abi::{Params, PARAMS_ADDR, PARAMS_MAGIC};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryError};

use crate::memory::GuestRam;

/// The GDT: null, 64-bit code, data, TSS.
const GDT_ADDR: u64 = 0x500;
/// An empty IDT: the test guest runs with interrupts off.
const IDT_ADDR: u64 = 0x520;
/// The PML4, then one PDPT, then the page directories (2 MiB pages).
const PML4_ADDR: u64 = 0x9000;
/// The PDPT.
const PDPT_ADDR: u64 = 0xa000;
/// The first page directory.
const PD_ADDR: u64 = 0xb000;
/// Page directories mapping the first 4 GiB, the most the test guest uses.
const PD_COUNT: u64 = 4;
/// The stack grows down from here.
const STACK_TOP: u64 = 0x8_0000;
/// Linux's boot parameters ("zero page").
const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Linux's command line...
const CMDLINE_ADDR: u64 = 0x2_0000;
/// ...and the room it has, its NUL included.
const CMDLINE_MAX: usize = 0x1_0000;
/// Linux's first stack.
const LINUX_STACK: u64 = 0x8ff0;
/// Low memory ends where the EBDA would start.
const LOW_RAM_END: u64 = 0x9_fc00;
/// The images must load at or above 1 MiB.
const IMAGE_MIN: u64 = 0x10_0000;
/// Test data starts at 2 MiB, above the image.
pub const DATA_START: u64 = 0x20_0000;

/// CR0: protected mode.
const CR0_PE: u64 = 1;
/// CR0: extension type (always 1 on modern CPUs).
const CR0_ET: u64 = 1 << 4;
/// CR0: native FPU error reporting.
const CR0_NE: u64 = 1 << 5;
/// CR0: paging.
const CR0_PG: u64 = 1 << 31;
/// CR4: physical address extension, which long mode needs.
const CR4_PAE: u64 = 1 << 5;
/// EFER: long mode enabled...
const EFER_LME: u64 = 1 << 8;
/// ...and active.
const EFER_LMA: u64 = 1 << 10;

/// A failure to load a guest into its RAM.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// RAM the test guest cannot run in.
    #[error(
        "the test guest needs more than {} MiB and at most {} GiB of RAM",
        DATA_START >> 20,
        PD_COUNT
    )]
    TestGuestRam,
    /// An image file that cannot be read.
    #[error("cannot load {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// An image that the loader refused.
    #[error("cannot load {}: {source}", .path.display())]
    Image {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// A test guest image that reaches into its test data.
    #[error(
        "cannot load {}: it ends at {end:#x}, past the start of test data at {DATA_START:#x}",
        .path.display()
    )]
    ImageTooLarge {
        /// The file.
        path: PathBuf,
        /// Where it ends.
        end: u64,
    },
    /// A bzImage without a setup header.
    #[error("cannot load {}: no setup header", .path.display())]
    NoSetupHeader {
        /// The file.
        path: PathBuf,
    },
    /// An initramfs larger than the RAM below 4 GiB left by the kernel.
    #[error("cannot load {}: does not fit in guest RAM", .path.display())]
    InitrdTooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A kernel command line too long for its place (or with a NUL in it).
    #[error("the kernel command line is too long")]
    Cmdline,
    /// Writing Linux's boot parameters failed.
    #[error("writing the boot parameters: {0}")]
    BootParams(#[source] linux_loader::configurator::Error),
    /// Writing guest memory failed.
    #[error("writing guest memory at {addr:#x}: {source}")]
    Write {
        /// The guest address.
        addr: u64,
        /// Why.
        #[source]
        source: GuestMemoryError,
    },
}

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
pub fn load_test_guest(
    ram: &GuestRam,
    path: &Path,
    config: TestGuestConfig,
) -> Result<Entry, BootError> {
    if ram.size() <= DATA_START || ram.size() > PD_COUNT << 30 {
        return Err(BootError::TestGuestRam);
    }
    let mut image = File::open(path).map_err(read_error(path))?;
    let loaded = Elf::load(ram.view(), None, &mut image, Some(GuestAddress(IMAGE_MIN)))
        .map_err(image_error(path))?;
    if loaded.kernel_end > DATA_START {
        return Err(BootError::ImageTooLarge {
            path: path.into(),
            end: loaded.kernel_end,
        });
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
    Ok(Entry {
        regs,
        fpu: initial_fpu(),
    })
}

/// A Linux guest.
#[derive(Clone, Copy, Debug)]
pub struct LinuxGuest<'a> {
    /// The kernel (bzImage).
    pub kernel: &'a Path,
    /// The initramfs.
    pub initrd: &'a Path,
    /// The kernel command line.
    pub cmdline: &'a str,
}

/// `boot_params` as guest memory bytes (linux-loader leaves that to its users).
#[derive(Clone, Copy, Default)]
struct ZeroPage(boot_params);

// SAFETY: `boot_params` is plain old data, packed: every byte pattern is valid, there is
// no padding.
unsafe impl ByteValued for ZeroPage {}

/// Loads Linux into `ram` (the kernel at 1 MiB, the initramfs at the top of RAM below
/// 4 GiB, the command line and the boot parameters with an E820 map), and returns how the
/// boot vCPU enters it.
pub fn load_linux(ram: &GuestRam, guest: LinuxGuest<'_>) -> Result<Entry, BootError> {
    let mut kernel = File::open(guest.kernel).map_err(read_error(guest.kernel))?;
    let loaded = BzImage::load(ram.view(), None, &mut kernel, Some(GuestAddress(IMAGE_MIN)))
        .map_err(image_error(guest.kernel))?;
    let mut hdr = loaded
        .setup_header
        .ok_or_else(|| BootError::NoSetupHeader {
            path: guest.kernel.into(),
        })?;
    let initrd = std::fs::read(guest.initrd).map_err(read_error(guest.initrd))?;
    let top = ram.size().min(1 << 32);
    let initrd_addr = top
        .checked_sub(initrd.len() as u64)
        .map(|a| a & !0xfff)
        .filter(|&a| a >= loaded.kernel_end)
        .ok_or_else(|| BootError::InitrdTooLarge {
            path: guest.initrd.into(),
        })?;
    write(ram, initrd_addr, &initrd)?;
    if guest.cmdline.len() >= CMDLINE_MAX || guest.cmdline.contains('\0') {
        return Err(BootError::Cmdline);
    }
    write(ram, CMDLINE_ADDR, guest.cmdline.as_bytes())?;
    write(ram, CMDLINE_ADDR + guest.cmdline.len() as u64, &[0])?;

    hdr.type_of_loader = 0xff;
    hdr.boot_flag = 0xaa55;
    hdr.header = 0x5372_6448; // "HdrS"
    hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    hdr.cmdline_size = guest.cmdline.len() as u32 + 1;
    hdr.ramdisk_image = initrd_addr as u32;
    hdr.ramdisk_size = initrd.len() as u32;
    let mut params = ZeroPage::default();
    params.0.hdr = hdr;
    let e820 = [(0, LOW_RAM_END), (IMAGE_MIN, ram.size() - IMAGE_MIN)];
    for (i, (addr, size)) in e820.into_iter().enumerate() {
        params.0.e820_table[i] = boot_e820_entry {
            addr,
            size,
            r#type: 1, // E820_RAM
        };
    }
    params.0.e820_entries = e820.len() as u8;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_ADDR)),
        ram.view(),
    )
    .map_err(BootError::BootParams)?;
    write_gdt(ram)?;
    write_page_tables(ram)?;
    Ok(Entry {
        regs: kvm_regs {
            // The 64-bit entry point is 0x200 into the protected-mode kernel.
            rip: loaded.kernel_load.0 + 0x200,
            rsp: LINUX_STACK,
            rbp: LINUX_STACK,
            rsi: ZERO_PAGE_ADDR,
            rflags: 0x2,
            ..Default::default()
        },
        fpu: initial_fpu(),
    })
}

/// The FPU as after `FNINIT`, with SSE's exceptions masked (MXCSR's reset value).
fn initial_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// `map_err` helper for reading the image at `path`.
fn read_error(path: &Path) -> impl FnOnce(io::Error) -> BootError + '_ {
    move |source| BootError::Read {
        path: path.into(),
        source,
    }
}

/// `map_err` helper for loading the image at `path`.
fn image_error(path: &Path) -> impl FnOnce(linux_loader::loader::Error) -> BootError + '_ {
    move |source| BootError::Image {
        path: path.into(),
        source,
    }
}

/// Writes `bytes` into guest memory at `addr`.
fn write(ram: &GuestRam, addr: u64, bytes: &[u8]) -> Result<(), BootError> {
    ram.view()
        .write_slice(bytes, GuestAddress(addr))
        .map_err(|source| BootError::Write { addr, source })
}

/// A GDT descriptor from its flags (access byte and the granularity nibble), base, limit.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    (((base as u64) & 0xff00_0000) << 32)
        | (((flags as u64) & 0x0000_f0ff) << 40)
        | (((limit as u64) & 0x000f_0000) << 32)
        | (((base as u64) & 0x00ff_ffff) << 16)
        | ((limit as u64) & 0x0000_ffff)
}

/// The GDT's entries, at [`GDT_ADDR`]: what [`segment`] makes the segment registers of.
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

/// Writes the GDT, and the empty IDT after it.
fn write_gdt(ram: &GuestRam) -> Result<(), BootError> {
    let bytes: Vec<u8> = GDT.iter().flat_map(|entry| entry.to_le_bytes()).collect();
    write(ram, GDT_ADDR, &bytes)?;
    write(ram, IDT_ADDR, &0u64.to_le_bytes())
}

/// Identity-maps the first `PD_COUNT` GiB with 2 MiB pages.
fn write_page_tables(ram: &GuestRam) -> Result<(), BootError> {
    /// An entry's present and writable bits.
    const PRESENT_WRITABLE: u64 = 0x3;
    /// A page directory entry's page size bit: a 2 MiB page.
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
