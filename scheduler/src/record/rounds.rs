//! The rounds of a job (its first publication, then one per retry) and which of their
//! tasks are done, given up, and how many images each holds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tagfleet_contracts::TaskMessage;
use tagfleet_contracts::schema::GivenUp;

/// A set of task numbers (1-based), as a bitmap written in hex: 3,125 tasks take 782
/// characters, so even large jobs rewrite their record cheaply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskSet {
    bits: Vec<u8>,
}

impl TaskSet {
    pub fn with_capacity(tasks: u32) -> Self {
        Self {
            bits: vec![0; (tasks as usize).div_ceil(8)],
        }
    }

    /// Where task `n` lives: (byte, mask); `None` out of range.
    fn at(&self, n: u32) -> Option<(usize, u8)> {
        let i = (n as usize).checked_sub(1)?;
        (i / 8 < self.bits.len()).then_some((i / 8, 1 << (i % 8)))
    }

    /// Adds task `n`; false when it was there already (or is out of range).
    pub fn insert(&mut self, n: u32) -> bool {
        let Some((byte, mask)) = self.at(n) else {
            return false;
        };
        let fresh = self.bits[byte] & mask == 0;
        self.bits[byte] |= mask;
        fresh
    }

    /// Takes task `n` out; false when it was not there.
    pub fn remove(&mut self, n: u32) -> bool {
        let Some((byte, mask)) = self.at(n) else {
            return false;
        };
        let was = self.bits[byte] & mask != 0;
        self.bits[byte] &= !mask;
        was
    }

    pub fn contains(&self, n: u32) -> bool {
        self.at(n)
            .is_some_and(|(byte, mask)| self.bits[byte] & mask != 0)
    }

    /// The task numbers in the set, in order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.bits.iter().enumerate().flat_map(|(byte, bits)| {
            (0..8u32)
                .filter(move |bit| bits & (1 << bit) != 0)
                .map(move |bit| byte as u32 * 8 + bit + 1)
        })
    }

    pub fn len(&self) -> u32 {
        self.bits.iter().map(|b| b.count_ones()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Serialize for TaskSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(&self.bits))
    }
}

impl<'de> Deserialize<'de> for TaskSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bits = hex::decode(text).map_err(serde::de::Error::custom)?;
        Ok(Self { bits })
    }
}

/// One round of publishing: the first one, then one per retry. Task ids of round 0 are
/// `t000001`…, of round r `r<r>-t000001`….
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Round {
    pub tasks: u32,
    /// Tasks counted, given up ones included.
    pub done: TaskSet,
    /// Images published in the round: every task holds `chunk` of them, the last one the
    /// rest. Absent from records written before they were kept: [`Round::assume_sizes`]
    /// fills them in at load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<u32>,
    /// Tasks a worker gave up, by reason (each also in `done`): their images never ran.
    /// A later report that ran the task takes it out again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub given_up: BTreeMap<GivenUp, TaskSet>,
}

impl Round {
    /// The round of these task messages (made by `TaskPlan::messages`: every one but the
    /// last holds as many images as the first).
    pub fn published(messages: &[TaskMessage]) -> Self {
        let images = messages.iter().map(|m| m.items.len() as u64).sum();
        let chunk = messages.first().map_or(1, |m| m.items.len());
        let round = Self::new(images, chunk);
        debug_assert_eq!(round.tasks as usize, messages.len());
        round
    }

    /// A round of `images` images published in tasks of `chunk`.
    pub fn new(images: u64, chunk: usize) -> Self {
        let chunk = chunk.max(1) as u64;
        let tasks = images.div_ceil(chunk) as u32;
        Self {
            tasks,
            done: TaskSet::with_capacity(tasks),
            images: Some(images),
            chunk: Some(chunk as u32),
            given_up: BTreeMap::new(),
        }
    }

    pub fn is_complete(&self) -> bool {
        self.done.len() >= self.tasks
    }

    /// Images of task `n` (1-based), when the round knows its sizes; a round whose image
    /// count is unknown (written before it was kept) answers its chunk for every task.
    pub fn task_images(&self, n: u32) -> Option<u64> {
        let chunk = u64::from(self.chunk?);
        if n < self.tasks {
            return Some(chunk);
        }
        let before = chunk * u64::from(self.tasks.saturating_sub(1));
        Some(
            self.images
                .map_or(chunk, |images| images.saturating_sub(before)),
        )
    }

    /// Fills in the sizes of a round written before records kept them: tasks of
    /// `chunk_size` (today's setting), unless that does not give the round's task count
    /// for `images` (round 0 holds the job's total), then the even split that does.
    pub fn assume_sizes(&mut self, images: Option<u64>, chunk_size: usize) {
        if self.chunk.is_some() {
            return;
        }
        self.images = self.images.or(images);
        let tasks = u64::from(self.tasks.max(1));
        let chunk = match self.images {
            Some(images) if images.div_ceil(chunk_size.max(1) as u64) != tasks => {
                images.div_ceil(tasks)
            }
            _ => chunk_size.max(1) as u64,
        };
        self.chunk = Some(chunk as u32);
    }

    /// The task's reason when it was given up.
    pub fn given_up_reason(&self, n: u32) -> Option<GivenUp> {
        self.given_up
            .iter()
            .find_map(|(reason, set)| set.contains(n).then_some(*reason))
    }

    /// Marks a counted task given up.
    pub fn give_up(&mut self, n: u32, reason: GivenUp) {
        let tasks = self.tasks;
        self.given_up
            .entry(reason)
            .or_insert_with(|| TaskSet::with_capacity(tasks))
            .insert(n);
    }

    /// Takes task `n` out of the given up ones; false when it was not given up.
    pub fn take_back(&mut self, n: u32) -> bool {
        let Some(reason) = self.given_up_reason(n) else {
            return false;
        };
        let set = self.given_up.get_mut(&reason).expect("found above");
        set.remove(n);
        if set.is_empty() {
            self.given_up.remove(&reason);
        }
        true
    }

    /// Images of the round's tasks given up, by reason.
    pub fn unfinished_by_reason(&self) -> impl Iterator<Item = (GivenUp, u64)> + '_ {
        self.given_up.iter().map(|(reason, set)| {
            let images = set.iter().filter_map(|n| self.task_images(n)).sum();
            (*reason, images)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_set_adds_removes_and_lists_its_tasks() {
        let mut set = TaskSet::with_capacity(20);
        for n in [1, 8, 9, 20] {
            assert!(set.insert(n));
        }
        assert!(!set.insert(8));
        assert!(!set.insert(0) && !set.insert(25), "out of range");
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![1, 8, 9, 20]);
        assert!(set.remove(9) && !set.remove(9));
        assert!(set.contains(20) && !set.contains(9) && !set.contains(0));
        assert_eq!(set.len(), 3);
    }

    #[test]
    fn a_round_knows_the_images_of_each_task() {
        let round = Round::new(70, 32);
        assert_eq!(round.tasks, 3);
        assert_eq!(
            (1..=3).map(|n| round.task_images(n)).collect::<Vec<_>>(),
            vec![Some(32), Some(32), Some(6)]
        );
    }

    #[test]
    fn a_round_written_before_sizes_were_kept_assumes_them() {
        let old = |tasks| Round {
            tasks,
            done: TaskSet::with_capacity(tasks),
            images: None,
            chunk: None,
            given_up: BTreeMap::new(),
        };
        let mut first = old(3);
        first.assume_sizes(Some(70), 32);
        assert_eq!(first.task_images(3), Some(6));
        // The chunk size changed since: an even split that gives the same task count.
        let mut moved = old(3);
        moved.assume_sizes(Some(70), 10);
        assert_eq!(
            (moved.task_images(1), moved.task_images(3)),
            (Some(24), Some(22))
        );
        // A retry round's image count was never known: its chunk, the caller caps it.
        let mut retry = old(1);
        retry.assume_sizes(None, 32);
        assert_eq!(retry.task_images(1), Some(32));
    }
}
