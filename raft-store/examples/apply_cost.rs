//! The CPU that apply and its checkpoints cost per request, in one process, without the
//! network, the client or the log's fsync in the figure: a steadier measure than a cluster's
//! CPU per request (bench/ab.sh), for changes to the state machine alone.
//!
//! Sign-ups as the anchors' load client sends them (`AccountCreated` in a stream of its own,
//! one `user_email` claim, sequential keys), grouped into entries as a leader at 64 clients
//! groups them. Logs every entry first, then applies them in batches and checkpoints the state
//! file at the end, and reports the process's CPU time (all threads, so background checkpoints
//! count) over the apply phase, per request.
//!
//! usage: cargo run --release -p raft-store --example apply_cost [ENTRIES=5000] [PER_ENTRY=19]
//! [ENTRIES_PER_BATCH=4]

use std::time::Instant;

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use raft_store::rules::{Rules, UniqOp};
use raft_store::{
    AppendRequest, LogCommand, NewEvent, Outcome, Request, SetRules, Storage, TypeConfig, UniqClaim,
};

const RULES: &str = r#"
    [[uniq]]
    name = "user_email"
    topic = "users"
    [[uniq.rule]]
    event = "AccountCreated"
    op = "create"
    key = "/email"
"#;

/// user + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn entry(index: u64, requests: Vec<Request>) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(LogCommand {
            timestamp_ms: 1_000 + index,
            requests: requests.into(),
        }),
    }
}

fn signup(i: u64, rules_version: u64) -> Request {
    let email = format!("user-bench-{i}@example.com");
    let mut data = format!(
        r#"{{"type":"AccountCreated","email":"{email}","username":"u_bench_{i}","run":"bench","seq":{i},"pad":""#
    );
    while data.len() < 198 {
        data.push('x');
    }
    data.push_str("\"}");
    Request::Append(AppendRequest {
        topic: "users".into(),
        events: vec![NewEvent {
            event_type: "AccountCreated".into(),
            stream: Some(format!("user-bench-{i}")),
            data,
            metadata: None,
            claims: vec![UniqClaim {
                set: "user_email".into(),
                op: UniqOp::Create,
                key: email,
                old_key: None,
            }],
            secret: None,
        }],
        expected_version: Default::default(),
        idempotency: None,
        rules_version,
        reply: None,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<u64>().expect("a number"));
    let entries = args.next().unwrap_or(5_000);
    let per_entry = args.next().unwrap_or(19);
    let per_batch = args.next().unwrap_or(4) as usize;
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path()).unwrap();

    let rules: Rules = toml::from_str(RULES).unwrap();
    let set = entry(
        1,
        vec![Request::SetRules(SetRules {
            base_version: 0,
            rules,
            backfill: Vec::new(),
        })],
    );
    storage.log_and_apply(vec![set]).await.unwrap();

    let all: Vec<Entry<TypeConfig>> = (0..entries)
        .map(|e| {
            let requests = (0..per_entry)
                .map(|r| signup(e * per_entry + r, 1))
                .collect();
            entry(e + 2, requests)
        })
        .collect();
    for chunk in all.chunks(256) {
        storage.log_only(chunk.to_vec()).await.unwrap();
    }

    let (cpu, wall) = (cpu_seconds(), Instant::now());
    let mut appended = 0u64;
    // Batches of a few entries, as openraft hands them to apply under load.
    for batch in all.chunks(per_batch) {
        for response in storage.apply_only(batch.to_vec()).await.unwrap() {
            appended += response
                .outcomes
                .iter()
                .filter(|a| matches!(a.outcome, Outcome::Appended { .. }))
                .count() as u64;
        }
    }
    storage.reader.checkpoint().unwrap();
    let (cpu, wall) = (cpu_seconds() - cpu, wall.elapsed().as_secs_f64());
    let requests = entries * per_entry;
    assert_eq!(appended, requests, "every sign-up appended");
    println!(
        "{requests} requests in {entries} entries: apply and checkpoints {:.2} us CPU a request \
         ({:.2} s CPU, {:.2} s wall)",
        cpu * 1e6 / requests as f64,
        cpu,
        wall
    );
}
