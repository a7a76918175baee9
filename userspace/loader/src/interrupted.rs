//! The vCPU threads' hook for signal mode: what a thread does when a KVM call of its was
//! interrupted by a signal. On its own, so that the VM (restoring a vCPU's MSRs) and the
//! vCPU loop (`KVM_RUN`) both call it without depending on each other.

use std::error::Error;

use kvm_ioctls::VcpuFd;

/// Why a fault could not be handled: the failure of whatever serves faults (on a
/// destination, its loading of pages), which the vCPU stops with.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct FaultError(pub Box<dyn Error + Send + Sync>);

/// What a thread does when a KVM call of its was interrupted by a signal: signal mode's
/// fault handling on a destination. The default does nothing.
pub trait Interrupted: Send + Sync {
    /// Called in a vCPU's thread before its first KVM_RUN.
    fn vcpu_started(&self, _vcpu: &VcpuFd) -> Result<(), FaultError> {
        Ok(())
    }

    /// Called in the thread after KVM_RUN of `vcpu` returned `EINTR`, or KVM_SET_MSRS on it
    /// stopped short; returns whether it handled a fault (the call may then succeed if made
    /// again).
    fn interrupted(&self, _vcpu: &VcpuFd) -> Result<bool, FaultError> {
        Ok(false)
    }
}

/// No signal-mode faults: the source, and a destination in queue mode.
pub struct NoFaults;

impl Interrupted for NoFaults {}
