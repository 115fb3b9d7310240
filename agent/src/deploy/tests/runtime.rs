//! The runtime thread stays free: file-system steps run on the blocking
//! pool, and a timer keeps ticking through a large deploy.

#![allow(clippy::unwrap_used)]

use super::*;

/// Bytes that do not compress: a release whose download, hashing and
/// unpacking take real time.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test]
async fn heartbeats_keep_their_interval_while_a_large_release_is_unpacked_and_pruned() {
    let mut w = world();
    w.running("1");
    // Old releases to prune (keep 2): many files each.
    for v in ["0a", "0b", "0c"] {
        let files: Vec<(String, String)> = (0..200).map(|i| (format!("lib/f{i}"), format!("{v} {i}"))).collect();
        let refs: Vec<(&str, &str)> = files.iter().map(|(p, t)| (p.as_str(), t.as_str())).collect();
        w.on_disk(v, &refs);
    }
    let mut tar = Tar::new().file("VERSION", 0o644, b"2");
    for i in 0..48 {
        tar = tar.file(&format!("data/blob{i}"), 0o644, &noise(2 << 20, i + 1));
    }
    let artifact = tar.zst();
    // Twice: the fake hands out the last one by copying it, on this thread.
    w.fetch
        .0
        .lock()
        .unwrap()
        .extend([Ok(artifact.clone()), Ok(artifact.clone())]);
    let mut task = deploy_task("2", &artifact, 0);
    if let Some(task::Kind::Deploy(d)) = task.kind.as_mut() {
        d.spec.as_mut().unwrap().keep = 2;
        d.release.as_mut().unwrap().format = "tar.zst".into();
    }
    // The heartbeat's stand-in: a timer on the same (current-thread) runtime
    // as the worker, as the agent's session loop is.
    let ticks = Arc::new(Mutex::new(Vec::new()));
    let ticker = {
        let ticks = ticks.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(10));
            loop {
                every.tick().await;
                ticks.lock().unwrap().push(std::time::Instant::now());
            }
        })
    };
    tokio::task::yield_now().await;
    let started = std::time::Instant::now();
    let reports = w.run(task).await;
    let took = started.elapsed();
    ticker.abort();
    assert_eq!(end(&reports).state(), TaskState::Succeeded, "{:#?}", trail(&reports));
    let pruned = ["0a", "0b", "0c"]
        .iter()
        .filter(|v| !w.app().release(v).exists())
        .count();
    assert!(pruned >= 2, "the old releases were pruned: {:?}", w.app().releases());
    let ticks = ticks.lock().unwrap();
    let longest = ticks.windows(2).map(|p| p[1] - p[0]).max().unwrap_or(took);
    let unpack = reports
        .iter()
        .find(|p| Phase::Unpack.is(&p.phase) && p.state() == TaskState::Succeeded)
        .map(|p| Duration::from_millis(p.duration_ms))
        .unwrap();
    eprintln!("deploy {took:?}, unpack {unpack:?}, longest gap between 10 ms ticks {longest:?}");
    // A step on the runtime thread holds the timer for its whole length;
    // unpacking 96 MiB, the longest step, would stall it that long.
    assert!(
        longest * 3 < unpack,
        "the runtime thread stalled for {longest:?} during a deploy of {took:?} whose unpack took {unpack:?} ({} ticks)",
        ticks.len()
    );
}

#[tokio::test]
async fn no_file_system_step_blocks_the_runtime_thread() {
    let mut w = world();
    w.running("1");
    w.on_disk("0", &[]);
    w.app().set_previous(Some("0")).unwrap();
    let artifact = release_tarball("2");
    w.fetch.0.lock().unwrap().push_back(Ok(artifact.clone()));
    // From here on, a blocking step on this thread (the runtime's: tokio's
    // test runtime runs on it) panics.
    crate::offload::mark_runtime_thread();
    // A deploy that downloads, verifies, unpacks, swaps and prunes (keep 2).
    let mut task = deploy_task("2", &artifact, 0);
    if let Some(task::Kind::Deploy(d)) = task.kind.as_mut() {
        d.spec.as_mut().unwrap().keep = 2;
    }
    assert_eq!(end(&w.run(task).await).state(), TaskState::Succeeded);
    // One that fails after the swap and reverts; a rollback; a recovery.
    w.health.0.lock().unwrap().push_back(false);
    w.fetch.0.lock().unwrap().push_back(Ok(release_tarball("3")));
    let reports = w.run(deploy_task("3", &release_tarball("3"), 0)).await;
    assert!(end(&reports).reverted, "{:#?}", trail(&reports));
    assert_eq!(end(&w.run(rollback_task("1")).await).state(), TaskState::Succeeded);
    w.worker.recover().await;
    let mut left = w.app().releases();
    left.sort();
    assert_eq!(left, ["1", "2", "3"], "prune must have removed 0");
}
