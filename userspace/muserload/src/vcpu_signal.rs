//! Signal mode for a KVM vCPU thread, taken in its own run loop instead of a handler, as
//! QEMU takes the signal that kicks its vCPUs.
//!
//! The thread blocks the signal, and `KVM_SET_SIGNAL_MASK` lets it through only while the
//! thread is in `KVM_RUN`. A fault there (KVM reading guest memory that is not loaded)
//! queues the signal, and `KVM_RUN` returns `EINTR` with the signal still pending: blocked
//! again, nothing delivers it. The loop takes it with `sigtimedwait()`, which gives the
//! address, loads the page and enters again. Against a handler this saves, per fault, the
//! signal frame (the FPU state saved to the user stack and restored from it) and
//! `rt_sigreturn`; it also leaves the thread's own code free to allocate and lock while it
//! loads, which a handler may not.
//!
//! [`map_loaded`] then maps the loaded page into the VM before the loop enters again, so
//! that the access does not exit a second time.
//!
//! Only `KVM_RUN`'s faults can be taken so: a fault of the thread's own code, with the signal
//! blocked, gets `SIGBUS` from the module (a blocked signal would never run a handler).

use std::{mem::MaybeUninit, os::fd::AsRawFd};

use nix::{
    errno::Errno,
    libc,
    sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal},
};

use crate::{uapi::MUSERLOAD_SI_CODE, Error, Result};

/// `KVM_SET_SIGNAL_MASK`: `_IOW(KVMIO, 0x8b, struct kvm_signal_mask)`, whose fixed part is
/// its `__u32 len`.
const KVM_SET_SIGNAL_MASK: libc::Ioctl = nix::request_code_write!(0xae, 0x8b, 4) as libc::Ioctl;

/// The kernel's signal set, `sigset_t` as `KVM_SET_SIGNAL_MASK` wants it: 64 bits.
const KERNEL_SIGSET_BYTES: u32 = 8;

/// `struct kvm_signal_mask` with a kernel signal set.
#[repr(C)]
struct KvmSignalMask {
    len: u32,
    sigset: [u8; KERNEL_SIGSET_BYTES as usize],
}

/// A vCPU thread's fault signal, blocked outside `KVM_RUN` and taken after it.
pub struct VcpuFaultSignal {
    signal: Signal,
}

impl VcpuFaultSignal {
    /// In the vCPU's own thread: blocks `signal` (the one `vcpu`'s guest memory is armed
    /// with, [`crate::FaultMode::Signal`]) and lets `KVM_RUN` of `vcpu` run with the
    /// thread's mask without it.
    pub fn block_outside_run(signal: Signal, vcpu: &impl AsRawFd) -> Result<Self> {
        let mut blocked = SigSet::empty();
        blocked.add(signal);
        let mut before = SigSet::empty();
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&blocked), Some(&mut before)).map_err(
            |errno| Error::Ioctl {
                op: "pthread_sigmask",
                errno,
            },
        )?;
        let mut running = before;
        running.remove(signal);
        let mask = KvmSignalMask {
            len: KERNEL_SIGSET_BYTES,
            sigset: kernel_sigset(&running),
        };
        // SAFETY: `mask` is a `struct kvm_signal_mask` with `len` bytes of set after `len`,
        // which the kernel only reads.
        let ret = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_SET_SIGNAL_MASK, &mask) };
        if ret < 0 {
            let errno = Errno::last();
            // The thread's mask as it was: its signal runs handlers again.
            let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&before), None);
            return Err(Error::Ioctl {
                op: "KVM_SET_SIGNAL_MASK",
                errno,
            });
        }
        Ok(Self { signal })
    }

    /// Takes the fault signal pending for this thread, if any: the faulting address. A
    /// signal that some process sent (not a fault's) is taken and ignored.
    pub fn take(&self) -> Result<Option<u64>> {
        let mut set = SigSet::empty();
        set.add(self.signal);
        let mut info = MaybeUninit::<libc::siginfo_t>::uninit();
        let now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `set` and `now` are valid for reading and `info` for writing.
        let ret = unsafe { libc::sigtimedwait(set.as_ref(), info.as_mut_ptr(), &now) };
        if ret < 0 {
            return match Errno::last() {
                Errno::EAGAIN => Ok(None),
                errno => Err(Error::Ioctl {
                    op: "sigtimedwait",
                    errno,
                }),
            };
        }
        // SAFETY: `sigtimedwait()` returned a signal: it filled `info`.
        let info = unsafe { info.assume_init() };
        if info.si_code != MUSERLOAD_SI_CODE as i32 {
            return Ok(None);
        }
        // SAFETY: A fault signal's `si_addr` is its address.
        Ok(Some(unsafe { info.si_addr() } as u64))
    }
}

/// `KVM_PRE_FAULT_MEMORY`: `_IOWR(KVMIO, 0xd5, struct kvm_pre_fault_memory)`, 64 bytes.
const KVM_PRE_FAULT_MEMORY: libc::Ioctl =
    nix::request_code_readwrite!(0xae, 0xd5, size_of::<KvmPreFaultMemory>()) as libc::Ioctl;

/// `struct kvm_pre_fault_memory`.
#[repr(C)]
#[derive(Default)]
struct KvmPreFaultMemory {
    gpa: u64,
    size: u64,
    flags: u64,
    padding: [u64; 5],
}

/// After a vCPU's fault was loaded: maps guest physical `[gpa, gpa + len)` of `vcpu`'s VM
/// into its nested page tables now (`KVM_PRE_FAULT_MEMORY`, x86 with TDP, Linux 6.10), so
/// that the access `KVM_RUN` enters again for finds it mapped, where otherwise it exits to
/// KVM a second time and KVM maps it then. A kernel without it, or a call interrupted
/// (another signal), leaves the pages to that exit: not an error.
pub fn map_loaded(vcpu: &impl AsRawFd, gpa: u64, len: u64) -> Result<()> {
    let mut range = KvmPreFaultMemory {
        gpa,
        size: len,
        ..Default::default()
    };
    // SAFETY: `range` is a `struct kvm_pre_fault_memory`, which KVM reads and updates.
    let ret = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_PRE_FAULT_MEMORY, &mut range) };
    match Errno::result(ret) {
        Ok(_) | Err(Errno::EINTR | Errno::EAGAIN | Errno::ENOTTY | Errno::EOPNOTSUPP) => Ok(()),
        Err(errno) => Err(Error::Ioctl {
            op: "KVM_PRE_FAULT_MEMORY",
            errno,
        }),
    }
}

/// `set` as the kernel's 64-bit signal set: bit `n - 1` for signal `n`.
fn kernel_sigset(set: &SigSet) -> [u8; KERNEL_SIGSET_BYTES as usize] {
    let bits = Signal::iterator()
        .filter(|&signal| set.contains(signal))
        .fold(0u64, |bits, signal| bits | 1 << (signal as i32 - 1));
    bits.to_ne_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ioctl_number_is_kvms() {
        // <linux/kvm.h>: #define KVM_SET_SIGNAL_MASK _IOW(KVMIO, 0x8b, struct kvm_signal_mask)
        assert_eq!(KVM_SET_SIGNAL_MASK as u64, 0x4004_ae8b);
    }

    #[test]
    fn the_pre_fault_ioctl_is_kvms() {
        // <linux/kvm.h>: #define KVM_PRE_FAULT_MEMORY _IOWR(KVMIO, 0xd5, ...), 64 bytes.
        assert_eq!(size_of::<KvmPreFaultMemory>(), 64);
        assert_eq!(KVM_PRE_FAULT_MEMORY as u64, 0xc040_aed5);
    }

    #[test]
    fn a_kernel_sigset_has_bit_n_minus_1_for_signal_n() {
        let mut set = SigSet::empty();
        set.add(Signal::SIGHUP);
        set.add(Signal::SIGUSR1);
        assert_eq!(
            u64::from_ne_bytes(kernel_sigset(&set)),
            1 | 1 << (libc::SIGUSR1 - 1)
        );
    }

    #[test]
    fn no_pending_signal_is_none() {
        let taken = VcpuFaultSignal {
            signal: Signal::SIGUSR2,
        };
        let mut blocked = SigSet::empty();
        blocked.add(Signal::SIGUSR2);
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&blocked), None).expect("block");
        assert_eq!(taken.take().expect("sigtimedwait"), None);
        // A signal some process sent is taken, and is no fault.
        nix::sys::signal::raise(Signal::SIGUSR2).expect("raise");
        assert_eq!(taken.take().expect("sigtimedwait"), None);
        assert_eq!(taken.take().expect("sigtimedwait"), None);
    }
}
