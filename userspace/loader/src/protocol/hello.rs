//! The hello that opens every connection, and its answer; and the socket options every
//! connection of a migration gets.

use std::{
    io::{Read, Write},
    net::TcpStream,
};

use nix::sys::socket::{setsockopt, sockopt};

use super::{
    error::{broken, LinkError, ProtocolError, Refusal},
    u32_at, Channel, MAGIC, VERSION,
};

/// How long sent data may stay unacknowledged before the connection counts as broken.
const DEAD_PEER_MS: u32 = 5000;

/// The longest refusal reason read from an answer (the rest is left unread).
const REASON_MAX: u32 = 4096;

/// Readies a connection of a migration: no Nagle delay (requests are small and urgent),
/// and a dead peer noticed within seconds (keepalive probes while idle, a timeout on
/// unacknowledged data) rather than after the system's default of minutes to hours.
pub fn tune(stream: &TcpStream) -> Result<(), LinkError> {
    stream.set_nodelay(true).map_err(broken("TCP_NODELAY"))?;
    let set = |result: nix::Result<()>, what| result.map_err(|e| broken(what)(e.into()));
    set(
        setsockopt(stream, sockopt::KeepAlive, &true),
        "SO_KEEPALIVE",
    )?;
    set(setsockopt(stream, sockopt::TcpKeepIdle, &2), "TCP_KEEPIDLE")?;
    set(
        setsockopt(stream, sockopt::TcpKeepInterval, &1),
        "TCP_KEEPINTVL",
    )?;
    set(setsockopt(stream, sockopt::TcpKeepCount, &3), "TCP_KEEPCNT")?;
    set(
        setsockopt(stream, sockopt::TcpUserTimeout, &DEAD_PEER_MS),
        "TCP_USER_TIMEOUT",
    )
}

/// The hello that opens a connection: magic, version, channel.
pub fn send_hello(w: &mut impl Write, channel: Channel) -> Result<(), LinkError> {
    let mut hello = [0u8; 16];
    hello[..8].copy_from_slice(&MAGIC);
    hello[8..12].copy_from_slice(&VERSION.to_le_bytes());
    hello[12..].copy_from_slice(&(channel as u32).to_le_bytes());
    w.write_all(&hello).map_err(broken("sending the hello"))
}

/// Reads a hello and answers it: accepts our version, refuses any other (telling the
/// peer why) and returns an error.
pub fn accept_hello(stream: &mut (impl Read + Write)) -> Result<Channel, LinkError> {
    let mut hello = [0u8; 16];
    stream
        .read_exact(&mut hello)
        .map_err(broken("receiving the hello"))?;
    if hello[..8] != MAGIC {
        return Err(ProtocolError::NotOurs.into());
    }
    let (version, channel) = (u32_at(&hello, 8), u32_at(&hello, 12));
    // The version first: a source of another version may number its channels otherwise.
    let accepted = if version == VERSION {
        Channel::from_wire(channel).ok_or(Refusal::UnknownChannel(channel))
    } else {
        Err(Refusal::SourceVersion(version))
    };
    let reason = accepted
        .as_ref()
        .err()
        .map(ToString::to_string)
        .unwrap_or_default();
    let mut answer = Vec::with_capacity(16 + reason.len());
    answer.extend_from_slice(&MAGIC);
    answer.extend_from_slice(&VERSION.to_le_bytes());
    answer.extend_from_slice(&(reason.len() as u32).to_le_bytes());
    answer.extend_from_slice(reason.as_bytes());
    stream
        .write_all(&answer)
        .map_err(broken("answering the hello"))?;
    Ok(accepted?)
}

/// Reads the answer to our hello.
pub fn hello_answer(r: &mut impl Read) -> Result<(), LinkError> {
    let mut head = [0u8; 16];
    r.read_exact(&mut head)
        .map_err(broken("receiving the answer to the hello"))?;
    if head[..8] != MAGIC {
        return Err(ProtocolError::NotOurs.into());
    }
    let (version, len) = (u32_at(&head, 8), u32_at(&head, 12));
    if len == 0 && version != VERSION {
        return Err(Refusal::DestinationVersion(version).into());
    }
    if len == 0 {
        return Ok(());
    }
    let mut reason = vec![0; len.min(REASON_MAX) as usize];
    r.read_exact(&mut reason)
        .map_err(broken("receiving the answer to the hello"))?;
    Err(Refusal::ByPeer(String::from_utf8_lossy(&reason).into_owned()).into())
}

#[cfg(test)]
mod tests {
    use std::io::{self, Cursor};

    use super::{super::testing::*, *};

    /// A connection's far end: what the peer sent, and what we answer.
    struct Duplex {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Duplex {
        fn new(input: Vec<u8>) -> Self {
            Self {
                input: Cursor::new(input),
                output: Vec::new(),
            }
        }
    }

    impl Read for Duplex {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Duplex {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.write(buf)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn hello(magic: &[u8; 8], version: u32, channel: u32) -> Vec<u8> {
        [&magic[..], &version.to_le_bytes(), &channel.to_le_bytes()].concat()
    }

    fn answer(version: u32, reason: &str) -> Vec<u8> {
        [
            &MAGIC[..],
            &version.to_le_bytes(),
            &(reason.len() as u32).to_le_bytes(),
            reason.as_bytes(),
        ]
        .concat()
    }

    #[test]
    fn hello_is_magic_version_channel() {
        for (channel, n) in [(Channel::Stream, 1u32), (Channel::Requests, 2)] {
            let mut sent = Vec::new();
            send_hello(&mut sent, channel).expect("hello");
            assert_eq!(sent, hello(b"MUSERLD\0", 3, n));
        }
    }

    #[test]
    fn hello_accepted_for_each_channel() {
        for channel in [Channel::Stream, Channel::Requests] {
            let mut sent = Vec::new();
            send_hello(&mut sent, channel).expect("hello");
            let mut conn = Duplex::new(sent);
            assert_eq!(accept_hello(&mut conn).expect("accepted"), channel);
            // Our magic and version, no reason: accepted.
            assert_eq!(conn.output, answer(VERSION, ""));
            hello_answer(&mut Cursor::new(conn.output)).expect("an accepting answer");
        }
    }

    #[test]
    fn hello_with_other_magic_is_refused_without_an_answer() {
        let mut conn = Duplex::new(hello(b"GET / HT", VERSION, 1));
        assert_eq!(
            err(accept_hello(&mut conn)),
            "protocol error: the peer does not speak the muserload migration protocol"
        );
        assert!(conn.output.is_empty());
    }

    #[test]
    fn hello_of_other_version_is_refused_and_told_why() {
        let mut conn = Duplex::new(hello(&MAGIC, 4, 1));
        let why = "the source speaks protocol version 4, this destination 3";
        let refused = accept_hello(&mut conn);
        assert!(matches!(refused, Err(LinkError::Refused(_))));
        assert_eq!(
            err(refused),
            format!("the peer refused the migration: {why}")
        );
        assert_eq!(conn.output, answer(VERSION, why));
        // The source reads the reason and fails with it.
        assert_eq!(
            err(hello_answer(&mut Cursor::new(conn.output))),
            format!("the peer refused the migration: {why}")
        );
    }

    #[test]
    fn hello_for_unknown_channel_is_refused_and_told_why() {
        for n in [0, 3, u32::MAX] {
            let mut conn = Duplex::new(hello(&MAGIC, VERSION, n));
            let why = format!("unknown channel {n}");
            assert_eq!(
                err(accept_hello(&mut conn)),
                format!("the peer refused the migration: {why}")
            );
            assert_eq!(conn.output, answer(VERSION, &why));
            assert_eq!(
                err(hello_answer(&mut Cursor::new(conn.output))),
                format!("the peer refused the migration: {why}")
            );
        }
    }

    #[test]
    fn hello_of_other_version_and_channel_names_the_version() {
        let mut conn = Duplex::new(hello(&MAGIC, 1, 9));
        assert_eq!(
            err(accept_hello(&mut conn)),
            "the peer refused the migration: the source speaks protocol version 1, this \
             destination 3"
        );
    }

    #[test]
    fn truncated_hello_is_a_disconnection_without_an_answer() {
        for len in [0, 8, 15] {
            let mut conn = Duplex::new(hello(&MAGIC, VERSION, 1)[..len].to_vec());
            let refused = accept_hello(&mut conn);
            assert!(matches!(refused, Err(LinkError::Disconnected { .. })));
            assert_eq!(err(refused), format!("receiving the hello: {CLOSED}"));
            assert!(conn.output.is_empty());
        }
    }

    #[test]
    fn answer_to_the_hello_refusals() {
        let read = |bytes: Vec<u8>| err(hello_answer(&mut Cursor::new(bytes)));
        // Not ours at all.
        let mut foreign = answer(VERSION, "");
        foreign[0] = b'X';
        assert_eq!(
            read(foreign),
            "protocol error: the peer does not speak the muserload migration protocol"
        );
        // Another version that accepted us anyway: the source refuses.
        assert_eq!(
            read(answer(7, "")),
            "the peer refused the migration: the destination speaks protocol version 7, this \
             source 3"
        );
        // Cut short in the head, or in the reason.
        assert_eq!(
            read(answer(VERSION, "")[..12].to_vec()),
            format!("receiving the answer to the hello: {CLOSED}")
        );
        let mut cut = answer(VERSION, "unknown channel 3");
        cut.truncate(20);
        assert_eq!(
            read(cut),
            format!("receiving the answer to the hello: {CLOSED}")
        );
    }
}
