// SPDX-License-Identifier: GPL-2.0

//! The load object: what each open of `/dev/muserload` creates.

use crate::{
    api,
    uapi::{
        muserload_api,
        MUSERLOAD_IOC_API, //
    },
};
use kernel::{
    fs::File,
    miscdevice::{
        MiscDevice,
        MiscDeviceRegistration, //
    },
    prelude::*,
    uaccess::{
        UserPtr,
        UserSlice, //
    },
};

/// One open of `/dev/muserload`.
pub(crate) struct Object;

#[vtable]
impl MiscDevice for Object {
    type Ptr = Pin<KBox<Self>>;

    fn open(_file: &File, _misc: &MiscDeviceRegistration<Self>) -> Result<Self::Ptr> {
        KBox::pin(Object, GFP_KERNEL).map_err(Into::into)
    }

    fn ioctl(_me: Pin<&Self>, _file: &File, cmd: u32, arg: usize) -> Result<isize> {
        let arg = UserPtr::from_addr(arg);
        match cmd {
            MUSERLOAD_IOC_API => api::handshake(UserSlice::new(arg, size_of::<muserload_api>())),
            _ => Err(ENOTTY),
        }
    }
}
