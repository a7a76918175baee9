//! The guest's clocks across a migration: kvmclock and each vCPU's TSC.
//!
//! A Linux guest's clocksource watchdog compares the two and marks the TSC unstable when
//! one ran while the other stood still; its lockup detectors fire when kvmclock jumps.
//! So they go together, as KVM's documentation says (`KVM_VCPU_TSC_OFFSET` in
//! Documentation/virt/kvm/devices/vcpu.rst): the source reads kvmclock right after the
//! vCPUs stop, with the host's TSC and wall-clock time at that instant ([`Kvmclock`]), and
//! each vCPU's TSC offset (its TSC is the host's plus the offset). The destination sets
//! kvmclock to that reading advanced by the wall-clock time passed since
//! (`KVM_CLOCK_REALTIME`), reads it back, and gives each vCPU the offset that puts its TSC
//! where it was at the source's reading plus as much time as kvmclock advanced
//! ([`ResumedClock::tsc_offset`]). The guest finds its two clocks where they were relative
//! to each other, to the cycle, whenever the destination sets them, and its time not behind
//! the host's by the downtime.
//!
//! The loader never sets a TSC frequency (`KVM_SET_TSC_KHZ`): a vCPU's TSC runs at the
//! host's, so an offset is in the host's cycles.

use std::{
    arch::x86_64::_rdtsc,
    time::{SystemTime, UNIX_EPOCH},
};

use kvm_bindings::{
    kvm_clock_data, kvm_device_attr, KVMIO, KVM_CLOCK_HOST_TSC, KVM_CLOCK_REALTIME,
    KVM_VCPU_TSC_CTRL, KVM_VCPU_TSC_OFFSET,
};
use kvm_ioctls::{VcpuFd, VmFd};
use serde::{Deserialize, Serialize};
use vmm_sys_util::{ioctl::ioctl_with_ref, ioctl_iow_nr};

use super::{kvm, VmError};

// kvm-ioctls has a vCPU's device attributes on arm64 only.
ioctl_iow_nr!(KVM_SET_DEVICE_ATTR, KVMIO, 0xe1, kvm_device_attr);
ioctl_iow_nr!(KVM_GET_DEVICE_ATTR, KVMIO, 0xe2, kvm_device_attr);

/// kvmclock at one instant, and the host's clocks at that instant.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Kvmclock {
    /// kvmclock, in nanoseconds.
    ns: u64,
    /// The host's TSC.
    host_tsc: u64,
    /// The host's wall-clock time (`CLOCK_REALTIME`), in nanoseconds since the epoch
    /// (none before it).
    realtime: Option<u64>,
}

impl Kvmclock {
    /// Reads `vm`'s kvmclock.
    pub(super) fn read(vm: &VmFd) -> Result<Self, VmError> {
        let clock = vm.get_clock().map_err(kvm("KVM_GET_CLOCK"))?;
        if clock.flags & KVM_CLOCK_HOST_TSC != 0 {
            return Ok(Self {
                ns: clock.clock,
                host_tsc: clock.host_tsc,
                realtime: Some(clock.realtime),
            });
        }
        // KVM gives the instant it read kvmclock at only when it runs its guests' clocks
        // off the host's TSC clocksource (its "master clock"); otherwise the host's clocks
        // are read here, a microsecond or so later.
        // SAFETY: RDTSC reads a counter; x86-64 always has it.
        let host_tsc = unsafe { _rdtsc() };
        let realtime = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|since| since.as_nanos() as u64);
        Ok(Self {
            ns: clock.clock,
            host_tsc,
            realtime,
        })
    }

    /// Sets `vm`'s kvmclock to this reading (from the source) advanced by the wall-clock
    /// time passed since (KVM never sets it back), and reads it back: what the vCPUs' TSCs
    /// are set by. Call before the vCPUs are restored, so that their TSC-deadline timers
    /// are armed against the TSC they will run with.
    pub(super) fn resume(&self, vm: &VmFd) -> Result<ResumedClock, VmError> {
        let clock = kvm_clock_data {
            clock: self.ns,
            realtime: self.realtime.unwrap_or_default(),
            flags: if self.realtime.is_some() {
                KVM_CLOCK_REALTIME
            } else {
                0
            },
            ..Default::default()
        };
        vm.set_clock(&clock).map_err(kvm("KVM_SET_CLOCK"))?;
        Ok(ResumedClock {
            source: *self,
            now: Self::read(vm)?,
        })
    }
}

/// kvmclock set at the destination: the source's reading and the destination's, taken
/// right after it was set.
pub struct ResumedClock {
    /// The source's reading.
    source: Kvmclock,
    /// The destination's.
    now: Kvmclock,
}

impl ResumedClock {
    /// The TSC offset of a vCPU whose offset was `source_offset` at the source and whose
    /// TSC runs at `tsc_khz`: its TSC at the source's reading, plus the time kvmclock
    /// advanced since, at the destination's reading.
    pub(super) fn tsc_offset(&self, source_offset: u64, tsc_khz: u32) -> u64 {
        let elapsed_ns = self.now.ns.saturating_sub(self.source.ns);
        let cycles = u128::from(elapsed_ns) * u128::from(tsc_khz) / 1_000_000;
        self.source
            .host_tsc
            .wrapping_add(source_offset)
            .wrapping_add(cycles as u64)
            .wrapping_sub(self.now.host_tsc)
    }
}

/// Reads (`KVM_GET_DEVICE_ATTR`) or writes (`KVM_SET_DEVICE_ATTR`, `request`) `vcpu`'s
/// TSC offset at `value`; `op` names it for errors.
///
/// # Safety
///
/// `value` is valid for `request`: to read 8 bytes from, or to write 8 bytes to, until
/// the call returns.
unsafe fn tsc_offset_attr(
    vcpu: &VcpuFd,
    request: nix::libc::c_ulong,
    op: &'static str,
    value: *mut u64,
) -> Result<(), VmError> {
    let attr = kvm_device_attr {
        group: KVM_VCPU_TSC_CTRL,
        attr: u64::from(KVM_VCPU_TSC_OFFSET),
        addr: value as u64,
        ..Default::default()
    };
    // SAFETY: KVM reads `attr`, and the 8 bytes at `attr.addr` or writes them, which the
    // caller says it may; nothing else of ours.
    if unsafe { ioctl_with_ref(vcpu, request, &attr) } != 0 {
        return Err(VmError::Kvm {
            op,
            source: kvm_ioctls::Error::last(),
        });
    }
    Ok(())
}

/// `vcpu`'s TSC offset: its TSC is the host's plus this.
pub(super) fn tsc_offset(vcpu: &VcpuFd) -> Result<u64, VmError> {
    let mut offset = 0u64;
    // SAFETY: KVM writes the offset to `offset`, which outlives the call.
    unsafe {
        tsc_offset_attr(
            vcpu,
            KVM_GET_DEVICE_ATTR(),
            "KVM_GET_DEVICE_ATTR (TSC offset)",
            &mut offset,
        )
    }?;
    Ok(offset)
}

/// Sets `vcpu`'s TSC offset to `offset`.
pub(super) fn set_tsc_offset(vcpu: &VcpuFd, mut offset: u64) -> Result<(), VmError> {
    // SAFETY: KVM reads the offset from `offset`, which outlives the call.
    unsafe {
        tsc_offset_attr(
            vcpu,
            KVM_SET_DEVICE_ATTR(),
            "KVM_SET_DEVICE_ATTR (TSC offset)",
            &mut offset,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resumption whose source read kvmclock at `ns` with the host's TSC at `host_tsc`,
    /// and whose destination read it at `now_ns` with its host's TSC at `now_tsc`.
    fn resumed(ns: u64, host_tsc: u64, now_ns: u64, now_tsc: u64) -> ResumedClock {
        ResumedClock {
            source: Kvmclock {
                ns,
                host_tsc,
                realtime: None,
            },
            now: Kvmclock {
                ns: now_ns,
                host_tsc: now_tsc,
                realtime: None,
            },
        }
    }

    #[test]
    fn the_tsc_advances_as_far_as_kvmclock() {
        // At the source the guest's TSC read 1000 + 500 when kvmclock read 7 s; kvmclock
        // advanced 2 s since, 2e9 cycles at 1 GHz.
        let clock = resumed(7_000_000_000, 1000, 9_000_000_000, 40_000);
        let offset = clock.tsc_offset(500, 1_000_000);
        assert_eq!(40_000u64.wrapping_add(offset), 1500 + 2_000_000_000);
    }

    #[test]
    fn offsets_wrap_as_the_hardware_adds_them() {
        // A guest TSC below the host's: a negative offset, as KVM stores it.
        let clock = resumed(5, 1_000_000, 5, 3_000_000);
        let offset = clock.tsc_offset(0u64.wrapping_sub(400_000), 2_600_000);
        assert_eq!(offset, 0u64.wrapping_sub(2_400_000));
        assert_eq!(3_000_000u64.wrapping_add(offset), 600_000);
    }

    #[test]
    fn a_kvmclock_behind_the_source_leaves_the_tsc_where_it_was() {
        let clock = resumed(10, 100, 4, 100);
        assert_eq!(clock.tsc_offset(7, 2_600_000), 7);
    }
}
