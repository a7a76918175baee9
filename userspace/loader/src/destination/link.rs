//! The destination's link to the source: accepting its two connections, sending on the
//! requests channel, noticing that the connections broke, and taking the source's
//! reconnection in post-copy (telling it what to send again).

use std::{
    io::BufReader,
    net::{Shutdown, TcpListener, TcpStream},
    sync::{atomic::Ordering, Arc},
    thread,
    time::{Duration, Instant},
};

use super::{
    error::{AcceptError, LoadError, ReceiveError},
    loading::Loading,
};
use crate::{
    bitmap::Bitmap,
    lock::lock,
    protocol::{self, Channel, Control, LinkError, ProtocolError},
};

/// The connections to the source; replaced when it reconnects.
#[derive(Default)]
pub(super) struct Link {
    /// The requests channel's sending side; `None` while the connections are broken.
    requests: Option<TcpStream>,
    /// Both connections, to shut them when either breaks.
    sockets: Vec<TcpStream>,
    /// Which connections the receiving threads read: bumped at each (re)connection.
    generation: u32,
    /// When and why the connections broke, while they are broken.
    broken: Option<Break>,
    /// Reconnections of the source so far.
    pub recoveries: u32,
    /// Time without connections until the last reconnection, in milliseconds.
    pub disconnected_ms: u64,
}

/// When and why the connections broke.
#[derive(Clone)]
struct Break {
    /// When.
    since: Instant,
    /// Why: the error of the thread that saw it.
    why: Arc<LinkError>,
}

/// How long the source may take to reconnect.
#[derive(Clone, Copy)]
struct Patience {
    /// From when the connections broke.
    since: Instant,
    /// This long.
    timeout: Duration,
}

impl Patience {
    /// Whether the source took too long.
    fn run_out(&self) -> bool {
        self.since.elapsed() >= self.timeout
    }
}

impl Link {
    /// Whether the connections are broken (and the source not back yet).
    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }
}

/// Accepts the source's two connections of a migration; returns them and when the first
/// came.
pub(super) fn accept_source(
    listener: &TcpListener,
) -> Result<(TcpStream, TcpStream, Instant), AcceptError> {
    accept_channels(listener, None)
}

/// Accepts the source's two connections, in either order; returns them and when the
/// first came. On a reconnection (with the source's `patience`), fails with
/// [`AcceptError::TimedOut`] once it runs out, and a connection that breaks in its hello,
/// or a channel opened again, replaces what came before: a source may die and come back
/// halfway through.
fn accept_channels(
    listener: &TcpListener,
    patience: Option<Patience>,
) -> Result<(TcpStream, TcpStream, Instant), AcceptError> {
    let (mut stream, mut requests, mut first) = (None, None, None);
    listener
        .set_nonblocking(patience.is_some())
        .map_err(AcceptError::Listen)?;
    loop {
        let mut conn = match listener.accept() {
            Ok((conn, _)) => conn,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(patience) = patience.filter(Patience::run_out) {
                    return Err(AcceptError::TimedOut(patience.timeout));
                }
                thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err(AcceptError::Accept(e)),
        };
        let first = *first.get_or_insert_with(Instant::now);
        conn.set_nonblocking(false).map_err(AcceptError::Accept)?;
        protocol::tune(&conn)?;
        let slot = match protocol::accept_hello(&mut conn) {
            Ok(Channel::Stream) => &mut stream,
            Ok(Channel::Requests) => &mut requests,
            Err(LinkError::Disconnected { .. }) if patience.is_some() => continue,
            Err(e) => return Err(e.into()),
        };
        if slot.replace(conn).is_some() && patience.is_none() {
            return Err(LinkError::from(ProtocolError::ChannelTwice).into());
        }
        match (stream.take(), requests.take()) {
            (Some(s), Some(r)) => return Ok((s, r, first)),
            (s, r) => (stream, requests) = (s, r),
        }
    }
}

/// Accepts the source's reconnection: both channels before its `patience` runs out, the
/// stream opening with [`Control::Resume`].
fn accept_reconnection(
    listener: &TcpListener,
    patience: Patience,
) -> Result<(BufReader<TcpStream>, TcpStream), AcceptError> {
    let (stream, requests, _) = accept_channels(listener, Some(patience))?;
    let mut stream = BufReader::with_capacity(1 << 16, stream);
    protocol::expect_resume(&mut stream)?;
    Ok((stream, requests))
}

impl Loading {
    /// Takes the source's first connections and starts a receiving thread on each.
    pub fn connect(
        self: &Arc<Self>,
        stream: BufReader<TcpStream>,
        requests: TcpStream,
    ) -> Result<(), LoadError> {
        self.attach(stream, requests, &mut lock(&self.link))
    }

    /// Sends `control` to the source. While the connections are broken it is dropped:
    /// a reconnection sends again what matters (see [`Loading::recover`]).
    pub fn send(&self, control: &Control) -> Result<(), LinkError> {
        let mut link = lock(&self.link);
        let Some(requests) = link.requests.as_mut() else {
            return Ok(());
        };
        match protocol::send_control(requests, control) {
            Err(e @ LinkError::Disconnected { .. }) => {
                self.broke(&mut link, e);
                Ok(())
            }
            result => result.map(drop),
        }
    }

    /// A receiving thread of connections `generation` saw them break.
    pub fn lost(&self, generation: u32, why: LinkError) {
        let mut link = lock(&self.link);
        if link.generation == generation {
            self.broke(&mut link, why);
        }
    }

    /// Waits for the source to reconnect after the connections broke, at most `timeout`,
    /// and tells it what to send again: every page not loaded, the requests not answered.
    /// Fails with [`ReceiveError::Unrecovered`] if it does not come back.
    pub fn recover(
        self: &Arc<Self>,
        listener: &TcpListener,
        timeout: Duration,
    ) -> Result<(), ReceiveError> {
        let Some(Break { since, why }) = lock(&self.link).broken.clone() else {
            return Ok(());
        };
        eprintln!(
            "muserload-loader: the connection to the source broke ({why}); the guest waits \
             for its missing pages while the source reconnects (for up to {timeout:?})"
        );
        let patience = Patience { since, timeout };
        let (stream, mut requests) =
            accept_reconnection(listener, patience).map_err(|failure| {
                ReceiveError::Unrecovered {
                    cause: why.clone(),
                    failure,
                }
            })?;
        // Under the link's lock: a fault resolved meanwhile either is in `requested`
        // before the list below is made, or sends its request on the new connection.
        let mut link = lock(&self.link);
        let (missing, unanswered) = self.missing();
        let mut bytes = protocol::send_control(
            &mut requests,
            &Control::Missing {
                words: missing.words(),
            },
        )?;
        // The first may have been lost; the source keeps the first it gets.
        bytes += protocol::send_control(&mut requests, &Control::Resumed)?;
        if !unanswered.is_empty() {
            bytes +=
                protocol::send_control(&mut requests, &Control::Request { pages: unanswered })?;
        }
        self.counters.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.attach(stream, requests, &mut link)?;
        link.recoveries += 1;
        link.disconnected_ms += since.elapsed().as_millis() as u64;
        self.timeline
            .outage(self.timeline.now_ms() - since.elapsed().as_secs_f64() * 1000.0);
        eprintln!(
            "muserload-loader: the source reconnected after {} ms; {} pages to go",
            since.elapsed().as_millis(),
            missing.count()
        );
        Ok(())
    }

    /// The pages the source must send again (neither loaded nor zero), and those of them
    /// a vCPU asked for.
    fn missing(&self) -> (Bitmap, Vec<u64>) {
        let maps = &self.pages;
        let missing = Bitmap::new(maps.len());
        let mut unanswered = Vec::new();
        for page in (0..maps.len()).filter(|&p| !maps.loaded.get(p) && !maps.zero.get(p)) {
            missing.set(page);
            if maps.requested.get(page) {
                unanswered.push(page);
            }
        }
        (missing, unanswered)
    }

    /// Takes new connections (`link` is `self.link`, locked) and starts a receiving thread
    /// on each.
    fn attach(
        self: &Arc<Self>,
        stream: BufReader<TcpStream>,
        requests: TcpStream,
        link: &mut Link,
    ) -> Result<(), LoadError> {
        let clone = |s: &TcpStream| s.try_clone().map_err(LoadError::Clone);
        link.sockets = vec![clone(stream.get_ref())?, clone(&requests)?];
        let requests_in = BufReader::with_capacity(1 << 16, clone(&requests)?);
        link.requests = Some(requests);
        link.generation += 1;
        link.broken = None;
        let generation = link.generation;
        self.spawn("request-replies", move |l| {
            l.receive_answers(requests_in, generation)
        })?;
        self.spawn("stream", move |l| l.receive_stream(stream, generation))
    }

    /// Takes the connections down (`link` is `self.link`, locked): every receiving thread
    /// stops, and the main thread waits for the source to reconnect.
    fn broke(&self, link: &mut Link, why: LinkError) {
        if link.broken.is_some() {
            return;
        }
        for socket in link.sockets.drain(..) {
            // Fails only if it is shut already.
            let _ = socket.shutdown(Shutdown::Both);
        }
        link.requests = None;
        link.broken = Some(Break {
            since: Instant::now(),
            why: Arc::new(why),
        });
        self.outcome.notify();
    }
}
