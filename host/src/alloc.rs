//! Counting the host's allocations, for `host bench` (allocations per message).
//!
//! [`Counting`] wraps the global allocator. It counts only while switched on
//! ([`start_counting`]): off, an allocation costs one relaxed load more. Counts go to one of
//! a few cache-line-sized slots picked per thread, so threads allocating at once do not
//! contend on one counter. Plugin libraries allocate through their own allocator and are not
//! counted.

use std::{
    alloc::{GlobalAlloc, Layout},
    cell::Cell,
    sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
};

/// A global allocator that counts what it hands out (see the module).
pub struct Counting<A>(pub A);

static ENABLED: AtomicBool = AtomicBool::new(false);

#[repr(align(64))]
struct Slot(AtomicU64);

const SLOTS: usize = 16;
#[allow(clippy::declare_interior_mutable_const)]
const ZERO: Slot = Slot(AtomicU64::new(0));
static COUNTS: [Slot; SLOTS] = [ZERO; SLOTS];
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // Const-initialized and without a destructor: safe to touch from inside the allocator.
    static THIS_SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

#[inline]
fn count() {
    if !ENABLED.load(Relaxed) {
        return;
    }
    let slot = THIS_SLOT
        .try_with(|s| {
            if s.get() == usize::MAX {
                s.set(NEXT_SLOT.fetch_add(1, Relaxed) % SLOTS);
            }
            s.get()
        })
        .unwrap_or(0);
    COUNTS[slot].0.fetch_add(1, Relaxed);
}

// SAFETY: every method forwards to the wrapped allocator unchanged; counting touches only
// atomics and a const thread-local, neither of which allocates.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { self.0.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { self.0.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { self.0.dealloc(ptr, layout) }
    }
}

/// Starts counting (from where the count is).
pub fn start_counting() {
    ENABLED.store(true, Relaxed);
}

/// Stops counting.
pub fn stop_counting() {
    ENABLED.store(false, Relaxed);
}

/// Allocations counted so far (allocs, zeroed allocs and reallocs).
pub fn allocations() -> u64 {
    COUNTS.iter().map(|s| s.0.load(Relaxed)).sum()
}

/// Whether the process's global allocator counts (the `host` binary's does; a test binary's
/// does not).
pub fn counting_installed() -> bool {
    let before = allocations();
    start_counting();
    drop(std::hint::black_box(Box::new(0u64)));
    stop_counting();
    allocations() > before
}
