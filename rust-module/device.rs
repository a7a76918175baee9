// SPDX-License-Identifier: GPL-2.0

//! `/dev/muserload`'s file operations: each open creates an [`Object`], `mmap` maps one of
//! its regions, and each ioctl goes to the file that implements it.

use crate::{
    anon_file::PrivateMapping,
    api,
    object::Object,
    uapi::*,
    vma, //
};
use kernel::{
    fs::File,
    miscdevice::{
        MiscDevice,
        MiscDeviceRegistration, //
    },
    mm::virt::VmaNew,
    prelude::*,
    sync::{
        Arc,
        ArcBorrow, //
    },
    uaccess::{
        UserPtr,
        UserSlice, //
    },
};

#[vtable]
impl MiscDevice for Object {
    type Ptr = Arc<Self>;

    fn open(file: &File, _misc: &MiscDeviceRegistration<Self>) -> Result<Self::Ptr> {
        let mapping = PrivateMapping::new()?;
        mapping.attach(file);
        Arc::pin_init(Object::new(mapping), GFP_KERNEL)
    }

    fn mmap(me: ArcBorrow<'_, Self>, _file: &File, vma: &VmaNew) -> Result {
        let layout = me.layout().ok_or(EINVAL)?;
        let (offset, len) = vma::new_range(vma);
        if offset >= MUSERLOAD_STAGING_OFFSET {
            layout.staging_range(offset, len)?;
        } else {
            layout.guest_range(offset, len)?;
        }
        vma::install(vma)
    }

    fn ioctl(me: ArcBorrow<'_, Self>, _file: &File, cmd: u32, arg: usize) -> Result<isize> {
        let user = |size| UserSlice::new(UserPtr::from_addr(arg), size);
        match cmd {
            MUSERLOAD_IOC_API => api::handshake(user(size_of::<muserload_api>())),
            MUSERLOAD_IOC_SETUP => me.setup(user(size_of::<muserload_setup>())),
            MUSERLOAD_IOC_ARM => me.arm(user(size_of::<muserload_arm>())),
            MUSERLOAD_IOC_LOAD => crate::load::load(me, UserPtr::from_addr(arg)),
            MUSERLOAD_IOC_LOADV => crate::load::loadv(me, UserPtr::from_addr(arg)),
            MUSERLOAD_IOC_RESOLVE => crate::load::resolve(me, UserPtr::from_addr(arg)),
            MUSERLOAD_IOC_EVENTS => me.create_events(arg),
            MUSERLOAD_IOC_ABORT => {
                me.abort();
                Ok(0)
            }
            MUSERLOAD_IOC_STATS => {
                user(size_of::<muserload_stats>())
                    .writer()
                    .write(&me.stats.snapshot())?;
                Ok(0)
            }
            _ => Err(ENOTTY),
        }
    }
}
