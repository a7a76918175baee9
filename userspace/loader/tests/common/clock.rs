//! What a migrated guest's consoles say of its clocks. A Linux guest tells of a clock that
//! jumped (its lockup detector) or of its two clocks disagreeing, kvmclock and the TSC (its
//! clocksource watchdog), and its workload prints the guest's wall-clock time, which the
//! test holds against the host's when the line came: both loaders run on this host, and
//! the guest's wall clock starts from the host's (kvmclock's wall clock, at boot).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Line;

/// What a Linux guest prints when its clock jumped (`watchdog: BUG: soft lockup - CPU#0
/// stuck for 58s!`) or its clocksource watchdog found kvmclock and the TSC apart (`Marking
/// clocksource tsc unstable due to frequency skew`, then `Marking TSC unstable due to
/// clocksource watchdog`).
const CLOCK_TROUBLE: [&str; 3] = ["soft lockup", "Marking clocksource", "Marking TSC unstable"];

/// How far ahead of the host's the guest's wall clock may ever read. It starts from the
/// host's and falls behind it early in the guest's boot (1.2 s to 2.4 s in the test VM,
/// where the guest keeps time on jiffies for its first second, before kvm-clock); kvmclock
/// runs at the TSC rate KVM took when it started, which may be off the TSC's by up to
/// KVM's tolerance (`vm/run-guest.sh`: 1%, 0.6 s a minute; 0.24% with
/// `tsc_early_khz=2590000`). A clock off by the test VM's uptime (a KVM that left the TSC
/// scaling ratio at 0) is far beyond it.
const AHEAD: Duration = Duration::from_secs(2);

/// How much the guest's wall clock, against the host's, may move between the last line
/// of the source's console and a line of the destination's beyond the time the guest may
/// have stood still: the guest's lines come a little late, some later than others (the
/// guest's clock read 0.1 s apart against the host's from one line to the next at the
/// source, and 0.03 s to 0.12 s across a migration in the test VM), and kvmclock's rate
/// may be off (see [`AHEAD`]). A jump by the source VM's age (the guest ran for tens of
/// seconds before it was migrated) is far beyond it.
const JITTER: Duration = Duration::from_secs(1);

/// The guest's wall-clock time a line of its init gives (`workload: ..., clock
/// SECONDS.NANOSECONDS`, or `guest-init: ...`), if it gives one.
fn guest_time(text: &str) -> Option<SystemTime> {
    if !["workload: ", "guest-init: "]
        .iter()
        .any(|init| text.starts_with(init))
    {
        return None;
    }
    let (_, clock) = text.trim_end().rsplit_once(", clock ")?;
    let (seconds, fraction) = clock.split_once('.')?;
    if fraction.is_empty() || fraction.len() > 9 {
        return None;
    }
    let nanoseconds = fraction.parse::<u32>().ok()? * 10u32.pow(9 - fraction.len() as u32);
    let since = Duration::new(seconds.parse().ok()?, nanoseconds);
    UNIX_EPOCH.checked_add(since)
}

/// How far the guest's wall clock was ahead of the host's when `line` came (negative:
/// behind), in seconds, if the line gives it.
fn ahead(line: &Line) -> Option<f64> {
    let guest = guest_time(&line.text)?;
    Some(match guest.duration_since(line.at) {
        Ok(ahead) => ahead.as_secs_f64(),
        Err(behind) => -behind.duration().as_secs_f64(),
    })
}

/// "1.500 s ahead of" or "1.500 s behind", for `seconds` ahead.
fn ahead_or_behind(seconds: f64) -> String {
    let way = if seconds < 0.0 { "behind" } else { "ahead of" };
    format!("{:.3} s {way}", seconds.abs())
}

/// Fails the test if a migrated guest's consoles (`source`'s, then `destination`'s) tell
/// of its clocks: a line of [`CLOCK_TROUBLE`]; a wall-clock time more than [`AHEAD`] ahead
/// of the host's when its line came; or a jump across the migration, of the guest's wall
/// clock against the host's from the source's last line that gives it to any of the
/// destination's, forward by more than [`JITTER`] or back by more than `lag` (the time the
/// guest may have stood still: the downtime, and the outages of a cut connection) and
/// [`JITTER`]. A guest that gave its wall-clock time at the source must give it at the
/// destination too.
pub fn assert_clocks_kept(source: &[Line], destination: &[Line], lag: Duration) {
    for (side, console) in [("source", source), ("destination", destination)] {
        if let Some(line) = console
            .iter()
            .find(|line| CLOCK_TROUBLE.iter().any(|sign| line.text.contains(sign)))
        {
            panic!("the guest's clock at the {side}: {}", line.text.trim_end());
        }
        for (line, ahead) in console.iter().filter_map(|l| Some((l, ahead(l)?))) {
            assert!(
                ahead <= AHEAD.as_secs_f64(),
                "the guest's wall clock at the {side} is {} the host's (at most {:.3} s \
                 ahead allowed): {}",
                ahead_or_behind(ahead),
                AHEAD.as_secs_f64(),
                line.text.trim_end()
            );
        }
    }
    let Some(before) = source.iter().rev().find_map(ahead) else {
        return;
    };
    let after: Vec<(&Line, f64)> = destination
        .iter()
        .filter_map(|line| Some((line, ahead(line)?)))
        .collect();
    assert!(
        !after.is_empty(),
        "the guest gave its wall-clock time at the source, never at the destination"
    );
    for (line, ahead) in after {
        let jump = ahead - before;
        let (back_max, forward_max) = ((lag + JITTER).as_secs_f64(), JITTER.as_secs_f64());
        assert!(
            -back_max <= jump && jump <= forward_max,
            "the guest's wall clock jumped across the migration: {} the host's at the \
             source's last reading, {} it at the destination's (allowed: {back_max:.3} s \
             back to {forward_max:.3} s forward): {}",
            ahead_or_behind(before),
            ahead_or_behind(ahead),
            line.text.trim_end()
        );
    }
}

// Each test file compiles these too; they need neither KVM nor muserload.
#[cfg(test)]
mod tests {
    use super::*;

    /// A line that came at `at` seconds since the epoch.
    fn line(at: f64, text: &str) -> Line {
        Line {
            at: UNIX_EPOCH + Duration::from_secs_f64(at),
            text: format!("{text}\r\n"),
        }
    }

    /// A workload's heartbeat saying the guest's clock read `clock`, that came at `at`.
    fn heartbeat(at: f64, clock: &str) -> Line {
        line(
            at,
            &format!(
                "workload: heartbeat: checked all memory 2 time(s), 0 mismatch(es), clock {clock}"
            ),
        )
    }

    #[test]
    fn the_workloads_clock_is_read() {
        let heartbeat = heartbeat(1000.0, "999.250000000");
        assert_eq!(
            guest_time(&heartbeat.text),
            Some(UNIX_EPOCH + Duration::from_millis(999_250))
        );
        let ahead = ahead(&heartbeat).expect("a clock");
        assert!((ahead + 0.75).abs() < 1e-6, "{ahead}");
        assert_eq!(
            guest_time("guest-init: heartbeat, clock 12.5\n"),
            Some(UNIX_EPOCH + Duration::from_millis(12_500))
        );
        for other in [
            "workload: 64 MiB, working set 2048 pages, checking 2048 pages a round",
            "[    1.000000] clocksource: Switched to clocksource kvm-clock, clock 5.0",
            "workload: heartbeat: ..., clock 12",
            "workload: heartbeat: ..., clock x.5",
            "workload: heartbeat: ..., clock 12.",
            "workload: heartbeat: ..., clock 12.1234567890",
        ] {
            assert_eq!(guest_time(other), None, "{other}");
        }
    }

    #[test]
    fn clocks_in_step_pass() {
        // Behind the host's since boot, by 2.2 s to 2.3 s.
        let source = [
            line(90.0, "booting"),
            heartbeat(100.0, "97.8"),
            heartbeat(110.0, "107.7"),
        ];
        // Then, after a downtime of one second: its clock stood still, a line came late,
        // another early.
        let destination = [
            heartbeat(200.0, "196.8"),
            heartbeat(300.0, "295.9"),
            heartbeat(400.0, "398.4"),
        ];
        assert_clocks_kept(&source, &destination, Duration::from_secs(1));
        // No clock at all: the freestanding test guest.
        assert_clocks_kept(&[line(1.0, "a")], &[line(2.0, "b")], Duration::ZERO);
    }

    #[test]
    #[should_panic(expected = "at the source is 12.882 s ahead of the host's")]
    fn a_clock_ahead_of_the_hosts_fails() {
        assert_clocks_kept(&[heartbeat(100.0, "112.882")], &[], Duration::ZERO);
    }

    #[test]
    #[should_panic(
        expected = "jumped across the migration: 2.000 s behind the host's at the \
                               source's last reading, 1.500 s ahead of it"
    )]
    fn a_clock_that_jumped_forward_fails() {
        let source = [heartbeat(100.0, "98.0")];
        let destination = [heartbeat(200.0, "201.5")];
        assert_clocks_kept(&source, &destination, Duration::from_secs(1));
    }

    #[test]
    #[should_panic(
        expected = "jumped across the migration: 2.000 s behind the host's at the \
                               source's last reading, 5.500 s behind it"
    )]
    fn a_clock_left_behind_fails() {
        let source = [heartbeat(100.0, "98.0")];
        let destination = [heartbeat(200.0, "194.5")];
        assert_clocks_kept(&source, &destination, Duration::from_secs(2));
    }

    #[test]
    #[should_panic(expected = "the guest's clock at the destination: [    5.1] clocksource")]
    fn the_clocksource_watchdog_fails() {
        let destination = [line(
            200.0,
            "[    5.1] clocksource: Marking clocksource tsc unstable due to frequency skew",
        )];
        assert_clocks_kept(&[], &destination, Duration::ZERO);
    }

    #[test]
    #[should_panic(expected = "the guest's clock at the source: [  80.2] watchdog: BUG: soft")]
    fn a_soft_lockup_fails() {
        let source = [line(
            100.0,
            "[  80.2] watchdog: BUG: soft lockup - CPU#0 stuck for 58s! [init:1]",
        )];
        assert_clocks_kept(&source, &[], Duration::ZERO);
    }

    #[test]
    #[should_panic(expected = "never at the destination")]
    fn a_clock_only_at_the_source_fails() {
        assert_clocks_kept(&[heartbeat(100.0, "100.0")], &[], Duration::ZERO);
    }
}
