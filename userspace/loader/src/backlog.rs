//! What a TCP socket's peer has not acknowledged yet: pre-copy's rounds wait for it, so that
//! they measure the rate pages reach the destination (not the rate they fill the socket's
//! buffer), and so that the pause does not begin with megabytes still on their way.

use std::{
    io::{self, BufWriter, Write},
    net::TcpStream,
    os::fd::AsRawFd,
    thread,
    time::{Duration, Instant},
};

use nix::libc;

nix::ioctl_read_bad!(
    /// `SIOCOUTQ`: for TCP, the bytes written that the peer has not acknowledged.
    siocoutq,
    libc::TIOCOUTQ,
    libc::c_int
);

/// The bytes written to `socket` that its peer has not acknowledged.
pub fn unacknowledged(socket: &TcpStream) -> io::Result<u64> {
    let mut bytes: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int, to `bytes`, which lives across the call.
    unsafe { siocoutq(socket.as_raw_fd(), &mut bytes) }?;
    Ok(bytes.max(0) as u64)
}

/// Flushes `stream` and waits until its peer has acknowledged everything written, or
/// `limit` has passed; returns the bytes still unacknowledged then.
pub fn drain(stream: &mut BufWriter<TcpStream>, limit: Duration) -> io::Result<u64> {
    stream.flush()?;
    let start = Instant::now();
    loop {
        let left = unacknowledged(stream.get_ref())?;
        if left == 0 || start.elapsed() >= limit {
            return Ok(left);
        }
        thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Read, net::TcpListener};

    use super::*;

    #[test]
    fn what_the_peer_has_not_read_into_its_buffer_is_unacknowledged_until_it_reads() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a listener");
        let sender =
            TcpStream::connect(listener.local_addr().expect("its address")).expect("a connection");
        let (mut receiver, _) = listener.accept().expect("the connection");
        // Far more than both sockets' buffers hold: the peer's window closes, and the rest
        // waits in the sender's queue.
        sender.set_nonblocking(true).expect("non-blocking");
        let mut written = 0usize;
        let chunk = vec![7u8; 1 << 16];
        while let Ok(n) = (&sender).write(&chunk) {
            written += n;
        }
        assert!(unacknowledged(&sender).expect("SIOCOUTQ") > 0);
        sender.set_nonblocking(false).expect("blocking");
        let mut stream = BufWriter::new(sender);
        let reader = thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            let mut read = 0usize;
            while read < written {
                read += receiver.read(&mut buf).expect("reading");
            }
            receiver
        });
        assert_eq!(
            drain(&mut stream, Duration::from_secs(30)).expect("drain"),
            0
        );
        drop(reader.join().expect("the reader"));
    }
}
