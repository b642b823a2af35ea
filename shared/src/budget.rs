//! A process's memory budget for templates, in KiB permits of one semaphore: a worker reserves a
//! template's costs (reading it, then writing it) before it reads it; the API reserves uploads
//! as their bytes arrive and the reading cost of a template it checks. A reservation gives its
//! share back when dropped.

use std::{sync::Arc, time::Duration};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The bytes a process may hold for templates at once (`PROVISIONER_TEMPLATE_MEMORY_BUDGET`).
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    total_kib: u32,
}

/// A share of the budget; dropping it gives it back.
#[derive(Debug)]
pub struct Reserved {
    budget: MemoryBudget,
    permit: Option<OwnedSemaphorePermit>,
    kib: u32,
}

impl MemoryBudget {
    pub fn new(bytes: u64) -> Self {
        let total_kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, Semaphore::MAX_PERMITS as u32);
        Self {
            permits: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }

    /// Permits for `cost` bytes: at most the whole budget, so a template costing more is held
    /// alone rather than never.
    fn permits_for(&self, cost: u64) -> u32 {
        u32::try_from(cost.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .min(self.total_kib)
    }

    /// The bytes reserved now (for `/metrics`).
    pub fn in_use_bytes(&self) -> u64 {
        let free = u32::try_from(self.permits.available_permits()).unwrap_or(u32::MAX);
        u64::from(self.total_kib.saturating_sub(free)) * 1024
    }

    /// A reservation of nothing, to be grown (`Reserved::grow_within`).
    pub fn none(&self) -> Reserved {
        Reserved {
            budget: self.clone(),
            permit: None,
            kib: 0,
        }
    }

    /// Waits until `cost` bytes fit in the budget.
    pub async fn reserve(&self, cost: u64) -> Reserved {
        let kib = self.permits_for(cost).max(1);
        let permit = self
            .permits
            .clone()
            .acquire_many_owned(kib)
            .await
            .expect("the budget's semaphore is never closed");
        Reserved {
            budget: self.clone(),
            permit: Some(permit),
            kib,
        }
    }

    /// `reserve` without waiting: `None` when `cost` does not fit now.
    pub fn try_reserve(&self, cost: u64) -> Option<Reserved> {
        let mut reserved = self.none();
        reserved.try_grow(cost).then_some(reserved)
    }
}

impl Reserved {
    /// The bytes this reservation covers (a multiple of 1 KiB, at most the whole budget).
    pub fn bytes(&self) -> u64 {
        u64::from(self.kib) * 1024
    }

    /// Grows the reservation to cover `cost` bytes in all, waiting at most `wait` for the
    /// difference; `false` when it did not fit in time (the reservation is then unchanged).
    pub async fn grow_within(&mut self, cost: u64, wait: Duration) -> bool {
        let more = self.budget.permits_for(cost).saturating_sub(self.kib);
        if more == 0 {
            return true;
        }
        let acquire = self.budget.permits.clone().acquire_many_owned(more);
        match tokio::time::timeout(wait, acquire).await {
            Ok(permit) => {
                self.add(
                    permit.expect("the budget's semaphore is never closed"),
                    more,
                );
                true
            }
            Err(_) => false,
        }
    }

    /// `grow_within` without waiting.
    pub fn try_grow(&mut self, cost: u64) -> bool {
        let more = self.budget.permits_for(cost).saturating_sub(self.kib);
        if more == 0 {
            return true;
        }
        match self.budget.permits.clone().try_acquire_many_owned(more) {
            Ok(permit) => {
                self.add(permit, more);
                true
            }
            Err(_) => false,
        }
    }

    /// Gives back all but what `cost` bytes need (nothing, when it covers less already).
    pub fn shrink_to(&mut self, cost: u64) {
        let keep = if cost == 0 {
            0
        } else {
            self.budget.permits_for(cost)
        };
        if keep >= self.kib {
            return;
        }
        if let Some(permit) = &mut self.permit {
            drop(permit.split((self.kib - keep) as usize));
        }
        if keep == 0 {
            self.permit = None;
        }
        self.kib = keep;
    }

    fn add(&mut self, permit: OwnedSemaphorePermit, kib: u32) {
        match &mut self.permit {
            Some(held) => held.merge(permit),
            None => self.permit = Some(permit),
        }
        self.kib += kib;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_wait_for_their_share_of_the_budget_and_a_huge_one_is_held_alone() {
        let budget = MemoryBudget::new(10 << 20);
        let first = budget.try_reserve(6 << 20).expect("fits an empty budget");
        assert!(
            budget.try_reserve(6 << 20).is_none(),
            "6 + 6 MiB exceed 10 MiB"
        );
        let small = budget.try_reserve(4 << 20).expect("6 + 4 MiB fit");
        drop(first);
        let second = budget
            .try_reserve(6 << 20)
            .expect("given back by the first");
        drop((small, second));
        let huge = budget
            .try_reserve(1 << 40)
            .expect("a template costing more than the budget takes all of it");
        assert!(budget.try_reserve(1).is_none(), "and is held alone");
        drop(huge);
        assert!(budget.try_reserve(10 << 20).is_some());
    }

    #[tokio::test]
    async fn a_reservation_grows_while_there_is_room_and_gives_everything_back() {
        let budget = MemoryBudget::new(4 << 20);
        let mut upload = budget.none();
        assert!(upload.try_grow(1 << 20));
        assert!(upload.grow_within(3 << 20, Duration::ZERO).await);
        assert_eq!(upload.bytes(), 3 << 20);
        let other = budget.try_reserve(1 << 20).expect("1 MiB is left");
        assert!(
            !upload.grow_within(4 << 20, Duration::from_millis(20)).await,
            "the last MiB is taken"
        );
        assert_eq!(upload.bytes(), 3 << 20, "a failed growth changes nothing");
        drop(other);
        assert!(upload.grow_within(4 << 20, Duration::from_millis(20)).await);
        assert_eq!(budget.in_use_bytes(), 4 << 20);
        drop(upload);
        assert_eq!(budget.in_use_bytes(), 0);
        assert!(
            budget.try_reserve(4 << 20).is_some(),
            "all of it given back"
        );
    }
}
