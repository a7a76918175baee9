// SPDX-License-Identifier: GPL-2.0

//! Anonymous-inode files: the events descriptor, and each object's own address space.
//!
//! `anon_inode_getfd()` and `anon_inode_create_getfile()` are exported but their header is
//! not part of the kernel crate's bindings, so they are declared here, with the signatures
//! of `include/linux/anon_inodes.h`.
//!
//! Every open of `/dev/muserload` shares the device node's inode and so its
//! `address_space`. An object needs one of its own, so that `unmap_mapping_range()` on it
//! zaps that object's pages in every mapping of it (after fork, mremap, several mmaps)
//! and nobody else's. [`PrivateMapping`] is a file with a fresh anonymous inode, kept only
//! for that inode's `address_space`: the object's file points its `f_mapping` there, as DRM
//! does with its own anonymous inode, so that `mmap` links every vma of the object into it.

use crate::sync_table::AssertSync;
use kernel::{
    bindings,
    error::from_err_ptr,
    ffi::{
        c_char,
        c_int,
        c_void, //
    },
    fs::File,
    prelude::*,
    sync::aref::ARef, //
};

#[expect(
    improper_ctypes,
    reason = "pointers to C structs, passed as the kernel crate's own bindings pass them"
)]
extern "C" {
    fn anon_inode_getfd(
        name: *const c_char,
        fops: *const bindings::file_operations,
        priv_: *mut c_void,
        flags: c_int,
    ) -> c_int;

    fn anon_inode_create_getfile(
        name: *const c_char,
        fops: *const bindings::file_operations,
        priv_: *mut c_void,
        flags: c_int,
        context_inode: *const bindings::inode,
    ) -> *mut bindings::file;
}

/// Installs a new descriptor for an anonymous-inode file with `fops` and `private_data`
/// `data`, and returns the descriptor.
///
/// # Safety
///
/// `fops` must stay valid while the file exists and must expect `data` as its
/// `private_data`; on failure the caller still owns `data`.
pub(crate) unsafe fn install_fd(
    name: &'static CStr,
    fops: &'static bindings::file_operations,
    data: *mut c_void,
    flags: u32,
) -> Result<i32> {
    // SAFETY: `name` and `fops` are static; the caller vouches for `data`.
    let fd = unsafe { anon_inode_getfd(name.as_char_ptr(), fops, data, flags as c_int) };
    if fd < 0 {
        return Err(Error::from_errno(fd));
    }
    Ok(fd)
}

/// The file operations of a [`PrivateMapping`]'s file: none, as the file is never handed
/// out. `owner` makes every object pin the module, so that a thread still sleeping in a
/// fault of an object whose descriptor and mappings are gone never runs unloaded code: the
/// last reference, and so `module_put()`, goes with the object's final `fput()`, outside
/// the module.
// SAFETY: The table is immutable; its pointers are the module and null.
static HOLDER_FOPS: AssertSync<bindings::file_operations> = unsafe {
    AssertSync::new(bindings::file_operations {
        owner: kernel::module::this_module::<crate::LocalModule>().as_ptr(),
        // SAFETY: All-zero is a valid `file_operations`: every operation absent.
        ..core::mem::zeroed()
    })
};

/// A private `address_space` for one object.
pub(crate) struct PrivateMapping {
    file: ARef<File>,
}

impl PrivateMapping {
    /// Creates the address space.
    pub(crate) fn new() -> Result<Self> {
        // SAFETY: `name` and `HOLDER_FOPS` are static; `private_data` is unused.
        let raw = unsafe {
            anon_inode_create_getfile(
                c"[muserload]".as_char_ptr(),
                HOLDER_FOPS.get(),
                core::ptr::null_mut(),
                bindings::O_RDWR as c_int,
                core::ptr::null(),
            )
        };
        let raw = from_err_ptr(raw)?;
        // SAFETY: `anon_inode_create_getfile` returned a file with one reference, which
        // becomes the `ARef`'s. `File` is the type of files without `fdget_pos` regions; this
        // one is never installed in a descriptor table.
        let file = unsafe { ARef::from_raw(core::ptr::NonNull::new_unchecked(raw.cast())) };
        Ok(Self { file })
    }

    /// The address space.
    pub(crate) fn as_ptr(&self) -> *mut bindings::address_space {
        // SAFETY: The file is valid while `self` holds it; `f_mapping` is set at creation.
        unsafe { (*self.file.as_ptr()).f_mapping }
    }

    /// Makes `file` (an object's open `/dev/muserload`, during its `open`) use this address
    /// space, so that its mappings are linked into it.
    pub(crate) fn attach(&self, file: &File) {
        // SAFETY: `open` may set `f_mapping`: the file is not yet visible to anyone else.
        // The address space outlives `file`'s mappings, because the object holds `self` and
        // every mapping holds `file`, which holds the object.
        unsafe { (*file.as_ptr()).f_mapping = self.as_ptr() };
    }

    /// Unmaps `[offset, offset + len)` of the object from every mapping of it.
    pub(crate) fn unmap(&self, offset: u64, len: u64) {
        // SAFETY: The address space is valid; `even_cows` 1 zaps private copies too.
        unsafe { bindings::unmap_mapping_range(self.as_ptr(), offset as i64, len as i64, 1) };
    }
}
