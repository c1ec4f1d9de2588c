//! Fingerprints within a Hamming distance of each other, found without comparing every pair
//! (multi-index hashing): the 64 bits are cut into `m` pieces, and two hashes within `t` bits
//! differ in at most `t / m` bits of some piece (pigeonhole). Each piece keys a table; a query
//! looks up its own piece and every key within `t / m` bits of it, and compares in full only the
//! hashes found there.

use crate::fingerprint::{correlation, distance, Fingerprint};
use crate::Dataset;
use rayon::prelude::*;

/// The least correlation of two images' grey values for a pair of close fingerprints to count as
/// copies: JPEG re-encodes (quality 90 and 75), PNG re-saves and contrast changes of CIFAR-10
/// photos lie above it (all but 0.01%), photos made 10% brighter 98% of the time; two distinct
/// MNIST digits whose fingerprints agree reach 0.9911 (docs/leakage.md).
pub const MIN_CORRELATION: f32 = 0.995;

/// Two images taken for copies of each other: fingerprints within the distance (`b`'s mirror
/// against `a`'s when `mirrored`) and grey values that correlate at least [`MIN_CORRELATION`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NearPair {
    pub a: usize,
    pub b: usize,
    pub distance: u32,
    pub correlation: f32,
    pub mirrored: bool,
}

/// The pair `(a, b)` if its pixels confirm what the fingerprints found.
fn confirm(
    (da, a): (&Dataset, usize),
    (db, b): (&Dataset, usize),
    distance: u32,
    mirrored: bool,
) -> Option<NearPair> {
    let correlation = correlation(&da.pixels.bytes(a), &db.pixels.bytes(b), da.shape, mirrored);
    (correlation >= MIN_CORRELATION).then_some(NearPair {
        a,
        b,
        distance,
        correlation,
        mirrored,
    })
}

/// Copies within `ds` (`prints` its fingerprints), each pair once with `a < b`, sorted; a pair
/// that is a copy both as it is and mirrored is reported as it is.
pub fn near_pairs_within(ds: &Dataset, prints: &[Fingerprint], max_distance: u32) -> Vec<NearPair> {
    let hashes: Vec<u64> = prints.iter().map(|f| f.hash).collect();
    let index = NearIndex::new(&hashes, max_distance);
    let mut pairs: Vec<NearPair> = (0..prints.len())
        .into_par_iter()
        .flat_map_iter(|i| {
            let mut near = Vec::new();
            index.query(prints[i].hash, |j, d| {
                if j > i {
                    near.extend(confirm((ds, i), (ds, j), d, false));
                }
            });
            index.query(prints[i].mirror, |j, d| {
                if j != i {
                    let (a, b) = (i.min(j), i.max(j));
                    near.extend(confirm((ds, a), (ds, b), d, true));
                }
            });
            near
        })
        .collect();
    pairs.sort_by_key(|p| (p.a, p.b, p.mirrored));
    pairs.dedup_by_key(|p| (p.a, p.b));
    pairs
}

/// Images of `queries` that are copies of images of `indexed` (`a` in the first, `b` in the
/// second), each pair once, sorted. Both hold images of one shape.
pub fn near_pairs_between(
    (queries, query_prints): (&Dataset, &[Fingerprint]),
    (indexed, indexed_prints): (&Dataset, &[Fingerprint]),
    max_distance: u32,
) -> Vec<NearPair> {
    let hashes: Vec<u64> = indexed_prints.iter().map(|f| f.hash).collect();
    let index = NearIndex::new(&hashes, max_distance);
    let mut pairs: Vec<NearPair> = (0..query_prints.len())
        .into_par_iter()
        .flat_map_iter(|i| {
            let mut near = Vec::new();
            for (h, mirrored) in [
                (query_prints[i].hash, false),
                (query_prints[i].mirror, true),
            ] {
                index.query(h, |j, d| {
                    near.extend(confirm((queries, i), (indexed, j), d, mirrored))
                });
            }
            near
        })
        .collect();
    pairs.sort_by_key(|p| (p.a, p.b, p.mirrored));
    pairs.dedup_by_key(|p| (p.a, p.b));
    pairs
}

/// A set of 64-bit hashes indexed for queries within `max_distance` bits.
pub struct NearIndex {
    max_distance: u32,
    /// Bits in which a piece of a found hash may differ from the query's.
    radius: u32,
    pieces: Vec<Piece>,
    hashes: Vec<u64>,
}

/// One slice of the hash bits and the hashes bucketed by it: bucket `k` holds
/// `entries[offsets[k]..offsets[k + 1]]`, each a hash and its position in the indexed set.
struct Piece {
    shift: u32,
    width: u32,
    offsets: Vec<u32>,
    entries: Vec<(u64, u32)>,
}

impl Piece {
    fn key(&self, h: u64) -> usize {
        ((h >> self.shift) & ((1u64 << self.width) - 1)) as usize
    }
}

/// Widest piece: its table has `2^width` buckets.
const MAX_WIDTH: u32 = 24;

/// Piece widths for `m` pieces of 64 bits, as even as they go.
fn widths(m: u32) -> impl Iterator<Item = u32> {
    (0..m).map(move |i| 64 / m + u32::from(i < 64 % m))
}

fn binomial(n: u32, k: u32) -> f64 {
    (0..k).fold(1.0, |acc, i| acc * f64::from(n - i) / f64::from(i + 1))
}

/// The number of pieces with the fewest expected lookups and comparisons per query for `n`
/// uniformly spread hashes and radius `t`, with no table wider than about `n`'s bits.
fn choose_pieces(n: usize, t: u32) -> u32 {
    let bits = (usize::BITS - n.max(1).leading_zeros()).clamp(8, MAX_WIDTH);
    let fewest = 64u32.div_ceil(bits);
    let most = (t + 1).clamp(fewest, 64);
    let cost = |m: u32| {
        let r = t / m;
        widths(m)
            .map(|w| {
                let probes: f64 = (0..=r.min(w)).map(|k| binomial(w, k)).sum();
                // A probe costs a scattered read, about what a few comparisons do.
                probes * (4.0 + n as f64 / 2f64.powi(w as i32))
            })
            .sum::<f64>()
    };
    (fewest..=most)
        .min_by(|&a, &b| cost(a).total_cmp(&cost(b)))
        .unwrap_or(fewest)
}

impl NearIndex {
    /// Indexes `hashes` (at most `u32::MAX` of them) for queries within `max_distance` bits.
    pub fn new(hashes: &[u64], max_distance: u32) -> NearIndex {
        let m = choose_pieces(hashes.len(), max_distance);
        let mut shift = 0;
        let pieces = widths(m)
            .map(|width| {
                let piece = Piece {
                    shift,
                    width,
                    offsets: Vec::new(),
                    entries: Vec::new(),
                };
                shift += width;
                piece.fill(hashes)
            })
            .collect();
        NearIndex {
            max_distance,
            radius: max_distance / m,
            pieces,
            hashes: hashes.to_vec(),
        }
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Calls `found(j, d)` once for every indexed hash `j` within the distance of `h`, `d` bits
    /// away, in no particular order.
    pub fn query(&self, h: u64, mut found: impl FnMut(usize, u32)) {
        for (p, piece) in self.pieces.iter().enumerate() {
            let earlier = &self.pieces[..p];
            each_key_within(piece.key(h), piece.width, self.radius, &mut |key| {
                let (a, b) = (piece.offsets[key] as usize, piece.offsets[key + 1] as usize);
                for &(other, j) in &piece.entries[a..b] {
                    let d = distance(h, other);
                    // Each hash once: the first piece close enough reports it.
                    if d <= self.max_distance
                        && !earlier
                            .iter()
                            .any(|e| distance(e.key(h) as u64, e.key(other) as u64) <= self.radius)
                    {
                        found(j as usize, d);
                    }
                }
            });
        }
    }

    /// Every pair `(i, j, d)` with `i < j` of the indexed hashes within the distance, `d` bits
    /// apart, sorted.
    pub fn pairs(&self) -> Vec<(usize, usize, u32)> {
        let mut pairs: Vec<(usize, usize, u32)> = (0..self.len())
            .into_par_iter()
            .flat_map_iter(|i| {
                let mut near = Vec::new();
                self.query(self.hashes[i], |j, d| {
                    if j > i {
                        near.push((i, j, d));
                    }
                });
                near
            })
            .collect();
        pairs.sort_unstable();
        pairs
    }
}

impl Piece {
    /// Buckets `hashes` by this piece (a counting sort).
    fn fill(mut self, hashes: &[u64]) -> Piece {
        let buckets = 1usize << self.width;
        let mut offsets = vec![0u32; buckets + 1];
        for &h in hashes {
            offsets[self.key(h) + 1] += 1;
        }
        for k in 0..buckets {
            offsets[k + 1] += offsets[k];
        }
        let mut next = offsets.clone();
        let mut entries = vec![(0u64, 0u32); hashes.len()];
        for (i, &h) in hashes.iter().enumerate() {
            let slot = &mut next[self.key(h)];
            entries[*slot as usize] = (h, i as u32);
            *slot += 1;
        }
        self.offsets = offsets;
        self.entries = entries;
        self
    }
}

/// Calls `f` with every `width`-bit key within `radius` bits of `key` (itself included).
fn each_key_within(key: usize, width: u32, radius: u32, f: &mut impl FnMut(usize)) {
    fn flip(key: usize, from: u32, width: u32, left: u32, f: &mut impl FnMut(usize)) {
        f(key);
        if left == 0 {
            return;
        }
        for bit in from..width {
            flip(key ^ (1 << bit), bit + 1, width, left - 1, f);
        }
    }
    flip(key, 0, width, radius, f);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Every pair within `t`, the slow way.
    fn all_pairs(hashes: &[u64], t: u32) -> Vec<(usize, usize, u32)> {
        let mut out = Vec::new();
        for i in 0..hashes.len() {
            for j in i + 1..hashes.len() {
                let d = distance(hashes[i], hashes[j]);
                if d <= t {
                    out.push((i, j, d));
                }
            }
        }
        out
    }

    /// `h` with `k` distinct random bits turned.
    fn turn_bits(h: u64, k: u32, rng: &mut ChaCha8Rng) -> u64 {
        let mut out = h;
        while distance(out, h) < k {
            out ^= 1 << rng.gen_range(0..64);
        }
        out
    }

    #[test]
    fn finds_exactly_the_pairs_a_full_comparison_finds() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        // Clustered hashes, as real fingerprints are: copies of a few bases with bits turned.
        let bases: Vec<u64> = (0..40).map(|_| rng.gen()).collect();
        let hashes: Vec<u64> = (0..2000)
            .map(|_| {
                let base = bases[rng.gen_range(0..bases.len())];
                turn_bits(base, rng.gen_range(0..14), &mut rng)
            })
            .collect();
        for t in [0, 1, 3, 6, 10, 16] {
            let index = NearIndex::new(&hashes, t);
            let expected = all_pairs(&hashes, t);
            assert!(
                !expected.is_empty(),
                "t = {t}: a test with no pair proves nothing"
            );
            assert_eq!(index.pairs(), expected, "t = {t}");
        }
    }

    /// A million random hashes with 200 planted pairs 0-4 bits apart: all found, and quickly;
    /// comparing every pair (5 * 10^11 comparisons) would take many minutes.
    #[test]
    fn a_million_hashes_are_searched_without_comparing_every_pair() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut hashes: Vec<u64> = (0..1_000_000).map(|_| rng.gen()).collect();
        let mut planted = Vec::new();
        for k in 0..200 {
            let (i, j) = (k * 4999, k * 4999 + 1 + k % 7);
            hashes[j] = turn_bits(hashes[i], (k % 5) as u32, &mut rng);
            planted.push((i, j, (k % 5) as u32));
        }
        let started = std::time::Instant::now();
        let found = NearIndex::new(&hashes, 4).pairs();
        let took = started.elapsed();
        eprintln!("a million hashes searched within 4 bits in {took:.2?}");
        // Random 64-bit hashes meet within 4 bits about once in 10^13 pairs.
        assert_eq!(found, planted);
        assert!(took.as_secs() < 60, "took {took:?}");
    }

    #[test]
    fn each_key_within_counts_every_neighbour_once() {
        let mut keys = Vec::new();
        each_key_within(0b1010, 6, 2, &mut |k| keys.push(k));
        let n = keys.len();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!((n, keys.len()), (1 + 6 + 15, 22));
        assert!(keys
            .iter()
            .all(|&k| (k ^ 0b1010).count_ones() <= 2 && k < 64));
    }
}
