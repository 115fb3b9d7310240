//! The agent runs on one runtime thread, which must stay free for
//! heartbeats and watchdog pings: a file-system step that can block for long
//! (fsync, rename, directory removal, unpacking, hashing) belongs on the
//! blocking pool (`spawn_blocking`). Each such step starts with
//! [`blocking_step`]; in tests, a thread marked as the runtime's makes it
//! panic, so a step that slipped back onto the runtime fails a test instead
//! of delaying heartbeats in production.

#[cfg(test)]
thread_local! {
    static RUNTIME_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks this thread as a runtime thread until it ends: a blocking step on
/// it panics (tests only).
#[cfg(test)]
pub fn mark_runtime_thread() {
    RUNTIME_THREAD.with(|m| m.set(true));
}

/// Called first by every file-system step that may block.
#[inline]
pub fn blocking_step(what: &str) {
    #[cfg(test)]
    RUNTIME_THREAD.with(|m| {
        assert!(
            !m.get(),
            "{what} ran on the runtime thread; run it on the blocking pool (spawn_blocking)"
        )
    });
    #[cfg(not(test))]
    let _ = what;
}

/// Runs a file-system step on the blocking pool, so the runtime thread
/// keeps serving heartbeats.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
