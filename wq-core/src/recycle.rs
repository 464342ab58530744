//! Recycled `Arc` allocations for items made on one thread and dropped on
//! another.
//!
//! A detached [`submit`](crate::Workqueue::submit), or wq-futures'
//! `spawn_blocking`, is allocated by the queueing thread and freed by the
//! worker that ran it. With glibc's allocator that pattern is dear: each
//! free lands in a fastbin shared with the allocating thread, and each
//! allocation pops it back with a contended compare-exchange and a load of
//! a line the freeing CPU just wrote. Profiles of tiny `spawn_blocking`
//! calls put a quarter of all CPU time in `malloc` and `free`
//! (BENCHMARKS.md, session 9).
//!
//! So a worker that holds the last reference to a small finished item
//! keeps the allocation and hands it back in batches, as Bonwick's
//! magazine layer does for the kernel's slab allocator:
//!
//! - each thread keeps, per type, a magazine being filled (`returned`) and
//!   one being emptied (`loaded`), each up to `MAGAZINE` (32) `Arc`s;
//! - a full magazine goes to the type's depot, on the shelf of the
//!   current CPU, which keeps at most `SHELF_FULL` (4) of them (beyond
//!   that the `Arc`s are freed), and a thread whose `loaded` ran dry swaps
//!   it for a full one there, from its own CPU's shelf first;
//! - only the depot is shared, and it is locked once per magazine, not
//!   once per item.
//!
//! Only `Arc`s nobody else can reach go in: [`give_back`] checks
//! `Arc::get_mut` (strong count 1, no weak reference), and nothing can
//! clone an `Arc` it does not hold, so [`arc`]'s `Arc::get_mut` succeeds
//! too and the new value is written in place. This module has no `unsafe`.
//!
//! Memory: only values of at most [`MAX_SIZE`] bytes are kept, at most 64
//! per thread and type for up to 16 types, and 128 per type and CPU in the
//! depots (one per type, kept for the life of the process).
//! A thread's magazines are freed when it exits.
//!
//! ```
//! use std::sync::Arc;
//!
//! let first = wq_core::recycle::arc([7u64; 4]);
//! let addr = Arc::as_ptr(&first);
//! // The last holder gives it back (here the same thread; usually a worker).
//! wq_core::recycle::give_back(first);
//! let second = wq_core::recycle::arc([9u64; 4]);
//! assert_eq!(Arc::as_ptr(&second), addr, "the allocation was reused");
//! assert_eq!(*second, [9; 4]);
//! ```

use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crossbeam_utils::CachePadded;

/// `Arc`s per magazine: how many a thread hands to or takes from a depot
/// at a time.
const MAGAZINE: usize = 32;
/// Full magazines a CPU's shelf keeps; the `Arc`s of further ones are freed.
const SHELF_FULL: usize = 4;
/// Most shelves a depot has (CPUs beyond share them).
const MAX_SHELVES: usize = 64;
/// Types a thread keeps magazines for; the oldest type's are freed to
/// make room for a new one.
const THREAD_TYPES: usize = 16;
/// Values larger than this many bytes are not recycled: a closure with a
/// big capture would otherwise keep that much memory per cached item.
pub const MAX_SIZE: usize = 256;

/// The magazines of one type that any thread may take, on one shelf per
/// CPU: a magazine filled by a worker goes to the shelf of the CPU it ran
/// on, and a thread refills from its own CPU's shelf first, so the values'
/// cache lines mostly stay where they are. (With one shared shelf, bound
/// queues fed from two CPUs lost 30% of their throughput: values crossed
/// to the other CPU and back. Bound queues no longer recycle at all; see
/// [`pays_off_on`].)
struct Depot<T> {
    shelves: Box<[Mutex<Shelf<T>>]>,
    /// Full magazines on each shelf. Written under the shelf's lock, read
    /// without it: a thread finding none moves on without locking, which
    /// matters while queueing outpaces the workers and shelves stay empty.
    stock: Box<[CachePadded<AtomicUsize>]>,
    /// The sum of `stock`, kept the same way: one load tells a thread that
    /// every shelf is empty, before it asks which CPU it is on.
    total: CachePadded<AtomicUsize>,
}

struct Shelf<T> {
    full: Vec<Vec<Arc<T>>>,
    /// Emptied magazines, so a filling thread need not allocate one.
    empty: Vec<Vec<Arc<T>>>,
}

impl<T> Depot<T> {
    fn new() -> Depot<T> {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_SHELVES);
        Depot {
            shelves: (0..n).map(|_| Mutex::new(Shelf { full: Vec::new(), empty: Vec::new() })).collect(),
            stock: (0..n).map(|_| CachePadded::new(AtomicUsize::new(0))).collect(),
            total: CachePadded::new(AtomicUsize::new(0)),
        }
    }

    /// The index of the calling thread's CPU's shelf.
    fn home(&self) -> usize {
        crate::sys::current_cpu().unwrap_or(0) % self.shelves.len()
    }

    fn lock(&self, at: usize) -> MutexGuard<'_, Shelf<T>> {
        self.shelves[at].lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One thread's magazines of one type.
struct Local<T> {
    depot: Arc<Depot<T>>,
    /// Reused first; refilled from the depot when it runs dry.
    loaded: Vec<Arc<T>>,
    /// Filled by `give_back`; goes to the depot when full.
    returned: Vec<Arc<T>>,
}

thread_local! {
    static LOCALS: RefCell<Vec<(TypeId, Box<dyn Any>)>> = const { RefCell::new(Vec::new()) };
}

/// The depot of type `T`, created on its first use and kept for the life
/// of the process (one per type ever recycled: the program's item types).
/// Looked up once per type and thread.
fn depot<T: Send + Sync + 'static>() -> Arc<Depot<T>> {
    static DEPOTS: OnceLock<Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>> = OnceLock::new();
    let mut all = DEPOTS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    let any = all.entry(TypeId::of::<T>()).or_insert_with(|| Arc::new(Depot::<T>::new())).clone();
    drop(all);
    any.downcast::<Depot<T>>().unwrap_or_else(|_| unreachable!("a depot is stored under its own type's id"))
}

/// Runs `f` on this thread's magazines of `T`; `None` while the thread is
/// exiting or when called again from inside `f` (a `Drop` that queues).
fn with_local<T: Send + Sync + 'static, R>(f: impl FnOnce(&mut Local<T>) -> R) -> Option<R> {
    LOCALS
        .try_with(|locals| {
            let mut locals = locals.try_borrow_mut().ok()?;
            let id = TypeId::of::<T>();
            let at = match locals.iter().position(|(t, _)| *t == id) {
                Some(at) => at,
                None => {
                    if locals.len() == THREAD_TYPES {
                        locals.remove(0);
                    }
                    let local = Local::<T> { depot: depot::<T>(), loaded: Vec::new(), returned: Vec::new() };
                    locals.push((id, Box::new(local)));
                    locals.len() - 1
                }
            };
            locals[at].1.downcast_mut::<Local<T>>().map(f)
        })
        .ok()
        .flatten()
}

/// Whether items queued on `wq` should use this cache: on an unbound
/// queue an item usually runs on another CPU, which then frees what the
/// queueing thread allocated. A bound queue's item runs on the queueing
/// CPU, where the allocator's own per-thread caches do as well, and the
/// cache only adds its cost (6–15% less throughput in A/B runs).
pub fn pays_off_on(wq: &crate::Workqueue) -> bool {
    wq.flags().contains(crate::Flags::UNBOUND)
}

/// An `Arc` holding `value`: `Arc::new(value)`, in an allocation given
/// back earlier (on any thread) when one of type `T` is at hand.
pub fn arc<T: Send + Sync + 'static>(value: T) -> Arc<T> {
    if size_of::<T>() > MAX_SIZE {
        return Arc::new(value);
    }
    match with_local::<T, _>(Local::take).flatten() {
        Some(mut arc) => match Arc::get_mut(&mut arc) {
            Some(slot) => {
                *slot = value;
                arc
            }
            // Cannot happen: only unreachable `Arc`s are given back.
            None => Arc::new(value),
        },
        None => Arc::new(value),
    }
}

/// Drops `arc`, keeping its allocation for a later [`arc`] if nobody else
/// holds it and `T` is small enough.
///
/// A kept value is dropped only when [`arc`] overwrites it (or its cache is
/// freed): empty it first of anything that should not outlive this call.
pub fn give_back<T: Send + Sync + 'static>(mut arc: Arc<T>) {
    if size_of::<T>() > MAX_SIZE || Arc::get_mut(&mut arc).is_none() {
        return;
    }
    // `with_local` refuses only while the thread exits or re-enters; the
    // `Arc` then drops here.
    let _ = with_local::<T, _>(move |local| local.give_back(arc));
}

impl<T> Local<T> {
    fn take(&mut self) -> Option<Arc<T>> {
        if let Some(arc) = self.loaded.pop() {
            return Some(arc);
        }
        if let Some(arc) = self.returned.pop() {
            return Some(arc);
        }
        if self.depot.total.load(Relaxed) == 0 {
            return None;
        }
        // This CPU's shelf first, then the others'.
        let home = self.depot.home();
        let n = self.depot.shelves.len();
        for at in (0..n).map(|i| (home + i) % n) {
            if self.depot.stock[at].load(Relaxed) == 0 {
                continue;
            }
            let mut shelf = self.depot.lock(at);
            let Some(full) = shelf.full.pop() else { continue };
            self.depot.stock[at].store(shelf.full.len(), Relaxed);
            self.depot.total.fetch_sub(1, Relaxed);
            let empty = std::mem::replace(&mut self.loaded, full);
            if shelf.empty.len() < SHELF_FULL {
                shelf.empty.push(empty);
            }
            drop(shelf);
            return self.loaded.pop();
        }
        None
    }

    fn give_back(&mut self, arc: Arc<T>) {
        self.returned.push(arc);
        if self.returned.len() < MAGAZINE {
            return;
        }
        let home = self.depot.home();
        let mut shelf = self.depot.lock(home);
        if shelf.full.len() == SHELF_FULL {
            drop(shelf);
            // This CPU has plenty: free this magazine's values.
            self.returned.clear();
            return;
        }
        let empty = shelf.empty.pop().unwrap_or_default();
        let full = std::mem::replace(&mut self.returned, empty);
        shelf.full.push(full);
        self.depot.stock[home].store(shelf.full.len(), Relaxed);
        self.depot.total.fetch_add(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering::SeqCst;
    use std::thread;

    /// Counts its drops in the counter it points to. Each test uses its own
    /// `N`, hence its own depot: tests run in parallel.
    struct Counted<const N: usize>(&'static AtomicUsize);

    impl<const N: usize> Drop for Counted<N> {
        fn drop(&mut self) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    #[test]
    fn a_value_given_back_on_one_thread_is_reused_on_another() {
        // One full magazine goes to the depot; until then it stays local.
        let given: Vec<_> = (0..MAGAZINE).map(|i| arc((i as u64, 1u32))).collect();
        let addrs: Vec<_> = given.iter().map(|a| Arc::as_ptr(a) as usize).collect();
        thread::spawn(move || given.into_iter().for_each(give_back)).join().unwrap();
        let reused = thread::spawn(|| {
            let a = arc((99u64, 1u32));
            assert_eq!(*a, (99, 1));
            Arc::as_ptr(&a) as usize
        })
        .join()
        .unwrap();
        assert!(addrs.contains(&reused), "a fresh allocation, though a full magazine waited in the depot");
    }

    #[test]
    fn an_arc_someone_else_holds_is_not_kept() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        let a = arc(Counted::<1>(&DROPS));
        let other = Arc::clone(&a);
        give_back(a);
        assert_eq!(DROPS.load(SeqCst), 0);
        // Were `a`'s allocation kept, this would reuse it under `other`.
        let b = arc(Counted::<1>(&DROPS));
        assert!(!Arc::ptr_eq(&b, &other));
        drop(other);
        assert_eq!(DROPS.load(SeqCst), 1, "the last holder drops it as usual");
        drop(b);
    }

    #[test]
    fn a_kept_value_is_dropped_when_overwritten_or_when_its_thread_exits() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        thread::spawn(|| {
            give_back(arc(Counted::<2>(&DROPS)));
            assert_eq!(DROPS.load(SeqCst), 0, "kept, not dropped");
            let again = arc(Counted::<2>(&DROPS));
            assert_eq!(DROPS.load(SeqCst), 1, "overwritten in place");
            give_back(again);
        })
        .join()
        .unwrap();
        assert_eq!(DROPS.load(SeqCst), 2, "the exiting thread freed what it kept");
    }

    #[test]
    fn large_values_are_not_recycled() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        // Held only to be dropped.
        #[allow(dead_code)]
        struct Large([u8; MAX_SIZE], Counted<3>);
        let a = arc(Large([0; MAX_SIZE], Counted(&DROPS)));
        give_back(a);
        assert_eq!(DROPS.load(SeqCst), 1, "dropped at once, not kept");
    }

    #[test]
    fn a_full_shelf_frees_further_magazines() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        let shelves = depot::<Counted<4>>().shelves.len();
        let shelved_at_most = SHELF_FULL * MAGAZINE * shelves;
        let n = shelved_at_most + 4 * MAGAZINE;
        let given = (0..n).map(|_| arc(Counted::<4>(&DROPS))).collect::<Vec<_>>();
        thread::spawn(move || given.into_iter().for_each(give_back)).join().unwrap();
        // The giving thread exited and freed its own magazines; the depot
        // keeps no more than its shelves hold.
        let kept = n - DROPS.load(SeqCst);
        assert!(kept <= shelved_at_most, "{kept} of {n} kept, more than {shelves} shelves hold");
        assert!(kept >= MAGAZINE, "{kept} of {n} kept: not one magazine reached the depot");
    }
}
