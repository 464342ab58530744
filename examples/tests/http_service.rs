//! Smoke test of the HTTP service example: both backends serve every
//! request, and the ordered log queue keeps the access log in order.

use std::process::Command;

fn run(backend: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_http_service"))
        .args(["--backend", backend, "--connections", "4", "--requests", "10", "--io-ms", "1"])
        .output()
        .expect("the example runs");
    assert!(out.status.success(), "{backend}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn both_backends_serve_every_request_and_wq_keeps_the_log_in_order() {
    let wq = run("wq");
    assert!(wq.contains("backend=wq requests=40 "), "{wq}");
    assert!(wq.contains("log_lines=40 log_in_order=true"), "{wq}");
    let tokio = run("tokio");
    assert!(tokio.contains("backend=tokio requests=40 "), "{tokio}");
    assert!(tokio.contains("log_lines=40"), "{tokio}");
}
