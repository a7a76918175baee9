//! Thin wrappers of the system calls the fuzzer makes, returning the errno on failure.
//!
//! Addresses are plain `usize`s: the fuzzer maps, unmaps and moves object memory behind
//! the back of any Rust reference, so none is ever made to it.

use std::{
    ffi::CStr,
    io,
    os::{fd::RawFd, unix::thread::RawPthread},
    ptr::NonNull,
};

use crate::abi::errno;

/// `Ok(value)` for a non-negative return value, the errno otherwise.
fn check<T: Copy + Default + PartialOrd>(ret: T) -> Result<T, i32> {
    if ret < T::default() {
        Err(errno())
    } else {
        Ok(ret)
    }
}

/// A zeroed shared anonymous mapping of `len` bytes, shared with forked children.
pub fn map_shared_anonymous(len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: A new mapping at an address the kernel picks overlaps nothing.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(ptr.cast()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
}

/// `mmap(NULL, len, prot, flags, fd, offset)`: the address, or the errno.
pub fn mmap(len: usize, prot: i32, flags: i32, fd: RawFd, offset: u64) -> Result<usize, i32> {
    // SAFETY: Without MAP_FIXED the kernel picks an address that overlaps nothing.
    let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, offset as i64) };
    if ptr == libc::MAP_FAILED {
        Err(errno())
    } else {
        Ok(ptr as usize)
    }
}

/// `munmap(addr, len)`.
///
/// # Safety
///
/// Nothing may use `[addr, addr + len)` afterwards as the memory it was.
pub unsafe fn munmap(addr: usize, len: usize) -> Result<(), i32> {
    // SAFETY: The caller vouches for the range.
    check(unsafe { libc::munmap(addr as *mut _, len) }).map(drop)
}

/// `mprotect(addr, len, prot)`.
pub fn mprotect(addr: usize, len: usize, prot: i32) -> Result<(), i32> {
    // SAFETY: Changing protections never invalidates memory; the callers touch object
    // memory only through raw accesses that expect the protections they set.
    check(unsafe { libc::mprotect(addr as *mut _, len, prot) }).map(drop)
}

/// `mremap(addr, old, new, flags, to)`: the new address, or the errno.
///
/// # Safety
///
/// Nothing may use the old range afterwards, nor the range at `to` (with `MREMAP_FIXED`)
/// as what it was.
pub unsafe fn mremap(
    addr: usize,
    old: usize,
    new: usize,
    flags: i32,
    to: usize,
) -> Result<usize, i32> {
    // SAFETY: The caller vouches for both ranges.
    let ptr = unsafe { libc::mremap(addr as *mut _, old, new, flags, to as *mut libc::c_void) };
    if ptr == libc::MAP_FAILED {
        Err(errno())
    } else {
        Ok(ptr as usize)
    }
}

/// Opens `path` read-write, close-on-exec.
pub fn open(path: &CStr) -> Result<RawFd, i32> {
    // SAFETY: `path` is a valid C string.
    check(unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })
}

/// `close(fd)`; the callers own `fd`.
pub fn close(fd: RawFd) {
    // SAFETY: The callers close descriptors they own, once.
    unsafe { libc::close(fd) };
}

/// `dup(fd)`.
pub fn dup(fd: RawFd) -> Result<RawFd, i32> {
    // SAFETY: Duplicating a descriptor touches no memory.
    check(unsafe { libc::dup(fd) })
}

/// A pipe: (read end, write end), non-blocking.
pub fn pipe() -> Result<(RawFd, RawFd), i32> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    Ok((fds[0], fds[1]))
}

/// `write(fd, addr, len)`: the kernel reads user memory at `addr` (a kernel-mode access).
pub fn write_from(fd: RawFd, addr: usize, len: usize) -> Result<usize, i32> {
    // SAFETY: The kernel only reads `[addr, addr + len)`, and fails with EFAULT if it is not
    // readable.
    check(unsafe { libc::write(fd, addr as *const libc::c_void, len) }).map(|n| n as usize)
}

/// `read(fd, buf)`.
pub fn read(fd: RawFd, buf: &mut [u8]) -> Result<usize, i32> {
    // SAFETY: `buf` is writable for its length.
    check(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }).map(|n| n as usize)
}

/// `FUTEX_WAKE_OP` adding 0 to the word at `addr`: a kernel-mode write that changes
/// nothing, from a path that cannot wait for a fault (`fixup_user_fault()` without retry).
pub fn futex_add_zero(addr: usize) -> Result<i64, i32> {
    const FUTEX_OP_ADD: u32 = 1;
    const FUTEX_OP_CMP_EQ: u32 = 0;
    let op = (FUTEX_OP_ADD << 28) | (FUTEX_OP_CMP_EQ << 24);
    // SAFETY: The kernel adds 0 to the aligned word at `addr` if it is writable, and fails
    // with EFAULT otherwise; nothing changes either way.
    check(unsafe {
        libc::syscall(
            libc::SYS_futex,
            addr,
            libc::FUTEX_WAKE_OP | libc::FUTEX_PRIVATE_FLAG,
            0,
            0,
            addr,
            op,
        )
    })
}

/// `poll()` of one descriptor for `events`, waiting `timeout_ms`.
pub fn poll(fd: RawFd, events: i16, timeout_ms: i32) -> Result<i16, i32> {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid `struct pollfd`.
    check(unsafe { libc::poll(&mut pfd, 1, timeout_ms) })?;
    Ok(pfd.revents)
}

/// `fork()`: 0 in the child.
///
/// # Safety
///
/// In a multithreaded process the child may only make async-signal-safe calls until it
/// exits with [`exit_now`].
pub unsafe fn fork() -> Result<i32, i32> {
    // SAFETY: The caller restricts the child as required.
    check(unsafe { libc::fork() })
}

/// Ends the process at once, running nothing of its Rust state (a forked child's).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` is always safe to call.
    unsafe { libc::_exit(code) }
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

/// Makes this process the reaper of its descendants' orphans.
pub fn become_subreaper() -> Result<(), i32> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes a flag and touches no memory.
    check(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) }).map(drop)
}

/// Waits for child `pid` (-1: any child); None with `nohang` if it is still running.
pub fn wait(pid: i32, nohang: bool) -> Result<Option<Exit>, i32> {
    let mut status = 0;
    let flags = if nohang { libc::WNOHANG } else { 0 };
    loop {
        // SAFETY: `status` is writable.
        match check(unsafe { libc::waitpid(pid, &mut status, flags) }) {
            Ok(0) => return Ok(None),
            Ok(_) => break,
            Err(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(Some(if libc::WIFSIGNALED(status) {
        Exit::Signal(libc::WTERMSIG(status))
    } else {
        Exit::Code(libc::WEXITSTATUS(status))
    }))
}

/// Sends `signal` to process `pid`.
pub fn kill(pid: i32, signal: i32) {
    // SAFETY: Sending a signal touches no memory of ours.
    unsafe { libc::kill(pid, signal) };
}

/// Has `signal` interrupt this process's blocking calls: a handler that does nothing,
/// without `SA_RESTART`, so that a call it comes in returns EINTR (or its partial result).
pub fn interrupt_with(signal: i32) -> Result<(), i32> {
    extern "C" fn nothing(_signal: i32) {}
    // SAFETY: An all-zero `sigaction` is valid: an empty mask, no flags; the handler is set
    // below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    let handler: extern "C" fn(i32) = nothing;
    action.sa_sigaction = handler as usize;
    // SAFETY: The handler does nothing, so it is async-signal-safe, and it is static.
    check(unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) }).map(drop)
}

/// Sends `signal` to thread `thread` of this process.
///
/// # Safety
///
/// `thread` must be a thread that was not joined or detached yet.
pub unsafe fn signal_thread(thread: RawPthread, signal: i32) {
    // SAFETY: The caller vouches that `thread` is still a valid handle (std's type for it is
    // an integer, the libc crate's a pointer with musl).
    unsafe { libc::pthread_kill(thread as _, signal) };
}

/// Sleeps `us` microseconds.
pub fn sleep_us(us: u64) {
    std::thread::sleep(std::time::Duration::from_micros(us));
}

/// Reads the word at `addr` (a user-mode load).
///
/// # Safety
///
/// `addr` must be an aligned address of object memory mapped readable; the access may
/// fault, wait, raise a signal or kill the process with SIGBUS, as the ABI says.
pub unsafe fn touch_read(addr: usize) -> u64 {
    // SAFETY: The caller vouches for the address.
    unsafe { (addr as *const u64).read_volatile() }
}

/// An atomic add of 0 to the word at `addr` (a user-mode store that changes nothing, so
/// that it never races with the shadow model).
///
/// # Safety
///
/// As for [`touch_read`], mapped writable.
pub unsafe fn touch_write(addr: usize) {
    // SAFETY: The caller vouches for the address; an `AtomicU64` may alias memory that
    // others write, since every access to it is atomic or volatile.
    unsafe {
        (*(addr as *const std::sync::atomic::AtomicU64))
            .fetch_add(0, std::sync::atomic::Ordering::Relaxed)
    };
}
