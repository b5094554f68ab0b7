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

/// The seeds, up to `seeds`, until one finds a violation of `wanted` with `rule` broken.
fn first_catch(rule: BrokenRule, seeds: u64, wanted: &[&str]) -> Option<u64> {
    let _broken = break_rule(rule);
    (0..seeds).find(|seed| {
        let report = run_seed(*seed, 5, false);
        report.violations.iter().any(|violation| wanted.contains(&violation.invariant))
    })
}

/// The defect of judging claims by the task's editable fields: the agents edit requirements
/// while claims run, and a claim the mesh confirmed that an edit then refused (seed 0), or a
/// done task that an edit reopened, is caught.
#[test]
fn claims_judged_by_editable_fields_are_caught() {
    let wanted = [invariant::CONFIRMED_NEVER_LOSES, invariant::FINISHED_STAYS_FINISHED];
    let caught = first_catch(BrokenRule::ClaimsJudgedByFields, 20, &wanted);
    assert!(caught.is_some(), "20 seeds ran with claims judged by edited fields and no checker noticed");
}

/// Stale tasks left out of `ready`: a task whose holder vanished is never taken over, and the
/// finishing phase finds it stale (seed 0).
#[test]
fn stale_tasks_left_out_of_ready_are_caught() {
    let caught = first_catch(BrokenRule::StaleNotOffered, 20, &[invariant::STALE_TAKEN_OVER]);
    assert!(caught.is_some(), "20 seeds ran with stale tasks never offered and no checker noticed");
}

#[test]
fn the_same_seeds_are_clean_with_the_rule_intact() {
    for seed in 0..3u64 {
        let report = run_seed(seed, 5, false);
        assert!(report.violations.is_empty(), "seed {seed}: {:?}", report.violations);
    }
}
