//! The spool's micro-benchmarks: one append through the writer thread in each fsync mode (one at a
//! time, and 64 at once sharing a group commit), and recovery (how long [`Spool::open`] takes to check
//! what an earlier run left).
//!
//! `scripts/bench` runs them after the bridge's own (the request check, in the root's
//! `benches/micro.rs`), into the same `bench/results/micro.txt`. The group names are those the
//! appends had when they were measured from the root, so the numbers compare with earlier runs.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tim_spool::{FsyncMode, Spool, SpoolConfig, MAX_QUEUED_BYTES};

fn config(dir: &std::path::Path, fsync: FsyncMode, max_bytes: u64) -> SpoolConfig {
    SpoolConfig { dir: dir.to_owned(), fsync, max_bytes, max_queued_bytes: MAX_QUEUED_BYTES, observer: None }
}

fn close(spool: Spool, thread: tim_spool::SpoolThread) {
    spool.close();
    drop(spool);
    thread.join();
}

/// Runs `bench` against a fresh spool in a temporary directory, then closes it. With
/// `fsync=always` the first segment is the writer's zero-filled spare (as every segment after the
/// first is in a running bridge) unless `spare` is false.
fn with_spool(fsync: FsyncMode, spare: bool, bench: impl FnOnce(&Spool)) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (spool, thread) = Spool::open(config(dir.path(), fsync, 1 << 40)).unwrap();
    if fsync == FsyncMode::Always {
        let ready = dir.path().join("spare.zero");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(ready.exists(), "the spool prepared no spare segment");
        if !spare {
            std::fs::remove_file(ready).unwrap();
        }
    }
    bench(&spool);
    close(spool, thread);
}

fn spool_append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let payload = vec![b'x'; 400];
    let mut g = c.benchmark_group("spool append (400 B, one at a time)");
    g.throughput(Throughput::Elements(1));
    for (name, fsync, spare) in [
        ("fsync=never", FsyncMode::Never, false),
        ("fsync=interval", FsyncMode::Interval(Duration::from_millis(50)), false),
        ("fsync=always", FsyncMode::Always, true),
        ("fsync=always, segment file growing (no spare)", FsyncMode::Always, false),
    ] {
        with_spool(fsync, spare, |spool| {
            g.bench_function(name, |b| {
                b.iter_batched(
                    || payload.clone(),
                    |p| rt.block_on(spool.append(p)).unwrap(),
                    BatchSize::SmallInput,
                )
            });
        });
    }
    g.finish();

    // Group commit: 64 appends in flight at once share the fsyncs.
    let mut g = c.benchmark_group("spool append (400 B, 64 concurrent)");
    g.throughput(Throughput::Elements(64));
    for (name, fsync) in [("fsync=never", FsyncMode::Never), ("fsync=always", FsyncMode::Always)] {
        with_spool(fsync, true, |spool| {
            g.bench_function(name, |b| {
                b.iter(|| {
                    rt.block_on(async {
                        let appends = (0..64).map(|_| spool.append(payload.clone()));
                        for r in futures_util::future::join_all(appends).await {
                            r.unwrap();
                        }
                    })
                })
            });
        });
    }
    g.finish();
}

/// Records in the spool the recovery benchmark opens.
const RECOVERED_RECORDS: u64 = 100_000;

/// `Spool::open` on a spool an earlier run left: every record read and checked (`scan_segment`), as
/// at each start of the bridge. The spool is written once, through the spool itself (100 B payloads,
/// 4 MiB segments: three of them), and opened again and again; a clean spool is left as it was found,
/// so each open does the same work. Only the open is timed, not the close after it. An empty spool's
/// open is measured beside it: what opening costs without records (creating the writer, writing and
/// syncing the ack file twice).
fn spool_open(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let full = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let empty = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // 64 MiB: segments of a sixteenth of it.
    let max_bytes = 64 << 20;
    let (spool, thread) = Spool::open(config(full.path(), FsyncMode::Never, max_bytes)).unwrap();
    rt.block_on(async {
        let payload = vec![b'x'; 100];
        for _ in 0..RECOVERED_RECORDS / 1000 {
            let appends = (0..1000).map(|_| spool.append(payload.clone()));
            for r in futures_util::future::join_all(appends).await {
                r.unwrap();
            }
        }
    });
    close(spool, thread);
    let segments = std::fs::read_dir(full.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "seg"))
        .count();
    assert_eq!(segments, 3, "the spool was to be written in three segments");

    let mut g = c.benchmark_group("spool open (recovery)");
    g.sample_size(20);
    let opens = |b: &mut criterion::Bencher, dir: &std::path::Path, records: u64| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let (spool, thread) = Spool::open(config(dir, FsyncMode::Never, max_bytes)).unwrap();
                took += started.elapsed();
                assert_eq!(spool.pending_events(), records, "every record recovered");
                close(spool, thread);
            }
            took
        })
    };
    g.bench_function("empty", |b| opens(b, empty.path(), 0));
    g.throughput(Throughput::Elements(RECOVERED_RECORDS));
    g.bench_function("100 000 records of 100 B in 3 segments", |b| opens(b, full.path(), RECOVERED_RECORDS));
    g.finish();
}

criterion_group!(benches, spool_append, spool_open);
criterion_main!(benches);
