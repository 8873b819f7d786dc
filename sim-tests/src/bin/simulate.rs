//! The seed runner: one whole simulation per seed (safety phase under seeded faults, liveness
//! phase, checkers), a block per run, totals at the end, and for every failure the seed and the
//! command that replays it.
//!
//! ```text
//! CARGO_TARGET_DIR=target-madsim RUSTFLAGS="--cfg madsim" \
//!     cargo run -p sim-tests --bin simulate -- --seeds 1..500
//! ```
//!
//! Options: `--seeds A..B` (B excluded) or `--seeds N`; `--nodes 3|5`; `--safety-s S` (length
//! of the safety phase, default 30); `--faults K,K,..` (only these episode kinds: crash,
//! power_cut, pause, minority, isolated_leader, no_quorum, asymmetric, flapping, torn_write,
//! fsync_error, corruption, membership); `--jobs J` (runs at once, default: the number of
//! cores); `--verbose` (every run's fault episodes); `--fail-fast`; `--plant <bug>` (plant a
//! known bug, `sim_tests::planted`; `--help` lists them; each failing run then names the
//! checkers that caught it, and the totals say whether the bug was caught at all);
//! `--twice-every N` (default 100; 0: never): every seed divisible by N runs twice, and the
//! two trace hashes must be equal, or the run fails (`determinism`): a replay that does not
//! replay is a bug of the simulation.
//!
//! Every seed runs in its own child process (this binary with `--child`): tokio's `select!`
//! and `watch` draw from a thread-local generator seeded with a process-wide counter, so a
//! second simulation in one process does not replay the first. In a fresh process a seed is
//! exactly reproducible, which is what the replay command relies on.

#[cfg(not(madsim))]
fn main() {
    eprintln!(
        "simulate runs only in the madsim build:\n  CARGO_TARGET_DIR=target-madsim \
         RUSTFLAGS=\"--cfg madsim\" cargo run -p sim-tests --bin simulate -- --seeds 1..500"
    );
    std::process::exit(2);
}

#[cfg(madsim)]
fn main() {
    runner::main()
}

#[cfg(madsim)]
mod runner {
    use std::collections::BTreeMap;
    use std::io::Write;
    use std::process::{Command, Stdio};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use serde_json::{json, Value};
    use sim_tests::nemesis::FaultKind;
    use sim_tests::planted::{self, Bug};
    use sim_tests::run::{simulate, RunResult, RunSpec};

    /// The line a child prints last, with its figures as JSON.
    const RESULT_TAG: &str = "SIMRESULT ";

    #[derive(Clone)]
    struct Args {
        seeds: std::ops::Range<u64>,
        nodes: usize,
        safety_s: Option<u64>,
        faults: Option<Vec<FaultKind>>,
        plant: Option<Bug>,
        jobs: usize,
        verbose: bool,
        fail_fast: bool,
        child: bool,
        twice_every: u64,
    }

    fn usage(msg: &str) -> ! {
        eprintln!(
            "{msg}\nusage: simulate [--seeds A..B | --seeds N] [--nodes 3|5] [--safety-s S] \
             [--faults K,K,..] [--jobs J] [--verbose] [--fail-fast] [--plant BUG] \
             [--twice-every N]\n  \
             fault kinds: {}\n  bugs: {}",
            FaultKind::ALL.map(FaultKind::name).join(" "),
            Bug::all().map(Bug::name).collect::<Vec<_>>().join(" ")
        );
        std::process::exit(2);
    }

    fn parse_args() -> Args {
        let mut args = Args {
            seeds: 1..11,
            nodes: 3,
            safety_s: None,
            faults: None,
            plant: None,
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            verbose: false,
            fail_fast: false,
            child: false,
            twice_every: 100,
        };
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .unwrap_or_else(|| usage(&format!("{name} needs a value")))
            };
            match a.as_str() {
                "--seeds" => {
                    let v = value("--seeds");
                    args.seeds = match v.split_once("..") {
                        Some((a, b)) => {
                            let a = a.parse().unwrap_or_else(|_| usage("bad --seeds"));
                            let b = b.parse().unwrap_or_else(|_| usage("bad --seeds"));
                            a..b
                        }
                        None => {
                            let n = v.parse().unwrap_or_else(|_| usage("bad --seeds"));
                            n..n + 1
                        }
                    };
                }
                "--nodes" => {
                    args.nodes = value("--nodes")
                        .parse()
                        .unwrap_or_else(|_| usage("bad --nodes"));
                    if args.nodes != 3 && args.nodes != 5 {
                        usage("--nodes is 3 or 5");
                    }
                }
                "--safety-s" => {
                    args.safety_s = Some(
                        value("--safety-s")
                            .parse()
                            .unwrap_or_else(|_| usage("bad --safety-s")),
                    )
                }
                "--faults" => {
                    let v = value("--faults");
                    let kinds: Vec<FaultKind> = v
                        .split(',')
                        .map(|k| {
                            FaultKind::from_name(k.trim())
                                .unwrap_or_else(|| usage(&format!("unknown fault kind {k:?}")))
                        })
                        .collect();
                    args.faults = Some(kinds);
                }
                "--plant" => {
                    let v = value("--plant");
                    args.plant = Some(
                        Bug::from_name(&v).unwrap_or_else(|| usage(&format!("unknown bug {v:?}"))),
                    );
                }
                "--jobs" | "-j" => {
                    args.jobs = value("--jobs")
                        .parse()
                        .ok()
                        .filter(|&j| j > 0)
                        .unwrap_or_else(|| usage("bad --jobs"))
                }
                "--twice-every" => {
                    args.twice_every = value("--twice-every")
                        .parse()
                        .unwrap_or_else(|_| usage("bad --twice-every"))
                }
                "--verbose" | "-v" => args.verbose = true,
                "--fail-fast" => args.fail_fast = true,
                "--child" => args.child = true,
                "--help" | "-h" => usage("simulate: the seed runner"),
                other => usage(&format!("unknown argument {other:?}")),
            }
        }
        args
    }

    fn common_flags(args: &Args) -> Vec<String> {
        let mut out = Vec::new();
        if args.nodes != 3 {
            out.extend(["--nodes".to_string(), args.nodes.to_string()]);
        }
        if let Some(s) = args.safety_s {
            out.extend(["--safety-s".to_string(), s.to_string()]);
        }
        if let Some(kinds) = &args.faults {
            let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
            out.extend(["--faults".to_string(), names.join(",")]);
        }
        if let Some(bug) = args.plant {
            out.extend(["--plant".to_string(), bug.name().to_string()]);
        }
        out
    }

    fn replay(args: &Args, seed: u64) -> String {
        format!(
            // The build CI runs the seeds with (optimised, debug assertions on).
            "scripts/simulate.sh --seeds {seed} --verbose {}",
            common_flags(args).join(" ")
        )
        .trim_end()
        .to_string()
    }

    fn spec(args: &Args) -> RunSpec {
        let mut spec = RunSpec {
            nodes: args.nodes,
            ..RunSpec::default()
        };
        if let Some(s) = args.safety_s {
            spec.nemesis.duration = Duration::from_secs(s);
        }
        if let Some(kinds) = &args.faults {
            spec.nemesis.kinds = kinds.clone();
        }
        spec
    }

    /// Child: run one seed in this process, print its block and its result line.
    fn child(args: &Args) {
        let seed = args.seeds.start;
        let spec = spec(args);
        // Every node of this process's cluster runs with it (one process per seed).
        planted::plant(args.plant);
        let wall = Instant::now();
        let r = std::thread::spawn(move || {
            let mut rt =
                madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
            rt.set_time_limit(Duration::from_secs(1800));
            rt.block_on(simulate(spec))
        })
        .join()
        .unwrap_or_else(|e| {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic without a message".into());
            println!("seed {seed} FAIL (panic): {msg}");
            std::process::exit(101);
        });
        print_block(&r, wall.elapsed(), args.verbose);
        let result = json!({
            "seed": r.seed,
            "ok": r.ok(),
            "sim_ms": r.sim_ms,
            "liveness_ms": r.liveness_ms,
            "trace_hash": format!("{:016x}", r.trace_hash),
            "faults": r.faults.counts,
            "messages": r.messages,
            "disk": r.disk,
            "figures": r.figures(),
            "caught_by": r.caught_by(),
        });
        println!("{RESULT_TAG}{result}");
        let _ = std::io::stdout().flush();
    }

    fn figures_line(figures: &[(String, u64)]) -> String {
        figures
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn print_block(r: &RunResult, wall: Duration, verbose: bool) {
        let status = if r.ok() { "ok" } else { "FAIL" };
        let figures: Vec<(String, u64)> = r
            .figures()
            .into_iter()
            .map(|(k, n)| (k.to_string(), n))
            .collect();
        println!(
            "seed {} {status} sim={:.1}s liveness={:.1}s wall={:.1}s trace={:016x} faults[{}] {}",
            r.seed,
            r.sim_ms as f64 / 1000.0,
            r.liveness_ms as f64 / 1000.0,
            wall.as_secs_f64(),
            r.trace_hash,
            r.faults,
            figures_line(&figures)
        );
        if verbose || !r.ok() {
            for (kind, rates) in &r.faults.rates {
                println!("    message faults {kind}: {rates}");
            }
            if !r.messages.is_empty() {
                println!("    messages: {:?}", r.messages);
            }
            println!("    disks: {:?}", r.disk);
            for l in &r.faults.lines {
                println!("    {l}");
            }
            println!("    {}", r.report);
        }
        if !r.ok() {
            println!("    CAUGHT BY {}", r.caught_by().join(", "));
        }
        for v in r.violations.iter().take(30) {
            println!("    VIOLATION {v}");
        }
        if r.violations.len() > 30 {
            println!("    ... and {} more", r.violations.len() - 30);
        }
    }

    /// What the parent learns from one child.
    struct Outcome {
        seed: u64,
        text: String,
        result: Option<Value>,
    }

    fn run_child(args: &Args, seed: u64) -> Outcome {
        let exe = std::env::current_exe().expect("the runner knows its own path");
        let mut cmd = Command::new(exe);
        cmd.arg("--child")
            .args(["--seeds", &seed.to_string()])
            .args(common_flags(args))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if args.verbose {
            cmd.arg("--verbose");
        }
        let out = match cmd.output() {
            Ok(o) => o,
            Err(e) => {
                return Outcome {
                    seed,
                    text: format!("seed {seed} FAIL: cannot start the child: {e}\n"),
                    result: None,
                }
            }
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut text = String::new();
        let mut result = None;
        for line in stdout.lines() {
            match line.strip_prefix(RESULT_TAG) {
                Some(json) => result = serde_json::from_str(json).ok(),
                None => {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
        if result.is_none() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
            text.push_str(&format!(
                "seed {seed} FAIL: the run ended without a result ({}); its last output:\n",
                out.status
            ));
            for l in tail.into_iter().rev() {
                text.push_str(&format!("    | {l}\n"));
            }
        }
        Outcome { seed, text, result }
    }

    /// Run the seed of `first` again and fail it if the two runs' trace hashes differ.
    fn same_trace_again(args: &Args, first: &mut Outcome) {
        let again = run_child(args, first.seed);
        let hash = |o: &Outcome| {
            o.result
                .as_ref()
                .and_then(|r| r["trace_hash"].as_str().map(str::to_string))
        };
        let (a, b) = (hash(first), hash(&again));
        if a.is_some() && a == b {
            first.text.push_str(&format!(
                "    ran twice: the same trace {}\n",
                a.unwrap_or_default()
            ));
            return;
        }
        first.text.push_str(&format!(
            "    VIOLATION DETERMINISM: run twice, seed {} traced {} then {}\n",
            first.seed,
            a.as_deref().unwrap_or("nothing"),
            b.as_deref().unwrap_or("nothing")
        ));
        if let Some(r) = first.result.as_mut() {
            r["ok"] = Value::Bool(false);
            let mut caught: Vec<Value> = r["caught_by"].as_array().cloned().unwrap_or_default();
            caught.push(Value::from("determinism"));
            r["caught_by"] = Value::Array(caught);
        }
    }

    #[derive(Default)]
    struct Totals {
        runs: u64,
        failed: Vec<u64>,
        /// Per failed seed, the checkers that caught it (`panic`: the run panicked; `no
        /// result`: the child ended without its result line).
        caught_by: BTreeMap<u64, Vec<String>>,
        sim_ms: u64,
        faults: BTreeMap<String, u64>,
        figures: Vec<(String, u64)>,
    }

    impl Totals {
        fn add(&mut self, o: &Outcome) {
            self.runs += 1;
            let Some(r) = &o.result else {
                self.failed.push(o.seed);
                let why = if o.text.contains("FAIL (panic)") {
                    "panic"
                } else {
                    "no result"
                };
                self.caught_by.insert(o.seed, vec![why.to_string()]);
                return;
            };
            if r["ok"] != Value::Bool(true) {
                self.failed.push(o.seed);
                let checkers = r["caught_by"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|c| c.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                self.caught_by.insert(o.seed, checkers);
            }
            self.sim_ms += r["sim_ms"].as_u64().unwrap_or(0);
            for key in ["faults", "messages", "disk"] {
                if let Some(m) = r[key].as_object() {
                    for (k, n) in m {
                        let name = match key {
                            "messages" => format!("msg.{k}"),
                            "disk" => format!("disk.{k}"),
                            _ => k.clone(),
                        };
                        *self.faults.entry(name).or_default() += n.as_u64().unwrap_or(0);
                    }
                }
            }
            if let Some(list) = r["figures"].as_array() {
                for f in list {
                    let (Some(k), Some(n)) = (f[0].as_str(), f[1].as_u64()) else {
                        continue;
                    };
                    match self.figures.iter_mut().find(|(name, _)| name == k) {
                        // A `max_` figure (the consumers' `max_lag`) totals as the largest.
                        Some((_, total)) if k.starts_with("max_") => *total = (*total).max(n),
                        Some((_, total)) => *total += n,
                        None => self.figures.push((k.to_string(), n)),
                    }
                }
            }
        }
    }

    pub fn main() {
        sim_tests::init_logging();
        let args = parse_args();
        if args.child {
            return child(&args);
        }
        let wall = Instant::now();
        let seeds: Vec<u64> = args.seeds.clone().collect();
        println!(
            "simulate: seeds {}..{} ({} runs), {} nodes, {} at a time, seeds divisible by {} \
             twice",
            args.seeds.start,
            args.seeds.end,
            seeds.len(),
            args.nodes,
            args.jobs,
            args.twice_every
        );
        if let Some(kinds) = &args.faults {
            let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
            println!("fault episodes: {} only", names.join(", "));
        }
        if let Some(bug) = args.plant {
            println!(
                "PLANTED BUG: {} (sim_tests::planted): every failing run below is the bug \
                 being caught",
                bug.name()
            );
        }
        let (tx, rx) = mpsc::channel::<Outcome>();
        let mut next = 0;
        let mut running = 0;
        let mut done: BTreeMap<u64, Outcome> = BTreeMap::new();
        let mut print_from = 0;
        let mut totals = Totals::default();
        let mut stop = false;
        loop {
            while !stop && running < args.jobs && next < seeds.len() {
                let (tx, args, seed) = (tx.clone(), args.clone(), seeds[next]);
                std::thread::spawn(move || {
                    let mut o = run_child(&args, seed);
                    if args.twice_every > 0 && seed % args.twice_every == 0 {
                        same_trace_again(&args, &mut o);
                    }
                    let _ = tx.send(o);
                });
                next += 1;
                running += 1;
            }
            if running == 0 {
                break;
            }
            let o = rx.recv().expect("a runner thread reports");
            running -= 1;
            totals.add(&o);
            if args.fail_fast && totals.failed.contains(&o.seed) {
                stop = true;
            }
            done.insert(o.seed, o);
            // Print in seed order.
            while print_from < seeds.len() {
                let Some(o) = done.remove(&seeds[print_from]) else {
                    break;
                };
                print!("{}", o.text);
                if totals.failed.contains(&o.seed) {
                    println!("    replay: {}", replay(&args, o.seed));
                }
                let _ = std::io::stdout().flush();
                print_from += 1;
            }
        }
        for o in done.values() {
            print!("{}", o.text);
        }
        let faults: Vec<String> = totals
            .faults
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        println!(
            "total: runs={} failed={} sim={:.0}s wall={:.1}s\n  faults: {}\n  {}",
            totals.runs,
            totals.failed.len(),
            totals.sim_ms as f64 / 1000.0,
            wall.elapsed().as_secs_f64(),
            faults.join(" "),
            figures_line(&totals.figures)
        );
        totals.failed.sort();
        if let Some(bug) = args.plant {
            match totals.failed.first() {
                Some(first) => println!(
                    "planted {}: CAUGHT in {} of {} runs, first at seed {first} by {}",
                    bug.name(),
                    totals.failed.len(),
                    totals.runs,
                    totals.caught_by[first].join(", ")
                ),
                None => println!("planted {}: NOT CAUGHT in {} runs", bug.name(), totals.runs),
            }
        }
        if !totals.failed.is_empty() {
            println!("failed seeds: {:?}", totals.failed);
            for s in &totals.failed {
                println!("  seed {s} caught by: {}", totals.caught_by[s].join(", "));
                println!("  replay: {}", replay(&args, *s));
            }
            std::process::exit(1);
        }
    }
}
