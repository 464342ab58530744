// Shared by `tests/same_source.rs`: a small tokio program using spawn_blocking.
// It has no `use` line for `spawn_blocking`; the including module has.

/// Squares 1..=100 on blocking threads, checks panics and aborts, and
/// returns the sum plus the number of checks passed.
pub fn program() -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let handles: Vec<_> = (1..=100u64)
            .map(|i| spawn_blocking(move || i * i))
            .collect();
        let mut sum = 0;
        for handle in handles {
            sum += handle.await?;
        }

        let mut checks = 0;
        let err = spawn_blocking(|| panic!("expected")).await.unwrap_err();
        if err.is_panic() && !err.is_cancelled() {
            let payload = err.into_panic();
            if payload.downcast_ref::<&str>() == Some(&"expected") {
                checks += 1;
            }
        }

        let handle = spawn_blocking(|| std::thread::sleep(std::time::Duration::from_millis(30)));
        handle.abort();
        // Either it had not started (cancelled) or it ran to the end.
        match handle.await {
            Ok(()) => checks += 1,
            Err(e) if e.is_cancelled() => checks += 1,
            Err(e) => return Err(e.into()),
        }

        // Ids: the handle's, its abort handle's and its error's are one; a
        // handle can cross `catch_unwind`.
        let failing = spawn_blocking(|| panic!("expected"));
        let (id, abort_id) = (failing.id(), failing.abort_handle().id());
        let moved = std::panic::catch_unwind(move || failing).map_err(|_| "catch_unwind")?;
        let err = moved.await.unwrap_err();
        if id == abort_id && err.id() == id && id != spawn_blocking(|| ()).id() {
            checks += 1;
        }
        // The texts code may log or match on.
        if err.to_string() == format!("task {id} panicked with message \"expected\"")
            && format!("{err:?}") == format!("JoinError::Panic({id:?}, \"expected\", ...)")
        {
            checks += 1;
        }

        // The closure runs inside the runtime's context, as on tokio's
        // blocking threads: `Handle::current()`, its `block_on` and
        // `tokio::spawn` work there.
        let nested = spawn_blocking(|| {
            let handle = tokio::runtime::Handle::current();
            let spawned = tokio::spawn(async { 3 });
            handle.block_on(async {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                spawned.await
            })
        });
        if nested.await?? == 3 {
            checks += 1;
        }

        let handle = spawn_blocking(|| 7);
        while !handle.is_finished() {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        if handle.await? == 7 {
            checks += 1;
        }
        Ok(sum + checks)
    })
}
