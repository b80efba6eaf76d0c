//! SQLite's commits and WAL frames, read from outside the server: the header of the WAL index
//! (`<db>-shm`, a file SQLite maps into every connection) holds a commit counter, the number
//! of frames in the WAL's current generation and a salt that grows by one each time a
//! checkpoint lets the WAL start over. Sampling that header during the load gives commits
//! exactly, and frames per commit over the intervals in which the WAL did not start over.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;

/// The fields of the wal-index header this measurement needs (SQLite's `WalIndexHdr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalIndexHeader {
    /// `iChange`: incremented by every commit.
    pub commits: u32,
    /// `mxFrame`: valid frames in the WAL since it last started over.
    pub frames: u32,
    /// Salt-1: incremented each time the WAL starts over after a checkpoint.
    pub generation: u32,
    pub page_size: u32,
}

/// Both copies of the header (SQLite writes the second, then the first; a reader trusts
/// them only when they agree) in the first 96 bytes of the `-shm` file.
const HEADER: usize = 48;

/// Parses the start of a `-shm` file; `None` when the copies disagree (a write was under
/// way) or the index is not initialised yet.
pub fn parse_header(bytes: &[u8]) -> Option<WalIndexHeader> {
    let (first, second) = (bytes.get(..HEADER)?, bytes.get(HEADER..2 * HEADER)?);
    // The header is in native byte order, the salts are kept as the WAL's big-endian bytes.
    let native = |at: usize| u32::from_ne_bytes(first[at..at + 4].try_into().expect("4 bytes"));
    if first != second || first[12] != 1 {
        return None;
    }
    // szPage packs 65536 as 1 (its low byte holds the 0x10000 bit).
    let packed = u16::from_ne_bytes([first[14], first[15]]) as u32;
    let page_size = (packed & 0xfe00) | ((packed & 0x0001) << 16);
    Some(WalIndexHeader {
        commits: native(8),
        frames: native(16),
        generation: u32::from_be_bytes(first[32..36].try_into().expect("4 bytes")),
        page_size,
    })
}

/// What the WAL did between the first and the last sample.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct WalStats {
    pub page_size: u32,
    /// Write transactions committed (exact).
    pub commits: u64,
    /// Times the WAL started over after a checkpoint (exact).
    pub restarts: u64,
    /// Frames (one page each) appended per commit, over the sampled intervals without a
    /// restart.
    pub frames_per_commit: f64,
    /// The share of the commits those intervals hold (the rest fell in an interval in which
    /// the WAL started over, whose frames cannot be told from the header).
    pub sampled_commit_share: f64,
}

/// Folds header samples into [`WalStats`].
#[derive(Debug, Default)]
pub struct WalTally {
    first: Option<WalIndexHeader>,
    last: Option<WalIndexHeader>,
    frames: u64,
    sampled_commits: u64,
}

impl WalTally {
    pub fn observe(&mut self, now: WalIndexHeader) {
        match self.last {
            None => self.first = Some(now),
            Some(prev) if prev.generation == now.generation && now.frames >= prev.frames => {
                self.frames += u64::from(now.frames - prev.frames);
                self.sampled_commits += u64::from(now.commits.wrapping_sub(prev.commits));
            }
            // The WAL started over in between: the old generation's last frames are gone.
            Some(_) => {}
        }
        self.last = Some(now);
    }

    pub fn stats(&self) -> Option<WalStats> {
        let (first, last) = (self.first?, self.last?);
        let commits = u64::from(last.commits.wrapping_sub(first.commits));
        Some(WalStats {
            page_size: last.page_size,
            commits,
            restarts: u64::from(last.generation.wrapping_sub(first.generation)),
            frames_per_commit: ratio(self.frames, self.sampled_commits),
            sampled_commit_share: ratio(self.sampled_commits, commits),
        })
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

fn read_header(shm: &std::fs::File) -> Option<WalIndexHeader> {
    use std::os::unix::fs::FileExt;
    let mut bytes = [0u8; 2 * HEADER];
    // A few tries: a read can land between SQLite's writes of the two copies.
    for _ in 0..5 {
        shm.read_exact_at(&mut bytes, 0).ok()?;
        if let Some(header) = parse_header(&bytes) {
            return Some(header);
        }
    }
    None
}

/// Samples the WAL index of `db` every millisecond on a thread of its own until stopped.
pub struct WalSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<WalTally>,
}

impl WalSampler {
    pub fn start(db: &Path) -> WalSampler {
        let shm = PathBuf::from(format!("{}-shm", db.display()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut tally = WalTally::default();
                // Reads of the file see the very pages SQLite maps.
                let Ok(file) = std::fs::File::open(&shm) else {
                    return tally;
                };
                loop {
                    // Read once more after the stop so the last commits are counted.
                    let stopping = stop.load(Ordering::SeqCst);
                    if let Some(header) = read_header(&file) {
                        tally.observe(header);
                    }
                    if stopping {
                        return tally;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        WalSampler { stop, thread }
    }

    /// `None` when the header could never be read (no WAL index, another journal mode).
    pub fn finish(self) -> Option<WalStats> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().ok()?.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_bytes(commits: u32, frames: u32, salt1: u32, page: u16) -> Vec<u8> {
        let mut h = vec![0u8; HEADER];
        h[0..4].copy_from_slice(&3_007_000u32.to_ne_bytes());
        h[8..12].copy_from_slice(&commits.to_ne_bytes());
        h[12] = 1;
        h[14..16].copy_from_slice(&page.to_ne_bytes());
        h[16..20].copy_from_slice(&frames.to_ne_bytes());
        h[32..36].copy_from_slice(&salt1.to_be_bytes());
        h[36..40].copy_from_slice(&0xdead_beefu32.to_be_bytes());
        let mut both = h.clone();
        both.extend_from_slice(&h);
        both
    }

    fn header(commits: u32, frames: u32, generation: u32) -> WalIndexHeader {
        WalIndexHeader {
            commits,
            frames,
            generation,
            page_size: 4096,
        }
    }

    #[test]
    fn the_header_is_read_only_when_both_copies_agree() {
        let bytes = header_bytes(77, 1_000, 41, 4096);
        assert_eq!(parse_header(&bytes), Some(header(77, 1_000, 41)));
        let mut torn = bytes.clone();
        torn[HEADER + 8] ^= 1;
        assert_eq!(parse_header(&torn), None);
        let mut uninitialised = header_bytes(0, 0, 0, 4096);
        uninitialised[12] = 0;
        uninitialised[HEADER + 12] = 0;
        assert_eq!(parse_header(&uninitialised), None);
        assert_eq!(parse_header(&bytes[..50]), None);
        // 65536-byte pages are stored as 1.
        assert_eq!(
            parse_header(&header_bytes(1, 1, 1, 1)).map(|h| h.page_size),
            Some(65_536)
        );
    }

    #[test]
    fn frames_per_commit_leave_out_the_intervals_with_a_restart() {
        let mut tally = WalTally::default();
        tally.observe(header(100, 900, 7)); // before the load
        tally.observe(header(110, 980, 7)); // 10 commits, 80 frames
        tally.observe(header(115, 30, 8)); // restarted: 5 commits, frames unknown
        tally.observe(header(125, 130, 8)); // 10 commits, 100 frames
        tally.observe(header(125, 130, 8)); // idle
        let s = tally.stats().expect("samples");
        assert_eq!((s.commits, s.restarts, s.page_size), (25, 1, 4096));
        assert_eq!(s.frames_per_commit, 180.0 / 20.0);
        assert_eq!(s.sampled_commit_share, 20.0 / 25.0);
    }

    #[test]
    fn a_real_wal_index_counts_commits_frames_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
            .unwrap();
        conn.execute_batch("PRAGMA wal_autocheckpoint=0; CREATE TABLE t(v)")
            .unwrap();
        let shm = std::fs::File::open(format!("{}-shm", db.display())).unwrap();
        let before = read_header(&shm).expect("an initialised index");
        assert_eq!(before.page_size, 4096);
        for v in 0..3 {
            conn.execute("INSERT INTO t VALUES (?1)", [v]).unwrap();
        }
        let after = read_header(&shm).unwrap();
        assert_eq!(after.commits.wrapping_sub(before.commits), 3);
        // Each insert rewrites the table's one page.
        assert_eq!(after.frames - before.frames, 3);
        conn.execute_batch("PRAGMA wal_checkpoint(FULL)").unwrap();
        conn.execute("INSERT INTO t VALUES (9)", []).unwrap();
        let restarted = read_header(&shm).unwrap();
        assert_eq!(restarted.generation.wrapping_sub(after.generation), 1);
        assert_eq!(restarted.frames, 1);
    }

    #[test]
    fn no_samples_no_figures() {
        assert!(WalTally::default().stats().is_none());
        let mut one = WalTally::default();
        one.observe(header(5, 5, 5));
        let s = one.stats().expect("one sample");
        assert_eq!((s.commits, s.frames_per_commit), (0, 0.0));
    }
}
