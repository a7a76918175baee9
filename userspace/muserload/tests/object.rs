//! The crate against the module. Runs in the guest, where `/dev/muserload` exists.

use std::{sync::OnceLock, thread, time::Duration};

use muserload::{
    features, signal, Error, Event, FaultMode, GuestMemory, Loads, Object, Staging, Wake, PAGE_SIZE,
};
use nix::{errno::Errno, sys::signal::Signal};

const ALL: u64 = features::SIGNAL
    | features::QUEUE
    | features::MOVE
    | features::LOADV
    | features::STATS
    | features::RESOLVE;
const PAGE: u64 = PAGE_SIZE as u64;

fn object(pages: u64, staging_pages: u64) -> Object {
    Object::create(pages * PAGE, staging_pages * PAGE, ALL).expect("create")
}

/// An object of `pages` guest pages, all armed in queue mode, and `staging_pages` of
/// staging, both mapped.
fn armed_with_staging(pages: u64, staging_pages: u64) -> (Object, GuestMemory, Staging) {
    let object = object(pages, staging_pages);
    let guest = object.map_guest().expect("map");
    let staging = object.map_staging().expect("map staging");
    object
        .arm(&guest, 0, pages * PAGE, FaultMode::Queue)
        .expect("arm");
    (object, guest, staging)
}

fn pattern(seed: u64) -> Vec<u8> {
    (0..PAGE_SIZE)
        .map(|i| (seed as usize * 31 + i) as u8)
        .collect()
}

fn page_at(guest: &GuestMemory, offset: u64) -> Vec<u8> {
    let mut buf = vec![0; PAGE_SIZE];
    guest.read(offset, &mut buf).expect("guest read");
    buf
}

#[test]
fn handshake_reports_every_feature() {
    assert_eq!(object(1, 0).features(), ALL);
}

#[test]
fn unknown_feature_is_refused() {
    match Object::create(PAGE, 0, 1 << 63) {
        Err(Error::Features { missing, supported }) => {
            assert_eq!(missing, 1 << 63);
            assert_eq!(supported, ALL);
        }
        other => panic!("expected Error::Features, got {other:?}"),
    }
}

#[test]
fn missing_device_names_the_path() {
    let err = Object::create_at("/nonexistent/muserload", PAGE, 0, 0).expect_err("no device");
    assert!(matches!(err, Error::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/muserload"), "{err}");
}

#[test]
fn bad_setup_carries_the_errno() {
    let err = Object::create(PAGE + 1, 0, 0).expect_err("unaligned size");
    assert_eq!(err.errno(), Some(Errno::EINVAL), "{err}");
}

#[test]
fn ranges_are_checked_before_the_kernel() {
    let object = object(4, 1);
    let guest = object.map_guest().expect("map");
    let err = object
        .arm(&guest, 0, 5 * PAGE, FaultMode::Queue)
        .expect_err("past the mapping");
    assert!(matches!(err, Error::Range { .. }), "{err:?}");
    let err = object
        .arm(&guest, 0, PAGE, FaultMode::Signal(Signal::SIGKILL as i32))
        .expect_err("SIGKILL");
    assert_eq!(err.errno(), Some(Errno::EINVAL));
}

#[test]
fn queue_mode_round_trip() {
    let object = object(8, 0);
    let guest = object.map_guest().expect("map");
    object
        .arm(&guest, 0, 8 * PAGE, FaultMode::Queue)
        .expect("arm");
    let events = object.events(false).expect("events");
    let data = pattern(5);
    thread::scope(|s| {
        let reader = s.spawn(|| page_at(&guest, 5 * PAGE));
        let mut batch = [Event::default(); 4];
        assert_eq!(events.read(&mut batch).expect("read"), 1);
        assert_eq!(batch[0].offset, 5 * PAGE);
        assert_eq!(batch[0].address, guest.as_ptr() as u64 + 5 * PAGE);
        assert!(!batch[0].write);
        assert_eq!(
            object
                .load_copy(&guest, 5 * PAGE, &data, Wake::Now)
                .expect("load"),
            PAGE
        );
        assert_eq!(reader.join().expect("reader"), data);
    });
    let stats = object.stats().expect("stats");
    assert_eq!(stats.faults_queue_user, 1);
    assert_eq!(stats.loads_copy, 1);
    assert_eq!(stats.unloaded, 7);
}

#[test]
fn resolve_moves_then_reads_the_next_event() {
    let (object, guest, mut staging) = armed_with_staging(8, 2);
    let _events = object.events(false).expect("events");
    let mut batch = [Event::default(); 4];
    // Copies `data` to `offset` and reads the events already queued, without waiting.
    let copy_then_poll = |offset: u64, data: &[u8], batch: &mut [Event]| {
        object.resolve(
            &guest,
            Loads::Copy(&[(offset, data)]),
            Wake::Now,
            batch,
            false,
        )
    };
    thread::scope(|s| {
        let first = s.spawn(|| page_at(&guest, 2 * PAGE));
        let n = object
            .resolve(&guest, Loads::Nothing, Wake::Now, &mut batch, true)
            .expect("first event");
        assert_eq!((n, batch[0].offset), (1, 2 * PAGE));
        let second = s.spawn(|| page_at(&guest, 6 * PAGE));
        staging
            .slot_mut(0)
            .expect("slot")
            .copy_from_slice(&pattern(2));
        // Moves page 2 in, then waits for page 6's event.
        let loads = Loads::Move(&mut staging, &[(2 * PAGE, 0)]);
        let n = object
            .resolve(&guest, loads, Wake::Now, &mut batch, true)
            .expect("load and next event");
        assert_eq!((n, batch[0].offset), (1, 6 * PAGE));
        assert_eq!(first.join().expect("first"), pattern(2));
        let n = copy_then_poll(6 * PAGE, &pattern(6), &mut batch).expect("last load");
        assert_eq!(n, 0);
        assert_eq!(second.join().expect("second"), pattern(6));
    });
    // A load past guest memory fails before the kernel; a refused one says how far it got.
    let data = pattern(1);
    let err = copy_then_poll(8 * PAGE, &data, &mut batch).expect_err("past the mapping");
    assert!(matches!(err, Error::Range { .. }), "{err:?}");
    match copy_then_poll(2 * PAGE, &data, &mut batch) {
        Err(Error::Load { errno, loaded, .. }) => assert_eq!((errno, loaded), (Errno::EEXIST, 0)),
        other => panic!("expected EEXIST, got {other:?}"),
    }
}

#[test]
fn move_from_staging_and_eexist() {
    let (object, guest, mut staging) = armed_with_staging(8, 4);
    staging
        .slots_mut(0, 2)
        .expect("slots")
        .copy_from_slice(&[pattern(1), pattern(2)].concat());
    assert_eq!(
        object
            .load_move(&guest, 0, &mut staging, 0, 2, Wake::Now)
            .expect("move"),
        2 * PAGE
    );
    assert_eq!(page_at(&guest, 0), pattern(1));
    assert_eq!(page_at(&guest, PAGE), pattern(2));
    assert!(staging.slot_mut(0).expect("slot").iter().all(|&b| b == 0));

    staging
        .slot_mut(3)
        .expect("slot")
        .copy_from_slice(&pattern(9));
    match object.load_move(&guest, PAGE, &mut staging, 3, 1, Wake::Now) {
        Err(Error::Load { errno, loaded, .. }) => {
            assert_eq!(errno, Errno::EEXIST);
            assert_eq!(loaded, 0);
        }
        other => panic!("expected EEXIST, got {other:?}"),
    }
    // The refused slot keeps its page.
    assert_eq!(staging.slot_mut(3).expect("slot").to_vec(), pattern(9));
    assert_eq!(object.stats().expect("stats").eexist, 1);
}

#[test]
fn vectored_move() {
    let (object, guest, mut staging) = armed_with_staging(16, 4);
    for slot in 0..4 {
        staging
            .slot_mut(slot)
            .expect("slot")
            .copy_from_slice(&pattern(slot as u64 + 10));
    }
    let pairs = [(12 * PAGE, 0), (3 * PAGE, 1), (7 * PAGE, 2), (0, 3)];
    assert_eq!(
        object
            .load_move_vectored(&guest, &mut staging, &pairs, Wake::Now)
            .expect("loadv"),
        4 * PAGE
    );
    for (offset, slot) in pairs {
        assert_eq!(page_at(&guest, offset), pattern(slot as u64 + 10));
    }
}

#[test]
fn zero_later_then_wake() {
    let object = object(4, 0);
    let guest = object.map_guest().expect("map");
    object
        .arm(&guest, 0, 4 * PAGE, FaultMode::Queue)
        .expect("arm");
    thread::scope(|s| {
        let reader = s.spawn(|| page_at(&guest, 2 * PAGE));
        while object.stats().expect("stats").waiters == 0 {
            thread::sleep(Duration::from_millis(5));
        }
        object
            .load_zero(&guest, 2 * PAGE, PAGE, Wake::Later)
            .expect("zero");
        assert_eq!(object.wake(&guest, 2 * PAGE, PAGE).expect("wake"), PAGE);
        assert!(reader.join().expect("reader").iter().all(|&b| b == 0));
    });
}

/// The object and mapping the signal callback loads into.
static SIGNALLED: OnceLock<(Object, GuestMemory)> = OnceLock::new();

fn load_faulting_page(address: u64) {
    if let Some((object, guest)) = SIGNALLED.get() {
        let offset = (address - guest.as_ptr() as u64) & !(PAGE - 1);
        let _ = object.load_zero(guest, offset, PAGE, Wake::Now);
    }
}

#[test]
fn signal_mode_callback_loads() {
    let object = object(4, 0);
    let guest = object.map_guest().expect("map");
    object
        .arm(
            &guest,
            0,
            4 * PAGE,
            FaultMode::Signal(Signal::SIGUSR2 as i32),
        )
        .expect("arm");
    let (object, guest) = SIGNALLED.get_or_init(|| (object, guest));
    signal::install(Signal::SIGUSR2, load_faulting_page).expect("install");
    guest.write(3 * PAGE + 8, &[7]).expect("write");
    assert_eq!(page_at(guest, 3 * PAGE)[8], 7);
    let stats = object.stats().expect("stats");
    assert_eq!(stats.faults_signal_user, 1);
    assert_eq!(stats.loads_zero, 1);
}
