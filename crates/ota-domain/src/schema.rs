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

diesel::table! {
    devices (id) {
        id -> BigInt,
        tenant_id -> BigInt,
        product_id -> BigInt,
        did -> Nullable<Text>,
        mac -> Nullable<Text>,
        passcode -> Nullable<Text>,
        registered_via -> Text,
        push_method -> Nullable<Text>,
        wifi_hw -> Nullable<Text>,
        wifi_sw -> Nullable<Text>,
        mcu_hw -> Nullable<Text>,
        mcu_sw -> Nullable<Text>,
        wifi_fid -> Nullable<BigInt>,
        mcu_fid -> Nullable<BigInt>,
        legacy_firmware_id -> Nullable<BigInt>,
        country -> Nullable<Text>,
        province -> Nullable<Text>,
        city -> Nullable<Text>,
        ip -> Nullable<Text>,
        online -> Bool,
        gateway_id -> Nullable<Text>,
        connected_at -> Nullable<BigInt>,
        disconnected_at -> Nullable<BigInt>,
        last_seen_at -> Nullable<BigInt>,
        last_provision_at -> Nullable<BigInt>,
        metadata -> Nullable<Text>,
        created_at -> BigInt,
        updated_at -> BigInt,
        adopted_at -> Nullable<BigInt>,
        passcode_pinned_at -> Nullable<BigInt>,
        repin -> Bool,
        conflicts -> BigInt,
    }
}

diesel::table! {
    upgrades (id) {
        id -> BigInt,
        tenant_id -> BigInt,
        device_id -> BigInt,
        firmware_id -> BigInt,
        kind -> Text,
        active -> Bool,
        stage -> Text,
        from_version -> Nullable<Text>,
        to_version -> Nullable<Text>,
        reason -> Nullable<Text>,
        notified_at -> Nullable<BigInt>,
        checked_at -> Nullable<BigInt>,
        download_started_at -> Nullable<BigInt>,
        downloaded_at -> Nullable<BigInt>,
        succeeded_at -> Nullable<BigInt>,
        failed_at -> Nullable<BigInt>,
        deadline_at -> Nullable<BigInt>,
        confirmed_at -> Nullable<BigInt>,
        created_at -> BigInt,
        updated_at -> BigInt,
        rule_id -> Nullable<BigInt>,
        last_opening -> Nullable<BigInt>,
        attempt -> BigInt,
        failure -> Nullable<Text>,
        due_at -> Nullable<BigInt>,
        retry_at -> Nullable<BigInt>,
        pushed_at -> Nullable<BigInt>,
        download_node -> Nullable<Text>,
        history -> Text,
        rev -> BigInt,
        wave -> BigInt,
        zone -> Nullable<Text>,
    }
}

diesel::table! {
    mac_lists (id) {
        id -> BigInt,
        tenant_id -> BigInt,
        product_id -> BigInt,
        count -> BigInt,
        duplicates -> BigInt,
        invalid -> Text,
        invalid_count -> BigInt,
        created_at -> BigInt,
    }
}

diesel::table! {
    mac_list_entries (list_id, mac) {
        list_id -> BigInt,
        mac -> Text,
    }
}

diesel::table! {
    rules (id) {
        id -> BigInt,
        tenant_id -> BigInt,
        product_id -> BigInt,
        firmware_id -> BigInt,
        name -> Nullable<Text>,
        target -> Text,
        regions -> Text,
        mac_list_id -> Nullable<BigInt>,
        old_versions -> Text,
        period_start -> Text,
        period_end -> Text,
        window_start -> Integer,
        window_end -> Integer,
        status -> Text,
        started_at -> Nullable<BigInt>,
        stopped_at -> Nullable<BigInt>,
        completed_at -> Nullable<BigInt>,
        created_at -> BigInt,
        updated_at -> BigInt,
        policy -> Text,
        current_wave -> Nullable<BigInt>,
        halt -> Nullable<Text>,
        paused_at -> Nullable<BigInt>,
        cancelled_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    rule_waves (rule_id, wave) {
        rule_id -> BigInt,
        wave -> BigInt,
        started_at -> Nullable<BigInt>,
        passed_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    region_zones (tenant_id, country, province, city) {
        tenant_id -> BigInt,
        country -> Text,
        province -> Text,
        city -> Text,
        time_zone -> Text,
        updated_at -> BigInt,
    }
}

diesel::table! {
    device_settings (device_id) {
        device_id -> BigInt,
        time_zone -> Nullable<Text>,
    }
}

diesel::table! {
    gateways (id) {
        id -> Text,
        started_at -> BigInt,
        heartbeat_at -> BigInt,
        lease_ms -> BigInt,
    }
}

diesel::table! {
    device_ota_state (device_id) {
        device_id -> BigInt,
        provision_at -> Nullable<BigInt>,
        wifi_check_at -> Nullable<BigInt>,
        mcu_check_at -> Nullable<BigInt>,
        mcu_served_version -> Nullable<Text>,
        mcu_served_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    adoption_policies (product_id) {
        product_id -> BigInt,
        policy -> Text,
        open_until -> Nullable<BigInt>,
        max_adoptions -> Nullable<BigInt>,
        adopted_in_window -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    adoption_events (id) {
        id -> BigInt,
        tenant_id -> BigInt,
        product_id -> BigInt,
        did -> Text,
        kind -> Text,
        reason -> Nullable<Text>,
        source -> Nullable<Text>,
        count -> BigInt,
        first_at -> BigInt,
        last_at -> BigInt,
    }
}

diesel::table! {
    login_failures (key) {
        key -> Text,
        failures -> BigInt,
        last_failure_at -> BigInt,
    }
}

diesel::table! {
    registration_policies (product_id) {
        product_id -> BigInt,
        policy -> Text,
        offline_minutes -> Nullable<BigInt>,
        updated_at -> BigInt,
    }
}

diesel::table! {
    unknown_device_refusals (id) {
        id -> BigInt,
        did -> Text,
        channel -> Text,
        reason -> Text,
        source -> Nullable<Text>,
        count -> BigInt,
        first_at -> BigInt,
        last_at -> BigInt,
    }
}

diesel::table! {
    held_reports (id) {
        id -> BigInt,
        device_id -> BigInt,
        fw_type -> Text,
        source -> Text,
        hard_version -> Text,
        soft_version -> Text,
        fid -> BigInt,
        reported_at -> BigInt,
    }
}

diesel::table! {
    idempotency_keys (tenant_id, key) {
        tenant_id -> BigInt,
        key -> Text,
        fingerprint -> Text,
        status -> Nullable<BigInt>,
        body -> Nullable<Text>,
        created_at -> BigInt,
    }
}

diesel::joinable!(users -> tenants (tenant_id));
diesel::joinable!(idempotency_keys -> tenants (tenant_id));
diesel::joinable!(registration_policies -> products (product_id));
diesel::joinable!(held_reports -> devices (device_id));
diesel::joinable!(adoption_policies -> products (product_id));
diesel::joinable!(adoption_events -> products (product_id));
diesel::joinable!(devices -> products (product_id));
diesel::joinable!(upgrades -> devices (device_id));
diesel::joinable!(upgrades -> firmware (firmware_id));
diesel::joinable!(api_tokens -> users (user_id));
diesel::joinable!(products -> tenants (tenant_id));
diesel::joinable!(firmware -> products (product_id));

diesel::joinable!(upgrades -> rules (rule_id));
diesel::table! {
    audit_log (id) {
        id -> BigInt,
        tenant_id -> Nullable<BigInt>,
        at -> BigInt,
        user_id -> Nullable<BigInt>,
        username -> Nullable<Text>,
        credential -> Nullable<Text>,
        token_id -> Nullable<BigInt>,
        action -> Text,
        route -> Text,
        object_kind -> Nullable<Text>,
        object_id -> Nullable<Text>,
        source -> Text,
        status -> Integer,
        error_code -> Nullable<Text>,
    }
}

diesel::joinable!(rules -> firmware (firmware_id));
diesel::joinable!(rules -> products (product_id));
diesel::joinable!(mac_list_entries -> mac_lists (list_id));
diesel::joinable!(mac_lists -> products (product_id));
diesel::joinable!(device_ota_state -> devices (device_id));
diesel::joinable!(device_settings -> devices (device_id));
diesel::joinable!(rule_waves -> rules (rule_id));
diesel::allow_tables_to_appear_in_same_query!(
    tenants,
    users,
    api_tokens,
    products,
    firmware,
    devices,
    upgrades,
    mac_lists,
    mac_list_entries,
    rules,
    adoption_policies,
    adoption_events,
    gateways,
    device_ota_state,
    rule_waves,
    region_zones,
    device_settings,
    login_failures,
    registration_policies,
    unknown_device_refusals,
    held_reports,
    idempotency_keys,
    audit_log,
);
