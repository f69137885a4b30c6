//! Logging: `tracing` with text or JSON lines, level from `RUST_LOG`; and the gate librdkafka's own
//! lines pass through, so that a broker outage reads as a few lines rather than hundreds.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use tracing::Level;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// How log lines are written (`BRIDGE_LOG_FORMAT`; `DIRECTORY_LOG_FORMAT` for tim-group-directory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Plain text lines, without colours.
    Text,
    /// One JSON object per line, the event's fields at its top level.
    Json,
}

/// Installs the global subscriber. The sink is a parameter so tests can capture or silence logs.
pub fn init<W>(format: LogFormat, sink: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(sink);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
}

/// How often a line that keeps repeating is summarized.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(60);

/// At most this many distinct lines are tracked at once; beyond it, new lines are logged as they come
/// (a flood of *distinct* lines is not what this guards against).
const MAX_TRACKED: usize = 512;

/// Collapses identical log lines: the first occurrence is logged, the repeats are counted, and the
/// count is reported at most once per window. A line that stayed quiet for a whole window is logged
/// again when it comes back.
///
/// A std `Mutex`: it is held for a map lookup, never across an `.await`, and librdkafka calls in from
/// its own threads.
pub struct Deduper<K> {
    window: Duration,
    seen: Mutex<HashMap<K, Seen>>,
}

struct Seen {
    /// Start of the current window of this line.
    since: Instant,
    /// Occurrences in the current window after the one that was logged.
    repeats: u64,
}

/// What to log for one line.
#[derive(Debug, PartialEq, Eq)]
pub struct Admission<K> {
    /// Whether to log the line itself (its first occurrence in a while).
    pub log: bool,
    /// Lines whose window is over with repeats to report: the line, how often it repeated, over how long.
    pub summaries: Vec<(K, u64, Duration)>,
}

impl<K: Eq + Hash + Clone> Deduper<K> {
    pub fn new(window: Duration) -> Self {
        Self { window, seen: Mutex::new(HashMap::new()) }
    }

    /// Takes one occurrence of `line` at `now`.
    pub fn admit(&self, line: K, now: Instant) -> Admission<K> {
        let mut seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut summaries = Vec::new();
        seen.retain(|k, s| {
            let elapsed = now.saturating_duration_since(s.since);
            if elapsed < self.window {
                return true;
            }
            if s.repeats == 0 {
                return false;
            }
            summaries.push((k.clone(), s.repeats, elapsed));
            *s = Seen { since: now, repeats: 0 };
            true
        });
        let log = match seen.get_mut(&line) {
            Some(s) => {
                s.repeats += 1;
                false
            }
            None => {
                if seen.len() < MAX_TRACKED {
                    seen.insert(line, Seen { since: now, repeats: 0 });
                }
                true
            }
        };
        Admission { log, summaries }
    }
}

/// `tracing`'s macros take the level as a constant; this picks the macro for a level known at run time.
macro_rules! at_level {
    ($level:expr, $($arg:tt)+) => {
        match $level {
            Level::ERROR => tracing::error!($($arg)+),
            Level::WARN => tracing::warn!($($arg)+),
            Level::INFO => tracing::info!($($arg)+),
            Level::DEBUG => tracing::debug!($($arg)+),
            _ => tracing::trace!($($arg)+),
        }
    };
}

/// One deduper for every librdkafka client of the process: the main and the dead-letter producer see
/// the same brokers go down and would otherwise each print the same line. Logging is process-wide
/// already (one global subscriber); this gate belongs with it.
static LIBRDKAFKA: LazyLock<Deduper<(Level, String, String)>> = LazyLock::new(|| Deduper::new(REPEAT_WINDOW));

/// Messages librdkafka emits as warnings while a fresh broker finishes starting, and which resolve
/// themselves within seconds: they are logged at INFO (a persistent cause shows up elsewhere, as lag
/// and `bridge_kafka_up`).
const TRANSIENT_AT_START: &[&str] = &["Coordinator load in progress", "Failed to acquire idempotence PID"];

/// Logs one line of librdkafka's (target `librdkafka`) through the shared [`Deduper`], at `level` or
/// at INFO for the known transient start-up messages.
pub fn librdkafka_line(level: Level, facility: &str, message: &str) {
    let level = if level < Level::INFO && TRANSIENT_AT_START.iter().any(|t| message.contains(t)) {
        Level::INFO
    } else {
        level
    };
    let admission = LIBRDKAFKA.admit((level, facility.to_owned(), identity(message)), Instant::now());
    for ((level, facility, line), repeated, over) in admission.summaries {
        let secs = over.as_secs();
        at_level!(level, target: "librdkafka", facility, repeated, "{line} (repeated {repeated} times in the last {secs} s)");
    }
    if admission.log {
        at_level!(level, target: "librdkafka", facility, "{message}");
    }
}

/// A librdkafka line without the parts that differ between otherwise identical lines: the timing in
/// "(after 12ms in state CONNECT)" and librdkafka's own "N identical error(s) suppressed".
fn identity(message: &str) -> String {
    match message.find(" (after ") {
        Some(start) => {
            // The group ends at its last ')': "error(s)" has one of its own.
            let end = message[start..].rfind(')').map_or(message.len(), |e| start + e + 1);
            format!("{}{}", &message[..start], &message[end..])
        }
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn the_first_line_is_logged_and_its_repeats_are_summarized_once_a_minute() {
        let d = Deduper::new(MINUTE);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);

        assert!(d.admit("down", at(0)).log);
        for s in 1..60 {
            let a = d.admit("down", at(s));
            assert!(!a.log && a.summaries.is_empty(), "second {s}: {a:?}");
        }
        // A minute on: one summary of the 59 repeats; this occurrence starts the next count.
        let a = d.admit("down", at(60));
        assert_eq!(a, Admission { log: false, summaries: vec![("down", 59, MINUTE)] });
        for s in 61..120 {
            assert_eq!(d.admit("down", at(s)), Admission { log: false, summaries: vec![] });
        }
        assert_eq!(d.admit("down", at(120)).summaries, vec![("down", 60, MINUTE)]);
    }

    #[test]
    fn a_line_quiet_for_a_whole_window_is_logged_again_and_another_line_flushes_pending_counts() {
        let d = Deduper::new(MINUTE);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);

        assert!(d.admit("a", at(0)).log);
        assert!(!d.admit("a", at(1)).log);
        assert!(d.admit("b", at(2)).log, "a different line is logged");
        // "a" stopped repeating; the next line after its window reports its pending count.
        let a = d.admit("b", at(61));
        assert_eq!(a.summaries, vec![("a", 1, Duration::from_secs(61))]);
        assert!(!a.log);
        // "a" was summarized, then quiet for a whole window: logged anew.
        assert!(d.admit("a", at(130)).log);
    }

    #[test]
    fn lines_that_differ_only_in_librdkafkas_timing_are_the_same_line() {
        assert_eq!(
            identity("127.0.0.1:9092/1: Connect to ipv4#127.0.0.1:9092 failed: Connection refused (after 0ms in state CONNECT)"),
            identity("127.0.0.1:9092/1: Connect to ipv4#127.0.0.1:9092 failed: Connection refused (after 3ms in state CONNECT, 4 identical error(s) suppressed)"),
        );
        assert_eq!(identity("2/2 brokers are down"), "2/2 brokers are down");
    }
}
