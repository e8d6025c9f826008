ALTER TABLE devices DROP COLUMN conflicts;
ALTER TABLE devices DROP COLUMN repin;
ALTER TABLE devices DROP COLUMN passcode_pinned_at;
ALTER TABLE devices DROP COLUMN adopted_at;
DROP TABLE adoption_events;
DROP TABLE adoption_policies;
