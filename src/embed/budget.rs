//! Decode-memory budget: how many bytes decoding uploads may hold at once.
//!
//! A small compressed file can claim to decode to gigabytes (a 10 KB lossless WebP of
//! 16383 x 16383 pixels, a FLAC of eight 20-minute channels). Every decoder therefore computes
//! what a file will cost from its header, before any sample or pixel is decoded, and reserves
//! that many bytes here first. Three limits apply to a reservation:
//!
//! - **per decode** ([`DecodeLimits::per_decode`]): one file may not need more; over it the file
//!   is refused as invalid media, whatever else is running;
//! - **per upload** ([`DecodeLimits::per_upload`]): the files of one request that are decoded in
//!   parallel share this; a file that does not fit waits for its siblings to finish, so a large
//!   batch is decoded in as many rounds as it needs instead of all at once;
//! - **per process** ([`DecodeLimits::process`]): every request's decodes share this; a file that
//!   cannot get its bytes within [`DecodeLimits::wait`] fails with [`EmbedError::Busy`] (the API
//!   answers 503 with `Retry-After`), never with an allocation the machine cannot make.
//!
//! This module owns the byte-counting semaphore and the reservations; what a file costs is
//! computed by each modality's preprocessing. It is synchronous (decoding runs on blocking
//! threads) and knows nothing of HTTP.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::EmbedError;

/// One mebibyte, for messages.
const MIB: u64 = 1 << 20;

/// The three limits of decode memory, in bytes, and how long a decode waits for the process's
/// budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    pub per_decode: u64,
    pub per_upload: u64,
    pub process: u64,
    pub wait: Duration,
}

impl Default for DecodeLimits {
    /// The documented defaults: 512 MiB per decode, 1 GiB per upload, 2 GiB per process, 2 s.
    fn default() -> Self {
        Self {
            per_decode: 512 * MIB,
            per_upload: 1024 * MIB,
            process: 2048 * MIB,
            wait: Duration::from_secs(2),
        }
    }
}

impl DecodeLimits {
    /// Checks the limits nest: a decode must fit an upload, an upload the process.
    pub fn validate(&self) -> Result<(), String> {
        if self.per_decode == 0 {
            return Err("the per-decode limit must be positive".into());
        }
        if self.per_upload < self.per_decode || self.process < self.per_upload {
            return Err(format!(
                "decode limits must nest: per decode ({}) <= per upload ({}) <= per process ({})",
                self.per_decode, self.per_upload, self.process
            ));
        }
        Ok(())
    }
}

/// A counting semaphore of bytes (a Mutex and a Condvar: acquisitions are whole files, a few per
/// second, so contention is not a concern).
#[derive(Debug)]
struct ByteSemaphore {
    capacity: u64,
    used: Mutex<u64>,
    freed: Condvar,
}

impl ByteSemaphore {
    fn new(capacity: u64) -> Self {
        Self {
            capacity,
            used: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// Takes `n` bytes, waiting until `deadline` (for ever with `None`); false when it passed
    /// first. `n` above the capacity never succeeds.
    fn acquire(&self, n: u64, deadline: Option<Instant>) -> bool {
        if n > self.capacity {
            return false;
        }
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if self.capacity - *used >= n {
                *used += n;
                return true;
            }
            used = match deadline {
                None => self.freed.wait(used).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    self.freed
                        .wait_timeout(used, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    fn release(&self, n: u64) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        *used = used.saturating_sub(n);
        drop(used);
        self.freed.notify_all();
    }

    fn in_use(&self) -> u64 {
        *self.used.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The process's decode budget: cheap to clone, every clone shares one pool of bytes.
#[derive(Debug, Clone)]
pub struct DecodeBudget {
    limits: DecodeLimits,
    process: Arc<ByteSemaphore>,
}

impl Default for DecodeBudget {
    /// A budget of its own with the default limits (command-line tools, tests).
    fn default() -> Self {
        Self::new(DecodeLimits::default())
    }
}

impl DecodeBudget {
    pub fn new(limits: DecodeLimits) -> Self {
        Self {
            process: Arc::new(ByteSemaphore::new(limits.process)),
            limits,
        }
    }

    pub fn limits(&self) -> &DecodeLimits {
        &self.limits
    }

    /// Bytes reserved by decodes running now.
    pub fn in_use(&self) -> u64 {
        self.process.in_use()
    }

    /// The budget of one upload: its files' reservations share [`DecodeLimits::per_upload`].
    pub fn upload(&self) -> UploadBudget {
        UploadBudget {
            process: self.clone(),
            upload: ByteSemaphore::new(self.limits.per_upload),
        }
    }
}

/// The decode budget of one upload (one batch of files decoded in parallel).
#[derive(Debug)]
pub struct UploadBudget {
    process: DecodeBudget,
    upload: ByteSemaphore,
}

impl Default for UploadBudget {
    /// An upload of a budget of its own with the default limits.
    fn default() -> Self {
        DecodeBudget::default().upload()
    }
}

impl UploadBudget {
    pub fn limits(&self) -> &DecodeLimits {
        &self.process.limits
    }

    /// Reserves `bytes` for decoding `what` (for messages, e.g. `image of 16383x16383
    /// pixels`). More than the per-decode limit is [`EmbedError::InvalidInput`]; a file that
    /// fits waits for the upload's other files, then up to [`DecodeLimits::wait`] for the
    /// process's budget ([`EmbedError::Busy`] after that).
    pub fn reserve(
        &self,
        bytes: u64,
        what: impl fmt::Display,
    ) -> Result<Reservation<'_>, EmbedError> {
        let limits = self.limits();
        if bytes > limits.per_decode {
            return Err(over_limit(bytes, limits.per_decode, what));
        }
        // Siblings in this upload hold bytes only while they decode: waiting for them ends.
        if !self.upload.acquire(bytes, None) {
            return Err(over_limit(bytes, limits.per_upload, what));
        }
        if !self
            .process
            .process
            .acquire(bytes, Some(Instant::now() + limits.wait))
        {
            self.upload.release(bytes);
            return Err(EmbedError::Busy(format!(
                "the server is decoding as much as its memory budget allows ({} MiB); retry \
                 shortly",
                limits.process / MIB
            )));
        }
        Ok(Reservation {
            budget: self,
            bytes,
        })
    }
}

fn over_limit(bytes: u64, limit: u64, what: impl fmt::Display) -> EmbedError {
    EmbedError::InvalidInput(format!(
        "{what} would need {} MiB of memory to decode, over the limit of {} MiB per file",
        bytes.div_ceil(MIB),
        limit / MIB
    ))
}

/// Bytes held for one decode; given back when dropped.
#[derive(Debug)]
pub struct Reservation<'a> {
    budget: &'a UploadBudget,
    bytes: u64,
}

impl Reservation<'_> {
    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Raises the reservation to `bytes` (a decode whose header understated its size), without
    /// waiting: the decode holds bytes already, and waiting while holding could wait for ever.
    pub fn grow_to(&mut self, bytes: u64, what: impl fmt::Display) -> Result<(), EmbedError> {
        if bytes <= self.bytes {
            return Ok(());
        }
        let limits = self.budget.limits();
        if bytes > limits.per_decode {
            return Err(over_limit(bytes, limits.per_decode, what));
        }
        let more = bytes - self.bytes;
        let now = Some(Instant::now());
        if !self.budget.upload.acquire(more, now) {
            return Err(EmbedError::Busy(format!(
                "{what}: the upload's other files hold its decode budget ({} MiB); send it \
                 alone or retry",
                limits.per_upload / MIB
            )));
        }
        if !self.budget.process.process.acquire(more, now) {
            self.budget.upload.release(more);
            return Err(EmbedError::Busy(format!(
                "the server is decoding as much as its memory budget allows ({} MiB); retry \
                 shortly",
                limits.process / MIB
            )));
        }
        self.bytes = bytes;
        Ok(())
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.budget.process.process.release(self.bytes);
        self.budget.upload.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_decode: u64, per_upload: u64, process: u64) -> DecodeLimits {
        DecodeLimits {
            per_decode,
            per_upload,
            process,
            wait: Duration::from_millis(50),
        }
    }

    #[test]
    fn a_file_over_the_per_decode_limit_is_invalid_input() {
        let b = DecodeBudget::new(limits(100, 200, 400));
        let u = b.upload();
        let e = u.reserve(101, "image of 1x1 pixels").unwrap_err();
        assert!(
            matches!(&e, EmbedError::InvalidInput(m) if m.contains("image of 1x1 pixels")),
            "{e}"
        );
        let r = u.reserve(100, "x").unwrap();
        assert_eq!((r.bytes(), b.in_use()), (100, 100));
        drop(r);
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn an_exhausted_process_budget_is_busy_after_the_wait_and_recovers() {
        let b = DecodeBudget::new(limits(100, 100, 150));
        let (u1, u2) = (b.upload(), b.upload());
        let held = u1.reserve(100, "a").unwrap();
        let t = Instant::now();
        assert!(matches!(u2.reserve(60, "b"), Err(EmbedError::Busy(_))));
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert_eq!(b.in_use(), 100, "a failed reservation holds nothing");
        drop(held);
        assert!(u2.reserve(60, "b").is_ok());
    }

    #[test]
    fn files_of_one_upload_wait_for_each_other_within_its_budget() {
        let b = DecodeBudget::new(limits(100, 100, 1000));
        let u = b.upload();
        let peak = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let _r = u.reserve(60, "f").unwrap();
                    peak.fetch_max(b.in_use(), std::sync::atomic::Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                });
            }
        });
        assert_eq!(peak.into_inner(), 60, "two 60-byte files never ran at once");
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn growing_never_waits_and_stops_at_the_per_decode_limit() {
        let b = DecodeBudget::new(limits(100, 150, 150));
        let u = b.upload();
        let mut r = u.reserve(10, "a").unwrap();
        r.grow_to(90, "a").unwrap();
        assert_eq!(b.in_use(), 90);
        assert!(matches!(
            r.grow_to(101, "a"),
            Err(EmbedError::InvalidInput(_))
        ));
        let other = u.reserve(60, "b").unwrap();
        assert!(matches!(r.grow_to(100, "a"), Err(EmbedError::Busy(_))));
        drop(other);
        r.grow_to(100, "a").unwrap();
        drop(r);
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn limits_must_nest() {
        assert!(DecodeLimits::default().validate().is_ok());
        assert!(limits(0, 1, 1).validate().is_err());
        assert!(limits(2, 1, 4).validate().is_err());
        assert!(limits(1, 4, 2).validate().is_err());
    }
}
