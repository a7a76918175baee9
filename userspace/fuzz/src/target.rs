//! The object of the current round as every thread (and signal handler) of a process sees
//! it, and the logged loads that change its pages.
//!
//! Signal mode's handler must find the object, its mappings and the log without taking a
//! lock or allocating, so they live in atomics: the process-wide main mapping, and each
//! thread's own extra mappings (only the thread that owns an extra mapping touches it, so
//! only its own handler ever sees an address in it).

use std::{
    cell::Cell,
    os::fd::RawFd,
    sync::atomic::{
        AtomicI32, AtomicPtr, AtomicUsize,
        Ordering::{Relaxed, SeqCst},
    },
};

use crate::{
    abi::{self, muserload_load, muserload_loadv, muserload_vec, MUSERLOAD_SI_CODE},
    shared::{fill, Kind, Shared, PAGE},
};

static FD: AtomicI32 = AtomicI32::new(-1);
static GUEST: AtomicUsize = AtomicUsize::new(0);
static GUEST_PAGES: AtomicUsize = AtomicUsize::new(0);
static SHARED: AtomicPtr<Shared> = AtomicPtr::new(std::ptr::null_mut());

/// How many extra guest mappings a thread may have at once.
pub const EXTRAS: usize = 4;

thread_local! {
    /// This thread's extra guest mappings: (address, pages, first page), address 0 if free.
    static EXTRA: [Cell<(usize, usize, usize)>; EXTRAS] =
        const { [const { Cell::new((0, 0, 0)) }; EXTRAS] };
}

/// Sets the round's object for this process and its future children.
pub fn set(shared: &'static Shared, fd: RawFd, guest: usize, pages: usize) {
    SHARED.store(std::ptr::from_ref(shared).cast_mut(), SeqCst);
    FD.store(fd, SeqCst);
    GUEST.store(guest, SeqCst);
    GUEST_PAGES.store(pages, SeqCst);
}

/// Records this thread's extra guest mapping number `slot` (pages 0: none).
pub fn set_extra(slot: usize, addr: usize, pages: usize, first_page: usize) {
    EXTRA.with(|e| e[slot].set((if pages == 0 { 0 } else { addr }, pages, first_page)));
}

/// The guest page that `addr` is in, through the main mapping or one of this thread's
/// extra mappings.
fn page_of(addr: usize) -> Option<usize> {
    let guest = GUEST.load(Relaxed);
    let pages = GUEST_PAGES.load(Relaxed);
    if addr >= guest && addr < guest + pages * PAGE {
        return Some((addr - guest) / PAGE);
    }
    EXTRA.with(|e| {
        e.iter().find_map(|c| {
            let (start, n, first) = c.get();
            (start != 0 && addr >= start && addr < start + n * PAGE)
                .then(|| first + (addr - start) / PAGE)
        })
    })
}

/// How a logged load went.
pub struct Outcome {
    /// Pages loaded before the call stopped.
    pub pages: usize,
    /// Ok, or the errno it stopped with.
    pub result: Result<(), i32>,
}

/// One `(guest page, destination address, source address)` of a logged load.
#[derive(Clone, Copy)]
pub struct Piece {
    /// The guest page loaded.
    pub page: usize,
    /// Its address in the mapping the load names.
    pub dst: usize,
    /// MOVE: the staging page's address; COPY: the source page's; otherwise 0.
    pub src: usize,
    /// The tag of the content it brings (0: zeros).
    pub tag: u64,
}

/// The pairs of a vectored load of `pieces`, one page each.
pub fn vector(pieces: &[Piece]) -> Vec<muserload_vec> {
    pieces
        .iter()
        .map(|p| muserload_vec {
            dst: p.dst as u64,
            src: p.src as u64,
            len: PAGE as u64,
        })
        .collect()
}

/// Logs every page of `pieces` before `call` and its fate after it. `call` loads them, one
/// page each, in order, and returns the bytes it loaded before it stopped and how it ended.
/// None if the log is full (`call` is not made then).
///
/// Async-signal-safe if `call` is.
pub fn logged(
    shared: &Shared,
    pieces: &[Piece],
    call: impl FnOnce() -> (u64, Result<(), i32>),
) -> Option<Outcome> {
    let first = shared.reserve(pieces.len())?;
    let before = shared.seq();
    for (i, p) in pieces.iter().enumerate() {
        shared.write_piece(
            first + i,
            Kind::LoadAttempt,
            p.page,
            1,
            p.tag,
            before,
            i,
            pieces.len(),
        );
    }
    let (loaded, result) = call();
    let after = shared.seq();
    let pages = (loaded as usize / PAGE).min(pieces.len());
    for i in 0..pieces.len() {
        let kind = if i < pages {
            Kind::Loaded
        } else {
            Kind::NotLoaded
        };
        shared.complete_errno(first + i, kind, after, result.err().unwrap_or(0));
    }
    Some(Outcome { pages, result })
}

/// Loads `pieces` (one page each, in order) with `mode` in one call: a ranged
/// `MUSERLOAD_IOC_LOAD` if `ranged` (the pieces are then consecutive in both the
/// destination and the source), a `MUSERLOAD_IOC_LOADV` otherwise, [`logged`].
///
/// Async-signal-safe for one piece (the signal handler's load): no allocation then.
pub fn load_logged(
    fd: RawFd,
    shared: &Shared,
    pieces: &[Piece],
    mode: u64,
    ranged: bool,
) -> Option<Outcome> {
    logged(shared, pieces, || {
        if ranged {
            let mut load = muserload_load {
                dst: pieces[0].dst as u64,
                src: pieces[0].src as u64,
                len: (pieces.len() * PAGE) as u64,
                mode,
                loaded: 0,
            };
            let result = abi::load(fd, &mut load);
            (load.loaded, result)
        } else {
            let vec = vector(pieces);
            let mut loadv = muserload_loadv {
                vec: vec.as_ptr() as u64,
                count: vec.len() as u64,
                mode,
                loaded: 0,
            };
            let result = abi::loadv(fd, &mut loadv);
            (loadv.loaded, result)
        }
    })
}

/// Signal mode's handler: loads the faulting page (COPY of a new tag) and returns, so
/// that the access is retried.
extern "C" fn on_fault_signal(
    _signal: i32,
    info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    // SAFETY: errno is this thread's; the handler restores it, since it may have
    // interrupted code between a failed call and its read of errno.
    let saved_errno = unsafe { *libc::__errno_location() };
    // SAFETY: The kernel passes a valid siginfo to an SA_SIGINFO handler.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    let shared = SHARED.load(Relaxed);
    let context = crate::shared::set_context(0);
    crate::shared::set_context(context | crate::shared::context::HANDLER);
    if code == MUSERLOAD_SI_CODE as i32 && !shared.is_null() {
        // SAFETY: `SHARED` points at the run's shared state, which is never unmapped.
        let shared = unsafe { &*shared };
        let dst = addr & !(PAGE - 1);
        if let Some(page) = page_of(dst) {
            let tag = shared.tags(1);
            let mut buf = [0u64; PAGE / 8];
            fill(&mut buf, tag);
            let piece = Piece {
                page,
                dst,
                src: buf.as_ptr() as usize,
                tag,
            };
            let _ = load_logged(
                FD.load(Relaxed),
                shared,
                &[piece],
                u64::from(abi::MUSERLOAD_LOAD_COPY),
                true,
            );
        }
    }
    crate::shared::set_context(context);
    // SAFETY: As above.
    unsafe { *libc::__errno_location() = saved_errno };
}

/// Installs the handler for `signals`.
pub fn install_handler(signals: &[i32]) -> Result<(), i32> {
    for &signal in signals {
        // SAFETY: An all-zero `sigaction` is valid; the fields set are the handler and
        // its flags, and the mask is emptied by `sigemptyset`.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        let handler: extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void) = on_fault_signal;
        action.sa_sigaction = handler as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        // SAFETY: `sa_mask` is a valid signal set.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: The handler is async-signal-safe (it allocates nothing: one piece) and
        // stays valid for the life of the process.
        if unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) } != 0 {
            return Err(abi::errno());
        }
    }
    Ok(())
}
