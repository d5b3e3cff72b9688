//! `cargo xtask mutants`: how much of the driver its tests pin down.
//!
//! cargo-mutants lists the one-token changes of `src/` and their diffs (`--list --json --diff`);
//! each is applied to a scratch copy of the workspace and tried against the tests, cheapest
//! first, until one fails:
//! 1. the host unit tests (`cargo test -p pagelock`), for the files the host build compiles (read
//!    from the test binary's dependency file, not from a list kept by hand);
//! 2. the release image, cross-built from the copy, on the test bed: check-pe with the footprint
//!    budget, the scenario suite, scheduled runs with several CPUs and a pending `WAIT`, the bed's
//!    tests of the real driver (`tests/testbed/tests/pagelock_on_the_bed.rs`) and a short fuzz run;
//! 3. the debug image (assertions on) through the scenario suite and the same tests.
//!
//! A mutant no step catches is missed, unless `tests/mutants/equivalent.toml` lists it with the
//! reason it cannot change behaviour; a listed mutant that a step catches, or that no longer
//! exists, is reported, so that the list stays true.

mod oracle;

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
    time::Instant,
};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::cross;

/// Which mutants a run takes.
#[derive(Debug, Default, clap::Args)]
pub struct Selection {
    /// Only the mutants of these files or directories (paths from the workspace root, such as
    /// `src/pending.rs`; repeatable).
    #[arg(long = "file", value_name = "PATH")]
    pub files: Vec<String>,
    /// Only shard K of N (K from 0 to N-1): mutant i of the listing is in shard i mod N.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<Shard>,
    /// Only N mutants, drawn with --seed from those the other options leave.
    #[arg(long, value_name = "N")]
    pub sample: Option<usize>,
    /// The seed of --sample.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl Selection {
    /// `n` mutants of the whole listing, drawn with `seed`.
    pub const fn sample(n: usize, seed: u64) -> Self {
        Self { files: Vec::new(), shard: None, sample: Some(n), seed }
    }

    const fn is_full(&self) -> bool {
        self.files.is_empty() && self.shard.is_none() && self.sample.is_none()
    }

    /// The mutants this selection takes from `all`, in the listing's order.
    fn apply<'a>(&self, all: &'a [Mutant]) -> Vec<&'a Mutant> {
        let mut chosen: Vec<&Mutant> = all
            .iter()
            .filter(|m| {
                self.files.is_empty()
                    || self.files.iter().any(|f| Path::new(&m.file).starts_with(f.as_str()))
            })
            .enumerate()
            .filter(|(i, _)| self.shard.is_none_or(|s| i % s.count == s.index))
            .map(|(_, m)| m)
            .collect();
        if let Some(n) = self.sample {
            let mut rng = fastrand::Rng::with_seed(self.seed);
            let mut picked = rng.choose_multiple(0..chosen.len(), n);
            picked.sort_unstable();
            chosen = picked.into_iter().map(|i| chosen[i]).collect();
        }
        chosen
    }
}

/// `K/N`: the K-th of N shards.
#[derive(Clone, Copy, Debug)]
pub struct Shard {
    index: usize,
    count: usize,
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (k, n) = s.split_once('/').ok_or("a shard is K/N, such as 0/4")?;
        let index: usize = k.parse().map_err(|e| format!("K in {s:?}: {e}"))?;
        let count: usize = n.parse().map_err(|e| format!("N in {s:?}: {e}"))?;
        if index >= count {
            return Err(format!("shard {s}: K must be below N (K counts from 0)"));
        }
        Ok(Self { index, count })
    }
}

/// One mutant as cargo-mutants lists it.
#[derive(Debug, Deserialize)]
pub struct Mutant {
    /// `file:line:column: what`, unique in a listing.
    pub name: String,
    /// The source file, from the workspace root.
    pub file: String,
    /// The change, as a unified diff of `file`.
    pub diff: String,
}

impl Mutant {
    /// The name without its line and column, so that an entry of the equivalents' list
    /// survives edits elsewhere in the file: `file: what`.
    fn key(&self) -> String {
        let mut parts = self.name.splitn(4, ':');
        let (file, what) = (parts.next().unwrap_or_default(), parts.nth(2).unwrap_or_default());
        format!("{file}:{what}")
    }
}

/// What became of one mutant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A step failed on it: its name.
    Caught(String),
    /// It does not build (for the host or for the kernel target): the compiler's refusal.
    Unviable(String),
    /// Every step passed, and the equivalents' list gives the reason none could fail.
    Equivalent,
    /// Every step passed: a change no test notices.
    Missed,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Caught(step) => write!(f, "caught by {step}"),
            Self::Unviable(why) => write!(f, "unviable ({why})"),
            Self::Equivalent => f.write_str("equivalent"),
            Self::Missed => f.write_str("MISSED"),
        }
    }
}

/// The list of equivalent mutants, with their reasons.
#[derive(Debug, Deserialize)]
struct Equivalents {
    equivalent: Vec<Equivalent>,
}

#[derive(Debug, Deserialize)]
struct Equivalent {
    /// The mutant's name without line and column (see [`Mutant::key`]).
    mutant: String,
    /// Why it cannot change what the driver does.
    reason: String,
}

/// Where the equivalent mutants are listed.
pub const EQUIVALENTS: &str = "tests/mutants/equivalent.toml";

fn equivalents(root: &Path) -> Result<BTreeMap<String, String>> {
    let path = root.join(EQUIVALENTS);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let list: Equivalents =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut out = BTreeMap::new();
    for entry in list.equivalent {
        if entry.reason.trim().is_empty() {
            bail!("{}: {} has no reason", path.display(), entry.mutant);
        }
        if out.insert(entry.mutant.clone(), entry.reason).is_some() {
            bail!("{}: {} is listed twice", path.display(), entry.mutant);
        }
    }
    Ok(out)
}

/// Every mutant of the driver crate, from cargo-mutants (`.cargo/mutants.toml` says what it
/// leaves out, and why).
fn list(root: &Path) -> Result<Vec<Mutant>> {
    oracle::ensure_cargo_mutants()?;
    let output = std::process::Command::new("cargo")
        .args(["mutants", "--list", "--json", "--diff", "--package", "pagelock"])
        .current_dir(root)
        .output()
        .context("running cargo mutants --list")?;
    if !output.status.success() {
        bail!("cargo mutants --list failed:\n{}", String::from_utf8_lossy(&output.stderr));
    }
    serde_json::from_slice(&output.stdout).context("cargo mutants' JSON listing")
}

/// The figures of a run.
#[derive(Debug, Default)]
struct Tally {
    caught: usize,
    unviable: usize,
    equivalent: usize,
    missed: usize,
}

impl Tally {
    const fn add(&mut self, verdict: &Verdict) {
        match verdict {
            Verdict::Caught(_) => self.caught += 1,
            Verdict::Unviable(_) => self.unviable += 1,
            Verdict::Equivalent => self.equivalent += 1,
            Verdict::Missed => self.missed += 1,
        }
    }

    const fn tested(&self) -> usize {
        self.caught + self.unviable + self.equivalent + self.missed
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mutants: {} tested, {} caught, {} unviable, {} equivalent, {} missed",
            self.tested(),
            self.caught,
            self.unviable,
            self.equivalent,
            self.missed
        )
    }
}

/// Runs the selected mutants and prints one line per mutant and the summary; with `readme`
/// (a full run only), writes the figures into the README. Returns whether nothing was missed
/// and the equivalents' list is true.
///
/// # Errors
/// When the listing, a build of the unmutated source or a test run cannot be done at all.
pub fn run(selection: &Selection, readme: bool) -> Result<bool> {
    if readme && !selection.is_full() {
        bail!("--readme takes the figures of a full run: no --file, --shard or --sample");
    }
    let start = Instant::now();
    let root = cross::root();
    let all = list(&root)?;
    let listed = equivalents(&root)?;
    let chosen = selection.apply(&all);
    let mut problems = stale_entries(&listed, &all, selection);
    eprintln!("mutants: {} of {} selected", chosen.len(), all.len());
    let mut oracle = oracle::Oracle::prepare(&root)?;
    let mut tally = Tally::default();
    for (i, mutant) in chosen.iter().enumerate() {
        let mut verdict = oracle.judge(mutant)?;
        let reason = listed.get(&mutant.key());
        match (&verdict, reason) {
            (Verdict::Missed, Some(_)) => verdict = Verdict::Equivalent,
            (Verdict::Caught(step), Some(_)) => problems.push(format!(
                "{}: listed in {EQUIVALENTS} but caught by {step}: take it off the list",
                mutant.key()
            )),
            _ => {}
        }
        tally.add(&verdict);
        println!("[{}/{}] {:<40} {}", i + 1, chosen.len(), verdict.to_string(), mutant.name);
    }
    for problem in &problems {
        println!("problem: {problem}");
    }
    let seconds = start.elapsed().as_secs();
    println!("{tally} ({seconds} s)");
    if readme {
        write_readme(&root, &tally, seconds)?;
    }
    Ok(tally.missed == 0 && problems.is_empty())
}

/// Entries of the equivalents' list that name no mutant of the listing (in the selected files).
fn stale_entries(
    listed: &BTreeMap<String, String>,
    all: &[Mutant],
    selection: &Selection,
) -> Vec<String> {
    listed
        .keys()
        .filter(|key| {
            let file = key.split(':').next().unwrap_or_default();
            selection.files.is_empty() || selection.files.iter().any(|f| file.starts_with(f))
        })
        .filter(|key| !all.iter().any(|m| m.key() == **key))
        .map(|key| format!("{key}: listed in {EQUIVALENTS} but no longer a mutant"))
        .collect()
}

const BEGIN: &str = "<!-- mutants:begin -->";
const END: &str = "<!-- mutants:end -->";

fn write_readme(root: &Path, tally: &Tally, seconds: u64) -> Result<()> {
    let section = format!(
        "{BEGIN}\n\
         Generated by `cargo xtask mutants --readme` (cargo-mutants {}):\n\n\
         | mutants | tested | caught | unviable | equivalent | missed | time |\n\
         |---|---|---|---|---|---|---|\n\
         | `src/` | {} | {} | {} | {} | {} | {} min |\n{END}",
        oracle::CARGO_MUTANTS_VERSION,
        tally.tested(),
        tally.caught,
        tally.unviable,
        tally.equivalent,
        tally.missed,
        seconds.div_ceil(60),
    );
    let path: PathBuf = root.join("README.md");
    let readme = std::fs::read_to_string(&path)?;
    let (Some(start), Some(end)) = (readme.find(BEGIN), readme.find(END)) else {
        bail!("README.md lacks the mutants markers");
    };
    let updated = format!("{}{section}{}", &readme[..start], &readme[end + END.len()..]);
    std::fs::write(&path, updated)?;
    println!("{section}");
    Ok(())
}
