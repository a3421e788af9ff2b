//! A tenant's quotas on jobs: jobs in flight (not in a final state) and their images not
//! yet done. A creation reserves its job and images while it reads the source, writes
//! and publishes, so two requests at once cannot both slip under a limit.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};

use super::{JobBook, JobId};
use crate::error::{ApiError, QuotaExceeded};
use crate::record::JobRecord;

/// Jobs and images of one tenant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct InFlight {
    pub jobs: u64,
    pub images: u64,
}

/// Creations under way, by tenant.
pub(super) type Reservations = std::sync::Mutex<HashMap<String, InFlight>>;

/// A job being created, counted against its tenant's quotas until it is in the book (or
/// refused): dropping it gives the reservation back.
pub(super) struct Reservation<'a> {
    book: &'a JobBook,
    tenant: String,
    held: InFlight,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut reserved = self.book.reserved.lock().expect("reservations");
        if let Some(r) = reserved.get_mut(&self.tenant) {
            r.jobs -= self.held.jobs;
            r.images -= self.held.images;
            if *r == InFlight::default() {
                reserved.remove(&self.tenant);
            }
        }
    }
}

impl JobBook {
    /// Reserves one more job of `images` images for `tenant`, or refuses (429) when it
    /// would take the tenant over its `jobs_in_flight` or `images_in_flight` quota.
    pub(super) async fn reserve(
        &self,
        tenant: &str,
        images: u64,
    ) -> Result<Reservation<'_>, ApiError> {
        let wanted = InFlight { jobs: 1, images };
        let jobs = self.jobs.lock().await;
        self.check_quotas(&jobs, tenant, wanted, Utc::now())?;
        let mut reserved = self.reserved.lock().expect("reservations");
        let r = reserved.entry(tenant.to_owned()).or_default();
        r.jobs += wanted.jobs;
        r.images += wanted.images;
        Ok(Reservation {
            book: self,
            tenant: tenant.to_owned(),
            held: wanted,
        })
    }

    /// Refuses (429) adding `wanted` to what `tenant` has in flight (in `jobs`, which the
    /// caller holds locked, and in creations under way) past its quotas.
    pub(super) fn check_quotas(
        &self,
        jobs: &BTreeMap<JobId, JobRecord>,
        tenant: &str,
        wanted: InFlight,
        now: DateTime<Utc>,
    ) -> Result<(), ApiError> {
        let quotas = self.tenant(tenant)?.quotas;
        let mut used = jobs
            .range((tenant.to_owned(), String::new())..)
            .take_while(|((t, _), _)| t == tenant)
            .map(|(_, r)| r)
            .filter(|r| !r.state.is_final() && !self.past_retention(r, now))
            .fold(InFlight::default(), |used, r| InFlight {
                jobs: used.jobs + 1,
                images: used.images + r.counts.total.saturating_sub(r.counts.finished()),
            });
        if let Some(r) = self.reserved.lock().expect("reservations").get(tenant) {
            used.jobs += r.jobs;
            used.images += r.images;
        }
        QuotaExceeded::check(
            "jobs_in_flight",
            quotas.jobs_in_flight as u64,
            used.jobs,
            wanted.jobs,
        )?;
        QuotaExceeded::check(
            "images_in_flight",
            quotas.images_in_flight,
            used.images,
            wanted.images,
        )
    }
}
