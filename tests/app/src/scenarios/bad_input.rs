//! bad-input: every malformed request, and every open of what the device is not, gets its
//! documented status and changes nothing; the table of those requests ([`bad_requests`]) is
//! here with the scenario that sends them.

use pagelock_protocol::zerocopy::IntoBytes;
use pagelock_protocol::{
    self as protocol, BenchRequest, MAX_BENCH_ITERATIONS, MAX_RUN_ITERATIONS, PROTOCOL_VERSION,
    RunRequest, StateReply, status,
};

use crate::client::{Failure, Session, code_name};
use crate::device::{BadOpen, BadOpenOutcome, Device};
use crate::errors::status_text;

use super::recorder::{reply_text, scenario};
use super::state::{describe_changes, settled, state_changes};
use super::{Scenario, Verdict};

/// A request built to be refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRequest {
    /// What is wrong with it.
    pub what: String,
    /// The control code.
    pub code: u32,
    /// The input bytes.
    pub input: Vec<u8>,
    /// The output capacity offered.
    pub output_capacity: usize,
    /// The status the protocol documents for it.
    pub expected: i32,
}

impl BadRequest {
    fn new(what: &str, code: u32, input: &[u8], output_capacity: usize, expected: i32) -> Self {
        Self {
            what: format!("{}: {what}", code_name(code)),
            code,
            input: input.to_vec(),
            output_capacity,
            expected,
        }
    }
}

/// Every malformed request of the bad-input scenario: for each IOCTL no buffers, a short
/// input, a short output, an oversized input and bad values, then unknown codes.
#[must_use]
pub fn bad_requests() -> Vec<BadRequest> {
    use protocol::{BenchReply, LockReply, RunReply};
    let too_small = status::BUFFER_TOO_SMALL;
    let invalid = status::INVALID_PARAMETER;
    let mut requests = Vec::new();

    // The codes that take no input.
    for (code, reply) in [
        (protocol::IOCTL_QUERY_STATE, size_of::<StateReply>()),
        (protocol::IOCTL_LOCK, size_of::<LockReply>()),
        (protocol::IOCTL_UNLOCK, size_of::<LockReply>()),
    ] {
        requests.push(BadRequest::new("no buffers", code, &[], 0, too_small));
        let short = format!("output of {} bytes", reply - 1);
        requests.push(BadRequest::new(&short, code, &[], reply - 1, too_small));
        requests.push(BadRequest::new("an input of 1 byte", code, &[0], reply, invalid));
        requests.push(BadRequest::new("an input of 16 bytes", code, &[0; 16], reply, invalid));
    }

    let run = RunRequest::new(1, 7);
    let mut values = vec![
        ("0 iterations".to_owned(), RunRequest::new(0, 7).as_bytes().to_vec()),
        (
            format!("{} iterations", MAX_RUN_ITERATIONS + 1),
            RunRequest::new(MAX_RUN_ITERATIONS + 1, 7).as_bytes().to_vec(),
        ),
        ("u32::MAX iterations".to_owned(), RunRequest::new(u32::MAX, 7).as_bytes().to_vec()),
    ];
    for version in [0, PROTOCOL_VERSION + 1] {
        values.push((
            format!("version {version}"),
            RunRequest { version, ..run }.as_bytes().to_vec(),
        ));
    }
    let code = protocol::IOCTL_RUN_LOCKED;
    requests.extend(with_input(code, run.as_bytes(), size_of::<RunReply>(), values));

    let bench = BenchRequest::new(1);
    let mut values = vec![
        ("0 iterations".to_owned(), BenchRequest::new(0).as_bytes().to_vec()),
        (
            format!("{} iterations", MAX_BENCH_ITERATIONS + 1),
            BenchRequest::new(MAX_BENCH_ITERATIONS + 1).as_bytes().to_vec(),
        ),
    ];
    for version in [0, PROTOCOL_VERSION + 1] {
        let request = BenchRequest { version, ..bench };
        values.push((format!("version {version}"), request.as_bytes().to_vec()));
    }
    let code = protocol::IOCTL_BENCH;
    requests.extend(with_input(code, bench.as_bytes(), size_of::<BenchReply>(), values));

    // WAIT: refused before anything is queued.
    let wait = protocol::WaitRequest::new(100, 1);
    let values = vec![
        ("timeout 0 ms".to_owned(), protocol::WaitRequest::new(0, 1).as_bytes().to_vec()),
        (
            format!("timeout {} ms", protocol::MAX_WAIT_MS + 1),
            protocol::WaitRequest::new(protocol::MAX_WAIT_MS + 1, 1).as_bytes().to_vec(),
        ),
        (
            format!("version {}", PROTOCOL_VERSION + 1),
            protocol::WaitRequest { version: PROTOCOL_VERSION + 1, ..wait }.as_bytes().to_vec(),
        ),
    ];
    let code = protocol::IOCTL_WAIT;
    requests.extend(with_input(code, wait.as_bytes(), size_of::<protocol::WaitReply>(), values));

    // SIGNAL: an unknown scope completes nothing.
    let signal = protocol::SignalRequest::new(protocol::SignalScope::All);
    let values = [0, 3]
        .map(|scope| {
            let request = protocol::SignalRequest { scope, ..signal };
            (format!("scope {scope}"), request.as_bytes().to_vec())
        })
        .to_vec();
    let code = protocol::IOCTL_SIGNAL;
    requests.extend(with_input(
        code,
        signal.as_bytes(),
        size_of::<protocol::SignalReply>(),
        values,
    ));

    requests.extend(unknown_codes());
    requests
}

/// The bad requests of a code that takes an input: `valid` is a good one, `values` are inputs
/// of the right size with bad values.
fn with_input(
    code: u32,
    valid: &[u8],
    reply: usize,
    values: Vec<(String, Vec<u8>)>,
) -> Vec<BadRequest> {
    let too_small = status::BUFFER_TOO_SMALL;
    let invalid = status::INVALID_PARAMETER;
    let short = &valid[..valid.len() - 1];
    let mut long = valid.to_vec();
    long.push(0);
    let mut requests = vec![
        BadRequest::new("no buffers", code, &[], 0, too_small),
        BadRequest::new("no input", code, &[], reply, too_small),
        BadRequest::new(&format!("input of {} bytes", short.len()), code, short, reply, too_small),
        BadRequest::new(
            &format!("output of {} bytes", reply - 1),
            code,
            valid,
            reply - 1,
            too_small,
        ),
        BadRequest::new(&format!("input of {} bytes", long.len()), code, &long, reply, invalid),
    ];
    for (what, input) in values {
        requests.push(BadRequest::new(&what, code, &input, reply, invalid));
    }
    requests
}

/// Codes the driver does not implement, each offered buffers that would fit any reply: the
/// neighbours of its codes, and `QUERY_STATE`'s function with another device type, another
/// transfer method or other access bits.
fn unknown_codes() -> Vec<BadRequest> {
    use protocol::ctl_code;
    let query = (protocol::IOCTL_QUERY_STATE >> 2) & 0xFFF;
    let device = protocol::DEVICE_TYPE;
    let read = protocol::FILE_READ_ACCESS;
    let buffered = protocol::METHOD_BUFFERED;
    [
        ("the function after the last IOCTL", ctl_code(device, 0x805, buffered, read)),
        ("a function below the vendor range", ctl_code(device, 0x7FF, buffered, read)),
        (
            "QUERY_STATE's function on FILE_DEVICE_UNKNOWN (0x22)",
            ctl_code(0x22, query, buffered, read),
        ),
        (
            "QUERY_STATE's function on device type 0x8338",
            ctl_code(device + 1, query, buffered, read),
        ),
        ("QUERY_STATE's function with METHOD_NEITHER", ctl_code(device, query, 3, read)),
        ("QUERY_STATE's function with METHOD_OUT_DIRECT", ctl_code(device, query, 2, read)),
        ("QUERY_STATE's function with FILE_ANY_ACCESS", ctl_code(device, query, buffered, 0)),
        ("code 0", 0),
    ]
    .into_iter()
    .map(|(what, code)| BadRequest {
        what: format!("unknown code {code:#010x} ({what})"),
        code,
        input: vec![0; 16],
        output_capacity: size_of::<StateReply>(),
        expected: status::INVALID_DEVICE_REQUEST,
    })
    .collect()
}

/// Every bad open and every malformed request is refused with its documented status.
///
/// The opens ([`BadOpen`]): a name below the device, the device as a directory. The requests
/// get no reply.
///
/// After each, `QUERY_STATE` on the same handle works and shows that nothing changed. The handle
/// holds one extra lock throughout, so a wrongly accepted `LOCK` or `UNLOCK` shows in the counts.
///
/// Where an I/O manager hands out a handle before the driver has answered the create (Wine 8),
/// the driver's refusal shows as a handle it keeps no state for: `QUERY_STATE` on it is refused
/// with `STATUS_INVALID_DEVICE_STATE`. An open a transport cannot bring to the driver is noted,
/// not checked.
pub fn bad_input<D: Device + ?Sized>(device: &D) -> Verdict {
    scenario(Scenario::BadInput, device, |r, device| {
        let session = r.require("open a handle", Session::open(device))?;
        r.require("LOCK, so that a wrong UNLOCK would show", session.lock())?;
        // Earlier scenarios' closes must not show up as changes below.
        r.require("QUERY_STATE", settled(&session, 1))?;
        for open in BadOpen::ALL {
            let what = open.describe();
            let before = r.require("QUERY_STATE", session.query())?;
            let expected = status_text(open.expected());
            match device.open_bad(open)? {
                BadOpenOutcome::Refused(status) => {
                    let seen = status_text(status);
                    r.check(format!("{what}: status"), expected, seen, status == open.expected());
                }
                BadOpenOutcome::Opened(handle) => {
                    r.check(format!("{what}: status"), expected, "opened", false);
                    device.close(handle)?;
                }
                BadOpenOutcome::OpenedBeforeTheDriverAnswered(handle) => {
                    r.notes.push(format!(
                        "{what}: the I/O manager gave a handle without waiting for the driver's \
                         answer; checked instead that the driver keeps no state for it"
                    ));
                    let reply = device.control(&handle, protocol::IOCTL_QUERY_STATE, &[], 200);
                    device.close(handle)?;
                    let reply = reply?;
                    r.check(
                        format!("{what}: QUERY_STATE on the handle the I/O manager gave"),
                        status_text(status::INVALID_DEVICE_STATE),
                        reply_text(reply.status, reply.output.len()),
                        reply.status == status::INVALID_DEVICE_STATE,
                    );
                }
                BadOpenOutcome::NotDelivered(why) => r.notes.push(format!("{what}: {why}")),
            }
            // A wrongly opened handle was closed just now: its close may come later.
            let after = r.require("QUERY_STATE", settled(&session, 1))?;
            r.eq(
                format!("{what}: QUERY_STATE afterwards"),
                "no change".to_owned(),
                describe_changes(&state_changes(&before, &after)),
            );
        }
        for request in bad_requests() {
            let before = r.require("QUERY_STATE", session.query())?;
            let reply = session.raw(request.code, &request.input, request.output_capacity)?;
            r.check(
                format!("{}: status", request.what),
                status_text(request.expected),
                reply_text(reply.status, reply.output.len()),
                reply.status == request.expected && reply.output.is_empty(),
            );
            match session.query() {
                Ok(after) => {
                    r.eq(
                        format!("{}: QUERY_STATE afterwards", request.what),
                        "no change".to_owned(),
                        describe_changes(&state_changes(&before, &after)),
                    );
                }
                Err(Failure::Transport(error)) => return Err(error.into()),
                Err(failure) => {
                    r.check(
                        format!("{}: QUERY_STATE afterwards", request.what),
                        "no change",
                        format!("the handle no longer works: {failure}"),
                        false,
                    );
                }
            }
        }
        r.require("UNLOCK", session.unlock())?;
        session.close()?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Fault, Model};

    #[test]
    fn passes_against_a_driver_that_follows_the_protocol() {
        let verdict = bad_input(&Model::correct());
        assert!(verdict.passed(), "{verdict:?}");
    }

    #[test]
    fn fails_when_an_oversized_input_is_accepted() {
        let verdict = bad_input(&Model::with(Fault::AcceptsOversizedInput));
        let failed: Vec<_> = verdict.failures().map(|c| c.what.as_str()).collect();
        assert!(failed.contains(&"UNLOCK: an input of 1 byte: status"), "{failed:?}");
        assert!(failed.contains(&"UNLOCK: an input of 1 byte: QUERY_STATE afterwards"));
        assert!(failed.contains(&"RUN_LOCKED: input of 17 bytes: QUERY_STATE afterwards"));
        assert!(!failed.iter().any(|what| what.contains("no buffers")));
    }

    #[test]
    fn fails_when_a_refusal_changes_state() {
        let verdict = bad_input(&Model::with(Fault::RefusalChangesState));
        let failure = verdict.failures().next().expect("a failed check");
        assert_eq!(failure.seen, "runs 0 -> 1");
    }

    #[test]
    fn fails_when_an_open_below_the_device_or_as_a_directory_succeeds() {
        let verdict = bad_input(&Model::with(Fault::AcceptsAnyOpen));
        let failed: Vec<_> = verdict.failures().map(|c| c.what.as_str()).collect();
        for open in BadOpen::ALL {
            let what = open.describe();
            assert!(failed.contains(&format!("{what}: status").as_str()), "{failed:?}");
            // Opened and closed again: the driver's counts show the lock pair it took.
            let afterwards = format!("{what}: QUERY_STATE afterwards");
            assert!(failed.contains(&afterwards.as_str()), "{failed:?}");
        }
        assert_eq!(failed.len(), 2 * BadOpen::ALL.len(), "{failed:?}");
    }

    #[test]
    fn passes_where_the_io_manager_gives_a_handle_for_a_refused_open() {
        let verdict = bad_input(&Model::answering_opens_early(Fault::None));
        assert!(verdict.passed(), "{verdict:?}");
        let noted = verdict.notes.iter().filter(|n| n.contains("keeps no state")).count();
        assert_eq!(noted, BadOpen::ALL.len(), "{:?}", verdict.notes);
    }

    #[test]
    fn fails_when_an_open_is_accepted_behind_an_io_manager_that_does_not_wait() {
        let verdict = bad_input(&Model::answering_opens_early(Fault::AcceptsAnyOpen));
        let failed: Vec<_> = verdict.failures().map(|c| c.what.as_str()).collect();
        for open in BadOpen::ALL {
            let what = open.describe();
            let on_handle = format!("{what}: QUERY_STATE on the handle the I/O manager gave");
            assert!(failed.contains(&on_handle.as_str()), "{failed:?}");
        }
    }

    #[test]
    fn fails_when_an_unknown_code_succeeds() {
        let verdict = bad_input(&Model::with(Fault::AcceptsUnknownCodes));
        assert_eq!(verdict.failures().count(), 8);
        assert!(verdict.failures().all(|c| c.what.starts_with("unknown code")));
    }

    #[test]
    fn the_table_covers_every_ioctl_and_unknown_codes() {
        let requests = bad_requests();
        for (code, name) in protocol::IOCTLS {
            let of_code: Vec<_> = requests.iter().filter(|r| r.code == code).collect();
            assert!(of_code.iter().any(|r| r.what.ends_with("no buffers")), "{name}");
            assert!(
                of_code
                    .iter()
                    .any(|r| r.expected == status::BUFFER_TOO_SMALL && r.output_capacity > 0),
                "{name}: short output"
            );
            assert!(
                of_code.iter().any(|r| r.expected == status::INVALID_PARAMETER),
                "{name}: oversized input"
            );
        }
        let unknown: Vec<_> =
            requests.iter().filter(|r| r.expected == status::INVALID_DEVICE_REQUEST).collect();
        assert!(unknown.iter().any(|r| r.code >> 16 != protocol::DEVICE_TYPE));
        assert!(unknown.iter().any(|r| r.code & 3 == 3));
        assert!(requests.iter().all(|r| protocol::IOCTLS.iter().all(|&(code, _)| code != r.code)
            || r.expected != status::INVALID_DEVICE_REQUEST));
    }
}
