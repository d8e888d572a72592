//! The process log's writer thread.
//!
//! Workers hand each formatted line to a bounded queue and go on; a thread of its own writes
//! them. It wakes for a batch's first line, then lingers so that the lines of a busy proxy go
//! out in one write per batch. Waking the writer and writing each line on its own cost a worker
//! a futex wake-up and a context switch per request, more than formatting the line did.
//!
//! A full queue (in lines, or in bytes: one line may be long) drops the line and counts it: the
//! audit log, not this one, is the record of every decision, and a worker never waits for the
//! log.
//!
//! A line is one event: a line break inside one (in a value the formatter writes as it is, such
//! as an error's text quoting what a client sent) is written escaped, so no value can forge a
//! line of its own.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long the writer waits after a batch's first line for more. Bounds how late a line is
/// written, and how many wake-ups and writes a busy proxy's log costs (at most one per LINGER).
const LINGER: Duration = Duration::from_millis(20);

/// Bytes gathered before they are written, however many lines are still queued.
const MAX_WRITE: usize = 256 * 1024;

/// How often an idle writer looks at the stop flag.
const IDLE_CHECK: Duration = Duration::from_millis(100);

/// How long stopping waits for the queued lines to be written (a log pipe nobody reads would
/// otherwise hold the process's exit forever).
const STOP_WAIT: Duration = Duration::from_secs(2);

/// Where formatted lines are queued: the `MakeWriter` of the log's formatting layer.
#[derive(Debug, Clone)]
pub struct LineQueue {
    tx: SyncSender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
    /// Bytes of the lines queued and not yet taken by the writer.
    queued_bytes: Arc<AtomicUsize>,
    /// Most bytes queued at once.
    max_bytes: usize,
    /// Lines go to a terminal that shows the log's colours: ESC is left as it is.
    keep_esc: bool,
}

/// Keeps the writer thread; dropping it writes what is queued (waiting up to [`STOP_WAIT`]),
/// then stops the thread.
#[derive(Debug)]
#[must_use = "dropping the guard stops the log writer"]
pub struct WriterGuard {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the thread writing lines, as queued (at most `capacity` lines and `max_bytes` bytes
/// waiting), to `out`.
pub fn start<W: Write + Send + 'static>(
    out: W,
    capacity: usize,
    max_bytes: usize,
) -> io::Result<(LineQueue, WriterGuard)> {
    let (tx, rx) = mpsc::sync_channel(capacity);
    let stop = Arc::new(AtomicBool::new(false));
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    let thread = std::thread::Builder::new()
        .name("log writer".into())
        .spawn({
            let stop = stop.clone();
            let queued_bytes = queued_bytes.clone();
            move || write_lines(&rx, out, &stop, &queued_bytes)
        })?;
    let queue = LineQueue {
        tx,
        dropped: Arc::default(),
        queued_bytes,
        max_bytes,
        keep_esc: false,
    };
    let guard = WriterGuard {
        stop,
        thread: Some(thread),
    };
    Ok((queue, guard))
}

impl LineQueue {
    /// The queue for a terminal that shows the log's colours (`on`): ESC left as it is.
    #[must_use]
    pub fn with_terminal_colours(mut self, on: bool) -> Self {
        self.keep_esc = on;
        self
    }

    /// Lines dropped because the queue was full (or the writer gone).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Queues one formatted line (with its newline), or drops and counts it when the queue is
    /// full.
    pub fn push(&self, line: Vec<u8>) {
        self.push_one_line(one_line(line, self.keep_esc));
    }

    /// [`Self::push`] for a line its writer made one line of plain text already (every value
    /// escaped): nothing in it is looked at again.
    pub fn push_one_line(&self, line: Vec<u8>) {
        let len = line.len();
        // SECURITY: bounded in bytes as well as lines: lines as long as a request's head (its
        // path escaped) would otherwise hold gigabytes while the log's reader is behind.
        if self.queued_bytes.fetch_add(len, Ordering::AcqRel) + len > self.max_bytes {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// `line` as one line of plain text: every CR, and every LF but a last one, written as `\r` and
/// `\n`; every other control character (C0 but tab, DEL, C1 such as NEL) and the Unicode line
/// and paragraph separators as `\u` and four hex digits; and, unless `keep_esc` (a terminal
/// that shows the log's own colours), ESC likewise.
///
/// SECURITY: the text formatter writes some values as they are (an error's `Display`: a rejected
/// client certificate's subject, which the client chose), so a line break in one would start a
/// line that reads as another event (a forged `request … decision="allow"`), for a reader that
/// splits on any line break (VT, FF, NEL, U+2028 …), and a terminal escape could erase what
/// precedes it. JSON lines escape their control characters already; their separators are
/// written as the JSON escapes they are.
fn one_line(line: Vec<u8>, keep_esc: bool) -> Vec<u8> {
    let body = line.strip_suffix(b"\n").unwrap_or(&line);
    let escaped = |b: u8| (b < 0x20 && b != b'\t' && !(keep_esc && b == 0x1b)) || b == 0x7f;
    // 0xC2 and 0xE2 lead the multi-byte ones (C1 controls, U+2028 and U+2029): rare in a line.
    if !body.iter().any(|&b| escaped(b) || b == 0xC2 || b == 0xE2) {
        return line;
    }
    let mut out = Vec::with_capacity(line.len() + 16);
    let mut rest = body;
    while let Some((&b, tail)) = rest.split_first() {
        let (code, len) = match (b, tail) {
            (b'\n', _) => {
                out.extend_from_slice(b"\\n");
                (None, 1)
            }
            (b'\r', _) => {
                out.extend_from_slice(b"\\r");
                (None, 1)
            }
            (b, _) if escaped(b) => (Some(u32::from(b)), 1),
            (0xC2, [c1 @ 0x80..=0x9F, ..]) => (Some(u32::from(*c1)), 2),
            (0xE2, [0x80, sep @ (0xA8 | 0xA9), ..]) => (Some(0x2000 + u32::from(*sep - 0x80)), 3),
            (b, _) => {
                out.push(b);
                (None, 1)
            }
        };
        if let Some(code) = code {
            out.extend_from_slice(format!("\\u{code:04x}").as_bytes());
        }
        rest = &rest[len..];
    }
    if body.len() < line.len() {
        out.push(b'\n');
    }
    out
}

/// One line on its way to the queue (the formatting layer writes each line in one call).
#[derive(Debug)]
pub struct LineWriter<'q>(&'q LineQueue);

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.push(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'q> MakeWriter<'q> for LineQueue {
    type Writer = LineWriter<'q>;

    fn make_writer(&'q self) -> LineWriter<'q> {
        LineWriter(self)
    }
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let Some(thread) = self.thread.take() else {
            return;
        };
        let deadline = std::time::Instant::now() + STOP_WAIT;
        while !thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        if thread.is_finished() {
            let _ = thread.join();
        }
    }
}

fn write_lines<W: Write>(
    rx: &Receiver<Vec<u8>>,
    mut out: W,
    stop: &AtomicBool,
    queued_bytes: &AtomicUsize,
) {
    let mut batch = Vec::with_capacity(64 * 1024);
    loop {
        // The stop flag is read before the queue is drained, so nothing queued before the
        // guard was dropped is left behind.
        let stopping = stop.load(Ordering::Acquire);
        match rx.recv_timeout(IDLE_CHECK) {
            Ok(first) => {
                queued_bytes.fetch_sub(first.len(), Ordering::AcqRel);
                batch.extend_from_slice(&first);
                if !stopping {
                    std::thread::sleep(LINGER);
                }
            }
            Err(RecvTimeoutError::Timeout) if stopping => return,
            Err(RecvTimeoutError::Timeout) => continue,
            // Every sender is gone only if the logger itself is: nothing more can come.
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while let Ok(line) = rx.try_recv() {
            queued_bytes.fetch_sub(line.len(), Ordering::AcqRel);
            batch.extend_from_slice(&line);
            if batch.len() >= MAX_WRITE {
                // A log that cannot be written (a closed pipe) is not a reason to stop serving.
                let _ = out.write_all(&batch);
                batch.clear();
            }
        }
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Sink {
        bytes: Arc<Mutex<Vec<u8>>>,
        writes: Arc<AtomicU64>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.bytes.lock().unwrap().extend_from_slice(buf);
            self.writes.fetch_add(1, Ordering::Relaxed);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn line(queue: &LineQueue, text: &str) {
        queue.make_writer().write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn a_burst_of_lines_is_written_in_order_in_few_writes() {
        let sink = Sink::default();
        let (queue, guard) = start(sink.clone(), 1024, 1 << 20).unwrap();
        for i in 0..500 {
            line(&queue, &format!("line {i}\n"));
        }
        drop(guard);
        let text = String::from_utf8(sink.bytes.lock().unwrap().clone()).unwrap();
        let want: String = (0..500).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text, want);
        // The first line wakes the writer, which lingers: not one write per line.
        let writes = sink.writes.load(Ordering::Relaxed);
        assert!(writes <= 10, "{writes} writes for 500 lines");
        assert_eq!(queue.dropped(), 0);
    }

    #[test]
    fn a_line_alone_is_written_without_waiting_for_more() {
        let sink = Sink::default();
        let (queue, _guard) = start(sink.clone(), 16, 1 << 20).unwrap();
        line(&queue, "lonely\n");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.bytes.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(sink.bytes.lock().unwrap().as_slice(), b"lonely\n");
    }

    /// A writer that says when it is writing, then blocks until its gate opens: the queue fills
    /// behind it.
    struct Stuck {
        writing: mpsc::Sender<()>,
        gate: Arc<Mutex<()>>,
        sink: Sink,
    }

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.writing.send(());
            let _held = self.gate.lock().unwrap();
            self.sink.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_lines_instead_of_waiting() {
        let gate = Arc::new(Mutex::new(()));
        let sink = Sink::default();
        let (writing, is_writing) = mpsc::channel();
        let closed = gate.lock().unwrap();
        let stuck = Stuck {
            writing,
            gate: gate.clone(),
            sink: sink.clone(),
        };
        let (queue, guard) = start(stuck, 4, 1 << 20).unwrap();
        line(&queue, "first\n");
        is_writing.recv().unwrap();
        for i in 0..20 {
            line(&queue, &format!("queued {i}\n"));
        }
        assert_eq!(queue.dropped(), 16, "4 queued, the rest dropped");
        drop(closed);
        drop(guard);
        let text = String::from_utf8(sink.bytes.lock().unwrap().clone()).unwrap();
        assert_eq!(text, "first\nqueued 0\nqueued 1\nqueued 2\nqueued 3\n");
    }

    #[test]
    fn a_line_break_inside_a_line_cannot_start_another() {
        let sink = Sink::default();
        let (queue, guard) = start(sink.clone(), 16, 1 << 20).unwrap();
        line(
            &queue,
            "WARN refused error=bad cert CN=\nINFO request decision=\"allow\"\r\n",
        );
        line(&queue, "plain\n");
        line(&queue, "no newline at all\r");
        drop(guard);
        let text = String::from_utf8(sink.bytes.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "WARN refused error=bad cert CN=\\nINFO request decision=\"allow\"\\r\nplain\nno newline at all\\r"
        );
        assert_eq!(text.lines().count(), 3);
    }

    /// Every other line break a reader may split on, and every control character, is escaped
    /// too; ESC only where the log's own colours are not shown. Text that merely shares a lead
    /// byte with them (`é`, `…`, `€`) is left alone.
    #[test]
    fn no_control_character_or_separator_reaches_the_log_raw() {
        for (keep_esc, input, want) in [
            (
                false,
                "a\u{b}b\u{c}c\u{1c}d\0e\u{7f}f\n",
                "a\\u000bb\\u000cc\\u001cd\\u0000e\\u007ff\n",
            ),
            (
                false,
                "nel\u{85}ls\u{2028}ps\u{2029}end\n",
                "nel\\u0085ls\\u2028ps\\u2029end\n",
            ),
            (
                false,
                "erase\u{1b}[2K\u{1b}[1Gforged\n",
                "erase\\u001b[2K\\u001b[1Gforged\n",
            ),
            (
                true,
                "\u{1b}[32mINFO\u{1b}[0m ok\u{2028}\n",
                "\u{1b}[32mINFO\u{1b}[0m ok\\u2028\n",
            ),
            (
                false,
                "caf\u{e9} \u{2026} \u{20ac} tab\there\n",
                "caf\u{e9} \u{2026} \u{20ac} tab\there\n",
            ),
        ] {
            let got = one_line(input.as_bytes().to_vec(), keep_esc);
            assert_eq!(String::from_utf8(got).unwrap(), want, "{input:?}");
        }
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_as_well_as_lines() {
        let gate = Arc::new(Mutex::new(()));
        let sink = Sink::default();
        let (writing, is_writing) = mpsc::channel();
        let closed = gate.lock().unwrap();
        let stuck = Stuck {
            writing,
            gate: gate.clone(),
            sink: sink.clone(),
        };
        let (queue, guard) = start(stuck, 1024, 10_000).unwrap();
        line(&queue, "first\n");
        is_writing.recv().unwrap();
        let long = format!("{}\n", "x".repeat(999));
        for _ in 0..50 {
            line(&queue, &long);
        }
        assert_eq!(
            queue.dropped(),
            40,
            "10 lines of 1,000 bytes queued, the rest dropped"
        );
        drop(closed);
        drop(guard);
        assert_eq!(
            sink.bytes.lock().unwrap().len(),
            "first\n".len() + 10 * 1000
        );
        // Once written, the room is there again.
        assert_eq!(queue.queued_bytes.load(Ordering::Acquire), 0);
    }
}
