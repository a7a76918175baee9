//! The source's connections to the destination: opened with their hellos, and opened again
//! after they broke in post-copy, asking the destination which pages it misses.

use std::{
    io::BufWriter,
    net::{SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use super::{error::SendError, serve::Serving};
use crate::protocol::{self, Channel, Control};

/// Opens both connections to the destination at `addr`: the stream (buffered) and the
/// requests channel.
pub(super) fn open(addr: SocketAddr) -> Result<(BufWriter<TcpStream>, TcpStream), SendError> {
    let stream = BufWriter::with_capacity(1 << 20, connect(addr, Channel::Stream)?);
    let requests = connect(addr, Channel::Requests)?;
    Ok((stream, requests))
}

/// Opens the connection of `channel` to the destination at `addr`.
fn connect(addr: SocketAddr, channel: Channel) -> Result<TcpStream, SendError> {
    let mut stream =
        TcpStream::connect(addr).map_err(|source| SendError::Connect { addr, source })?;
    protocol::tune(&stream)?;
    protocol::send_hello(&mut stream, channel)?;
    protocol::hello_answer(&mut stream)?;
    Ok(stream)
}

/// Reconnects to the destination after a connection broke, retrying until `timeout`;
/// returns the new connections, with `serving` set to send what the destination misses.
pub(super) fn reconnect(
    addr: SocketAddr,
    serving: &Serving,
    timeout: Duration,
) -> Result<(BufWriter<TcpStream>, TcpStream), SendError> {
    let deadline = Instant::now() + timeout;
    loop {
        match resume(addr, serving) {
            Ok(connections) => return Ok(connections),
            Err(e) if e.is_disconnection() => {
                if Instant::now() >= deadline {
                    return Err(SendError::Unrecovered {
                        timeout,
                        cause: Box::new(e),
                    });
                }
                thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Opens both connections again and asks the destination which pages it misses.
fn resume(
    addr: SocketAddr,
    serving: &Serving,
) -> Result<(BufWriter<TcpStream>, TcpStream), SendError> {
    let (mut stream, mut requests) = open(addr)?;
    let bytes = protocol::send_control(&mut stream, &Control::Resume)?;
    protocol::flush(&mut stream, "resuming the stream")?;
    let missing = protocol::expect_missing(&mut requests, serving.zero().len())?;
    serving.add_bytes(bytes);
    serving.resend(&missing);
    Ok((stream, requests))
}
