//! Deliver-once results (`retain: false` without an output of the client's): one read gets
//! them, complete, once the job has ended, and they are deleted right after. A read
//! claims them first, so two reads at once cannot both stream them.
//!
//! The claim lives in memory: one scheduler serves a fleet's API. A read that is cut off
//! (a dropped connection, a store error) frees it again, so the results stay for another
//! read until the retention ends.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tagfleet_io::StoreError;

use super::{JobBook, JobId};
use crate::error::ApiError;

/// The jobs whose deliver-once results a read holds now.
pub(super) type Readers = Arc<Mutex<HashSet<JobId>>>;

/// A deliver-once job's results, held by one read. Dropping it without
/// [`ResultsClaim::delivered`] frees them for the next read.
#[must_use = "the claim frees the results when dropped"]
pub struct ResultsClaim {
    readers: Readers,
    key: JobId,
}

impl ResultsClaim {
    /// The read got everything: the results are deleted and the job remembers it, so
    /// later reads say why there is nothing.
    pub async fn delivered(self, book: &JobBook) -> Result<(), StoreError> {
        let (tenant, id) = &self.key;
        book.results_delivered(tenant, id).await
    }
}

impl Drop for ResultsClaim {
    fn drop(&mut self) {
        self.readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

impl JobBook {
    /// Claims a deliver-once job's results for one read: 410 once they were delivered,
    /// 409 while another read holds them.
    pub async fn claim_results(&self, tenant: &str, id: &str) -> Result<ResultsClaim, ApiError> {
        let key = (tenant.to_owned(), id.to_owned());
        // Under the book's lock: `results_delivered` sets the flag under it before the
        // claim that delivered is dropped, so a read sees one or the other.
        let jobs = self.jobs.lock().await;
        let record = jobs.get(&key).ok_or(ApiError::NotFound("job"))?;
        if record.results_delivered {
            return Err(ApiError::Gone(
                "the job keeps nothing (retain: false): its results were read once and deleted"
                    .into(),
            ));
        }
        let fresh = self
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone());
        drop(jobs);
        if !fresh {
            return Err(ApiError::Conflict(
                "the job keeps nothing (retain: false): another request is reading its results, \
                 which are served to one read only"
                    .into(),
            ));
        }
        Ok(ResultsClaim {
            readers: self.readers.clone(),
            key,
        })
    }

    /// A `retain: false` job's results were read once, completely: delete them now and
    /// remember, so the next read says why there is nothing.
    async fn results_delivered(&self, tenant: &str, id: &str) -> Result<(), StoreError> {
        let writing = self.writing.lock().await;
        let key = (tenant.to_owned(), id.to_owned());
        let record = {
            let mut jobs = self.jobs.lock().await;
            let Some(record) = jobs.get_mut(&key) else {
                return Ok(());
            };
            record.results_delivered = true;
            record.clone()
        };
        self.write(&record).await?;
        drop(writing);
        let erased = self.erase_results(tenant, id).await?;
        tracing::info!(tenant, job = %id, objects = erased, "results delivered once and deleted (retain: false)");
        Ok(())
    }
}
