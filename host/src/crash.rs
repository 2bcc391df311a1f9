//! The last words of a process that a plugin takes down.
//!
//! A plugin library runs inside the host's process. A panic is caught (the SDK turns it into
//! a `StageError`), but an abort, a segfault or a call to `exit` cannot be: the process ends.
//! What the host can do is say which stage was in a call when it happened. Each stage worker
//! marks its stage as "in a call" (one atomic store before and after each call into the
//! plugin); a handler for the fatal signals and an `atexit` hook print one line to stderr
//! naming the stage and its library, then let the process end as it would have.
//!
//! The handler only reads atomics and calls `write(2)`, which is async-signal-safe. The
//! signal-hook crate deliberately refuses SIGSEGV, SIGBUS, SIGILL and SIGFPE, so this uses
//! `sigaction` directly, chaining to whatever handler was there before (Rust's own, which
//! reports stack overflows).

use std::{
    cell::Cell,
    sync::{
        atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering},
        OnceLock,
    },
};

/// What is printed about one stage: "stage `name` (library /path/libx.so)".
pub struct CallSite {
    text: String,
}

/// Stages whose calls can be reported. More are still run, just not named in a crash line.
const SLOTS: usize = 256;

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: AtomicPtr<CallSite> = AtomicPtr::new(std::ptr::null_mut());
/// The call site of each slot's stage while it is in a call; null otherwise.
static IN_CALL: [AtomicPtr<CallSite>; SLOTS] = [EMPTY; SLOTS];
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);
/// Set when the host itself ends the process, so that the exit hook stays quiet.
static EXITING: AtomicBool = AtomicBool::new(false);
static INSTALLED: OnceLock<()> = OnceLock::new();

thread_local! {
    /// The slot of the stage this thread runs, if any.
    static THIS_THREAD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// A worker's handle on its slot.
pub struct CallMarker {
    slot: Option<usize>,
    site: *mut CallSite,
}

// SAFETY: the pointer is to a leaked, immutable CallSite that lives as long as the process;
// the marker only stores it into atomics.
unsafe impl Send for CallMarker {}
// SAFETY: as above; no method mutates through the pointer.
unsafe impl Sync for CallMarker {}

impl CallMarker {
    /// A slot for stage `stage` of library `library` (`built-in` for the host's own).
    pub fn new(stage: &str, library: &str) -> CallMarker {
        // Leaked on purpose: a handler may read it at any moment until the process ends.
        let site = Box::into_raw(Box::new(CallSite {
            text: format!("stage `{stage}` (library {library})"),
        }));
        let slot = NEXT_SLOT.fetch_add(1, Ordering::Relaxed);
        CallMarker {
            slot: (slot < SLOTS).then_some(slot),
            site,
        }
    }

    /// The stage is in a call on the calling thread: a crash on this thread names it first
    /// (a worker may run several stages, see `topology::worker`).
    #[inline]
    pub fn enter(&self) {
        if let Some(slot) = self.slot {
            THIS_THREAD.with(|t| t.set(slot));
            IN_CALL[slot].store(self.site, Ordering::Release);
        }
    }

    #[inline]
    pub fn leave(&self) {
        if let Some(slot) = self.slot {
            IN_CALL[slot].store(std::ptr::null_mut(), Ordering::Release);
        }
    }
}

/// The host is about to end the process on purpose (a forced exit): no "exit in a stage"
/// line.
pub fn exiting_on_purpose() {
    EXITING.store(true, Ordering::SeqCst);
}

fn write_stderr(bytes: &[u8]) {
    // SAFETY: write(2) on fd 2 with a valid buffer; async-signal-safe.
    unsafe {
        libc::write(2, bytes.as_ptr().cast(), bytes.len());
    }
}

/// Writes "host: <what> while <stage> was in a call" for every stage in a call, the one
/// on the calling thread first; or that none was.
fn report(what: &str) {
    let own = THIS_THREAD.with(Cell::get);
    let mut named = false;
    let mut line = |site: *mut CallSite, suffix: &str| {
        // SAFETY: non-null pointers in IN_CALL point to leaked CallSites (see CallMarker::new).
        let site = unsafe { &*site };
        write_stderr(b"host: ");
        write_stderr(what.as_bytes());
        write_stderr(b" while ");
        write_stderr(site.text.as_bytes());
        write_stderr(b" was in a call");
        write_stderr(suffix.as_bytes());
        write_stderr(b"\n");
        named = true;
    };
    if own < SLOTS {
        let site = IN_CALL[own].load(Ordering::Acquire);
        if !site.is_null() {
            line(site, " on the thread that failed");
        }
    }
    for (i, slot) in IN_CALL.iter().enumerate() {
        let site = slot.load(Ordering::Acquire);
        if i != own && !site.is_null() {
            line(site, "");
        }
    }
    if !named {
        write_stderr(b"host: ");
        write_stderr(what.as_bytes());
        write_stderr(b" while no stage was in a call (a plugin's own thread, or the host)\n");
    }
}

const FATAL: [(libc::c_int, &str); 5] = [
    (
        libc::SIGSEGV,
        "fatal signal SIGSEGV (invalid memory access)",
    ),
    (libc::SIGBUS, "fatal signal SIGBUS (bad memory access)"),
    (libc::SIGILL, "fatal signal SIGILL (illegal instruction)"),
    (libc::SIGFPE, "fatal signal SIGFPE (arithmetic fault)"),
    (libc::SIGABRT, "fatal signal SIGABRT (abort)"),
];

/// The handlers that were installed before ours, to hand each signal on to.
static PREVIOUS: [AtomicPtr<libc::sigaction>; FATAL.len()] = [EMPTY_ACTION; FATAL.len()];
#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_ACTION: AtomicPtr<libc::sigaction> = AtomicPtr::new(std::ptr::null_mut());

extern "C" fn on_fatal(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let Some(i) = FATAL.iter().position(|(s, _)| *s == sig) else {
        return;
    };
    report(FATAL[i].1);
    // Put the previous handler back and let the signal take its course: a fault re-runs the
    // faulting instruction, abort() raises again; either way the old handler (or the
    // default action, which ends the process) gets it.
    let previous = PREVIOUS[i].load(Ordering::Acquire);
    // SAFETY: `previous` was filled by sigaction() at installation and is never freed;
    // restoring it and, for a handler with SA_SIGINFO, calling it is what the kernel would
    // have done had ours not been installed.
    unsafe {
        if previous.is_null() {
            libc::signal(sig, libc::SIG_DFL);
            return;
        }
        libc::sigaction(sig, previous, std::ptr::null_mut());
        let handler = (*previous).sa_sigaction;
        if handler != libc::SIG_DFL && handler != libc::SIG_IGN {
            if (*previous).sa_flags & libc::SA_SIGINFO != 0 {
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    std::mem::transmute(handler);
                f(sig, info, ctx);
            } else {
                let f: extern "C" fn(libc::c_int) = std::mem::transmute(handler);
                f(sig);
            }
        }
    }
}

extern "C" fn on_exit() {
    if !EXITING.load(Ordering::SeqCst)
        && IN_CALL.iter().any(|s| !s.load(Ordering::Acquire).is_null())
    {
        report("the process is exiting (exit() called)");
    }
}

/// Installs the fatal-signal handlers and the exit hook, once. Called by the binary only: a
/// library embedding the host keeps its own signal handling.
pub fn install() {
    INSTALLED.get_or_init(|| {
        for (i, (sig, _)) in FATAL.iter().enumerate() {
            // SAFETY: plain sigaction(2) calls with zero-initialized structs; the previous
            // action is leaked so the handler can read it at any time.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_fatal as *const () as usize;
                action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut action.sa_mask);
                let previous = Box::into_raw(Box::new(std::mem::zeroed::<libc::sigaction>()));
                if libc::sigaction(*sig, &action, previous) == 0 {
                    PREVIOUS[i].store(previous, Ordering::Release);
                } else {
                    drop(Box::from_raw(previous));
                }
            }
        }
        // SAFETY: registers a plain extern "C" function.
        unsafe {
            libc::atexit(on_exit);
        }
    });
}
