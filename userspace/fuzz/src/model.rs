//! The shadow model: what one page may hold at the end of a round, given the logged loads
//! and arms of it.
//!
//! The log orders calls by sequence numbers taken just before and just after each call, so
//! two calls are ordered only when one's `after` comes before the other's `before`. A call
//! whose process died in it (`after` is `u64::MAX`) may have taken effect at any time after
//! its `before`, or not at all: its process may have died before it reached the kernel.

use crate::shared::{Content, Entry, Kind};

/// The logged history of one page.
pub struct PageHistory<'a> {
    /// Its loads (attempted or done; failed ones are not logged here).
    pub loads: &'a [Entry],
    /// The arms that cover it (attempted or done).
    pub arms: &'a [Entry],
    /// Whether the round armed it before any worker started.
    pub armed_at_start: bool,
}

impl PageHistory<'_> {
    /// How many loads succeeded, if more than the arms made possible: each arm makes one
    /// more load possible, and so does an empty start.
    pub fn too_many_loads(&self) -> Option<usize> {
        let succeeded = self.loads.iter().filter(|e| e.kind == Kind::Loaded).count();
        (succeeded > self.arms.len() + usize::from(!self.armed_at_start)).then_some(succeeded)
    }

    /// The successful loads that came after every arm, whether or not it took effect:
    /// the page must hold the content of the one such load (more than one is a duplicate).
    pub fn sure_loads(&self) -> Vec<&Entry> {
        // The arm that may have ended last.
        let last_end = self.arms.iter().map(|a| a.after).max();
        self.loads
            .iter()
            .filter(|e| e.kind == Kind::Loaded && last_end.is_none_or(|end| e.before > end))
            .collect()
    }

    /// Whether the page, loaded before the checker probed it, may hold `got`.
    pub fn may_hold(&self, got: Content) -> bool {
        match (got, self.sure_loads().first()) {
            (Content::Zero, Some(e)) => e.tag == 0,
            (Content::Tag(t), Some(e)) => e.tag == t,
            // Zeros: never armed, or a zero load that may have followed the last arm.
            (Content::Zero, None) => {
                !self.armed_at_start && !self.arms.iter().any(|a| a.kind == Kind::Armed)
                    || self
                        .loads
                        .iter()
                        .any(|e| e.tag == 0 && self.may_follow_arms(e))
            }
            (Content::Tag(t), None) => self
                .loads
                .iter()
                .any(|e| e.tag == t && self.may_follow_arms(e)),
            (Content::Corrupt { .. }, _) => false,
        }
    }

    /// Whether `load` may have come after the last arm that took effect. Only arms known
    /// to have succeeded count: an arm whose process died may never have happened, and if
    /// it did, it took effect after the last successful arm began, so that a load after it
    /// also ended after that arm began.
    fn may_follow_arms(&self, load: &Entry) -> bool {
        let last_start = self
            .arms
            .iter()
            .filter(|a| a.kind == Kind::Armed)
            .map(|a| a.before)
            .max();
        last_start.is_none_or(|start| load.after > start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIED: u64 = u64::MAX;

    fn entry(kind: Kind, tag: u64, before: u64, after: u64) -> Entry {
        Entry {
            kind,
            page: 1,
            count: 1,
            tag,
            before,
            after,
            who: 0,
            index: 0,
        }
    }

    fn loaded(tag: u64, before: u64, after: u64) -> Entry {
        entry(Kind::Loaded, tag, before, after)
    }

    fn armed(before: u64, after: u64) -> Entry {
        entry(Kind::Armed, 0, before, after)
    }

    fn arm_attempt(before: u64) -> Entry {
        entry(Kind::ArmAttempt, 0, before, DIED)
    }

    fn history<'a>(loads: &'a [Entry], arms: &'a [Entry], armed_at_start: bool) -> PageHistory<'a> {
        PageHistory {
            loads,
            arms,
            armed_at_start,
        }
    }

    /// Regression (CI, leak-check guest, run seed 0x18eabf2a90a279d3, round 93): a page
    /// loaded once, then an arm whose process died in the call. The arm never took effect
    /// (else the checker's probe would have found the page armed): the load's content is
    /// what the page must hold, and the model had called it stale.
    #[test]
    fn arm_whose_process_died_may_not_have_happened() {
        let loads = [loaded(0x5d00_0000_0067, 0x180fa, 0x180fb)];
        let arms = [arm_attempt(0x18290)];
        let page = history(&loads, &arms, false);
        assert!(page.sure_loads().is_empty());
        assert!(page.may_hold(Content::Tag(0x5d00_0000_0067)));
        assert!(page.may_hold(Content::Zero));
        assert!(!page.may_hold(Content::Tag(0x5d00_0000_0068)));
    }

    #[test]
    fn load_before_a_successful_arm_is_stale() {
        let loads = [loaded(7, 1, 2)];
        let arms = [armed(3, 4)];
        let page = history(&loads, &arms, false);
        assert!(!page.may_hold(Content::Tag(7)));
        assert!(!page.may_hold(Content::Zero));
    }

    #[test]
    fn load_after_the_last_arm_is_the_only_content() {
        let loads = [loaded(7, 1, 2), loaded(8, 5, 6)];
        let arms = [armed(3, 4)];
        let page = history(&loads, &arms, true);
        assert_eq!(page.sure_loads().len(), 1);
        assert!(page.may_hold(Content::Tag(8)));
        assert!(!page.may_hold(Content::Tag(7)));
        assert!(!page.may_hold(Content::Zero));
    }

    #[test]
    fn load_overlapping_the_last_arm_may_be_its_content() {
        let loads = [loaded(7, 2, 5)];
        let arms = [armed(3, 4)];
        let page = history(&loads, &arms, true);
        assert!(page.sure_loads().is_empty());
        assert!(page.may_hold(Content::Tag(7)));
    }

    #[test]
    fn never_armed_page_holds_zeros() {
        let page = history(&[], &[], false);
        assert!(page.may_hold(Content::Zero));
        assert!(!page.may_hold(Content::Tag(1)));
        assert!(page.too_many_loads().is_none());
    }

    #[test]
    fn two_loads_need_two_arms() {
        let loads = [loaded(7, 1, 2), loaded(8, 3, 4)];
        assert_eq!(history(&loads, &[], false).too_many_loads(), Some(2));
        assert_eq!(
            history(&loads, &[armed(5, 6)], false).too_many_loads(),
            None
        );
        assert_eq!(
            history(&loads, &[armed(5, 6)], true).too_many_loads(),
            Some(2)
        );
        let twice = history(&loads, &[], false);
        assert_eq!(twice.sure_loads().len(), 2);
    }

    #[test]
    fn corrupt_content_is_never_allowed() {
        let loads = [loaded(7, 1, 2)];
        let page = history(&loads, &[], false);
        assert!(!page.may_hold(Content::Corrupt { first: 7, at: 3 }));
    }
}
