//! The checkers bite: with a deliberately broken resolver rule, netsim finds a violation of
//! the invariant that rule guards within a few seeds.

use meshwork_crdt::resolve::sabotage::{BrokenRule, break_rule};
use meshwork_netsim::check::invariant;
use meshwork_netsim::run_seed;

#[test]
fn a_done_that_needs_a_winning_claim_is_caught_as_finished_not_staying_finished() {
    // The switch is per thread, and a seed runs on the calling thread.
    let _broken = break_rule(BrokenRule::DoneNeedsWinningClaim);
    let caught = (0..20u64).find(|seed| {
        let report = run_seed(*seed, 5, false);
        report.violations.iter().any(|violation| violation.invariant == invariant::FINISHED_STAYS_FINISHED)
    });
    assert!(caught.is_some(), "20 seeds ran with a broken resolver and no checker noticed");
}

#[test]
fn the_same_seeds_are_clean_with_the_rule_intact() {
    for seed in 0..3u64 {
        let report = run_seed(seed, 5, false);
        assert!(report.violations.is_empty(), "seed {seed}: {:?}", report.violations);
    }
}
