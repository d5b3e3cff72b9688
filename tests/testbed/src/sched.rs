//! Emulated processors under a seeded scheduler.
//!
//! A scheduled run gives each of its threads an emulated processor (CPU). At most one CPU runs
//! at any instant: it holds the baton. CPUs switch only at points the bed controls, where the
//! running CPU calls [`point`]: every call into an emulated kernel routine, every IRQL change,
//! every page fault the bed resolves, and every spin on a held spin lock (or a busy file
//! object). Which CPU runs next is drawn from a seed, so a run is a function of its seed: the
//! same seed gives the same interleaving, and the trace digest printed with it shows that it
//! did.
//!
//! Two policies: [`Policy::Uniform`] picks the next CPU uniformly at every point;
//! [`Policy::Pct`] gives the CPUs random priorities, always runs the highest, and lowers the
//! running CPU's priority at a few random points, as in probabilistic concurrency testing
//! (PCT), which finds bugs of small depth with a known probability.
//!
//! With one CPU running at a time, page protections are exact again: on every switch to a CPU
//! at or above `DISPATCH_LEVEL` the unlocked pageable sections are paged out anew (another CPU at
//! `PASSIVE_LEVEL` may have faulted them in), so Force IRQL checking stays on with several CPUs.
//!
//! The handoff runs inside the fault handler too (page faults, CR8 moves), so everything here is
//! async-signal-safe: atomics, fixed arrays and raw futexes, no allocation, no locks.
//!
//! Limits: a race whose window holds no kernel call (a plain read-modify-write, a CAS retry
//! loop) is never explored, nor is x86 store buffering; driver code that waits on memory
//! another CPU must change without calling the kernel cannot progress (the run's watchdog then
//! ends it).

use std::{
    cell::Cell,
    sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering},
};

/// Most CPUs of a run.
pub const MAX_CPUS: usize = 16;

/// How the next CPU is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Uniformly at random at every point.
    Uniform,
    /// Priority-based (PCT): random priorities, the highest runs, `depth` - 1 priority changes
    /// at switch points drawn among the first `steps`.
    Pct {
        /// Bug depth the schedule targets (1 to 8).
        depth: u32,
        /// The switch points a run is expected to reach: PCT's bound on finding a bug of depth
        /// `depth` holds when the change points fall within the run, so they are drawn below
        /// this (a run's report gives its switch points).
        steps: u64,
    },
}

const ABSENT: u8 = 0;
const RUNNABLE: u8 = 1;
const SPINNING: u8 = 2;
const DONE: u8 = 3;
const NONE: u32 = u32::MAX;

/// One emulated processor.
struct Cpu {
    /// Futex word: set to 1 to wake the CPU after the baton was passed to it.
    wake: AtomicU32,
    /// `ABSENT`, `RUNNABLE`, `SPINNING` or `DONE`.
    status: AtomicU8,
    /// Its priority under [`Policy::Pct`].
    priority: AtomicU32,
    /// Its waits since the last progress of the run (see [`progress`]).
    waits: AtomicU32,
}

static ACTIVE: AtomicBool = AtomicBool::new(false);
static CPUS: [Cpu; MAX_CPUS] = [const {
    Cpu {
        wake: AtomicU32::new(0),
        status: AtomicU8::new(ABSENT),
        priority: AtomicU32::new(0),
        waits: AtomicU32::new(0),
    }
}; MAX_CPUS];
static COUNT: AtomicU32 = AtomicU32::new(0);
static RUNNING: AtomicU32 = AtomicU32::new(NONE);
static RNG: AtomicU64 = AtomicU64::new(0);
static PCT: AtomicBool = AtomicBool::new(false);
static DEPTH: AtomicU32 = AtomicU32::new(0);
static STEPS: AtomicU64 = AtomicU64::new(0);
static CHANGE_POINTS: [AtomicU64; 8] = [const { AtomicU64::new(u64::MAX) }; 8];
static POINTS: AtomicU64 = AtomicU64::new(0);
static SWITCHES: AtomicU64 = AtomicU64::new(0);
static DIGEST: AtomicU64 = AtomicU64::new(FNV_OFFSET);
static SEED: AtomicU64 = AtomicU64::new(0);

const FNV_OFFSET: u64 = 0xCBF2_9CE4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01B3;

thread_local! {
    static ME: Cell<u32> = const { Cell::new(NONE) };
}

/// splitmix64: the next pseudo-random number. Only the CPU holding the baton draws.
fn draw() -> u64 {
    let mut z = RNG.load(Ordering::Relaxed).wrapping_add(0x9E37_79B9_7F4A_7C15);
    RNG.store(z, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn below(n: u32) -> u32 {
    u32::try_from(draw() % u64::from(n.max(1))).unwrap_or(0)
}

fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: FUTEX_WAIT on a live, aligned u32; a null timeout waits until woken. A spurious or
    // early return only makes the caller check again.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            std::ptr::null::<libc::timespec>(),
        );
    }
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a live, aligned u32 wakes at most one waiter.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1,
        );
    }
}

/// A choice below `n` drawn from the schedule, for decisions the scheduler makes besides the
/// next CPU (the IRQL a deferred close runs at). Only the CPU holding the baton draws.
#[must_use]
pub fn choose_below(n: u32) -> u32 {
    below(n)
}

/// Whether a scheduled run is in progress.
#[must_use]
pub fn active() -> bool {
    ACTIVE.load(Ordering::Acquire)
}

/// The emulated CPU of this thread, in a scheduled run.
#[must_use]
pub fn current_cpu() -> Option<u32> {
    let me = ME.with(Cell::get);
    (me != NONE).then_some(me)
}

fn cpu(index: u32) -> &'static Cpu {
    &CPUS[index as usize]
}

fn cpus() -> impl Iterator<Item = u32> {
    0..COUNT.load(Ordering::Relaxed)
}

/// Passes the baton to `next` and, unless it is `me`, waits until it comes back.
fn hand_over(me: u32, next: u32) {
    if next == me {
        return;
    }
    SWITCHES.fetch_add(1, Ordering::Relaxed);
    crate::trace::record(crate::trace::Kind::Switch, u16::try_from(next).unwrap_or(u16::MAX));
    RUNNING.store(next, Ordering::Release);
    cpu(next).wake.store(1, Ordering::Release);
    futex_wake(&cpu(next).wake);
    wait_for_baton(me);
}

fn wait_for_baton(me: u32) {
    let word = &cpu(me).wake;
    // The token is taken with one read-modify-write before sleeping on it, so a wake that
    // comes between the check of RUNNING and the sleep is never lost.
    while RUNNING.load(Ordering::Acquire) != me {
        if word.swap(0, Ordering::AcqRel) == 0 {
            futex_wait(word, 0);
        }
    }
    if let Some(hook) = SWITCHED_IN.get() {
        hook();
    }
}

static SWITCHED_IN: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Installs what runs on a CPU each time it is switched in.
///
/// It must be async-signal-safe, since switches happen in the fault handler too. Force IRQL
/// checking pages the unlocked sections out again for a CPU at `DISPATCH_LEVEL`. Installed by
/// the layer above.
pub fn on_switched_in(hook: fn()) {
    let _ = SWITCHED_IN.set(hook);
}

/// Chooses the CPU to run next among those `eligible`, by the policy.
fn choose(me: u32, point: u64, eligible: impl Fn(u32, u8) -> bool) -> Option<u32> {
    let candidates = || cpus().filter(|c| eligible(*c, cpu(*c).status.load(Ordering::Relaxed)));
    if PCT.load(Ordering::Relaxed) {
        if me != NONE
            && let Some(k) = CHANGE_POINTS.iter().position(|p| p.load(Ordering::Relaxed) == point)
        {
            // The k-th change point: the running CPU drops below every starting priority and
            // below the CPUs lowered at earlier change points (priorities 8 - k, all distinct).
            let k = u32::try_from(k).unwrap_or(0);
            cpu(me).priority.store(8 - k, Ordering::Relaxed);
        }
        candidates().max_by_key(|c| (cpu(*c).priority.load(Ordering::Relaxed), *c))
    } else {
        let n = u32::try_from(candidates().count()).unwrap_or(0);
        if n == 0 {
            return None;
        }
        candidates().nth(below(n) as usize)
    }
}

fn record(point: u64, me: u32, next: u32) {
    let value = point << 16 | u64::from(me) << 8 | u64::from(next);
    let digest = DIGEST.load(Ordering::Relaxed);
    DIGEST.store((digest ^ value).wrapping_mul(FNV_PRIME), Ordering::Relaxed);
}

/// The run made progress: a CPU reached a switch point or goes on from one, started or is
/// done. What a waiter waits for may have changed, so every CPU's count of waits starts again.
///
/// Between two progresses, CPUs only wait: each takes the baton from a waiter and, unless it
/// reaches a switch point (a progress), looks again at what it waits for and waits again.
fn progress() {
    for c in cpus() {
        cpu(c).waits.store(0, Ordering::Relaxed);
    }
}

/// A switch point: the running CPU may hand the baton to another. Does nothing outside a
/// scheduled run or on a thread without a CPU (async-signal-safe).
pub fn point() {
    if !active() {
        return;
    }
    let Some(me) = current_cpu() else { return };
    progress();
    let point = POINTS.fetch_add(1, Ordering::Relaxed);
    let next = choose(me, point, |_, s| s == RUNNABLE || s == SPINNING).unwrap_or(me);
    record(point, me, next);
    hand_over(me, next);
    // Going on from the point: this CPU may now change, with no switch point, what the others
    // wait for (a flag, a lock word), before it waits itself.
    progress();
}

/// Called while waiting for something another CPU holds (a spin lock, a busy file object).
///
/// Lets a CPU that is not itself waiting run, or, when all are waiting, another waiter (never
/// itself: that one then looks again). The CPU stays marked as waiting while it is switched
/// out, so waiters do not hand the baton to each other while a CPU that could make progress is
/// left out. False when no CPU can make progress: every other CPU is done, or each live CPU has
/// waited twice since the run's last progress (a CPU reached a switch point or went on from
/// one, started or finished), so each has looked again at what it waits for since anything
/// could change it, which is a deadlock. Outside a scheduled run it only spins.
///
/// Counted per CPU, not in all: a waiter whose lock was released while it was switched out can
/// go on, and has not looked yet, however often the other waiters draw each other.
#[must_use]
pub fn wait_on_other_cpu() -> bool {
    let Some(me) = current_cpu().filter(|_| active()) else {
        std::hint::spin_loop();
        return true;
    };
    cpu(me).waits.fetch_add(1, Ordering::Relaxed);
    if cpus().all(|c| {
        cpu(c).status.load(Ordering::Relaxed) == DONE || cpu(c).waits.load(Ordering::Relaxed) >= 2
    }) {
        return false;
    }
    cpu(me).status.store(SPINNING, Ordering::Relaxed);
    let point = POINTS.fetch_add(1, Ordering::Relaxed);
    // Another waiter, never this one: a waiter that drew itself would count a wait towards the
    // deadlock verdict while the others, which might make progress, never ran.
    let Some(next) = choose(me, point, |_, s| s == RUNNABLE)
        .or_else(|| choose(me, point, |c, s| s == SPINNING && c != me))
    else {
        // Every other CPU is done: nothing this one waits for can happen.
        cpu(me).status.store(RUNNABLE, Ordering::Relaxed);
        return false;
    };
    record(point, me, next);
    hand_over(me, next);
    cpu(me).status.store(RUNNABLE, Ordering::Relaxed);
    true
}

/// How long the running CPU may go without reaching a switch point before the watchdog calls
/// the hook installed with [`on_stuck`].
pub const STUCK_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

static STUCK: std::sync::OnceLock<fn(u32)> = std::sync::OnceLock::new();

/// Installs what the watchdog does when the running CPU reaches no switch point for
/// [`STUCK_AFTER`].
///
/// That is driver code waiting on memory that only another CPU could change, which cannot
/// run: the bed stops the run with a rule of its own. The hook is installed by the
/// layer above, so that this module depends on nothing that reports.
pub fn on_stuck(hook: fn(u32)) {
    let _ = STUCK.set(hook);
}

/// Whether a scheduled run happened in this process (its summary then describes it).
#[must_use]
pub fn ran() -> bool {
    COUNT.load(Ordering::Relaxed) > 0
}

/// What a scheduled run did: its seed, its switch points and switches, and the digest of every
/// decision (the same seed gives the same digest, or the run was not reproducible).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    /// The seed.
    pub seed: u64,
    /// The policy.
    pub policy: Policy,
    /// CPUs.
    pub cpus: u32,
    /// Switch points reached.
    pub points: u64,
    /// Times the baton changed hands.
    pub switches: u64,
    /// FNV-1a over every (point, from, to) decision.
    pub digest: u64,
}

/// The summary of the last scheduled run, or of the one in progress.
#[must_use]
pub fn summary() -> Summary {
    let policy = if PCT.load(Ordering::Relaxed) {
        Policy::Pct { depth: DEPTH.load(Ordering::Relaxed), steps: STEPS.load(Ordering::Relaxed) }
    } else {
        Policy::Uniform
    };
    Summary {
        seed: SEED.load(Ordering::Relaxed),
        policy,
        cpus: COUNT.load(Ordering::Relaxed),
        points: POINTS.load(Ordering::Relaxed),
        switches: SWITCHES.load(Ordering::Relaxed),
        digest: DIGEST.load(Ordering::Relaxed),
    }
}

/// Runs `work(cpu)` on `cpus` emulated CPUs, one thread each, under a seeded scheduler.
///
/// Returns their results in CPU order once all have finished. One scheduled run per
/// process at a time (each run of the bed is its own child process).
///
/// # Panics
/// When `cpus` is 0 or above [`MAX_CPUS`], or a CPU's thread panicked.
pub fn run<R: Send>(
    cpus: usize,
    seed: u64,
    policy: Policy,
    work: impl Fn(u32) -> R + Sync,
) -> Vec<R> {
    assert!((1..=MAX_CPUS).contains(&cpus), "1 to {MAX_CPUS} CPUs");
    let count = u32::try_from(cpus).unwrap_or(1);
    RNG.store(seed, Ordering::Relaxed);
    SEED.store(seed, Ordering::Relaxed);
    POINTS.store(0, Ordering::Relaxed);
    SWITCHES.store(0, Ordering::Relaxed);
    DIGEST.store(FNV_OFFSET, Ordering::Relaxed);
    COUNT.store(count, Ordering::Relaxed);
    RUNNING.store(NONE, Ordering::Relaxed);
    PCT.store(matches!(policy, Policy::Pct { .. }), Ordering::Relaxed);
    let (depth, steps) =
        if let Policy::Pct { depth, steps } = policy { (depth, steps) } else { (0, 0) };
    DEPTH.store(depth, Ordering::Relaxed);
    STEPS.store(steps, Ordering::Relaxed);
    for (i, c) in CPUS.iter().enumerate() {
        c.status.store(if i < cpus { RUNNABLE } else { ABSENT }, Ordering::Relaxed);
        c.wake.store(0, Ordering::Relaxed);
        c.waits.store(0, Ordering::Relaxed);
        // Distinct priorities above every change point's (change point k gives depth - 1 - k).
        c.priority.store(u32::try_from(i).unwrap_or(0) + 9, Ordering::Relaxed);
    }
    if let Policy::Pct { depth, steps } = policy {
        for i in (1..cpus).rev() {
            let j = below(u32::try_from(i).unwrap_or(0) + 1) as usize;
            let (a, b) = (
                CPUS[i].priority.load(Ordering::Relaxed),
                CPUS[j].priority.load(Ordering::Relaxed),
            );
            CPUS[i].priority.store(b, Ordering::Relaxed);
            CPUS[j].priority.store(a, Ordering::Relaxed);
        }
        // Distinct change points, in increasing order, within the run's expected length (as
        // many as fit in it).
        let steps = steps.max(1);
        let changes = usize::try_from(u64::from(depth.clamp(1, 8) - 1).min(steps)).unwrap_or(0);
        let mut points: Vec<u64> = Vec::new();
        while points.len() < changes {
            let at = draw() % steps;
            if !points.contains(&at) {
                points.push(at);
            }
        }
        points.sort_unstable();
        for (k, p) in CHANGE_POINTS.iter().enumerate() {
            p.store(points.get(k).copied().unwrap_or(u64::MAX), Ordering::Relaxed);
        }
    }
    let ready = AtomicU32::new(0);
    let finished = AtomicBool::new(false);
    ACTIVE.store(true, Ordering::Release);
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..count)
            .map(|me| {
                let (work, ready) = (&work, &ready);
                scope.spawn(move || {
                    ME.with(|m| m.set(me));
                    crate::trace::set_lane(u8::try_from(me).unwrap_or(crate::trace::MAIN));
                    ready.fetch_add(1, Ordering::AcqRel);
                    wait_for_baton(me);
                    // Starting: this CPU may change what the others wait for before it waits.
                    progress();
                    // Done, normally or by a panic: the baton passes on either way, so the
                    // other CPUs finish and the panic reaches the caller.
                    let _leaving = Leaving(me);
                    work(me)
                })
            })
            .collect();
        while ready.load(Ordering::Acquire) < count {
            std::thread::yield_now();
        }
        let first = choose(NONE, u64::MAX, |_, s| s == RUNNABLE).unwrap_or(0);
        RUNNING.store(first, Ordering::Release);
        cpu(first).wake.store(1, Ordering::Release);
        futex_wake(&cpu(first).wake);
        // The watchdog: a thread of the bed's, not a CPU; it watches the switch points.
        let finished = &finished;
        let watchdog = scope.spawn(move || {
            let mut last = (POINTS.load(Ordering::Relaxed), std::time::Instant::now());
            while !finished.load(Ordering::Acquire) {
                // Parked, not asleep: the end of the run unparks it, so that a short run does
                // not wait out the poll.
                std::thread::park_timeout(std::time::Duration::from_millis(20));
                let points = POINTS.load(Ordering::Relaxed);
                if points != last.0 {
                    last = (points, std::time::Instant::now());
                } else if last.1.elapsed() >= STUCK_AFTER
                    && let Some(hook) = STUCK.get()
                {
                    hook(RUNNING.load(Ordering::Acquire));
                    last.1 = std::time::Instant::now();
                }
            }
        });
        let joined: Vec<_> = threads.into_iter().map(std::thread::ScopedJoinHandle::join).collect();
        finished.store(true, Ordering::Release);
        watchdog.thread().unpark();
        let _ = watchdog.join();
        ACTIVE.store(false, Ordering::Release);
        joined.into_iter().map(|r| r.expect("a CPU's thread panicked")).collect::<Vec<R>>()
    })
}

/// Marks its CPU done and passes the baton on when dropped (at the end of the CPU's work, or
/// while a panic unwinds it).
struct Leaving(u32);

impl Drop for Leaving {
    fn drop(&mut self) {
        let me = self.0;
        cpu(me).status.store(DONE, Ordering::Relaxed);
        // Its last steps may have changed what the others wait for: they look again.
        progress();
        let point = POINTS.fetch_add(1, Ordering::Relaxed);
        match choose(me, point, |_, s| s == RUNNABLE || s == SPINNING) {
            Some(next) => {
                record(point, me, next);
                SWITCHES.fetch_add(1, Ordering::Relaxed);
                crate::trace::record(crate::trace::Kind::Switch, u16::try_from(next).unwrap_or(0));
                RUNNING.store(next, Ordering::Release);
                cpu(next).wake.store(1, Ordering::Release);
                futex_wake(&cpu(next).wake);
            }
            None => RUNNING.store(NONE, Ordering::Release),
        }
        ME.with(|m| m.set(NONE));
        crate::trace::set_lane(crate::trace::MAIN);
    }
}

/// A mutex of the bed's own, even if a panicking thread poisoned it; waiting for it yields the
/// baton instead of blocking the only running CPU, since another CPU, switched out, may hold it.
pub fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    if !active() || current_cpu().is_none() {
        return mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    }
    loop {
        match mutex.try_lock() {
            Ok(guard) => return guard,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => return poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                if !wait_on_other_cpu() {
                    return mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                }
            }
        }
    }
}

/// A mutex of the bed's own: waiting for it as [`lock`] does when `wait`, otherwise only if
/// it is free (`None` when it is held: the bugcheck path must not wait).
pub fn guard<T>(mutex: &std::sync::Mutex<T>, wait: bool) -> Option<std::sync::MutexGuard<'_, T>> {
    if wait {
        return Some(lock(mutex));
    }
    match mutex.try_lock() {
        Ok(guard) => Some(guard),
        Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Two CPUs each append their number at every point; the order is the schedule.
    fn interleaving(seed: u64, policy: Policy) -> (Vec<u32>, Summary) {
        let order = std::sync::Mutex::new(Vec::new());
        run(2, seed, policy, |me| {
            for _ in 0..50 {
                order.lock().unwrap().push(me);
                point();
            }
        });
        (order.into_inner().unwrap(), summary())
    }

    #[test]
    fn pct_lowers_the_running_cpu_at_a_point_among_the_steps_it_is_given() {
        let _turn = TURN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for seed in 1..20 {
            // One change point among the first 3 switch points: the CPU that runs first has
            // reached it by its third point, and the other then runs all of its own.
            let (order, _) = interleaving(seed, Policy::Pct { depth: 2, steps: 3 });
            let first = order.iter().take_while(|c| **c == order[0]).count();
            assert!(first <= 3, "seed {seed}: the first CPU ran {first} points: {order:?}");
            let second = order[first..].iter().take_while(|c| **c != order[0]).count();
            assert_eq!(second, 50, "seed {seed}: {order:?}");
        }
    }

    #[test]
    fn a_seed_gives_one_interleaving_and_its_digest() {
        let _turn = TURN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (a, first) = interleaving(7, Policy::Uniform);
        let (b, second) = interleaving(7, Policy::Uniform);
        assert_eq!(a, b);
        assert_eq!(first, second);
        assert_eq!(a.len(), 100);
        assert!(first.switches > 10, "uniform choice switches often: {first:?}");
        let (c, third) = interleaving(8, Policy::Uniform);
        assert!(a != c && first.digest != third.digest, "another seed, another schedule");
    }

    #[test]
    fn pct_runs_the_highest_priority_cpu_until_a_change_point() {
        let _turn = TURN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Depth 1: no change point, so one CPU runs to its end before the other starts.
        let (order, summary) = interleaving(3, Policy::Pct { depth: 1, steps: 4096 });
        assert_eq!(summary.switches, 1, "{order:?}");
        assert!(order[..50].iter().all(|c| *c == order[0]));
    }

    #[test]
    fn two_cpus_waiting_for_each_other_are_a_deadlock_not_a_livelock() {
        let _turn = TURN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Each waits for a flag only the other could set after its own wait: nobody progresses.
        for policy in [Policy::Uniform, Policy::Pct { depth: 2, steps: 4096 }] {
            let results = run(2, 9, policy, |_| {
                point();
                let mut gave_up = false;
                for _ in 0..100 {
                    if !wait_on_other_cpu() {
                        gave_up = true;
                        break;
                    }
                }
                gave_up
            });
            assert_eq!(results, [true, true], "{policy:?}");
        }
    }

    #[test]
    fn a_panicking_cpu_lets_the_others_finish_and_the_panic_through() {
        let _turn = TURN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let finished = std::sync::atomic::AtomicU32::new(0);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run(3, 4, Policy::Uniform, |me| {
                point();
                assert!(me != 1, "CPU 1 fails");
                point();
                finished.fetch_add(1, Ordering::Relaxed);
            })
        }));
        assert!(outcome.is_err());
        assert_eq!(finished.load(Ordering::Relaxed), 2);
        assert!(!active());
    }

    #[test]
    fn a_waiter_hands_the_baton_to_the_other_waiter_that_can_go_on() {
        let _turn = TURN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // CPU 1 spins on a lock CPU 0 holds; CPU 0 releases it and waits for CPU 1 to finish.
        // Both are waiting then, but CPU 1 can go on: CPU 0 must let it, whatever the seed,
        // rather than draw itself until its waits add up to a deadlock verdict.
        for seed in 0..64 {
            let held = AtomicBool::new(true);
            let finished = AtomicBool::new(false);
            let results = run(2, seed, Policy::Uniform, |me| {
                if me == 0 {
                    point();
                    held.store(false, Ordering::SeqCst);
                    while !finished.load(Ordering::SeqCst) {
                        if !wait_on_other_cpu() {
                            return false;
                        }
                    }
                } else {
                    while held.load(Ordering::SeqCst) {
                        if !wait_on_other_cpu() {
                            return false;
                        }
                    }
                    point();
                    finished.store(true, Ordering::SeqCst);
                }
                true
            });
            assert_eq!(results, [true, true], "seed {seed}");
        }
    }

    #[test]
    fn no_deadlock_verdict_while_a_waiter_that_can_go_on_has_not_looked_again() {
        let _turn = TURN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // As in seed 238 of the debug image's closing run: CPU 2 spins on a lock CPU 0 holds
        // (there, the timer's DPC on the lock another DPC held); CPU 0 releases it, and then
        // CPUs 0 and 1 wait for CPU 2 to finish. CPU 2 can go on: the other two drawing each
        // other until their waits add up must not be a deadlock verdict (there, "nothing left
        // can complete it"), since CPU 2 has not looked at its lock since it was released.
        for seed in 0..256 {
            let held = AtomicBool::new(true);
            let finished = AtomicBool::new(false);
            let results = run(3, seed, Policy::Uniform, |me| {
                match me {
                    0 => {
                        point();
                        held.store(false, Ordering::SeqCst);
                        point();
                    }
                    2 => {
                        while held.load(Ordering::SeqCst) {
                            if !wait_on_other_cpu() {
                                return false;
                            }
                        }
                        point();
                        finished.store(true, Ordering::SeqCst);
                        return true;
                    }
                    _ => {}
                }
                while !finished.load(Ordering::SeqCst) {
                    if !wait_on_other_cpu() {
                        return false;
                    }
                }
                true
            });
            assert_eq!(results, [true, true, true], "seed {seed}");
        }
    }

    #[test]
    fn waiting_for_a_cpu_that_is_done_is_a_deadlock() {
        let _turn = TURN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let results = run(2, 1, Policy::Uniform, |me| {
            if me == 0 {
                // Let the other CPU finish first, then wait for it: nobody can run.
                while cpu(1).status.load(Ordering::Relaxed) != DONE {
                    point();
                }
                wait_on_other_cpu()
            } else {
                true
            }
        });
        assert_eq!(results, [false, true]);
    }
}
