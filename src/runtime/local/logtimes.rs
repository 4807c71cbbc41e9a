//! When instance output was written, to about a second.
//!
//! An instance writes straight into `<instance>.log` (no pipe through the
//! controller, so it keeps running and logging while the controller
//! restarts), which leaves its lines without a time. Once a second the
//! runtime notes how far each log has grown, in `<instance>.log.times`: one
//! `<bytes> <unix ms>` line per change. A line of the log was written no
//! later than the first note at or past its end (and after the note before
//! that), which is the time `floyd logs` shows. While no controller runs
//! nothing is noted: lines written then get the time of the first note after
//! it restarts. Rotation moves the notes along with the text
//! (`<instance>.log.1.times` describes `<instance>.log.1`).

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The notes file of a log file (current or rotated).
pub fn times_path(log: &Path) -> PathBuf {
    let mut s = log.as_os_str().to_owned();
    s.push(".times");
    PathBuf::from(s)
}

/// The last offset noted in `times` (0 when there is none).
fn last_noted(times: &Path) -> u64 {
    let Ok(mut f) = std::fs::File::open(times) else {
        return 0;
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64)));
    let mut tail = String::new();
    let _ = f.read_to_string(&mut tail);
    tail.lines()
        .last()
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Notes the current length of `log` at `now_ms` if it grew since the last note.
pub fn note(log: &Path, now_ms: u64) -> io::Result<()> {
    let len = match std::fs::metadata(log) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let times = times_path(log);
    if len == 0 || len == last_noted(&times) {
        return Ok(());
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&times)?;
    writeln!(f, "{len} {now_ms}")
}

/// After `log` was rotated (copied to `.1`, `.1` to `.2`, ... up to `keep`,
/// then truncated), moves the notes the same way.
pub fn rotated(log: &Path, keep: u32) {
    let numbered = |n: u32| {
        let mut s = log.as_os_str().to_owned();
        s.push(format!(".{n}"));
        times_path(Path::new(&s))
    };
    let _ = std::fs::remove_file(numbered(keep));
    for n in (1..keep).rev() {
        let from = numbered(n);
        if from.exists() {
            let _ = std::fs::rename(&from, numbered(n + 1));
        }
    }
    let _ = std::fs::rename(times_path(log), numbered(1));
}

/// The notes of a log file: (offset, unix ms), in file order.
pub fn read(log: &Path) -> Vec<(u64, u64)> {
    std::fs::read_to_string(times_path(log))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (a, b) = l.split_once(' ')?;
            Some((a.parse().ok()?, b.trim().parse().ok()?))
        })
        .collect()
}

/// When the bytes up to `end` had been written: the first note at or past
/// `end`, else `fallback` (the file's modification time).
pub fn time_of(notes: &[(u64, u64)], end: u64, fallback: u64) -> u64 {
    let i = notes.partition_point(|(off, _)| *off < end);
    notes.get(i).map_or(fallback, |(_, t)| *t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_follow_growth_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("i.log");
        note(&log, 1).unwrap();
        assert!(read(&log).is_empty(), "no log yet, no note");
        std::fs::write(&log, "a\nb\n").unwrap();
        note(&log, 1000).unwrap();
        note(&log, 2000).unwrap();
        assert_eq!(read(&log), vec![(4, 1000)], "unchanged: no second note");
        std::fs::write(&log, "a\nb\ncc\n").unwrap();
        note(&log, 3000).unwrap();
        let notes = read(&log);
        assert_eq!(notes, vec![(4, 1000), (7, 3000)]);
        // Line ends 2 ("a\n") and 4: noted at 1000; 7: at 3000; past: fallback.
        assert_eq!(
            [2, 4, 7, 9].map(|e| time_of(&notes, e, 9999)),
            [1000, 1000, 3000, 9999]
        );
        // Rotation moves the notes with the text.
        std::fs::copy(&log, dir.path().join("i.log.1")).unwrap();
        std::fs::write(&log, "").unwrap();
        rotated(&log, 3);
        assert_eq!(read(&dir.path().join("i.log.1")), notes);
        assert!(read(&log).is_empty());
        std::fs::write(&log, "d\n").unwrap();
        note(&log, 4000).unwrap();
        assert_eq!(read(&log), vec![(2, 4000)]);
    }
}
