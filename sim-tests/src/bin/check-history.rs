//! Judge a history recorded outside the simulator with the simulator's own checkers.
//!
//! ```text
//! check-history HISTORY.json
//! ```
//!
//! The file is `{"history": History, "final": FinalState}` in the serde form of
//! `sim_tests::history` (times in milliseconds since the recorder's start). The network test
//! between real processes (`scripts/jepsen/`) writes it: judging its history with the same code
//! as the simulation's means the two tests cannot drift apart in what they call a violation.
//! Prints the report and every violation; exits 1 if there is one, 2 if the file is unreadable.

use std::process::ExitCode;

use serde::Deserialize;
use sim_tests::history::{check_all, FinalState, History};

#[derive(Deserialize)]
struct Saved {
    history: History,
    #[serde(rename = "final")]
    state: FinalState,
}

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: check-history HISTORY.json");
        return ExitCode::from(2);
    };
    let saved: Saved = match std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot read {path}: {e}");
            return ExitCode::from(2);
        }
    };
    let verdict = check_all(&saved.history, &saved.state);
    println!("{}", verdict.report);
    for v in &verdict.violations {
        println!("{v}");
    }
    if verdict.ok() {
        println!("history of {path}: no violation");
        ExitCode::SUCCESS
    } else {
        println!("history of {path}: {} violations", verdict.violations.len());
        ExitCode::FAILURE
    }
}
