//! A memory budget for decoded images. When executors preprocess on their GPU, the decode
//! threads hand over uint8 pixels (the crop's window of the image as decoded: a JPEG's is
//! small, a 12-megapixel PNG's up to 27 MB), not the model's small float tensor, and the
//! bounded channels count images, not bytes. The
//! budget bounds the bytes: a decode thread reserves an image's size before handing it on
//! and waits while the budget is spent; the reservation is returned when the executor
//! drops the image after its batch.

use std::sync::{Arc, Condvar, Mutex};

/// The default: room for a few batches of 1080p photos (6 MB each).
pub const DEFAULT_PIXEL_BUDGET: usize = 2 << 30;

pub struct PixelBudget {
    capacity: usize,
    used: Mutex<usize>,
    freed: Condvar,
}

/// Bytes held against a [`PixelBudget`] until dropped.
pub struct Reservation {
    budget: Arc<PixelBudget>,
    bytes: usize,
}

impl PixelBudget {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity: capacity.max(1),
            used: Mutex::new(0),
            freed: Condvar::new(),
        })
    }

    /// Blocks until `bytes` fit. An image larger than the whole budget waits until nothing
    /// else is held and then takes all of it, so it still passes, alone.
    pub fn reserve(self: &Arc<Self>, bytes: usize) -> Reservation {
        let bytes = bytes.min(self.capacity);
        let mut used = self.used.lock().expect("the budget lock is never poisoned");
        while *used + bytes > self.capacity {
            used = self
                .freed
                .wait(used)
                .expect("the budget lock is never poisoned");
        }
        *used += bytes;
        Reservation {
            budget: self.clone(),
            bytes,
        }
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> usize {
        *self.used.lock().expect("the budget lock is never poisoned")
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut used = self
            .budget
            .used
            .lock()
            .expect("the budget lock is never poisoned");
        *used -= self.bytes;
        self.budget.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Whether `reserve(bytes)` on another thread completes within a short wait.
    fn reserve_in_background(
        budget: &Arc<PixelBudget>,
        bytes: usize,
    ) -> mpsc::Receiver<Reservation> {
        let (tx, rx) = mpsc::channel();
        let budget = budget.clone();
        std::thread::spawn(move || {
            let _ = tx.send(budget.reserve(bytes));
        });
        rx
    }

    #[test]
    fn a_reservation_waits_until_enough_is_returned() {
        let budget = PixelBudget::new(100);
        let first = budget.reserve(60);
        let second = budget.reserve(40);
        assert_eq!(budget.in_use(), 100);
        let waiting = reserve_in_background(&budget, 50);
        assert!(
            waiting.recv_timeout(Duration::from_millis(100)).is_err(),
            "the budget is spent: the third image waits"
        );
        drop(second);
        assert!(
            waiting.recv_timeout(Duration::from_millis(100)).is_err(),
            "40 returned is not enough for 50"
        );
        drop(first);
        let third = waiting
            .recv_timeout(Duration::from_secs(10))
            .expect("100 returned: it fits");
        assert_eq!(budget.in_use(), 50);
        drop(third);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn an_image_larger_than_the_budget_passes_alone() {
        let budget = PixelBudget::new(100);
        let small = budget.reserve(10);
        let waiting = reserve_in_background(&budget, 1_000);
        assert!(waiting.recv_timeout(Duration::from_millis(100)).is_err());
        drop(small);
        let huge = waiting
            .recv_timeout(Duration::from_secs(10))
            .expect("alone, it passes");
        assert_eq!(budget.in_use(), 100, "it takes the whole budget");
        drop(huge);
        assert_eq!(budget.in_use(), 0);
    }
}
