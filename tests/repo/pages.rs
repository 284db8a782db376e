//! Large reads in keyset pages (`src/repo/pages.rs`).

use super::*;

both_backends! {
    fn users_page_visits_every_row_once_in_order(backend: Backend) {
        let test = TestDb::new(backend);
        let db = test.database();
        let mut session = db.session().unwrap();
        let mut repo = session.repo();
        let names = names(1_000);
        // Ids with gaps and negatives: 1000 users, ids -500, -497, ... (step 3).
        let users: Vec<NewUser> = names.iter().enumerate().map(|(i, n)| NewUser::new(i as i64 * 3 - 500, n)).collect();
        repo.import_users(&users).unwrap();
        let locations: Vec<NewLocation> = names[..250].iter().map(|n| NewLocation::new(n, "x")).collect();
        repo.import_locations(&locations).unwrap();
        for user in users.iter().step_by(7) {
            repo.link(user.user_id, (user.user_id.rem_euclid(250) + 1) as i32).unwrap();
        }
        let mut visited = Vec::new();
        let mut after = None;
        loop {
            let page = repo.users_page(after, 64).unwrap();
            let Some(last) = page.last() else { break };
            after = Some(last.user_id);
            visited.extend(ids(&page));
        }
        let expected: Vec<i64> = users.iter().map(|u| u.user_id).collect();
        assert_eq!(visited, expected);
        let mut located = Vec::new();
        let mut after = None;
        loop {
            let page = repo.locations_page(after, 100).unwrap();
            let Some(last) = page.last() else { break };
            after = Some(last.location_id);
            located.extend(page.into_iter().map(|l| l.location_id));
        }
        assert_eq!(located, (1..=250).collect::<Vec<i32>>());
        let mut walked = Vec::new();
        let mut links = 0;
        let mut after = None;
        loop {
            let page = repo.users_with_locations_page(after, 100).unwrap();
            let Some(last) = page.last() else { break };
            after = Some(last.user.user_id);
            for row in page {
                links += row.locations.len();
                walked.push(row.user.user_id);
            }
        }
        assert_eq!(walked, expected);
        assert_eq!(links, users.iter().step_by(7).count());
    }
}
