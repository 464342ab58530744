//! The same program compiles against `tokio::task::spawn_blocking` and
//! `wq_tokio_compat::spawn_blocking`: only the `use` line differs.
//!
//! `same_source/program.rs` is included twice below; each module supplies
//! its own `use ... spawn_blocking;` line. With the `tokio-spawn-blocking`
//! feature the crate-level `use` switches the top-level `program` too, the
//! way a migrating project would flip it.

#[cfg(feature = "tokio-spawn-blocking")]
use tokio::task::spawn_blocking;
#[cfg(not(feature = "tokio-spawn-blocking"))]
use wq_tokio_compat::spawn_blocking;

include!("same_source/program.rs");

mod with_tokio {
    use tokio::task::spawn_blocking;
    include!("same_source/program.rs");
}

mod with_compat {
    use wq_tokio_compat::spawn_blocking;
    include!("same_source/program.rs");
}

fn run(program: fn() -> Result<u64, Box<dyn std::error::Error + Send + Sync>>) -> u64 {
    program().expect("program succeeds")
}

#[test]
fn the_program_gives_the_same_answer_with_both_imports() {
    let expected = (1..=100u64).map(|i| i * i).sum::<u64>() + 6;
    assert_eq!(run(with_tokio::program), expected);
    assert_eq!(run(with_compat::program), expected);
    assert_eq!(run(program), expected);
}
