//! Locks that outlive a panic: the loader's one way to take a mutex or wait on a condition
//! variable.
//!
//! A thread that panics holding a lock poisons it. The data behind every lock of the loader
//! stays whole between statements (each update is an assignment, a push or a counter
//! bump), so the other threads go on with it rather than turn one thread's panic into
//! every thread's; the panic itself surfaces where the thread is joined or its failure is
//! looked at.

use std::sync::{LockResult, Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, poisoned or not.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    unpoisoned(mutex.lock())
}

/// What a lock or a wait on a condition variable gave, poisoned or not: for the waits, the
/// guard (and timeout flag) that [`lock`] would have given.
pub fn unpoisoned<G>(result: LockResult<G>) -> G {
    result.unwrap_or_else(PoisonError::into_inner)
}
