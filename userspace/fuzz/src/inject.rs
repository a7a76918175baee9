//! Fault injection aimed at the module: failslab and fail_page_alloc fail a share of the
//! allocations made while the module's code is on the stack (their stack trace filter set
//! to the module's memory), so that every allocation failure path of the module runs
//! under the fuzzer's load. Needs CONFIG_FAULT_INJECTION_STACKTRACE_FILTER and root.

use std::{fs, path::PathBuf};

const DEBUGFS: &str = "/sys/kernel/debug";
const CAPABILITIES: [&str; 2] = ["failslab", "fail_page_alloc"];

/// Failslab and fail_page_alloc, set up for the module.
pub struct Injector {
    dirs: Vec<PathBuf>,
    percent: u32,
}

/// The module's memory, from `/proc/modules` (its base is shown to root only).
fn module_range() -> Result<(u64, u64), String> {
    let modules = fs::read_to_string("/proc/modules").map_err(|e| format!("/proc/modules: {e}"))?;
    let line = modules
        .lines()
        .find(|l| l.starts_with("muserload "))
        .ok_or("muserload is not in /proc/modules")?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let size = fields.get(1).and_then(|f| f.parse::<u64>().ok());
    // The address is the field after the state (taint flags may follow it).
    let base = fields
        .iter()
        .find_map(|f| f.strip_prefix("0x"))
        .and_then(|f| u64::from_str_radix(f, 16).ok());
    match (base, size) {
        (Some(base), Some(size)) if base != 0 => Ok((base, base + size)),
        _ => Err(format!("no address in /proc/modules: {line}")),
    }
}

impl Injector {
    /// Sets the capabilities up to fail `percent` % of the module's allocations once
    /// started; why not, if this kernel or user cannot.
    pub fn new(percent: u32) -> Result<Self, String> {
        let (start, end) = module_range()?;
        let dirs: Vec<PathBuf> = CAPABILITIES
            .iter()
            .map(|c| PathBuf::from(DEBUGFS).join(c))
            .collect();
        for dir in &dirs {
            let mut settings = vec![
                ("probability", "0".to_owned()),
                ("interval", "1".to_owned()),
                ("times", "-1".to_owned()),
                ("verbose", "0".to_owned()),
                ("task-filter", "N".to_owned()),
                // GFP_KERNEL allocations are what the module makes.
                ("ignore-gfp-wait", "N".to_owned()),
                ("require-start", start.to_string()),
                ("require-end", end.to_string()),
                ("stacktrace-depth", "32".to_owned()),
            ];
            if dir.ends_with("fail_page_alloc") {
                settings.push(("min-order", "0".to_owned()));
            }
            for (name, value) in settings {
                let path = dir.join(name);
                fs::write(&path, &value)
                    .map_err(|e| format!("{} = {value}: {e}", path.display()))?;
            }
        }
        Ok(Self { dirs, percent })
    }

    fn set(&self, percent: u32) {
        for dir in &self.dirs {
            let _ = fs::write(dir.join("probability"), percent.to_string());
        }
    }

    /// Allocations start failing.
    pub fn start(&self) {
        self.set(self.percent);
    }

    /// Allocations stop failing.
    pub fn stop(&self) {
        self.set(0);
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        self.stop();
    }
}
