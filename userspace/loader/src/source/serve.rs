//! Post-copy at the source: the guest runs at the destination, and this process serves its
//! pages: every page the destination asks for at once, on the requests channel, and every
//! page not sent yet on the stream, from the last page asked for on.

use std::{
    io::{BufWriter, Write},
    net::{Shutdown, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering},
        Arc, OnceLock,
    },
    thread,
    time::{Duration, Instant},
};

use super::error::{clone_error, SendError};
use crate::{
    bitmap::Bitmap,
    memory::BATCH_PAGES,
    protocol::{self, Channel, Control, LinkError},
    vm::Vm,
};

/// What the serving threads share.
pub(super) struct Serving {
    /// The VM whose (stopped) guest's pages are sent.
    vm: Arc<Vm>,
    /// The zero pages: never sent unless asked for.
    zero: Bitmap,
    /// Pages sent at least once (zero pages count as sent: they never need to be).
    sent: Bitmap,
    /// How many times each page was sent.
    sends: Vec<AtomicU8>,
    /// The page after the last requested one, where the stream goes on (`u64::MAX`: none
    /// since the stream last looked).
    next_after_request: AtomicU64,
    /// Pages sent because the destination asked.
    requested: AtomicU64,
    /// Pages the stream sent.
    streamed: AtomicU64,
    /// Zero pages sent because the destination asked.
    zero_sent: AtomicU64,
    /// Bytes sent on both connections, the migration's start included.
    bytes: AtomicU64,
}

/// What serving sent, for the report.
pub(super) struct Sent {
    /// Bytes on both connections, the migration's start included.
    pub bytes: u64,
    /// Pages sent on request.
    pub requested: u64,
    /// Pages the stream sent.
    pub streamed: u64,
    /// Zero pages sent on request.
    pub zero_sent: u64,
    /// The most times one page was sent.
    pub max_sends: u8,
}

/// The times the source reports to the destination once the guest runs there.
pub(super) struct Times {
    /// When the guest was paused here.
    pub paused: Instant,
    /// The connection setup.
    pub setup: Duration,
    /// Pre-copy rounds.
    pub rounds: u32,
    /// Set by the first `Resumed` (a recovery repeats it).
    pub downtime: Option<Duration>,
}

impl Serving {
    /// Serves `vm`'s guest, whose zero pages are `zero`, of which the destination has
    /// `sent` already; `bytes` went to it so far.
    pub fn new(vm: Arc<Vm>, zero: Bitmap, sent: Bitmap, bytes: u64) -> Self {
        Self {
            sends: (0..vm.ram().pages()).map(|_| AtomicU8::new(0)).collect(),
            vm,
            zero,
            sent,
            next_after_request: AtomicU64::new(u64::MAX),
            requested: AtomicU64::new(0),
            streamed: AtomicU64::new(0),
            zero_sent: AtomicU64::new(0),
            bytes: AtomicU64::new(bytes),
        }
    }

    /// The zero pages.
    pub fn zero(&self) -> &Bitmap {
        &self.zero
    }

    /// Counts `bytes` sent.
    pub fn add_bytes(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// After a reconnection: the destination misses the pages of `missing` (whatever was
    /// in flight when the connection broke among them) and has every other; the stream
    /// goes on from the first page.
    pub fn resend(&self, missing: &Bitmap) {
        for page in 0..self.zero.len() {
            if missing.get(page) {
                self.sent.clear(page);
            } else {
                self.sent.set(page);
            }
        }
        self.next_after_request.store(0, Ordering::Relaxed);
    }

    /// What was sent so far.
    pub fn sent(&self) -> Sent {
        Sent {
            bytes: self.bytes.load(Ordering::Relaxed),
            requested: self.requested.load(Ordering::Relaxed),
            streamed: self.streamed.load(Ordering::Relaxed),
            zero_sent: self.zero_sent.load(Ordering::Relaxed),
            max_sends: self
                .sends
                .iter()
                .map(|s| s.load(Ordering::Relaxed))
                .max()
                .unwrap_or(0),
        }
    }

    /// Counts a send of `page`.
    fn count_send(&self, page: u64) {
        self.sends[page as usize].fetch_add(1, Ordering::Relaxed);
        if self.zero.get(page) {
            self.zero_sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sends `pages` in one batch.
    fn send(&self, w: &mut impl Write, pages: &[u64]) -> Result<(), LinkError> {
        // SAFETY: The vCPUs are stopped for good and nothing loads into the source's RAM.
        let data: Vec<(u64, &[u8])> = pages
            .iter()
            .map(|&p| (p, unsafe { self.vm.ram().page(p) }))
            .collect();
        let bytes = protocol::send_pages(w, &data)?;
        self.add_bytes(bytes);
        Ok(())
    }
}

/// Serves one pair of connections: streams pages in a thread and answers requests, until
/// the destination is done (`Ok`) or a connection breaks.
pub(super) fn serve(
    serving: &Arc<Serving>,
    stream: BufWriter<TcpStream>,
    requests: &mut TcpStream,
    times: &mut Times,
) -> Result<(), SendError> {
    // Whichever side fails shuts both connections, so that the other's blocking call
    // returns too; the first failure is the one to report.
    let sockets = Arc::new(Sockets::new(stream.get_ref(), requests)?);
    let stop = Arc::new(AtomicBool::new(false));
    let streamer = {
        let (serving, stop, sockets) = (serving.clone(), stop.clone(), sockets.clone());
        thread::Builder::new()
            .name("stream".into())
            .spawn(move || {
                let streamed = stream_pages(&serving, stream, &stop);
                if streamed.is_err() {
                    sockets.shut(Channel::Stream);
                }
                streamed
            })
            .map_err(SendError::Spawn)?
    };
    let served = serve_requests(serving, requests, times);
    stop.store(true, Ordering::SeqCst);
    if served.is_err() {
        sockets.shut(Channel::Requests);
    }
    let streamed = streamer.join().map_err(|_| SendError::StreamPanicked)?;
    match (served, streamed) {
        (Ok(()), Ok(())) => Ok(()),
        // Once the destination has every page, a stream cut short is no loss.
        (Ok(()), Err(e)) => {
            eprintln!("muserload-loader: stream ended early (harmless, all pages loaded): {e}");
            Ok(())
        }
        (Err(e), Ok(())) => Err(e),
        (Err(served), Err(streamed)) => Err(match sockets.first_to_fail() {
            Some(Channel::Stream) => streamed.into(),
            _ => served,
        }),
    }
}

/// Handles on both connections, to shut them from another thread.
struct Sockets {
    /// The stream's and the requests channel's sockets.
    sockets: [TcpStream; 2],
    /// The side of [`serve`] (the thread on that channel) that shut them first.
    first: OnceLock<Channel>,
}

impl Sockets {
    /// Handles on `stream` and `requests`.
    fn new(stream: &TcpStream, requests: &TcpStream) -> Result<Self, SendError> {
        let clone = |s: &TcpStream| s.try_clone().map_err(clone_error("a socket"));
        Ok(Self {
            sockets: [clone(stream)?, clone(requests)?],
            first: OnceLock::new(),
        })
    }

    /// Shuts both connections, the side on channel `by` having failed.
    fn shut(&self, by: Channel) {
        // Only the first side to fail is kept: the other failed because of it.
        let _ = self.first.set(by);
        for socket in &self.sockets {
            // Fails only if it is shut already.
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// The side that failed first, if one did.
    fn first_to_fail(&self) -> Option<Channel> {
        self.first.get().copied()
    }
}

/// Answers the destination's requests until it says it is done; notes the downtime.
fn serve_requests(
    serving: &Serving,
    requests: &mut TcpStream,
    times: &mut Times,
) -> Result<(), SendError> {
    let mut reader = requests
        .try_clone()
        .map_err(clone_error("the requests socket"))?;
    loop {
        match protocol::expect_serving(&mut reader, serving.zero.len())? {
            protocol::Serving::Request(pages) => {
                for chunk in pages.chunks(BATCH_PAGES) {
                    for &page in chunk {
                        serving.sent.set(page);
                        serving.count_send(page);
                    }
                    serving.send(requests, chunk)?;
                    serving
                        .requested
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
                if let Some(&last) = pages.last() {
                    serving
                        .next_after_request
                        .store(last + 1, Ordering::Relaxed);
                }
            }
            protocol::Serving::Resumed => {
                let downtime = *times.downtime.get_or_insert(times.paused.elapsed());
                let message = Control::SourceTimes {
                    rounds: times.rounds,
                    setup: times.setup.as_micros() as u64,
                    downtime: downtime.as_micros() as u64,
                };
                let bytes = protocol::send_control(requests, &message)?;
                serving.add_bytes(bytes);
            }
            protocol::Serving::Done => return Ok(()),
        }
    }
}

/// Sends every page not sent yet, from the last requested page on, until all are sent or
/// `stop` is set (the destination is done, or the connections broke).
fn stream_pages(
    serving: &Serving,
    mut stream: BufWriter<TcpStream>,
    stop: &AtomicBool,
) -> Result<(), LinkError> {
    let mut cursor = 0;
    let mut batch = Vec::with_capacity(BATCH_PAGES);
    while !stop.load(Ordering::SeqCst) {
        let after_request = serving.next_after_request.swap(u64::MAX, Ordering::Relaxed);
        if after_request != u64::MAX {
            cursor = after_request;
        }
        batch.clear();
        while batch.len() < BATCH_PAGES {
            let Some(page) = serving.sent.next_clear(cursor) else {
                break;
            };
            cursor = page + 1;
            if serving.sent.set(page) {
                serving.count_send(page);
                batch.push(page);
            }
        }
        if batch.is_empty() {
            let bytes = protocol::send_control(&mut stream, &Control::StreamEnd)?;
            serving.add_bytes(bytes);
            protocol::flush(&mut stream, "sending the stream")?;
            return Ok(());
        }
        serving.send(&mut stream, &batch)?;
        serving
            .streamed
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        // A batch goes out at once, so that requests never wait behind a full buffer.
        protocol::flush(&mut stream, "sending the stream")?;
    }
    Ok(())
}
