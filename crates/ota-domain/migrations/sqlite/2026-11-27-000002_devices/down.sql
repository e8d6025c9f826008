DROP TABLE upgrades;
DROP TABLE devices;
