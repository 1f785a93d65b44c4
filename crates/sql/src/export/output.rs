//! An export's output file: bytes gathered into aligned chunks of [`CHUNK`] bytes that
//! two I/O threads write at their offsets, with `O_DIRECT` where the file system takes
//! it.
//!
//! Why: an export of a slice is one long sequential write (439 MB of weights for the
//! Classification slice of a 100M-filter store). Through the page cache, the `write`
//! calls copying it there were a fifth of the export's CPU (on two cores, where the
//! query needs the rest), and the kernel's writeback threads took more on top. Direct
//! writes go from our buffers to the disk: the copy into a chunk is a plain `memcpy`,
//! and with two writes in flight the disk runs at the speed of `dd` (two `dd
//! oflag=direct` writers of 4 MiB blocks took the time of one buffered `dd conv=fsync`,
//! with half its CPU; one direct writer at a time was 1.2x slower). The file also does
//! not push the store out of the page cache.
//!
//! Where direct I/O is not offered (Linux's `statx` reports no `STATX_DIOALIGN`, as on
//! tmpfs, or another system) the same threads write through the page cache and ask the
//! kernel to start writing back each chunk as it is written
//! (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so the final `fsync` waits for the last
//! chunks, not the whole file (it had been 130-200 ms of a 0.7 s export).
//!
//! Direct writes must start and end on the file system's alignment and come from
//! memory aligned to it: every chunk but the last is whole, the last is padded with
//! zeros, and the file is cut to its length once the writes are done. Any error of a
//! write is kept and returned by the next write or by [`Output::finish`] (naming the
//! file).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::io;
use crate::error::{Result, SqlError};

/// Bytes per chunk (and per write).
pub(crate) const CHUNK: usize = 4 << 20;
/// Writes in flight at once.
const IO_THREADS: usize = 2;
/// Chunks in all: one being filled, up to two being written, the rest queued.
const BUFFERS: usize = 5;
/// The smallest alignment used for direct writes (the page size covers every common
/// block size; `statx` may ask for more).
const MIN_ALIGN: usize = 4096;

/// A chunk of memory aligned for direct I/O: a `Vec` with room to slide the chunk to
/// an aligned address (safe code, at the cost of `align` spare bytes).
struct Chunk {
    mem: Vec<u8>,
    start: usize,
}

impl Chunk {
    fn new(align: usize) -> Chunk {
        let mem = vec![0u8; CHUNK + align];
        let start = mem.as_ptr().align_offset(align);
        Chunk { mem, start }
    }
    fn bytes(&self) -> &[u8] {
        &self.mem[self.start..self.start + CHUNK]
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + CHUNK]
    }
}

/// A chunk to write: `len` bytes of `chunk` at `offset`.
struct Job {
    chunk: Chunk,
    len: usize,
    offset: u64,
}

/// What the I/O threads share.
struct Shared {
    file: File,
    /// Direct writes (else page cache and writeback hints).
    direct: bool,
    /// The first error of a write.
    error: Mutex<Option<std::io::Error>>,
}

impl Shared {
    fn write(&self, job: &Job) -> std::io::Result<()> {
        let bytes = &job.chunk.bytes()[..job.len];
        match self.file.write_all_at(bytes, job.offset) {
            // A file system that reported direct I/O but refuses this write (EINVAL:
            // an alignment it did not report): the rest goes through the page cache.
            Err(e)
                if self.direct
                    && e.kind() == std::io::ErrorKind::InvalidInput
                    && set_direct(&self.file, false) =>
            {
                self.file.write_all_at(bytes, job.offset)?;
            }
            other => other?,
        }
        if !self.direct {
            start_writeback(&self.file, job.offset, job.len);
        }
        Ok(())
    }

    fn failed(&self) -> Option<std::io::Error> {
        let e = self.error.lock().ok()?;
        e.as_ref()
            .map(|e| std::io::Error::new(e.kind(), e.to_string()))
    }
}

/// Start writeback of `len` bytes at `offset`: best effort, errors surface at the
/// `fsync`.
#[cfg_attr(not(target_os = "linux"), allow(unused_variables))]
fn start_writeback(file: &File, offset: u64, len: usize) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(from), Ok(len)) = (
            libc::off64_t::try_from(offset),
            libc::off64_t::try_from(len),
        ) else {
            return;
        };
        // SAFETY: a syscall on an open descriptor that reads and writes no memory of
        // ours.
        unsafe { libc::sync_file_range(file.as_raw_fd(), from, len, libc::SYNC_FILE_RANGE_WRITE) };
    }
}

/// The alignment direct writes to `file` need, if its file system takes them, having
/// switched `file` to `O_DIRECT`; `None` leaves `file` as it was.
#[cfg(target_os = "linux")]
fn go_direct(file: &File) -> Option<usize> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: statx fills the zeroed struct we own; the empty path with AT_EMPTY_PATH
    // names the descriptor itself.
    let stx = unsafe {
        let mut stx: libc::statx = std::mem::zeroed();
        let rc = libc::statx(
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &raw mut stx,
        );
        (rc == 0).then_some(stx)?
    };
    if stx.stx_mask & libc::STATX_DIOALIGN == 0 || stx.stx_dio_offset_align == 0 {
        return None;
    }
    let align = [stx.stx_dio_offset_align, stx.stx_dio_mem_align]
        .into_iter()
        .filter_map(|a| usize::try_from(a).ok())
        .fold(MIN_ALIGN, usize::max);
    if !align.is_power_of_two() || !CHUNK.is_multiple_of(align) {
        return None;
    }
    set_direct(file, true).then_some(align)
}

#[cfg(not(target_os = "linux"))]
fn go_direct(_file: &File) -> Option<usize> {
    None
}

/// Switch `file` to direct writes (`on`) or back to writes through the page cache;
/// whether that worked.
#[cfg(target_os = "linux")]
fn set_direct(file: &File, on: bool) -> bool {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on an open descriptor, with flags it returned.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        let flags = if on {
            flags | libc::O_DIRECT
        } else {
            flags & !libc::O_DIRECT
        };
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn set_direct(_file: &File, _on: bool) -> bool {
    false
}

/// An export's output file (module doc). Bytes are complete in the file only after
/// [`Output::finish`]; dropped unfinished, it stops its threads and leaves the file as
/// far as it got (the caller's staging removes it).
pub(crate) struct Output {
    path: PathBuf,
    shared: Arc<Shared>,
    jobs: Option<SyncSender<Job>>,
    free: Receiver<Chunk>,
    threads: Vec<JoinHandle<()>>,
    /// Chunks made so far (at most [`BUFFERS`]).
    made: usize,
    /// Alignment of direct writes (1 without).
    align: usize,
    /// The chunk being filled, its bytes so far, and its offset in the file.
    chunk: Chunk,
    filled: usize,
    offset: u64,
    /// With [`Output::create`]'s `hold_head`: the file's first chunk, kept until
    /// `finish` so that [`Output::patch_head`] can rewrite its start.
    hold_head: bool,
    head: Option<(Chunk, usize)>,
}

impl Output {
    /// Create the file at `path`. With `hold_head` the first [`CHUNK`] bytes stay in
    /// memory until [`Output::finish`], for [`Output::patch_head`].
    pub(crate) fn create(path: &Path, hold_head: bool) -> Result<Output> {
        let file = File::create(path).map_err(io("creating", path))?;
        let align = go_direct(&file);
        let shared = Arc::new(Shared {
            file,
            direct: align.is_some(),
            error: Mutex::new(None),
        });
        let align = align.unwrap_or(1);
        let (jobs, rx) = sync_channel::<Job>(BUFFERS);
        let rx = Arc::new(Mutex::new(rx));
        let (give, free) = channel::<Chunk>();
        let threads = (0..IO_THREADS)
            .map(|_| spawn_io(&shared, &rx, give.clone()))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(io("starting the writer threads of", path))?;
        Ok(Output {
            path: path.to_path_buf(),
            shared,
            jobs: Some(jobs),
            free,
            threads,
            made: 1,
            align,
            chunk: Chunk::new(align),
            filled: 0,
            offset: 0,
            hold_head,
            head: None,
        })
    }

    /// Whether writes bypass the page cache.
    #[cfg(test)]
    fn is_direct(&self) -> bool {
        self.shared.direct
    }

    /// Overwrite the file's first `bytes.len()` bytes (at most a chunk; needs
    /// `hold_head`, and that many bytes written).
    pub(crate) fn patch_head(&mut self, bytes: &[u8]) -> Result<()> {
        let target = match &mut self.head {
            Some((chunk, len)) if bytes.len() <= *len => chunk.bytes_mut(),
            None if self.hold_head && self.offset == 0 && bytes.len() <= self.filled => {
                self.chunk.bytes_mut()
            }
            _ => {
                return Err(SqlError::Export(format!(
                    "{}: the start of the file cannot be rewritten",
                    self.path.display()
                )));
            }
        };
        target[..bytes.len()].copy_from_slice(bytes);
        Ok(())
    }

    /// Hand the filled chunk to the I/O threads (or keep it as the held head) and take
    /// a fresh one.
    fn hand_over(&mut self) -> std::io::Result<()> {
        if let Some(e) = self.shared.failed() {
            return Err(e);
        }
        let fresh = if self.made < BUFFERS {
            self.made += 1;
            Chunk::new(self.align)
        } else {
            self.free.recv().map_err(|_| stopped())?
        };
        self.dispatch(self.filled, fresh)
    }

    /// Hand `len` bytes of the chunk being filled to the I/O threads, or keep it as the
    /// held head, and fill `next` from here on.
    fn dispatch(&mut self, len: usize, next: Chunk) -> std::io::Result<()> {
        let chunk = std::mem::replace(&mut self.chunk, next);
        let job = Job {
            chunk,
            len,
            offset: self.offset,
        };
        self.offset += self.filled as u64;
        self.filled = 0;
        if self.hold_head && job.offset == 0 {
            self.head = Some((job.chunk, job.len));
            return Ok(());
        }
        self.send(job)
    }

    fn send(&self, job: Job) -> std::io::Result<()> {
        let jobs = self.jobs.as_ref().ok_or_else(stopped)?;
        jobs.send(job).map_err(|_| stopped())
    }

    /// Write what is left, wait for every write, cut the file to its length. The
    /// caller syncs and renames it.
    ///
    /// # Errors
    /// The first failed write, naming the file.
    pub(crate) fn finish(mut self) -> Result<()> {
        let len = self.offset + self.filled as u64;
        let rest = self.finish_writes();
        rest.and_then(|()| {
            if self.shared.direct {
                self.shared.file.set_len(len)?;
            }
            Ok(())
        })
        .map_err(io("writing", &self.path))
    }

    fn finish_writes(&mut self) -> std::io::Result<()> {
        // The last chunk, padded to the alignment with zeros (its bytes past `filled`
        // may be an earlier chunk's).
        if self.filled > 0 {
            let len = self.filled.next_multiple_of(self.align);
            self.chunk.bytes_mut()[self.filled..len].fill(0);
            let none = Chunk {
                mem: Vec::new(),
                start: 0,
            };
            self.dispatch(len, none)?;
        }
        if let Some((chunk, len)) = self.head.take() {
            self.send(Job {
                chunk,
                len,
                offset: 0,
            })?;
        }
        self.stop();
        self.shared.failed().map_or(Ok(()), Err)
    }

    /// Close the queue and wait for the I/O threads.
    fn stop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(CHUNK - self.filled);
        self.chunk.bytes_mut()[self.filled..self.filled + n].copy_from_slice(&buf[..n]);
        self.filled += n;
        if self.filled == CHUNK {
            self.hand_over()?;
        }
        Ok(n)
    }

    /// Bytes reach the file in whole chunks, and the last one at [`Output::finish`]:
    /// a flush before that has nothing it can do.
    fn flush(&mut self) -> std::io::Result<()> {
        self.shared.failed().map_or(Ok(()), Err)
    }
}

fn stopped() -> std::io::Error {
    std::io::Error::other("the export's writer threads stopped")
}

/// An I/O thread: writes jobs until the queue closes, returns each chunk for reuse.
/// After a failed write it keeps taking jobs (and returning their chunks, so the
/// writer never waits on a chunk that will not come back) without writing them.
fn spawn_io(
    shared: &Arc<Shared>,
    jobs: &Arc<Mutex<Receiver<Job>>>,
    give: Sender<Chunk>,
) -> std::io::Result<JoinHandle<()>> {
    let shared = Arc::clone(shared);
    let jobs = Arc::clone(jobs);
    std::thread::Builder::new()
        .name("filterdb-export-io".into())
        .spawn(move || {
            loop {
                // The lock is held only while waiting for the next job.
                let Ok(job) = jobs
                    .lock()
                    .map_err(drop)
                    .and_then(|rx| rx.recv().map_err(drop))
                else {
                    return;
                };
                let ok = shared.error.lock().is_ok_and(|e| e.is_none());
                if ok
                    && let Err(e) = shared.write(&job)
                    && let Ok(mut slot) = shared.error.lock()
                {
                    slot.get_or_insert(e);
                }
                let _ = give.send(job.chunk);
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes written, in pieces of awkward sizes, are the file's; with a held head
    /// patched at the end, whatever the size (empty, under a chunk, several chunks
    /// and a tail, whole chunks).
    #[test]
    fn the_file_holds_the_bytes_and_the_patched_head() {
        let dir = tempfile::tempdir().unwrap();
        for (k, size) in [0, 10, 5000, CHUNK - 1, CHUNK, 3 * CHUNK + 12_345, 7 * CHUNK]
            .into_iter()
            .enumerate()
        {
            for hold in [false, true] {
                let path = dir.path().join(format!("o{k}{hold}.bin"));
                let want: Vec<u8> = (0..size).map(|i| (i * 7 + i / 4099) as u8).collect();
                let mut out = Output::create(&path, hold).unwrap();
                for piece in want.chunks(1_000_003) {
                    out.write_all(piece).unwrap();
                }
                let mut want = want;
                if hold && size >= 4 {
                    out.patch_head(b"head").unwrap();
                    want[..4].copy_from_slice(b"head");
                } else {
                    assert!(out.patch_head(b"head").is_err(), "size {size}, hold {hold}");
                }
                out.finish().unwrap();
                let got = std::fs::read(&path).unwrap();
                assert_eq!(got.len(), want.len(), "size {size}, hold {hold}");
                assert!(got == want, "size {size}, hold {hold}: bytes differ");
            }
        }
    }

    /// A direct write the file system refuses (here a tail neither padded nor in
    /// aligned memory) is written through the page cache instead.
    #[test]
    fn a_refused_direct_write_goes_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("odd.bin");
        let mut out = Output::create(&path, false).unwrap();
        out.align = 1;
        let want: Vec<u8> = (0..CHUNK + 1001).map(|i| (i % 251) as u8).collect();
        out.write_all(&want).unwrap();
        out.finish().unwrap();
        assert!(std::fs::read(&path).unwrap() == want);
    }

    /// A write that fails is reported, naming the file, by a later write or by
    /// `finish`, and the writer does not hang on chunks that failed.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_failed_write_is_an_error_naming_the_file() {
        // Every write to /dev/full fails with ENOSPC.
        let path = Path::new("/dev/full");
        let mut out = Output::create(path, false).unwrap();
        assert!(!out.is_direct());
        let block = vec![1u8; CHUNK];
        let early = (0..2 * BUFFERS).find_map(|_| out.write_all(&block).err());
        let err = match early {
            Some(e) => SqlError::Io {
                action: "writing",
                path: path.to_path_buf(),
                source: e,
            },
            None => out.finish().unwrap_err(),
        };
        let msg = err.to_string();
        assert!(msg.contains("/dev/full"), "{msg}");
        assert!(msg.to_lowercase().contains("space"), "{msg}");
        let out = Output::create(path, true).unwrap();
        let err = {
            let mut out = out;
            out.write_all(&block[..100]).unwrap();
            out.finish().unwrap_err().to_string()
        };
        assert!(err.contains("writing /dev/full"), "{err}");
    }
}
