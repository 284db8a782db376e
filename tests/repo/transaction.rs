//! `Repo::transaction` (`src/repo/mod.rs`, over `src/transaction.rs`).

use super::*;

both_backends! {
    fn transaction_commits_on_ok(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let user = db
            .transaction(|repo| repo.insert_user(&NewUser::new(10, "Kept")))
            .unwrap();
        assert_eq!(db.session().unwrap().repo().user(10).unwrap(), user);
    }

    fn transaction_rolls_back_on_err(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let err = db
            .transaction(|repo| {
                repo.insert_user(&NewUser::new(10, "Lost"))?;
                repo.insert_location(&NewLocation::new("Lost place", "nowhere"))?;
                // Fails: user 11 does not exist, so everything above is rolled back.
                repo.link(11, 1)?;
                Ok::<_, Error>(())
            })
            .unwrap_err();
        assert!(matches!(err, Error::ForeignKeyViolation { .. }), "{err:?}");
        let mut session = db.session().unwrap();
        assert_eq!(session.repo().users().unwrap(), vec![]);
        assert_eq!(session.repo().locations().unwrap(), vec![]);
    }

    fn transaction_rolls_back_on_a_caller_error(backend: Backend) {
        #[derive(Debug, PartialEq)]
        enum AppError {
            Refused,
            Db(String),
        }
        impl From<Error> for AppError {
            fn from(e: Error) -> Self {
                AppError::Db(e.to_string())
            }
        }
        let test = TestDb::new(backend);
        let db = test.database();
        let result: Result<(), AppError> = db.transaction(|repo| {
            repo.insert_user(&NewUser::new(10, "Lost"))?;
            Err(AppError::Refused)
        });
        assert_eq!(result, Err(AppError::Refused));
        assert!(db.session().unwrap().repo().find_user(10).unwrap().is_none());
    }

    fn nested_transaction_rolls_back_only_the_savepoint(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        db.transaction(|repo| {
            repo.insert_user(&NewUser::new(1, "Outer"))?;
            let inner = repo.transaction(|repo| {
                repo.insert_user(&NewUser::new(2, "Inner"))?;
                repo.insert_user(&NewUser::new(1, "Duplicate"))
            });
            assert!(matches!(inner, Err(Error::UniqueViolation { .. })));
            Ok::<_, Error>(())
        })
        .unwrap();
        let users = db.session().unwrap().repo().users().unwrap();
        assert_eq!(ids(&users), [1]);
    }
}
