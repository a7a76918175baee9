//! Migration addresses: the `HOST:PORT` a source connects to and a destination listens on.

use std::{
    io,
    net::{SocketAddr, ToSocketAddrs},
};

/// An address that does not resolve.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    /// Not `HOST:PORT`, or the resolver failed.
    #[error("invalid address {addr:?}: {source}")]
    Invalid {
        /// The address given.
        addr: String,
        /// Why it did not resolve.
        #[source]
        source: io::Error,
    },
    /// The resolver found no address for the host.
    #[error("address {addr:?} resolves to nothing")]
    Unresolved {
        /// The address given.
        addr: String,
    },
}

/// Resolves `addr` (`HOST:PORT`) to one socket address, the first the resolver gives.
pub fn resolve(addr: &str) -> Result<SocketAddr, AddressError> {
    addr.to_socket_addrs()
        .map_err(|source| AddressError::Invalid {
            addr: addr.into(),
            source,
        })?
        .next()
        .ok_or_else(|| AddressError::Unresolved { addr: addr.into() })
}
