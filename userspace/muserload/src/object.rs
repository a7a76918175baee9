//! A load object: one open of `/dev/muserload`.

use std::{
    fs::OpenOptions,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    path::Path,
};

use nix::errno::Errno;

use crate::{
    uapi::{muserload_api, muserload_ioc_api, MUSERLOAD_API},
    Error, Result,
};

/// The device node the module creates.
pub const DEVICE_PATH: &str = "/dev/muserload";

/// The ABI version this crate speaks.
pub const API_VERSION: u64 = MUSERLOAD_API as u64;

/// An open, handshaken load object.
#[derive(Debug)]
pub struct Object {
    fd: OwnedFd,
    features: u64,
}

impl Object {
    /// Opens [`DEVICE_PATH`] and handshakes, requiring the `features` bits.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let object = muserload::Object::open(0)?;
    /// println!("features: {:#x}", object.features());
    /// # Ok::<(), muserload::Error>(())
    /// ```
    pub fn open(features: u64) -> Result<Self> {
        Self::open_path(DEVICE_PATH, features)
    }

    /// Opens the device at `path` and handshakes, requiring the `features` bits.
    pub fn open_path(path: impl AsRef<Path>, features: u64) -> Result<Self> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::Open {
                path: path.to_owned(),
                errno: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            })?;
        let fd = OwnedFd::from(file);
        let features = handshake(fd.as_fd(), features)?;
        Ok(Self { fd, features })
    }

    /// Every feature bit the module supports.
    pub fn features(&self) -> u64 {
        self.features
    }
}

/// `MUSERLOAD_IOC_API`: agrees on [`API_VERSION`] and checks that `wanted` is supported;
/// returns every feature bit the module supports.
fn handshake(fd: BorrowedFd<'_>, wanted: u64) -> Result<u64> {
    let mut api = muserload_api {
        api: API_VERSION,
        features: wanted,
    };
    // SAFETY: `fd` is an open muserload object and `api` a valid `struct muserload_api`
    // that the module reads and writes back.
    let ret = unsafe { muserload_ioc_api(fd.as_raw_fd(), &mut api) };
    match ret {
        Ok(_) => Ok(api.features),
        // The module writes back its version and features on EINVAL: say which part failed.
        Err(Errno::EINVAL) if api.api != API_VERSION => Err(Error::Version {
            module: api.api,
            ours: API_VERSION,
        }),
        Err(Errno::EINVAL) if wanted & !api.features != 0 => Err(Error::Features {
            missing: wanted & !api.features,
            supported: api.features,
        }),
        Err(errno) => Err(Error::Ioctl {
            op: "MUSERLOAD_IOC_API",
            errno,
        }),
    }
}

impl AsFd for Object {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Object {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}
