//! `/init` of the loader's Linux test guest: runs the same memory workload as the
//! freestanding test guest (`muserload_test_guest_abi::run`) in anonymous memory under
//! Linux, reports on the same I/O ports (so the loader's checks are the same for both
//! guests), and prints a heartbeat on the console after each complete check. Its first
//! line and each heartbeat end with the guest's wall-clock time (`clock SECONDS.NANOS`),
//! which the loader's tests hold against the host's.
//!
//! Its parameters come from the kernel command line, which hands `name=value` words it does
//! not know to init as environment variables: `workload_mib` (data, default 64),
//! `working_set_mib` (default 8) and `sweep_mib` (default 8).

use std::{
    arch::asm,
    num::NonZeroUsize,
    time::{SystemTime, UNIX_EPOCH},
};

use muserload_test_guest_abi::{
    run, ClockStamp, Params, Reporter, PAGE_SIZE, PARAMS_MAGIC, PORTS, PORT_MISMATCH, PORT_SWEEP,
};
use nix::{
    libc,
    sys::mman::{mmap_anonymous, MapFlags, ProtFlags},
};

fn mib(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The guest's wall-clock time, as its lines end: `clock SECONDS.NANOSECONDS` since the
/// epoch (0 before it).
fn clock() -> ClockStamp {
    ClockStamp(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

/// Reports with `out`, after `ioperm` gave this process the ports; prints a heartbeat.
struct Console {
    mismatches: u64,
    heartbeat: bool,
}

impl Reporter for Console {
    fn report(&mut self, port: u16, value: u32) {
        // SAFETY: `ioperm` granted the port; `out` to it touches no memory.
        unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack)) };
        match port {
            PORT_MISMATCH => {
                self.mismatches += 1;
                println!("workload: MISMATCH in data page {value}");
            }
            PORT_SWEEP if self.heartbeat => println!(
                "workload: heartbeat: checked all memory {value} time(s), {} mismatch(es), {}",
                self.mismatches,
                clock()
            ),
            _ => {}
        }
    }
}

fn main() {
    let data_mib = mib("workload_mib", 64);
    let params = Params {
        magic: PARAMS_MAGIC,
        data_start: 0,
        data_pages: data_mib << 8,
        working_set_pages: mib("working_set_mib", 8) << 8,
        sweep_pages: mib("sweep_mib", 8) << 8,
    };
    let first = *PORTS.start();
    let count = u64::from(PORTS.end() - first + 4);
    // SAFETY: ioperm changes only this process's I/O permission bitmap.
    if unsafe { libc::ioperm(first.into(), count, 1) } != 0 {
        println!("workload: ioperm: {}", std::io::Error::last_os_error());
        return;
    }
    let Some(len) = NonZeroUsize::new((params.data_pages * PAGE_SIZE) as usize) else {
        println!("workload: workload_mib=0");
        return;
    };
    // SAFETY: A new private anonymous mapping overlaps nothing.
    let data = match unsafe {
        mmap_anonymous(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_PRIVATE,
        )
    } {
        Ok(data) => data,
        Err(e) => {
            println!("workload: mmap of {data_mib} MiB: {e}");
            return;
        }
    };
    println!(
        "workload: {data_mib} MiB, working set {} pages, checking {} pages a round, {}",
        params.working_set_pages,
        params.sweep_pages,
        clock()
    );
    // SAFETY: The mapping is ours alone and holds `data_pages` pages.
    unsafe {
        run(
            data.as_ptr().cast(),
            &params,
            &mut Console {
                mismatches: 0,
                heartbeat: std::env::var("heartbeat").map_or(true, |v| v != "0"),
            },
        )
    }
}
