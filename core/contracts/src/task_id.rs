//! Task ids: `t000007` is the 7th task of a job's first round, `r2-t000031` the 31st task
//! of retry round 2. They name result objects, so they are defined here once.

use std::fmt;
use std::str::FromStr;

/// Which task of which round of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    /// 0 for the job's first publication, then one per retry.
    pub round: usize,
    /// 1-based position of the task in its round.
    pub n: u32,
}

impl TaskId {
    pub fn new(round: usize, n: u32) -> Self {
        Self { round, n }
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.round > 0 {
            write!(f, "r{}-", self.round)?;
        }
        write!(f, "t{:06}", self.n)
    }
}

impl FromStr for TaskId {
    type Err = String;

    fn from_str(id: &str) -> Result<Self, Self::Err> {
        let invalid = || format!("{id:?} is not a task id (t000001, r1-t000001)");
        let (round, rest) = match id.strip_prefix('r') {
            Some(rest) => {
                let (round, rest) = rest.split_once('-').ok_or_else(invalid)?;
                (round.parse().map_err(|_| invalid())?, rest)
            }
            None => (0, id),
        };
        let digits = rest.strip_prefix('t').ok_or_else(invalid)?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        Ok(Self::new(round, digits.parse().map_err(|_| invalid())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_read_back_as_themselves() {
        assert_eq!(TaskId::new(0, 7).to_string(), "t000007");
        assert_eq!(TaskId::new(2, 31).to_string(), "r2-t000031");
        for id in [
            TaskId::new(0, 7),
            TaskId::new(2, 31),
            TaskId::new(0, 1_234_567),
        ] {
            assert_eq!(id.to_string().parse::<TaskId>(), Ok(id));
        }
        for bad in ["x1", "r-t1", "t", "t-1", "r1t000001", ""] {
            assert!(bad.parse::<TaskId>().is_err(), "{bad:?}");
        }
    }
}
