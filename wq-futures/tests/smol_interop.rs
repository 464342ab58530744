//! Futures built on smol's reactor (async-io, async-net) run on wq executors.

use std::net::{Ipv4Addr, TcpListener as StdListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use async_net::{TcpListener, TcpStream};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use wq_core::Workqueue;
use wq_futures::{block_on, WorkqueueExt};

#[test]
fn async_io_timers_fire_in_deadline_order() {
    let wq = Workqueue::builder("t_smol_timer").build().unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let spawn_timer = |name: &'static str, ms: u64| {
        let events = Arc::clone(&events);
        wq.spawn(async move {
            let start = Instant::now();
            Timer::after(Duration::from_millis(ms)).await;
            // A timer never fires early.
            assert!(start.elapsed() >= Duration::from_millis(ms));
            events.lock().unwrap().push(name);
        })
    };
    let long = spawn_timer("long", 120);
    let short = spawn_timer("short", 40);
    block_on(long).unwrap();
    block_on(short).unwrap();
    assert_eq!(*events.lock().unwrap(), ["short", "long"]);
}

#[test]
fn tcp_echo_over_loopback_with_async_net() {
    let wq = Workqueue::builder("t_smol_tcp").build().unwrap();
    let listener = block_on(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = wq.spawn(async move {
        // Two clients, each served by its own task on the same queue.
        let mut served = Vec::new();
        for _ in 0..2 {
            let (mut stream, _) = listener.accept().await?;
            served.push(wq_core::system_wq().spawn(async move {
                let mut buf = vec![0u8; 1024];
                loop {
                    let n = stream.read(&mut buf).await?;
                    if n == 0 {
                        return Ok::<_, std::io::Error>(());
                    }
                    stream.write_all(&buf[..n]).await?;
                }
            }));
        }
        for s in served {
            s.await??;
        }
        Ok::<_, std::io::Error>(())
    });
    let client = |tag: &'static str| {
        wq.spawn(async move {
            let mut stream = TcpStream::connect(addr).await?;
            let mut replies = Vec::new();
            for i in 0..5 {
                let msg = format!("{tag}-{i}");
                stream.write_all(msg.as_bytes()).await?;
                let mut buf = vec![0u8; msg.len()];
                stream.read_exact(&mut buf).await?;
                replies.push(String::from_utf8(buf).unwrap());
            }
            Ok::<_, std::io::Error>(replies)
        })
    };
    let a = client("a");
    let b = client("b");
    let a = block_on(a).unwrap().unwrap();
    let b = block_on(b).unwrap().unwrap();
    assert_eq!(a, (0..5).map(|i| format!("a-{i}")).collect::<Vec<_>>());
    assert_eq!(b, (0..5).map(|i| format!("b-{i}")).collect::<Vec<_>>());
    block_on(server).unwrap().unwrap();
}

#[test]
fn async_io_wrapped_std_socket_works() {
    let wq = Workqueue::builder("t_smol_async").build().unwrap();
    let std_listener = StdListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = std_listener.local_addr().unwrap();
    let listener = Async::new(std_listener).unwrap();
    let server = wq.spawn(async move {
        let (mut stream, _) = listener.accept().await?;
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await?;
        stream.write_all(&buf).await?;
        Ok::<_, std::io::Error>(())
    });
    let reply = block_on(wq.spawn(async move {
        let mut stream = Async::<std::net::TcpStream>::connect(addr).await?;
        stream.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    }))
    .unwrap()
    .unwrap();
    assert_eq!(&reply, b"ping");
    block_on(server).unwrap().unwrap();
}
