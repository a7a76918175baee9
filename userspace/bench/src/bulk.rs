//! Bulk loads in 64-page calls (what a background stream does), and the baselines.

use std::time::{Duration, Instant};

use muserload::{features, FaultMode, Object, Wake, PAGE_SIZE};

use crate::{
    anon::Anon,
    pattern,
    profile::Window,
    report::{Measurement, Work},
    uffd::{self, Userfaultfd},
    Error, Result,
};

/// Pages per call.
const BATCH: usize = 64;

/// What the loads put in the pages.
#[derive(Clone, Copy)]
pub enum Kind {
    /// Write into staging, then move zero-copy (`MOVE`, `UFFDIO_MOVE`); the writes count.
    Move,
    /// Copy from a buffer (`COPY`, `UFFDIO_COPY`).
    Copy,
    /// Receive into a buffer (a copy, as `recv()` makes), then copy from it: what a loader
    /// without zero-copy does; compare with `Move`, whose receive lands in staging.
    RecvCopy,
    /// Zero pages (`ZERO`, `UFFDIO_ZEROPAGE`).
    Zero,
}

impl Kind {
    /// The counted work per page, the same for both implementations.
    fn work(self) -> Work {
        match self {
            // The staging writes, the staging refault, one TLB flush per batch.
            Self::Move => Work::new(1.0, 1.0, 1.0 / BATCH as f32),
            Self::Copy => Work::new(1.0, 0.0, 0.0),
            Self::RecvCopy => Work::new(2.0, 0.0, 0.0),
            // muserload marks the page loaded and zero-fills it at the guest's first touch;
            // userfaultfd maps the shared zero page and copies it at the first write.
            Self::Zero => Work::new(0.0, 0.0, 0.0),
        }
    }

    fn case(self) -> &'static str {
        match self {
            Self::Move => "bulk move+writes x64",
            Self::Copy => "bulk copy x64",
            Self::RecvCopy => "bulk recv+copy x64",
            Self::Zero => "bulk zero x64",
        }
    }
}

fn verify(kind: Kind, implementation: &'static str, base: *const u8, pages: usize) -> Result<()> {
    for page in 0..pages {
        // SAFETY: The page lies in the caller's loaded mapping.
        if !unsafe { pattern::check(base.add(page * PAGE_SIZE), page, matches!(kind, Kind::Zero)) }
        {
            return Err(Error::Mismatch {
                case: kind.case(),
                implementation,
                page,
            });
        }
    }
    Ok(())
}

/// Times `batches` calls of `step(batch)`.
fn timed(
    batches: usize,
    mut step: impl FnMut(usize) -> Result<()>,
) -> Result<(Vec<Duration>, Duration)> {
    let window = Window::open()?;
    let samples = (0..batches)
        .map(|b| {
            let t = Instant::now();
            step(b).map(|()| t.elapsed())
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((samples, window.close()?))
}

/// muserload loads of `pages` pages into an armed object.
pub fn muserload(pages: usize, kind: Kind) -> Result<Measurement> {
    let source = pattern::source(pages);
    let object = Object::create(
        (pages * PAGE_SIZE) as u64,
        (BATCH * PAGE_SIZE) as u64,
        features::MOVE,
    )?;
    let guest = object.map_guest()?;
    let mut staging = object.map_staging()?;
    object.arm(&guest, 0, guest.len() as u64, FaultMode::Queue)?;
    let bytes = BATCH * PAGE_SIZE;
    let mut received = vec![0u8; bytes];
    let (samples, total) = timed(pages / BATCH, |b| {
        let offset = (b * bytes) as u64;
        let data = &source[b * bytes..(b + 1) * bytes];
        match kind {
            Kind::Move => {
                staging.slots_mut(0, BATCH)?.copy_from_slice(data);
                object.load_move(&guest, offset, &mut staging, 0, BATCH, Wake::Now)?
            }
            Kind::Copy => object.load_copy(&guest, offset, data, Wake::Now)?,
            Kind::RecvCopy => {
                received.copy_from_slice(data);
                object.load_copy(&guest, offset, &received, Wake::Now)?
            }
            Kind::Zero => object.load_zero(&guest, offset, bytes as u64, Wake::Now)?,
        };
        Ok(())
    })?;
    verify(kind, "muserload", guest.as_ptr(), pages)?;
    Ok(Measurement::new(
        kind.case(),
        "muserload",
        "cpu0",
        samples,
        BATCH,
        total,
        kind.work(),
    ))
}

/// userfaultfd loads of `pages` pages into a registered anonymous region.
pub fn uffd(pages: usize, kind: Kind) -> Result<Measurement> {
    let source = pattern::source(pages);
    let region = Anon::new(pages * PAGE_SIZE)?;
    let staging = Anon::new(BATCH * PAGE_SIZE)?;
    let uffd = Userfaultfd::new(uffd::FEATURE_MOVE)?;
    uffd.register(region.addr(0), (pages * PAGE_SIZE) as u64)?;
    let bytes = BATCH * PAGE_SIZE;
    let mut received = vec![0u8; bytes];
    let (samples, total) = timed(pages / BATCH, |b| {
        let dst = region.addr(b * bytes);
        let data = &source[b * bytes..(b + 1) * bytes];
        match kind {
            Kind::Move => {
                // SAFETY: `staging` is `bytes` long and only this thread uses it.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), staging.as_ptr(), bytes) };
                uffd.move_pages(dst, staging.addr(0), bytes as u64)
            }
            Kind::Copy => uffd.copy(dst, data.as_ptr() as u64, bytes as u64),
            Kind::RecvCopy => {
                received.copy_from_slice(data);
                uffd.copy(dst, received.as_ptr() as u64, bytes as u64)
            }
            Kind::Zero => uffd.zeropage(dst, bytes as u64),
        }
    })?;
    verify(kind, "userfaultfd", region.as_ptr(), pages)?;
    Ok(Measurement::new(
        kind.case(),
        "userfaultfd",
        "cpu0",
        samples,
        BATCH,
        total,
        kind.work(),
    ))
}

/// Baseline: the first touch of anonymous memory (allocate, zero, map).
pub fn first_touch(pages: usize) -> Result<Measurement> {
    let region = Anon::new(pages * PAGE_SIZE)?;
    let (samples, total) = timed(pages, |page| {
        // SAFETY: The page lies in `region`.
        unsafe { std::ptr::write_volatile(region.as_ptr().add(page * PAGE_SIZE), 1) };
        Ok(())
    })?;
    let work = Work::new(0.0, 1.0, 0.0);
    Ok(Measurement::new(
        "first touch (anon)",
        "baseline",
        "cpu0",
        samples,
        1,
        total,
        work,
    ))
}

/// Baseline: one 4 KiB memcpy between resident buffers.
pub fn memcpy_4k(pages: usize) -> Result<Measurement> {
    let source = pattern::source(pages);
    let mut dest = vec![0u8; PAGE_SIZE];
    let (samples, total) = timed(pages, |page| {
        dest.copy_from_slice(&source[page * PAGE_SIZE..(page + 1) * PAGE_SIZE]);
        std::hint::black_box(&dest);
        Ok(())
    })?;
    let work = Work::new(1.0, 0.0, 0.0);
    Ok(Measurement::new(
        "memcpy 4 KiB",
        "baseline",
        "cpu0",
        samples,
        1,
        total,
        work,
    ))
}
