// @generated automatically by Diesel CLI.

diesel::table! {
    locations (location_id) {
        location_id -> Integer,
        location_name -> Text,
        address -> Text,
        has_solarium -> Bool,
        created_at -> Timestamp,
    }
}

diesel::table! {
    userlocations (location_id, user_id) {
        location_id -> Integer,
        user_id -> BigInt,
    }
}

diesel::table! {
    users (user_id) {
        user_id -> BigInt,
        username -> Nullable<Text>,
        full_name -> Text,
        language -> Text,
        active -> Bool,
        logged_as -> Nullable<Text>,
        referrer_id -> Nullable<BigInt>,
        created_at -> Timestamp,
    }
}

diesel::joinable!(userlocations -> locations (location_id));
diesel::joinable!(userlocations -> users (user_id));

diesel::allow_tables_to_appear_in_same_query!(locations, userlocations, users,);
