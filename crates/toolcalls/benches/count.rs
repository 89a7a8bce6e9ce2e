//! One run of one engine workload, for instruction counts that do not depend on the machine's
//! load (the 2-core VMs this is measured on are shared, so wall time varies ±10%):
//!
//! ```sh
//! cargo bench -p blockops-toolcalls --bench count --no-run   # prints the binary's path
//! valgrind --tool=callgrind '--toggle-collect=*workloads::run_*' BINARY prose 4   # prose|dense, whole|1|4
//! ```
//! `--toggle-collect` counts the run alone (the parser, its events and the consumer), not
//! process start-up or building the input, whose counts move with the compiler's inlining.
//! `setup` instead of a piece size builds the text and its pieces but parses nothing.

use std::hint::black_box;

#[path = "support/workloads.rs"]
mod workloads;
use workloads::{call_dense, pieces, prose, run_pieces, run_whole};

fn main() {
    // `cargo bench` passes `--bench`; only the two words matter.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let (Some(input), Some(how)) = (args.first(), args.get(1)) else {
        eprintln!("usage: count prose|dense whole|1|4|setup");
        return;
    };
    let text = match input.as_str() {
        "prose" => prose(1 << 20),
        _ => call_dense(1 << 20),
    };
    let read = match how.as_str() {
        "whole" => run_whole(black_box(&text)),
        "setup" => black_box(pieces(&text, 1).len()),
        n => run_pieces(black_box(&pieces(&text, n.parse().unwrap_or(1)))),
    };
    println!("{read}");
}
