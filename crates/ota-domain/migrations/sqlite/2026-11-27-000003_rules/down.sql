DROP INDEX devices_product_legacy;
DROP INDEX upgrades_rule_stage;
DROP INDEX upgrades_rule_device;
ALTER TABLE upgrades DROP COLUMN claim_until;
ALTER TABLE upgrades DROP COLUMN last_opening;
ALTER TABLE upgrades DROP COLUMN rule_id;
DROP TABLE rules;
DROP TABLE mac_list_entries;
DROP TABLE mac_lists;
