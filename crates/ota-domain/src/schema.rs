//! The diesel schema, written by hand to match both migration trees.

diesel::table! {
    tenants (id) {
        id -> BigInt,
        name -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    users (id) {
        id -> BigInt,
        tenant_id -> BigInt,
        username -> Text,
        password_hash -> Text,
        role -> Text,
        disabled -> Bool,
        created_at -> BigInt,
        password_changed_at -> BigInt,
    }
}

diesel::table! {
    api_tokens (id) {
        id -> BigInt,
        tenant_id -> BigInt,
        user_id -> BigInt,
        name -> Text,
        token_hash -> Text,
        scopes -> Text,
        created_at -> BigInt,
        expires_at -> Nullable<BigInt>,
        last_used_at -> Nullable<BigInt>,
        revoked_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    products (id) {
        id -> BigInt,
        tenant_id -> BigInt,
        product_key -> Text,
        product_secret -> Text,
        name -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    firmware (id) {
        id -> BigInt,
        tenant_id -> BigInt,
        product_id -> BigInt,
        name -> Text,
        fw_type -> Text,
        push_method -> Text,
        hard_version -> Nullable<Text>,
        soft_version -> Nullable<Text>,
        fid -> Nullable<BigInt>,
        file_name -> Text,
        size -> BigInt,
        md5 -> Text,
        sha256 -> Text,
        crc32 -> BigInt,
        verified -> Bool,
        verified_at -> Nullable<BigInt>,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::joinable!(users -> tenants (tenant_id));
diesel::joinable!(api_tokens -> users (user_id));
diesel::joinable!(products -> tenants (tenant_id));
diesel::joinable!(firmware -> products (product_id));

diesel::allow_tables_to_appear_in_same_query!(tenants, users, api_tokens, products, firmware);
