//! Post-copy over a network that fails: a proxy between the loaders cuts every connection
//! mid-post-copy. After a short outage the source reconnects and the migration goes on,
//! the guest's checks passing; if the source dies instead, the destination stops the
//! guest with one clear error rather than waiting forever. They run in the test VM.

mod common;

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    process::Child,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use common::{
    assert_clocks_kept, check_reports, json, migrate_retrying_nested_deaths, scratch, start_source,
    u, Destination, Guest,
};

/// Bytes from the source after which the proxy cuts: the machine state and the maps are
/// some tens of KiB, the guest's pages some tens of MiB, so this is mid-post-copy.
const CUT_AFTER: u64 = 16 << 20;

/// A TCP proxy from the source to the destination that cuts every connection once
/// [`CUT_AFTER`] bytes went through, then refuses connections for `outage`, as a network
/// that fails and comes back would.
struct Proxy {
    addr: String,
    state: Arc<ProxyState>,
}

struct ProxyState {
    target: String,
    outage: Duration,
    /// Bytes forwarded from the source.
    forwarded: AtomicU64,
    /// When it cut.
    cut: Mutex<Option<Instant>>,
    /// Every connection's two sockets, to cut them.
    sockets: Mutex<Vec<TcpStream>>,
}

impl Proxy {
    fn start(target: &str, outage: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listening");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let state = Arc::new(ProxyState {
            target: target.to_owned(),
            outage,
            forwarded: AtomicU64::new(0),
            cut: Mutex::new(None),
            sockets: Mutex::new(Vec::new()),
        });
        let accepting = state.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let cut = *accepting.cut.lock().expect("cut");
                if cut.is_some_and(|at| at.elapsed() < accepting.outage) {
                    // Down: the connection closes at once.
                    continue;
                }
                accepting.forward(client);
            }
        });
        Self { addr, state }
    }

    /// When it cut the connections, if it has.
    fn cut_at(&self) -> Option<Instant> {
        *self.state.cut.lock().expect("cut")
    }
}

impl ProxyState {
    fn forward(self: &Arc<Self>, client: TcpStream) {
        let Ok(server) = TcpStream::connect(&self.target) else {
            return;
        };
        let clone = |s: &TcpStream| s.try_clone().expect("cloning a socket");
        self.sockets
            .lock()
            .expect("sockets")
            .extend([clone(&client), clone(&server)]);
        let up = self.clone();
        let (client_in, server_out) = (clone(&client), clone(&server));
        thread::spawn(move || up.pump(client_in, server_out, true));
        let down = self.clone();
        thread::spawn(move || down.pump(server, client, false));
    }

    /// Copies `from` to `to` until either closes; counts the source's bytes and cuts
    /// everything once there were enough.
    fn pump(&self, mut from: TcpStream, mut to: TcpStream, from_source: bool) {
        let mut buf = vec![0; 64 << 10];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            if from_source
                && self.forwarded.fetch_add(n as u64, Ordering::SeqCst) + n as u64 >= CUT_AFTER
            {
                self.cut_all();
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    }

    fn cut_all(&self) {
        let mut cut = self.cut.lock().expect("cut");
        if cut.is_some() {
            return;
        }
        *cut = Some(Instant::now());
        for socket in self.sockets.lock().expect("sockets").drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

/// Post-copy of `guest` through a proxy that cuts the connections and is down for two
/// seconds: the source reconnects, the migration completes, the guest finds every page
/// right and its clocks kept.
fn cut_and_recover(name: &str, guest: &Guest, mode: &str) {
    let dir = scratch(name);
    let (src_json, dst_json) = (dir.join("source.json"), dir.join("destination.json"));
    let outage = Duration::from_secs(2);
    let migrated = migrate_retrying_nested_deaths(guest, "post-copy", &src_json, || {
        let destination = Destination::start(&[
            "--mode",
            mode,
            "--report-json",
            dst_json.to_str().expect("path"),
        ]);
        let proxy = Proxy::start(&destination.addr, outage);
        let to = proxy.addr.clone();
        (destination, proxy, to)
    });
    let (destination, proxy) = (&migrated.destination, &migrated.between);
    assert!(proxy.cut_at().is_some(), "the proxy never cut");
    assert!(destination.ok, "the destination failed");
    assert!(
        destination.stderr.contains("the source reconnected"),
        "stderr: {}",
        destination.stderr
    );

    let (src, dst) = (json(&src_json), json(&dst_json));
    check_reports(&src, &dst);
    assert!(u(&src, "recoveries") >= 1);
    assert_eq!(u(&src, "recoveries"), u(&dst, "recoveries"));
    // The guest was waiting for pages at least as long as the network was down.
    assert!(u(&dst, "disconnected_ms") >= outage.as_millis() as u64 - 100);
    // Whatever was in flight came again: every page that is not zero was loaded.
    assert!(u(&src, "pages_requested") + u(&src, "pages_streamed") >= u(&dst, "normal_pages"));
    // The guest may stand still, and its console lag, while it waits for pages: through
    // the downtime and the outage.
    let lag = u(&dst, "downtime_us") + u(&dst, "disconnected_ms") * 1000;
    assert_clocks_kept(
        &migrated.source_console,
        &destination.console,
        Duration::from_micros(lag),
    );
}

#[test]
fn a_network_cut_in_post_copy_is_recovered() {
    cut_and_recover("cut-queue", &Guest::test(), "queue");
}

#[test]
fn a_network_cut_in_post_copy_is_recovered_in_signal_mode() {
    cut_and_recover("cut-signal", &Guest::test(), "signal");
}

#[test]
fn a_network_cut_in_post_copy_of_the_linux_guest_is_recovered() {
    cut_and_recover("cut-linux", &Guest::linux(), "queue");
}

/// Kills `child` at once.
fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn the_source_killed_in_post_copy_stops_the_destination_cleanly() {
    let dir = scratch("source-killed");
    let destination = Destination::start(&["--recover-timeout", "3"]);
    // Down for good: nothing reconnects.
    let proxy = Proxy::start(&destination.addr, Duration::MAX);
    let mut source = start_source(
        &Guest::test(),
        "post-copy",
        &proxy.addr,
        &dir.join("source.json"),
    );
    while proxy.cut_at().is_none() {
        assert!(
            source.try_wait().expect("the source").is_none(),
            "the source exited before the cut"
        );
        thread::sleep(Duration::from_millis(20));
    }
    kill(&mut source);
    let killed = Instant::now();
    let (ok, stderr) = destination.finish();
    assert!(!ok, "the destination succeeded without its pages");
    // It gave up after its timeout, not much later.
    assert!(killed.elapsed() < Duration::from_secs(60));
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("muserload-loader: error: the connection to the source broke")
            && last.contains("did not reconnect within 3s")
            && last.contains("the guest")
            && last.contains("was stopped"),
        "stderr: {stderr}"
    );
}
