//! Measures the near-duplicate check on a real source (the figures of docs/leakage.md):
//!
//! ```text
//! cargo run --release -p imprint-data --example near_duplicates -- pairs SOURCE MAX_DISTANCE [SHOW]
//! cargo run --release -p imprint-data --example near_duplicates -- recall SOURCE COPIES...
//! cargo run --release -p imprint-data --example near_duplicates -- time SOURCE ROUNDS
//! ```
//!
//! `pairs`: how many pairs of the source's images have fingerprints within each distance up to
//! MAX_DISTANCE, how many of them the pixels confirm (as they are or mirrored), and the first
//! SHOW confirmed pairs. `recall`: for each folder of copies (the source's layout, one copy per
//! image, in the same order), the share of copies caught at each distance: by the fingerprint
//! alone, confirmed by the pixels, and as they are or mirrored. `time`: loading the source alone and loading it with its fingerprints, in
//! alternation, ROUNDS times each.

use imprint_data::{
    correlation, distance, load, near_pairs_within, Dataset, NearIndex, NearPair, Preprocess,
    MIN_CORRELATION,
};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["pairs", source, t, ref rest @ ..] => pairs(source, t, rest.first().copied()),
        ["recall", source, ref copies @ ..] if !copies.is_empty() => recall(source, copies),
        ["time", source, rounds] => time(source, rounds),
        _ => Err("usage: pairs SOURCE MAX_DISTANCE [SHOW] | recall SOURCE COPIES... | time SOURCE ROUNDS".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, String>;

fn number<T: std::str::FromStr>(s: &str, what: &str) -> Result<T> {
    s.parse().map_err(|_| format!("{what}: not a number: {s}"))
}

fn open(source: &str) -> Result<Dataset> {
    load(Path::new(source), &Preprocess::default()).map_err(|e| e.to_string())
}

/// Counts per distance `0..=t`, as `d:count` words.
fn histogram(distances: impl Iterator<Item = u32>, t: u32) -> String {
    let mut counts = vec![0usize; t as usize + 1];
    for d in distances {
        counts[d as usize] += 1;
    }
    let words: Vec<String> = counts
        .iter()
        .enumerate()
        .map(|(d, c)| format!("{d}:{c}"))
        .collect();
    words.join(" ")
}

fn pairs(source: &str, t: &str, show: Option<&str>) -> Result<()> {
    let t: u32 = number(t, "MAX_DISTANCE")?;
    let show: usize = show.map_or(Ok(10), |s| number(s, "SHOW"))?;
    let ds = open(source)?;
    let prints = ds.fingerprints();
    let hashes: Vec<u64> = prints.iter().map(|f| f.hash).collect();
    let started = Instant::now();
    let by_hash = NearIndex::new(&hashes, t).pairs();
    let took = started.elapsed();
    println!("{source}: {} images", ds.len());
    println!(
        "  fingerprints within {t} bits: {} pairs ({took:.2?}); by distance: {}",
        by_hash.len(),
        histogram(by_hash.iter().map(|p| p.2), t)
    );
    let floors = [0.98, 0.99, 0.995, 0.998];
    let above: Vec<String> = floors
        .iter()
        .map(|&floor| {
            let n = by_hash
                .iter()
                .filter(|&&(i, j, _)| {
                    correlation(&ds.pixels.bytes(i), &ds.pixels.bytes(j), ds.shape, false) >= floor
                })
                .count();
            format!("{floor}:{n}")
        })
        .collect();
    println!("  of them correlating at least: {}", above.join(" "));
    let started = Instant::now();
    let found = near_pairs_within(&ds, &prints, t);
    let took = started.elapsed();
    let (mirrored, plain): (Vec<&NearPair>, Vec<&NearPair>) =
        found.iter().partition(|p| p.mirrored);
    println!(
        "  and correlating >= {MIN_CORRELATION}: {} pairs, {} of them mirrored ({took:.2?}); by distance: {}; mirrored: {}",
        found.len(),
        mirrored.len(),
        histogram(plain.iter().map(|p| p.distance), t),
        histogram(mirrored.iter().map(|p| p.distance), t)
    );
    for p in found.iter().take(show) {
        let how = if p.mirrored { ", mirrored" } else { "" };
        println!(
            "  {} bits, correlation {:.4}{how}: {} {}",
            p.distance, p.correlation, ds.items[p.a], ds.items[p.b]
        );
    }
    Ok(())
}

/// A copy's fingerprint distance and correlation to its original: as it is, and mirrored.
type Measured = [(u32, f32); 2];
/// Whether a copy so measured is caught within a distance.
type Rule<'a> = &'a dyn Fn(&Measured, u32) -> bool;

fn recall(source: &str, copies: &[&str]) -> Result<()> {
    const UP_TO: u32 = 12;
    let originals = open(source)?;
    let original_prints = originals.fingerprints();
    for copy in copies {
        let ds = open(copy)?;
        if ds.len() != originals.len() || ds.shape != originals.shape {
            return Err(format!(
                "{copy}: {} images of {}, the source has {} of {}",
                ds.len(),
                ds.shape,
                originals.len(),
                originals.shape
            ));
        }
        let prints = ds.fingerprints();
        // Per copy: fingerprint distance and correlation, as it is and mirrored.
        let measured: Vec<Measured> = (0..ds.len())
            .map(|i| {
                let (c, o) = (prints[i], original_prints[i]);
                let (a, b) = (ds.pixels.bytes(i), originals.pixels.bytes(i));
                [
                    (
                        distance(c.hash, o.hash),
                        correlation(&a, &b, ds.shape, false),
                    ),
                    (
                        distance(c.mirror, o.hash),
                        correlation(&a, &b, ds.shape, true),
                    ),
                ]
            })
            .collect();
        let share = |caught: &dyn Fn(&Measured) -> bool| {
            100.0 * measured.iter().filter(|m| caught(m)).count() as f64 / measured.len() as f64
        };
        let below: Vec<String> = [0.99, 0.995, 0.998]
            .iter()
            .map(|&floor| format!("{floor}:{:.2}", share(&|m| m[0].1.max(m[1].1) < floor)))
            .collect();
        println!(
            "{copy}: {} copies; % correlating (or mirrored) below: {}",
            ds.len(),
            below.join(" ")
        );
        let rows: [(&str, Rule); 3] = [
            ("fingerprint alone", &|m, t| m[0].0 <= t),
            ("and correlation", &|m, t| {
                m[0].0 <= t && m[0].1 >= MIN_CORRELATION
            }),
            ("either, or mirrored", &|m, t| {
                m.iter().any(|&(d, r)| d <= t && r >= MIN_CORRELATION)
            }),
        ];
        for (name, caught) in rows {
            let shares: Vec<String> = (0..=UP_TO)
                .step_by(2)
                .map(|t| format!("{t}:{:.2}", share(&|m| caught(m, t))))
                .collect();
            println!(
                "  {name}, % caught within each distance: {}",
                shares.join(" ")
            );
        }
    }
    Ok(())
}

fn time(source: &str, rounds: &str) -> Result<()> {
    let rounds: usize = number(rounds, "ROUNDS")?;
    let (mut plain, mut with) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let started = Instant::now();
        let ds = open(source)?;
        plain.push(started.elapsed().as_secs_f64());
        drop(ds);
        let started = Instant::now();
        let ds = open(source)?;
        let load = started.elapsed().as_secs_f64();
        let prints = ds.fingerprints();
        let total = started.elapsed().as_secs_f64();
        with.push(total);
        println!(
            "load {:.3} s; load {load:.3} s + fingerprints {:.3} s of {} images",
            plain[plain.len() - 1],
            total - load,
            prints.len()
        );
    }
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        format!("{lo:.3}-{hi:.3} s")
    };
    println!(
        "load alone {}; load and fingerprints {}",
        range(&plain),
        range(&with)
    );
    Ok(())
}
