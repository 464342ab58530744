//! tokio futures polled on wq workers, and `block_in_place`.

use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wq_core::{Runtime, Workqueue};
use wq_tokio_compat::{block_in_place, spawn_blocking_on, spawn_on, spawn_on_handle, SpawnOnError};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn tokio_tcp_listener_and_sleep_work_on_wq_workers() {
    let wq = Workqueue::builder("t_tc_spawn_on").build().unwrap();
    let rt = rt();
    let replies = rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = spawn_on(&wq, async move {
            assert!(wq_core::is_worker_thread());
            let (mut stream, _) = listener.accept().await?;
            let mut buf = [0u8; 64];
            loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<_, std::io::Error>(());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                stream.write_all(&buf[..n]).await?;
            }
        })
        .unwrap();
        let client = spawn_on(&wq, async move {
            let mut stream = TcpStream::connect(addr).await?;
            let mut replies = Vec::new();
            for i in 0..3 {
                let msg = format!("hello-{i}");
                stream.write_all(msg.as_bytes()).await?;
                let mut buf = vec![0u8; msg.len()];
                stream.read_exact(&mut buf).await?;
                replies.push(String::from_utf8(buf).unwrap());
            }
            Ok::<_, std::io::Error>(replies)
        })
        .unwrap();
        let replies = client.await.unwrap().unwrap();
        server.await.unwrap().unwrap();
        replies
    });
    assert_eq!(replies, ["hello-0", "hello-1", "hello-2"]);
}

#[test]
fn tokio_timers_fire_in_deadline_order() {
    let wq = Workqueue::builder("t_tc_timers").build().unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let rt = rt();
    rt.block_on(async {
        let spawn_timer = |name: &'static str, ms: u64| {
            let events = Arc::clone(&events);
            spawn_on(&wq, async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                events.lock().unwrap().push(name);
            })
            .unwrap()
        };
        let long = spawn_timer("long", 120);
        let short = spawn_timer("short", 40);
        long.await.unwrap();
        short.await.unwrap();
    });
    assert_eq!(*events.lock().unwrap(), ["short", "long"]);
}

#[test]
fn spawn_on_outside_a_runtime_is_a_clear_error() {
    let wq = Workqueue::builder("t_tc_no_rt").build().unwrap();
    match spawn_on(&wq, async { 1 }) {
        Err(err @ SpawnOnError::NoRuntime(_)) => {
            assert!(err.to_string().contains("spawn_on_handle"), "{err}");
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("spawned without a runtime"),
    }
}

#[test]
fn spawn_on_handle_works_from_a_plain_thread() {
    let wq = Workqueue::builder("t_tc_handle").build().unwrap();
    let rt = rt();
    let handle = spawn_on_handle(&wq, rt.handle().clone(), async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        tokio::spawn(async { 2 }).await.unwrap() * 21
    });
    assert_eq!(wq_futures::block_on(handle).unwrap(), 42);
}

#[test]
fn spawn_on_a_destroyed_queue_is_refused() {
    let wq = Workqueue::builder("t_tc_refused").build().unwrap();
    wq.destroy().unwrap();
    let rt = rt();
    let res = rt.block_on(async { spawn_on(&wq, async { 1 }).map(drop) });
    assert!(matches!(res, Err(SpawnOnError::Refused(_))));
}

#[test]
fn block_in_place_runs_everywhere() {
    // A plain thread.
    assert_eq!(block_in_place(|| 1), 1);
    // A current-thread runtime, where tokio's own would panic.
    let ct = tokio::runtime::Builder::new_current_thread().build().unwrap();
    assert_eq!(ct.block_on(async { block_in_place(|| 2) }), 2);
    // A tokio multi-thread worker: tokio's block_in_place.
    let rt = rt();
    let v = rt.block_on(async { tokio::spawn(async { block_in_place(|| 3) }).await.unwrap() });
    assert_eq!(v, 3);
    // A panic in the closure reaches the caller.
    let caught = std::panic::catch_unwind(|| block_in_place(|| panic!("bip")));
    assert!(caught.is_err());
}

#[test]
fn block_in_place_on_a_wq_worker_lets_other_items_run() {
    // One CPU, one worker running: only the hook lets the quick items run
    // while the first sleeps.
    let wrt = Runtime::builder().cpus([0]).build().unwrap();
    let wq = wrt.workqueue("t_tc_bip").build().unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let (started_tx, started_rx) = mpsc::channel();
    let slow = {
        let events = Arc::clone(&events);
        spawn_blocking_on(&wq, move || {
            started_tx.send(()).unwrap();
            block_in_place(|| std::thread::sleep(Duration::from_millis(300)));
            events.lock().unwrap().push("slow");
        })
    };
    started_rx.recv().unwrap();
    let quick: Vec<_> = (0..20)
        .map(|_| {
            let events = Arc::clone(&events);
            spawn_blocking_on(&wq, move || events.lock().unwrap().push("quick"))
        })
        .collect();
    for q in quick {
        wq_futures::block_on(q).unwrap();
    }
    wq_futures::block_on(slow).unwrap();
    let events = events.lock().unwrap();
    assert_eq!(events.len(), 21);
    assert_eq!(events.last(), Some(&"slow"), "{events:?}");
}
