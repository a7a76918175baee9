//! Migration addresses: the `HOST:PORT` a source connects to and a destination listens on.

use std::net::{SocketAddr, ToSocketAddrs};

use crate::error::{Error, Result};

/// Resolves `addr` (`HOST:PORT`) to one socket address, the first the resolver gives.
pub fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .map_err(|e| Error::Config(format!("invalid address {addr:?}: {e}")))?
        .next()
        .ok_or_else(|| Error::Config(format!("address {addr:?} resolves to nothing")))
}
