//! A rule's status machine: one pure function, [`next`], decides every change of
//! `rules.status`, whether an operator asked for it or the scheduler found it due.
//!
//! | from \ action | start | stop | pause | resume | halt | cancel | complete | advance | exclude |
//! |---|---|---|---|---|---|---|---|---|---|
//! | not_started | pushing | – | – | – | – | cancelled | – | – | – |
//! | pushing | – | stopped | paused | – | halted | cancelled | completed | pushing | – |
//! | paused | – | – | – | pushing | – | cancelled | completed | – | paused |
//! | halted | – | – | – | pushing | – | cancelled | completed | – | halted |
//! | stopped | pushing | – | – | – | – | cancelled | – | – | – |
//! | completed, cancelled | final | | | | | | | | |
//!
//! `stop` is the console's: `start` again re-queues failed and undelivered targets and takes
//! devices that match by then. `pause` holds the rollout as it is (in-flight devices finish);
//! `resume` goes on where it stopped. `halt` is `pause` decided by the failure threshold.

use ota_wire::rules::RuleStatus;

/// What is asked of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Pause,
    Resume,
    Halt,
    Cancel,
    /// The period ended, or every target succeeded.
    Complete,
    /// Start the next wave by hand.
    Advance,
    /// Take devices out.
    Exclude,
}

/// The status `action` leads to from `status`, or why it is refused.
pub fn next(status: RuleStatus, action: Action) -> Result<RuleStatus, &'static str> {
    use Action as A;
    use RuleStatus as S;
    match (status, action) {
        (S::NotStarted | S::Stopped, A::Start) => Ok(S::Pushing),
        (S::Pushing, A::Stop) => Ok(S::Stopped),
        (S::Pushing, A::Pause) => Ok(S::Paused),
        (S::Pushing, A::Halt) => Ok(S::Halted),
        (S::Paused | S::Halted, A::Resume) => Ok(S::Pushing),
        (S::NotStarted | S::Pushing | S::Paused | S::Halted | S::Stopped, A::Cancel) => Ok(S::Cancelled),
        (S::Pushing | S::Paused | S::Halted, A::Complete) => Ok(S::Completed),
        (S::Pushing, A::Advance) => Ok(S::Pushing),
        (S::Paused | S::Halted, A::Exclude) => Ok(status),
        (S::Completed | S::Cancelled, _) => Err("the rule has ended"),
        (S::Pushing, A::Start) => Err("the rule is already pushing"),
        (_, A::Start) => Err("only a rule not started or stopped can start; resume a paused or halted one"),
        (_, A::Resume) => Err("only a paused or halted rule can resume"),
        (_, A::Exclude) => Err("pause the rule before excluding devices"),
        (_, A::Advance) => Err("only a pushing rule advances to its next wave"),
        (_, A::Stop | A::Pause | A::Halt) => Err("only a pushing rule can be stopped, paused or halted"),
        (_, A::Complete) => Err("only a rule under way completes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUSES: [RuleStatus; 7] = [
        RuleStatus::NotStarted,
        RuleStatus::Pushing,
        RuleStatus::Paused,
        RuleStatus::Halted,
        RuleStatus::Stopped,
        RuleStatus::Completed,
        RuleStatus::Cancelled,
    ];
    const ACTIONS: [Action; 9] = [
        Action::Start,
        Action::Stop,
        Action::Pause,
        Action::Resume,
        Action::Halt,
        Action::Cancel,
        Action::Complete,
        Action::Advance,
        Action::Exclude,
    ];

    /// The module doc's table, row by row (`-` refused).
    const TABLE: &[&str] = &[
        "pushing - - - - cancelled - - -",
        "- stopped paused - halted cancelled completed pushing -",
        "- - - pushing - cancelled completed - paused",
        "- - - pushing - cancelled completed - halted",
        "pushing - - - - cancelled - - -",
        "- - - - - - - - -",
        "- - - - - - - - -",
    ];

    #[test]
    fn every_status_by_every_action() {
        for (status, row) in STATUSES.iter().zip(TABLE) {
            let got: Vec<&str> =
                ACTIONS.iter().map(|a| next(*status, *a).map(RuleStatus::as_str).unwrap_or("-")).collect();
            assert_eq!(got.join(" "), *row, "from {status:?}");
        }
    }

    #[test]
    fn refusals_say_why() {
        assert_eq!(next(RuleStatus::Pushing, Action::Start), Err("the rule is already pushing"));
        assert_eq!(next(RuleStatus::Pushing, Action::Exclude), Err("pause the rule before excluding devices"));
        assert_eq!(next(RuleStatus::Completed, Action::Cancel), Err("the rule has ended"));
        assert!(RuleStatus::Halted.is_live() && !RuleStatus::Stopped.is_live());
    }
}
