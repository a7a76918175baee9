//! The virtual machine: KVM's VM with an in-kernel interrupt controller and timer, guest
//! RAM from a muserload object, the devices, and the vCPUs; and their state, captured on
//! the source and restored on the destination (the clocks in `clock`).

mod clock;

use std::io::{self, Write};

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_pit_config, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_userspace_memory_region,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_CPUID_ENTRIES, KVM_MAX_MSR_ENTRIES, KVM_MEM_LOG_DIRTY_PAGES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};
use vmm_sys_util::{eventfd::EventFd, fam};

pub use self::clock::{Kvmclock, ResumedClock};
use crate::{
    bitmap::Bitmap,
    boot::Entry,
    devices::{DeviceError, DeviceState, Devices, COM1_IRQ},
    interrupted::{FaultError, Interrupted},
    memory::GuestRam,
};

/// A failure to build the VM, or to capture or restore its state or a vCPU's.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A KVM ioctl failed.
    #[error("KVM {op} failed: {source}")]
    Kvm {
        /// What was asked of KVM.
        op: &'static str,
        /// Its errno.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The serial interrupt's eventfd could not be made.
    #[error("eventfd: {0}")]
    Eventfd(#[source] io::Error),
    /// The host's XSAVE state is larger than this loader migrates.
    #[error("the host's XSAVE state is {size} bytes; this loader migrates at most 4096")]
    Xsave {
        /// Its size in bytes.
        size: i32,
    },
    /// KVM's dirty log is not a bitmap of the guest's pages.
    #[error("KVM's dirty log has the wrong size")]
    DirtyLog,
    /// The devices failed.
    #[error(transparent)]
    Devices(#[from] DeviceError),
    /// A vCPU state from the source with more CPUID entries than KVM takes.
    #[error("protocol error: too many CPUID entries ({0})")]
    Cpuid(#[source] fam::Error),
    /// A vCPU state from the source with more MSRs than KVM takes at once.
    #[error("protocol error: too many MSRs ({0})")]
    StateMsrs(#[source] fam::Error),
    /// More MSRs than KVM reads at once (KVM listed them itself).
    #[error("too many MSRs ({0})")]
    Msrs(#[source] fam::Error),
    /// KVM refused an MSR of the vCPU's state.
    #[error("KVM_SET_MSRS refused MSR {index:#x}")]
    MsrRefused {
        /// The MSR.
        index: u32,
    },
    /// A fault on a page KVM touched while the state was restored could not be handled.
    #[error(transparent)]
    Fault(#[from] FaultError),
}

/// `map_err` helper for KVM calls.
fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { op, source }
}

/// Where KVM may put the TSS it needs on Intel hosts: just below 4 GiB, above any RAM
/// the test guest has.
const TSS_ADDR: usize = 0xfffb_d000;
/// The busy bit of a TSS descriptor's type.
const TSS_BUSY: u8 = 0x2;
/// The TSC's MSR, which migrates as the vCPU's TSC offset instead, with kvmclock (`clock`).
const MSR_IA32_TSC: u32 = 0x10;

/// Whether the host CPU is AMD's (or Hygon's): KVM runs guests with SVM there.
fn host_is_amd() -> bool {
    let leaf = std::arch::x86_64::__cpuid(0);
    let vendor = [leaf.ebx, leaf.edx, leaf.ecx]
        .map(u32::to_le_bytes)
        .concat();
    vendor == b"AuthenticAMD" || vendor == b"HygonGenuine"
}

/// One vCPU's state.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// Its CPUID (KVM_GET_CPUID2).
    cpuid: Vec<kvm_cpuid_entry2>,
    /// Running, halted, waiting for INIT... (KVM_GET_MP_STATE).
    mp_state: kvm_mp_state,
    /// General registers.
    regs: kvm_regs,
    /// Segment and control registers.
    sregs: kvm_sregs,
    /// FPU, SSE and AVX state.
    xsave: kvm_xsave,
    /// Extended control registers.
    xcrs: kvm_xcrs,
    /// Debug registers.
    debugregs: kvm_debugregs,
    /// The local APIC.
    lapic: kvm_lapic_state,
    /// Every MSR KVM lists that the vCPU could read.
    msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts and NMIs.
    events: kvm_vcpu_events,
    /// Its TSC offset (`KVM_VCPU_TSC_OFFSET`): its TSC is the host's plus this.
    tsc_offset: u64,
}

/// The VM-wide state: interrupt controllers and timer.
#[derive(Serialize, Deserialize)]
pub struct VmState {
    /// The master PIC.
    pic_master: kvm_irqchip,
    /// The slave PIC.
    pic_slave: kvm_irqchip,
    /// The I/O APIC.
    ioapic: kvm_irqchip,
    /// The timer.
    pit: kvm_pit_state2,
}

/// Everything but RAM: what the source sends while the guest is paused.
#[derive(Serialize, Deserialize)]
pub struct MachineState {
    /// Guest RAM in bytes.
    pub ram_size: u64,
    /// Each vCPU's state, in vCPU id order.
    pub vcpus: Vec<VcpuState>,
    /// The VM's state.
    pub vm: VmState,
    /// kvmclock, read right after the vCPUs stopped.
    pub clock: Kvmclock,
    /// The devices' state.
    pub devices: DeviceState,
}

/// A VM and what its vCPUs share.
pub struct Vm {
    /// /dev/kvm.
    kvm: Kvm,
    /// The VM.
    fd: VmFd,
    /// Guest RAM; declared after `fd`, so that it is dropped after the VM that maps it.
    ram: GuestRam,
    /// The devices.
    devices: Devices,
    /// The MSRs KVM lists but the TSC's, which a vCPU's state holds.
    msr_indices: Vec<u32>,
}

impl Vm {
    /// A VM whose RAM is `ram`, with new devices writing their console to `console`.
    pub fn new(ram: GuestRam, console: Box<dyn Write + Send>) -> Result<Self, VmError> {
        Self::build(ram, |irq| Ok(Devices::new(irq, console)))
    }

    /// A VM whose RAM is `ram`, with devices in the state `devices`.
    pub fn with_devices(
        ram: GuestRam,
        console: Box<dyn Write + Send>,
        devices: DeviceState,
    ) -> Result<Self, VmError> {
        Self::build(ram, |irq| Devices::restore(irq, console, devices))
    }

    /// A VM whose RAM is `ram`, with the devices `devices` makes around the serial
    /// interrupt's eventfd.
    fn build(
        ram: GuestRam,
        devices: impl FnOnce(EventFd) -> Result<Devices, DeviceError>,
    ) -> Result<Self, VmError> {
        let system = Kvm::new().map_err(kvm("open /dev/kvm"))?;
        let fd = system.create_vm().map_err(kvm("KVM_CREATE_VM"))?;
        fd.set_tss_address(TSS_ADDR)
            .map_err(kvm("KVM_SET_TSS_ADDR"))?;
        fd.create_irq_chip().map_err(kvm("KVM_CREATE_IRQCHIP"))?;
        fd.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(kvm("KVM_CREATE_PIT2"))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: ram.size(),
            userspace_addr: ram.guest().as_ptr() as u64,
        };
        // SAFETY: The region is `ram`'s mapping, which lives as long as the VM: both are
        // fields of `Self`, and `ram` is dropped after `fd` (declared after it).
        unsafe { fd.set_user_memory_region(region) }.map_err(kvm("KVM_SET_USER_MEMORY_REGION"))?;
        let irq = EventFd::new(nix::libc::EFD_NONBLOCK).map_err(VmError::Eventfd)?;
        fd.register_irqfd(&irq, COM1_IRQ)
            .map_err(kvm("KVM_IRQFD"))?;
        let msr_indices = system
            .get_msr_index_list()
            .map_err(kvm("KVM_GET_MSR_INDEX_LIST"))?
            .as_slice()
            .iter()
            .copied()
            .filter(|&index| index != MSR_IA32_TSC)
            .collect();
        // `kvm_xsave` holds 4 KiB; larger state (AMX) needs KVM_GET_XSAVE2, which this
        // loader does not do.
        let xsave_size = fd.check_extension_int(Cap::Xsave2);
        if xsave_size > std::mem::size_of::<kvm_xsave>() as i32 {
            return Err(VmError::Xsave { size: xsave_size });
        }
        Ok(Self {
            devices: devices(irq)?,
            kvm: system,
            fd,
            ram,
            msr_indices,
        })
    }

    /// Turns KVM's dirty page logging of guest RAM on (for good: the source's guest never
    /// runs again after the migration).
    pub fn enable_dirty_logging(&self) -> Result<(), VmError> {
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: KVM_MEM_LOG_DIRTY_PAGES,
            guest_phys_addr: 0,
            memory_size: self.ram.size(),
            userspace_addr: self.ram.guest().as_ptr() as u64,
        };
        // SAFETY: The same region as in `build`, with other flags.
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(kvm("KVM_SET_USER_MEMORY_REGION (dirty logging)"))
    }

    /// The pages the guest wrote since the last call (or since logging started), which
    /// KVM then forgets.
    pub fn dirty_pages(&self) -> Result<Bitmap, VmError> {
        let words = self
            .fd
            .get_dirty_log(0, self.ram.size() as usize)
            .map_err(kvm("KVM_GET_DIRTY_LOG"))?;
        Bitmap::from_words(self.ram.pages(), &words).ok_or(VmError::DirtyLog)
    }

    /// Guest RAM.
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// The devices.
    pub fn devices(&self) -> &Devices {
        &self.devices
    }

    /// Creates vCPU `id` ready to enter the guest at `entry`.
    pub fn boot_vcpu(&self, id: u8, entry: &Entry) -> Result<VcpuFd, VmError> {
        let vcpu = self
            .fd
            .create_vcpu(id.into())
            .map_err(kvm("KVM_CREATE_VCPU"))?;
        let mut cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm("KVM_GET_SUPPORTED_CPUID"))?;
        for leaf in cpuid.as_mut_slice() {
            // The initial APIC id, in leaf 1 and the topology leaves.
            match leaf.function {
                1 => leaf.ebx = (leaf.ebx & 0x00ff_ffff) | (u32::from(id) << 24),
                0xb | 0x1f => leaf.edx = id.into(),
                _ => {}
            }
        }
        vcpu.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
        let mut sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
        Entry::long_mode(&mut sregs);
        vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))?;
        vcpu.set_regs(&entry.regs).map_err(kvm("KVM_SET_REGS"))?;
        vcpu.set_fpu(&entry.fpu).map_err(kvm("KVM_SET_FPU"))?;
        Ok(vcpu)
    }

    /// Creates vCPU `id` in the state `state` (from [`Vm::vcpu_state`] on the source), its
    /// TSC set by `clock`; `faults` handles signal mode's faults on the pages KVM touches
    /// meanwhile.
    pub fn restore_vcpu(
        &self,
        id: u8,
        state: &VcpuState,
        clock: &ResumedClock,
        faults: &dyn Interrupted,
    ) -> Result<VcpuFd, VmError> {
        let vcpu = self
            .fd
            .create_vcpu(id.into())
            .map_err(kvm("KVM_CREATE_VCPU"))?;
        let cpuid = CpuId::from_entries(&state.cpuid).map_err(VmError::Cpuid)?;
        vcpu.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
        // The TSC first: the LAPIC's TSC-deadline timer (an MSR) is armed against it.
        let tsc_khz = vcpu.get_tsc_khz().map_err(kvm("KVM_GET_TSC_KHZ"))?;
        clock::set_tsc_offset(&vcpu, clock.tsc_offset(state.tsc_offset, tsc_khz))?;
        vcpu.set_mp_state(state.mp_state)
            .map_err(kvm("KVM_SET_MP_STATE"))?;
        vcpu.set_regs(&state.regs).map_err(kvm("KVM_SET_REGS"))?;
        let mut sregs = state.sregs;
        if host_is_amd() {
            // KVM on AMD reports the task register as busy (type 11) though SVM's VMCB
            // holds it as available (type 9), like the CPU after LTR. Hardware ignores the
            // difference, but QEMU's emulated SVM (our test hosts) then fails every I/O
            // permission bitmap check: a Linux process's ioperm()ed `out` would raise #GP
            // after the migration. Restore what the source's VMCB held.
            sregs.tr.type_ &= !TSS_BUSY;
        }
        vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))?;
        // SAFETY: `Vm::build` checked that the host's XSAVE state fits `kvm_xsave`.
        unsafe { vcpu.set_xsave(&state.xsave) }.map_err(kvm("KVM_SET_XSAVE"))?;
        vcpu.set_xcrs(&state.xcrs).map_err(kvm("KVM_SET_XCRS"))?;
        vcpu.set_debug_regs(&state.debugregs)
            .map_err(kvm("KVM_SET_DEBUGREGS"))?;
        vcpu.set_lapic(&state.lapic).map_err(kvm("KVM_SET_LAPIC"))?;
        let mut rest = state.msrs.as_slice();
        while !rest.is_empty() {
            let chunk = &rest[..rest.len().min(KVM_MAX_MSR_ENTRIES)];
            let msrs = Msrs::from_entries(chunk).map_err(VmError::StateMsrs)?;
            let set = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
            // KVM maps the page some MSRs name (kvmclock, steal time): one not loaded yet
            // makes it stop there in signal mode, after signalling this thread.
            if set < chunk.len() && !faults.interrupted(&vcpu)? {
                return Err(VmError::MsrRefused {
                    index: chunk[set].index,
                });
            }
            rest = &rest[set..];
        }
        vcpu.set_vcpu_events(&state.events)
            .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
        Ok(vcpu)
    }

    /// `vcpu`'s state. Call from its thread, after KVM_RUN completed any pending I/O.
    pub fn vcpu_state(&self, vcpu: &VcpuFd) -> Result<VcpuState, VmError> {
        Ok(VcpuState {
            cpuid: vcpu
                .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
                .map_err(kvm("KVM_GET_CPUID2"))?
                .as_slice()
                .to_vec(),
            mp_state: vcpu.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?,
            regs: vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?,
            sregs: vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?,
            xsave: vcpu.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?,
            xcrs: vcpu.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?,
            debugregs: vcpu.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?,
            lapic: vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?,
            msrs: self.read_msrs(vcpu)?,
            events: vcpu.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?,
            tsc_offset: clock::tsc_offset(vcpu)?,
        })
    }

    /// Every MSR KVM lists that this vCPU can read (KVM_GET_MSRS stops at the first one
    /// it cannot: skip that one and go on).
    fn read_msrs(&self, vcpu: &VcpuFd) -> Result<Vec<kvm_msr_entry>, VmError> {
        let mut out = Vec::with_capacity(self.msr_indices.len());
        let mut rest = self.msr_indices.as_slice();
        while !rest.is_empty() {
            let chunk = &rest[..rest.len().min(KVM_MAX_MSR_ENTRIES)];
            let entries: Vec<kvm_msr_entry> = chunk
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect();
            let mut msrs = Msrs::from_entries(&entries).map_err(VmError::Msrs)?;
            let read = vcpu.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
            out.extend_from_slice(&msrs.as_slice()[..read]);
            rest = &rest[(read + 1).min(rest.len())..];
        }
        Ok(out)
    }

    /// The VM-wide state. Call with the vCPUs stopped.
    pub fn state(&self) -> Result<VmState, VmError> {
        let chip = |id| -> Result<kvm_irqchip, VmError> {
            let mut chip = kvm_irqchip {
                chip_id: id,
                ..Default::default()
            };
            self.fd
                .get_irqchip(&mut chip)
                .map_err(kvm("KVM_GET_IRQCHIP"))?;
            Ok(chip)
        };
        Ok(VmState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
            pit: self.fd.get_pit2().map_err(kvm("KVM_GET_PIT2"))?,
        })
    }

    /// Restores the VM-wide state, before the vCPUs run.
    pub fn set_state(&self, state: &VmState) -> Result<(), VmError> {
        for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
            self.fd.set_irqchip(chip).map_err(kvm("KVM_SET_IRQCHIP"))?;
        }
        self.fd.set_pit2(&state.pit).map_err(kvm("KVM_SET_PIT2"))
    }

    /// kvmclock now, with the host's clocks. Call right after the vCPUs stop: the guest's
    /// clocks go on at the destination from this instant ([`Vm::resume_clock`]).
    pub fn clock(&self) -> Result<Kvmclock, VmError> {
        Kvmclock::read(&self.fd)
    }

    /// Sets kvmclock to `clock` (the source's) advanced by the wall-clock time passed
    /// since; returns what the vCPUs' TSCs are restored by ([`Vm::restore_vcpu`]).
    pub fn resume_clock(&self, clock: &Kvmclock) -> Result<ResumedClock, VmError> {
        clock.resume(&self.fd)
    }
}
