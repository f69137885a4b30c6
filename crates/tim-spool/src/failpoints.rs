//! Failpoints in the spool's file I/O (the `fail` crate, as TiKV uses it), compiled in with the
//! `failpoints` feature only: a plain or release build has none.
//!
//! Where they fire: a binary built with the feature (the bridge's integration tests set them per
//! process through `FAILPOINTS`) fires them on every thread. This crate's unit tests run side by side
//! in one process, where `fail`'s configuration is global: there a failpoint fires only on a thread
//! that opted in (`enable_here`, which [`Faults`] does) and on the spool writer such a thread starts
//! ([`Spool::open`](crate::Spool::open) hands the choice on), so a test that injects a fault trips no
//! other test.
//!
//! `cfg(test)` is this crate's own: in the unit tests of a crate that depends on this one, the spool's
//! failpoints fire on every thread, as in a binary.

/// `fail::fail_point!` with the `failpoints` feature, nothing without it. Defined before the modules
/// that use it (see `lib.rs`).
macro_rules! failpoint {
    ($name:expr) => {
        #[cfg(feature = "failpoints")]
        $crate::failpoints::plain($name);
    };
    ($name:expr, $e:expr) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, $crate::failpoints::here(), $e);
    };
}

#[cfg(all(test, feature = "failpoints"))]
thread_local! {
    static HERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether failpoints fire on this thread.
#[cfg(feature = "failpoints")]
pub(crate) fn here() -> bool {
    #[cfg(test)]
    return HERE.with(|h| h.get());
    #[cfg(not(test))]
    true
}

/// A failpoint that returns nothing (`panic`, `sleep`, `pause` and the like).
#[cfg(feature = "failpoints")]
pub(crate) fn plain(name: &str) {
    if here() {
        fail::fail_point!(name);
    }
}

/// Lets failpoints fire on this thread (and on the spool writers it starts), or no longer.
#[cfg(all(test, feature = "failpoints"))]
pub(crate) fn enable_here(on: bool) {
    HERE.with(|h| h.set(on));
}

/// An I/O error named by a failpoint's argument (`enospc`, `eio`, `emfile`; anything else is `EIO`),
/// so tests inject the errors a real disk returns.
#[cfg(feature = "failpoints")]
pub fn injected(arg: Option<String>) -> std::io::Error {
    let errno = match arg.as_deref() {
        Some("enospc") => 28,
        Some("emfile") => 24,
        Some("edquot") => 122,
        _ => 5,
    };
    std::io::Error::from_raw_os_error(errno)
}

/// For unit tests: failpoints set as `FAILPOINTS` would set them, until the guard is dropped, firing
/// on the test's thread and on the spool writers it starts only. The tests holding one run one at a
/// time.
#[cfg(all(test, feature = "failpoints"))]
pub(crate) struct Faults(Option<fail::FailScenario<'static>>);

#[cfg(all(test, feature = "failpoints"))]
impl Faults {
    pub(crate) fn set(points: &[(&str, &str)]) -> Self {
        let scenario = fail::FailScenario::setup();
        for (name, actions) in points {
            fail::cfg(*name, actions).unwrap();
        }
        enable_here(true);
        Faults(Some(scenario))
    }
}

#[cfg(all(test, feature = "failpoints"))]
impl Drop for Faults {
    fn drop(&mut self) {
        enable_here(false);
        if let Some(scenario) = self.0.take() {
            scenario.teardown();
        }
    }
}
