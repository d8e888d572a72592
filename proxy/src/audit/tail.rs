//! Reading and repairing the end of an append-only JSONL file without reading all of it: a
//! crash mid-write leaves a last line without its newline ("torn"), which is cut off before
//! anything is appended, so the next record starts on a line of its own.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;

const CHUNK: u64 = 64 * 1024;

/// Offset of the last `\n` in `file[..end]`.
fn last_newline_before(file: &File, end: u64) -> io::Result<Option<u64>> {
    let mut hi = end;
    let mut buf = vec![0u8; usize::try_from(CHUNK).unwrap_or(65_536)];
    while hi > 0 {
        let lo = hi.saturating_sub(CHUNK);
        let window = buf
            .get_mut(..usize::try_from(hi - lo).unwrap_or(0))
            .unwrap_or_default();
        file.read_exact_at(window, lo)?;
        if let Some(i) = window.iter().rposition(|b| *b == b'\n') {
            return Ok(Some(lo + i as u64));
        }
        hi = lo;
    }
    Ok(None)
}

/// Length of `file` up to and including its last newline: what remains after cutting a torn
/// last line.
pub fn complete_len(file: &File) -> io::Result<u64> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(0);
    }
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1)?;
    if last[0] == b'\n' {
        return Ok(len);
    }
    Ok(last_newline_before(file, len)?.map_or(0, |i| i + 1))
}

/// Cuts a torn last line off `file` (opened for writing); returns the new length.
pub fn cut_torn_tail(file: &File) -> io::Result<u64> {
    let complete = complete_len(file)?;
    if complete != file.metadata()?.len() {
        file.set_len(complete)?;
        file.sync_data()?;
    }
    Ok(complete)
}

/// The last complete line of `file[..len]` (without its newline), where `len` is a
/// [`complete_len`].
pub fn last_line(file: &File, len: u64) -> io::Result<Option<Vec<u8>>> {
    if len == 0 {
        return Ok(None);
    }
    let start = last_newline_before(file, len - 1)?.map_or(0, |i| i + 1);
    let mut line = vec![0u8; usize::try_from(len - 1 - start).unwrap_or(0)];
    file.read_exact_at(&mut line, start)?;
    Ok(Some(line))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn file_with(bytes: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        let handle = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(f.path())
            .unwrap();
        (f, handle)
    }

    #[test]
    fn torn_tails_are_cut_to_the_last_complete_line() {
        let long = "x".repeat(200_000);
        for (name, content, complete, last) in [
            ("empty", String::new(), 0, None),
            ("complete", "a\nbb\n".to_string(), 5, Some("bb")),
            ("torn", "a\nbb\nccc".to_string(), 5, Some("bb")),
            ("only torn", "ccc".to_string(), 0, None),
            ("one line", "a\n".to_string(), 2, Some("a")),
            (
                "long lines",
                format!("{long}\n{long}\n{long}"),
                400_002,
                Some(long.as_str()),
            ),
        ] {
            let (_keep, f) = file_with(content.as_bytes());
            assert_eq!(cut_torn_tail(&f).unwrap(), complete, "{name}");
            assert_eq!(f.metadata().unwrap().len(), complete, "{name}");
            let got = last_line(&f, complete).unwrap();
            assert_eq!(got.as_deref(), last.map(str::as_bytes), "{name}");
        }
    }
}
