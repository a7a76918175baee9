// SPDX-License-Identifier: GPL-2.0

//! A misc device registration that sets the device node's mode.
//!
//! [`kernel::miscdevice::MiscDeviceRegistration`] registers with `mode` 0, for which
//! devtmpfs creates a 0600 node; the mode is read inside `misc_register()`, so it cannot be
//! changed afterwards. This wrapper registers the same `struct miscdevice` (the kernel
//! crate's [`MiscDevice`] file operations, built by [`MiscDeviceOptions::into_raw`]) with
//! `mode` set first. Everything else is as in the kernel crate.

use core::marker::PhantomData;
use kernel::{
    bindings,
    error::to_result,
    miscdevice::{
        MiscDevice,
        MiscDeviceOptions, //
    },
    prelude::*,
    types::Opaque, //
};

/// A registered misc device whose node has a given mode.
///
/// # Invariants
///
/// `inner` is a `struct miscdevice` built by [`MiscDeviceOptions::into_raw`] for `T` and
/// registered with `misc_register()`; it is deregistered exactly once, in [`Drop`].
///
/// The layout is that of [`kernel::miscdevice::MiscDeviceRegistration<T>`] (a transparent
/// wrapper of the same `Opaque<bindings::miscdevice>`): the kernel crate's `open` casts the
/// file's `private_data`, which `misc_open()` points at `inner`, to that type.
#[repr(transparent)]
#[pin_data(PinnedDrop)]
pub(crate) struct MiscDeviceWithMode<T> {
    #[pin]
    inner: Opaque<bindings::miscdevice>,
    _t: PhantomData<T>,
}

// SAFETY: `misc_deregister()` may be called on another thread than `misc_register()`.
unsafe impl<T> Send for MiscDeviceWithMode<T> {}
// SAFETY: There are no `&self` methods; the C side synchronises its own use of `inner`.
unsafe impl<T> Sync for MiscDeviceWithMode<T> {}

impl<T: MiscDevice> MiscDeviceWithMode<T> {
    /// Registers the misc device `name` with device node mode `mode`.
    pub(crate) fn register(
        name: &'static CStr,
        mode: bindings::umode_t,
    ) -> impl PinInit<Self, Error> {
        try_pin_init!(Self {
            inner <- Opaque::try_ffi_init(move |slot: *mut bindings::miscdevice| {
                let mut raw = MiscDeviceOptions { name }.into_raw::<T>();
                raw.mode = mode;
                // SAFETY: The initializer may write to `slot`.
                unsafe { slot.write(raw) };
                // SAFETY: `slot` holds a valid `struct miscdevice`, pinned: it is deregistered
                // in `drop` before its memory goes away.
                // INVARIANT: On success `slot` holds a registered misc device.
                to_result(unsafe { bindings::misc_register(slot) })
            }),
            _t: PhantomData,
        })
    }
}

#[pinned_drop]
impl<T> PinnedDrop for MiscDeviceWithMode<T> {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: By the type invariants, `inner` is registered and not yet deregistered.
        unsafe { bindings::misc_deregister(self.inner.get()) };
    }
}
