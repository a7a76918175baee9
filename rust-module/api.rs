// SPDX-License-Identifier: GPL-2.0

//! `MUSERLOAD_IOC_API`: the handshake in which caller and module agree on a version.

use crate::uapi::*;
use kernel::{
    prelude::*,
    uaccess::UserSlice, //
};

/// The feature bits this module supports.
const SUPPORTED_FEATURES: u64 = (MUSERLOAD_FEATURE_SIGNAL
    | MUSERLOAD_FEATURE_QUEUE
    | MUSERLOAD_FEATURE_MOVE
    | MUSERLOAD_FEATURE_LOADV
    | MUSERLOAD_FEATURE_STATS
    | MUSERLOAD_FEATURE_RESOLVE) as u64;

/// Handles `MUSERLOAD_IOC_API` on the `struct muserload_api` at `arg`.
///
/// The module's own version and features are written back even when the request fails, so
/// that a caller built against another header can see what the module speaks.
pub(crate) fn handshake(arg: UserSlice) -> Result<isize> {
    let (mut reader, mut writer) = arg.reader_writer();
    let request: muserload_api = reader.read()?;
    writer.write(&muserload_api {
        api: MUSERLOAD_API.into(),
        features: SUPPORTED_FEATURES,
    })?;
    if request.api != u64::from(MUSERLOAD_API) || request.features & !SUPPORTED_FEATURES != 0 {
        return Err(EINVAL);
    }
    Ok(0)
}
