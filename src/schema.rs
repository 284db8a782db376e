// @generated automatically by Diesel CLI.

diesel::table! {
    locations (location_id) {
        location_id -> Int4,
        #[max_length = 128]
        location_name -> Varchar,
        #[max_length = 128]
        address -> Varchar,
        has_solarium -> Bool,
        created_at -> Timestamp,
    }
}

diesel::table! {
    userlocations (location_id, user_id) {
        location_id -> Int4,
        user_id -> Int8,
    }
}

diesel::table! {
    users (user_id) {
        user_id -> Int8,
        #[max_length = 128]
        username -> Nullable<Varchar>,
        #[max_length = 128]
        full_name -> Varchar,
        #[max_length = 10]
        language -> Varchar,
        active -> Bool,
        #[max_length = 128]
        logged_as -> Nullable<Varchar>,
        referrer_id -> Nullable<Int8>,
        created_at -> Timestamp,
    }
}

diesel::joinable!(userlocations -> locations (location_id));
diesel::joinable!(userlocations -> users (user_id));

diesel::allow_tables_to_appear_in_same_query!(locations, userlocations, users,);
