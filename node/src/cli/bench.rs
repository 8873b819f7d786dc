//! `uniqlog bench`: a closed-loop load generator for the sign-up-with-uniqueness workload,
//! with a correctness check at the end.
//!
//! N clients pull request numbers from one counter until the count or the time runs out. A
//! seeded share of requests reuses the email of an earlier one and must be refused (409).
//! Afterwards the topic is read back linearizably: the accepted events must be exactly one per
//! distinct email issued, with no email twice, so a fast but wrong cluster fails the run.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use api::client::{Client, ReadTopic};
use api::users::commands::SignupRequest;
use api::users::events::UserEvent;
use api::wire::{AppendBody, EventBody};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};
use uniqlog_node::Config;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// `POST /v1/topics/{topic}/events`: one `AccountCreated` in its own stream, checked by
    /// the topic's uniq rule on `/email`.
    Append,
    /// `POST /v1/users`: sign-up, which also hashes the password.
    Signup,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// The cluster's config file.
    #[arg(long, default_value = "cluster.toml")]
    pub config: std::path::PathBuf,
    /// Nodes to send to (`host:port`, repeatable); clients are spread over them. Default:
    /// every node in the config.
    #[arg(long)]
    pub addr: Vec<String>,
    /// What each request does: `append` (a sign-up event straight to the log) or `signup`
    /// (`POST /v1/users`, which also hashes a password).
    #[arg(long, value_enum, default_value_t = Target::Append)]
    pub target: Target,
    /// Topic of the `append` target (it needs a uniq rule on `/email` for `AccountCreated`).
    #[arg(long, default_value = "users")]
    pub topic: String,
    /// Concurrent closed-loop clients.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Measured requests (the run also stops at --max-seconds).
    #[arg(long, default_value_t = 20_000)]
    pub requests: u64,
    /// Stop after this long, whatever was sent.
    #[arg(long, default_value_t = 120)]
    pub max_seconds: u64,
    /// Unmeasured requests first, with their own emails.
    #[arg(long, default_value_t = 200)]
    pub warmup: u64,
    /// Share of requests that reuse an earlier email and must get 409.
    #[arg(long, default_value_t = 0.05)]
    pub dup_ratio: f64,
    /// Seeds which requests collide and with whom.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Pads each event's data to about this many bytes.
    #[arg(long, default_value_t = 200)]
    pub event_bytes: usize,
    /// Events per append request (`append` target), each in its own stream with its own
    /// email; a request that reuses an earlier request's emails conflicts as a whole.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Skip reading the topic back.
    #[arg(long)]
    pub no_verify: bool,
    /// Requests per second for all clients together (open loop: request i leaves i/rate
    /// seconds after the start, or as soon as a client is free); 0: each client sends its
    /// next request when the last one is answered.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Requests that fail (a node killed under them, a timeout) do not fail the run: their
    /// outcome is unknown, and the read-back judges the run instead (no acknowledged event
    /// lost, none twice, none that was not sent). For soaks with faults.
    #[arg(long)]
    pub tolerate_errors: bool,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// splitmix64: a seeded, portable sequence, so a run's collisions can be reproduced.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The email of every request: fresh, or (for a seeded share) the email of an earlier request.
fn emails(tag: &str, n: u64, dup_ratio: f64, seed: u64) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(n as usize);
    for i in 0..n {
        let r = mix(seed ^ mix(i));
        let dup = i > 0 && ((r >> 11) as f64 / (1u64 << 53) as f64) < dup_ratio;
        out.push(if dup {
            out[(mix(r) % i) as usize].clone()
        } else {
            format!("user-{tag}-{i}@example.com")
        });
    }
    out
}

/// The email of the `k`th event of a request whose email is `email`.
fn event_email(email: &str, k: usize, batch: usize) -> String {
    if batch == 1 {
        return email.to_string();
    }
    match email.split_once('@') {
        Some((local, domain)) => format!("{local}.{k}@{domain}"),
        None => format!("{email}.{k}"),
    }
}

#[derive(Default)]
struct Tally {
    accepted: AtomicU64,
    conflicts: AtomicU64,
    errors: AtomicU64,
    /// The emails of the requests answered 201: their events must be stored.
    accepted_emails: std::sync::Mutex<HashSet<String>>,
}

struct Plan {
    args: BenchArgs,
    tag: String,
    emails: Vec<String>,
    addrs: Vec<String>,
    pad: String,
}

impl Plan {
    /// The sign-up events of request `i` (`--batch` of them), each in its own stream.
    fn events(&self, i: usize, email: &str) -> AppendBody {
        let events = (0..self.args.batch)
            .map(|k| {
                let (event_type, mut data) = UserEvent::AccountCreated {
                    username: format!("u_{}_{i}_{k}", self.tag),
                    email: event_email(email, k, self.args.batch),
                    id: String::new(),
                }
                .to_parts();
                // No account id: the query read model skips events without one, so a bench
                // on `users` leaves the read model's users and counters alone.
                if let Some(fields) = data.as_object_mut() {
                    fields.remove("id");
                    fields.insert("pad".into(), json!(self.pad));
                }
                let stream = format!("user-{}-{i}-{k}", self.tag);
                EventBody::new(&event_type, Some(&stream), &data)
            })
            .collect();
        AppendBody::of(events)
    }

    fn signup(&self, i: usize, email: &str) -> SignupRequest {
        SignupRequest {
            username: format!("u_{}_{i}", self.tag),
            email: email.to_string(),
            password: "bench-password-1".into(),
        }
    }
}

/// Send request `i`, count its answer, return its latency.
async fn one(
    plan: &Plan,
    client: &Client,
    addr: &str,
    i: usize,
    email: &str,
    tally: &Tally,
) -> Duration {
    let timeout = Duration::from_secs(10);
    let start = Instant::now();
    let res = match plan.args.target {
        Target::Append => {
            let body = plan.events(i, email);
            client
                .append(addr, &plan.args.topic, &body, timeout)
                .await
                .map(drop)
        }
        Target::Signup => client
            .signup(addr, &plan.signup(i, email), None, timeout)
            .await
            .map(drop),
    };
    let took = start.elapsed();
    match res {
        Ok(()) => {
            tally
                .accepted_emails
                .lock()
                .expect("tally lock")
                .insert(email.to_string());
            tally.accepted.fetch_add(1, Ordering::Relaxed)
        }
        Err(e) if e.status() == Some(409) => tally.conflicts.fetch_add(1, Ordering::Relaxed),
        Err(e) => {
            tracing::warn!(error = %e, "request failed");
            tally.errors.fetch_add(1, Ordering::Relaxed)
        }
    };
    took
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

pub async fn run(args: BenchArgs) -> Result<()> {
    if !(0.0..1.0).contains(&args.dup_ratio) {
        bail!("--dup-ratio must be in [0, 1)");
    }
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    if args.batch == 0 || (args.batch > 1 && args.target != Target::Append) {
        bail!("--batch must be at least 1, and above 1 only for the append target");
    }
    let config = Config::load(&args.config)?;
    let addrs = if args.addr.is_empty() {
        config.nodes.iter().map(|n| n.addr.clone()).collect()
    } else {
        args.addr.clone()
    };
    let client = Client::new(api::client_transport_with(
        config.client_token(),
        config.client_tls()?,
    ));
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let tag = format!("b{}s{}", stamp, args.seed);
    let plan = Arc::new(Plan {
        emails: emails(&tag, args.requests, args.dup_ratio, args.seed),
        pad: "x".repeat(args.event_bytes.saturating_sub(90)),
        tag,
        addrs,
        args: args.clone(),
    });
    let start_offset = topic_length(&client, &plan.addrs, &args.topic).await?;

    // Warm-up: connections opened, leader known, caches warm. Its own emails, not counted.
    let warm = Arc::new(Tally::default());
    let warm_next = Arc::new(AtomicU64::new(0));
    run_clients(&plan, &client, &warm, &warm_next, args.warmup, true, None).await;

    let tally = Arc::new(Tally::default());
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let started = Instant::now();
    let mut latencies = run_clients(
        &plan,
        &client,
        &tally,
        &next,
        args.requests,
        false,
        Some(deadline),
    )
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();

    let issued = latencies.len() as u64;
    let distinct: HashSet<&str> = plan.emails[..issued as usize]
        .iter()
        .map(String::as_str)
        .collect();
    let events_of = |emails: &mut dyn Iterator<Item = &str>| -> HashSet<String> {
        emails
            .flat_map(|e| (0..args.batch).map(move |k| event_email(e, k, args.batch)))
            .collect()
    };
    let sent = events_of(&mut distinct.iter().copied());
    let accepted_emails = tally.accepted_emails.lock().expect("tally lock").clone();
    let acknowledged = events_of(&mut accepted_emails.iter().map(String::as_str));
    let accepted = tally.accepted.load(Ordering::Relaxed);
    let conflicts = tally.conflicts.load(Ordering::Relaxed);
    let errors = tally.errors.load(Ordering::Relaxed);
    let client_ok = if args.tolerate_errors {
        accepted + conflicts + errors == issued && accepted <= distinct.len() as u64
    } else {
        errors == 0
            && accepted == distinct.len() as u64
            && conflicts == issued - distinct.len() as u64
    };
    let verify = if args.no_verify || args.target != Target::Append {
        None
    } else {
        let exact = !args.tolerate_errors;
        Some(verify(&plan, &client, start_offset, &acknowledged, &sent, exact).await?)
    };
    let ops = issued as f64 / elapsed.max(1e-9);
    let events_per_s = ops * args.batch as f64;
    let summary = json!({
        "target": format!("{:?}", args.target).to_lowercase(),
        "clients": args.clients,
        "requests": issued,
        "seconds": elapsed,
        "ops_per_s": ops,
        "batch": args.batch,
        "events_per_s": events_per_s,
        "p50_ms": percentile(&latencies, 0.50),
        "p99_ms": percentile(&latencies, 0.99),
        "p999_ms": percentile(&latencies, 0.999),
        "max_ms": percentile(&latencies, 1.0),
        "accepted": accepted,
        "conflicts": conflicts,
        "errors": errors,
        "expected_accepted": distinct.len(),
        "client_check_ok": client_ok,
        "verify": verify,
    });
    if args.json {
        println!("{summary}");
    } else {
        println!(
            "{} x{}: {issued} requests in {elapsed:.1} s = {ops:.0} ops/s ({events_per_s:.0} events/s); latency ms p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}",
            summary["target"].as_str().unwrap_or(""),
            args.clients,
            summary["p50_ms"].as_f64().unwrap_or(0.0),
            summary["p99_ms"].as_f64().unwrap_or(0.0),
            summary["p999_ms"].as_f64().unwrap_or(0.0),
            summary["max_ms"].as_f64().unwrap_or(0.0),
        );
        println!(
            "accepted {accepted} (expected {}), conflicts {conflicts}, errors {errors}; read back: {}",
            distinct.len(),
            match &summary["verify"] {
                Value::Null => "skipped".to_string(),
                v => v.to_string(),
            }
        );
    }
    let verified = verify
        .as_ref()
        .is_none_or(|v| v["ok"].as_bool() == Some(true));
    if !client_ok || !verified {
        bail!("the run is not correct: see the counts above");
    }
    Ok(())
}

/// Every client loops until `count` requests were taken or the deadline passed; returns the
/// latency of each request sent.
async fn run_clients(
    plan: &Arc<Plan>,
    client: &Client,
    tally: &Arc<Tally>,
    next: &Arc<AtomicU64>,
    count: u64,
    warmup: bool,
    deadline: Option<Instant>,
) -> Vec<Duration> {
    let mut tasks = Vec::new();
    for c in 0..plan.args.clients {
        let (plan, client, tally, next) =
            (plan.clone(), client.clone(), tally.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let addr = &plan.addrs[c % plan.addrs.len()];
            let mut lat = Vec::new();
            let started = Instant::now();
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                if plan.args.rate > 0.0 && !warmup {
                    let due = started + Duration::from_secs_f64(i as f64 / plan.args.rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let email = if warmup {
                    format!("warm-{}-{i}@example.com", plan.tag)
                } else {
                    plan.emails[i as usize].clone()
                };
                // Warm-up requests get numbers after the measured ones: streams stay unique.
                let n = if warmup { plan.args.requests + i } else { i } as usize;
                lat.push(one(&plan, &client, addr, n, &email, &tally).await);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all
}

/// The topic's length before the run: the longest any node reports (a node just restarted may
/// still be catching up), trying for up to a minute until one answers (one may be down).
async fn topic_length(client: &Client, addrs: &[String], topic: &str) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (mut longest, mut last) = (None, None);
        for addr in addrs {
            match client.topics(addr, Duration::from_secs(10)).await {
                Ok(topics) => {
                    let len = topics
                        .topics
                        .iter()
                        .find(|t| t.name == topic)
                        .map_or(0, |t| t.length);
                    longest = longest.max(Some(len));
                }
                Err(e) => last = Some(e),
            }
        }
        if let Some(len) = longest {
            return Ok(len);
        }
        if Instant::now() >= deadline {
            let e = last.map_or_else(|| anyhow::anyhow!("no node in the config"), Into::into);
            return Err(e).context("GET /v1/topics on any node");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A page of the topic from the first node that serves it, trying them in turn for up to a
/// minute: a node may be down (`scripts/soak.sh` kills one every few minutes, a killed node
/// can be the first in the config).
async fn read_from_any(plan: &Plan, client: &Client, read: ReadTopic) -> Result<api::wire::Page> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut last = None;
        for addr in &plan.addrs {
            match client
                .read_topic(addr, &plan.args.topic, read, Duration::from_secs(30))
                .await
            {
                Ok(page) => return Ok(page),
                Err(e) => last = Some(e),
            }
        }
        if Instant::now() >= deadline {
            let e = last.map_or_else(|| anyhow::anyhow!("no node in the config"), Into::into);
            return Err(e).context("reading the topic back from any node");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Read the topic from `from` to its end (linearizably) and check this run's events: every
/// acknowledged one present (none `lost`), none twice (`duplicated`), none that no request
/// sent (`phantom`); when `exact` (no request failed), exactly one per distinct email sent.
async fn verify(
    plan: &Plan,
    client: &Client,
    from: u64,
    acknowledged: &HashSet<String>,
    sent: &HashSet<String>,
    exact: bool,
) -> Result<Value> {
    let marker = format!("-{}-", plan.tag);
    let mut offset = from;
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        let read = ReadTopic {
            from: offset,
            limit: 1000,
            wait_ms: 0,
            linearizable: true,
        };
        let page = read_from_any(plan, client, read).await?;
        if page.events.is_empty() {
            break;
        }
        for e in &page.events {
            if let Some(email) = e.data["email"].as_str() {
                if email.contains(&marker) && email.starts_with("user-") {
                    *seen.entry(email.to_string()).or_default() += 1;
                }
            }
        }
        offset = page.next_offset;
    }
    let stored: u64 = seen.values().sum();
    let duplicated = seen.values().filter(|n| **n > 1).count();
    let missing = acknowledged
        .iter()
        .filter(|e| !seen.contains_key(*e))
        .count();
    let phantom = seen.keys().filter(|e| !sent.contains(*e)).count();
    let exact_ok = !exact || stored == sent.len() as u64;
    Ok(json!({
        "stored": stored,
        "duplicated_emails": duplicated,
        "missing_emails": missing,
        "phantom_emails": phantom,
        "ok": duplicated == 0 && missing == 0 && phantom == 0 && exact_ok,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collisions_are_seeded_and_only_reuse_earlier_emails() {
        let a = emails("t", 10_000, 0.05, 7);
        assert_eq!(a, emails("t", 10_000, 0.05, 7));
        assert_ne!(a, emails("t", 10_000, 0.05, 8));
        let distinct: HashSet<&String> = a.iter().collect();
        let dups = a.len() - distinct.len();
        assert!((350..650).contains(&dups), "about 5 % reuse: {dups}");
        for (i, e) in a.iter().enumerate() {
            let n: usize = e
                .trim_start_matches("user-t-")
                .trim_end_matches("@example.com")
                .parse()
                .unwrap();
            assert!(n <= i, "request {i} reuses a later email {e}");
        }
        assert_eq!(
            emails("t", 100, 0.0, 1)
                .iter()
                .collect::<HashSet<_>>()
                .len(),
            100
        );
    }
}
