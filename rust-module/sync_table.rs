// SPDX-License-Identifier: GPL-2.0

//! [`AssertSync`]: the module's static C operation tables (`file_operations`,
//! `vm_operations_struct`), which hold raw pointers and so are not `Sync` by themselves.

/// A static C table that any thread may read: immutable, and holding only function
/// pointers, pointers to static data and nulls.
pub(crate) struct AssertSync<T>(T);

// SAFETY: `AssertSync::new`'s caller vouches that the table is immutable and that every
// pointer in it is valid from any thread for as long as the module is loaded.
unsafe impl<T> Sync for AssertSync<T> {}

impl<T> AssertSync<T> {
    /// Wraps `table`.
    ///
    /// # Safety
    ///
    /// `table` is never written, and every pointer in it is a function, static data or null.
    pub(crate) const unsafe fn new(table: T) -> Self {
        Self(table)
    }

    /// The table.
    pub(crate) const fn get(&self) -> &T {
        &self.0
    }
}
