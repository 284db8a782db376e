//! Who referred whom, with cycle checks (`src/repo/referrals.rs`).

use super::*;

both_backends! {
    fn set_referrer_and_referral_counts_refuse_cycles(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.seeded();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        // 1 referred 1824 and 5155; 1824 referred 9044.
        repo.set_referrer(1824, Some(1)).unwrap();
        repo.set_referrer(5155, Some(1)).unwrap();
        let set = repo.set_referrer(9044, Some(1824)).unwrap();
        assert_eq!(set.referrer_id, Some(1824));
        assert_eq!(ids(&repo.referrals(1).unwrap()), [1824, 5155]);
        assert_eq!(ids(&repo.referrals(6873).unwrap()), Vec::<i64>::new());
        let counted = |referrer_id, referred| ReferralCount { referrer_id, referred };
        assert_eq!(repo.referral_counts().unwrap(), vec![counted(1, 2), counted(1824, 1)]);
        let named: Vec<(i64, Option<String>)> = repo
            .users_with_referrer_names()
            .unwrap()
            .into_iter()
            .map(|row| (row.user.user_id, row.referrer_name))
            .collect();
        let john = Some("John Doe".to_owned());
        assert_eq!(
            named,
            vec![
                (1, None),
                (1169, None),
                (1824, john.clone()),
                (5155, john),
                (6873, None),
                (9044, Some("Brian Yang".to_owned())),
                (12356, None),
            ]
        );
        // Self-referral and cycles (1 -> 1824 -> 9044 -> 1 would close a loop).
        assert!(matches!(repo.set_referrer(1, Some(1)), Err(Error::ReferralCycle { user_id: 1, referrer_id: 1 })));
        assert!(matches!(repo.set_referrer(1, Some(9044)), Err(Error::ReferralCycle { user_id: 1, referrer_id: 9044 })));
        assert!(matches!(repo.set_referrer(1, Some(1824)), Err(Error::ReferralCycle { .. })));
        assert!(matches!(repo.insert_user(&NewUser::new(5, "Me").referrer(5)), Err(Error::ReferralCycle { .. })));
        assert!(matches!(repo.set_referrer(1, Some(424242)), Err(Error::ForeignKeyViolation { .. })));
        assert!(matches!(repo.set_referrer(424242, Some(1)), Err(Error::NotFound)));
        // Allowed: 6873 is not below 1.
        assert_eq!(repo.set_referrer(1, Some(6873)).unwrap().referrer_id, Some(6873));
        // Clearing; deleting a referrer sets NULL.
        assert_eq!(repo.set_referrer(1, None).unwrap().referrer_id, None);
        repo.delete_user(1).unwrap();
        assert_eq!(repo.referral_counts().unwrap(), vec![ReferralCount { referrer_id: 1824, referred: 1 }]);
        assert_eq!(repo.user(5155).unwrap().referrer_id, None);
    }

    fn delete_user_sets_the_referrer_of_those_referred_to_null(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        repo.insert_user(&NewUser::new(1, "Referrer")).unwrap();
        repo.insert_user(&NewUser::new(2, "Referred").referrer(1)).unwrap();
        assert_eq!(repo.user(2).unwrap().referrer_id, Some(1));
        repo.delete_user(1).unwrap();
        assert_eq!(repo.user(2).unwrap().referrer_id, None);
    }
}
