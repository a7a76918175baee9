//! A signal handler's target for one run of a case. The handler runs in the faulting
//! thread while the run touches its memory and finds there what to load from and into; the
//! run installs the target before it touches memory and takes it back after, so that every
//! repetition of a case has an object of its own (a target set once would leave the later
//! repetitions touching the first one's memory, loaded already).

use std::{
    ptr,
    sync::atomic::{AtomicPtr, Ordering},
};

/// Where a signal handler finds the target of the run under way, if any.
pub struct HandlerSlot<T>(AtomicPtr<T>);

/// A target installed in a slot; taken back (and dropped) when this is dropped.
pub struct Installed<'a, T> {
    /// The slot it is in.
    slot: &'a HandlerSlot<T>,
    /// The target, owned by this guard.
    target: *mut T,
}

impl<T: Sync> HandlerSlot<T> {
    /// An empty slot.
    pub const fn new() -> Self {
        Self(AtomicPtr::new(ptr::null_mut()))
    }

    /// Installs `target` until the returned guard is dropped. One run at a time: a slot
    /// that holds a target already is a bug of the benchmark.
    pub fn install(&self, target: T) -> Installed<'_, T> {
        let target = Box::into_raw(Box::new(target));
        let previous = self.0.swap(target, Ordering::AcqRel);
        assert!(
            previous.is_null(),
            "a signal handler's target installed twice"
        );
        Installed { slot: self, target }
    }

    /// The target installed, if any.
    ///
    /// # Safety
    ///
    /// Call only where the run that installed it cannot end meanwhile: in the handler of a
    /// fault of that run, which the run's own thread takes while it touches its memory.
    pub unsafe fn get(&self) -> Option<&T> {
        // SAFETY: A non-null pointer is an installed target, which its guard frees only
        // after the run ends (the caller's promise).
        unsafe { self.0.load(Ordering::Acquire).as_ref() }
    }
}

impl<T> Installed<'_, T> {
    /// The target.
    pub fn target(&self) -> &T {
        // SAFETY: The guard owns the target until it is dropped.
        unsafe { &*self.target }
    }
}

impl<T> Drop for Installed<'_, T> {
    fn drop(&mut self) {
        self.slot.0.store(ptr::null_mut(), Ordering::Release);
        // SAFETY: `target` came from `Box::into_raw` in `install`, and no handler can use it
        // any more: the slot is empty and the run is over.
        drop(unsafe { Box::from_raw(self.target) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_run_finds_its_own_target_and_none_after_it() {
        static SLOT: HandlerSlot<u32> = HandlerSlot::new();
        for run in 1..=3 {
            let installed = SLOT.install(run);
            assert_eq!(*installed.target(), run);
            // SAFETY: This run is under way.
            assert_eq!(unsafe { SLOT.get() }, Some(&run));
            drop(installed);
            // SAFETY: No run is under way: the slot is empty.
            assert_eq!(unsafe { SLOT.get() }, None);
        }
    }
}
