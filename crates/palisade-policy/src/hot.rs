//! The patterns that new text makes candidates most often, learned from traffic and searched
//! a few at a time.
//!
//! On text the shared set has not learned, candidates come from literal factors
//! (`crate::factors`), and each candidate pattern then takes its own pass over the text. A few
//! dozen patterns are candidates on most ordinary prompts: they have no factor (`\d{3}-\d{4}`) or
//! only common ones ("you", "the", "with"). Measured on 3 000 English 1 KiB prompts with the
//! shipped packs: 46 rules were candidates on more than half of them, about 125 µs of the 240 µs
//! their checks took per prompt, and nearly none matched.
//!
//! The engine counts which patterns the factors name during its first
//! [`CALIBRATION_UNITS`] such texts, then compiles the frequent ones (their prefilter forms,
//! supersets ending where the patterns end) into small lazy-DFA sets of [`GROUP`] patterns. From
//! then on a text on the factor path is first walked by each set: a frequent pattern its set does
//! not see is not checked, one it sees is checked only where the set saw it end. The sets learn
//! ordinary text within a few hundred prompts; a set that would need more new states for a text
//! than [`GROUP_STATE_BUDGET`] leaves its patterns to the factors for that text, so the result
//! never depends on these sets, only the time. The sets are compiled on a thread of their own.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use regex_automata::MatchKind;

use crate::forward::{Forward, ForwardConfig, MatchEnds};

/// Texts on the factor path whose candidates are counted before the set is built.
pub(crate) const CALIBRATION_UNITS: u32 = 256;
/// A pattern named by the factors in at least this share of the counted texts is frequent.
const FREQUENT_PER_256: u32 = 32;
/// Most patterns learned (the most frequent first).
const MAX_PATTERNS: usize = 256;
/// Patterns per lazy-DFA set. One set of all of them would need a new state for nearly every
/// byte of new text (their loops combine: a hundred patterns, 2.4 ms per 1 KiB prompt); groups
/// of 16 learn ordinary text within a few hundred prompts and then walk cached states. Measured
/// after 1 000 new 1 KiB prompts (English / four languages), median per evaluation: groups of
/// 4: 173 / 146 µs, 8: 145 / 121, 16: 130 / 113, 32: 127 / 104 µs with 4 MiB more memory;
/// without the hot sets 235 / 204 µs.
const GROUP: usize = 16;
/// Lazy-DFA cache of one group per searching thread (a group that fills it starts again).
const GROUP_DFA_LIMIT: usize = 1 << 20;
/// New state memory one text may add to a group's cache before the group gives up on it.
const GROUP_STATE_BUDGET: usize = 128 << 10;
/// Limit of a group's NFA.
const HOT_NFA_LIMIT: usize = 32 << 20;

/// Calibration counts, then the set built from them.
pub(crate) struct HotPatterns {
    /// Texts counted so far.
    counted: AtomicU32,
    /// Per shared-set pattern: in how many counted texts the factors named it.
    counts: Box<[AtomicU32]>,
    /// Shared with the thread that builds it.
    set: Arc<OnceLock<Option<HotSet>>>,
}

/// The frequent patterns' sets.
pub(crate) struct HotSet {
    groups: Vec<Forward>,
    /// Per shared-set pattern: its group and index in it (`u32::MAX`: not in any).
    index: Box<[(u32, u32)]>,
}

/// What the hot set saw in one text: per pattern of the shared set, whether the caller should
/// check it and where its matches end.
pub(crate) struct HotScan<'a> {
    set: &'a HotSet,
    /// Per group, per pattern: where its matches end (`None`: it does not match); `None` for a
    /// group whose walk gave up.
    ends: Vec<Option<Vec<Option<MatchEnds>>>>,
}

/// What to do with one candidate pattern of the factors.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not in the hot set: check it over the whole text.
    Unknown,
    /// Its superset does not match: it does not either.
    Absent,
    /// Its matches end between these offsets.
    Ends(usize, usize),
}

impl HotPatterns {
    pub(crate) fn new(patterns: usize) -> HotPatterns {
        HotPatterns {
            counted: AtomicU32::new(0),
            counts: (0..patterns).map(|_| AtomicU32::new(0)).collect(),
            set: Arc::new(OnceLock::new()),
        }
    }

    /// Counts nothing and uses `set` from the start (tests).
    #[cfg(test)]
    pub(crate) fn fixed(patterns: usize, set: Option<HotSet>) -> HotPatterns {
        let hot = HotPatterns::new(patterns);
        hot.counted.store(CALIBRATION_UNITS, Ordering::Relaxed);
        let _ = hot.set.set(set);
        hot
    }

    /// The set, once built.
    pub(crate) fn set(&self) -> Option<&HotSet> {
        self.set.get().and_then(Option::as_ref)
    }

    /// Whether texts are still being counted.
    pub(crate) fn calibrating(&self) -> bool {
        self.set.get().is_none() && self.counted.load(Ordering::Relaxed) < CALIBRATION_UNITS
    }

    /// Counts one text's candidate patterns (only those `source` can give a prefilter form for
    /// are counted later); returns whether this text ended the calibration, in which case the
    /// caller builds the set with [`HotPatterns::build`].
    pub(crate) fn count(&self, patterns: impl Iterator<Item = usize>) -> bool {
        let n = self.counted.fetch_add(1, Ordering::Relaxed);
        if n >= CALIBRATION_UNITS {
            return false;
        }
        for p in patterns {
            if let Some(c) = self.counts.get(p) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        n + 1 == CALIBRATION_UNITS
    }

    /// Builds the set from the counts: the frequent patterns with a prefilter form (`source`
    /// gives it for a shared-set pattern, `None` for patterns the set cannot stand for).
    /// `source` gives a pattern's source, `form` the prefilter form compiled from it (parsing
    /// is part of the work done off the request). `background`: on a thread of its own (the
    /// engine); else before returning (tests).
    pub(crate) fn build(
        &self,
        source: impl Fn(usize) -> Option<String>,
        form: fn(&str) -> String,
        background: bool,
    ) {
        let threshold = FREQUENT_PER_256 * CALIBRATION_UNITS / 256;
        let mut frequent: Vec<(u32, usize)> = self
            .counts
            .iter()
            .enumerate()
            .map(|(p, c)| (c.load(Ordering::Relaxed), p))
            .filter(|&(c, _)| c >= threshold)
            .collect();
        frequent.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let chosen: Vec<(usize, String)> = frequent
            .into_iter()
            .filter_map(|(_, p)| source(p).map(|s| (p, s)))
            .take(MAX_PATTERNS)
            .collect();
        let (cell, total) = (self.set.clone(), self.counts.len());
        let build = move || {
            cell.get_or_init(|| {
                let forms: Vec<(usize, String)> =
                    chosen.iter().map(|(p, src)| (*p, form(src))).collect();
                HotSet::build(total, &forms)
            });
        };
        if background {
            // Compiling the sets takes tens of milliseconds: not on the request that ended the
            // count. Until they are there, texts go on with the factors alone.
            let built = std::thread::Builder::new()
                .name("palisade-hot-sets".into())
                .spawn(build.clone());
            if built.is_err() {
                build();
            }
        } else {
            build();
        }
    }
}

impl HotSet {
    /// The sets of `patterns` (shared-set index and prefilter form, most frequent first) among
    /// `total` shared-set patterns; `None` when there is none or they do not compile (the
    /// factors then go on alone).
    pub(crate) fn build(total: usize, patterns: &[(usize, String)]) -> Option<HotSet> {
        if patterns.is_empty() {
            return None;
        }
        let mut index = vec![(u32::MAX, u32::MAX); total].into_boxed_slice();
        let mut groups = Vec::new();
        for (g, chunk) in patterns.chunks(GROUP).enumerate() {
            let sources: Vec<&str> = chunk.iter().map(|(_, s)| s.as_str()).collect();
            let forward = Forward::build(
                &sources,
                &ForwardConfig {
                    kind: MatchKind::All,
                    spans: false,
                    prefilter: true,
                    nfa_size_limit: HOT_NFA_LIMIT,
                    dfa_cache_capacity: GROUP_DFA_LIMIT,
                },
            )
            .ok()?;
            let g = u32::try_from(g).ok()?;
            for (k, (p, _)) in chunk.iter().enumerate() {
                *index.get_mut(*p)? = (g, u32::try_from(k).ok()?);
            }
            groups.push(forward);
        }
        Some(HotSet { groups, index })
    }

    /// Walks `text` with every group; a group that would need more new states than its budget
    /// leaves its patterns to the factors for this text.
    pub(crate) fn scan(&self, text: &str) -> HotScan<'_> {
        let mut found = Vec::new();
        let ends = self
            .groups
            .iter()
            .map(|group| {
                let (complete, _) =
                    group.which_matches_within(text, &mut found, GROUP_STATE_BUDGET);
                complete.then(|| {
                    let mut ends = vec![None; group.pattern_len()];
                    for e in found.drain(..) {
                        ends[e.pattern] = Some(e);
                    }
                    ends
                })
            })
            .collect();
        HotScan { set: self, ends }
    }
}

impl HotScan<'_> {
    /// What the walk says of the shared set's pattern `pattern`.
    pub(crate) fn verdict(&self, pattern: usize) -> Verdict {
        match self.set.index.get(pattern) {
            Some(&(g, k)) if g != u32::MAX => match &self.ends[g as usize] {
                Some(ends) => match ends[k as usize] {
                    Some(e) => Verdict::Ends(e.first, e.last),
                    None => Verdict::Absent,
                },
                // The group gave up on this text.
                None => Verdict::Unknown,
            },
            _ => Verdict::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frequent_patterns_are_learned_after_calibration() {
        let hot = HotPatterns::new(4);
        assert!(hot.calibrating());
        let mut ended = 0;
        for i in 0..CALIBRATION_UNITS + 10 {
            // Pattern 0 in every text, 1 in one of 16 (under the threshold), 2 in one of 4.
            let mut ps = vec![0];
            if i % 16 == 0 {
                ps.push(1);
            }
            if i % 4 == 0 {
                ps.push(2);
            }
            if hot.count(ps.into_iter()) {
                ended += 1;
            }
        }
        assert_eq!(ended, 1, "the calibration ends once");
        assert!(hot.set().is_none());
        let sources = ["abc", "def", r"\d{3}", "unused"];
        hot.build(
            |p| (p != 2).then(|| sources[p].to_string()),
            str::to_string,
            false,
        );
        assert!(!hot.calibrating());
        let set = hot.set().expect("built");
        // Pattern 2 is frequent but has no form here: it stays unknown, like 1 and 3.
        let scan = set.scan("xx abc yy abc");
        assert_eq!(scan.verdict(0), Verdict::Ends(6, 13));
        for p in 1..4 {
            assert_eq!(scan.verdict(p), Verdict::Unknown);
        }
        let scan = set.scan("nothing");
        assert_eq!(scan.verdict(0), Verdict::Absent);
        assert_eq!(scan.verdict(9), Verdict::Unknown);
    }

    #[test]
    fn nothing_frequent_builds_no_set() {
        let hot = HotPatterns::new(2);
        for _ in 0..CALIBRATION_UNITS {
            hot.count(std::iter::empty());
        }
        hot.build(|_| Some("abc".into()), str::to_string, false);
        assert!(hot.set().is_none());
        assert!(!hot.calibrating());
    }
}
