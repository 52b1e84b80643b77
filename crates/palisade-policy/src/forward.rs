//! Forward-only multi-pattern matchers for the engine's two shared automata (the prefilter set
//! of every rule, and the leftmost-first matcher of every redact regex).
//!
//! `regex::RegexSet` and `meta::Regex` also compile a *reverse* NFA of all their patterns, for
//! finding where a match starts. Neither shared automaton needs one: the prefilter only asks
//! which patterns match, and redaction finds a value's start with that pattern's own reverse
//! automaton (`StartFinder`). With the shipped packs the two reverse NFAs held ~6 MiB of the
//! gateway's resident memory for nothing. This type keeps the forward NFA once, searched by a
//! lazy DFA. Span searches (redaction) fall back to the PikeVM over the same NFA when the lazy
//! DFA gives up (cache thrashing, or a Unicode word boundary next to non-ASCII text), as
//! `meta::Regex` would; the prefilter's pattern-set search instead stops at a budget of new DFA
//! states and lets the engine take its candidates from literal factors (`crate::factors`).

use std::panic::{RefUnwindSafe, UnwindSafe};

#[cfg(test)]
use regex_automata::PatternSet;
use regex_automata::nfa::thompson::{self, NFA, pikevm::PikeVM};
use regex_automata::util::pool::Pool;
use regex_automata::util::syntax;
use regex_automata::{HalfMatch, Input, Match, MatchKind, hybrid};

use crate::error::{PolicyError, Result};

type DfaCacheFn = Box<dyn Fn() -> hybrid::dfa::Cache + Send + Sync + UnwindSafe + RefUnwindSafe>;

/// A pool of lazy-DFA caches for `dfa`, one per searching thread (shared by every lazy DFA of
/// the engine: these automata and each redact pattern's reverse automaton).
pub(crate) type DfaCaches = Pool<hybrid::dfa::Cache, DfaCacheFn>;

pub(crate) fn dfa_caches(dfa: &hybrid::dfa::DFA) -> DfaCaches {
    let dfa = dfa.clone();
    Pool::new(Box::new(move || dfa.create_cache()))
}

/// Where one pattern's matches end in a text: the first and the last end offset of its
/// matches (of all of them, overlapping ones included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MatchEnds {
    pub(crate) pattern: usize,
    pub(crate) first: usize,
    pub(crate) last: usize,
}

type VmCacheFn =
    Box<dyn Fn() -> thompson::pikevm::Cache + Send + Sync + UnwindSafe + RefUnwindSafe>;

/// Patterns compiled into one forward NFA, searched by a lazy DFA with a PikeVM fallback.
pub(crate) struct Forward {
    dfa: hybrid::dfa::DFA,
    /// The patterns are in lower case (`ForwardConfig::prefilter`): the pattern-set walk folds
    /// the text's ASCII letters as it reads them.
    fold_case: bool,
    vm: PikeVM,
    dfa_caches: DfaCaches,
    vm_caches: Pool<thompson::pikevm::Cache, VmCacheFn>,
}

/// How a [`Forward`] is built.
pub(crate) struct ForwardConfig {
    pub(crate) kind: MatchKind,
    /// Searches report where matches are ([`Forward::search`], [`Forward::search_half`]), and
    /// anchored searches for one given pattern (`Anchored::Pattern`) are possible. Without it
    /// only [`Forward::is_match`] and [`Forward::which_matches`] may be used: the NFA then has no
    /// capture slots, which keeps the PikeVM's per-search tables small (they hold a slot pair
    /// per pattern for every NFA state: with a thousand patterns, gigabytes).
    pub(crate) spans: bool,
    /// The patterns are in the prefilter's form (`crate::widen::prefilter_form`): they may match
    /// bytes that are not UTF-8, so they are parsed and compiled with UTF-8 mode off, and they
    /// are written in lower case, so searches fold the text's ASCII letters to lower case as
    /// they read it. Only for pattern-set searches (without `spans`): a match may end inside a
    /// char.
    pub(crate) prefilter: bool,
    pub(crate) nfa_size_limit: usize,
    pub(crate) dfa_cache_capacity: usize,
}

impl Forward {
    pub(crate) fn build<P: AsRef<str>>(patterns: &[P], cfg: &ForwardConfig) -> Result<Forward> {
        let err = |e: &dyn std::fmt::Display| PolicyError::Compile(e.to_string());
        debug_assert!(
            !(cfg.prefilter && cfg.spans),
            "prefilter patterns are for pattern-set searches"
        );
        let nfa: NFA = thompson::Compiler::new()
            // The regex crate's defaults (Unicode and UTF-8 mode; inline flags do the rest),
            // UTF-8 mode off for byte patterns.
            .syntax(syntax::Config::new().utf8(!cfg.prefilter))
            .configure(
                thompson::Config::new()
                    .utf8(!cfg.prefilter)
                    .which_captures(if cfg.spans {
                        thompson::WhichCaptures::Implicit
                    } else {
                        thompson::WhichCaptures::None
                    })
                    .nfa_size_limit(Some(cfg.nfa_size_limit)),
            )
            .build_many(patterns)
            .map_err(|e| err(&e))?;
        let dfa = hybrid::dfa::Builder::new()
            .configure(
                hybrid::dfa::Config::new()
                    .match_kind(cfg.kind)
                    .starts_for_each_pattern(cfg.spans)
                    .unicode_word_boundary(true)
                    .cache_capacity(cfg.dfa_cache_capacity)
                    // Span searches give up (and use the PikeVM) when the cache keeps being
                    // cleared while making little progress, as `meta::Regex` does. Pattern-set
                    // searches bound their own work (`which_matches_within`) and let the cache
                    // be cleared when it is full.
                    .minimum_cache_clear_count(cfg.spans.then_some(3))
                    .minimum_bytes_per_state(cfg.spans.then_some(10)),
            )
            .build_from_nfa(nfa.clone())
            .map_err(|e| err(&e))?;
        let vm = PikeVM::builder()
            .configure(PikeVM::config().match_kind(cfg.kind))
            .build_from_nfa(nfa)
            .map_err(|e| err(&e))?;
        let for_vm = vm.clone();
        let vm_create: VmCacheFn = Box::new(move || for_vm.create_cache());
        Ok(Forward {
            dfa_caches: dfa_caches(&dfa),
            dfa,
            fold_case: cfg.prefilter,
            vm,
            vm_caches: Pool::new(vm_create),
        })
    }

    pub(crate) fn pattern_len(&self) -> usize {
        self.vm.get_nfa().pattern_len()
    }

    /// The end (and pattern) of the first match in the input's span.
    pub(crate) fn search_half(&self, input: &Input<'_>) -> Option<HalfMatch> {
        debug_assert!(!self.fold_case, "only the pattern-set walk folds the text");
        let done = {
            let mut cache = self.dfa_caches.get();
            self.dfa.try_search_fwd(&mut cache, input)
        };
        match done {
            Ok(found) => found,
            Err(_) => self
                .search(input)
                .map(|m| HalfMatch::new(m.pattern(), m.end())),
        }
    }

    /// The first match with its start (PikeVM: for the rare cases nothing cheaper can answer).
    pub(crate) fn search(&self, input: &Input<'_>) -> Option<Match> {
        debug_assert!(!self.fold_case, "only the pattern-set walk folds the text");
        let mut cache = self.vm_caches.get();
        self.vm.find(&mut cache, input.clone())
    }

    /// Whether any pattern matches `text`.
    #[cfg(test)]
    pub(crate) fn is_match(&self, text: &str) -> bool {
        debug_assert!(!self.fold_case, "only the pattern-set walk folds the text");
        let input = Input::new(text).earliest(true);
        let done = {
            let mut cache = self.dfa_caches.get();
            self.dfa.try_search_fwd(&mut cache, &input)
        };
        match done {
            Ok(found) => found.is_some(),
            Err(_) => self.vm.is_match(&mut self.vm_caches.get(), input),
        }
    }

    /// Sets `ends` to every pattern that matches somewhere in `text`, with where its matches
    /// end, unless building the lazy DFA's states for this text would take more than `budget`
    /// bytes of new cache memory (or the lazy DFA cannot go on: cache thrashing, or a Unicode
    /// word boundary next to non-ASCII text). Returns whether the search completed; if not,
    /// `ends` is incomplete.
    ///
    /// A lazy DFA over many patterns is their product automaton: on text where many patterns
    /// are part-way through a match at once, nearly every byte needs a new state, and each new
    /// state costs a closure over thousands of NFA states. The budget bounds that work; the
    /// caller then finds candidates another way.
    ///
    /// Also returns the new state memory the search added (also when it stopped early).
    pub(crate) fn which_matches_within(
        &self,
        text: &str,
        ends: &mut Vec<MatchEnds>,
        budget: usize,
    ) -> (bool, usize) {
        ends.clear();
        let mut cache = self.dfa_caches.get();
        let base = cache.memory_usage();
        let complete = self.scan_set(&mut cache, text, ends, base, budget);
        // A cache cleared during the search holds less than at the start: nothing to count.
        (complete, cache.memory_usage().saturating_sub(base))
    }

    fn scan_set(
        &self,
        cache: &mut hybrid::dfa::Cache,
        text: &str,
        ends: &mut Vec<MatchEnds>,
        base: usize,
        budget: usize,
    ) -> bool {
        let Ok(mut sid) = self.dfa.start_state_forward(cache, &Input::new(text)) else {
            return false;
        };
        // Per pattern: 1 + its entry in `ends` (0: none yet); allocated at the first match, so
        // ordinary text (no match) does not pay for it.
        let mut entry: Vec<u32> = Vec::new();
        // Matches of these patterns end at `at`.
        let mut collect = |cache: &hybrid::dfa::Cache, sid, at: usize| {
            if entry.is_empty() {
                entry = vec![0; self.pattern_len()];
            }
            for i in 0..self.dfa.match_len(cache, sid) {
                let pid = self.dfa.match_pattern(cache, sid, i);
                match entry[pid.as_usize()] {
                    0 => {
                        ends.push(MatchEnds {
                            pattern: pid.as_usize(),
                            first: at,
                            last: at,
                        });
                        entry[pid.as_usize()] = u32::try_from(ends.len()).unwrap_or(u32::MAX);
                    }
                    k => ends[k as usize - 1].last = at,
                }
            }
        };
        for (at, &b) in text.as_bytes().iter().enumerate() {
            let b = if self.fold_case {
                b.to_ascii_lowercase()
            } else {
                b
            };
            // Out of an ordinary state a cached transition is one table lookup.
            let cached = if sid.is_tagged() {
                None
            } else {
                Some(self.dfa.next_state_untagged(cache, sid, b)).filter(|n| !n.is_unknown())
            };
            sid = match cached {
                Some(next) => next,
                None => {
                    // Without a budget, a transition not yet built ends the walk at once: a
                    // state of a large set takes up to ~150 µs to build.
                    if budget == 0 && !sid.is_tagged() {
                        return false;
                    }
                    // The only place the cache grows: check the budget after each step.
                    let Ok(next) = self.dfa.next_state(cache, sid, b) else {
                        return false;
                    };
                    let used = cache.memory_usage();
                    // Less memory than at the start: the cache was cleared during this search.
                    if used < base || used - base > budget {
                        return false;
                    }
                    next
                }
            };
            if sid.is_tagged() {
                if sid.is_match() {
                    // Match states are delayed by one byte: these patterns matched up to here.
                    collect(cache, sid, at);
                } else if sid.is_dead() {
                    return true;
                } else if sid.is_quit() {
                    return false;
                }
            }
        }
        let Ok(eoi) = self.dfa.next_eoi_state(cache, sid) else {
            return false;
        };
        if eoi.is_match() {
            collect(cache, eoi, text.len());
        }
        true
    }

    /// Adds every pattern that matches somewhere in `text` to `set`.
    #[cfg(test)]
    pub(crate) fn which_matches(&self, text: &str, set: &mut PatternSet) {
        debug_assert!(!self.fold_case, "only the pattern-set walk folds the text");
        let input = Input::new(text);
        let done = {
            let mut cache = self.dfa_caches.get();
            self.dfa
                .try_which_overlapping_matches(&mut cache, &input, set)
        };
        if done.is_err() {
            let mut cache = self.vm_caches.get();
            self.vm.which_overlapping_matches(&mut cache, &input, set);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex_automata::Anchored;

    fn cfg(kind: MatchKind) -> ForwardConfig {
        ForwardConfig {
            kind,
            spans: kind == MatchKind::LeftmostFirst,
            prefilter: false,
            nfa_size_limit: 64 << 20,
            dfa_cache_capacity: 1 << 20,
        }
    }

    #[test]
    fn which_matches_agrees_with_regex_set() {
        let pats = [
            r"(?i)\bignore\b",
            r"\d{3}-\d{4}",
            r"(?i)système",
            r"\bфраза\b",
            "zz+",
        ];
        let f = Forward::build(&pats, &cfg(MatchKind::All)).unwrap();
        let set = regex::RegexSet::new(pats).unwrap();
        for text in [
            "please IGNORE this, call 555-1234",
            "le SYSTÈME est là",
            "ключевая фраза здесь",
            "фразаignore",
            "nothing here",
            "ignoreé zzz",
        ] {
            let mut got = PatternSet::new(f.pattern_len());
            f.which_matches(text, &mut got);
            let got: Vec<usize> = got.iter().map(|p| p.as_usize()).collect();
            let want: Vec<usize> = set.matches(text).iter().collect();
            assert_eq!(got, want, "{text}");
            let mut within = Vec::new();
            // (Non-ASCII next to a Unicode `\b` stops the lazy DFA: the set is then incomplete.)
            if f.which_matches_within(text, &mut within, usize::MAX).0 {
                let mut within: Vec<usize> = within.iter().map(|e| e.pattern).collect();
                within.sort_unstable();
                assert_eq!(within, want, "{text}");
            }
            assert_eq!(f.is_match(text), set.is_match(text), "{text}");
        }
    }

    #[test]
    fn budget_bounds_new_states() {
        let pats = [r"(?i)\bignore\b.*\brules\b", r"(?i)you\s+\w+\s+must", "zz+"];
        let f = Forward::build(&pats, &cfg(MatchKind::All)).unwrap();
        let text = "you really must ignore these rules, ".repeat(20);
        let (complete, spent) = f.which_matches_within(&text, &mut Vec::new(), 0);
        assert!(!complete && spent > 0);
        // Given room, the search completes; the same text again needs no new state.
        let mut ends = Vec::new();
        assert!(f.which_matches_within(&text, &mut ends, usize::MAX).0);
        assert_eq!(ends.len(), 2);
        let mut again = Vec::new();
        assert_eq!(f.which_matches_within(&text, &mut again, 0), (true, 0));
        assert_eq!(again, ends);
    }

    #[test]
    fn match_ends_are_the_first_and_last_end_of_all_matches() {
        // Overlapping matches count: `zz+` on "zzzz" ends at 2, 3 and 4.
        let pats = ["zz+", r"\d{3}-\d{4}", "a.{0,3}b", "(?i)ignore", "q"];
        let f = Forward::build(&pats, &cfg(MatchKind::All)).unwrap();
        for text in [
            "zzzz and 555-1234 or 555-12345, aXXb ab a---b",
            "IGNORE ignore iGnOrE",
            "nothing",
            "ab",
            "zz",
        ] {
            let mut ends = Vec::new();
            assert!(f.which_matches_within(text, &mut ends, usize::MAX).0);
            // Each pattern once.
            let mut patterns: Vec<usize> = ends.iter().map(|e| e.pattern).collect();
            patterns.sort_unstable();
            patterns.dedup();
            assert_eq!(patterns.len(), ends.len(), "{text}");
            for (p, pat) in pats.iter().enumerate() {
                // Every end of every match, by brute force over substrings.
                let whole = regex::Regex::new(&format!("^(?:{pat})$")).unwrap();
                let all: Vec<usize> = (0..=text.len())
                    .filter(|&e| (0..e).any(|s| whole.is_match(&text[s..e])))
                    .collect();
                let got = ends.iter().find(|e| e.pattern == p);
                match (all.first(), all.last(), got) {
                    (Some(&first), Some(&last), Some(g)) => {
                        assert_eq!((g.first, g.last), (first, last), "{pat} on {text}");
                    }
                    (None, None, None) => {}
                    other => panic!("{pat} on {text}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn half_and_full_matches_agree_with_meta() {
        let pats = [r"\b[a-z]+@[a-z]+\.com\b", r"\bsk-[A-Za-z0-9]{8}\b", r"\d+"];
        let f = Forward::build(&pats, &cfg(MatchKind::LeftmostFirst)).unwrap();
        let meta = regex_automata::meta::Regex::new_many(&pats).unwrap();
        // Non-ASCII next to a Unicode word boundary makes the lazy DFA quit: the PikeVM answers.
        for text in [
            "mail bob@example.com or sk-abcdEFGH now",
            "é bob@ex.com 42",
            "x",
        ] {
            let input = Input::new(text);
            let want = meta.search(&input);
            assert_eq!(f.search(&input), want, "{text}");
            assert_eq!(
                f.search_half(&input),
                want.map(|m| HalfMatch::new(m.pattern(), m.end())),
                "{text}"
            );
            if let Some(m) = want {
                let anchored = Input::new(text)
                    .range(m.start()..)
                    .anchored(Anchored::Pattern(m.pattern()));
                assert_eq!(f.search_half(&anchored).map(|h| h.offset()), Some(m.end()));
            }
        }
    }
}
