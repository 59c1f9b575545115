//! The project's task runner, shared by developers and CI: `cargo xtask <task>`.
//!
//! - `ci`: formatting check, clippy with warnings denied, `fuzz 10` when cargo-fuzz is
//!   installed (10 s per target), then `test` and a short `torture` — what CI runs.
//! - `test`: every test of the workspace (nextest when installed, else `cargo test`) and the
//!   doctests.
//! - `fuzz [SECONDS]`: every fuzz target under `fuzz/` for SECONDS each (default 60), with
//!   `cargo fuzz` on stable (`-s none`: no sanitizer, which needs nightly).
//! - `bench [ARGS]`: `postino bench` built in release mode (e.g. `cargo xtask bench storage`).
//! - `torture [--release] [ARGS]`: `postino-torture` on the `postino` binary (SIGKILL cycles
//!   with independent checks; `docs/reliability.md`); `ci` runs a short one (3 cycles, a storm of 2,000 connections, 1,500 held at once, a
//!   backlog of 100,000 under consumers that never read, the disk-full test on 64 MiB, storage
//!   faults under one queue).

use std::env;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("test") => test(),
        Some("fuzz") => fuzz(args.get(1).map(String::as_str)),
        Some("bench") => bench(&args[1..]),
        Some("torture") => torture(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <ci|test|fuzz [SECONDS]|bench [ARGS]|torture [--release] [ARGS]>"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Fuzz targets, each a file in `fuzz/fuzz_targets/`.
const FUZZ_TARGETS: &[&str] = &[
    "batch",
    "amqp_frame",
    "amqp_session",
    "certificate_user",
    "filter",
];

fn cargo(args: &[&str]) -> Result<(), String> {
    cargo_in(".", args)
}

fn cargo_in(dir: &str, args: &[&str]) -> Result<(), String> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .current_dir(dir)
        .args(args)
        .status()
        .map_err(|error| format!("could not run cargo: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo {} failed ({status})", args.join(" ")))
    }
}

fn has_subcommand(name: &str) -> bool {
    Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
        .args([name, "--version"])
        .output()
        .is_ok_and(|output| output.status.success())
}

fn ci() -> Result<(), String> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ])?;
    if has_subcommand("fuzz") {
        fuzz(Some("10"))?;
    } else {
        eprintln!("xtask: cargo-fuzz is not installed, fuzzing skipped (cargo install cargo-fuzz)");
    }
    test()?;
    torture(
        &[
            "--cycles",
            "3",
            "--storm",
            "2000",
            "--storm-hold",
            "1500",
            "--backlog",
            "100000",
            "--disk-full",
            "64",
            "--faults",
        ]
        .map(str::to_owned),
    )
}

/// Builds `postino` and runs `postino-torture` on it with `args` (`--release` first builds
/// both optimised).
fn torture(args: &[String]) -> Result<(), String> {
    let release = args.first().is_some_and(|arg| arg == "--release");
    let rest = if release { &args[1..] } else { args };
    let profile: &[&str] = if release { &["--release"] } else { &[] };
    let mut build = vec!["build", "--locked", "--package", "postino"];
    build.extend(profile);
    cargo(&build)?;
    let target = env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".to_owned());
    let binary = format!(
        "{target}/{}/postino",
        if release { "release" } else { "debug" }
    );
    let mut run = vec!["run", "--locked", "--package", "postino-torture"];
    run.extend(profile);
    run.extend(["--", "--binary", binary.as_str()]);
    run.extend(rest.iter().map(String::as_str));
    cargo(&run)
}

fn fuzz(seconds: Option<&str>) -> Result<(), String> {
    let seconds = seconds.unwrap_or("60");
    seconds
        .parse::<u32>()
        .map_err(|_| format!("fuzz: {seconds:?} is not a number of seconds"))?;
    let max_time = format!("-max_total_time={seconds}");
    for target in FUZZ_TARGETS {
        let corpus = format!("corpus/{target}");
        std::fs::create_dir_all(format!("fuzz/{corpus}"))
            .map_err(|error| format!("create the fuzz corpus directory: {error}"))?;
        cargo_in(
            "fuzz",
            &[
                "fuzz",
                "run",
                "-s",
                "none",
                target,
                &corpus,
                "--",
                &max_time,
                "-max_len=65536",
            ],
        )?;
    }
    Ok(())
}

fn test() -> Result<(), String> {
    if has_subcommand("nextest") {
        cargo(&[
            "nextest",
            "run",
            "--workspace",
            "--locked",
            "--no-fail-fast",
        ])?;
    } else {
        cargo(&["test", "--workspace", "--locked", "--no-fail-fast"])?;
    }
    cargo(&["test", "--workspace", "--locked", "--doc"])
}

fn bench(args: &[String]) -> Result<(), String> {
    let mut full = vec![
        "run",
        "--release",
        "--locked",
        "--package",
        "postino",
        "--",
        "bench",
    ];
    full.extend(args.iter().map(String::as_str));
    cargo(&full)
}
