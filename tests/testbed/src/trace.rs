//! A picture of a run: what each emulated CPU did, step by step, as an SVG file.
//!
//! With `--trace-svg FILE` the bed records, in order, every kernel call, IRQL change, page
//! fault it resolved, spin on a held lock, switch between CPUs, IRP dispatched and completed,
//! and rule that fired, with the lock counts of the pageable sections at that moment. Only the
//! CPU holding the baton runs, so the order of the records is the order of events. The file
//! has one lane per CPU, time left to right: a lane is drawn where its CPU runs, shaded by its
//! IRQL, with its kernel calls, faults, IRPs and spin-lock holds on it; the sections' lock
//! counts run beneath, and the violation is marked across all lanes. An interleaving bug is
//! far easier to see than to read.
//!
//! Recording is async-signal-safe (the fault handler records): fixed arrays of atomics.

use std::{
    fmt::Write as _,
    path::PathBuf,
    sync::{
        OnceLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A call into an emulated kernel routine (argument: the routine's index).
    Call = 1,
    /// An IRQL change (argument: the new IRQL).
    Irql = 2,
    /// A page fault the bed resolved by paging in.
    Fault = 3,
    /// A spin on something another CPU holds.
    Spin = 4,
    /// The baton passed (argument: the CPU that runs next).
    Switch = 5,
    /// An IRP handed to the driver (argument: its major function).
    IrpBegin = 6,
    /// The driver's dispatch routine returned (argument: the major function).
    IrpEnd = 7,
    /// A rule fired (argument: its row in the rule table).
    Violation = 8,
    /// A DPC routine called.
    Dpc = 9,
}

impl Kind {
    const fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::Call,
            2 => Self::Irql,
            3 => Self::Fault,
            4 => Self::Spin,
            5 => Self::Switch,
            6 => Self::IrpBegin,
            7 => Self::IrpEnd,
            8 => Self::Violation,
            9 => Self::Dpc,
            _ => return None,
        })
    }
}

/// One record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// The CPU it happened on (`MAIN` outside a scheduled run).
    pub cpu: u8,
    /// What.
    pub kind: Kind,
    /// Its argument.
    pub arg: u16,
    /// Lock counts of up to four pageable sections, in the memory manager's order.
    pub counts: [u16; 4],
}

/// The lane of the bed's main thread, outside any scheduled run.
pub const MAIN: u8 = 0xFF;

const CAPACITY: usize = 1 << 16;

static TRACING: AtomicBool = AtomicBool::new(false);
static LEN: AtomicUsize = AtomicUsize::new(0);
static WORDS: [AtomicU64; 2 * CAPACITY] = [const { AtomicU64::new(0) }; 2 * CAPACITY];
static FILE: OnceLock<PathBuf> = OnceLock::new();
static COUNTS: OnceLock<fn() -> [u16; 4]> = OnceLock::new();

thread_local! {
    /// The lane this thread's events go to: its CPU in a scheduled run, [`MAIN`] otherwise.
    static THREAD_LANE: std::cell::Cell<u8> = const { std::cell::Cell::new(MAIN) };
}

/// Starts recording; the picture goes to `file` when the layer above calls [`write()`].
///
/// `counts` reads the lock counts of up to four pageable sections for each event
/// (async-signal-safe: events are recorded in the fault handler too).
pub fn start(file: PathBuf, counts: fn() -> [u16; 4]) {
    let _ = FILE.set(file);
    let _ = COUNTS.set(counts);
    TRACING.store(true, Ordering::Release);
}

/// Puts this thread's events in `lane` (the scheduler does, for the CPU a thread becomes).
pub fn set_lane(lane: u8) {
    THREAD_LANE.with(|l| l.set(lane));
}

/// Records an event (async-signal-safe; nothing when no trace was asked for).
pub fn record(kind: Kind, arg: u16) {
    if !TRACING.load(Ordering::Acquire) {
        return;
    }
    let cpu = THREAD_LANE.with(std::cell::Cell::get);
    let counts = COUNTS.get().map_or([0; 4], |counts| counts());
    let counts =
        counts.iter().enumerate().fold(0u64, |packed, (i, c)| packed | u64::from(*c) << (16 * i));
    let at = LEN.fetch_add(1, Ordering::AcqRel);
    if at >= CAPACITY {
        return;
    }
    let head = u64::from(cpu) << 24 | u64::from(kind as u8) << 16 | u64::from(arg);
    WORDS[2 * at].store(head, Ordering::Relaxed);
    WORDS[2 * at + 1].store(counts, Ordering::Release);
}

/// The events recorded so far (at most the first 65,536).
#[must_use]
pub fn events() -> Vec<Event> {
    let len = LEN.load(Ordering::Acquire).min(CAPACITY);
    (0..len)
        .filter_map(|i| {
            let head = WORDS[2 * i].load(Ordering::Relaxed);
            let counts = WORDS[2 * i + 1].load(Ordering::Acquire);
            let byte = |shift: u32| u8::try_from(head >> shift & 0xFF).unwrap_or(0);
            Some(Event {
                cpu: byte(24),
                kind: Kind::from_u8(byte(16))?,
                arg: u16::try_from(head & 0xFFFF).unwrap_or(0),
                counts: std::array::from_fn(|k| {
                    u16::try_from(counts >> (16 * k) & 0xFFFF).unwrap_or(0)
                }),
            })
        })
        .collect()
}

/// Writes the picture, if one was asked for: `sections` names the lock counts' lines,
/// `routine` a kernel call's argument, and `why` the violation that ended the run.
pub fn write(sections: &[String], routine: &dyn Fn(u16) -> String, why: Option<&str>) {
    let Some(file) = FILE.get() else { return };
    let picture = svg(&events(), sections, routine, why);
    if let Err(error) = std::fs::write(file, picture) {
        eprintln!("pagelock-testbed: writing {}: {error}", file.display());
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const STEP: usize = 8;
const LEFT: usize = 110;
const LANE_HEIGHT: usize = 40;
const GAP: usize = 12;
const GRAPH: usize = 90;

/// The SVG of `events`: one lane per CPU, time (event order) left to right, the lock counts of
/// `sections` beneath, the violation `why` marked.
#[must_use]
#[expect(clippy::too_many_lines, reason = "one pass over the events draws every element")]
pub fn svg(
    events: &[Event],
    sections: &[String],
    routine: &dyn Fn(u16) -> String,
    why: Option<&str>,
) -> String {
    let mut cpus: Vec<u8> = events.iter().map(|e| e.cpu).collect();
    cpus.sort_unstable();
    cpus.dedup();
    let lane_y = |cpu: u8| {
        let index = cpus.iter().position(|c| *c == cpu).unwrap_or(0);
        30 + index * (LANE_HEIGHT + GAP)
    };
    let x = |i: usize| LEFT + i * STEP;
    let width = x(events.len()) + 40;
    let graph_top = 30 + cpus.len() * (LANE_HEIGHT + GAP) + 10;
    let height = graph_top + GRAPH + 40;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" font-size="11">"#
    );
    let _ = writeln!(out, r##"<rect width="{width}" height="{height}" fill="#fff"/>"##);
    let _ = writeln!(
        out,
        r#"<text x="4" y="16">pagelock-testbed: one lane per CPU, events left to right; shade = IRQL (passive, APC, dispatch)</text>"#
    );
    let mut irql = [0u16; 256];
    let mut marked = 0usize;
    let mut held = [0u32; 256];
    for cpu in &cpus {
        let y = lane_y(*cpu);
        let label = if *cpu == MAIN { "main".to_owned() } else { format!("CPU {cpu}") };
        let _ = writeln!(
            out,
            r##"<g class="lane" data-cpu="{label}"><text x="4" y="{}">{label}</text><rect x="{LEFT}" y="{y}" width="{}" height="{LANE_HEIGHT}" fill="#f4f4f4"/></g>"##,
            y + LANE_HEIGHT / 2 + 4,
            width - LEFT - 40
        );
    }
    for (i, event) in events.iter().enumerate() {
        let cpu = usize::from(event.cpu);
        let y = lane_y(event.cpu);
        let (x0, x1) = (x(i), x(i + 1));
        if event.kind == Kind::Irql {
            irql[cpu] = event.arg;
        }
        let shade = match irql[cpu] {
            0 => "#cfe0f5",
            1 => "#9fc4ee",
            _ => "#f5a35c",
        };
        let _ = writeln!(
            out,
            r#"<rect x="{x0}" y="{y}" width="{STEP}" height="{LANE_HEIGHT}" fill="{shade}"/>"#
        );
        if held[cpu] > 0 {
            let _ = writeln!(
                out,
                r##"<rect class="spin-lock-held" x="{x0}" y="{}" width="{STEP}" height="5" fill="#c0392b"/>"##,
                y + LANE_HEIGHT - 5
            );
        }
        let mid = x0 + STEP / 2;
        match event.kind {
            Kind::Call => {
                let name = routine(event.arg);
                if name.starts_with("KeAcquireSpinLock") {
                    held[cpu] += 1;
                } else if name.starts_with("KeReleaseSpinLock") {
                    held[cpu] = held[cpu].saturating_sub(1);
                }
                let _ = writeln!(
                    out,
                    r##"<line class="call" x1="{mid}" y1="{}" x2="{mid}" y2="{}" stroke="#333"><title>{}</title></line>"##,
                    y + 4,
                    y + 16,
                    escape(&name)
                );
            }
            Kind::Fault => {
                let _ = writeln!(
                    out,
                    r##"<circle class="fault" cx="{mid}" cy="{}" r="3" fill="#8e44ad"><title>page fault, paged in</title></circle>"##,
                    y + 24
                );
            }
            Kind::Spin => {
                let _ = writeln!(
                    out,
                    r##"<rect class="spin" x="{}" y="{}" width="4" height="4" fill="#555"><title>waits for another CPU</title></rect>"##,
                    mid - 2,
                    y + 22
                );
            }
            Kind::IrpBegin | Kind::IrpEnd => {
                let (tip, fill) = if event.kind == Kind::IrpBegin {
                    ("dispatched", "#27ae60")
                } else {
                    ("returned", "#145a32")
                };
                let _ = writeln!(
                    out,
                    r#"<path class="irp" d="M{x0} {} l{STEP} 0 l-{} -7 z" fill="{fill}"><title>IRP major {:#x} {tip}</title></path>"#,
                    y + LANE_HEIGHT - 8,
                    STEP / 2,
                    event.arg
                );
            }
            Kind::Switch => {
                let _ = writeln!(
                    out,
                    r##"<line class="switch" x1="{x1}" y1="{y}" x2="{x1}" y2="{}" stroke="#999" stroke-dasharray="2,2"><title>to CPU {}</title></line>"##,
                    y + LANE_HEIGHT,
                    event.arg
                );
            }
            Kind::Violation => {
                // Labelled to the left of the line, one row down for each further violation.
                let _ = writeln!(
                    out,
                    r##"<g class="violation"><line x1="{mid}" y1="20" x2="{mid}" y2="{}" stroke="#e00" stroke-width="2"/><text x="{}" y="{}" fill="#e00" text-anchor="end">{}</text></g>"##,
                    graph_top + GRAPH,
                    mid - 4,
                    graph_top + 12 + 12 * marked,
                    escape(if marked == 0 { why.unwrap_or("violation") } else { "violation" })
                );
                marked += 1;
            }
            Kind::Dpc => {
                let _ = writeln!(
                    out,
                    r##"<circle class="dpc" cx="{mid}" cy="{}" r="3" fill="#d35400"><title>DPC routine called</title></circle>"##,
                    y + 10
                );
            }
            Kind::Irql => {}
        }
    }
    // The lock counts beneath, one line per section.
    let top = events.iter().flat_map(|e| e.counts).max().unwrap_or(0).max(1);
    let colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];
    for (k, name) in sections.iter().enumerate().take(4) {
        let points: Vec<String> = events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let y = graph_top + GRAPH - usize::from(e.counts[k]) * GRAPH / usize::from(top);
                format!("{},{y}", x(i) + STEP / 2)
            })
            .collect();
        let _ = writeln!(
            out,
            r#"<g class="lock-count" data-section="{0}"><text x="4" y="{1}" fill="{2}">{0}</text><polyline points="{3}" fill="none" stroke="{2}"/></g>"#,
            escape(name),
            graph_top + 14 + 14 * k,
            colours[k],
            points.join(" ")
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="4" y="{}">lock counts (0 to {top}) of the pageable sections beneath</text>"#,
        graph_top + GRAPH + 20
    );
    out.push_str("</svg>\n");
    out
}
