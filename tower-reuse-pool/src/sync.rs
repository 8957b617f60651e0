//! The lock a target's state lives under, and the one place where the
//! model check may preempt the pool outside a lock.
//!
//! In the library [`Mutex`] is exactly `std::sync::Mutex` and
//! [`preemption_point`] is an empty inline function: nothing is paid for
//! the model check. In the crate's own tests the mutex is `std`'s too,
//! except when it is created inside a shuttle execution (the model check in
//! `target_pool::model`): there it is shuttle's, so every acquisition is a
//! point where the checker may switch tasks, and a task waiting for the lock
//! is one the checker knows is blocked. Every other unit test is unaffected.

#[cfg(not(test))]
pub(crate) use std::sync::{Mutex, MutexGuard};

#[cfg(test)]
pub(crate) use checked::{Mutex, MutexGuard};

/// Between two steps another thread can observe, without a lock between
/// them: where the model checker may run another task first. Nothing in
/// the library.
#[cfg(not(test))]
#[inline(always)]
pub(crate) fn preemption_point() {}

/// Between two steps another thread can observe, without a lock between
/// them: where the model checker may run another task first.
#[cfg(test)]
pub(crate) fn preemption_point() {
    if checked::in_model() {
        shuttle::thread::yield_now();
    }
}

#[cfg(test)]
mod checked {
    use std::ops::{Deref, DerefMut};
    use std::sync::{LockResult, PoisonError};

    /// Whether this code runs inside a shuttle execution.
    pub(super) fn in_model() -> bool {
        shuttle::current::try_get_current_task().is_some()
    }

    /// `std::sync::Mutex`, or shuttle's when created inside a shuttle execution.
    pub(crate) enum Mutex<T> {
        Std(std::sync::Mutex<T>),
        Model(shuttle::sync::Mutex<T>),
    }

    pub(crate) enum MutexGuard<'a, T> {
        Std(std::sync::MutexGuard<'a, T>),
        Model(shuttle::sync::MutexGuard<'a, T>),
    }

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            if in_model() {
                Mutex::Model(shuttle::sync::Mutex::new(value))
            } else {
                Mutex::Std(std::sync::Mutex::new(value))
            }
        }

        pub(crate) fn lock(&self) -> LockResult<MutexGuard<'_, T>> {
            match self {
                Mutex::Std(mutex) => wrap(mutex.lock(), MutexGuard::Std),
                Mutex::Model(mutex) => wrap(mutex.lock(), MutexGuard::Model),
            }
        }
    }

    fn wrap<G, T>(result: LockResult<G>, guard: impl FnOnce(G) -> T) -> LockResult<T> {
        match result {
            Ok(inner) => Ok(guard(inner)),
            Err(poisoned) => Err(PoisonError::new(guard(poisoned.into_inner()))),
        }
    }

    impl<T> Deref for MutexGuard<'_, T> {
        type Target = T;

        fn deref(&self) -> &T {
            match self {
                MutexGuard::Std(guard) => guard,
                MutexGuard::Model(guard) => guard,
            }
        }
    }

    impl<T> DerefMut for MutexGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            match self {
                MutexGuard::Std(guard) => guard,
                MutexGuard::Model(guard) => guard,
            }
        }
    }
}
