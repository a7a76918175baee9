//! The reports printed at the end of a migration, as a table (like QEMU's `info migrate`)
//! and as JSON.

use std::{fmt::Write as _, io, path::Path};

use serde::Serialize;

use crate::protocol::Kind;

/// Writing a report as JSON failed.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// It did not encode.
    #[error("encoding the report: {0}")]
    Encode(#[source] serde_json::Error),
    /// Its file could not be written.
    #[error("writing the JSON report: {0}")]
    Write(#[source] io::Error),
}

/// What the source reports after a migration.
#[derive(Debug, Serialize)]
pub struct SourceReport {
    /// The kind of migration.
    pub kind: Kind,
    /// Pre-copy rounds (the first full pass included).
    pub precopy_rounds: u32,
    /// Pages sent in pre-copy (and, in pre-copy, while paused).
    pub precopy_pages: u64,
    /// Pages pre-copy sent that were stale at the switch (hybrid: fetched post-copy).
    pub discarded_pages: u64,
    /// Connecting to the destination, in microseconds.
    pub setup_us: u64,
    /// From pausing the guest to the destination running it, in microseconds.
    pub downtime_us: u64,
    /// From connecting to the destination's "every page loaded", in milliseconds.
    pub total_ms: u64,
    /// Bytes sent on both connections.
    pub bytes_sent: u64,
    /// Pages of guest RAM.
    pub pages: u64,
    /// Zero pages (never sent unless asked for).
    pub zero_pages: u64,
    /// Zero pages sent anyway, because the destination asked for them (should be 0).
    pub zero_pages_sent: u64,
    /// Pages sent because the destination asked.
    pub pages_requested: u64,
    /// Pages sent by the background stream.
    pub pages_streamed: u64,
    /// The most times any page was sent.
    pub max_sends_per_page: u8,
    /// The rounds the guest had reported when it was paused; none if it reports none (only
    /// the project's guests do).
    pub guest_rounds: Option<u64>,
    /// Reconnections after a connection broke in post-copy.
    pub recoveries: u32,
    /// Pages the pause checked for zeros: pre-copy's never sent, hybrid's not settled by
    /// its rounds, post-copy's found zero before the pause.
    pub pause_zero_checked: u64,
    /// Pages the pause read to check them (a page read twice counts twice).
    pub pause_pages_read: u64,
    /// Pre-copy: microseconds the pause took to send its last pages, until the destination
    /// had them all (0 for the other kinds): the downtime's part that the downtime target
    /// is for; the rest is the pause's overhead.
    pub pause_send_us: u64,
    /// Pages of guest RAM made resident in the source's mapping after the pause: pages
    /// the guest never touched that the migration read, faulting them in.
    pub pages_faulted_in: u64,
}

/// What the destination reports.
#[derive(Debug, Serialize)]
pub struct DestinationReport {
    /// The kind of migration.
    pub kind: Kind,
    /// Pre-copy rounds (the first full pass included).
    pub precopy_rounds: u32,
    /// Pages received in pre-copy.
    pub precopy_pages: u64,
    /// Pages received in pre-copy that were stale at the switch and came again post-copy.
    pub discarded_pages: u64,
    /// "queue" or "signal".
    pub mode: String,
    /// From the source's connection to every page loaded, in milliseconds.
    pub total_ms: u64,
    /// From pausing the guest at the source to resuming it here, in microseconds.
    pub downtime_us: u64,
    /// The source's connection setup, in microseconds.
    pub setup_us: u64,
    /// From resuming the guest to every page loaded, in milliseconds.
    pub load_all_ms: u64,
    /// Bytes received on both connections.
    pub bytes_received: u64,
    /// Zero pages: loaded here, never transferred.
    pub zero_pages: u64,
    /// Pages that were transferred.
    pub normal_pages: u64,
    /// Pages asked for because a vCPU waited on them.
    pub pages_requested: u64,
    /// Pages received from the background stream.
    pub pages_streamed: u64,
    /// Pages received when already loaded (both requested and streamed).
    pub pages_duplicate: u64,
    /// Faults the loader handled (events read or signals taken).
    pub faults: u64,
    /// Faults as the module counted them.
    pub module_faults: u64,
    /// Fault wait, from asking to loading, in microseconds: median.
    pub fault_wait_p50_us: u64,
    /// 99th percentile.
    pub fault_wait_p99_us: u64,
    /// Maximum.
    pub fault_wait_max_us: u64,
    /// Rounds the guest completed here; none (as the two below) if it reports none (only
    /// the project's guests do).
    pub guest_rounds_here: Option<u64>,
    /// Complete checks of all its memory the guest made here.
    pub guest_sweeps_here: Option<u64>,
    /// Pages the guest found wrong (here or before).
    pub guest_mismatches: Option<u64>,
    /// Reconnections of the source after a connection broke in post-copy.
    pub recoveries: u32,
    /// Time without a connection to the source, in milliseconds.
    pub disconnected_ms: u64,
}

/// Writes `report` to `path` as JSON.
pub fn write_json(path: &Path, report: &impl Serialize) -> Result<(), ReportError> {
    let json = serde_json::to_string_pretty(report).map_err(ReportError::Encode)?;
    std::fs::write(path, json + "\n").map_err(ReportError::Write)
}

/// What a line that only the project's guests' reports fill says for other guests.
fn no_guest_report() -> String {
    "- (only the project's test guests report this)".to_owned()
}

/// `rows` under `title`, their values aligned.
fn table(title: &str, rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = format!("{title}\n");
    for (key, value) in rows {
        let _ = writeln!(out, "  {key:<width$}  {value}");
    }
    out
}

/// The kind of migration, in words.
fn kind(kind: Kind) -> &'static str {
    match kind {
        Kind::PostCopy => "post-copy",
        Kind::PreCopy => "pre-copy",
        Kind::Hybrid => "hybrid",
    }
}

/// Microseconds as milliseconds.
fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

/// Bytes as MiB, and exactly.
fn mib(bytes: u64) -> String {
    format!(
        "{:.1} MiB ({bytes} bytes)",
        bytes as f64 / f64::from(1 << 20)
    )
}

impl SourceReport {
    /// The report as a table.
    pub fn table(&self) -> String {
        table(
            &format!("Migration (source side): completed ({})", kind(self.kind)),
            &[
                ("pre-copy rounds", self.precopy_rounds.to_string()),
                ("pages sent in pre-copy", self.precopy_pages.to_string()),
                ("stale at the switch", self.discarded_pages.to_string()),
                ("setup", ms(self.setup_us)),
                ("downtime", ms(self.downtime_us)),
                ("total time", format!("{} ms", self.total_ms)),
                ("sent", mib(self.bytes_sent)),
                ("pages", self.pages.to_string()),
                ("zero pages (not sent)", self.zero_pages.to_string()),
                ("zero pages sent", self.zero_pages_sent.to_string()),
                ("pages sent on request", self.pages_requested.to_string()),
                ("pages streamed", self.pages_streamed.to_string()),
                ("most sends of a page", self.max_sends_per_page.to_string()),
                (
                    "guest rounds before pause",
                    self.guest_rounds
                        .map_or_else(no_guest_report, |rounds| rounds.to_string()),
                ),
                ("reconnections", self.recoveries.to_string()),
                (
                    "pause's zero check",
                    format!(
                        "{} pages, {} read",
                        self.pause_zero_checked, self.pause_pages_read
                    ),
                ),
                ("pages faulted in", self.pages_faulted_in.to_string()),
                ("pause's page sending", ms(self.pause_send_us)),
            ],
        )
    }
}

impl DestinationReport {
    /// "post-copy", "pre-copy" or "hybrid".
    pub fn kind_name(&self) -> &'static str {
        kind(self.kind)
    }

    /// The report as a table.
    pub fn table(&self) -> String {
        let mbps = if self.total_ms == 0 {
            0.0
        } else {
            self.bytes_received as f64 * 8.0 / 1e6 / (self.total_ms as f64 / 1000.0)
        };
        table(
            &format!(
                "Migration status: completed ({}, {} mode)",
                kind(self.kind),
                self.mode
            ),
            &[
                ("pre-copy rounds", self.precopy_rounds.to_string()),
                ("pages received in pre-copy", self.precopy_pages.to_string()),
                ("stale at the switch", self.discarded_pages.to_string()),
                ("total time", format!("{} ms", self.total_ms)),
                ("downtime", ms(self.downtime_us)),
                ("setup", ms(self.setup_us)),
                ("transferred", mib(self.bytes_received)),
                ("throughput", format!("{mbps:.1} Mbps")),
                ("zero pages", self.zero_pages.to_string()),
                ("normal pages", self.normal_pages.to_string()),
                ("pages requested", self.pages_requested.to_string()),
                ("pages received twice", self.pages_duplicate.to_string()),
                ("faults", self.faults.to_string()),
                (
                    "fault wait p50/p99/max",
                    format!(
                        "{} / {} / {}",
                        ms(self.fault_wait_p50_us),
                        ms(self.fault_wait_p99_us),
                        ms(self.fault_wait_max_us)
                    ),
                ),
                ("time to load all pages", format!("{} ms", self.load_all_ms)),
                (
                    "reconnections",
                    format!(
                        "{} ({} ms without a connection)",
                        self.recoveries, self.disconnected_ms
                    ),
                ),
                (
                    "guest after resume",
                    match (
                        self.guest_rounds_here,
                        self.guest_sweeps_here,
                        self.guest_mismatches,
                    ) {
                        (Some(rounds), Some(sweeps), Some(mismatches)) => format!(
                            "{rounds} rounds, {sweeps} full checks of its memory, \
                             {mismatches} mismatches"
                        ),
                        _ => no_guest_report(),
                    },
                ),
            ],
        )
    }
}
