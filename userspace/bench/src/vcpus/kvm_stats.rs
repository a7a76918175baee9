//! A vCPU's KVM statistics (`KVM_GET_STATS_FD`, the binary stats of
//! `Documentation/virt/kvm/api.rst`): the exits a run cost, work that carries from TCG to
//! hardware where the time does not.

use std::{
    fs::File,
    mem::size_of,
    os::{
        fd::{AsRawFd, FromRawFd},
        unix::fs::FileExt,
    },
};

use kvm_bindings::{kvm_stats_desc, kvm_stats_header};
use kvm_ioctls::VcpuFd;
use nix::{errno::Errno, libc};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// `KVM_GET_STATS_FD`: `_IO(KVMIO, 0xce)`.
const KVM_GET_STATS_FD: libc::Ioctl = nix::request_code_none!(0xae, 0xce) as libc::Ioctl;

/// A vCPU's counters that say what demand paging cost it.
#[derive(Clone, Copy, Serialize, Deserialize, Debug, Default, PartialEq, Eq)]
pub struct Exits {
    /// Exits from the guest to KVM, of any kind (`exits`).
    pub exits: u64,
    /// Guest page faults KVM handled (`pf_taken`): an access to memory not mapped in the
    /// nested page tables.
    pub page_faults: u64,
    /// Returns from `KVM_RUN` to userspace because a signal was pending (`signal_exits`).
    pub signal_exits: u64,
}

impl Exits {
    /// The counters of `vcpu` so far.
    pub fn of(vcpu: &VcpuFd) -> Result<Self> {
        // SAFETY: A KVM ioctl without argument on a vCPU descriptor.
        let fd = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_GET_STATS_FD) };
        if fd < 0 {
            return Err(sys("KVM_GET_STATS_FD")(Errno::last()));
        }
        // SAFETY: The descriptor is new and ours.
        let stats = unsafe { File::from_raw_fd(fd) };
        let [exits, page_faults, signal_exits] =
            read(&stats, ["exits", "pf_taken", "signal_exits"])?;
        Ok(Self {
            exits,
            page_faults,
            signal_exits,
        })
    }

    /// The sum of `self` and `other`.
    pub fn plus(self, other: Self) -> Self {
        Self {
            exits: self.exits + other.exits,
            page_faults: self.page_faults + other.page_faults,
            signal_exits: self.signal_exits + other.signal_exits,
        }
    }
}

fn sys(op: &'static str) -> impl Fn(Errno) -> Error {
    move |errno| Error::Sys { op, errno }
}

/// The values of the single-valued statistics `names` of the stats file `stats`, in that
/// order; 0 for one the kernel does not have. Only those values are read.
fn read<const N: usize>(stats: &File, names: [&str; N]) -> Result<[u64; N]> {
    let io = |e: std::io::Error| {
        sys("pread of KVM stats")(Errno::from_raw(e.raw_os_error().unwrap_or(0)))
    };
    let mut header = [0u8; size_of::<kvm_stats_header>()];
    stats.read_exact_at(&mut header, 0).map_err(io)?;
    let word = |bytes: &[u8], at: usize| {
        u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
    };
    // `kvm_stats_header`: flags, name_size, num_desc, id_offset, desc_offset, data_offset.
    let (name_size, count) = (word(&header, 4) as usize, word(&header, 8) as usize);
    let (desc_offset, data_offset) = (word(&header, 16) as u64, word(&header, 20) as u64);
    let desc_size = size_of::<kvm_stats_desc>() + name_size;
    let mut descs = vec![0u8; desc_size * count];
    stats.read_exact_at(&mut descs, desc_offset).map_err(io)?;
    let mut values = [0; N];
    for desc in descs.chunks_exact(desc_size) {
        // `kvm_stats_desc`: flags (u32), exponent (s16), size (u16), offset (u32),
        // bucket_size (u32), name.
        let size = u16::from_ne_bytes([desc[6], desc[7]]);
        let name = &desc[size_of::<kvm_stats_desc>()..];
        let name = name.split(|&b| b == 0).next().unwrap_or_default();
        let Some(i) = names.iter().position(|n| n.as_bytes() == name) else {
            continue;
        };
        if size != 1 {
            continue;
        }
        let mut value = [0u8; 8];
        stats
            .read_exact_at(&mut value, data_offset + u64::from(word(desc, 8)))
            .map_err(io)?;
        values[i] = u64::from_ne_bytes(value);
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ioctl_number_is_kvms() {
        // <linux/kvm.h>: #define KVM_GET_STATS_FD _IO(KVMIO, 0xce)
        assert_eq!(KVM_GET_STATS_FD as u64, 0xae_ce);
    }

    #[test]
    fn exits_add_up() {
        let a = Exits {
            exits: 3,
            page_faults: 2,
            signal_exits: 1,
        };
        assert_eq!(
            a.plus(a),
            Exits {
                exits: 6,
                page_faults: 4,
                signal_exits: 2
            }
        );
    }
}
