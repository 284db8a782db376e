//! Users: reads, inserts, updates, deletes and the upsert.

use diesel::prelude::*;

use super::dispatch::dispatch;
use super::support::{delete_one, References, LINK_USER_FKEY};
use super::Repo;
use crate::error::{Error, Result};
use crate::models::user::UserUpdate;
use crate::models::{user, user_location, NewUser, User, UserChanges};
use crate::schema::users;

/// How often an upsert retries after losing a race with a concurrent insert or delete.
const UPSERT_ATTEMPTS: u32 = 3;

/// What [`Repo::upsert_user_with`] overwrites on an existing row besides the names.
///
/// ```
/// use userbase::UpsertOptions;
///
/// let options = UpsertOptions::default().with_referrer(true);
/// assert!(options.referrer && !options.created_at);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpsertOptions {
    /// Also set `referrer_id` (checked for cycles). Default `false`.
    pub referrer: bool,
    /// Also set `created_at` (when the new row gives one). Default `false`.
    pub created_at: bool,
}

impl UpsertOptions {
    /// These options, also overwriting `referrer_id` when `referrer` is `true`.
    pub fn with_referrer(self, referrer: bool) -> Self {
        UpsertOptions { referrer, ..self }
    }

    /// These options, also overwriting `created_at` when `created_at` is `true`.
    pub fn with_created_at(self, created_at: bool) -> Self {
        UpsertOptions { created_at, ..self }
    }
}

impl Repo<'_> {
    /// The user with id `user_id`.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is none.
    #[doc(alias = "get_user")]
    pub fn user(&mut self, user_id: i64) -> Result<User> {
        op!(self, User, {
            self.run(|c| dispatch!(c => user::by_id(user_id).first(c)))
        })
    }

    /// The user with id `user_id`, or `None`.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    pub fn find_user(&mut self, user_id: i64) -> Result<Option<User>> {
        op!(self, FindUser, {
            self.run(|c| dispatch!(c => user::by_id(user_id).first(c).optional()))
        })
    }

    /// Every user, ordered by id.
    ///
    /// # Errors
    ///
    /// [`Error::Query`] when the database fails.
    pub fn users(&mut self) -> Result<Vec<User>> {
        op!(self, Users, {
            self.run(|c| dispatch!(c => user::all().load(c)))
        })
    }

    /// Inserts a user and returns the stored row (with its defaults filled in).
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] for a bad value (see [`NewUser::validate`]);
    /// [`Error::UniqueViolation`] when the id exists; [`Error::ForeignKeyViolation`] when the
    /// referrer does not.
    pub fn insert_user(&mut self, new: &NewUser<'_>) -> Result<User> {
        op!(self, InsertUser, {
            let new = new.checked()?;
            let inserted = self.run(|c| {
                dispatch!(c => diesel::insert_into(users::table)
                    .values(&new)
                    .returning(User::as_returning())
                    .get_result(c))
            });
            self.name_reference(inserted, || References::referrers(&[new]))
        })
    }

    /// Deletes user `user_id`; the users they referred stay, with no referrer (`SET NULL`).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is no such user; [`Error::ForeignKeyViolation`] when the
    /// user still has locations (`ON DELETE RESTRICT`), its message naming the blocking
    /// `userlocations` rows. Inside a transaction, a refused delete leaves it usable (savepoint).
    pub fn delete_user(&mut self, user_id: i64) -> Result<()> {
        op!(self, DeleteUser, {
            let deleted = self.transaction(|repo| {
                delete_one(repo.run(
                    |c| dispatch!(c => diesel::delete(users::table.find(user_id)).execute(c)),
                )?)
            });
            match deleted {
                Err(Error::ForeignKeyViolation {
                    constraint,
                    message,
                }) => {
                    let blocking: Vec<i32> = self
                        .run(|c| dispatch!(c => user_location::location_ids_of(user_id).load(c)))?;
                    Err(Error::ForeignKeyViolation {
                        // SQLite names no constraint: the one PostgreSQL names.
                        constraint: constraint.or(Some(LINK_USER_FKEY.to_owned())),
                        message: format!(
                            "user {user_id} is still linked to locations {blocking:?} in userlocations; \
                             unlink them first ({message})"
                        ),
                    })
                }
                other => other,
            }
        })
    }

    /// The bot's "seen this user": inserts the user, or updates `full_name`, `username` and
    /// (when given) `language` of the existing row, leaving `created_at`, `referrer_id`,
    /// `active` and `logged_as` as they are. Returns the stored row.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] for a bad value; [`Error::ForeignKeyViolation`] when a new user's
    /// referrer does not exist; [`Error::UpsertContended`] when concurrent writes kept
    /// inserting and deleting the row.
    pub fn upsert_user(&mut self, new: &NewUser<'_>) -> Result<User> {
        op!(self, UpsertUser, {
            self.upsert_user_with(new, UpsertOptions::default())
        })
    }

    /// [`upsert_user`](Repo::upsert_user), also overwriting `referrer_id` and/or `created_at`
    /// of an existing row when `options` asks.
    ///
    /// Runs as one `UPDATE … RETURNING` when the user exists (the common case), else one
    /// `INSERT … ON CONFLICT DO NOTHING RETURNING`; a concurrent insert or delete between the two
    /// is retried, 3 attempts in all.
    ///
    /// # Errors
    ///
    /// As [`upsert_user`](Repo::upsert_user), and [`Error::ReferralCycle`] when the new
    /// referrer would make a cycle.
    pub fn upsert_user_with(&mut self, new: &NewUser<'_>, options: UpsertOptions) -> Result<User> {
        op!(self, UpsertUserWith, {
            let new = new.checked()?;
            let upserted = match (options.referrer, new.referrer_id) {
                // A referral change: under the referral lock, checked for cycles.
                (true, Some(referrer_id)) => {
                    self.change_referral(new.user_id, Some(referrer_id), |repo| {
                        repo.upsert_checked(&new, options)
                    })
                }
                _ => self.upsert_checked(&new, options),
            };
            self.name_reference(upserted, || References::referrers(&[new]))
        })
    }

    fn upsert_checked(&mut self, new: &NewUser<'_>, options: UpsertOptions) -> Result<User> {
        for _ in 0..UPSERT_ATTEMPTS {
            if let Some(user) = self.upsert_update(new, options)? {
                return Ok(user);
            }
            let inserted = self.run(|c| {
                dispatch!(c => diesel::insert_into(users::table)
                    .values(new)
                    .on_conflict_do_nothing()
                    .returning(User::as_returning())
                    .get_result(c)
                    .optional())
            })?;
            if let Some(user) = inserted {
                return Ok(user);
            }
        }
        Err(Error::UpsertContended {
            user_id: new.user_id,
            attempts: UPSERT_ATTEMPTS,
        })
    }

    /// The update half of an upsert. The usual case is one cached prepared statement
    /// (`user::seen_again`); other options go through the general changeset.
    fn upsert_update(&mut self, new: &NewUser<'_>, options: UpsertOptions) -> Result<Option<User>> {
        if options == UpsertOptions::default() {
            let update = user::seen_again(new);
            return self.run(|c| dispatch!(c => update.get_result::<User>(c).optional()));
        }
        let changes = UserUpdate {
            changes: UserChanges {
                username: Some(new.username),
                full_name: Some(new.full_name),
                language: new.language,
                ..UserChanges::default()
            },
            referrer_id: options.referrer.then_some(new.referrer_id),
            created_at: new.created_at.filter(|_| options.created_at),
        };
        self.update_user_returning(new.user_id, &changes)
    }

    /// Applies `changes` to user `user_id`; the stored row, or `None` when there is no such
    /// user.
    pub(super) fn update_user_returning(
        &mut self,
        user_id: i64,
        changes: &UserUpdate<'_>,
    ) -> Result<Option<User>> {
        self.run(|c| {
            dispatch!(c => diesel::update(users::table.find(user_id))
                .set(changes)
                .returning(User::as_returning())
                .get_result(c)
                .optional())
        })
    }

    /// Updates the fields of user `user_id` that `changes` sets; returns the stored row.
    ///
    /// # Errors
    ///
    /// [`Error::Validation`] for a bad value or an empty change; [`Error::NotFound`] when there
    /// is no such user.
    pub fn update_user(&mut self, user_id: i64, changes: &UserChanges<'_>) -> Result<User> {
        op!(self, UpdateUser, {
            changes.validate()?;
            let update = UserUpdate {
                changes: *changes,
                ..UserUpdate::default()
            };
            self.update_user_returning(user_id, &update)?
                .ok_or(Error::NotFound)
        })
    }

    /// Marks user `user_id` inactive (the row and its links stay).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is no such user.
    pub fn deactivate_user(&mut self, user_id: i64) -> Result<User> {
        op!(self, DeactivateUser, { self.set_active(user_id, false) })
    }

    /// Marks user `user_id` active again.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is no such user.
    pub fn reactivate_user(&mut self, user_id: i64) -> Result<User> {
        op!(self, ReactivateUser, { self.set_active(user_id, true) })
    }

    fn set_active(&mut self, user_id: i64, active: bool) -> Result<User> {
        let changes = UserChanges {
            active: Some(active),
            ..UserChanges::default()
        };
        self.update_user(user_id, &changes)
    }
}
