//! The seed's example execution scenarios (`workqueue.rst`) on a one-CPU
//! runtime, with sleeps announced through `wq_core::blocking`.

mod common;

use common::{one_cpu_runtime, seed_timeline, undistorted_max_active_3, SleepKind};
use wq_core::Flags;

#[test]
fn max_active_3_starts_the_next_item_whenever_the_running_one_sleeps() {
    let _cpu0 = common::cpu0();
    let rt = one_cpu_runtime();
    let q0 = rt.workqueue("q0").max_active(3).build().unwrap();
    let ev = undistorted_max_active_3(|| seed_timeline(&q0, &q0, SleepKind::Hooked));
    let log = ev.render();
    assert!(ev.at("w1", "start") >= ev.at("w0", "sleep"), "{log}");
    assert!(ev.at("w1", "start") < ev.at("w0", "wake"), "w1 must start while w0 sleeps:\n{log}");
    assert!(ev.at("w2", "start") >= ev.at("w1", "sleep"), "{log}");
    assert!(ev.at("w2", "start") < ev.at("w1", "wake"), "w2 must start while w1 sleeps:\n{log}");
    assert!(q0.stats().cm_wakeups >= 2, "{:?}", q0.stats());
}

#[test]
fn max_active_2_holds_the_third_item_until_one_finished() {
    let _cpu0 = common::cpu0();
    let rt = one_cpu_runtime();
    let q0 = rt.workqueue("q0").max_active(2).build().unwrap();
    let ev = seed_timeline(&q0, &q0, SleepKind::Hooked);
    let log = ev.render();
    assert!(ev.at("w1", "start") < ev.at("w0", "wake"), "w1 must start while w0 sleeps:\n{log}");
    let first_end = ev.at("w0", "end").min(ev.at("w1", "end"));
    assert!(ev.at("w2", "start") >= first_end, "w2 must wait for w0 or w1 to finish:\n{log}");
}

#[test]
fn cpu_intensive_items_start_as_soon_as_w0_sleeps() {
    let _cpu0 = common::cpu0();
    let rt = one_cpu_runtime();
    let q0 = rt.workqueue("q0").build().unwrap();
    let q1 = rt.workqueue("q1").flags(Flags::CPU_INTENSIVE).build().unwrap();
    let ev = seed_timeline(&q0, &q1, SleepKind::Hooked);
    let log = ev.render();
    for w in ["w1", "w2"] {
        assert!(ev.at(w, "start") >= ev.at("w0", "sleep"), "{log}");
        assert!(ev.at(w, "start") < ev.at("w0", "wake"), "{w} must start while w0 sleeps:\n{log}");
    }
    // Unlike the max_active >= 3 case, w2 does not wait for w1 to sleep.
    assert!(ev.at("w2", "start") < ev.at("w1", "sleep"), "w2 must not wait for w1:\n{log}");
}
