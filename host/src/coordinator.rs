//! The performance coordinator: wraps every stage call in `start_phase` / `end_phase` and
//! hands the outcome to the observation path. A stage never knows it exists.

use std::{sync::Arc, time::Instant};

use crate::monitor::{CallOutcome, StageStats};

/// How a stage's calls are observed.
#[derive(Clone)]
pub enum Coordinator {
    /// No timing and no recording at all.
    Disabled,
    /// Straight into the stage's statistics, in-process.
    Direct(Arc<StageStats>),
}

/// A phase in progress.
pub struct Phase {
    started: Option<Instant>,
}

impl Coordinator {
    #[inline]
    pub fn start_phase(&self) -> Phase {
        match self {
            Coordinator::Disabled => Phase { started: None },
            Coordinator::Direct(_) => Phase {
                started: Some(Instant::now()),
            },
        }
    }

    #[inline]
    pub fn end_phase(&self, phase: Phase, outcome: &CallOutcome<'_>) {
        match self {
            Coordinator::Disabled => {}
            Coordinator::Direct(stats) => {
                stats.record_call(phase.started.map(|s| s.elapsed()), outcome)
            }
        }
    }

    /// The stage's statistics, where they are kept.
    pub fn stats(&self) -> Option<&Arc<StageStats>> {
        match self {
            Coordinator::Disabled => None,
            Coordinator::Direct(stats) => Some(stats),
        }
    }
}
