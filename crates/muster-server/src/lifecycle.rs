//! The task lifecycle's rules, as pure functions: given where a task stands and what happened,
//! which transition follows, and which transitions are legal at all. Every store backend calls
//! these and only applies the answer (conditionally, on state and attempt), so SQLite and a
//! later PostgreSQL store cannot disagree about what a failure or a cancel means. No I/O here.

use muster_api::{AttemptOutcome, TaskState};

use crate::error::StoreError;

/// What a rule needs to know of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    pub state: TaskState,
    /// The current (or last) attempt number; 0 before the first claim.
    pub attempt: u32,
    /// The attempt number at the last operator retry: attempts before it do not count against
    /// `max_retries`.
    pub retry_floor: u32,
    pub max_retries: u32,
    /// An operator asked to cancel the running attempt.
    pub cancel_requested: bool,
    /// Attempts lost through no fault of the task (its agent went offline or restarted, its
    /// lease lapsed) since the last operator retry, not counting the current one.
    pub lost: u32,
}

/// Attempts a task may lose through no fault of its own before it fails anyway: a task that
/// kills every agent it touches must still end.
pub const MAX_LOST_ATTEMPTS: u32 = 5;

impl Facts {
    /// Retries already spent since the last operator retry, counting the current attempt's;
    /// lost attempts are not the task's doing and spend none.
    fn retries_used(&self) -> u32 {
        self.attempt
            .saturating_sub(self.retry_floor)
            .saturating_sub(self.lost)
    }
}

/// How a running attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The agent reported a failure; `retryable` is its word on whether trying again may help.
    Failed { retryable: bool },
    /// The agent went away (offline, removed) or its lease lapsed.
    Lost,
    /// The attempt ran past the task's `timeout_s`.
    TimedOut,
}

/// What follows the end of an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfterAttempt {
    /// `queued` (a retry), `failed` or `cancelled`.
    pub state: TaskState,
    /// What the attempt's record says.
    pub outcome: AttemptOutcome,
    /// For a retry: which retry this is (1 for the first), for the backoff.
    pub retry_number: Option<u32>,
    /// The attempt was lost through no fault of the task: it counts against
    /// [`MAX_LOST_ATTEMPTS`], not against `max_retries`.
    pub lost: bool,
}

/// The end of a running attempt: a cancel asked for wins; a lost attempt runs again (without
/// spending a retry) until [`MAX_LOST_ATTEMPTS`]; otherwise a retry while retries remain,
/// else the task fails for good.
pub fn after_attempt(facts: &Facts, ending: Ending) -> AfterAttempt {
    let outcome = match ending {
        Ending::Failed { .. } if facts.cancel_requested => AttemptOutcome::Cancelled,
        Ending::Failed { .. } => AttemptOutcome::Failed,
        Ending::Lost => AttemptOutcome::Lost,
        Ending::TimedOut => AttemptOutcome::TimedOut,
    };
    let retryable = match ending {
        Ending::Failed { retryable } => retryable,
        Ending::Lost | Ending::TimedOut => true,
    };
    let lost = ending == Ending::Lost;
    let (state, retry_number) = if facts.cancel_requested {
        (TaskState::Cancelled, None)
    } else if lost {
        let lost_now = facts.lost + 1;
        if lost_now <= MAX_LOST_ATTEMPTS {
            (TaskState::Queued, Some(lost_now))
        } else {
            (TaskState::Failed, None)
        }
    } else {
        let used = facts.retries_used();
        if retryable && used <= facts.max_retries {
            (TaskState::Queued, Some(used))
        } else {
            (TaskState::Failed, None)
        }
    };
    AfterAttempt {
        state,
        outcome,
        retry_number,
        lost,
    }
}

/// A report (logs, complete, fail) is accepted only for the attempt that is running now.
/// `task` names the task in the refusal; it is formatted only then.
pub fn check_report<T: std::fmt::Display + ?Sized>(
    task: &T,
    facts: &Facts,
    attempt: u32,
) -> Result<(), StoreError> {
    if facts.state == TaskState::Running && facts.attempt == attempt {
        return Ok(());
    }
    Err(StoreError::Conflict(format!(
        "attempt {attempt} of task {task} is not current (the task is {} at attempt {})",
        facts.state, facts.attempt
    )))
}

/// What an operator's cancel does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelPlan {
    /// Not running anywhere: cancelled at once.
    Now,
    /// Running: the agent is told, and the attempt's end becomes the cancel.
    AskAgent,
}

pub fn on_cancel<T: std::fmt::Display + ?Sized>(
    task: &T,
    facts: &Facts,
) -> Result<CancelPlan, StoreError> {
    match facts.state {
        TaskState::Queued | TaskState::Assigned => Ok(CancelPlan::Now),
        TaskState::Running => Ok(CancelPlan::AskAgent),
        state => Err(StoreError::Conflict(format!(
            "task {task} is already {state}"
        ))),
    }
}

/// An operator's retry queues a failed or cancelled task again, with its retries renewed.
pub fn on_retry<T: std::fmt::Display + ?Sized>(task: &T, facts: &Facts) -> Result<(), StoreError> {
    if matches!(facts.state, TaskState::Failed | TaskState::Cancelled) {
        return Ok(());
    }
    Err(StoreError::Conflict(format!(
        "task {task} is {}; only failed or cancelled tasks can be retried",
        facts.state
    )))
}

/// Whether a task may move from `from` to `to`. The store's conditional updates only ever
/// make these moves; the conformance suite checks that no operation makes another. Running
/// back to assigned is the undoing of a claim whose answer reached no one (the attempt it
/// started is forgotten). An assignment that starts the task at once, for an agent already
/// waiting, is announced as its two moves, queued to assigned to running.
pub fn is_legal(from: TaskState, to: TaskState) -> bool {
    use TaskState::*;
    matches!(
        (from, to),
        (Queued, Assigned)
            | (Queued, Cancelled)
            | (Assigned, Running)
            | (Assigned, Queued)
            | (Assigned, Cancelled)
            | (Running, Assigned)
            | (Running, Completed)
            | (Running, Queued)
            | (Running, Failed)
            | (Running, Cancelled)
            | (Failed, Queued)
            | (Cancelled, Queued)
    )
}

/// How long to wait before a retry: exponential backoff with jitter; fixed for a store's life.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub backoff_base_ms: i64,
    pub backoff_max_ms: i64,
}

impl RetryPolicy {
    /// base × 2^(n−1), capped, times `jitter`, a factor in [0.5, 1.5) the caller draws.
    pub fn delay_ms_with(&self, retry_number: u32, jitter: f64) -> i64 {
        let exp = retry_number.saturating_sub(1).min(30);
        let raw = self.backoff_base_ms.saturating_mul(1i64 << exp);
        let capped = raw.min(self.backoff_max_ms).max(0);
        (capped as f64 * jitter.clamp(0.5, 1.5)) as i64
    }

    /// [`RetryPolicy::delay_ms_with`] with a random jitter, so retries of many tasks that
    /// failed together spread out.
    pub fn delay_ms(&self, retry_number: u32) -> i64 {
        self.delay_ms_with(retry_number, 0.5 + rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(attempt: u32, max_retries: u32) -> Facts {
        Facts {
            state: TaskState::Running,
            attempt,
            retry_floor: 0,
            max_retries,
            cancel_requested: false,
            lost: 0,
        }
    }

    #[test]
    fn a_retryable_failure_is_retried_while_retries_remain() {
        let after = after_attempt(&running(1, 2), Ending::Failed { retryable: true });
        assert_eq!(after.state, TaskState::Queued);
        assert_eq!(after.retry_number, Some(1));
        assert_eq!(after.outcome, AttemptOutcome::Failed);
        let after = after_attempt(&running(3, 2), Ending::Failed { retryable: true });
        assert_eq!(after.state, TaskState::Failed);
        assert_eq!(after.retry_number, None);
    }

    #[test]
    fn a_permanent_failure_ends_the_task_at_once() {
        let after = after_attempt(&running(1, 5), Ending::Failed { retryable: false });
        assert_eq!(after.state, TaskState::Failed);
    }

    #[test]
    fn a_requested_cancel_wins_over_a_retry() {
        let facts = Facts {
            cancel_requested: true,
            ..running(1, 5)
        };
        let after = after_attempt(&facts, Ending::Failed { retryable: true });
        assert_eq!(after.state, TaskState::Cancelled);
        assert_eq!(after.outcome, AttemptOutcome::Cancelled);
        let after = after_attempt(&facts, Ending::Lost);
        assert_eq!(after.state, TaskState::Cancelled);
        assert_eq!(after.outcome, AttemptOutcome::Lost);
    }

    #[test]
    fn lost_and_timed_out_attempts_are_retried_and_recorded_as_such() {
        let lost = after_attempt(&running(1, 1), Ending::Lost);
        assert_eq!(
            (lost.state, lost.outcome),
            (TaskState::Queued, AttemptOutcome::Lost)
        );
        let timed_out = after_attempt(&running(1, 1), Ending::TimedOut);
        assert_eq!(
            (timed_out.state, timed_out.outcome),
            (TaskState::Queued, AttemptOutcome::TimedOut)
        );
    }

    #[test]
    fn a_lost_attempt_spends_no_retry_until_the_cap() {
        // An agent that dies holding a task with no retries: the task runs again.
        let after = after_attempt(&running(1, 0), Ending::Lost);
        assert_eq!(after.state, TaskState::Queued);
        assert!(after.lost);
        // Its next attempt fails: that one is the task's own, and there are no retries.
        let facts = Facts {
            lost: 1,
            ..running(2, 0)
        };
        let after = after_attempt(&facts, Ending::Failed { retryable: true });
        assert_eq!(after.state, TaskState::Failed);
        // With a retry left, the lost attempt did not spend it.
        let facts = Facts {
            lost: 1,
            ..running(2, 1)
        };
        let after = after_attempt(&facts, Ending::Failed { retryable: true });
        assert_eq!(after.state, TaskState::Queued);
        // A task that kills every agent it touches still ends.
        let facts = Facts {
            lost: MAX_LOST_ATTEMPTS,
            ..running(MAX_LOST_ATTEMPTS + 1, 100)
        };
        let after = after_attempt(&facts, Ending::Lost);
        assert_eq!(after.state, TaskState::Failed);
        assert_eq!(after.outcome, AttemptOutcome::Lost);
    }

    #[test]
    fn an_operator_retry_renews_the_retries() {
        let facts = Facts {
            retry_floor: 3,
            ..running(4, 1)
        };
        let after = after_attempt(&facts, Ending::Failed { retryable: true });
        assert_eq!(after.state, TaskState::Queued);
        assert_eq!(after.retry_number, Some(1));
    }

    #[test]
    fn only_the_running_attempt_may_report() {
        assert!(check_report("t", &running(2, 0), 2).is_ok());
        assert!(check_report("t", &running(2, 0), 1).is_err());
        let done = Facts {
            state: TaskState::Completed,
            ..running(2, 0)
        };
        assert!(check_report("t", &done, 2).is_err());
    }

    #[test]
    fn cancel_and_retry_apply_only_where_they_mean_something() {
        let at = |state| Facts {
            state,
            ..running(1, 0)
        };
        assert_eq!(
            on_cancel("t", &at(TaskState::Queued)).unwrap(),
            CancelPlan::Now
        );
        assert_eq!(
            on_cancel("t", &at(TaskState::Assigned)).unwrap(),
            CancelPlan::Now
        );
        assert_eq!(
            on_cancel("t", &at(TaskState::Running)).unwrap(),
            CancelPlan::AskAgent
        );
        for finished in [
            TaskState::Completed,
            TaskState::Failed,
            TaskState::Cancelled,
        ] {
            assert!(on_cancel("t", &at(finished)).is_err());
        }
        for state in TaskState::ALL {
            let allowed = matches!(state, TaskState::Failed | TaskState::Cancelled);
            assert_eq!(on_retry("t", &at(*state)).is_ok(), allowed, "{state}");
        }
    }

    #[test]
    fn every_rule_makes_only_legal_moves() {
        for state in TaskState::ALL {
            let facts = Facts {
                state: *state,
                ..running(1, 1)
            };
            if state == &TaskState::Running {
                for ending in [
                    Ending::Failed { retryable: true },
                    Ending::Failed { retryable: false },
                    Ending::Lost,
                    Ending::TimedOut,
                ] {
                    let after = after_attempt(&facts, ending);
                    assert!(is_legal(*state, after.state), "{state} -> {}", after.state);
                }
            }
            if matches!(on_cancel("t", &facts), Ok(CancelPlan::Now)) {
                assert!(is_legal(*state, TaskState::Cancelled));
            }
            if on_retry("t", &facts).is_ok() {
                assert!(is_legal(*state, TaskState::Queued));
            }
        }
        assert!(!is_legal(TaskState::Completed, TaskState::Queued));
        assert!(!is_legal(TaskState::Queued, TaskState::Running));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter_in_bounds() {
        let policy = RetryPolicy {
            backoff_base_ms: 1000,
            backoff_max_ms: 5000,
        };
        assert_eq!(policy.delay_ms_with(1, 1.0), 1000);
        assert_eq!(policy.delay_ms_with(2, 1.0), 2000);
        assert_eq!(policy.delay_ms_with(3, 1.0), 4000);
        assert_eq!(policy.delay_ms_with(9, 1.0), 5000);
        assert_eq!(policy.delay_ms_with(1, 0.5), 500);
        for _ in 0..100 {
            let d = policy.delay_ms(2);
            assert!((1000..3000).contains(&d), "{d}");
        }
    }
}
